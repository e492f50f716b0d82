"""Experiment configs, incremental `run`, resume after a kill, `report`, and the demo config."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from medfrag_probe.errors import UserError
from medfrag_probe.experiment import load_config, run
from medfrag_probe.experiment.report import report

SMALL = {
    "name": "small",
    "models": [{"spec": "tiny:llava", "label": "llava"}, {"spec": "tiny:llava-med", "label": "llava-med"}],
    "pairs": [["llava", "llava-med"]],
    "tasks": [{"task": "synth-brain-mri", "data": "synth:brain-mri?n=32"},
              {"task": "synth-histology", "data": "synth:histology?n=32"}],
    "points": "vision.block.01,projector", "poolings": "mean", "probes": ["linear"], "folds": 3,
    "replicates": 50, "controls": False,
    "vqa": {"conditions": ["image", "no-image"], "prompts": ["mc-diagnosis", "desc-detail"], "max_new_tokens": 4,
            "describe_tokens": 8, "limit": 12},
    "sweep": {"factor": "layer"},
}


def _write(tmp_path, config: dict, name: str = "study.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _outputs(out) -> dict:
    """What a study produced, without timings."""
    bridge = [{k: v for k, v in json.loads(line).items() if k not in ("samples",)}
              for line in (out / "bridge" / "seed-0" / "bridge.jsonl").read_text().splitlines()]
    probes = sorted((p.parent.name, json.loads(line)["point"], json.loads(line)["balanced_accuracy"])
                    for p in (out / "probes" / "seed-0").glob("*/results.jsonl") for line in p.read_text().splitlines())
    answers = {p.parent.name: p.read_text() for p in (out / "vqa").glob("*/answers.jsonl")}
    return {"bridge": bridge, "probes": probes, "answers": answers}


def _close(a, b) -> bool:
    """Equal structures whose floats agree to 1e-6 (relative; float32 sums in another order)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1e-3)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """One run of SMALL, shared by the tests that read it (each copies it before changing anything)."""
    root = tmp_path_factory.mktemp("small-study")
    config = _write(root, SMALL)
    first = run(config, out=root / "out")
    return config, root / "out", first


def _copy(study, tmp_path):
    import shutil

    config, out, first = study
    shutil.copytree(out, tmp_path / "out")
    return config, tmp_path / "out", first


def test_a_second_run_does_no_model_work_and_changing_one_model_redoes_only_its_part(tmp_path, monkeypatch, capsys,
                                                                                     small_study):
    config, out, first = _copy(small_study, tmp_path)
    assert first["model_work"] == 2 * 2 * 3  # extract + vqa + intervene for 2 models x 2 tasks
    before = _outputs(tmp_path / "out")

    import medfrag_probe.models.loading as loading

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_adapter", no_model)
    second = run(config, out=tmp_path / "out")
    assert second["model_work"] == 0
    assert [e for e in second["stages"] if e["status"] != "up to date"] == []
    assert "nothing to do for any model" in capsys.readouterr().err
    assert _outputs(tmp_path / "out") == before
    monkeypatch.undo()

    changed = {**SMALL, "models": [SMALL["models"][0], {"spec": "tiny:medgemma", "label": "llava-med"}]}
    third = run(_write(tmp_path, changed), out=tmp_path / "out")
    ran = {(e["stage"], e["unit"].split(" ")[0]) for e in third["stages"] if e["status"] == "ran"}
    assert ran == {("extract", "llava-med__synth-brain-mri"), ("extract", "llava-med__synth-histology"),
                   ("probe", "llava-med__synth-brain-mri"), ("probe", "llava-med__synth-histology"),
                   ("vqa", "llava-med__synth-brain-mri"), ("vqa", "llava-med__synth-histology"),
                   ("intervene", "llava-med__synth-brain-mri"), ("intervene", "llava-med__synth-histology"),
                   ("bridge", "seed")}


