"""`hf-dataset:` sources, built locally with `save_to_disk` (no network): splits, class names, patients, closed
questions, and clear errors for bad column or split names."""

from __future__ import annotations

import numpy as np
import pytest

from medfrag_probe.data.sources import open_source
from medfrag_probe.errors import UserError

datasets = pytest.importorskip("datasets")


def _image(value: int, size: int = 24):
    from PIL import Image

    rng = np.random.default_rng(value)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """Three splits, ClassLabel names, a patient column; the class shows as image brightness."""
    folder = tmp_path_factory.mktemp("hf") / "xray"
    features = datasets.Features({"image": datasets.Image(),
                                  "finding": datasets.ClassLabel(names=["normal", "pneumonia"]),
                                  "patient": datasets.Value("string")})

    def split(offset: int, n: int):
        labels = [i % 2 for i in range(n)]
        images = [_image(offset + i) for i in range(n)]
        for image, label in zip(images, labels):
            image.paste((230, 230, 230) if label else (20, 20, 20), (0, 0, 12, 12))
        return datasets.Dataset.from_dict({"image": images, "finding": labels,
                                           "patient": [f"p{offset + i // 2}" for i in range(n)]}, features=features)

    datasets.DatasetDict({"train": split(0, 40), "validation": split(100, 12), "test": split(200, 16)}).save_to_disk(
        str(folder))
    return folder


def test_splits_class_names_and_patients_come_from_the_dataset(classified):
    source = open_source(f"hf-dataset:{classified}?group=patient")
    assert source.classes == ("normal", "pneumonia") and len(source) == 68
    assert {s.split for s in source.samples} == {"train", "val", "test"}  # "validation" maps onto val
    first = source.samples[0]
    assert (first.id, first.label, first.group, first.split) == ("train/0", 0, "p0", "train")
    assert source.image(1).size == (24, 24) and np.asarray(source.image(1))[0, 0].tolist() == [230, 230, 230]
    only_test = open_source(f"hf-dataset:{classified}?split=test&group=patient")
    assert len(only_test) == 16 and {s.split for s in only_test.samples} == {""}  # one split: grouped k-fold
    assert only_test.fingerprint() != source.fingerprint()


def test_an_hf_dataset_extracts_and_probes_end_to_end(classified, tmp_path):
    from medfrag_probe import extract
    from medfrag_probe.probes import probe

    out = tmp_path / "c.h5"
    result = extract("tiny:siglip", f"hf-dataset:{classified}?group=patient", points="vision.embed",
                     poolings="mean", out=out, workers=0)
    assert result.extracted == 68 and not result.failed
    (best,) = probe([out], probes="linear", out=tmp_path / "p", figures=False, controls=False, replicates=50)
    assert best.split == "given" and best.n == 16 and best.balanced_accuracy > 0.9  # test split; the patch is plain


@pytest.mark.parametrize("query, message", [
    ("?label=diagnosis", "label column 'diagnosis' does not exist; columns: image, finding, patient"),
    ("?image=pixels", "image column 'pixels' does not exist; columns: image, finding, patient"),
    ("?group=subject", "group column 'subject' does not exist; columns: image, finding, patient"),
    ("?split=dev", "no split 'dev'; valid: train, validation, test"),
    ("?colour=red", "unknown parameter 'colour'"),
])
def test_bad_column_and_split_names_are_one_line_naming_what_exists(classified, query, message):
    with pytest.raises(UserError, match=message):
        open_source(f"hf-dataset:{classified}{query}")


