"""The HDF5 embedding cache (DESIGN section 4): schema, crash-safe part files, consolidation, reading.

Layout, readable with plain h5py::

    /                 attrs: schema, schema_version, model, model_fingerprint, vision_fingerprint,
                             projector_fingerprint, processor_fingerprint, data, data_fingerprint, reads_point,
                             dtype, store_dtype, points (JSON {point: [poolings]}), prompt, toolkit/torch/
                             transformers versions, created
    /samples/id       [N] str     /samples/label [N] int   /samples/group [N] str   /samples/split [N] str
    /samples/done     [N] bool    /samples/error [N] str ("" when ok)
    /classes          [K] str
    /emb/POINT/POOLING [N, D] (or [N, T, D] for `tokens`) float16 by default

Crash safety: extraction writes each finished batch as a part file (`OUT.parts/rNNNNNNNN.safetensors`, written to a
temporary name and renamed), then `consolidate` assembles the HDF5 file under a temporary name and renames it over
`OUT`. A kill at any moment loses at most the batches in flight; re-running resumes.

    cache = EmbeddingCache("cache/tiny-llava__synth-brain-mri.h5")
    x, y = cache.load("vision.block.02", "mean"), cache.labels
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ._fs import read_stamp, tmp_name, write_stamp
from .errors import UserError, option

SCHEMA = "medfrag-probe/cache"
SCHEMA_VERSION = 1
STR = h5py.string_dtype()
ROW_BYTES = 64 << 20  # rows copied per step are bounded by this many bytes


class EmbeddingCache:
    """Read access to a cache file; needs only `/samples/id`, `/samples/label`, `/classes` and `/emb`.

    Missing optional datasets get defaults: group = id, split = "", done = True, error = "".
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"cache {self.path} not found")
        try:
            with h5py.File(self.path, "r") as fh:
                self._read_index(fh)
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:  # damaged internals, odd dtypes
            raise UserError(f"cache {self.path} is not a readable cache ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'damaged'})") from None

    def _read_index(self, fh: h5py.File) -> None:
        for required in ("samples/id", "samples/label", "classes", "emb"):
            if required not in fh:
                raise UserError(f"cache {self.path} lacks /{required}; see the cache schema in the docs")
        self.attrs = {k: _plain(v) for k, v in fh.attrs.items()}
        self.ids = _strings(fh["samples/id"])
        if not np.issubdtype(fh["samples/label"].dtype, np.integer):
            raise UserError(f"cache {self.path}: /samples/label has dtype {fh['samples/label'].dtype}, expected "
                            "integers (class indices into /classes)")
        self.labels = fh["samples/label"][()].astype(np.int64)
        n = len(self.ids)
        self.groups = _strings(fh["samples/group"]) if "samples/group" in fh else list(self.ids)
        self.splits = _strings(fh["samples/split"]) if "samples/split" in fh else [""] * n
        self.done = fh["samples/done"][()].astype(bool) if "samples/done" in fh else np.ones(n, bool)
        self.errors = _strings(fh["samples/error"]) if "samples/error" in fh else [""] * n
        self.classes = _strings(fh["classes"])
        self.datasets = {(point, pooling): fh[f"emb/{point}/{pooling}"].shape
                         for point in fh["emb"] for pooling in fh[f"emb/{point}"]}
        self._check_index(fh)

    def _check_index(self, fh: h5py.File) -> None:
        """Every per-sample array has one entry per sample id."""
        n = len(self.ids)
        lengths = {"label": len(self.labels), "group": len(self.groups), "split": len(self.splits),
                   "done": len(self.done), "error": len(self.errors)}
        wrong = [f"/samples/{k} has {v}" for k, v in lengths.items() if v != n]
        if wrong:
            raise UserError(f"cache {self.path}: {', '.join(wrong)} entries for {n} sample ids; the file is damaged "
                            "or was written by another tool (re-extract, or fix it)")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def unfinished(self) -> int:
        """Samples neither extracted nor failed: an extraction that was stopped (or is still running)."""
        return int((~self.done & (np.asarray(self.errors, dtype=object) == "")).sum())

    def points(self) -> list[tuple[str, str]]:
        """(point, pooling) pairs held, in file order."""
        return sorted(self.datasets)

    def load(self, point: str, pooling: str, *, rows: np.ndarray | None = None) -> np.ndarray:
        """Embeddings of one (point, pooling) as float32; `rows` selects sample indices."""
        if (point, pooling) not in self.datasets:
            valid = ", ".join(f"{p}/{q}" for p, q in self.points())
            raise UserError(f"cache {self.path} has no {point}/{pooling}; valid: {valid}")
        rows_held = self.datasets[(point, pooling)][0]
        if rows_held != len(self):
            raise UserError(f"cache {self.path}: emb/{point}/{pooling} has {rows_held} rows for {len(self)} samples; "
                            "the file is damaged (cache verify lists every problem)")
        try:
            with h5py.File(self.path, "r") as fh:
                data = fh[f"emb/{point}/{pooling}"]
                values = data[()] if rows is None else data[np.sort(rows)]
        except (OSError, RuntimeError, ValueError) as exc:  # a failed checksum or a damaged chunk
            raise UserError(f"cache {self.path}: emb/{point}/{pooling} cannot be read ({str(exc).splitlines()[0]}); "
                            "the file is damaged") from None
        return values.astype(np.float32)

    def summary(self) -> dict:
        """Counts and metadata for `cache info`."""
        failed = {i: e for i, (d, e) in enumerate(zip(self.done, self.errors)) if not d and e}
        return {"path": str(self.path), "samples": len(self), "done": int(self.done.sum()), "failed": len(failed),
                "classes": self.classes, "datasets": {f"{p}/{q}": list(s) for (p, q), s in self.datasets.items()},
                "attrs": self.attrs}