@pytest.mark.slow
def test_units_run_in_parallel_give_the_outputs_of_a_one_job_run(tmp_path, monkeypatch, capsys, small_study):
    """Two worker processes (one thread each) produce the stage log and the outputs of the one-process run."""
    import medfrag_probe.experiment.runner as runner

    config, out, first = small_study
    monkeypatch.setattr(runner, "usable_cores", lambda: 2)  # two jobs even on a one-core machine
    parallel = run(config, out=tmp_path / "parallel", jobs=2)
    assert "4 units, 2 at a time (1 thread(s) each)" in capsys.readouterr().err
    assert [(e["stage"], e["unit"], e["status"]) for e in parallel["stages"]] == \
        [(e["stage"], e["unit"], e["status"]) for e in first["stages"]]
    # the same outputs; the causal check's float sums may round differently on one thread
    assert _close(_outputs(tmp_path / "parallel"), _outputs(out))
    with pytest.raises(UserError, match="`jobs` must be a positive integer"):
        run(config, out=tmp_path / "parallel", jobs=0)


@pytest.mark.slow
def test_two_jobs_give_the_probes_of_one_job_and_a_failing_unit_stops_the_run_with_its_error(tmp_path, monkeypatch):
    """The parallel path on a cheap study (an image encoder, two tasks): the same probe results as one job; a unit
    that fails in a worker raises its own one-line error in the caller, after the other finishes."""
    import medfrag_probe.experiment.runner as runner

    monkeypatch.setattr(runner, "usable_cores", lambda: 2)
    study = {**ONE, "models": [{"spec": "tiny:clip", "label": "clip"}], "points": "vision.block.01",
             "tasks": ONE["tasks"] + [{"task": "synth-chest-xray", "data": "synth:chest-xray?n=24"}]}
    config = _write(tmp_path, study)
    one, two = run(config, out=tmp_path / "one", jobs=1), run(config, out=tmp_path / "two", jobs=2)
    assert [(e["stage"], e["unit"]) for e in one["stages"]] == [(e["stage"], e["unit"]) for e in two["stages"]]
    results = {f: sorted(json.dumps({k: v for k, v in json.loads(line).items()
                                    if k != "seconds" and str(tmp_path) not in str(v)})
                         for p in (tmp_path / f / "probes" / "seed-0").glob("*/results.jsonl")
                         for line in p.read_text().splitlines()) for f in ("one", "two")}
    assert results["one"] == results["two"] and len(results["one"]) == 2

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "clip_vision_model"}')  # no weights: the load fails
    bad = {**study, "models": [{"spec": f"hf:{broken}", "label": "broken"}]}
    with pytest.raises(Exception) as failed:
        run(_write(tmp_path, bad, "bad.yaml"), out=tmp_path / "bad", jobs=2)
    assert str(broken) in str(failed.value) and "\n" not in str(failed.value)


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_a_run_killed_midway_resumes_to_the_same_outputs(tmp_path, monkeypatch, small_study):
    config, out, _ = small_study
    clean = _outputs(out)

    import medfrag_probe.answering.run as vqa_run

    real = vqa_run.generate_all
    calls = {"n": 0}

    def dies_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Killed()
        return real(*args, **kwargs)

    monkeypatch.setattr(vqa_run, "generate_all", dies_on_third)
    with pytest.raises(_Killed):
        run(config, out=tmp_path / "killed")
    monkeypatch.undo()
    resumed = run(config, out=tmp_path / "killed")
    skipped = {e["unit"] for e in resumed["stages"] if e["status"] == "up to date" and e["stage"] == "vqa"}
    assert skipped == {"llava__synth-brain-mri", "llava__synth-histology"}  # finished before the kill
    assert _outputs(tmp_path / "killed") == clean


