"""Peak memory of extraction over very large images (not part of the test run).

Writes `--images` PNGs of `--side` x `--side` pixels (smooth content, so each file is small on disk while its decoded
pixels are not) and extracts them with `tiny:siglip` at `--batch-size`, twice, each run in a fresh process:

- `bounded`: the toolkit's own image folder source, which decodes large images at a reduced size
  (`Adapter.decode_side`, `data.images`);
- `full`: the same files through a source that does not take the decode hint (what a user-written source without
  `keep_side` gets, and what every image got before): each image is decoded at full size.

Prints one JSON line: peak resident memory of each run (MB), their ratio, and whether the two caches hold the same
sample ids and finished rows.

    python tests/bench/bench_memory.py                        # 8 images of 9,000 x 9,000 at batch size 8
    python tests/bench/bench_memory.py --side 6000 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys
from medfrag_probe import _log, extract
from medfrag_probe.data.sources import open_source

mode, folder, out, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
_log.set_quiet(True)
source = open_source(f"imagefolder:{folder}")
if mode == "full":
    class Full(type(source)):
        def image(self, index):  # no keep_side: the decode hint is not taken
            return super().image(index)
    source.__class__ = Full
result = extract("tiny:siglip", source, points="vision.block.00", poolings="mean", out=out, batch_size=batch,
                 workers=0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mb": round(peak, 1), "done": result.samples - len(result.failed)}))
"""


def _images(folder: Path, n: int, side: int) -> int:
    import numpy as np
    from PIL import Image

    total = 0
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    for i in range(n):
        label = "a" if i % 2 == 0 else "b"
        (folder / label).mkdir(parents=True, exist_ok=True)
        grey = ((ramp[None, :] * (0.5 + 0.5 * (i % 2)) + ramp[:, None] * 0.3) % 256).astype(np.uint8)
        path = folder / label / f"img{i:03d}.png"
        Image.fromarray(grey, "L").convert("RGB").save(path, optimize=False)
        total += path.stat().st_size
    return total


def _run(mode: str, folder: Path, out: Path, batch: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), str(out), str(batch)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--side", type=int, default=9000)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        on_disk = _images(root / "img", args.images, args.side)
        bounded = _run("bounded", root / "img", root / "bounded.h5", args.batch_size)
        full = _run("full", root / "img", root / "full.h5", args.batch_size)
    print(json.dumps({"images": args.images, "side": args.side, "batch_size": args.batch_size,
                      "mb_on_disk": round(on_disk / 2**20, 2), "bounded_peak_mb": bounded["peak_mb"],
                      "full_peak_mb": full["peak_mb"], "peak_ratio": round(full["peak_mb"] / bounded["peak_mb"], 2),
                      "same_rows": bounded["done"] == full["done"] == args.images}))


if __name__ == "__main__":
    main()
