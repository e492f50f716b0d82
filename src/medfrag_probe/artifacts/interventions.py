"""Intervention outputs: `interventions.jsonl` (one `InterventionRecord` per model x data) and `samples.csv` (each
sample's class probabilities under every condition).

    OUT/interventions.jsonl   every field of the record
    OUT/samples.csv           sample_id, group, label, fold, donor_label, then p_right and pred per condition
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .._fs import atomic_write
from ..errors import UserError
from ._record import Record, folders, jsonl_text, read_jsonl

INTERVENTIONS = "interventions.jsonl"
SAMPLES = "samples.csv"


@dataclass(frozen=True)
class InterventionRecord(Record):
    """Does the answer depend on the signal the linear probe finds in the image tokens the language model reads?"""

    model: str
    data: str
    task: str
    point: str
    n: int
    n_prompts: int
    rank: int  # of the eraser: K - 1
    folds: int
    skill: dict  # clean / ablate-probe / ablate-random -> balanced skill of the answers' expected credit
    skill_ci: dict
    answer_skill: dict  # the same for the most probable answer
    p_right: dict  # condition -> mean probability of the right class
    causal_effect: float  # skill(clean) - skill(probe direction ablated)
    causal_ci: list | None
    random_effect: float  # skill(clean) - skill(random direction of the same rank ablated)
    random_ci: list | None
    specific_effect: float  # causal_effect - random_effect, paired
    specific_ci: list | None
    answer_effect: float  # causal_effect of the most probable answer (near-ties flip it: not decisive)
    answer_effect_ci: list | None
    p_right_drop: float  # p_right(clean) - p_right(probe direction ablated)
    p_right_drop_ci: list | None
    patch_follow_rate: float | None  # share of the answer probability that moves to the donor's class (its tokens)
    patch_follow_ci: list | None
    probe_patch_follow_rate: float | None  # ... when only the probed signal is moved to the donor's
    probe_patch_follow_ci: list | None
    random_patch_follow_rate: float | None
    random_patch_follow_ci: list | None
    patch_flip_rate: float | None  # most probable answers that become the donor's class
    uses_probed_signal: bool | None  # None: undecided at this n
    conclusion: str
    rule: dict = field(default_factory=dict)
    model_fingerprint: str = ""
    vision_fingerprint: str = ""
    data_fingerprint: str = ""
    prompts: list = field(default_factory=list)
    seconds: float = 0.0


def write_interventions(out: str | Path, record: InterventionRecord, samples_csv: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / SAMPLES, samples_csv)
    atomic_write(out / INTERVENTIONS, jsonl_text([record]))


def read_interventions(folder: str | Path) -> list[InterventionRecord]:
    path = Path(folder) / INTERVENTIONS
    if not path.is_file():
        raise UserError(f"no intervention results in {folder} ({INTERVENTIONS} not found); run "
                        "`medfrag-probe intervene` first")
    return [InterventionRecord.from_record(row, where=f"{path} line {n}") for n, row in enumerate(read_jsonl(path), 1)]


def find_interventions(roots) -> list[InterventionRecord]:
    """Every intervention record under one folder or a list of folders (searched recursively)."""
    found = []
    for root in folders(roots):
        for path in sorted({root / INTERVENTIONS, *root.rglob(INTERVENTIONS)}):
            if path.is_file():
                found += read_interventions(path.parent)
    if not found:
        raise UserError(f"no {INTERVENTIONS} under {', '.join(str(r) for r in folders(roots))}; run "
                        "`medfrag-probe intervene` first")
    return found
