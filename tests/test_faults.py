"""Fault cases: damaged caches and other hostile inputs get a clear one-line error (exit 2), never a traceback."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from medfrag_probe.cache import EmbeddingCache, verify
from medfrag_probe.errors import UserError
from medfrag_probe.probes import probe


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory):
    from medfrag_probe import extract

    out = tmp_path_factory.mktemp("faults") / "c.h5"
    extract("tiny:siglip", "synth:brain-mri?n=64", points="vision.block.00", poolings="mean", out=out, workers=0)
    return out


def _copy(cache_file, tmp_path, name="d.h5"):
    target = tmp_path / name
    shutil.copyfile(cache_file, target)
    return target


@pytest.mark.parametrize("dataset", ["label", "group", "done"])
def test_a_short_per_sample_array_is_named(cache_file, tmp_path, dataset):
    path = _copy(cache_file, tmp_path)
    with h5py.File(path, "a") as fh:
        values = fh[f"samples/{dataset}"][()]
        del fh[f"samples/{dataset}"]
        fh.create_dataset(f"samples/{dataset}", data=values[:-3])
    with pytest.raises(UserError, match=rf"/samples/{dataset} has 61 entries for 64 sample ids"):
        EmbeddingCache(path)
    with pytest.raises(UserError, match="has 61 entries"):
        verify(path)


def test_an_embedding_with_too_few_rows_is_reported_and_refused(cache_file, tmp_path):
    path = _copy(cache_file, tmp_path)
    with h5py.File(path, "a") as fh:
        values = fh["emb/vision.block.00/mean"][()]
        del fh["emb/vision.block.00/mean"]
        fh.create_dataset("emb/vision.block.00/mean", data=values[:10])
    assert "emb/vision.block.00/mean has 10 rows for 64 samples" in verify(path)
    with pytest.raises(UserError, match="has 10 rows for 64 samples"):
        probe([path], probes="knn", out=tmp_path / "o", figures=False)


def test_new_caches_carry_checksums_and_flipped_bytes_are_caught(cache_file, tmp_path):
    with h5py.File(cache_file, "r") as fh:
        data = fh["emb/vision.block.00/mean"]
        assert data.fletcher32
        offset = data.id.get_chunk_info(0).byte_offset
    path = _copy(cache_file, tmp_path)
    raw = bytearray(path.read_bytes())
    raw[offset + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    problems = verify(path)
    assert any("cannot be read" in p and "damaged" in p for p in problems), problems
    with pytest.raises(UserError, match="cannot be read .* the file is damaged"):
        EmbeddingCache(path).load("vision.block.00", "mean")


def test_a_label_array_of_strings_is_refused(cache_file, tmp_path):
    path = _copy(cache_file, tmp_path)
    with h5py.File(path, "a") as fh:
        n = len(fh["samples/label"])
        del fh["samples/label"]
        fh.create_dataset("samples/label", data=np.array(["a"] * n, dtype=object), dtype=h5py.string_dtype())
    with pytest.raises(UserError, match="expected integers"):
        EmbeddingCache(path)


def test_garbage_in_place_of_a_cache_is_one_line(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(UserError, match="is not a readable cache") as err:
        EmbeddingCache(path)
    assert "\n" not in str(err.value)


def test_cache_verify_cli_on_a_damaged_file_exits_2(cache_file, tmp_path, capsys):
    from medfrag_probe.cli import main

    path = _copy(cache_file, tmp_path)
    with h5py.File(path, "a") as fh:
        del fh["samples/group"]
        fh.create_dataset("samples/group", data=np.array(["p"] * 5, dtype=object), dtype=h5py.string_dtype())
    with pytest.raises(SystemExit) as exit_info:
        main(["cache", "verify", str(path)])
    assert exit_info.value.code == 2
    assert "/samples/group has 5 entries for 64 sample ids" in capsys.readouterr().err


@pytest.mark.parametrize("error, message", [
    (OSError(28, "No space left on device", "/data/out/c.h5.parts/part-1"), "no space left on the device"),
    (PermissionError(13, "Permission denied", "/readonly/out"), "/readonly/out: permission denied"),
    (IsADirectoryError(21, "Is a directory", "/data/out"), "/data/out: it is a folder, not a file"),
])
def test_file_system_failures_are_one_line_exit_2(monkeypatch, capsys, error, message):
    import medfrag_probe.probes as probes_module
    from medfrag_probe.cli import main

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(probes_module, "probe", fail)
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", "c.h5"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


# ---- one writer per output -------------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from medfrag_probe._fs import output_lock
with output_lock(Path(sys.argv[1]), folder=sys.argv[2] == "folder"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(path, kind):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), kind], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_extract_on_the_same_cache_is_refused_and_a_killed_holder_frees_it(tmp_path):
    from medfrag_probe import extract

    out = tmp_path / "c.h5"
    holder = _holder(out, "file")
    try:
        with pytest.raises(UserError, match=rf"another run \(pid {holder.pid} on .*\) is writing the cache"):
            extract("tiny:siglip", "synth:brain-mri?n=8", points="vision.block.00", poolings="mean", out=out,
                    workers=0)
        assert not out.exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock; nothing stale is left to clean by hand
        holder.wait()
    result = extract("tiny:siglip", "synth:brain-mri?n=8", points="vision.block.00", poolings="mean", out=out,
                     workers=0)
    assert result.extracted == 8 and verify(out) == []


@pytest.mark.slow
def test_two_extract_processes_at_once_leave_one_complete_cache(tmp_path):
    """The second command starts while the first holds the cache (forced by waiting for its lock file): it exits 2
    naming the other run, and the first finishes a cache with every sample done."""
    import os
    import subprocess
    import sys
    import time

    out = tmp_path / "c.h5"
    cmd = [sys.executable, "-m", "medfrag_probe", "-q", "extract", "--model", "tiny:siglip", "--data",
           "synth:brain-mri?n=1200", "--points", "vision.block.00", "--poolings", "mean", "--out", str(out),
           "--batch-size", "2", "--workers", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    parts = out.with_name("c.h5.parts")
    deadline = time.time() + 120
    while not any(parts.glob("r*.safetensors")) and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)  # the first run is writing batches now
    second = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode == 2 and "is writing the cache" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert verify(out) == [] and EmbeddingCache(out).done.all()


def test_vqa_and_study_folders_take_the_same_lock(tmp_path):
    from medfrag_probe import run
    from medfrag_probe._fs import output_lock
    from medfrag_probe.answering import vqa

    holder = _holder(tmp_path / "v", "folder")
    try:
        with pytest.raises(UserError, match="is writing the VQA folder"):
            vqa("tiny:llava", "synth:brain-mri?n=4", "synth-brain-mri", out=tmp_path / "v", describe_with=None)
    finally:
        holder.kill()
        holder.wait()
    with output_lock(tmp_path / "s", folder=True), output_lock(tmp_path / "s", folder=True):
        pass  # one process may nest its own lock (a study running stages into its folder)
    holder = _holder(tmp_path / "s", "folder")
    try:
        with pytest.raises(UserError, match="is writing the study folder"):
            run("demo-ci", out=tmp_path / "s")
    finally:
        holder.kill()
        holder.wait()


def test_probe_refuses_an_unfinished_extraction_unless_allowed(cache_file, tmp_path):
    path = _copy(cache_file, tmp_path)
    with h5py.File(path, "a") as fh:
        done = fh["samples/done"][()]
        done[:20] = False  # never attempted (no error recorded): a stopped extraction
        fh["samples/done"][...] = done
        errors = fh["samples/error"][()]
        errors[20:23] = "decode failed"  # failed images never block a probe
        fh["samples/done"][20:23] = False
        fh["samples/error"][...] = errors
    with pytest.raises(UserError, match="unfinished extraction: 20 of 64 samples are neither extracted nor failed"):
        probe([path], probes="knn", out=tmp_path / "o", figures=False, controls=False)
    assert not (tmp_path / "o").exists()
    results = probe([path], probes="knn", out=tmp_path / "o", figures=False, controls=False, replicates=50,
                    allow_incomplete=True)
    assert results and results[0].n == 64 - 23


# ---- full disks, stale temporary files, folders given for files --------------------------------------------------

def test_a_full_disk_before_consolidation_keeps_the_parts_and_leaves_no_tmp(tmp_path, monkeypatch):
    import errno
    import shutil as shutil_module
    from collections import namedtuple

    from medfrag_probe import cache as cache_module
    from medfrag_probe import extract

    out = tmp_path / "c.h5"
    real = shutil_module.disk_usage
    usage = namedtuple("usage", "total used free")

    def nearly_full(folder):
        return usage(10 << 30, 10 << 30, 0) if Path(folder) == tmp_path else real(folder)

    from pathlib import Path

    monkeypatch.setattr(cache_module.shutil, "disk_usage", nearly_full)
    with pytest.raises(OSError) as info:
        extract("tiny:siglip", "synth:brain-mri?n=16", points="vision.block.00", poolings="mean", out=out,
                workers=0, batch_size=4)
    assert info.value.errno == errno.ENOSPC and "the cache c.h5 needs about" in str(info.value)
    assert not out.exists() and len(list((tmp_path / "c.h5.parts").glob("r*.safetensors"))) == 4
    assert not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setattr(cache_module.shutil, "disk_usage", real)
    result = extract("tiny:siglip", "synth:brain-mri?n=16", points="vision.block.00", poolings="mean", out=out,
                     workers=0, batch_size=4)
    assert result.skipped == 16 and result.extracted == 0 and verify(out) == []  # resumed: nothing recomputed


def test_a_part_write_that_fills_the_disk_is_a_disk_error_and_leaves_no_tmp(tmp_path, monkeypatch):
    import errno

    import safetensors.numpy

    from medfrag_probe.cache import write_part

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                           "\"No space left on device\" })")

    from pathlib import Path

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    parts = tmp_path / "c.h5.parts"
    parts.mkdir()
    with pytest.raises(OSError) as info:
        write_part(parts, np.arange(2), {"p/mean": np.zeros((2, 3), np.float16)}, {}, np.arange(2))
    assert info.value.errno == errno.ENOSPC
    assert list(parts.iterdir()) == []


def test_stale_tmp_files_of_killed_runs_are_removed_on_the_next_run(cache_file, tmp_path):
    from medfrag_probe import extract

    out = tmp_path / "c.h5"
    parts = tmp_path / "c.h5.parts"
    parts.mkdir()
    stale = [tmp_path / ".c.h5.4242.tmp", parts / ".r000000000-000000003.safetensors.4242.tmp"]
    for path in stale:
        path.write_bytes(b"x" * 100)
    other = tmp_path / ".someone-else.h5.77.tmp"
    other.write_bytes(b"keep")
    extract("tiny:siglip", "synth:brain-mri?n=8", points="vision.block.00", poolings="mean", out=out, workers=0)
    assert not any(p.exists() for p in stale) and other.exists() and verify(out) == []


def test_a_folder_given_as_the_cache_file_is_one_line(tmp_path, capsys):
    from medfrag_probe.cli import main

    (tmp_path / "dir").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--model", "tiny:siglip", "--data", "synth:brain-mri?n=4", "--out", str(tmp_path / "dir"),
              "--overwrite"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "is a folder; give the cache file to write" in err and err.count("\n") == 1
    assert err.startswith("error: --out ")  # the command line names its own flag


# ---- report.md ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, shown", [
    ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
    ("a|b", "a\\|b"),
    ("# heading", "\\# heading"),
    ("**bold** [x](http://e)", "\\*\\*bold\\*\\* \\[x\\](http://e)"),
    ("two\nlines", "two lines"),
    ("ViT-B/16", "ViT-B/16"),
])
def test_report_markdown_escapes_user_strings(text, shown):
    from medfrag_probe.experiment.report import md_escape

    assert md_escape(text) == shown


# ---- very large images -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, mode", [("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "I;16"), ("PNG", "P")])
def test_very_large_images_decode_reduced_and_small_ones_untouched(tmp_path, fmt, mode):
    from PIL import Image

    from medfrag_probe.data.images import load_image

    ramp = (np.add.outer(np.arange(2600), np.arange(2600)) % 251).astype(np.uint16)
    base = Image.fromarray(ramp.astype(np.uint8), "L")
    image = {"RGB": base.convert("RGB"), "P": base.convert("P"),
             "I;16": Image.fromarray((ramp * 200).astype(np.uint16))}[mode]
    path = tmp_path / f"big.{fmt.lower()}"
    image.save(path, fmt)
    full = load_image(path)
    reduced = load_image(path, keep_side=1024)
    assert full.size == (2600, 2600) and reduced.size == (1300, 1300) and reduced.mode == "RGB"
    # the reduced image is the full one seen at half size (a box filter, up to JPEG's own DCT scaling)
    expect = np.asarray(full.resize((1300, 1300), Image.BOX), dtype=np.float32)
    assert np.abs(np.asarray(reduced, dtype=np.float32) - expect).mean() < (4 if fmt == "JPEG" else 1.5)
    small = tmp_path / "small.png"
    base.crop((0, 0, 2000, 2000)).save(small)
    assert load_image(small, keep_side=1024).tobytes() == load_image(small).tobytes()
