"""Benchmark `extract` (not part of the test run). Prints a final JSON line.

- `ratio`: wall time of `medfrag-probe extract` (every vision point, cls+mean, HDF5 written) over a bare loop that only
  runs the same model's forward on the same preprocessed batches, same process, on a CLIP ViT-B/16-sized random
  tower at 224 px. Target <= 1.10.
- `rss_ratio`: peak resident memory of a 4,000-image extraction over a 500-image one (tiny model, each in a fresh
  subprocess). Target <= 1.10.

    python tests/bench/bench_extract.py [--images 192] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_clip_tower(root: Path, *, width: int = 768, heads: int = 12) -> str:
    """A random 12-block CLIP /16 vision tower at 224 px saved as a transformers checkpoint (ViT-B/16 by default)."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=12,
                                           num_attention_heads=heads, image_size=224, patch_size=16)
    transformers.CLIPVisionModel(config).save_pretrained(root)
    transformers.CLIPImageProcessor(size={"shortest_edge": 224},
                                    crop_size={"height": 224, "width": 224}).save_pretrained(root)
    return f"hf:{root}"


def bare_loop(spec: str, data: str, batch_size: int) -> float:
    """Seconds for model forwards alone on the same batches (preprocessing done beforehand, untimed)."""
    import torch

    from medfrag_probe.data.sources import open_source
    from medfrag_probe.models.loading import load_adapter

    adapter = load_adapter(spec)
    source = open_source(data)
    batches = []
    for start in range(0, len(source), batch_size):
        images = [source.image(i) for i in range(start, min(start + batch_size, len(source)))]
        batches.append(adapter.prepare(images)["pixel_values"])
    with torch.inference_mode():
        adapter.model(pixel_values=batches[0][:2])  # warm-up, as extract's own dry runs are not counted either
        start = time.perf_counter()
        for pixels in batches:
            adapter.model(pixel_values=pixels)
        return time.perf_counter() - start


def extract_time(spec: str, data: str, batch_size: int, out: Path, workers: int) -> float:
    """Seconds for the whole `extract` call: model load, decoding, hooks, pooling, part files, HDF5."""
    from medfrag_probe.extraction import extract

    start = time.perf_counter()
    extract(spec, data, out=out, batch_size=batch_size, workers=workers, overwrite=True)
    return time.perf_counter() - start


RSS_SCRIPT = """
import resource, sys, os
from medfrag_probe.extraction import extract
extract("tiny:clip", sys.argv[1], out=sys.argv[2], batch_size=32, workers=0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(n: int, root: Path) -> float:
    """Peak RSS (MB) of a fresh process extracting `n` synthetic images with a tiny model."""
    data = f"synth:brain-mri?n={n}&size=96"
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, data, str(root / f"rss{n}.h5")], check=True,
                          capture_output=True, text=True, env={**os.environ, "MEDFRAG_CACHE": str(root)})
    return int(proc.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MEDFRAG_CACHE"] = str(root)
        from medfrag_probe._log import set_quiet

        set_quiet(True)
        spec = build_clip_tower(root / "vit-b16")
        data = f"synth:brain-mri?n={args.images}&size=96"
        bare = bare_loop(spec, data, args.batch_size)
        full = extract_time(spec, data, args.batch_size, root / "bench.h5", args.workers)
        rss_small, rss_large = peak_rss_mb(500, root), peak_rss_mb(4000, root)
    result = {"images": args.images, "batch_size": args.batch_size, "workers": args.workers,
              "bare_forward_s": round(bare, 2), "extract_s": round(full, 2), "ratio": round(full / bare, 3),
              "bare_img_per_s": round(args.images / bare, 2), "extract_img_per_s": round(args.images / full, 2),
              "rss_500_mb": round(rss_small, 1), "rss_4000_mb": round(rss_large, 1),
              "rss_ratio": round(rss_large / rss_small, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
