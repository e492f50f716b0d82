"""`vqa import`: answers in the lmms-eval and VLMEvalKit shapes (and plain rows) score like native answers."""

from __future__ import annotations

import csv
import json

import pytest

from medfrag_probe.cli import main
from medfrag_probe.data.sources import open_source
from medfrag_probe.errors import UserError
from medfrag_probe.vqa.importer import import_answers
from medfrag_probe.vqa.tasks import load_task

DATA = "synth:brain-mri?n=24"
TASK = "synth-brain-mri"


@pytest.fixture(scope="module")
def source():
    return open_source(DATA)


@pytest.fixture(scope="module")
def task():
    return load_task(TASK)


def _truth(source, task, sample, prompt):
    return task.expected(prompt, list(task.classes)[sample.label])


def test_lmms_eval_samples_jsonl(tmp_path, source, task):
    """lmms-eval `--log_samples` rows: doc_id, doc (the dataset record), target, resps, filtered_resps."""
    prompt = next(p for p in task.prompts() if p.id == "yn-present")
    rows = []
    for k, s in enumerate(source.samples):
        answer = _truth(source, task, s, prompt) if k % 3 else ("no" if _truth(source, task, s, prompt) == "yes"
                                                                 else "yes")
        text = {"yes": "Yes, there is a mass.", "no": "No."}[answer]
        rows.append({"doc_id": k, "doc": {"image_id": s.id, "question": f"<image>\n{prompt.text}"},
                     "target": _truth(source, task, s, prompt), "arguments": [], "resps": [[text]],
                     "filtered_resps": [text], "exact_match": 0.0})
    path = tmp_path / "samples_brain.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = import_answers(path, DATA, TASK, out=tmp_path / "out", model="llava-1.5-7b")
    records = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert {r["prompt_id"] for r in records} == {"yn-present"}  # matched by its question text
    assert [r["sample_id"] for r in records] == [s.id for s in source.samples]  # doc.image_id found by itself
    expected = sum(1 for k in range(len(source)) if k % 3) / len(source)
    assert summary["conditions"]["image"]["accuracy"] == pytest.approx(expected)
    assert summary["model"] == "llava-1.5-7b"


def test_lmms_eval_by_position(tmp_path, source):
    rows = [{"doc_id": k, "input": "Is there a brain tumor in this brain MRI?", "resps": [["Yes"]]}
            for k in range(len(source))]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match="no column holds the data's sample ids.*--by-position"):
        import_answers(path, DATA, TASK, out=tmp_path / "o")
    summary = import_answers(path, DATA, TASK, out=tmp_path / "o", by_position=True, id_field="doc_id")
    assert summary["conditions"]["image"]["n_items"] == len(source)


def test_vlmevalkit_multiple_choice_tsv(tmp_path, source, task):
    """VLMEvalKit predictions: index, question, option columns A-D, answer (ground truth), prediction."""
    names = list(task.classes)
    order = names[::-1]  # options in reverse class order, as the task's `-rev` prompts ask them
    path = tmp_path / "brain_mcq.tsv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["index", "image_path", "question", "A", "B", "C", "D", "answer", "prediction", "category"])
        for k, s in enumerate(source.samples):
            truth = chr(65 + order.index(names[s.label]))
            said = truth if k % 2 == 0 else "A" if truth != "A" else "B"
            writer.writerow([k, f"/data/brain/{s.id}.png", "Which diagnosis best fits this brain MRI?",
                             *[n.replace("_", " ") for n in order], truth, f"Answer: {said}", "brain"])
    summary = import_answers(path, DATA, TASK, out=tmp_path / "out", model="qwen2-vl-7b")
    records = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert {r["prompt_id"] for r in records} == {"mc-diagnosis-rev"}  # options mapped onto the task's own prompt
    assert summary["conditions"]["image"]["accuracy"] == pytest.approx(0.5)
    assert summary["classification"]["accuracy"] == pytest.approx(0.5)


def test_vlmevalkit_options_that_name_no_class_are_refused(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("index,question,A,B,answer,prediction\n0,What is shown?,a cat,a dog,A,A\n")
    with pytest.raises(UserError, match="option A 'a cat' names no class of task synth-brain-mri"):
        import_answers(path, DATA, TASK, out=tmp_path / "o", by_position=True)


def test_plain_rows_through_the_cli(tmp_path, source, capsys):
    path = tmp_path / "answers.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample_id", "prompt_id", "condition", "response"])
        for s in source.samples:
            writer.writerow([s.id, "open-diagnosis", "image", "I cannot provide a diagnosis; consult a radiologist."])
            writer.writerow([s.id, "open-diagnosis", "no-image", "It is probably a glioma."])
    with pytest.raises(SystemExit) as exit_info:
        main(["vqa", "import", str(path), "--data", DATA, "--task", TASK, "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["conditions"]["image"]["refusal_rate"] == 1.0
    assert summary["conditions"]["no-image"]["accuracy"] == pytest.approx(
        sum(s.label == 0 for s in source.samples) / len(source))
    assert "accuracy 0.000" in capsys.readouterr().out


@pytest.mark.parametrize("content, name, message", [
    ("sample_id,prompt_id,response\nnope,open-diagnosis,glioma\n", "a.csv", "'nope' is not a sample"),
    ("sample_id,prompt_id,answer\n{id},open-diagnosis,glioma\n", "a.csv", "no response field"),
    ("sample_id,prompt_id,response\n{id},zzz,glioma\n", "a.csv", "unknown prompt id"),
    ("sample_id,question,response\n{id},How old is the patient?,42\n", "a.csv", "matches no prompt.*--kind"),
    ("{{not json\n", "a.jsonl", "is not valid JSON"),
    ("x", "a.xlsx", "save it as CSV or TSV"),
])
def test_bad_files_get_one_clear_error(tmp_path, source, content, name, message):
    path = tmp_path / name
    path.write_text(content.format(id=source.samples[0].id))
    with pytest.raises(UserError, match=message):
        import_answers(path, DATA, TASK, out=tmp_path / "o")
