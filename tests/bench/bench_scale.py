"""Scaling benchmark (not part of the test run). Prints a final JSON line.

- `rank_speedup`: extraction-loop wall time of 1 rank over 2 torchrun ranks (gloo, CPU, one thread per rank) on a
  model-bound workload (a random CLIP ViT-S/16-sized tower at 224 px); target >= 1.7. The loop time excludes
  process start and model load, which do not scale with the data.
- `knn_peak_gb`: peak resident memory of a process holding a 200,000 x 1,024 float32 training set in a `KNNProbe`
  (cosine, k=20) and classifying queries in memory-bounded chunks (16,384 queries: the peak does not grow with the
  number of queries, since each chunk's similarity block is bounded by `memory_mb`); `knn_data_gb` is the raw size
  of the training matrix for comparison.

    python tests/bench/bench_scale.py [--images 96]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_extract import build_clip_tower  # the script's own folder is on sys.path

RANK_SCRIPT = """
import json, os, sys
from medfrag_probe._log import set_quiet
from medfrag_probe.extraction import extract
set_quiet(True)
result = extract(sys.argv[1], sys.argv[2], out=sys.argv[3], batch_size=8, workers=0, points="vision.post")
rank = os.environ.get("RANK", "0")
open(sys.argv[3] + f".rank{rank}.json", "w").write(json.dumps({"seconds": result.seconds}))
"""

KNN_SCRIPT = """
import resource, numpy as np, torch
torch.set_num_threads(2)
from medfrag_probe.probes import KNNProbe
rng = np.random.default_rng(0)
X = rng.standard_normal((200_000, 1024), dtype=np.float32)
y = rng.integers(0, 4, 200_000)
model = KNNProbe(k=20).fit(X, y)
del X
queries = rng.standard_normal((16_384, 1024), dtype=np.float32)
proba = model.predict_proba(queries)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""


def loop_seconds(spec: str, data: str, out: Path, ranks: int) -> float:
    script = out.parent / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] \
        if ranks > 1 else [sys.executable]
    subprocess.run([*launcher, str(script), spec, data, str(out)], env=env, check=True, capture_output=True)
    return max(json.loads(Path(f"{out}.rank{r}.json").read_text())["seconds"] for r in range(ranks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = build_clip_tower(root / "vit-s16", width=384, heads=6)  # ViT-S/16-sized
        data = f"synth:brain-mri?n={args.images}&size=96"
        one = loop_seconds(spec, data, root / "one.h5", 1)
        two = loop_seconds(spec, data, root / "two.h5", 2)
        knn = subprocess.run([sys.executable, "-c", KNN_SCRIPT], check=True, capture_output=True, text=True)
    result = {"images": args.images, "one_rank_s": round(one, 2), "two_ranks_s": round(two, 2),
              "rank_speedup": round(one / two, 3), "knn_train": [200_000, 1024],
              "knn_data_gb": round(200_000 * 1024 * 4 / 2**30, 3),
              "knn_peak_gb": round(float(knn.stdout.strip().splitlines()[-1]), 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
