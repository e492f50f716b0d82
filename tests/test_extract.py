"""extract and the HDF5 cache: schema, fingerprints, resume, crash safety, bad inputs."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from PIL import Image

from medfrag_probe.cache import EmbeddingCache, parts_dir, verify
from medfrag_probe.errors import UserError
from medfrag_probe.extraction import extract

DATA = "synth:brain-mri?n=24&size=48"


def _datasets(path):
    with h5py.File(path, "r") as fh:
        out = {f"{p}/{q}": fh[f"emb/{p}/{q}"][()] for p in fh["emb"] for q in fh[f"emb/{p}"]}
        for key in ("id", "label", "group", "done", "error"):
            out[key] = fh[f"samples/{key}"][()]
    return out


def test_cache_schema_readable_with_plain_h5py(tmp_path):
    out = tmp_path / "c.h5"
    result = extract("tiny:llava", DATA, points="vision.block.*,projector", poolings="mean", out=out,
                     batch_size=8, workers=0)
    assert result.extracted == 24 and not result.failed
    with h5py.File(out, "r") as fh:
        assert fh.attrs["schema"] == "medfrag-probe/cache" and fh.attrs["reads_point"] == "vision.block.02"
        assert fh["samples/id"].asstr()[0] == "p00000/img0" and fh["samples/done"][()].all()
        assert fh["emb/projector/mean"].shape == (24, 64) and fh["emb/projector/mean"].dtype == np.float16
        assert list(fh["classes"].asstr()[()]) == ["glioma", "meningioma", "no_tumor", "pituitary"]
        assert len(fh.attrs["model_fingerprint"]) == 16 and fh.attrs["data_fingerprint"]
    assert verify(out) == []
    assert not parts_dir(out).exists()


def test_rerun_does_nothing_and_results_are_batch_size_independent(tmp_path):
    a = extract("tiny:siglip", DATA, out=tmp_path / "a.h5", batch_size=5, workers=0, store_dtype="float32")
    again = extract("tiny:siglip", DATA, out=tmp_path / "a.h5", batch_size=5, workers=0, store_dtype="float32")
    assert again.extracted == 0 and again.skipped == 24
    b = extract("tiny:siglip", DATA, out=tmp_path / "b.h5", batch_size=24, workers=2, store_dtype="float32")
    da, db = _datasets(a.path), _datasets(b.path)
    for key in da:
        if key.startswith("vision"):
            np.testing.assert_allclose(da[key], db[key], atol=1e-4)


def test_mismatched_cache_is_refused_and_overwrite_replaces(tmp_path):
    out = tmp_path / "c.h5"
    extract("tiny:clip", DATA, points="vision.post", out=out, workers=0)
    with pytest.raises(UserError, match="model_fingerprint") as err:
        extract("tiny:siglip", DATA, points="vision.post", out=out, workers=0)
    assert "`overwrite=True`" in str(err.value) and "--overwrite" in err.value.for_cli()
    with pytest.raises(UserError, match="data_fingerprint"):
        extract("tiny:clip", "synth:brain-mri?n=24&size=48&seed=9", points="vision.post", out=out, workers=0)
    result = extract("tiny:siglip", DATA, points="vision.post", out=out, workers=0, overwrite=True)
    assert result.extracted == 24 and EmbeddingCache(out).attrs["model"] == "tiny:siglip"


def test_resume_from_parts_left_by_an_interrupted_run(tmp_path, monkeypatch):
    import medfrag_probe.extraction as ex

    out = tmp_path / "c.h5"
    reference = extract("tiny:clip", DATA, out=tmp_path / "ref.h5", batch_size=4, workers=0)
    real = ex._embed
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "_embed", dying)
    with pytest.raises(KeyboardInterrupt):
        extract("tiny:clip", DATA, out=out, batch_size=4, workers=0)
    assert not out.exists() and len(list(parts_dir(out).glob("r*.safetensors"))) == 3
    monkeypatch.setattr(ex, "_embed", real)
    resumed = extract("tiny:clip", DATA, out=out, batch_size=4, workers=0)
    assert resumed.skipped == 12 and resumed.extracted == 12
    a, b = _datasets(reference.path), _datasets(out)
    assert all(np.array_equal(a[k], b[k]) for k in a)


SCRIPT = """
import sys
from medfrag_probe.extraction import extract
extract("tiny:clip", "synth:histology?n=480&size=64", out=sys.argv[1], batch_size=4, workers=0,
        store_dtype="float32")
"""


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_uninterrupted(tmp_path):
    """A real `kill -9` of the extraction process loses nothing that was finished."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    extract("tiny:clip", "synth:histology?n=4&size=64", out=tmp_path / "warm.h5", workers=0)  # build tiny:clip
    killed = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = parts_dir(killed)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("r*.safetensors"))) < 8:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(parts.glob("r*.safetensors")))
    assert 8 <= finished < 120, "the kill should land mid-run"
    assert not killed.exists()
    subprocess.run([sys.executable, "-c", SCRIPT, str(killed)], env=env, check=True, capture_output=True)
    clean = tmp_path / "clean.h5"
    subprocess.run([sys.executable, "-c", SCRIPT, str(clean)], env=env, check=True, capture_output=True)
    a, b = _datasets(killed), _datasets(clean)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["done"].all() and verify(killed) == []


