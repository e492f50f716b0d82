"""Install-anywhere and ecosystem contracts: shipped configs, catalog functions, per-user cache, pinned Hub
revisions, provenance in caches, results as DataFrames, logging levels."""

from __future__ import annotations

import json
import logging

import pytest

import medfrag_probe
from medfrag_probe.errors import UserError


def test_catalog_lists_what_ships_and_each_loads():
    from medfrag_probe.answering.tasks import load_task
    from medfrag_probe.experiment.config import load_config

    tasks, experiments, models = medfrag_probe.list_tasks(), medfrag_probe.list_experiments(), \
        medfrag_probe.list_models()
    assert {"synth-brain-mri", "brain-tumor-mri"} <= set(tasks) and {"demo", "demo-ci"} <= set(experiments)
    assert "tiny:llava" in models and "llava-1.5-7b" in models
    assert all(load_task(t).name for t in tasks) and all(load_config(e).name for e in experiments)


def test_the_wheel_ships_every_config_exactly_once(tmp_path):
    """Build the wheel (no network, no isolation) and look inside: configs/ is mapped into the package."""
    pytest.importorskip("setuptools", minversion="77")  # the build backend pyproject.toml asks for
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.split("medfrag_probe/configs/", 1)[1] for n in names if "medfrag_probe/configs/" in n)
    on_disk = sorted(str(p.relative_to(root / "configs")) for p in (root / "configs").rglob("*")
                     if p.is_file() and p.suffix in (".yaml", ".md"))
    assert shipped == on_disk and "medfrag_probe/py.typed" in names


def test_default_cache_is_per_user_not_the_working_folder(monkeypatch, tmp_path):
    from medfrag_probe._fs import cache_root
    from medfrag_probe.extraction import default_out

    monkeypatch.delenv("MEDFRAG_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "medfrag-probe"
    assert default_out("tiny:llava", "synth:brain-mri").parent == tmp_path / "xdg" / "medfrag-probe" / "embeddings"
    monkeypatch.setenv("MEDFRAG_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_a_pinned_hub_revision_loads_from_its_snapshot(monkeypatch):
    import huggingface_hub

    from medfrag_probe.models.loading import load_adapter, resolve_spec
    from medfrag_probe.models.tiny import tiny_spec

    local = tiny_spec("siglip").split(":", 1)[1]
    asked = []

    def snapshot(repo_id, revision=None, **kwargs):
        asked.append((repo_id, revision))
        return local

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    assert resolve_spec("hf:google/siglip-base@a1b2c3d").target == local
    adapter = load_adapter("hf:google/siglip-base@a1b2c3d")
    assert asked[-1] == ("google/siglip-base", "a1b2c3d") and adapter.spec == "hf:google/siglip-base@a1b2c3d"

    def offline(repo_id, revision=None, **kwargs):
        raise OSError("We have no connection or you passed local_files_only")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError, match="cannot get revision 'v9' of org/model .* HF_HUB_OFFLINE=1"):
        resolve_spec("hf:org/model@v9")


def test_caches_record_dependency_versions_and_the_device(tmp_path):
    from medfrag_probe import EmbeddingCache, extract

    out = tmp_path / "c.h5"
    extract("tiny:siglip", "synth:brain-mri?n=8", points="vision.block.00", poolings="mean", out=out, workers=0)
    attrs = EmbeddingCache(out).attrs
    versions, device = json.loads(attrs["versions"]), json.loads(attrs["device"])
    assert {"torch", "transformers", "numpy", "scikit-learn", "h5py", "timm", "open_clip_torch"} <= set(versions)
    assert versions["medfrag_probe"] == medfrag_probe.__version__ and device["device"] == "cpu"


def test_results_frame_reads_probe_and_vqa_folders(tmp_path):
    pytest.importorskip("pandas")
    from medfrag_probe import extract, results_frame
    from medfrag_probe.probes import probe

    out = tmp_path / "c.h5"
    extract("tiny:siglip", "synth:brain-mri?n=40", points="vision.block.00,vision.block.01", poolings="mean",
            out=out, workers=0)
    probe([out], probes="knn", out=tmp_path / "p", figures=False, controls=False, replicates=50)
    frame = results_frame(tmp_path)
    assert len(frame) == 2 and set(frame["point"]) == {"vision.block.00", "vision.block.01"}
    assert (frame["balanced_accuracy_low"] <= frame["balanced_accuracy"]).all()
    with pytest.raises(UserError, match="no results under"):
        results_frame(tmp_path / "p" / "predictions")
    with pytest.raises(UserError, match="unknown results kind 'probes'"):
        results_frame(tmp_path, kind="probes")


def test_quiet_keeps_warnings_and_verbose_adds_detail(capsys):
    from medfrag_probe import _log
    from medfrag_probe.cli import main

    with pytest.raises(SystemExit):
        main(["-q", "--version"])
    _log.set_quiet(True)
    _log.info("status line")
    _log.warn("the intervals are image-level")
    err = capsys.readouterr().err
    assert "status line" not in err and "warning: the intervals are image-level" in err
    _log.set_level(logging.DEBUG)
    _log.debug("detail")
    assert "detail" in capsys.readouterr().err
    with pytest.raises(SystemExit) as code:
        main(["-q", "-v", "models"])
    assert code.value.code == 2 and "contradict" in capsys.readouterr().err
