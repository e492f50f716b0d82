"""Model organisms: tiny LLaVAs whose place of failure is known, loaded like every tiny model, and the verdicts the
bridge gives them (the long runs are `slow`; `tests/bench/organisms.py` prints the 5-seed table)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from medfrag_probe.errors import UserError
from medfrag_probe.models import organism_training, organisms
from medfrag_probe.models.loading import load_adapter
from medfrag_probe.models.tiny import _tiny_llava, tiny_spec

BENCH = Path(__file__).parent / "bench" / "organisms.py"


def _bench():
    spec = importlib.util.spec_from_file_location("organisms_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", organisms.KINDS)
def test_organisms_load_like_a_real_checkpoint_with_the_shipped_weights(kind):
    from safetensors.torch import load_file

    spec = tiny_spec(f"organism-{kind}")
    assert spec.startswith("hf:") and Path(spec[3:], "config.json").is_file()
    adapter = load_adapter(f"tiny:organism-{kind}", lm=True)
    shipped = load_file(organisms.weights_file(kind))
    state = adapter.model.state_dict()
    assert set(shipped) <= set(state)
    assert all(torch.equal(state[k], v) for k, v in shipped.items())
    assert organisms.weights_file(kind).stat().st_size < 2_000_000


def test_the_organisms_fit_in_the_size_budget_and_differ():
    files = [organisms.weights_file(k) for k in organisms.KINDS]
    assert sum(f.stat().st_size for f in files) <= 10_000_000
    assert len({f.read_bytes() for f in files}) == len(files)


def test_missing_or_mismatched_weights_get_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="organism"):
        organisms.weights_file("blind")
    monkeypatch.setattr(organisms, "WEIGHTS", tmp_path)
    with pytest.raises(UserError, match="missing.*rebuild"):
        organisms.build("sound", tmp_path / "out", base=_tiny_llava)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "sound.safetensors"), metadata={"architecture": "other"})
    with pytest.raises(UserError, match="does not fit tiny:llava"):
        organisms.build("sound", tmp_path / "out2", base=_tiny_llava)


def _never_wrong(kind: str, row: dict) -> None:
    """The organism's verdict, except that `sound` may stay undecided on the gap: its true gap (about 0.01 to 0.03
    on brain MRI) lies near `min_gap` (0.05), so at 640 images its interval sometimes reaches past 0.05 (seed 6:
    gap 0.025 [-0.013, 0.066]); a decided verdict must never be another failure."""
    expected = _bench().EXPECTED[kind]
    if kind == "sound" and row["verdict"] == "inconclusive":
        assert row["gap_ci"][0] < 0.05 < row["gap_ci"][1] and row["probe_skill_ci"][0] >= 0.5, row
    else:
        assert row["verdict"] == expected, (kind, row)


@pytest.mark.slow
def test_each_organism_gets_its_verdict_on_a_seed_it_never_saw(tmp_path):
    bench = _bench()
    for kind in bench.EXPECTED:
        row = bench.evaluate(f"tiny:organism-{kind}", "synth-brain-mri", seed=6, n=640, work=tmp_path / kind,
                             limit=256, per_patient=1)
        _never_wrong(kind, row)
        if kind == "sound":
            assert row["uses_probed_signal"] is True and row["causal_ci"][0] > 0.3
        else:
            assert row["uses_probed_signal"] is not True, (kind, row)


@pytest.mark.slow
def test_a_rebuilt_organism_gets_the_same_verdict(tmp_path, monkeypatch):
    organism_training.train("sound", tmp_path / "w" / "sound.safetensors", log=lambda *_: None)
    monkeypatch.setattr(organisms, "WEIGHTS", tmp_path / "w")
    monkeypatch.setenv("MEDFRAG_CACHE", str(tmp_path / "cache"))
    row = _bench().evaluate("tiny:organism-sound", "synth-brain-mri", seed=8, n=640, work=tmp_path / "e", limit=256,
                            per_patient=1)
    _never_wrong("sound", row)
    assert row["uses_probed_signal"] is True