def _strings(dataset) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in dataset[()]]


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def verify(path: str | Path) -> list[str]:
    """Check a cache against the schema; return a list of problems (empty when sound)."""
    cache = EmbeddingCache(path)
    problems = []
    n = len(cache)
    if cache.attrs.get("schema") not in (None, SCHEMA):
        problems.append(f"schema attribute is {cache.attrs.get('schema')!r}, expected {SCHEMA!r}")
    if len(set(cache.ids)) != n:
        problems.append("sample ids are not unique")
    if n and (cache.labels.min() < 0 or cache.labels.max() >= len(cache.classes)):
        problems.append(f"labels outside 0..{len(cache.classes) - 1}")
    with h5py.File(cache.path, "r") as fh:
        for (point, pooling), shape in cache.datasets.items():
            if shape[0] != n:
                problems.append(f"emb/{point}/{pooling} has {shape[0]} rows for {n} samples")
                continue
            for start in range(0, n, 4096):
                try:
                    block = fh[f"emb/{point}/{pooling}"][start:start + 4096]
                except (OSError, RuntimeError) as exc:
                    problems.append(f"emb/{point}/{pooling} rows {start}.. cannot be read: "
                                    f"{str(exc).splitlines()[0]} (damaged bytes)")
                    break
                done = cache.done[start:start + 4096]
                if not np.isfinite(block[done]).all():
                    problems.append(f"emb/{point}/{pooling} has non-finite values in finished rows")
                    break
    if cache.unfinished:
        problems.append(f"{cache.unfinished} samples neither done nor failed (an unfinished extraction; re-run it)")
    return problems


@dataclass(frozen=True)
class CacheMeta:
    """What a cache is of: the identity checked before appending, and the plan of datasets."""

    attrs: dict
    plan: dict[str, tuple[str, ...]]

    def identity(self) -> dict:
        """The attributes that must match to resume or append."""
        keys = ("model_fingerprint", "processor_fingerprint", "data_fingerprint", "store_dtype", "prompt", "points")
        return {k: self.attrs.get(k) for k in keys}


def parts_dir(out: Path) -> Path:
    """Folder of part files of `out`."""
    return out.with_name(out.name + ".parts")


def check_existing(out: Path, meta: CacheMeta, *, overwrite: bool) -> np.ndarray | None:
    """Validate any existing cache and parts against `meta`; return the done mask of a compatible cache.

    A mismatch is refused naming both sides, unless `overwrite`, which deletes the old cache and parts.
    """
    parts = parts_dir(out)
    if overwrite:
        shutil.rmtree(parts, ignore_errors=True)
        out.unlink(missing_ok=True)
        return None
    done = None
    if out.exists():
        old = EmbeddingCache(out)
        _same_identity(dict(old.attrs), meta, where=str(out))
        done = old.done
    recorded = read_stamp(parts / "meta.json")
    if recorded is not None:
        _same_identity(recorded, meta, where=str(parts))
    return done


