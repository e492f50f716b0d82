"""Compare two study folders made by two versions of medfrag-probe: every JSON, JSONL and CSV output, volatile fields
(timings, timestamps, versions, absolute paths) aside; fields only the newer version writes are allowed. Prints one
JSON line: files compared, identical, differing (named above it), fields added.

A refactor that must keep outputs (issue 10) is checked by running one study with both versions:

    git worktree add /tmp/old BASE_COMMIT
    PYTHONPATH=/tmp/old/src python -m medfrag_probe run configs/experiments/demo-ci.yaml --out /tmp/cmp/old
    python -m medfrag_probe run configs/experiments/demo-ci.yaml --out /tmp/cmp/new
    python tests/bench/same_outputs.py /tmp/cmp/old /tmp/cmp/new
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

VOLATILE = {"seconds", "created", "finished", "versions", "device", "history", "config", "samples", "predictions",
            "cache", "results", "source", "identity", "path"}


def load(path: Path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return list(csv.reader(path.read_text().splitlines()))


def clean(value, roots: tuple[Path, Path]):
    """Volatile fields dropped, the two study folders written as ROOT, floats to 9 decimals."""
    if isinstance(value, dict):
        return {k: clean(v, roots) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [clean(v, roots) for v in value]
    if isinstance(value, str):
        return value.replace(str(roots[0]), "ROOT").replace(str(roots[1]), "ROOT")
    return round(value, 9) if isinstance(value, float) else value


def same(old, new, added: set) -> bool:
    """Whether `new` holds everything `old` does (fields only `new` has are noted in `added`)."""
    if isinstance(old, dict) and isinstance(new, dict):
        added.update(set(new) - set(old))
        return all(k in new and same(v, new[k], added) for k, v in old.items())
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(same(a, b, added) for a, b in zip(old, new))
    return old == new


def main(old: Path, new: Path) -> dict:
    files = sorted(p.relative_to(old) for p in old.rglob("*") if p.suffix in (".json", ".jsonl", ".csv")
                   and ".stamps" not in p.parts and p.name != "run.json")
    added: set = set()
    differ = [str(rel) for rel in files if not (new / rel).is_file()
              or not same(clean(load(old / rel), (old, new)), clean(load(new / rel), (old, new)), added)]
    for rel in differ:
        print("differs:", rel)
    return {"files": len(files), "identical": len(files) - len(differ), "differ": len(differ),
            "fields_added": sorted(added)}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