def test_plain_string_labels_and_a_missing_folder(tmp_path):
    folder = tmp_path / "derm"
    datasets.Dataset.from_dict({"img": [_image(i) for i in range(6)],
                                "dx": ["nevus", "melanoma", "nevus", "nevus", "melanoma", "nevus"]},
                               features=datasets.Features({"img": datasets.Image(), "dx": datasets.Value("string")})
                               ).save_to_disk(str(folder))
    source = open_source(f"hf-dataset:{folder}?label=dx")
    assert source.classes == ("melanoma", "nevus") and [s.label for s in source.samples] == [1, 0, 1, 1, 0, 1]
    assert [s.group for s in source.samples] == [s.id for s in source.samples] == [str(i) for i in range(6)]
    with pytest.raises(UserError, match="no label column; name it with \\?label=COL; columns: img, dx"):
        open_source(f"hf-dataset:{folder}")
    with pytest.raises(UserError, match="hf-dataset: cannot open"):
        open_source(f"hf-dataset:{tmp_path / 'nope'}")


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    """A VQA-RAD-shaped set: several closed questions per image, plus open ones that must be left out."""
    folder = tmp_path_factory.mktemp("hf") / "vqa"
    images, qs, answers = [], [], []
    for k in range(10):
        image = _image(500 + k)
        bright = k % 2 == 1
        image.paste((230, 230, 230) if bright else (20, 20, 20), (0, 0, 12, 12))
        for question, answer in (("Is there an opacity?", "yes" if bright else "no"),
                                 ("Is the lung clear?", "No." if bright else "Yes"),
                                 ("Where is the abnormality?", "left lower lobe")):
            images.append(image)
            qs.append(question)
            answers.append(answer)
    datasets.Dataset.from_dict({"image": images, "question": qs, "answer": answers},
                               features=datasets.Features({"image": datasets.Image(), "question": datasets.Value(
                                   "string"), "answer": datasets.Value("string")})).save_to_disk(str(folder))
    return folder


def test_closed_questions_become_samples_labelled_by_their_answer(questions):
    source = open_source(f"hf-dataset:{questions}?question=question&answer=answer")
    assert source.classes == ("no", "yes") and len(source) == 20  # 10 open questions left out
    assert source.questions[:2] == ["Is there an opacity?", "Is the lung clear?"]
    assert [s.label for s in source.samples[:4]] == [0, 1, 1, 0]
    groups = [s.group for s in source.samples]
    assert groups[0] == groups[1] != groups[2] and len(set(groups)) == 10  # the questions of one image share it


class _Reader:
    """A stand-in VLM that answers each question about the patch it sees (or hedges without an image)."""

    can_generate = True
    loaded = "full"
    reads_point = ""
    arch = "fake"
    spec = "fake:reader"

    def __init__(self):
        self.asked: list[tuple[str, bool]] = []

    def fingerprints(self):
        return {"model": self.spec, "vision": "v"}

    def chat_inputs(self, prompts, images=None):
        return {"prompts": prompts, "images": images}

    def generate(self, inputs, *, max_new_tokens):
        images = inputs["images"] or [None] * len(inputs["prompts"])
        out = []
        for text, image in zip(inputs["prompts"], images):
            self.asked.append((text, image is not None))
            if image is None:
                out.append("I cannot tell without the image.")
                continue
            bright = np.asarray(image)[0, 0, 0] > 128
            out.append("Yes." if bright == ("opacity" in text) else "No.")
        return out


def test_vqa_asks_each_sample_its_own_question(questions, tmp_path):
    from medfrag_probe.answering import vqa

    reader = _Reader()
    data = f"hf-dataset:{questions}?question=question&answer=answer"
    summary = vqa(reader, data, "hf-questions", conditions="image,no-image", out=tmp_path / "v", describe_with=None)
    assert summary["conditions"]["image"]["accuracy"] == 1.0 and summary["conditions"]["image"]["n_items"] == 20
    with_image = [q for q, seen in reader.asked if seen]
    assert len(with_image) == 20 and sorted(set(with_image)) == ["Is the lung clear?", "Is there an opacity?"]
    assert sum(not seen for _, seen in reader.asked) == 2  # no-image: each distinct question once
    with pytest.raises(UserError, match="image-swap control needs the answer"):
        vqa(reader, data, "hf-questions", conditions="image,swap", out=tmp_path / "w", describe_with=None)
    with pytest.raises(UserError, match="needs a data source with its own questions"):
        vqa(reader, "synth:brain-mri?n=8", "hf-questions", out=tmp_path / "x", describe_with=None)
