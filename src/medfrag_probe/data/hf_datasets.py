"""`hf-dataset:`: Hugging Face datasets (a Hub id, or a folder written by `save_to_disk`) as a data source.

    hf-dataset:albertvillanova/medmnist-v2?config=pathmnist            # Hub id (needs the weights-free data)
    hf-dataset:/data/chest?split=train,test&label=finding&group=patient_id
    hf-dataset:/data/vqa-rad?question=question&answer=answer           # closed (yes/no) questions as samples

Parameters (all optional): `split` (comma-separated splits to keep; default all), `image`, `label`, `group`, `id`
(column names), `config` (the Hub configuration), `revision` (a Hub commit or tag), `question` and `answer`.

- Splits of a `DatasetDict` become the cache's train/val/test (names such as `validation` map onto `val`); a single
  split (or a plain `Dataset`) has no split, and the probes use grouped k-fold.
- The image column defaults to the first `Image` feature, the label column to the first `ClassLabel` feature (whose
  names become the class names), else a column named `label`/`labels`. Images are decoded by this package's rules
  (`data.images`), from the stored bytes.
- `group` names the patient column; without it every row is its own patient (warned by studies).
- Questions: with `question=COL&answer=COL`, each row (an image and one closed question about it) is a sample
  labelled by its answer: yes/no answers give the classes `no`, `yes`; rows with other (open) answers are left out
  and counted. Rows about the same image share a group (the image's bytes), so no image straddles folds. `probe`
  then measures whether the answer is decodable from the image, and `vqa --task hf-questions` asks each sample its
  own question (`vqa.tasks.questions_task`); the bridge joins both sample by sample.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from ..errors import UserError
from ..specs import Spec
from .base import SPLIT_ALIASES, DataSource, Sample, register_source
from .images import ImageError, array_to_rgb, load_image, load_image_bytes, to_rgb

PARAMS = {"split", "image", "label", "group", "id", "config", "revision", "question", "answer"}
YES_NO = {"yes": "yes", "no": "no", "y": "yes", "n": "no", "true": "yes", "false": "no"}


class HFDatasetSource(DataSource):
    """Samples that are rows of one or more splits of a Hugging Face dataset."""

    def __init__(self, spec: Spec, parts: dict, image_column: str, samples: list[Sample], rows: list[tuple[str, int]],
                 classes: tuple[str, ...], questions: list[str] | None, key: str):
        self.spec, self.samples, self.classes = spec.text, samples, classes
        self.parts, self.image_column, self.rows = parts, image_column, rows
        self.questions = questions  # per sample, in question mode
        self.root = Path(spec.target).expanduser()
        self._key = key

    def content_key(self) -> str:
        return self._key

    def image(self, index: int, *, keep_side: int | None = None) -> Image.Image:
        split, row = self.rows[index]
        value = self.parts[split][row][self.image_column]
        return _decode(value, self.root, keep_side)


def _decode(value, root: Path, keep_side: int | None) -> Image.Image:
    """An image cell as stored: `{bytes, path}` (an `Image` feature read without decoding), a path, or an array."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return load_image_bytes(value["bytes"], keep_side=keep_side)
        value = value.get("path")
        if not value:
            raise ImageError("image cell holds neither bytes nor a path")
    if isinstance(value, str):
        path = Path(value)
        return load_image(path if path.is_absolute() else root / path, keep_side=keep_side)
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if value is None:
        raise ImageError("image cell is empty")
    import numpy as np

    return array_to_rgb(np.asarray(value))


@register_source("hf-dataset")
def hf_dataset(spec: Spec) -> DataSource:
    """`hf-dataset:PATH_OR_ID[?split=S&image=COL&label=COL&group=COL&id=COL&question=COL&answer=COL]` (module docs)."""
    spec.check_params(PARAMS)
    parts = _splits(_load(spec), spec)
    first = next(iter(parts.values()))
    image_column = _image_column(first, spec)
    questions = "question" in spec.params
    if questions:
        return _question_source(spec, parts, image_column)
    label_column = _column(first, spec, "label", ("label", "labels"), feature="ClassLabel")
    names = _class_names(parts, label_column)
    group_column = _optional_column(first, spec, "group")
    id_column = _optional_column(first, spec, "id")
    samples, rows, seen = [], [], set()
    for split, ds in parts.items():
        labels = ds[label_column]
        groups = ds[group_column] if group_column else None
        ids = ds[id_column] if id_column else None
        for i, value in enumerate(labels):
            sid = str(ids[i]) if ids is not None else (f"{split}/{i}" if split else str(i))
            if sid in seen:
                raise UserError(f"{spec.text}: duplicate sample id {sid!r} (split {split or '-'}, row {i})")
            seen.add(sid)
            text = _label_text(value, ds, label_column)
            if text is None:
                raise UserError(f"{spec.text}: split {split or '-'} row {i} has no {label_column!r}")
            group = str(groups[i]) if groups is not None and groups[i] not in (None, "") else sid
            samples.append(Sample(id=sid, label=names.index(text), group=group, split=SPLIT_ALIASES.get(split, "")))
            rows.append((split, i))
    return HFDatasetSource(spec, parts, image_column, samples, rows, tuple(names), None, _key(parts))


def _load(spec: Spec):
    try:
        import datasets
    except ImportError:
        raise UserError("hf-dataset: needs the 'hf' extra: pip install 'medfrag-probe[hf]'") from None
    path = Path(spec.target).expanduser()
    try:
        if path.exists():
            return datasets.load_from_disk(str(path))
        return datasets.load_dataset(spec.target, name=spec.params.get("config") or None,
                                     revision=spec.params.get("revision") or None)
    except Exception as exc:  # noqa: BLE001 - not found, offline, not a dataset folder: one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"hf-dataset: cannot open {spec.target!r} ({type(exc).__name__}: {first[:200]})") from None


