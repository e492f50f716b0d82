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
