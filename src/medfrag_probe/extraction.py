"""`extract`: run a model over a data source and cache embeddings of its hook points in HDF5.

    from medfrag_probe import extract
    result = extract("tiny:llava", "synth:brain-mri?n=200", points="vision.block.*,projector",
                     poolings="mean", out="cache/demo.h5")
    result.path, result.failed   # the cache, and {sample id: reason} for images that could not be read

Batches are fixed slices of the sample index (`[k*B, (k+1)*B)`), so a resumed run computes exactly the batches an
uninterrupted run would, and its cache is identical row for row.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from . import __version__
from ._fs import cache_root, output_lock, remove_stale_tmp
from ._log import info, is_quiet
from ._provenance import device_info, versions
from .cache import (
    SCHEMA,
    SCHEMA_VERSION,
    CacheMeta,
    attempted_in_parts,
    check_existing,
    consolidate,
    parts_dir,
    start_parts,
    write_part,
)
from .data.images import ImageError
from .data.sources import DataSource, decode_hint, open_source
from .devices import resolve_device
from .distributed import process_group, rank_device
from .errors import UserError, option
from .models.base import STAGES, Adapter, Point
from .models.hooks import run_traced, trace
from .models.loading import load_adapter
from .pooling import plan_poolings, pool
from .specs import safe_name

STORE_DTYPES = {"float16": np.float16, "float32": np.float32}
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class ExtractResult:
    """Outcome of one extraction: where the cache is, what this run did, and every failed sample's reason."""

    path: Path
    samples: int
    extracted: int
    skipped: int
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Throughput of this run."""
        return self.extracted / self.seconds if self.seconds > 0 else 0.0


def slug(spec: str) -> str:
    """A short file-name-safe name for a spec, with a hash so that different specs never collide."""
    kind, _, rest = spec.partition(":")
    target, _, query = rest.partition("?")
    base = Path(target.rstrip("/")).name if ("/" in target and Path(target).expanduser().exists()) else target
    text = safe_name(f"{kind}-{base}-{query}" if rest else spec, keep=".", collapse=True, limit=60)
    return f"{text}-{hashlib.sha1(spec.encode()).hexdigest()[:6]}"


def default_out(model: str, data: str) -> Path:
    """`CACHE/embeddings/<model>__<data>.h5`, CACHE being `$MEDFRAG_CACHE` or `~/.cache/medfrag-probe`."""
    return cache_root() / "embeddings" / f"{slug(model)}__{slug(data)}.h5"


def extract(model: str, data: str | DataSource, *, points: str | list[str] | None = None,
            poolings: str | list[str] | None = None, out: str | Path | None = None, batch_size: int = 32,
            device: str = "cpu", dtype: str = "float32", store_dtype: str = "float16", workers: int | None = None,
            prompt: str | None = None, overwrite: bool = False, trust_remote_code: bool = False) -> ExtractResult:
    """Extract embeddings of `model` over `data` into an HDF5 cache; resumes a killed run of the same command.

    `points` are names or globs (default: every vision point and the projector; `lm.block.*` runs the language
    model with `prompt`); `poolings` default to cls+mean (mean where there is no CLS), `vector` for pooled
    embeddings and image+last for language-model points.
    """
    _check_options(batch_size=batch_size, store_dtype=store_dtype, workers=workers)
    source = data if isinstance(data, DataSource) else open_source(data)
    wants_lm = any(p.strip().startswith("lm") for p in _split(points))
    if wants_lm and not prompt:
        example = option("prompt", repr("Is there a tumour?"))
        raise UserError(f"language-model points need a task prompt: pass {example}")
    with process_group(device) as ranks:  # torchrun: every rank takes its share of the batches
        return _extract_ranked(ranks, model, source, points=points, poolings=poolings, out=out, batch_size=batch_size,
                               device=device, dtype=dtype, store_dtype=store_dtype, workers=workers, prompt=prompt,
                               overwrite=overwrite, trust_remote_code=trust_remote_code, wants_lm=wants_lm)


def _extract_ranked(ranks, model, source, *, points, poolings, out, batch_size, device, dtype, store_dtype, workers,
                    prompt, overwrite, trust_remote_code, wants_lm) -> ExtractResult:
    device = rank_device(device, ranks)
    resolve_device(device)
    out = Path(out) if out else default_out(model, source.spec)
    if out.is_dir():
        raise UserError(f"{option('out')} {out} is a folder; give the cache file to write, e.g. "
                        f"{out / 'embeddings.h5'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # one writer per cache: the leader holds the lock while every rank works (the others are its children in spirit)
    with output_lock(out, folder=False, what="cache") if ranks.leader else contextlib.nullcontext():
        if ranks.leader:
            remove_stale_tmp(out.parent, out.name)
            remove_stale_tmp(parts_dir(out))
        adapter = load_adapter(model, lm=wants_lm, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        chosen = adapter.select_points(points)
        plan = plan_poolings(chosen, poolings)
        chosen = [p for p in chosen if p.name in plan]
        meta = CacheMeta(attrs=_attrs(adapter, source, plan, dtype=dtype, store_dtype=store_dtype, prompt=prompt,
                                      device=device),
                         plan=plan)
        return _run(adapter, source, chosen, meta, out=out, batch_size=batch_size, device=device, workers=workers,
                    prompt=prompt, overwrite=overwrite, ranks=ranks)


def _split(points) -> list[str]:
    if points is None:
        return []
    return [p for p in (points.split(",") if isinstance(points, str) else points) if p.strip()]


def _check_options(*, batch_size: int, store_dtype: str, workers: int | None) -> None:
    if batch_size < 1:
        raise UserError(f"{option('batch_size')} must be >= 1, got {batch_size}")
    if store_dtype not in STORE_DTYPES:
        raise UserError(f"unknown store dtype {store_dtype!r}; valid: {', '.join(STORE_DTYPES)}")
    if workers is not None and workers < 0:
        raise UserError(f"{option('workers')} must be >= 0, got {workers}")


def _attrs(adapter: Adapter, source: DataSource, plan: dict, *, dtype: str, store_dtype: str, prompt,
           device: str = "cpu") -> dict:
    import transformers

    prints = adapter.fingerprints()
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "model": adapter.spec, "arch": adapter.arch,
            "model_fingerprint": prints["model"], "vision_fingerprint": prints.get("vision", ""),
            "projector_fingerprint": prints.get("projector", ""), "processor_fingerprint": _processor_print(adapter),
            "data": source.spec, "data_fingerprint": source.fingerprint(), "reads_point": adapter.reads_point or "",
            "reads_tokens": adapter.info.get("reads_tokens", ""), "dtype": dtype, "store_dtype": store_dtype,
            "points": json.dumps(plan, sort_keys=True), "prompt": prompt or "", "toolkit_version": __version__,
            "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "versions": json.dumps(versions(), sort_keys=True), "device": json.dumps(device_info(device)),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _processor_print(adapter: Adapter) -> str:
    proc = getattr(adapter.processor, "image_processor", adapter.processor)
    text = proc.to_json_string() if hasattr(proc, "to_json_string") else repr(proc)
    text = re.sub(r'"(processor_class|_processor_class|image_processor_type)": "[^"]*",?', "", text)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run(adapter, source, chosen, meta, *, out, batch_size, device, workers, prompt, overwrite, ranks):
    if overwrite and ranks.leader:
        check_existing(out, meta, overwrite=True)
    ranks.barrier()
    previous_done = check_existing(out, meta, overwrite=False)  # read-only: every rank refuses alike
    if ranks.leader:
        start_parts(out, meta)
    ranks.barrier()
    parts = parts_dir(out)
    finished = set(attempted_in_parts(parts))
    if previous_done is not None:
        finished |= set(np.flatnonzero(previous_done).tolist())
    grid = _batches(len(source), batch_size, finished)
    todo_all = sum(len(b) for b in grid)
    batches = [b for k, b in enumerate(grid) if len(b) and ranks.takes(k)]
    todo = sum(len(b) for b in batches)
    if ranks.leader:
        share = f" ({ranks.world} ranks)" if ranks.world > 1 else ""
        info(f"extract: {len(source)} samples, {len(source) - todo_all} already done, {todo_all} to do{share} -> {out}")
    ranks.barrier()
    start = time.perf_counter()
    _extract_batches(adapter, source, chosen, meta.plan, batches, parts, device=device, workers=workers,
                     prompt=prompt, store=STORE_DTYPES[meta.attrs["store_dtype"]], show=ranks.leader)
    seconds = time.perf_counter() - start
    ranks.barrier()
    failed = {}
    if ranks.leader:
        previous = out if previous_done is not None else None
        failures = consolidate(out, meta, source.samples, source.classes, previous=previous)
        failed = {source.samples[i].id: reason for i, reason in sorted(failures.items())}
    ranks.barrier()
    done = todo_all if ranks.leader else todo
    return ExtractResult(path=out, samples=len(source), extracted=done - len(failed), skipped=len(source) - todo_all,
                         failed=failed, seconds=seconds)


def _batches(n: int, size: int, finished: set[int]) -> list[np.ndarray]:
    """The fixed batch grid [k*size, (k+1)*size), minus finished samples (a batch may end up empty)."""
    out = []
    for start in range(0, n, size):
        idx = np.arange(start, min(start + size, n))
        out.append(np.array([i for i in idx if i not in finished], dtype=np.int64))
    return out


class _BatchData(torch.utils.data.Dataset):
    """Decodes and preprocesses one whole batch per item, in DataLoader workers."""

    def __init__(self, source: DataSource, batches: list[np.ndarray], adapter: Adapter, prompt: str | None):
        self.source, self.batches, self.prepare, self.prompt = source, batches, adapter.prepare, prompt
        self.keep = decode_hint(source, adapter)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int):
        indices = self.batches[k]
        images, ok, errors = [], [], {}
        for i in indices:
            try:
                images.append(self.source.image(int(i), **self.keep))
                ok.append(int(i))
            except ImageError as exc:
                errors[int(i)] = str(exc)
        ok, images, inputs = self._prepare(ok, images, errors)
        return np.array(ok, dtype=np.int64), inputs, errors, indices

    def _prepare(self, ok, images, errors):
        if not images:
            return ok, images, None
        try:
            return ok, images, self.prepare(images, self.prompt)
        except Exception:  # noqa: BLE001 - find which image the processor refuses, then go on without it
            keep = []
            for i, image in zip(ok, images):
                try:
                    self.prepare([image], self.prompt)
                    keep.append((i, image))
                except Exception as exc:  # noqa: BLE001
                    errors[i] = f"preprocessing failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            ok, images = [i for i, _ in keep], [im for _, im in keep]
            return ok, images, (self.prepare(images, self.prompt) if images else None)


def _identity(item):
    return item


def _loader(dataset: _BatchData, workers: int | None):
    if workers is None:
        workers = min(4, max(0, (os.cpu_count() or 1) - 1))
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                       collate_fn=_identity, prefetch_factor=2 if workers else None,
                                       persistent_workers=False, pin_memory=torch.cuda.is_available())


def _extract_batches(adapter, source, chosen, plan, batches, parts, *, device, workers, prompt, store, show=True):
    from tqdm import tqdm

    if not batches:
        return
    dev = resolve_device(device)
    model_dtype = next(adapter.model.parameters()).dtype
    bar = tqdm(total=sum(len(b) for b in batches), unit="img", disable=is_quiet() or not show, dynamic_ncols=True,
               desc="extract")
    try:
        for ok, inputs, errors, attempted in _loader(_BatchData(source, batches, adapter, prompt), workers):
            arrays = {}
            if len(ok):
                inputs = _to_device(inputs, dev, model_dtype)
                arrays = _embed(adapter, chosen, plan, inputs, store)
            write_part(parts, ok, arrays, errors, attempted)
            bar.update(len(attempted))
    finally:
        bar.close()


def _to_device(inputs: dict, device: torch.device, dtype: torch.dtype) -> dict:
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            out[key] = value.to(dtype) if value.is_floating_point() else value
        else:
            out[key] = value
    return out


@torch.inference_mode()
def capture(adapter: Adapter, chosen: list[Point], inputs: dict) -> dict[str, torch.Tensor]:
    """Run the model once per stage group and return the raw tensors of `chosen` points."""
    captured: dict[str, torch.Tensor] = {}
    groups = [[p for p in chosen if p.stage != "lm"], [p for p in chosen if p.stage == "lm"]]
    for group in groups:
        if not group:
            continue
        stage = max((p.stage for p in group), key=STAGES.index)
        hooked = [p for p in group if p.module is not None]
        stop = None if len(hooked) < len(group) else group[-1].name
        with trace(hooked, stop_after=stop) as got:
            extra = run_traced(lambda stage=stage: adapter.forward(inputs, stage)) or {}
        captured.update(got)
        captured.update({k: v for k, v in extra.items() if any(p.name == k for p in group)})
    missing = [p.name for p in chosen if p.name not in captured]
    if missing:
        raise RuntimeError(f"{adapter.spec}: points {missing} were not reached by the forward pass")
    return captured


def _embed(adapter, chosen, plan, inputs, store) -> dict[str, np.ndarray]:
    captured = capture(adapter, chosen, inputs)
    batch = adapter.point_batch(inputs)
    arrays = {}
    for point in chosen:
        for pooling in plan[point.name]:
            value = pool(point, captured[point.name], pooling, batch).cpu().numpy()
            if store == np.float16 and np.abs(value[np.isfinite(value)]).max(initial=0) > FLOAT16_MAX:
                raise UserError(f"{point.name}/{pooling} has values beyond the float16 range; "
                                f"re-run with {option('store_dtype', 'float32')}")
            arrays[f"{point.name}/{pooling}"] = value.astype(store)
    return arrays

