"""Data sources, image decoding rules, synthetic tasks."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from medfrag_probe.data.images import ImageError, array_to_rgb, load_image, to_rgb
from medfrag_probe.data.sources import open_source
from medfrag_probe.data.synth import TASKS, write_synth
from medfrag_probe.errors import UserError


def _png(path, color=(200, 10, 10), size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_imagefolder_classes_and_ids(tmp_path):
    for cls in ("normal", "pneumonia"):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png")
    (tmp_path / "normal" / "notes.txt").write_text("not an image")
    source = open_source(f"imagefolder:{tmp_path}")
    assert source.classes == ("normal", "pneumonia")
    assert [s.id for s in source.samples][:2] == ["normal/0.png", "normal/1.png"]
    assert [s.label for s in source.samples] == [0, 0, 0, 1, 1, 1]
    assert not source.has_splits and source.samples[0].group == "normal/0.png"
    assert source.image(0).mode == "RGB"


def test_imagefolder_with_split_level(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            _png(tmp_path / split / cls / "x.png")
    source = open_source(f"imagefolder:{tmp_path}")
    assert source.has_splits and {s.split for s in source.samples} == {"train", "test"}
    assert source.classes == ("a", "b")


def test_imagefolder_patient_ids_from_file_names(tmp_path):
    for cls, names in {"NORMAL": ["IM-0115-0001.jpeg", "IM-0115-0002.jpeg", "NORMAL2-IM-0012-0001.jpeg"],
                       "PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_virus_6.jpeg", "person22_bacteria_74.jpeg"]
                       }.items():
        for name in names:
            _png(tmp_path / cls / name)
    source = open_source(f"imagefolder:{tmp_path}?group=^((?:NORMAL2-)?IM-\\d+|person\\d+)")  # `+` kept as written
    assert [s.group for s in source.samples] == ["IM-0115", "IM-0115", "NORMAL2-IM-0012", "person1", "person1",
                                                 "person22"]
    plain = open_source(f"imagefolder:{tmp_path}")
    assert [s.group for s in plain.samples] == [s.id for s in plain.samples]  # no pattern: each image its own patient
    assert plain.fingerprint() == source.fingerprint()  # same images, same labels


@pytest.mark.parametrize("pattern, message", [
    ("person(", "not a valid regular expression"), ("person\\d+", "exactly one capture group"),
    ("^(person\\d+)_", "finds no patient id in file name 'IM-1.png'"),
])
def test_imagefolder_bad_patient_pattern(tmp_path, pattern, message):
    _png(tmp_path / "a" / "IM-1.png")
    _png(tmp_path / "b" / "person2_x.png")
    with pytest.raises(UserError, match=message):
        open_source(f"imagefolder:{tmp_path}?group={pattern}")


def test_a_study_warns_once_where_data_has_no_patient_ids(tmp_path, capsys):
    from medfrag_probe.experiment.runner import warn_image_level

    _png(tmp_path / "a" / "x1.png")
    _png(tmp_path / "b" / "x2.png")
    flat = warn_image_level([f"imagefolder:{tmp_path}", "synth:brain-mri?n=24"])
    assert flat == [f"imagefolder:{tmp_path}"]
    assert capsys.readouterr().err.count("image-level") == 1


def test_manifest_csv_and_jsonl_agree(tmp_path):
    rows = [("img/a.png", "glioma", "p1", "train"), ("img/b.png", "no_tumor", "p1", "train"),
            ("img/c.png", "glioma", "p2", "test")]
    for rel, *_ in rows:
        _png(tmp_path / rel)
    (tmp_path / "m.csv").write_text("path,label,group,split\n" + "\n".join(",".join(r) for r in rows))
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(dict(zip(("path", "label", "group", "split"), r)))
                                                for r in rows))
    a, b = open_source(f"manifest:{tmp_path / 'm.csv'}"), open_source(f"manifest:{tmp_path / 'm.jsonl'}")
    assert a.samples == b.samples and a.fingerprint() == b.fingerprint()
    assert a.classes == ("glioma", "no_tumor") and a.samples[1].group == "p1" and a.samples[2].split == "test"


@pytest.mark.parametrize("content, message", [
    ("file,label\nx.png,a\n", "lacks column 'path'"),
    ("path,label\nx.png,\n", "row 2: empty label"),
    ("path,label,split\nx.png,a,holdout\n", "unknown split 'holdout'"),
    ("path,label,id\nx.png,a,s1\ny.png,b,s1\n", "duplicate sample id 's1'"),
    ("path,label,split\nx.png,a,train\ny.png,b,\n", "give all or none"),
])
def test_manifest_errors_name_the_problem(tmp_path, content, message):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(UserError, match=message):
        open_source(f"manifest:{tmp_path / 'm.csv'}")


def test_manifest_with_an_excel_byte_order_mark_reads_like_plain_utf8(tmp_path):
    _png(tmp_path / "x.png")
    _png(tmp_path / "y.png")
    (tmp_path / "m.csv").write_bytes("\ufeffpath,label,group\nx.png,glioma,p1\ny.png,méningiome,p2\n".encode())
    source = open_source(f"manifest:{tmp_path / 'm.csv'}")
    assert source.classes == ("glioma", "méningiome") and [s.group for s in source.samples] == ["p1", "p2"]


@pytest.mark.parametrize("name, content, message", [
    ("m.csv", "path,label\nx.png,m\xe9ningiome\n".encode("latin-1"), r"line 2: not UTF-8 \(byte 0xe9\)"),
    ("m.csv", b"path,label,group\nx.png,a,p1\ny.png,b\n", "row 3: 2 values for 3 columns"),
    ("m.jsonl", b'{"path": "x.png", "label": "a"}\n{"path": "y.png", "label": null}\n', "row 2: empty label"),
    ("m.jsonl", b'{"path": "x.png", "label": "a"}\n["y.png", "b"]\n', "line 2: a row must be a JSON object"),
])
def test_damaged_manifests_get_a_clear_error(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message):
        open_source(f"manifest:{tmp_path / name}")


def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "m.npz", train_images=rng.integers(0, 255, (6, 28, 28), dtype=np.uint8),
             train_labels=np.array([[0], [1], [2], [0], [1], [2]]),
             test_images=rng.integers(0, 255, (2, 28, 28), dtype=np.uint8), test_labels=np.array([[1], [0]]))
    source = open_source(f"medmnist:{tmp_path / 'm.npz'}?classes=a,b,c")
    assert source.classes == ("a", "b", "c") and len(source) == 8
    assert source.samples[6].id == "test/0" and source.samples[6].split == "test" and source.samples[6].label == 1
    assert source.image(0).size == (28, 28) and source.image(7).mode == "RGB"


def test_medmnist_multilabel_refused(tmp_path):
    np.savez(tmp_path / "m.npz", train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.zeros((2, 14)))
    with pytest.raises(UserError, match="multi-label"):
        open_source(f"medmnist:{tmp_path / 'm.npz'}")


@pytest.mark.parametrize("spec, message", [
    ("nope:x", "unknown data kind 'nope'"), ("synth:liver", "unknown synth task 'liver'"),
    ("synth:brain-mri?n=0", "n must be in 1.."), ("synth:brain-mri?difficulty=2", "difficulty must be in"),
    ("synth:brain-mri?colour=red", "unknown parameter 'colour'"), ("imagefolder:/no/such/dir", "not a directory"),
    ("synth:brain-mri?n=99999999999999999999", "n must be in 1..10,000,000"),
    ("brain-mri", "no kind prefix"),
])
def test_bad_data_specs(spec, message):
    with pytest.raises(UserError, match=message):
        open_source(spec)


def test_synth_is_deterministic_with_patient_groups():
    a = open_source("synth:chest-xray?n=12&seed=3&size=32")
    b = open_source("synth:chest-xray?n=12&seed=3&size=32")
    c = open_source("synth:chest-xray?n=12&seed=4&size=32")
    assert all(np.array_equal(a.array(i), b.array(i)) for i in range(12))
    assert not all(np.array_equal(a.array(i), c.array(i)) for i in range(12))
    groups = {}
    for s in a.samples:
        groups.setdefault(s.group, set()).add(s.label)
    assert len(groups) == 3 and all(len(labels) == 1 for labels in groups.values())  # label constant per patient


@pytest.mark.parametrize("task", sorted(TASKS))
def test_synth_class_signal_shrinks_with_difficulty(task):
    """Cross-validated accuracy on simple image statistics is high at difficulty 0 and lower at difficulty 1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    def accuracy(difficulty):
        source = open_source(f"synth:{task}?n=120&per_patient=1&size=48&difficulty={difficulty}")
        feats = np.stack([_stats(source.array(i)) for i in range(len(source))])
        labels = np.array([s.label for s in source.samples])
        feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-9)
        return cross_val_score(LogisticRegression(max_iter=2000), feats, labels, cv=4).mean()
    easy, hard = accuracy(0.0), accuracy(1.0)
    assert easy > hard and easy > 0.75


