"""The organism table (issue 13): every `tiny:organism-KIND` through the real pipeline (extract -> probe -> vqa ->
intervene -> bridge) on synthetic data of seeds the organisms were not trained on (training used seed 101), one
JSON line per (organism, task, seed), then a summary line: how many runs gave the organism its expected verdict.

    python tests/bench/organisms.py --seeds 1,2,3,4,5 --tasks synth-brain-mri,synth-chest-xray --n 640

About 2 minutes per run on 2 CPU cores at n=640. `--rebuild` first retrains the weights into a temporary folder
(about 3 minutes per organism) and evaluates those instead of the shipped ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

EXPECTED = {"sound": "sound", "reasoning": "reasoning-limited", "vision": "vision-limited", "both": "both"}


def evaluate(spec: str, task: str, *, seed: int, n: int, work: Path, limit: int | None = None,
             per_patient: int = 4) -> dict:
    """One organism on one task and seed (`per_patient` images per simulated patient); returns the bridge record's
    headline fields."""
    from medfrag_probe import bridge, extract, intervene, probe, vqa

    data = f"synth:{task.removeprefix('synth-')}?n={n}&seed={seed}&per_patient={per_patient}"
    start = time.perf_counter()
    extract(spec, data, points="vision.block.*,projector", poolings="mean", out=work / "c.h5")
    probe([work / "c.h5"], out=work / "probes", probes=("linear",), figures=False, replicates=500, controls=False)
    vqa(spec, data, task, out=work / "vqa", prompts="mc-diagnosis,open-diagnosis,paraphrase,yes_no",
        describe_with=None, limit=n, max_new_tokens=6)
    intervene(spec, data, task, probes=work / "probes", out=work / "intervene", limit=limit, replicates=500)
    (r,) = bridge(work / "probes", work / "vqa", out=work / "bridge", figures=False, replicates=500,
                  interventions=work / "intervene")

    def rounded(value):
        return None if value is None else [round(v, 3) for v in value] if isinstance(value, list) else round(value, 3)

    keys = ("verdict", "probe_skill", "probe_skill_ci", "vqa_skill", "vqa_skill_ci", "gap_ci", "causal_effect",
            "causal_ci", "random_effect", "random_ci", "patch_follow_rate", "uses_probed_signal")
    return {k: rounded(r[k]) if not isinstance(r[k], (str, bool)) and r[k] is not None else r[k] for k in keys} | {
        "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default="sound,reasoning,vision,both")
    parser.add_argument("--tasks", default="synth-brain-mri,synth-chest-xray")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--n", type=int, default=640, help="evaluation images per run")
    parser.add_argument("--limit", type=int, default=None, help="samples intervened on (default: all)")
    parser.add_argument("--per-patient", type=int, default=4, help="images per simulated patient")
    parser.add_argument("--rebuild", action="store_true", help="retrain the organisms first and evaluate those")
    args = parser.parse_args()
    from medfrag_probe._log import set_quiet

    set_quiet(True)
    kinds = args.kinds.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if args.rebuild:  # evaluate rebuilt weights: point the organisms' weights folder and cache elsewhere
            from medfrag_probe.models import organism_training, organisms

            for kind in kinds:
                timings = organism_training.train(kind, Path(tmp) / "w" / f"{kind}.safetensors", log=lambda *_: None)
                print(json.dumps({"rebuilt": kind, **timings}), flush=True)
            organisms.WEIGHTS = Path(tmp) / "w"
            os.environ["MEDFRAG_CACHE"] = str(Path(tmp) / "cache")
        hits, total = 0, 0
        for seed in (int(s) for s in args.seeds.split(",")):
            for task in args.tasks.split(","):
                for kind in kinds:
                    with tempfile.TemporaryDirectory(dir=tmp) as work:
                        row = evaluate(f"tiny:organism-{kind}", task, seed=seed, n=args.n, work=Path(work),
                                       limit=args.limit, per_patient=args.per_patient)
                    ok = row["verdict"] == EXPECTED[kind]
                    hits, total = hits + ok, total + 1
                    print(json.dumps({"organism": kind, "task": task, "seed": seed, "n": args.n,
                                      "per_patient": args.per_patient,
                                      "expected": EXPECTED[kind], "ok": ok, **row}), flush=True)
        print(json.dumps({"expected_verdicts": hits, "runs": total, "rebuilt": args.rebuild}), flush=True)
    sys.exit(0 if hits == total else 1)


if __name__ == "__main__":
    main()
