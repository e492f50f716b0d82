"""Bridge outputs: `bridge.jsonl` (one `BridgeRecord` per model x data source), `pairs.jsonl` (paired model deltas),
`stages.csv` (skill along the pipeline, one row per stage of each record) and `samples/MODEL__DATA.csv` (the joined
per-sample table behind each record).

    OUT/bridge.jsonl       every field of every BridgeRecord
    OUT/pairs.jsonl        medical minus generalist probe and VQA skill per data source, with paired CIs
    OUT/stages.csv         model, data, stage, point, pooling, skill, skill_low, skill_high
    OUT/samples/*.csv      sample_id, group, label, probe_pred, vqa_pred, probe_correct, vqa_correct
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .._fs import atomic_write
from ..errors import UserError
from ._record import Record, jsonl_text, read_jsonl

BRIDGE = "bridge.jsonl"
PAIRS = "pairs.jsonl"
STAGES = "stages.csv"
SAMPLES = "samples"
STAGE_FIELDS = ("model", "data", "stage", "point", "pooling", "skill", "skill_low", "skill_high")


@dataclass(frozen=True)
class BridgeRecord(Record):
    """One (model, data): probe vs VQA skill, the gap with its paired CI, the verdict and the per-sample table."""

    model: str
    data: str
    task: str
    point: str
    pooling: str
    probe_skill: float
    probe_skill_ci: list | None
    vqa_skill: float
    vqa_skill_ci: list | None
    gap: float
    gap_ci: list | None
    vision_deficit: float
    reasoning_deficit: float
    verdict: str
    mcnemar_p: float
    recoverable_errors: int
    n: int
    table: dict
    reads_point: str
    reads_skill: float | None
    reads_skill_ci: list | None
    reads_gap: float | None
    reads_gap_ci: list | None
    best_points: dict
    description_skill: float | None
    description_point: str
    seen: bool | None = None  # None: undecided
    lost: bool | None = None
    undecided: list = field(default_factory=list)
    detectable_distance: dict = field(default_factory=dict)
    n_needed: dict = field(default_factory=dict)
    probe_auroc: float | None = None
    vqa_auroc: float | None = None  # scored mode only: the answers' option probabilities
    answered_rate: float | None = None
    abstained_rate: float | None = None
    unparsed_rate: float | None = None
    stages: list = field(default_factory=list)
    rule: dict = field(default_factory=dict)
    model_fingerprint: str = ""
    vision_fingerprint: str = ""
    data_fingerprint: str = ""
    samples: str = ""
    # joined from `intervene` (`bridge(..., interventions=...)`); None without it
    causal_effect: float | None = None
    causal_ci: list | None = None
    random_effect: float | None = None
    random_ci: list | None = None
    patch_follow_rate: float | None = None
    patch_follow_ci: list | None = None
    uses_probed_signal: bool | None = None
    causal_note: str = ""


def write_bridge(out: str | Path, records: list[BridgeRecord], pairs: list[dict]) -> None:
    """`bridge.jsonl`, `pairs.jsonl` and `stages.csv`, each replaced atomically."""
    out = Path(out)
    atomic_write(out / BRIDGE, jsonl_text(records))
    atomic_write(out / PAIRS, jsonl_text(pairs))
    lines = [",".join(STAGE_FIELDS)]
    for r in records:
        for s in r.stages:
            ci = s.get("skill_ci") or [None, None]
            lines.append(",".join(str(v) for v in (r.model, r.data, s["stage"], s["point"], s["pooling"],
                                                    s["skill"], ci[0], ci[1])))
    atomic_write(out / STAGES, "\n".join(lines) + "\n")


def read_bridge(folder: str | Path) -> list[BridgeRecord]:
    """The bridge records of one bridge output folder."""
    path = Path(folder) / BRIDGE
    if not path.is_file():
        raise UserError(f"no bridge results in {folder} ({BRIDGE} not found); run `medfrag-probe bridge` first")
    return [BridgeRecord.from_record(row, where=f"{path} line {n}") for n, row in enumerate(read_jsonl(path), 1)]


def read_pairs(folder: str | Path) -> list[dict]:
    """The paired model deltas of one bridge output folder (none when it has no pairs file)."""
    path = Path(folder) / PAIRS
    return read_jsonl(path) if path.is_file() else []