def _odd_files(root):
    """Broken and odd image files; returns {relative path: should_extract}."""
    import nibabel
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    files = {}

    def save(name, img, ok=True, **kw):
        img.save(root / name, **kw)
        files[name] = ok

    save("rgb.png", Image.new("RGB", (40, 30), (10, 200, 30)))
    save("grey16.png", Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50))
    pal = Image.new("P", (20, 20))
    pal.putpalette([255, 0, 0] * 256)
    save("palette_transparent.png", pal, transparency=0)
    save("rgba.png", Image.new("RGBA", (20, 20), (0, 0, 255, 128)))
    save("la.png", Image.new("LA", (20, 20), (100, 50)))
    save("cmyk.jpg", Image.new("CMYK", (20, 20), (0, 255, 255, 0)))
    save("onebit.bmp", Image.new("1", (20, 20), 1))
    save("float.tif", Image.fromarray(np.linspace(-1, 1, 400, dtype=np.float32).reshape(20, 20)))
    save("tiny_1x1.png", Image.new("RGB", (1, 1), (1, 2, 3)))
    frames = [Image.new("P", (10, 10), i) for i in range(3)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    files["anim.gif"] = True
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 16, 12, 11
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME1", 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, -1024, 40, 400
    ds.PixelData = (np.arange(256, dtype=np.uint16) * 10).tobytes()
    ds.save_as(root / "ct.dcm", enforce_file_format=True)
    files["ct.dcm"] = True
    nibabel.save(nibabel.Nifti1Image(np.random.default_rng(0).random((12, 12, 5)).astype(np.float32), np.eye(4)),
                 root / "vol.nii.gz")
    files["vol.nii.gz"] = True
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a jpeg")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (5, 5, 5)).save(buf, "PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[:70])
    (root / "bad.dcm").write_bytes(b"DICM" + b"\x00" * 50)
    (root / "bad.nii").write_bytes(b"\x00" * 100)
    (root / "missing.png").touch()
    (root / "missing.png").unlink()
    files.update({"empty.png": False, "text.jpg": False, "truncated.png": False, "bad.dcm": False,
                  "bad.nii": False, "missing.png": False})
    return files


def test_bad_inputs_recorded_per_sample_and_valid_ones_extracted(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    files = _odd_files(root)
    lines = ["path,label"] + [f"{name},{'a' if i % 2 else 'b'}" for i, name in enumerate(files)]
    (root / "m.csv").write_text("\n".join(lines))
    result = extract("tiny:clip", f"manifest:{root / 'm.csv'}", out=tmp_path / "c.h5", batch_size=4, workers=0)
    broken = {name for name, ok in files.items() if not ok}
    assert set(result.failed) == broken and len(broken) >= 6 and len(files) - len(broken) >= 11
    assert all(result.failed[name] for name in broken)
    assert "empty file" in result.failed["empty.png"]
    cache = EmbeddingCache(tmp_path / "c.h5")
    for i, sample_id in enumerate(cache.ids):
        assert cache.done[i] == files[sample_id]
        assert bool(cache.errors[i]) == (not files[sample_id])
    finished = cache.load("vision.post", "mean")[cache.done]
    assert np.isfinite(finished).all() and np.abs(finished).sum(1).min() > 0
    assert verify(tmp_path / "c.h5") == []


def test_lm_points_need_a_prompt_and_store_image_and_last(tmp_path):
    with pytest.raises(UserError, match="`prompt='Is there a tumour\\?'`"):
        extract("tiny:qwen2-vl", DATA, points="lm.block.*", out=tmp_path / "x.h5")
    result = extract("tiny:qwen2-vl", DATA, points="vision.block.02,projector,lm.block.*", out=tmp_path / "q.h5",
                     prompt="Is there a tumor?", batch_size=6, workers=0, store_dtype="float32")
    cache = EmbeddingCache(result.path)
    assert {("lm.block.00", "image"), ("lm.block.01", "last"), ("projector", "mean")} <= set(cache.points())
    assert cache.attrs["prompt"] == "Is there a tumor?"


@pytest.mark.parametrize("kwargs, message", [
    (dict(points="vision.block.99"), "no hook point 'vision.block.99'"),
    (dict(points="nothing*"), "no hook point of"),
    (dict(poolings="median"), "unknown pooling 'median'"),
    (dict(batch_size=0), "`batch_size` must be >= 1"),
    (dict(store_dtype="int8"), "unknown store dtype"),
    (dict(dtype="float8"), "unknown dtype"),
    (dict(device="cuda:7"), "no CUDA device"),
])
def test_bad_options_are_user_errors(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        extract("tiny:siglip", DATA, out=tmp_path / "x.h5", **kwargs)


def test_cls_pooling_refused_on_siglip(tmp_path):
    with pytest.raises(UserError, match="no CLS token"):
        extract("tiny:siglip", DATA, points="vision.post", poolings="cls", out=tmp_path / "x.h5")


def test_probe_minimal_schema_reader(tmp_path):
    """Embeddings written by another tool with only the minimal datasets can be read."""
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as fh:
        fh["samples/id"] = np.array(["a", "b"], dtype=object)
        fh["samples/label"] = np.array([0, 1])
        fh["classes"] = np.array(["x", "y"], dtype=object)
        fh["emb/layer3/mean"] = np.ones((2, 5), np.float32)
    cache = EmbeddingCache(path)
    assert cache.groups == ["a", "b"] and cache.done.all() and cache.load("layer3", "mean").shape == (2, 5)
    with pytest.raises(UserError, match="no layer9/mean"):
        cache.load("layer9", "mean")
