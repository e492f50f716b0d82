"""Task files: every shipped file validates, expected answers follow the rules, bad files get clear errors."""

from __future__ import annotations

import pytest

from medfrag_probe.answering.parse import parse_class, parse_option, parse_yes_no
from medfrag_probe.answering.tasks import load_task, tasks_dir
from medfrag_probe.data.sources import open_source
from medfrag_probe.errors import UserError

SHIPPED = sorted(p.stem for p in tasks_dir().glob("*.yaml"))


def test_the_four_study_tasks_and_four_synth_tasks_ship():
    assert {"brain-tumor-mri", "pneumonia-xray", "skin-lesion", "histopathology", "synth-brain-mri",
            "synth-chest-xray", "synth-dermoscopy", "synth-histology"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_task_is_complete(name):
    task = load_task(name)
    kinds = {p.kind for p in task.prompts()}
    assert kinds == {"yes_no", "multiple_choice", "open", "describe"}
    assert any(p.negated for p in task.prompts()) and len({p.id for p in task.prompts()}) == len(task.prompts())
    for cls in task.classes:  # each class name parses back to itself through its own synonyms
        assert parse_class(cls.replace("_", " "), task.classes).answer == cls


@pytest.mark.parametrize("name", [n for n in SHIPPED if n.startswith("synth-")])
def test_synth_task_classes_match_the_synthetic_source(name):
    task = load_task(name)
    assert tuple(task.classes) == open_source(f"{task.data}?n=4").classes


def test_expected_answers():
    task = load_task("synth-brain-mri")
    prompts = {p.id: p for p in task.prompts()}
    assert task.expected(prompts["yn-present"], "glioma") == "yes"
    assert task.expected(prompts["yn-present"], "no_tumor") == "no"
    assert task.expected(prompts["pp-absent"], "glioma") == "no"  # negated paraphrase inverts the answer
    fwd, rev = prompts["mc-diagnosis-fwd"], prompts["mc-diagnosis-rev"]
    assert task.expected(fwd, "glioma") == "A" and task.expected(rev, "glioma") == "D"
    assert "A. glioma" in fwd.render() and "D. glioma" in rev.render()
    assert parse_option("D", rev.options).answer == task.expected(rev, "glioma")
    assert task.expected(prompts["open-diagnosis"], "pituitary") == "pituitary"
    assert task.expected(prompts["desc-detail"], "glioma") is None
    assert parse_yes_no("Yes, there is a mass.").answer == task.expected(prompts["yn-signs"], "meningioma")
    with pytest.raises(UserError, match="unknown class"):
        task.expected(prompts["yn-present"], "lymphoma")


@pytest.mark.parametrize("content, message", [
    ("name: x\nclasses: {a: [a], b: [b]}\ncolour: red\n", "unknown key 'colour'; valid:"),
    ("classes: {a: [a]}\n", "at least 2 class names"),
    ("classes: {a: [a], b: [b]}\nyes_no: [{id: q, text: 'Is it a?'}]\n", "need 'positive'"),
    ("classes: {a: [a], b: [b]}\npositive: [c]\n", "positive class 'c' is not a class"),
    ("classes: {a: [a], b: [b]}\nopen: [{id: q}]\n", "needs 'id' and 'text'"),
    ("classes: {a: [a], b: [b]}\nopen: [{id: q, text: t, tone: x}]\n", "unknown key 'tone'"),
    ("classes: {a: [a], b: [b]}\nopen: [{id: q, text: t}, {id: q, text: u}]\n", "used twice"),
    ("classes: [a, b\n", "not valid YAML"),
])
def test_bad_task_files(tmp_path, content, message):
    path = tmp_path / "t.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_task(str(path))


def test_unknown_task_name_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown task 'liver'; valid: brain-tumor-mri"):
        load_task("liver")