def _same_identity(attrs: dict, meta: CacheMeta, *, where: str) -> None:
    want = meta.identity()
    for key, value in want.items():
        have = attrs.get(key)
        if have != value:
            raise UserError(f"{where} was made with {key}={have!r}, this run has {key}={value!r}; "
                            f"use another {option('out')}, or {option('overwrite', True)} to replace it")


def start_parts(out: Path, meta: CacheMeta) -> Path:
    """Create the parts folder with its identity stamp."""
    parts = parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    stamp = parts / "meta.json"
    if not stamp.exists():
        write_stamp(stamp, meta.identity())
    return parts


def write_part(parts: Path, indices: np.ndarray, arrays: dict[str, np.ndarray], errors: dict[int, str],
               attempted: np.ndarray) -> Path:
    """Write one finished batch atomically: embeddings of `indices`, and the reasons of failed samples."""
    from safetensors.numpy import save_file

    first = int(attempted.min())
    path = parts / f"r{first:09d}-{int(attempted.max()):09d}.safetensors"
    tensors = {"index": indices.astype(np.int64), "attempted": attempted.astype(np.int64)}
    tensors.update({f"emb/{name}": np.ascontiguousarray(value) for name, value in arrays.items()})
    tmp = tmp_name(path)
    ensure_space(parts, sum(v.nbytes for v in tensors.values()), what=f"the batch part {path.name}")
    try:
        save_file(tensors, str(tmp), metadata={"errors": json.dumps({str(k): v for k, v in errors.items()})})
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError) and _disk_full(exc):  # safetensors reports a full disk as its own error
            raise OSError(errno.ENOSPC, "No space left on device", str(parts)) from None
        raise
    return path


def _disk_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "no space left" in text or "os error 28" in text or "quota exceeded" in text


