"""`vqa import`: answers in the lmms-eval and VLMEvalKit shapes (and plain rows) score like native answers."""

from __future__ import annotations

import csv
import json

import pytest

from medfrag_probe.answering.importer import import_answers
from medfrag_probe.answering.tasks import load_task
from medfrag_probe.cli import main
from medfrag_probe.data.sources import open_source
from medfrag_probe.errors import UserError

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
    with pytest.raises(UserError, match="no column holds the data's sample ids.*`by_position=True`"):
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
    ("sample_id,question,response\n{id},How old is the patient?,42\n", "a.csv",
     r"matches no prompt.*`kind=yes_no\|open`"),
    ("{{not json\n", "a.jsonl", "is not valid JSON"),
    ("x", "a.xlsx", "is not a readable .xlsx workbook"),
    ("x", "a.xls", "the old binary .xls format is not read"),
])
def test_bad_files_get_one_clear_error(tmp_path, source, content, name, message):
    path = tmp_path / name
    path.write_text(content.format(id=source.samples[0].id))
    with pytest.raises(UserError, match=message):
        import_answers(path, DATA, TASK, out=tmp_path / "o")


# ---- export for other harnesses, answer there, import back --------------------------------------------------------

def _right_answer(task, source, class_map, sample_id, prompt_id):
    """The right answer as each harness's model would write it."""
    prompt = next(p for p in task.prompts() if p.id == prompt_id)
    label = class_map[next(s.label for s in source.samples if s.id == sample_id)]
    expected = task.expected(prompt, label)
    return {"yes": "Yes.", "no": "No."}.get(expected, expected.replace("_", " "))


def test_vlmevalkit_round_trip_through_an_xlsx_prediction_file(tmp_path):
    """export -> a VLMEvalKit-style prediction workbook (every TSV column but the image, plus `prediction`) ->
    import scores exactly what was written: all right, then every yes/no flipped."""
    import csv

    openpyxl = pytest.importorskip("openpyxl")
    from medfrag_probe.answering.export import export_task
    from medfrag_probe.answering.plan import map_classes
    from medfrag_probe.answering.tasks import load_task

    data = "synth:brain-mri?n=24"
    paths = export_task(data, "synth-brain-mri", tmp_path / "exp", prompts="yes_no,multiple_choice")
    with open(paths["vlmevalkit"], newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert rows and all(r["image"] and r["sample_id"] and r["prompt_id"] for r in rows)
    assert {r["kind"] for r in rows} == {"yes_no", "multiple_choice"} and rows[0]["A"] == ""  # options only for MCQ
    source, task = open_source(data), load_task("synth-brain-mri")
    class_map = map_classes(task, source)
    for flip, expected in ((False, 1.0), (True, None)):
        book = openpyxl.Workbook()
        sheet = book.active
        header = [c for c in rows[0] if c != "image"] + ["prediction"]
        sheet.append(header)
        for r in rows:
            answer = _right_answer(task, source, class_map, r["sample_id"], r["prompt_id"])
            if flip and r["kind"] == "yes_no":
                answer = {"Yes.": "No.", "No.": "Yes."}[answer]
            sheet.append([int(r[c]) if c == "index" else r[c] for c in header[:-1]] + [answer])
        book.save(tmp_path / "pred.xlsx")
        summary = import_answers(tmp_path / "pred.xlsx", data, "synth-brain-mri", out=tmp_path / f"imp{flip}",
                                 model="vlmevalkit-model")
        image = summary["conditions"]["image"]
        assert image["n_items"] == len(rows)
        share_mcq = sum(r["kind"] == "multiple_choice" for r in rows) / len(rows)
        assert image["accuracy"] == pytest.approx(expected if expected is not None else share_mcq)
        if flip:  # every yes/no answer is now wrong, every multiple-choice one still right
            answers = _answers(tmp_path / f"imp{flip}")
            assert not any(r["correct"] for r in answers if r["kind"] == "yes_no")
            assert all(r["correct"] for r in answers if r["kind"] == "multiple_choice")


def _answers(folder):
    import json

    return [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]


def test_lmms_eval_round_trip_through_logged_samples(tmp_path):
    """export -> the lmms-eval task (YAML, utils, data, images) -> a `--log_samples` file -> import."""
    import json

    import yaml

    from medfrag_probe.answering.export import export_task
    from medfrag_probe.answering.plan import map_classes
    from medfrag_probe.answering.tasks import load_task

    data = "synth:chest-xray?n=20"
    paths = export_task(data, "synth-chest-xray", tmp_path / "exp", prompts="yes_no")
    folder = tmp_path / "exp" / "lmms_eval" / "medfrag_synth_chest_xray"
    assert paths["lmms_eval"] == str(folder)
    spec = yaml.load((folder / "medfrag_synth_chest_xray.yaml").read_text(), Loader=_FunctionLoader)
    assert spec["task"] == "medfrag_synth_chest_xray" and spec["output_type"] == "generate_until"
    assert spec["doc_to_visual"] == "utils.doc_to_visual" and (folder / "utils.py").is_file()
    docs = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    assert all((folder / d["image"]).is_file() for d in docs)
    # the exported hooks work as lmms-eval calls them
    import importlib.util

    hooks = importlib.util.spec_from_file_location("exported_utils", folder / "utils.py")
    utils = importlib.util.module_from_spec(hooks)
    hooks.loader.exec_module(utils)
    assert utils.doc_to_visual(docs[0])[0].mode == "RGB" and utils.doc_to_text(docs[0]) == docs[0]["question"]
    source, task = open_source(data), load_task("synth-chest-xray")
    class_map = map_classes(task, source)
    logged = []
    for k, doc in enumerate(docs):
        answer = _right_answer(task, source, class_map, doc["sample_id"], doc["prompt_id"])
        logged.append({"doc_id": k, "doc": doc, "target": doc["answer"], "resps": [[answer]],
                       "filtered_resps": [answer], "exact_match": utils.process_results(doc, [answer])["exact_match"]})
    assert all(entry["exact_match"] == 1.0 for entry in logged)
    log = tmp_path / "samples_medfrag_synth_chest_xray.jsonl"
    log.write_text("".join(json.dumps(entry) + "\n" for entry in logged))
    summary = import_answers(log, data, "synth-chest-xray", out=tmp_path / "imp", model="lmms-model")
    assert summary["conditions"]["image"]["accuracy"] == 1.0 and summary["conditions"]["image"]["n_items"] == len(docs)


class _FunctionLoader(__import__("yaml").SafeLoader):
    """lmms-eval's `!function module.name` tag, read as its text."""


_FunctionLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def test_a_damaged_or_empty_workbook_is_one_line(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    (tmp_path / "bad.xlsx").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(UserError, match="is not a readable .xlsx workbook"):
        import_answers(tmp_path / "bad.xlsx", "synth:brain-mri?n=8", "synth-brain-mri", out=tmp_path / "o")
    openpyxl.Workbook().save(tmp_path / "empty.xlsx")
    with pytest.raises(UserError, match="holds no answer records"):
        import_answers(tmp_path / "empty.xlsx", "synth:brain-mri?n=8", "synth-brain-mri", out=tmp_path / "o")
