"""GPU paths (skipped without CUDA; this project's CI has none): the same answers as the CPU paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfrag_probe.probes import KNNProbe, LinearProbe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _data(n=2000, d=64, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, d)) + 0.4 * np.eye(3, d)[y] * np.sqrt(d) / 4
    return X.astype(np.float32), y


def test_linear_probe_cuda_equals_cpu():
    X, y = _data()
    cpu = LinearProbe(device="cpu").fit(X[:1500], y[:1500])
    gpu = LinearProbe(device="cuda").fit(X[:1500], y[:1500])
    assert cpu.C_ == gpu.C_
    np.testing.assert_allclose(gpu.predict_proba(X[1500:]), cpu.predict_proba(X[1500:]), atol=2e-3)


def test_knn_probe_cuda_equals_cpu():
    X, y = _data()
    cpu = KNNProbe(device="cpu").fit(X[:1500], y[:1500]).predict_proba(X[1500:])
    gpu = KNNProbe(device="cuda").fit(X[:1500], y[:1500]).predict_proba(X[1500:])
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


def test_bf16_extraction_on_cuda(tmp_path):
    from medfrag_probe.cache import EmbeddingCache
    from medfrag_probe.extraction import extract

    data = "synth:brain-mri?n=16&size=48"
    ref = extract("tiny:clip", data, out=tmp_path / "cpu.h5", points="vision.post", poolings="mean", workers=0)
    gpu = extract("tiny:clip", data, out=tmp_path / "gpu.h5", points="vision.post", poolings="mean", workers=0,
                  device="cuda", dtype="bfloat16")
    a, b = EmbeddingCache(ref.path).load("vision.post", "mean"), EmbeddingCache(gpu.path).load("vision.post", "mean")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99
