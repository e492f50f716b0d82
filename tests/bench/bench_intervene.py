"""Causal-check benchmark (not part of the test run). Prints a final JSON line.

`intervene` answers every closed question about every sample under six conditions. With prefix sharing each image
runs once per condition: its (edited) image tokens and the chat before them are computed once, their key/value
cache serves all of the image's questions, and the second-token passes of options whose first tokens collide are
one-token passes over the answer position's cache. Without it, every (image, question) row runs the tower, the
projector and the whole prompt, and every second-token pass reruns the batch.

- `prefix_speedup`: wall time without sharing over wall time with it, on a random LLaVA-1.5-shaped model (the
  `bench_vqa` model: CLIP ViT-B/16-sized tower at 224 px, a 6-layer 512-wide Llama decoder), `--images` samples
  of `synth:chest-xray` x its 13 closed questions x 6 conditions; `same_answers`: the largest difference of the
  right class's probability between the two, per condition (floating-point summation order only).
- `tiny_*`: the same on `tiny:llava` (a per-call-bound model: sharing splits a row batch into three smaller passes,
  so it can be slower there; the demo asks the tiny models their multiple-choice questions only).

    python tests/bench/bench_intervene.py [--images 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench_vqa import shaped_adapter

from medfrag_probe import intervene


def timed(adapter, data: str, out: Path, *, share: bool, images: int) -> tuple[float, dict]:
    adapter.share_prefix = share
    start = time.perf_counter()
    record = intervene(adapter, data, "synth-chest-xray", out=out, limit=images, folds=2, replicates=50,
                       batch_size=16)
    return time.perf_counter() - start, record


def compare(adapter, data: str, tmp: Path, *, images: int, name: str) -> dict:
    plain_s, plain = timed(adapter, data, tmp / f"{name}-plain", share=False, images=images)
    shared_s, shared = timed(adapter, data, tmp / f"{name}-shared", share=True, images=images)
    diff = max(abs(plain["p_right"][c] - shared["p_right"][c]) for c in plain["p_right"])
    return {f"{name}_plain_s": round(plain_s, 2), f"{name}_shared_s": round(shared_s, 2),
            f"{name}_speedup": round(plain_s / shared_s, 2), f"{name}_max_p_right_diff": float(diff)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    from medfrag_probe.models.loading import load_adapter

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shaped = shaped_adapter(tmp / "model")
        data = f"synth:chest-xray?n={2 * args.images}&size=224"
        figures = compare(shaped, data, tmp, images=args.images, name="llava15")
        tiny = compare(load_adapter("tiny:llava", lm=True), f"synth:chest-xray?n={4 * args.images}", tmp,
                       images=4 * args.images, name="tiny")
    print(json.dumps({"images": args.images, "prompts": 13, "conditions": 6, **figures,
                      "prefix_speedup": figures["llava15_speedup"],
                      "same_answers": figures["llava15_max_p_right_diff"] < 1e-4, **tiny}))


if __name__ == "__main__":
    main()
