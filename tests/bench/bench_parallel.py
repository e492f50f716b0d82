"""Two jobs on one machine (not part of the test run): how much slower is a job when another runs beside it?

Workload: one `medfrag-probe vqa` run (tiny:llava, 24 synthetic images, image condition) and one `medfrag-probe probe`
run (8 points of 300 x 64 embeddings, linear + kNN), each alone, then the two side by side, each a fresh process.
Done twice: under the package's thread policy (idle OpenMP threads sleep: `OMP_WAIT_POLICY=PASSIVE`, set on import)
and with `OMP_WAIT_POLICY=ACTIVE` (idle threads spin: what a job gets when torch is imported first with that policy,
or libgomp's spinning default took hold).

Prints one JSON line: per policy, the seconds alone (vqa + probe, one after the other), side by side (wall until both
end), and `slowdown` = side by side / the longer of the two alone (1.0: no interference; 2.0: a fair share of two
cores each running one job; the issue's bound is about 2).

    python tests/bench/bench_parallel.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _commands(root: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "medfrag_probe", "-q"]
    return {"vqa": [*cli, "vqa", "--model", "tiny:llava", "--data", "synth:brain-mri?n=24", "--task",
                    "synth-brain-mri", "--out", str(root / "vqa"), "--describe-with", "none", "--overwrite"],
            "probe": [*cli, "probe", str(root / "bench.h5"), "--out", str(root / "probe"), "--no-controls"]}


def _time(commands: list[list[str]], env: dict) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{proc.args} failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


def main() -> None:
    sys.path.insert(0, str(HERE))
    from bench_probe import make_cache

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_cache(root / "bench.h5", n=300, d=64, layers=4)
        commands = _commands(root)
        base = {**os.environ, "HF_HUB_OFFLINE": "1", "MEDFRAG_CACHE": os.environ.get("MEDFRAG_CACHE",
                                                                                     str(root / "cache"))}
        _time([commands["vqa"]], base)  # builds the tiny model once, outside the timings
        for policy in ("PASSIVE", "ACTIVE"):
            env = {**base, "OMP_WAIT_POLICY": policy}
            alone = {name: _time([cmd], env) for name, cmd in commands.items()}
            both = _time(list(commands.values()), env)
            out[policy.lower()] = {"vqa_alone_s": round(alone["vqa"], 1), "probe_alone_s": round(alone["probe"], 1),
                                   "side_by_side_s": round(both, 1),
                                   "slowdown": round(both / max(alone.values()), 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
