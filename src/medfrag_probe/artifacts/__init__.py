"""Every file that passes between stages, each with one writer and one reader.

- embedding cache `*.h5`: written by `extract` and `cache.write_embeddings`, read by `EmbeddingCache`
  (`medfrag_probe.cache`);
- `results.jsonl` / `.csv`, `predictions/*.csv`, `curves__*.jsonl`: written by `probe` and `learning_curves`, read by
  the bridge, `compare` and `report` (`artifacts.probes`);
- `answers.jsonl`, `summary.json`: written by `vqa` and `import_answers`, read by the bridge, `report` and a resumed
  `vqa` (`artifacts.answers`);
- `bridge.jsonl`, `pairs.jsonl`, `stages.csv`: written by `bridge`, read by `report` (`artifacts.bridge`);
- the study folder: laid out for `run` and `report` by `artifacts.study.StudyLayout`.

Records are frozen dataclasses (`ProbeResult`, `Predictions`, `VQARecord`, `BridgeRecord`) written as flat JSON
(or CSV); reading tolerates fields a newer version added and fills defaults for fields an older one lacked.
"""

from .answers import VQARecord, VQARun, find_runs, read_answers, read_summary, write_answers, write_summary
from .bridge import BridgeRecord, read_bridge, read_pairs, write_bridge
from .probes import (
    Predictions,
    ProbeResult,
    find_results,
    read_curves,
    read_predictions,
    read_results,
    write_curves,
    write_predictions,
    write_results,
)
from .study import StudyLayout

__all__ = ["BridgeRecord", "Predictions", "ProbeResult", "StudyLayout", "VQARecord", "VQARun", "find_results",
           "find_runs", "read_answers", "read_bridge", "read_curves", "read_pairs", "read_predictions",
           "read_results", "read_summary", "write_answers", "write_bridge", "write_curves", "write_predictions",
           "write_results", "write_summary"]
