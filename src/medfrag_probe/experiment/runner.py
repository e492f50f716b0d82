"""`run`: a whole study from one config -- extract -> probe -> vqa -> bridge for every model x task, incrementally.

    from medfrag_probe.experiment import run
    summary = run("configs/experiments/demo.yaml")
    summary["model_work"]        # 0 when everything was already up to date

Each stage of each (model, task) has an identity: what it depends on (the model spec and, for local checkpoints,
its files' sizes and times; the data fingerprint; the task file; the settings that stage reads; the identities of the
stages before it). A stage whose identity matches the stamp left by its last successful run is skipped, so a re-run
with nothing changed loads no model, and changing one model redoes only its part. A killed run resumes: finished
stages are stamped, and the stage in flight resumes from its own part files (extract and vqa write them).

Layout under `out`: `cache/` (embeddings), `probes/seed-S/MODEL__TASK/`, `vqa/MODEL__TASK/`, `bridge/seed-S/`,
`curves/` (train_size sweeps), `config.yaml` (the config as run), `run.json` (provenance and stage log), then
`report.html` and `report.md` (`medfrag-probe report OUT`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from .._fs import output_lock, read_stamp, remove_stale_tmp, stamp_differences, write_stamp
from .._log import as_worker, info, logger_level, set_level, warn
from .._provenance import device_info, versions
from ..artifacts.answers import SUMMARY
from ..artifacts.interventions import INTERVENTIONS
from ..artifacts.study import StudyLayout
from ..devices import usable_cores
from ..errors import UserError, option
from .config import Config, ModelEntry, TaskEntry, load_config
from .factors import FACTORS, Factor

MODEL_STAGES = ("extract", "vqa", "intervene")  # stages that load a model


@dataclass(frozen=True)
class Unit:
    """One (model, task variant) of the study."""

    model: ModelEntry
    task: TaskEntry
    data: str
    variant: str  # "" or the swept value (e.g. resolution)

    @property
    def key(self) -> str:
        return f"{self.model.label}__{self.task.label}" + (f"@{self.variant}" if self.variant else "")


class _Stamps:
    """Identities of finished stages, one small JSON file each under `out/.stamps/`."""

    def __init__(self, layout: StudyLayout):
        self.folder = layout.stamps
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        return self.folder / f"{name.replace('/', '_')}.json"

    def recorded(self, name: str) -> dict | None:
        return read_stamp(self._path(name))

    def fresh(self, name: str, identity: dict) -> bool:
        recorded = self.recorded(name)
        return recorded is not None and not stamp_differences(recorded, identity)

    def known(self, name: str) -> bool:
        return self._path(name).is_file()

    def mark(self, name: str, identity: dict) -> None:
        write_stamp(self._path(name), identity)


def run(config, *, out: str | Path | None = None, jobs: int | None = None) -> dict:
    """Run every stage that is not up to date; write run.json; return {stages, model_work, out}. `jobs` (default:
    the config's `jobs`, 1) runs that many units at once, each in its own process (see `_run_units`)."""
    config = config if isinstance(config, Config) else load_config(config)
    jobs = config.jobs if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"{option('jobs')} must be a positive integer (units run at once), not {jobs!r}")
    out = Path(out or config.out)
    check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out, folder=True, what="study folder"):
        remove_stale_tmp(out)
        remove_stale_tmp(StudyLayout(out).stamps)
        return _run_locked(config, out, jobs)


def _run_locked(config: Config, out: Path, jobs: int) -> dict:
    layout = StudyLayout(out)
    if Path(config.path).is_file():
        shutil.copyfile(config.path, layout.config)
    stamps = _Stamps(layout)
    units = plan_units(config)
    warn_image_level(dict.fromkeys(u.data for u in units))
    start = time.perf_counter()
    log = _run_units(units, config, out, jobs)
    for seed in config.seeds:
        _bridge(units, config, layout, stamps, log, seed=seed)
    model_work = sum(1 for entry in log if entry["status"] == "ran" and entry["stage"] in MODEL_STAGES)
    _write_run(layout, config, units, log, seconds=time.perf_counter() - start)
    if model_work == 0:
        info(f"run {config.name}: nothing to do for any model (every extraction and VQA stage is up to date)")
    info(f"run {config.name}: {sum(e['status'] == 'ran' for e in log)} stages ran, "
         f"{sum(e['status'] == 'up to date' for e in log)} up to date -> {out}")
    return {"stages": log, "model_work": model_work, "out": str(out)}


