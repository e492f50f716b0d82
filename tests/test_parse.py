"""The response parser over real-world answer shapes: each with its expected parse."""

from __future__ import annotations

import pytest

from medfrag_probe.vqa.parse import parse_class, parse_option, parse_yes_no

YES_NO = [
    ("Yes", "yes", "answer"),
    ("No.", "no", "answer"),
    ("yes", "yes", "answer"),
    ("**Yes**", "yes", "answer"),
    ("Yes, but the lesion is small.", "yes", "answer"),
    ("No, there is no evidence of a tumor.", "no", "answer"),
    ("There is no tumor visible in this MRI.", "no", "answer"),
    ("Yes. There is a bright mass in the left hemisphere.", "yes", "answer"),
    ("Answer: yes", "yes", "answer"),
    ("The image shows a mass... Final answer: No", "no", "answer"),
    ("Let's think step by step. The lungs show no opacity at first, but on closer look there is consolidation. "
     "Final answer: Yes", "yes", "answer"),
    ("### Answer\n- Yes, pneumonia is present", "yes", "answer"),
    ("Yes.\n\nExplanation: the right lower lobe is opaque.", "yes", "answer"),
    ("NO", "no", "answer"),
    ("Nope, looks normal.", "no", "answer"),
    ("Yes or no? Hard to tell, there is some opacity, no clear mass.", None, "hedge"),  # both words: no answer
    ("I cannot provide a medical diagnosis. Please consult a radiologist.", None, "refusal"),
    ("As an AI, I'm not able to give medical advice.", None, "refusal"),
    ("I'm unable to determine this from the image; please see a doctor.", None, "refusal"),
    ("It is unclear from this image.", None, "hedge"),
    ("It is difficult to determine whether a tumor is present.", None, "hedge"),
    ("Possibly; the findings are inconclusive.", None, "hedge"),
    ("The image shows a brain MRI scan.", None, "unknown"),
    ("", None, "unknown"),
]


@pytest.mark.parametrize("response, answer, kind", YES_NO)
def test_yes_no(response, answer, kind):
    parsed = parse_yes_no(response)
    assert (parsed.answer, parsed.kind) == (answer, kind)
    assert parsed.answered == (kind == "answer")


OPTIONS = {"A": "glioma", "B": "meningioma", "C": "no tumor", "D": "pituitary tumor"}
OPTION_CASES = [
    ("B", "B", "answer"),
    ("(C)", "C", "answer"),
    ("A) glioma", "A", "answer"),
    ("D. Pituitary tumor", "D", "answer"),
    ("The answer is B.", "B", "answer"),
    ("Option A", "A", "answer"),
    ("**C: no tumor**", "C", "answer"),
    ("Meningioma", "B", "answer"),
    ("This looks like a glioma.", "A", "answer"),
    ("Considering (A) and (B), the mass touches the skull, so the answer is (B).", "B", "answer"),
    ("B - meningioma, based on the dural tail.", "B", "answer"),
    ("A or B", None, "unknown"),
    ("I can't make a diagnosis from a single image; consult a specialist.", None, "refusal"),
    ("Hard to say between the options.", None, "hedge"),
]


@pytest.mark.parametrize("response, answer, kind", OPTION_CASES)
def test_options(response, answer, kind):
    parsed = parse_option(response, OPTIONS)
    assert (parsed.answer, parsed.kind) == (answer, kind)


CLASSES = {"glioma": ["glioma", "glial tumor", "astrocytoma", "glioblastoma"],
           "meningioma": ["meningioma"], "no_tumor": ["no tumor", "no tumour", "normal", "healthy"],
           "pituitary": ["pituitary tumor", "pituitary adenoma", "pituitary"]}
CLASS_CASES = [
    ("Glioma", "glioma", "answer"),
    ("The MRI most likely shows a glioblastoma.", "glioma", "answer"),
    ("Diagnosis: **Meningioma**", "meningioma", "answer"),
    ("This is a normal brain scan.", "no_tumor", "answer"),
    ("No tumor is seen.", "no_tumor", "answer"),
    ("Pituitary adenoma.", "pituitary", "answer"),
    ("It is not a glioma but a meningioma.", "meningioma", "answer"),
    ("The differential includes glioma and meningioma.", None, "unknown"),
    ("Findings suggest a mass. Final answer: pituitary tumor", "pituitary", "answer"),
    ("I am unable to provide a diagnosis. Please consult a physician.", None, "refusal"),
    ("The diagnosis cannot be determined from this image.", None, "hedge"),
]


@pytest.mark.parametrize("response, answer, kind", CLASS_CASES)
def test_classes(response, answer, kind):
    parsed = parse_class(response, CLASSES)
    assert (parsed.answer, parsed.kind) == (answer, kind)


def test_at_least_forty_shapes():
    assert len(YES_NO) + len(OPTION_CASES) + len(CLASS_CASES) >= 40