def _splits(data, spec: Spec) -> dict:
    """{split name: Dataset} with images left undecoded; `?split=` picks; several splits must be train/val/test."""
    import datasets

    parts = dict(data.items()) if isinstance(data, datasets.DatasetDict) else {"": data}
    if "split" in spec.params:
        wanted = [s.strip() for s in spec.params["split"].split(",") if s.strip()]
        unknown = [s for s in wanted if s not in parts]
        if unknown:
            raise UserError(f"{spec.text}: no split {unknown[0]!r}; valid: {', '.join(p for p in parts if p) or '-'}")
        parts = {s: parts[s] for s in wanted}
    if len(parts) == 1:
        parts = {"": next(iter(parts.values()))}
    odd = [s for s in parts if s and s not in SPLIT_ALIASES]
    if odd:
        raise UserError(f"{spec.text}: split {odd[0]!r} is not train, val or test; keep the splits you want with "
                        f"?split=... (valid: {', '.join(parts)})")
    return {name: _undecoded(ds) for name, ds in parts.items()}


def _undecoded(ds):
    import datasets

    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


def _image_column(ds, spec: Spec) -> str:
    import datasets

    if "image" in spec.params:
        return _named(ds, spec, "image")
    found = [n for n, f in ds.features.items() if isinstance(f, datasets.Image)]
    found += [n for n in ("image", "img", "path", "image_path") if n in ds.column_names]
    if not found:
        raise UserError(f"{spec.text}: no image column (no Image feature, none named image/img); name it with "
                        f"?image=COL; columns: {', '.join(ds.column_names)}")
    return found[0]


def _column(ds, spec: Spec, key: str, defaults: tuple[str, ...], *, feature: str = "") -> str:
    import datasets

    if key in spec.params:
        return _named(ds, spec, key)
    if feature:
        typed = [n for n, f in ds.features.items() if isinstance(f, getattr(datasets, feature))]
        if typed:
            return typed[0]
    for name in defaults:
        if name in ds.column_names:
            return name
    raise UserError(f"{spec.text}: no {key} column; name it with ?{key}=COL; columns: {', '.join(ds.column_names)}")


def _optional_column(ds, spec: Spec, key: str) -> str | None:
    return _named(ds, spec, key) if key in spec.params else None


def _named(ds, spec: Spec, key: str) -> str:
    name = spec.params[key]
    if name not in ds.column_names:
        raise UserError(f"{spec.text}: {key} column {name!r} does not exist; columns: {', '.join(ds.column_names)}")
    return name


def _label_text(value, ds, column: str) -> str | None:
    import datasets

    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    feature = ds.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return feature.int2str(int(value)) if int(value) >= 0 else None
    return str(value).strip()


def _class_names(parts: dict, column: str) -> list[str]:
    import datasets

    feature = next(iter(parts.values())).features[column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = {str(v).strip() for ds in parts.values() for v in ds[column] if v is not None and str(v).strip()}
    names = sorted(values)
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)
    if len(names) < 2:
        raise UserError(f"hf-dataset: label column {column!r} holds fewer than 2 classes ({', '.join(names) or '-'})")
    return names


def _question_source(spec: Spec, parts: dict, image_column: str) -> DataSource:
    first = next(iter(parts.values()))
    question_column = _named(first, spec, "question")
    answer_column = _column(first, spec, "answer", ("answer", "answers"))
    group_column = _optional_column(first, spec, "group")
    id_column = _optional_column(first, spec, "id")
    names = ("no", "yes")
    samples, rows, questions, dropped, seen = [], [], [], 0, set()
    for split, ds in parts.items():
        cols = {c: ds[c] for c in {question_column, answer_column, *(c for c in (group_column, id_column) if c)}}
        for i in range(len(ds)):
            answer = YES_NO.get(str(cols[answer_column][i] or "").strip().lower().rstrip("."))
            question = str(cols[question_column][i] or "").strip()
            if answer is None or not question:
                dropped += 1
                continue
            sid = str(cols[id_column][i]) if id_column else (f"{split}/{i}" if split else str(i))
            if sid in seen:
                raise UserError(f"{spec.text}: duplicate sample id {sid!r} (split {split or '-'}, row {i})")
            seen.add(sid)
            group = str(cols[group_column][i]) if group_column else _image_key(ds[i][image_column], sid)
            samples.append(Sample(id=sid, label=names.index(answer), group=group,
                                  split=SPLIT_ALIASES.get(split, "")))
            rows.append((split, i))
            questions.append(question)
    if not samples:
        raise UserError(f"{spec.text}: no row has a yes/no answer in {answer_column!r} (closed questions only)")
    if dropped:
        from .._log import info

        info(f"hf-dataset: kept {len(samples)} closed (yes/no) questions, left out {dropped} open or empty ones")
    key = _key(parts) + hashlib.sha256("\n".join(questions).encode()).hexdigest()[:8]
    return HFDatasetSource(spec, parts, image_column, samples, rows, names, questions, key)


def _image_key(value, fallback: str) -> str:
    """The identity of an image cell: a hash of its bytes (or its path), so questions about one image share it."""
    if isinstance(value, dict) and value.get("bytes"):
        return "img-" + hashlib.sha256(value["bytes"]).hexdigest()[:16]
    if isinstance(value, dict) and value.get("path"):
        return "img-" + str(value["path"])
    if isinstance(value, str):
        return "img-" + value
    return fallback


def _key(parts: dict) -> str:
    """What decides the images: the datasets' own fingerprints (content hashes of their arrow tables)."""
    return ",".join(f"{name}:{getattr(ds, '_fingerprint', '')}" for name, ds in parts.items())