def test_report_has_every_section_and_embedded_figures(tmp_path, small_study):
    _, out, _ = _copy(small_study, tmp_path)
    paths = report(out)
    page = paths["html"].read_text()
    for section in ("Verdicts per task and model", "paired deltas", "Prompt sensitivity", "Layer curves",
                    "Ablation: layer", "Provenance", "The config as run"):
        assert section in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    # ladder, scatter, stage curves, one layer curve per unit, the ablation plot
    assert len(images) == 3 + 4 + 1 and all(len(i) > 2000 for i in images)
    assert "src='http" not in page and "<script" not in page  # self-contained, nothing fetched
    markdown = paths["markdown"].read_text()
    assert "| synth-brain-mri | llava |" in markdown and "verdict" in markdown


@pytest.mark.parametrize("change, message", [
    ({"modells": []}, "unknown key 'modells' in the top level; valid: name, description"),
    ({"vqa": {"conditons": ["image"]}}, "unknown key 'conditons' in vqa; valid: conditions"),
    ({"tasks": [{"task": "synth-brain-mri", "dta": "x"}]}, r"unknown key 'dta' in tasks\[0\]; valid: task, data"),
    ({"models": []}, "'models' is required"),
    ({"pairs": [["llava", "nobody"]]}, "pair member 'nobody' is not a listed model"),
    ({"probes": ["svm"]}, "unknown probe 'svm' in probes; valid:"),
    ({"folds": 1}, "folds must be an integer >= 2"),
    ({"jobs": 0}, "jobs must be an integer >= 1, got 0"),
    ({"sweep": {"factor": "colour"}}, "unknown sweep factor 'colour'; valid: layer, pooling"),
    ({"sweep": {"factor": "resolution"}}, "sweep over resolution needs 'values'"),
    ({"vqa": {"conditions": ["image", "bogus"]}}, "vqa: unknown condition 'bogus'"),
    ({"tasks": ["no-such-task"]}, "unknown task 'no-such-task'"),
    # labels name folders under `out`: nothing may climb out of it or nest
    ({"models": [{"spec": "tiny:llava", "label": "../../../x/ESCAPED"}]}, r"models\[0\].label '../../../x/ESCAPED' "
                                                                          "is not a valid label"),
    ({"models": [{"spec": "tiny:llava", "label": "ViT-B/16"}]}, "'ViT-B/16' is not a valid label"),
    ({"models": [{"spec": "tiny:llava", "label": "/tmp/abs"}]}, "'/tmp/abs' is not a valid label"),
    ({"models": [{"spec": "tiny:llava", "label": "<script>"}]}, "'<script>' is not a valid label"),
    ({"tasks": [{"task": "synth-brain-mri", "label": "a/../../b"}]}, r"tasks\[0\].label 'a/../../b' is not a valid"),
    ({"name": "../up"}, "name '../up' is not a valid label"),
    ({"name": ["a", "b"]}, "name must be a single value"),
    # booleans are YAML booleans: a string "no" must never switch remote code on
    ({"models": [{"spec": "tiny:llava", "trust_remote_code": "no"}]}, r"models\[0\].trust_remote_code must be "
                                                                      "true or false, got 'no'"),
    ({"controls": "no"}, "controls must be true or false, got 'no'"),
    ({"extract": {"batch_size": "lots"}}, "extract.batch_size must be an integer >= 1, got 'lots'"),
    ({"extract": {"device": ["cpu"]}}, "extract.device must be a single value"),
])
def test_a_bad_config_gets_a_one_line_error_naming_the_key(tmp_path, change, message):
    path = _write(tmp_path, {**SMALL, **change})
    with pytest.raises(UserError, match=message) as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_bad_config_through_the_cli_exits_2(tmp_path, capsys):
    from medfrag_probe.cli import main

    path = _write(tmp_path, {**SMALL, "extract": {"batchsize": 4}})
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: config {path}: unknown key 'batchsize' in extract; valid: "
                                               "batch_size, device, dtype, store_dtype, prompt, workers")


def test_shipped_experiment_configs_are_valid():
    from medfrag_probe.experiment.config import experiments_dir

    names = sorted(p.stem for p in experiments_dir().glob("*.yaml"))
    assert {"demo", "demo-ci"} <= set(names)
    for name in names:
        config = load_config(name)
        assert config.models and config.tasks
        assert config.name == name  # not the label of the last task a model names