def _stats(img):
    grey = img.astype(float).mean(-1)
    gy, gx = np.gradient(grey)
    edges = np.hypot(gx, gy)
    quadrants = [q.mean() for half in np.array_split(grey, 3) for q in np.array_split(half, 3, axis=1)]
    return np.array([*img.reshape(-1, 3).mean(0), *img.reshape(-1, 3).std(0), edges.mean(), edges.std(),
                     (grey < 90).mean(), *quadrants, np.percentile(grey, 99)])


def test_write_synth_roundtrip(tmp_path):
    manifest = write_synth("dermoscopy", tmp_path, n=6, size=32, per_patient=2)
    source = open_source(f"manifest:{manifest}")
    direct = open_source("synth:dermoscopy?n=6&size=32&per_patient=2")
    assert [s.id for s in source.samples] == [s.id for s in direct.samples]
    assert [s.group for s in source.samples] == [s.group for s in direct.samples]
    assert np.array_equal(np.asarray(source.image(0)), direct.array(0))
    assert len(list(tmp_path.glob("*/*.png"))) == 6


def test_sixteen_bit_scaled_by_own_range():
    arr = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    out = np.asarray(to_rgb(Image.fromarray(arr)))
    assert out[0, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == [255, 255, 255]
    assert out[0, 1, 0] == round(1000 * 255 / 4000)


def test_alpha_composited_on_black_and_palette_expanded():
    rgba = Image.new("RGBA", (2, 1), (255, 255, 255, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    out = np.asarray(to_rgb(rgba))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [255, 0, 0]
    pal = Image.new("P", (1, 1))
    pal.putpalette([10, 20, 30] + [0] * 765)
    assert np.asarray(to_rgb(pal))[0, 0].tolist() == [10, 20, 30]


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def test_float_with_nan_and_constant_images():
    arr = np.array([[np.nan, 0.0], [0.5, 1.0]], dtype=np.float32)
    out = np.asarray(array_to_rgb(arr))[..., 0]
    assert out.tolist() == [[0, 0], [128, 255]]
    assert np.asarray(array_to_rgb(np.full((3, 3), 7.0))).max() == 0


def _pydicom_file(name):
    """One of the DICOM files pydicom ships in its package (real files written by scanners and toolkits)."""
    pydicom = pytest.importorskip("pydicom")
    from pathlib import Path

    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    if not path.is_file():
        pytest.skip(f"pydicom does not bundle {name}")
    return path


def _viewer(ds, values):
    """What a viewer shows, written out from the standard with pydicom's own transforms (an independent oracle)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    modality = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    return apply_voi_lut(modality, ds, index=0, prefer_lut=True).astype(np.float64) if values is None else values


def test_dicom_ct_uses_the_modality_lut_and_min_max_without_a_window():
    path = _pydicom_file("CT_small.dcm")
    import pydicom

    ds = pydicom.dcmread(path)
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    grey = np.asarray(load_image(path))[..., 0].astype(int)
    expect = np.round((hounsfield - hounsfield.min()) / (hounsfield.max() - hounsfield.min()) * 255)
    assert np.abs(grey - expect).max() <= 1


def test_dicom_mr_window_matches_pydicom_windowing():
    path = _pydicom_file("MR_small.dcm")
    import pydicom

    ds = pydicom.dcmread(path)
    voi = _viewer(ds, None)
    low, high = 0.0, 2.0 ** ds.BitsStored - 1  # pydicom's windowing output range for unsigned data
    if ds.PixelRepresentation == 1:
        low, high = -(2.0 ** (ds.BitsStored - 1)), 2.0 ** (ds.BitsStored - 1) - 1
    grey = np.asarray(load_image(path))[..., 0].astype(int)
    assert np.abs(grey - np.round((voi - low) / (high - low) * 255)).max() <= 1
    assert grey.min() < grey.max()


def test_dicom_voi_lut_sequence_is_applied_not_only_linear_windows(tmp_path):
    """A VOI LUT sequence (here an inverting 16-bit LUT over the MR's values) wins over the file's window."""
    path = _pydicom_file("MR_small.dcm")
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(path)
    first, count = int(ds.pixel_array.min()), int(ds.pixel_array.max() - ds.pixel_array.min()) + 1
    item = Dataset()
    item.LUTDescriptor = [count, first, 16]
    item.LUTData = [int(v) for v in np.linspace(65535, 0, count).round()]
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(tmp_path / "lut.dcm")
    grey = np.asarray(load_image(tmp_path / "lut.dcm"))[..., 0].astype(int)
    expect = (np.linspace(65535, 0, count).round() / 65535 * 255).round()[ds.pixel_array.astype(int) - first]
    assert np.abs(grey - expect).max() <= 1
    assert grey[ds.pixel_array == ds.pixel_array.max()].max() <= 1  # the brightest tissue is dark under this LUT


def test_dicom_palette_colour_goes_through_its_lut():
    path = _pydicom_file("examples_palette.dcm")
    import pydicom
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(path)
    expect = apply_color_lut(ds.pixel_array, ds)
    expect = (expect >> 8).astype(np.uint8) if expect.dtype == np.uint16 else expect
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (*ds.pixel_array.shape, 3) and np.array_equal(rgb, expect)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 2  # colours, not a grey ramp of the indices


def test_dicom_ybr_becomes_rgb():
    path = _pydicom_file("SC_rgb_dcmtk_+eb+cy+n1.dcm")  # YBR_FULL of the same red/green/blue bars as the RGB file
    reference = np.asarray(load_image(_pydicom_file("SC_rgb_dcmtk_+eb+cr.dcm"))).astype(int)
    assert np.abs(np.asarray(load_image(path)).astype(int) - reference).mean() < 3


def test_nifti_axial_slice_is_taken_after_reorienting_to_ras(tmp_path):
    """The same anatomy stored in two voxel orders (RAS and an axis-swapped, flipped LPI-like layout) gives the same
    axial slice."""
    nibabel = pytest.importorskip("nibabel")
    volume = np.random.default_rng(1).random((6, 7, 5)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), tmp_path / "ras.nii.gz")
    # store axes as (z, y, x) reversed in x: voxel (k, j, i) holds world (i flipped, j, k)
    swapped = np.flip(volume, axis=0).transpose(2, 1, 0).copy()
    affine = np.array([[0, 0, -1, 5], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    nibabel.save(nibabel.Nifti1Image(swapped, affine), tmp_path / "swapped.nii.gz")
    a, b = load_image(tmp_path / "ras.nii.gz"), load_image(tmp_path / "swapped.nii.gz")
    assert a.size == b.size == (6, 7) and a.tobytes() == b.tobytes()


def test_unreadable_files_raise_image_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.jpg").write_text("hello")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "PNG")
    (tmp_path / "c.png").write_bytes(buf.getvalue()[:60])
    for name in ("a.png", "b.jpg", "c.png"):
        with pytest.raises(ImageError):
            load_image(tmp_path / name)


def test_synthetic_tasks_sharing_ids_and_labels_have_different_fingerprints():
    """dermoscopy and histology have the same classes, patients and labels for one n and seed; their images differ,
    so their fingerprints must (a bridge joins probe results to answers by it)."""
    derm, histo = open_source("synth:dermoscopy?n=40"), open_source("synth:histology?n=40")
    assert [(s.id, s.label) for s in derm.samples] == [(s.id, s.label) for s in histo.samples]
    assert derm.fingerprint() != histo.fingerprint()
    assert open_source("synth:dermoscopy?n=40&size=64").fingerprint() != derm.fingerprint()
    assert open_source("synth:dermoscopy?n=40").fingerprint() == derm.fingerprint()
