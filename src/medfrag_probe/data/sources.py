"""Data sources: every spec (`imagefolder:`, `manifest:`, `medmnist:`, `synth:`) becomes a `DataSource`.

A source is a list of `Sample` records plus a way to load sample `i` as an RGB image. Sample ids are stable
strings (relative paths, or `split/index` for arrays) and everything downstream joins on them.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..specs import Spec, parse_spec
from . import hf_datasets, synth  # noqa: F401  (they register hf-dataset: and synth:)
from .base import SOURCES, SPLIT_ALIASES, SPLITS, DataSource, Sample, register_source
from .images import has_image_suffix, load_image, to_rgb


def open_source(spec: str) -> DataSource:
    """Open a data spec such as `imagefolder:DIR`, `manifest:FILE.csv` or `synth:brain-mri?n=200`."""
    parsed = parse_spec(spec, kinds=set(SOURCES), what="data")
    source = SOURCES[parsed.kind](parsed)
    if not source.samples:
        raise UserError(f"data source {spec!r} holds no samples")
    _check_splits(source)
    return source


def _check_splits(source: DataSource) -> None:
    marked = sum(1 for s in source.samples if s.split)
    if 0 < marked < len(source.samples):
        raise UserError(f"{source.spec}: {marked} of {len(source.samples)} samples have a split; give all or none")


def _normal_split(value: str, where: str) -> str:
    value = (value or "").strip().lower()
    if not value:
        return ""
    if value not in SPLIT_ALIASES:
        raise UserError(f"{where}: unknown split {value!r}; valid: {', '.join(SPLITS)} (or empty)")
    return SPLIT_ALIASES[value]


def decode_hint(source: DataSource, adapter) -> dict:
    """Keyword arguments for `source.image`: `{"keep_side": adapter.decode_side()}` when the adapter gives a decode
    bound and the (possibly user-written) source accepts the hint, else none."""
    import inspect

    side = getattr(adapter, "decode_side", None)  # duck-typed adapters may not say
    try:
        takes = "keep_side" in inspect.signature(source.image).parameters
    except (TypeError, ValueError):
        takes = False
    return {"keep_side": side()} if side is not None and takes else {}


class FileSource(DataSource):
    """Samples that are image files on disk (imagefolder and manifest)."""

    def __init__(self, spec: Spec, root: Path, samples: list[Sample], classes: tuple[str, ...]):
        self.spec, self.root, self.samples, self.classes = spec.text, root, samples, classes
        self.nifti_slice = spec.get("slice", None, int)

    def image(self, index: int, *, keep_side: int | None = None) -> Image.Image:
        return load_image(self.root / self.samples[index].path, nifti_slice=self.nifti_slice, keep_side=keep_side)


def patient_pattern(spec: Spec) -> re.Pattern | None:
    """The `group=REGEX` parameter, read raw from the spec (no URL decoding, so `+` stays `+`; `&` ends it): a regular
    expression with exactly one capture group, searched in each file name, whose match is the patient id."""
    found = re.search(r"[?&]group=([^&]*)", spec.text)
    if not found:
        return None
    try:
        pattern = re.compile(found.group(1))
    except re.error as exc:
        raise UserError(f"{spec.text}: group={found.group(1)!r} is not a valid regular expression ({exc})") from None
    if pattern.groups != 1:
        raise UserError(f"{spec.text}: group={found.group(1)!r} must have exactly one capture group (the patient "
                        f"id), it has {pattern.groups}")
    return pattern


def _patient(pattern: re.Pattern | None, path: Path, rel: str, spec: Spec) -> str:
    if pattern is None:
        return rel
    match = pattern.search(path.name)
    if match is None or not match.group(1):
        raise UserError(f"{spec.text}: the group pattern {pattern.pattern!r} finds no patient id in file name "
                        f"{path.name!r} ({rel})")
    return match.group(1)


@register_source("imagefolder")
def imagefolder(spec: Spec) -> DataSource:
    """`imagefolder:DIR[?group=REGEX]`: DIR/CLASS/* or DIR/{train,val,test}/CLASS/*; ids are paths relative to DIR.
    Without `group` every image is its own patient; with it the patient id is the regex's one capture group searched
    in the file name (e.g. `group=^(person\\d+)_` for Kermany's chest X-rays)."""
    spec.check_params({"slice", "group"})
    pattern = patient_pattern(spec)
    root = Path(spec.target).expanduser()
    if not root.is_dir():
        raise UserError(f"imagefolder: {root} is not a directory")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in subdirs if p.name.lower() in SPLIT_ALIASES]
    if split_dirs and len(split_dirs) == len(subdirs):
        class_names = sorted({c.name for d in split_dirs for c in d.iterdir() if c.is_dir()})
        groups = [(_normal_split(d.name, spec.text), d) for d in split_dirs]
    else:
        class_names = [p.name for p in subdirs]
        groups = [("", root)]
    if not class_names:
        raise UserError(f"imagefolder: {root} has no class sub-folders (expected DIR/CLASS/IMAGE)")
    index = {name: i for i, name in enumerate(class_names)}
    samples = []
    for split, base in groups:
        for name in class_names:
            folder = base / name
            found = folder.rglob("*") if folder.is_dir() else []
            files = sorted(f for f in found if f.is_file() and has_image_suffix(f))
            for f in files:
                rel = f.relative_to(root).as_posix()
                samples.append(Sample(id=rel, label=index[name], group=_patient(pattern, f, rel, spec), split=split,
                                      path=rel))
    return FileSource(spec, root, samples, tuple(class_names))


@register_source("manifest")
def manifest(spec: Spec) -> DataSource:
    """`manifest:FILE.csv|.jsonl` with columns path,label[,group][,split][,id]; paths relative to the file."""
    spec.check_params({"slice"})
    path = Path(spec.target).expanduser()
    if not path.is_file():
        raise UserError(f"manifest: file {path} not found")
    rows = _read_rows(path)
    if not rows:
        raise UserError(f"manifest {path} has no rows")
    missing = [c for c in ("path", "label") if c not in rows[0]]
    if missing:
        raise UserError(f"manifest {path} lacks column {missing[0]!r}; columns: path,label[,group][,split][,id]; "
                        f"found: {','.join(rows[0])}")
    first = 2 if path.suffix.lower() == ".csv" else 1  # CSV rows start after the header line
    class_names = _class_names([_label_text(r["label"]) for r in rows], path, first=first)
    index = {name: i for i, name in enumerate(class_names)}
    samples, seen = [], set()
    for line, row in enumerate(rows, start=first):
        rel = str(row["path"]).strip()
        sid = str(row.get("id") or rel).strip()
        if not rel:
            raise UserError(f"manifest {path} row {line}: empty path")
        if sid in seen:
            raise UserError(f"manifest {path} row {line}: duplicate sample id {sid!r}")
        seen.add(sid)
        group = str(row.get("group") or "").strip() or sid
        split = _normal_split(str(row.get("split") or ""), f"manifest {path} row {line}")
        samples.append(Sample(id=sid, label=index[_label_text(row["label"])], group=group, split=split, path=rel))
    return FileSource(spec, path.parent, samples, tuple(class_names))


def _read_text(path: Path) -> str:
    """The manifest as text: UTF-8, with or without a byte-order mark (Excel exports one); other encodings are refused
    with the line that fails, never a traceback."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"manifest {path} line {line}: not UTF-8 (byte {data[exc.start]:#04x}); save it as UTF-8") \
            from None


def _read_rows(path: Path) -> list[dict]:
    """Manifest rows as dicts; the line number of each row is its position (CSV: after the header)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise UserError(f"manifest {path}: unknown format {path.suffix!r}; valid: .csv, .jsonl")
    text = _read_text(path)
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"manifest {path} line {n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"manifest {path} line {n}: a row must be a JSON object with path and label, "
                                f"got {type(row).__name__}")
            rows.append(row)
        return rows
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    for n, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):  # a short or long row
            raise UserError(f"manifest {path} row {n}: {len([v for v in row.values() if v is not None])} values "
                            f"for {len([k for k in row if k is not None])} columns")
    return rows


def _label_text(value) -> str:
    """A label as text; a missing one (JSON null) is empty, never the class "None"."""
    return "" if value is None else str(value).strip()


def _class_names(labels: list[str], path: Path, *, first: int = 2) -> list[str]:
    empty = [i for i, lab in enumerate(labels) if not lab]
    if empty:
        raise UserError(f"manifest {path} row {empty[0] + first}: empty label")
    names = sorted(set(labels))
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)
    return names


class ArraySource(DataSource):
    """Samples held in memory as a uint8 array (MedMNIST npz)."""

    def __init__(self, spec: Spec, images: np.ndarray, samples: list[Sample], classes: tuple[str, ...]):
        self.spec, self.images, self.samples, self.classes = spec.text, images, samples, classes

    def image(self, index: int, *, keep_side: int | None = None) -> Image.Image:
        from .images import array_to_rgb

        return to_rgb(array_to_rgb(self.images[index]))


@register_source("medmnist")
def medmnist(spec: Spec) -> DataSource:
    """`medmnist:FILE.npz[?classes=a,b,..]`: MedMNIST `{train,val,test}_{images,labels}`; ids are `split/index`."""
    spec.check_params({"classes"})
    path = Path(spec.target).expanduser()
    if not path.is_file():
        raise UserError(f"medmnist: file {path} not found")
    with np.load(path, allow_pickle=False) as npz:
        parts = [s for s in SPLITS if f"{s}_images" in npz]
        if not parts:
            raise UserError(f"medmnist {path}: no train_images/val_images/test_images keys; found: {', '.join(npz)}")
        arrays = [(s, npz[f"{s}_images"], npz[f"{s}_labels"]) for s in parts]
    labels = np.concatenate([_medmnist_labels(lab, path) for _, _, lab in arrays])
    images = np.concatenate([img for _, img, _ in arrays])
    ids = [f"{s}/{i}" for s, img, _ in arrays for i in range(len(img))]
    splits = [s for s, img, _ in arrays for _ in range(len(img))]
    n_classes = int(labels.max()) + 1
    names = tuple(spec.get("classes", "", str).split(",")) if "classes" in spec.params else tuple(
        str(i) for i in range(n_classes))
    if len(names) < n_classes:
        raise UserError(f"medmnist {path}: labels go up to {n_classes - 1} but {len(names)} class names were given")
    samples = [Sample(id=i, label=int(lab), group=i, split=s) for i, lab, s in zip(ids, labels, splits)]
    return ArraySource(spec, images, samples, names)


def _medmnist_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise UserError(f"medmnist {path}: multi-label targets ({labels.shape[1]} columns) are not supported; "
                        "give a single-label task")
    labels = labels.reshape(-1)
    if labels.size and labels.min() < 0:
        raise UserError(f"medmnist {path}: negative label {labels.min()}")
    return labels.astype(np.int64)