@pytest.mark.slow
def test_the_ci_demo_runs_every_stage_end_to_end(tmp_path, capsys):
    """The shortened demo config (CI): 4 tiny models x 4 synthetic tasks, extract -> probe -> vqa -> bridge ->
    report, through the CLI as README runs the full one."""
    from medfrag_probe.attribution import VERDICTS
    from medfrag_probe.cli import main

    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exit_info:
        main(["--quiet", "demo", "--config", "demo-ci", "--out", str(out)])
    assert exit_info.value.code == 0
    assert f"open {(out / 'report.html').resolve()}" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "bridge" / "seed-0" / "bridge.jsonl").read_text().splitlines()]
    assert len(records) == 16 + 4 and {r["verdict"] for r in records} <= set(VERDICTS)
    assert all(r["causal_effect"] is not None and r["causal_note"] for r in records)  # every VLM's causal check
    organisms = {r["model"]: r for r in records if "organism" in r["model"]}
    assert organisms["tiny:organism-sound"]["uses_probed_signal"] is True
    assert organisms["tiny:organism-reasoning"]["verdict"] == "reasoning-limited"
    assert organisms["tiny:organism-vision"]["verdict"] == "vision-limited"
    pairs = [json.loads(line) for line in (out / "bridge" / "seed-0" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 8
    # the LLaVA pair shares its tower (as LLaVA and LLaVA-Med do); the Gemma pair does not
    assert {p["identical_vision_tower"] for p in pairs if p["generalist"] == "tiny:llava"} == {True}
    assert {p["identical_vision_tower"] for p in pairs if p["generalist"] == "tiny:gemma3"} == {False}
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 + 20 + 1


ONE = {"models": [{"spec": "tiny:llava", "label": "llava"}],
       "tasks": [{"task": "synth-histology", "data": "synth:histology?n=24"}],
       "points": "vision.block.01,projector", "poolings": "mean", "probes": ["linear"], "folds": 3,
       "replicates": 20, "controls": False, "vqa": False}


@pytest.mark.parametrize("sweep, extra", [
    ({"factor": "pooling", "values": ["mean", "max"]}, {}),
    ({"factor": "k", "values": [1, 5]}, {"probes": ["knn"]}),
    ({"factor": "resolution", "values": [32, 48]}, {}),
    ({"factor": "train_size", "values": [2, 4]}, {}),
    ({"factor": "prompt"}, {"vqa": {"prompts": ["yes_no"], "max_new_tokens": 2, "describe_with": "none",
                                     "limit": 6}}),
])
def test_each_sweep_factor_runs_and_is_plotted(tmp_path, sweep, extra):
    out = tmp_path / "out"
    run(_write(tmp_path, {**ONE, **extra, "sweep": sweep}), out=out)
    report(out)
    figure = out / "figures" / f"ablation_{sweep['factor']}.png"
    assert figure.read_bytes()[:4] == b"\x89PNG" and figure.stat().st_size > 5000
    if sweep["factor"] == "resolution":
        assert sorted(p.name for p in (out / "cache").glob("*.h5")) == ["llava__synth-histology@32px.h5",
                                                                        "llava__synth-histology@48px.h5"]
    if sweep["factor"] == "pooling":
        files = (out / "probes").rglob("results.jsonl")
        rows = [json.loads(line) for p in files for line in p.read_text().splitlines()]
        assert {r["pooling"] for r in rows} == {"mean", "max"}


def test_run_refuses_a_folder_that_is_not_a_study(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not empty and holds no study"):
        run(_write(tmp_path, ONE), out=tmp_path / "out")
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    import time

    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    lines += ["description: *a8", "models: [tiny:llava]", "tasks: [synth-brain-mri]"]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(UserError, match="expands to more than 100,000 values through its aliases"):
        load_config(path)
    assert time.perf_counter() - start < 5  # 10^9 values if expanded