def _run_unit(unit: Unit, config: Config, out: Path) -> list[dict]:
    """Every stage of one unit but the bridge, in order; the unit's stage log."""
    layout, log = StudyLayout(out), []
    stamps = _Stamps(layout)
    stamps_of = {"model": model_stamp(unit.model.spec), "data_fingerprint": data_stamp(unit.data)}
    extract_id = _extract(unit, config, layout, stamps, log, known=stamps_of)
    for seed in config.seeds:
        _probe(unit, config, layout, stamps, log, seed=seed, upstream=extract_id)
    _curves(unit, config, layout, stamps, log, upstream=extract_id)
    _vqa(unit, config, layout, stamps, log, known=stamps_of)
    _intervene(unit, config, layout, stamps, log, known=stamps_of)
    return log


def _run_units(units: list[Unit], config: Config, out: Path, jobs: int) -> list[dict]:
    """The units' stage logs, in unit order. With `jobs` > 1 (and as many cores), units run in that many worker
    processes (spawned, so no thread pool is forked), each with its share of the cores as its torch and BLAS
    threads, longest units first. Every unit writes its own files and stamps, and is seeded by the config alone,
    so the results are those of a one-job run (up to float rounding: a job's sums run on fewer threads); the bridge
    runs after all of them, here. When a unit fails, the units in flight finish (their work is stamped) and the
    first error is raised; a worker that dies (killed, out of memory) ends the run with a one-line error."""
    cores = usable_cores()
    jobs = min(jobs, len(units), cores)
    if jobs <= 1:
        return [entry for unit in units for entry in _run_unit(unit, config, out)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    threads = cores // jobs
    info(f"run {config.name}: {len(units)} units, {jobs} at a time ({threads} thread(s) each)")
    logs: dict[int, list[dict]] = {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                             initargs=(threads, logger_level())) as pool:
        for _ in range(jobs):  # the workers import torch and transformers while the models are resolved here
            pool.submit(_warm_worker)
        order = sorted(range(len(units)), key=lambda i: -_weight(units[i], config))
        futures = {pool.submit(_worker_unit, units[i], config, out): i for i in order}
        try:
            for future in as_completed(futures):
                logs[futures[future]] = future.result()
        except BrokenProcessPool:
            raise UserError(f"a worker process of study {config.name} died (killed, or out of memory) before "
                            f"{len(units) - len(logs)} of {len(units)} units finished; finished stages are kept: "
                            f"run again with fewer {option('jobs')}") from None
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [entry for i in range(len(units)) for entry in logs[i]]


def _weight(unit: Unit, config: Config) -> int:
    """A unit's rough cost, to start the longest first: a model that answers questions runs VQA and the causal
    check too; its VQA settings' image limit scales them."""
    vqa = {**(config.vqa or {}), **unit.model.vqa}
    return 1 + (generates(unit.model.spec) and config.vqa is not None) * (2 + int(vqa.get("limit") or 100) // 100)


_WORKER = [False]  # whether this process is a worker of a parallel run


def _start_worker(threads: int, level: int) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    _WORKER[0] = True
    torch.set_num_threads(threads)
    threadpool_limits(threads)
    set_level(level)


def _warm_worker() -> None:
    """Import what every stage needs (run in each worker at start, while the parent resolves the models)."""
    from ..answering import vqa  # noqa: F401
    from ..extraction import extract  # noqa: F401
    from ..intervention import intervene  # noqa: F401
    from ..models.loading import load_registry
    from ..probes import probe  # noqa: F401

    load_registry()


def _worker_unit(unit: Unit, config: Config, out: Path) -> list[dict]:
    as_worker(unit.key)
    return _run_unit(unit, config, out)


def plan_units(config: Config) -> list[Unit]:
    """Every (model, task variant); a resolution sweep makes one variant per size."""
    factor, values = _sweep(config)
    return [Unit(model, task, data, variant) for model in config.models for task in config.tasks
            if model.tasks is None or task.label in model.tasks
            for data, variant in factor.variants(task.data, values)]


_NO_SWEEP = Factor("none", lambda study, path: None)


def _sweep(config: Config) -> tuple[Factor, list]:
    """The config's sweep factor and values (a factor that changes nothing when it sweeps none)."""
    if not config.sweep:
        return _NO_SWEEP, []
    return FACTORS[config.sweep["factor"]], list(config.sweep["values"])


def _note(log: list, stage: str, unit: str, status: str, seconds: float = 0.0) -> None:
    log.append({"stage": stage, "unit": unit, "status": status, "seconds": round(seconds, 2)})
    info(f"[{stage}] {unit}: {status}" + (f" ({seconds:.1f} s)" if status == "ran" else ""))


def model_stamp(spec: str) -> dict:
    """What identifies a model's weights without loading them: the spec, and for local checkpoints the sizes and
    modification times of their files (retraining in place changes them)."""
    from ..models.loading import resolve_spec

    parsed = resolve_spec(spec)
    local = Path(parsed.target.removeprefix("local-dir:")) if parsed.kind != "timm" else None
    if parsed.kind == "timm" and "checkpoint" in parsed.params:
        local = Path(parsed.params["checkpoint"])
    files = {}
    if local is not None and local.exists():
        paths = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        files = {str(p.relative_to(local) if local.is_dir() else p.name): [p.stat().st_size, int(p.stat().st_mtime)]
                 for p in paths if not p.name.startswith(".")}
    return {"spec": spec, "resolved": parsed.kind + ":" + parsed.target, "files": files}


def warn_image_level(datas) -> list[str]:
    """One warning for the data specs whose samples carry no patient ids: their intervals and splits are image-level
    (images of one patient may straddle folds). Returns those specs."""
    from ..data.sources import open_source

    flat = []
    for data in datas:
        samples = open_source(data).samples
        if all(s.group == s.id for s in samples):  # the group defaulted to the image: no patient ids given
            flat.append(data)
    if flat:
        warn(f"no patient ids in {', '.join(flat)}: splits, controls and intervals are image-level; give "
             "patient ids (imagefolder:DIR?group=REGEX, or a manifest with a group column) where images share "
             "patients")
    return flat


def data_stamp(data: str) -> str:
    """The data fingerprint (ids and labels) of a data spec."""
    from ..data.sources import open_source

    return open_source(data).fingerprint()


def _poolings(config: Config) -> str | None:
    factor, values = _sweep(config)
    if factor.extends != "poolings":
        return config.poolings
    return ",".join(factor.extended("poolings", config.poolings.split(",") if config.poolings else [], values))


def _probes(config: Config) -> list[str]:
    factor, values = _sweep(config)
    return factor.extended("probes", config.probes, values)


def _extract(unit: Unit, config: Config, layout: StudyLayout, stamps: _Stamps, log: list, *, known: dict) -> dict:
    from ..extraction import extract

    identity = {"model": known["model"], "dtype": unit.model.dtype, "data": unit.data,
                "data_fingerprint": known["data_fingerprint"], "points": config.points, "poolings": _poolings(config),
                "extract": config.extract, "version": __version__}
    name = f"extract__{unit.key}"
    if stamps.fresh(name, identity):
        _note(log, "extract", unit.key, "up to date")
        return identity
    start = time.perf_counter()
    options = {k: v for k, v in config.extract.items() if k in ("batch_size", "device", "store_dtype", "prompt",
                                                                  "workers")}
    if _WORKER[0]:
        options.setdefault("workers", 0)  # a worker of a parallel run decodes its images itself
    extract(unit.model.spec, unit.data, points=config.points, poolings=_poolings(config),
            out=layout.cache(unit.key), dtype=unit.model.dtype,
            trust_remote_code=unit.model.trust_remote_code, overwrite=stamps.known(name), **options)
    stamps.mark(name, identity)
    _note(log, "extract", unit.key, "ran", time.perf_counter() - start)
    return identity


def _probe(unit: Unit, config: Config, layout: StudyLayout, stamps: _Stamps, log: list, *, seed: int,
           upstream: dict) -> None:
    from ..probes import probe

    factor, values = _sweep(config)
    ks = values if factor.probe_ks else None
    identity = {"extract": config.digest(upstream), "probes": _probes(config), "folds": config.folds,
                "replicates": config.replicates, "permutations": config.permutations, "controls": config.controls,
                "seed": seed, "ks": ks,
                "version": __version__}
    name = f"probe__{unit.key}__seed{seed}"
    if stamps.fresh(name, identity):
        _note(log, "probe", f"{unit.key} seed {seed}", "up to date")
        return
    start = time.perf_counter()
    folder = layout.probe(seed, unit.key)
    shutil.rmtree(folder, ignore_errors=True)
    probe([layout.cache(unit.key)], probes=_probes(config), out=folder, folds=config.folds, seed=seed,
          replicates=config.replicates, controls=config.controls, ks=ks, permutations=config.permutations)
    stamps.mark(name, identity)
    _note(log, "probe", f"{unit.key} seed {seed}", "ran", time.perf_counter() - start)


def _curves(unit: Unit, config: Config, layout: StudyLayout, stamps: _Stamps, log: list, *, upstream: dict) -> None:
    """Learning curves at the point the language model reads (train_size sweeps)."""
    factor, values = _sweep(config)
    if not factor.curves:
        return
    from ..cache import EmbeddingCache
    from ..probes.curves import SIZES, learning_curves

    sizes = (*values, None) if values else SIZES  # None: the whole training fold
    identity = {"extract": config.digest(upstream), "sizes": list(sizes), "seed": config.seeds[0],
                "version": __version__}
    name = f"curves__{unit.key}"
    if stamps.fresh(name, identity):
        _note(log, "curves", unit.key, "up to date")
        return
    start = time.perf_counter()
    cache = EmbeddingCache(layout.cache(unit.key))
    point = cache.attrs.get("reads_point") or cache.points()[-1][0]
    pairs = [(p, q) for p, q in cache.points() if p == point][:1] or cache.points()[-1:]
    learning_curves(cache.path, pairs, probes=("linear",), sizes=sizes, folds=config.folds, seed=config.seeds[0],
                    replicates=min(config.replicates, 300), out=layout.curves(unit.key))
    stamps.mark(name, identity)
    _note(log, "curves", unit.key, "ran", time.perf_counter() - start)


def generates(spec: str) -> bool:
    """Whether a model spec names a vision-language model that answers questions (decided without loading it)."""
    from ..models.loading import architecture_of, load_registry, resolve_spec
    from ..models.registry import ARCHITECTURES

    load_registry()
    return bool(getattr(ARCHITECTURES[architecture_of(resolve_spec(spec))], "can_generate", False))


def _vqa(unit: Unit, config: Config, layout: StudyLayout, stamps: _Stamps, log: list, *, known: dict) -> None:
    from ..answering import vqa
    from ..answering.tasks import load_task

    if config.vqa is None or not generates(unit.model.spec):
        return
    task = load_task(unit.task.task)
    options = {"conditions": ["image", "no-image"], "describe_with": "vlm", **config.vqa, **unit.model.vqa}
    identity = {"model": known["model"], "dtype": unit.model.dtype, "data": unit.data,
                "data_fingerprint": known["data_fingerprint"], "task": config.digest(task.__dict__),
                "vqa": options, "seed": config.seeds[0], "version": __version__}
    name = f"vqa__{unit.key}"
    if stamps.fresh(name, identity):
        _note(log, "vqa", unit.key, "up to date")
        return
    start = time.perf_counter()
    kwargs = {"dtype": unit.model.dtype, **options}
    describe = kwargs.pop("describe_with")
    vqa(unit.model.spec, unit.data, task, out=layout.vqa(unit.key), seed=config.seeds[0],
        describe_with=None if describe in (None, False, "none") else describe, overwrite=stamps.known(name),
        trust_remote_code=unit.model.trust_remote_code, **kwargs)
    stamps.mark(name, identity)
    _note(log, "vqa", unit.key, "ran", time.perf_counter() - start)


def _intervene(unit: Unit, config: Config, layout: StudyLayout, stamps: _Stamps, log: list, *, known: dict) -> None:
    """The causal check (`intervention`) of a VLM, on the first seed's linear probe of the projector point."""
    from ..intervention import intervene

    if config.intervene is None or config.vqa is None or not generates(unit.model.spec):
        return
    seed = config.seeds[0]
    probes = layout.probe(seed, unit.key)
    if not any(r.point == "projector" and r.probe == "linear" for r in _results_in(probes)):
        info(f"run: no causal check for {unit.key} (it needs the linear probe of the 'projector' point)")
        return
    identity = {"model": known["model"], "dtype": unit.model.dtype, "data": unit.data,
                "data_fingerprint": known["data_fingerprint"], "task": unit.task.task,
                "probes": config.digest(stamps.recorded(f"probe__{unit.key}__seed{seed}")),
                "intervene": config.intervene, "replicates": config.replicates, "seed": seed, "version": __version__}
    name = f"intervene__{unit.key}"
    if stamps.fresh(name, identity):
        _note(log, "intervene", unit.key, "up to date")
        return
    start = time.perf_counter()
    intervene(unit.model.spec, unit.data, unit.task.task, probes=probes, out=layout.interventions(unit.key),
              seed=seed, replicates=config.replicates, dtype=unit.model.dtype,
              trust_remote_code=unit.model.trust_remote_code, **config.intervene)
    stamps.mark(name, identity)
    _note(log, "intervene", unit.key, "ran", time.perf_counter() - start)


def _results_in(folder: Path) -> list:
    from ..artifacts.probes import RESULTS, read_results

    return read_results(folder) if (folder / RESULTS).is_file() else []


def _bridge(units: list[Unit], config: Config, layout: StudyLayout, stamps: _Stamps, log: list, *, seed: int) -> None:
    from ..attribution import bridge

    vqa_dirs = [layout.vqa(u.key) for u in units if (layout.vqa(u.key) / SUMMARY).is_file()]
    if not vqa_dirs:
        return
    stamp_files = [*stamps.folder.glob("vqa__*.json"), *stamps.folder.glob(f"probe__*__seed{seed}.json"),
                   *stamps.folder.glob("intervene__*.json")]
    upstream = {p.name: read_stamp(p) for p in sorted(stamp_files)}
    label_to_spec = {m.label: m.spec for m in config.models}
    pairs = [(label_to_spec[a], label_to_spec[b]) for a, b in config.pairs]
    identity = {"upstream": config.digest(upstream), "bridge": config.bridge, "pairs": pairs,
                "order": [u.data for u in units], "version": __version__}
    name = f"bridge__seed{seed}"
    if stamps.fresh(name, identity):
        _note(log, "bridge", f"seed {seed}", "up to date")
        return
    start = time.perf_counter()
    folder = layout.bridge(seed)
    shutil.rmtree(folder, ignore_errors=True)
    causal = [layout.interventions(u.key) for u in units if (layout.interventions(u.key) / INTERVENTIONS).is_file()]
    bridge([layout.probes(seed)], vqa_dirs, out=folder, pairs=pairs,
           order=list(dict.fromkeys(u.data for u in units)), replicates=config.replicates,
           interventions=causal or None, **{k: v for k, v in config.bridge.items()})
    stamps.mark(name, identity)
    _note(log, "bridge", f"seed {seed}", "ran", time.perf_counter() - start)


def _write_run(layout: StudyLayout, config: Config, units: list[Unit], log: list, *, seconds: float) -> None:
    previous = layout.read_run() if layout.run_record.is_file() else {}
    record = {"name": config.name, "config": config.path, "finished": datetime.now(timezone.utc).isoformat(
              timespec="seconds"), "seconds": round(seconds, 2), "stages": log,
              "history": (previous.get("history", []) + [{"finished": previous.get("finished"),
                                                          "seconds": previous.get("seconds")}])[-20:]
              if previous else [],
              "units": [{"key": u.key, "model": u.model.spec, "label": u.model.label, "task": u.task.task,
                         "task_label": u.task.label, "data": u.data, "variant": u.variant} for u in units],
              "versions": versions(), "device": device_info(config.extract.get("device", "cpu"))}
    layout.write_run(record)


def check_output_folder(out: Path) -> None:
    """Refuse to run into a folder that holds something other than a study's outputs."""
    if out.is_file():
        raise UserError(f"{option('out')} {out} is a file; a study writes a folder")
    held = [p for p in out.iterdir() if p.name != ".lock"] if out.is_dir() else []
    layout = StudyLayout(out)
    if held and not layout.run_record.is_file() and not layout.stamps.is_dir():
        raise UserError(f"{out} is not empty and holds no study (no run.json); choose another {option('out')}")
