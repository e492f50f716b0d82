"""Results as pandas DataFrames (pandas is optional: `pip install pandas`).

    from medfrag_probe import results_frame
    probes = results_frame("probes/demo/probes/seed-0")        # one row per (cache, point, pooling, probe)
    answers = results_frame("probes/demo/vqa/tiny-llava__brain")  # one row per answer
    verdicts = results_frame("probes/demo/bridge/seed-0")      # one row per (model, data source)

A folder (or any folder under it) is read by what it holds: `results.jsonl` (probe results), `answers.jsonl` (VQA
answers) or `bridge.jsonl` (bridge records); `kind` picks one when a folder holds several. Records found in several
sub-folders are stacked, with a `source` column naming the file each row came from. Lists (confidence intervals,
per-class recalls) stay as Python lists in their cells; `*_ci` pairs are also split into `*_low` / `*_high` columns.
"""

from __future__ import annotations

from pathlib import Path

from .artifacts.answers import ANSWERS, read_answers
from .artifacts.bridge import BRIDGE, read_bridge
from .artifacts.probes import RESULTS, read_results
from .errors import UserError, bad_choice

FILES = {"probe": RESULTS, "vqa": ANSWERS, "bridge": BRIDGE}
READERS = {"probe": read_results, "vqa": read_answers, "bridge": read_bridge}  # each takes the file's folder


def results_frame(path: str | Path, *, kind: str | None = None):
    """A pandas DataFrame of the probe, VQA or bridge records in or under `path` (see module docs)."""
    try:
        import pandas as pd
    except ImportError:
        raise UserError("results_frame needs pandas: pip install pandas") from None
    if kind is not None and kind not in FILES:
        raise bad_choice("results kind", kind, FILES)
    root = Path(path)
    if not root.exists():
        raise UserError(f"{root} not found")
    files = {k: _find(root, name) for k, name in FILES.items() if kind in (None, k)}
    found = {k: v for k, v in files.items() if v}
    if not found:
        raise UserError(f"no results under {root}: looked for {', '.join(FILES[k] for k in files)}")
    if len(found) > 1:
        raise UserError(f"{root} holds {', '.join(sorted(found))} results; pick one with kind=...")
    (which, files), = found.items()
    records = [{**record.record(), "source": str(file)} for file in files for record in READERS[which](file.parent)]
    frame = pd.DataFrame.from_records(records)
    for column in [c for c in frame.columns if c.endswith("_ci")]:
        pairs = frame[column].map(lambda v: v if isinstance(v, (list, tuple)) and len(v) == 2 else (None, None))
        frame[column[:-3] + "_low"] = pairs.map(lambda v: v[0])
        frame[column[:-3] + "_high"] = pairs.map(lambda v: v[1])
    return frame


def _find(root: Path, name: str) -> list[Path]:
    if root.is_file():
        return [root] if root.name == name else []
    return sorted(p for p in root.rglob(name) if ".parts" not in p.parts)
