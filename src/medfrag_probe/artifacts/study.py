"""The folder of a study (`run`): where each stage of each (model, task) unit writes, in one place.

    OUT/config.yaml                  the config as run
    OUT/run.json                     provenance and the stage log
    OUT/.stamps/STAGE.json           identities of finished stages (what makes a re-run incremental)
    OUT/cache/UNIT.h5                embeddings
    OUT/probes/seed-S/UNIT/          probe results (see `artifacts.probes`)
    OUT/curves/UNIT/                 learning curves (train_size sweeps)
    OUT/vqa/UNIT/                    answers and summary (see `artifacts.answers`)
    OUT/bridge/seed-S/               bridge records (see `artifacts.bridge`)
    OUT/figures/, OUT/report.html, OUT/report.md      written by `report`

UNIT is `MODEL__TASK` (plus `@VALUE` for a swept variant).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .._fs import atomic_write
from ..errors import UserError


@dataclass(frozen=True)
class StudyLayout:
    """Paths of one study folder; nothing is created by asking."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run_record(self) -> Path:
        return self.root / "run.json"

    @property
    def stamps(self) -> Path:
        return self.root / ".stamps"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    def cache(self, unit: str) -> Path:
        return self.root / "cache" / f"{unit}.h5"

    def probes(self, seed: int) -> Path:
        """The probe results of every unit for one seed."""
        return self.root / "probes" / f"seed-{seed}"

    def probe(self, seed: int, unit: str) -> Path:
        return self.probes(seed) / unit

    def curves(self, unit: str) -> Path:
        return self.root / "curves" / unit

    def vqa(self, unit: str) -> Path:
        return self.root / "vqa" / unit

    def interventions(self, unit: str) -> Path:
        return self.root / "interventions" / unit

    def bridge(self, seed: int) -> Path:
        return self.root / "bridge" / f"seed-{seed}"

    def seeds(self) -> list[int]:
        """The seeds with bridge results, else those with probe results."""
        for stage in ("bridge", "probes"):
            found = sorted(int(p.name.split("-", 1)[1]) for p in (self.root / stage).glob("seed-*")
                           if p.name.split("-", 1)[1].isdigit())
            if found:
                return found
        return []

    def write_run(self, record: dict) -> None:
        """`run.json`, replaced atomically."""
        atomic_write(self.run_record, json.dumps(record, indent=1))

    def read_run(self) -> dict:
        """`run.json`: a clear error when the folder is not a study."""
        if not self.run_record.is_file():
            raise UserError(f"{self.root} is not a study folder (no run.json); run `medfrag-probe run CONFIG` first")
        return json.loads(self.run_record.read_text())
