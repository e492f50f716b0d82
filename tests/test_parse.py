"""The response parser over real-world answer shapes: each with its expected parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medfrag_probe.answering.parse import parse_class, parse_option, parse_yes_no

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


CORPUS = Path(__file__).parent / "data" / "yes_no_answers.jsonl"


def _corpus() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]


def test_corpus_readings_agree_with_a_careful_reader():
    rows = _corpus()
    assert len(rows) >= 400 and {r["answer"] for r in rows} == {"yes", "no", "none"}
    got = [parse_yes_no(r["response"], r["question"]).answer or "none" for r in rows]
    read = [(g, r["answer"]) for g, r in zip(got, rows) if r["answer"] != "none"]
    agreement = sum(g == a for g, a in read) / len(read)
    confident_wrong = sum(g != "none" and g != r["answer"] for g, r in zip(got, rows)) / len(rows)
    assert agreement >= 0.98, agreement
    assert confident_wrong <= 0.005, confident_wrong


@pytest.mark.parametrize("response, answer", [
    ("I have no idea", None), ("There is no way to tell", None), ("No doubt, this is pneumonia", "yes"),
    ("As an AI, I cannot provide a diagnosis. No definitive conclusion can be drawn.", None),
    ("Yes, there is pneumonia. No pleural effusion.", "yes"), ("The answer is yes. No other abnormalities", "yes"),
    ("Pneumonia is present", "yes"), ("Negative for pneumonia", "no"), ("The film does not show pneumonia", "no"),
    ("Not that I can see", "no"), ("No pleural effusion, but there is a right lower lobe pneumonia.", "yes"),
])
def test_the_reported_misreadings_now_read_right(response, answer):
    assert parse_yes_no(response, "Is there pneumonia in this chest X-ray?").answer == answer


@pytest.mark.parametrize("question, response, answer", [
    ("Is the liver normal?", "The liver appears normal.", "yes"),
    ("Is the liver normal?", "The liver is abnormal with several lesions.", "no"),
    ("Is there a hypodensity in the liver?", "There is no hypodensity in the liver.", "no"),
    ("Is there a hypodensity in the liver?", "The liver is normal in size; a hypodensity is seen in segment 7.", "yes"),
    ("Are the lungs clear of pneumonia?", "There is no pneumonia.", "yes"),  # a negated question inverts statements
    ("Is this a malignant tumor?", "It is a benign tumor.", "no"),  # an antonym of the asked finding
])
def test_statements_answer_the_question_they_speak_about(question, response, answer):
    assert parse_yes_no(response, question).answer == answer


def test_without_the_question_a_bare_finding_statement_is_not_guessed():
    assert parse_yes_no("The liver appears normal.").answer is None
    assert parse_yes_no("There is no hypodensity in the liver.").answer == "no"  # an explicit absence


@pytest.mark.parametrize("response, answer", [
    ("Glioma is unlikely; this is a meningioma.", "meningioma"),
    ("Meningioma. USER: and the other image? ASSISTANT: glioma", "meningioma"),
    ("Pituitary adenoma is ruled out; the mass is a glioblastoma.", "glioma"),
])
def test_classes_declared_unlikely_or_spoken_by_the_user_do_not_count(response, answer):
    assert parse_class(response, CLASSES).answer == answer


def test_an_option_declared_unlikely_is_not_chosen():
    assert parse_option("Glioma is unlikely; this is a meningioma", OPTIONS).answer == "B"