def ensure_space(folder: Path, need: int, *, what: str) -> None:
    """Refuse (as a full-disk `OSError`) to start a write of about `need` bytes that the disk cannot hold: HDF5 can
    crash the process on a full disk instead of raising, so the check comes first."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    margin = (1 << 20) + need // 20
    if free < need + margin:
        raise OSError(errno.ENOSPC, f"No space left on device ({what} needs about {_mb(need + margin)}, "
                      f"{_mb(free)} free)", str(folder))


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB"


def iter_parts(parts: Path) -> Iterator[Path]:
    """Finished part files (temporary files of batches in flight are ignored)."""
    if parts.is_dir():
        yield from sorted(parts.glob("r*.safetensors"))


def attempted_in_parts(parts: Path) -> set[int]:
    """Sample indices that finished parts already cover (extracted or failed)."""
    from safetensors import safe_open

    seen: set[int] = set()
    for path in iter_parts(parts):
        with safe_open(str(path), "np") as fh:
            seen.update(int(i) for i in fh.get_tensor("attempted"))
    return seen


def consolidate(out: Path, meta: CacheMeta, samples, classes, *, previous: Path | None = None) -> dict[int, str]:
    """Assemble the cache from a previous cache (if any) and all part files; return failures {index: reason}.

    Written to a temporary file then renamed over `out`; the parts are removed only after the rename.
    """
    parts = parts_dir(out)
    tmp = tmp_name(out)
    n = len(samples)
    failures: dict[int, str] = {}
    previous = previous if previous is not None and previous.exists() else None
    need = sum(p.stat().st_size for p in iter_parts(parts)) + (previous.stat().st_size if previous else 0)
    ensure_space(out.parent, need + 200 * n, what=f"the cache {out.name}")
    try:
        with h5py.File(tmp, "w") as fh:
            _write_header(fh, meta, samples, classes)
            done = np.zeros(n, bool)
            errors = [""] * n
            if previous is not None:
                _copy_previous(fh, previous, done, errors)
            for path in iter_parts(parts):
                _merge_part(fh, path, done, errors, failures)
            for i in np.flatnonzero(done):
                errors[i] = ""
            fh["samples/done"][...] = done
            fh["samples/error"][...] = np.array(errors, dtype=object)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the parts (and any previous cache) are untouched: a re-run consolidates again
        raise
    shutil.rmtree(parts, ignore_errors=True)
    return {i: errors[i] for i in range(n) if errors[i]}


def _write_header(fh: h5py.File, meta: CacheMeta, samples, classes) -> None:
    for key, value in meta.attrs.items():
        fh.attrs[key] = "" if value is None else (value if isinstance(value, (int, float)) else str(value))
    group = fh.create_group("samples")
    group.create_dataset("id", data=np.array([s.id for s in samples], dtype=object), dtype=STR)
    group.create_dataset("label", data=np.array([s.label for s in samples], dtype=np.int64))
    group.create_dataset("group", data=np.array([s.group for s in samples], dtype=object), dtype=STR)
    group.create_dataset("split", data=np.array([s.split for s in samples], dtype=object), dtype=STR)
    group.create_dataset("done", shape=(len(samples),), dtype=bool)
    group.create_dataset("error", shape=(len(samples),), dtype=STR)
    fh.create_dataset("classes", data=np.array(list(classes), dtype=object), dtype=STR)
    fh.create_group("emb")


def _dataset(fh: h5py.File, name: str, row_shape: tuple[int, ...], dtype, n: int):
    key = f"emb/{name}"
    if key not in fh:
        row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
        chunk_rows = max(1, min(n, (1 << 20) // max(row_bytes, 1)))
        # fletcher32: a checksum per chunk, so flipped bytes are an error on read, never silently wrong numbers
        fh.create_dataset(key, shape=(n, *row_shape), dtype=dtype, chunks=(chunk_rows, *row_shape), fletcher32=True)
    return fh[key]


def _merge_part(fh, path: Path, done: np.ndarray, errors: list[str], failures: dict) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "np") as part:
        index = part.get_tensor("index")
        reasons = json.loads((part.metadata() or {}).get("errors", "{}"))
        for name in part.keys():
            if name.startswith("emb/"):
                value = part.get_tensor(name)
                _write_rows(_dataset(fh, name[4:], value.shape[1:], value.dtype, len(done)), index, value)
    done[index] = True
    for key, reason in reasons.items():
        errors[int(key)] = reason
        failures[int(key)] = reason


def _write_rows(dataset, index: np.ndarray, value: np.ndarray) -> None:
    if len(index) == 0:
        return
    order = np.argsort(index)
    index, value = index[order], value[order]
    if index[-1] - index[0] + 1 == len(index):
        dataset[int(index[0]):int(index[-1]) + 1] = value
    else:
        dataset[index] = value


def _copy_previous(fh, previous: Path, done: np.ndarray, errors: list[str]) -> None:
    with h5py.File(previous, "r") as old:
        old_done = old["samples/done"][()].astype(bool)
        old_errors = _strings(old["samples/error"])
        for point in old["emb"]:
            for pooling in old[f"emb/{point}"]:
                source = old[f"emb/{point}/{pooling}"]
                target = _dataset(fh, f"{point}/{pooling}", source.shape[1:], source.dtype, len(done))
                step = max(1, ROW_BYTES // max(1, int(np.prod(source.shape[1:])) * source.dtype.itemsize))
                for start in range(0, len(done), step):
                    target[start:start + step] = source[start:start + step]
    done |= old_done
    for i, reason in enumerate(old_errors):
        if reason and not old_done[i]:
            errors[i] = reason


def write_embeddings(path: str | Path, *, ids, labels, classes, embeddings: dict[str, np.ndarray], groups=None,
                     splits=None, attrs: dict | None = None) -> Path:
    """Write a complete cache in the minimal schema from arrays already in memory (embeddings of another pipeline,
    description texts, tests): `embeddings` maps "POINT/POOLING" (or "POINT", pooling `mean`) to an (N, D) array.
    Written to a temporary name and renamed, so a reader never sees half of it; `EmbeddingCache` reads it back."""
    path = Path(path)
    n = len(ids)
    tmp = tmp_name(path)
    try:
        with h5py.File(tmp, "w") as fh:
            fh.attrs.update({k: v for k, v in (attrs or {}).items() if v is not None})
            fh.create_dataset("classes", data=np.array(list(classes), dtype=object), dtype=STR)
            fh.create_dataset("samples/id", data=np.array(list(ids), dtype=object), dtype=STR)
            fh.create_dataset("samples/label", data=np.asarray(labels, dtype=np.int64))
            for name, values in (("group", groups), ("split", splits)):
                if values is not None:
                    fh.create_dataset(f"samples/{name}", data=np.asarray(values).astype(str).astype(object),
                                      dtype=STR)
            for name, X in embeddings.items():
                if len(X) != n:
                    raise ValueError(f"embeddings {name!r} have {len(X)} rows for {n} samples")
                fh.create_dataset(f"emb/{name if '/' in name else name + '/mean'}", data=np.asarray(X))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
