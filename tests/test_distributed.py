"""Distributed extraction: torchrun ranks (gloo on CPU) give the same cache as one process, and resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from medfrag_probe.cache import parts_dir

DATA = "synth:histology?n=48&size=48"


def _env():
    # one thread everywhere, so that rank and single-process kernels reduce in the same order
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(out, data=DATA, **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "medfrag_probe", "--quiet", "extract", "-m", "tiny:clip", "-d", data, "--out", str(out),
           "--batch-size", "4", "--workers", "0", "--store-dtype", "float32"]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _single(out, data=DATA):
    cmd = [sys.executable, "-m", "medfrag_probe", "--quiet", "extract", "-m", "tiny:clip", "-d", data, "--out",
           str(out), "--batch-size", "4", "--workers", "0", "--store-dtype", "float32"]
    subprocess.run(cmd, env=_env(), check=True, capture_output=True)


def _descendants(pid: int) -> list[int]:
    """All processes below `pid` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(proc) -> None:
    """SIGKILL a launcher and every process under it, and wait until they are gone."""
    victims = _descendants(proc.pid)
    for pid in [proc.pid, *victims]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(pid) for pid in victims):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _same(a, b):
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert list(fa["samples/id"].asstr()) == list(fb["samples/id"].asstr())
        assert fa["samples/done"][()].all() and fb["samples/done"][()].all()
        for point in fb["emb"]:
            for pooling in fb[f"emb/{point}"]:
                assert np.array_equal(fa[f"emb/{point}/{pooling}"][()], fb[f"emb/{point}/{pooling}"][()])


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    _single(tmp_path / "one.h5")  # also builds tiny:clip once
    proc = _torchrun(tmp_path / "two.h5")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert output.count("48 extracted now") == 1  # only rank 0 reports
    assert not parts_dir(tmp_path / "two.h5").exists()
    _same(tmp_path / "two.h5", tmp_path / "one.h5")


@pytest.mark.slow
def test_killed_ranks_resume_to_the_same_cache(tmp_path):
    data = "synth:histology?n=400&size=48"
    _single(tmp_path / "one.h5", data)
    out = tmp_path / "two.h5"
    proc = _torchrun(out, data)
    parts = parts_dir(out)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(parts.glob("r*.safetensors"))) < 6 and proc.poll() is None:
        time.sleep(0.01)
    _kill_tree(proc)
    finished = len(list(parts.glob("r*.safetensors")))
    assert 6 <= finished < 100 and not out.exists()
    rerun = _torchrun(out, data)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert f"{finished * 4} already done" in output
    _same(out, tmp_path / "one.h5")
