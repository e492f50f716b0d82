"""Calibration of the probe's 95% intervals (not part of the test run).

Prints one JSON line:
- `null_exclusion`: per probe, the share of datasets with no class signal whose balanced-accuracy CI excludes chance
  (nominal 0.05; target 0.035-0.065). Each null dataset: `patients` patients x `per` images, a random offset per
  patient shared by its images, labels drawn per patient (so a leaky split would score; group k-fold must not).
- `coverage`: per probe, the share of datasets with a known class signal whose CI holds the procedure's expected
  balanced accuracy at this n (the mean estimate over the datasets; target >= 0.93), and the share holding the Bayes
  balanced accuracy `Phi(separation / 2)` (which a finite training set approaches from below).

The intervals are the probe's own: a patient bootstrap widened by the permutation design effect (`probe`'s
`permutations`; `--permutations 0` measures the plain bootstrap). 500 datasets per condition by default: with 200,
the share of intervals holding a value is known to +-0.015 and the spread of the estimate across datasets (what the
intervals must match) to +-5%, as wide as the target band.

    python tests/bench/calibration.py                       # 500 null + 500 signal datasets per probe (~6 min)
    python tests/bench/calibration.py --datasets 40         # quicker, coarser
    python tests/bench/calibration.py --dim 64 --offset 3   # tighter patient clusters
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from math import erf, sqrt
from pathlib import Path

import h5py
import numpy as np

from medfrag_probe import _log
from medfrag_probe.probes import probe
from medfrag_probe.stats import PERMUTATIONS


def dataset(seed: int, *, patients: int = 80, per: int = 6, dim: int = 32, offset: float = 1.0,
            separation: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images of simulated patients: patient offset + image noise; the class shifts feature 0 by +-separation/2."""
    rng = np.random.default_rng(seed)
    patient_label = rng.integers(0, 2, patients)
    centre = rng.normal(size=(patients, dim)) * offset
    centre[:, 0] = 0.0  # the class direction carries no patient offset: the Bayes accuracy is Phi(separation / 2)
    X = np.repeat(centre, per, 0) + rng.normal(size=(patients * per, dim))
    y = np.repeat(patient_label, per)
    X[:, 0] += separation / 2 * (2 * y - 1)
    return X.astype(np.float32), y, np.repeat(np.arange(patients), per)


def write_cache(path: Path, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Path:
    string = h5py.string_dtype()
    with h5py.File(path, "w") as fh:
        fh.create_dataset("classes", data=np.array(["a", "b"], dtype=object), dtype=string)
        fh.create_dataset("samples/id", data=np.array([f"i{i}" for i in range(len(y))], dtype=object), dtype=string)
        fh.create_dataset("samples/label", data=y)
        fh.create_dataset("samples/group", data=groups.astype(str).astype(object), dtype=string)
        fh.create_dataset("emb/x/mean", data=X)
    return path


def intervals(n: int, *, probes: tuple[str, ...], separation: float, replicates: int, permutations: int = PERMUTATIONS,
              **design) -> dict:
    """{probe: [(estimate, low, high)]} over `n` datasets of the design."""
    found: dict[str, list] = {name: [] for name in probes}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(n):
            path = write_cache(Path(tmp) / "c.h5", *dataset(10_000 * int(separation * 10) + seed,
                                                             separation=separation, **design))
            for r in probe([path], probes=probes, out=Path(tmp) / "out", controls=False, figures=False,
                           replicates=replicates, seed=seed, permutations=permutations):
                found[r.probe].append((r.balanced_accuracy, *r.balanced_accuracy_ci))
    return found


def calibration(n: int = 500, *, probes=("linear", "knn"), separation: float = 1.5, replicates: int = 1000,
                permutations: int = PERMUTATIONS, **design) -> dict:
    """The JSON record of the module docstring."""
    _log.set_quiet(True)
    start = time.perf_counter()
    null = intervals(n, probes=probes, separation=0.0, replicates=replicates, permutations=permutations, **design)
    signal = intervals(n, probes=probes, separation=separation, replicates=replicates, permutations=permutations,
                       **design)
    bayes = 0.5 * (1 + erf(separation / 2 / sqrt(2)))
    out = {"datasets": n, "design": {"patients": 80, "per": 6, "dim": 32, "offset": 1.0, **design},
           "permutations": permutations, "null_sd": {}, "null_halfwidth": {},
           "separation": separation, "bayes_accuracy": round(bayes, 4), "null_exclusion": {}, "null_mean": {},
           "coverage": {}, "coverage_bayes": {}, "signal_mean": {}, "targets": {"null_exclusion": [0.035, 0.065],
                                                                             "coverage": 0.93}}
    for name in probes:
        v = np.array(null[name])
        out["null_exclusion"][name] = round(float(np.mean((v[:, 1] > 0.5) | (v[:, 2] < 0.5))), 4)
        out["null_mean"][name] = round(float(v[:, 0].mean()), 4)
        out["null_sd"][name] = round(float(v[:, 0].std()), 4)  # the spread the intervals must match
        out["null_halfwidth"][name] = round(float(((v[:, 2] - v[:, 1]) / (2 * 1.96)).mean()), 4)
        s = np.array(signal[name])
        expected = s[:, 0].mean()
        out["signal_mean"][name] = round(float(expected), 4)
        out["coverage"][name] = round(float(np.mean((s[:, 1] <= expected) & (expected <= s[:, 2]))), 4)
        out["coverage_bayes"][name] = round(float(np.mean((s[:, 1] <= bayes) & (bayes <= s[:, 2]))), 4)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=int, default=500)
    parser.add_argument("--permutations", type=int, default=PERMUTATIONS)
    parser.add_argument("--probes", default="linear,knn")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--offset", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps(calibration(args.datasets, probes=tuple(args.probes.split(",")), dim=args.dim,
                                 offset=args.offset, permutations=args.permutations)))


if __name__ == "__main__":
    main()
