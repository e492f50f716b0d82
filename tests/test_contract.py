"""The contract between stages: one reader and one writer per artifact (round trips), one vocabulary of points,
registries that refuse duplicates, an import graph without cycles, errors that read right in both surfaces."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medfrag_probe.artifacts import (
    BridgeRecord,
    Predictions,
    ProbeResult,
    StudyLayout,
    VQARecord,
    find_runs,
    read_answers,
    read_bridge,
    read_curves,
    read_pairs,
    read_predictions,
    read_results,
    read_summary,
    write_answers,
    write_bridge,
    write_curves,
    write_predictions,
    write_results,
    write_summary,
)
from medfrag_probe.errors import UserError, option

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "medfrag_probe"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Package modules `name` imports anywhere in its body (function-level imports included)."""
    out = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            for candidate in [base, *(f"{base}.{a.name}" for a in node.names)]:
                if candidate in modules and candidate != name:
                    out.add(candidate)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules and a.name != name}
    return out


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert len(graph) > 50  # the walk saw the package


def test_no_library_module_selects_a_backend_shadows_the_standard_library_or_swaps_module_classes():
    for name, path in _modules().items():
        text = path.read_text()
        assert "matplotlib.use(" not in text and "import matplotlib.pyplot" not in text, name
        assert "from matplotlib import pyplot" not in text, name
        assert "__class__ =" not in text, name
        assert name.rsplit(".", 1)[-1] not in ("inspect", "json", "csv", "types", "io"), name


def _probe_result(predictions: str) -> ProbeResult:
    return ProbeResult(model="tiny:llava", data="synth:brain-mri?n=8", cache="c.h5", point="vision.block.01",
                       pooling="mean", probe="linear", split="group-5-fold", n=8, n_excluded=0, n_classes=2,
                       classes=["a", "b"], chance=0.5, majority_accuracy=0.5, accuracy=0.75, accuracy_ci=[0.5, 1.0],
                       balanced_accuracy=0.75, balanced_accuracy_ci=[0.5, 1.0], macro_f1=0.7, macro_f1_ci=[0.4, 1.0],
                       auroc=None, auroc_ci=None, skill=0.5, skill_ci=[0.0, 1.0], shuffled_accuracy=0.5,
                       shuffled_balanced_accuracy=0.5, selectivity=0.25, per_class_recall=[0.5, 1.0],
                       confusion=[[2, 2], [0, 4]], folds=5, hyper={"C": [1.0, None], "val_score": [0.6, None]},
                       design_effect={"balanced_accuracy": 1.4}, permutations=40, predictions=predictions)


def test_probe_results_round_trip_and_point_at_moved_predictions(tmp_path):
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "p.csv").write_text("x")
    result = _probe_result(str(tmp_path / "predictions" / "p.csv"))
    write_results(tmp_path, [result, result])
    assert read_results(tmp_path) == [result, result]
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header.startswith("model,data,point") and header.endswith("skill_ci_low,skill_ci_high")
    moved = tmp_path.parent / "moved"
    tmp_path.rename(moved)
    again = read_results(moved)[0]
    assert again.predictions == str(moved / "predictions" / "p.csv")
    assert dataclasses.replace(again, predictions=result.predictions) == result


def test_records_read_like_their_json_and_tolerate_other_versions(tmp_path):
    result = _probe_result("p.csv")
    assert result["point"] == result.point and result.get("nope", 3) == 3 and "hyper" in result
    assert {**result} == result.record()
    newer = {**result.record(), "field_of_a_later_version": 1}
    assert ProbeResult.from_record(newer) == result
    older = {k: v for k, v in result.record().items() if k not in ("design_effect", "permutations", "ci_method")}
    assert ProbeResult.from_record(older).permutations == 0
    with pytest.raises(UserError, match="missing point"):
        ProbeResult.from_record({k: v for k, v in result.record().items() if k != "point"}, where="x.jsonl line 1")
    (tmp_path / "results.jsonl").write_text('{"model": \n')
    with pytest.raises(UserError, match="line 1 is not JSON"):
        read_results(tmp_path)


def test_predictions_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(3), size=7)
    predictions = Predictions(ids=np.array([f"s{i}" for i in range(7)]), groups=np.array(list("aabbccd")),
                              splits=np.array([""] * 7), folds=np.array([0, 0, 1, 1, 2, 2, 2]),
                              labels=np.array([0, 1, 2, 0, 1, 2, 0]), classes=["x", "y", "z"], proba=proba)
    path = tmp_path / "p.csv"
    write_predictions(path, predictions)
    back = read_predictions(path)
    for name in ("ids", "groups", "splits", "folds", "labels"):
        np.testing.assert_array_equal(getattr(back, name), getattr(predictions, name))
    assert back.classes == predictions.classes
    np.testing.assert_allclose(back.proba, proba, rtol=1e-5)  # six significant digits
    np.testing.assert_array_equal(back.predicted, proba.argmax(1))
    assert len(back.take(back.folds == 2)) == 3


def test_predictions_written_before_the_fold_column_still_read(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("sample_id,group,label,pred,correct,p_a,p_b\r\ns0,g0,a,a,1,0.9,0.1\r\ns1,g1,b,a,0,0.6,0.4\r\n")
    back = read_predictions(path)
    assert back.folds.tolist() == [-1, -1] and back.splits.tolist() == ["", ""] and back.labels.tolist() == [0, 1]
    path.write_text("sample_id,group,label,pred,correct,p_a\r\ns0,g0,b,a,0,1\r\n")
    with pytest.raises(UserError, match="not among its classes"):
        read_predictions(path)


def _answer(i: int, **extra) -> VQARecord:
    return VQARecord(sample_id=f"s{i}", prompt_id="mc", condition="image", response="B", parsed="B", correct=True,
                     refused=False, answer_kind="answer", kind="multiple_choice", expected="B", class_pred="b",
                     label="b", group=f"p{i}", split="", **extra)


def test_vqa_answers_and_summary_round_trip_and_are_found_as_a_run(tmp_path):
    run = tmp_path / "runs" / "one"
    run.mkdir(parents=True)
    answers = [_answer(0), _answer(1, option_probs={"A": 0.25, "B": 0.75}, class_probs={"a": 0.25, "b": 0.75})]
    summary = {"model": "tiny:llava", "data": "synth:x", "classes": ["a", "b"], "conditions": {"image": {}}}
    write_answers(run, answers)
    with pytest.raises(UserError, match="no VQA results"):  # a run without its summary is not finished
        find_runs(tmp_path / "runs")
    write_summary(run, summary)
    assert read_answers(run) == answers and read_summary(run) == summary
    (found,) = find_runs(tmp_path)
    assert found.folder == run and found.summary == summary and found.answers() == answers
    (run / "summary.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(UserError, match="not a VQA summary"):
        read_summary(run)


def test_bridge_records_pairs_and_stages_round_trip(tmp_path):
    fields = {f.name: None for f in dataclasses.fields(BridgeRecord)
              if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    fields.update(model="m", data="d", task="t", point="vision.block.01", pooling="mean", probe_skill=0.8,
                  probe_skill_ci=[0.7, 0.9], vqa_skill=0.1, vqa_skill_ci=[0.0, 0.2], gap=0.7, gap_ci=[0.6, 0.8],
                  vision_deficit=0.2, reasoning_deficit=0.7, verdict="reasoning-limited", mcnemar_p=0.001,
                  recoverable_errors=12, n=40, table={"both_right": 3}, reads_point="vision.block.01",
                  best_points={"0": "vision.block.01/mean"}, description_point="")
    record = BridgeRecord(**fields, seen=True, lost=True,
                          stages=[{"stage": "vision", "point": "vision.block.01", "pooling": "mean", "skill": 0.8,
                                   "skill_ci": [0.7, 0.9]},
                                  {"stage": "answer", "point": "answer", "pooling": "vote", "skill": 0.1,
                                   "skill_ci": None}])
    pairs = [{"generalist": "a", "medical": "b", "data": "d", "probe_delta": 0.1, "probe_delta_ci": [0.0, 0.2]}]
    write_bridge(tmp_path, [record], pairs)
    assert read_bridge(tmp_path) == [record] and read_pairs(tmp_path) == pairs
    assert (tmp_path / "stages.csv").read_text().splitlines() == [
        "model,data,stage,point,pooling,skill,skill_low,skill_high", "m,d,vision,vision.block.01,mean,0.8,0.7,0.9",
        "m,d,answer,answer,vote,0.1,None,None"]


def test_curves_round_trip(tmp_path):
    rows = [{"point": "vision.block.00", "per_class": n, "balanced_accuracy": 0.5 + n / 100, "ci": [0.4, 0.6]}
            for n in (4, 8)]
    write_curves(tmp_path, "cache-a", rows)
    assert read_curves(tmp_path) == rows and read_curves(tmp_path / "none") == []


def test_study_layout_names_every_stage_folder(tmp_path):
    layout = StudyLayout(tmp_path)
    assert layout.cache("m__t") == tmp_path / "cache" / "m__t.h5"
    assert layout.probe(3, "m__t") == tmp_path / "probes" / "seed-3" / "m__t"
    assert layout.bridge(0) == tmp_path / "bridge" / "seed-0" and layout.vqa("m__t") == tmp_path / "vqa" / "m__t"
    assert layout.seeds() == []
    layout.probes(2).mkdir(parents=True)
    layout.probes(0).mkdir(parents=True)
    assert layout.seeds() == [0, 2]
    layout.bridge(2).mkdir(parents=True)
    assert layout.seeds() == [2]  # seeds with bridge results come first
    with pytest.raises(UserError, match="not a study folder"):
        layout.read_run()


def test_points_vocabulary_orders_and_classifies_names():
    from medfrag_probe.points import block_name, point_order, stage_of

    names = ["lm.block.01", "projector", "vision.post", "vision.block.10", "vision.embed", "vision.block.02",
             "vision.pooled", "my.own.point"]
    assert sorted(names, key=point_order) == ["vision.embed", "vision.block.02", "vision.block.10", "vision.post",
                                              "vision.pooled", "projector", "lm.block.01", "my.own.point"]
    assert [stage_of(n) for n in ("vision.block.03", "projector", "lm.block.00")] == ["vision", "projector",
                                                                                      "language"]
    assert block_name(7) == "vision.block.07" and block_name(12, lm=True) == "lm.block.12"


def test_registries_refuse_a_second_registration_under_a_taken_name():
    from medfrag_probe.data.base import register_source
    from medfrag_probe.data.sources import open_source
    from medfrag_probe.models.loading import load_registry
    from medfrag_probe.models.registry import register
    from medfrag_probe.probes.estimators import PROBES

    load_registry()  # every architecture and data source registered, as any run has them
    assert open_source("synth:brain-mri?n=4")

    with pytest.raises(ValueError, match="'linear' is already registered"):
        PROBES["linear"] = lambda **kw: None
    with pytest.raises(ValueError, match="'synth' is already registered"):
        register_source("synth")(lambda spec: None)
    with pytest.raises(ValueError, match="'llava' is already registered"):
        register("llava")(type("Other", (), {}))
    with pytest.raises(UserError, match="unknown probe 'svm'; valid: knn, knn-euclid-11, linear"):
        PROBES.choose("svm")


def test_trace_ends_the_forward_pass_at_stop_after_and_swallows_the_stop():
    from medfrag_probe.models.base import Point
    from medfrag_probe.models.hooks import trace

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    reached = []
    model[2].register_forward_hook(lambda *_: reached.append(True))
    points = [Point("a", model[0], "vector", 1), Point("b", model[2], "vector", 2)]
    with trace(points, stop_after="a") as captured:
        model(torch.ones(1, 3))
    assert set(captured) == {"a"} and not reached
    assert not model[0]._forward_hooks  # hooks are gone after the block
    with trace(points) as captured:
        model(torch.ones(1, 3))
    assert set(captured) == {"a", "b"}


def test_errors_name_options_as_the_library_or_the_command_line_spells_them():
    error = UserError(f"pass {option('allow_incomplete', True)} or another {option('out')} or "
                      f"{option('store_dtype', 'float32')}")
    assert str(error) == "pass `allow_incomplete=True` or another `out` or `store_dtype=float32`"
    assert error.for_cli() == "pass --allow-incomplete or another --out or --store-dtype float32"


def test_the_library_validates_what_the_command_line_validates(tmp_path):
    from medfrag_probe import bridge, probe

    with pytest.raises(UserError, match="`folds` must be >= 2, got 1"):
        probe([tmp_path / "missing.h5"], folds=1)
    with pytest.raises(UserError, match="`replicates` must be >= 10"):
        probe([tmp_path / "missing.h5"], replicates=5)
    with pytest.raises(UserError, match="seen_skill must lie in"):
        bridge(tmp_path, tmp_path, seen_skill=2.0)


def test_the_one_slugifier_names_files_as_each_stage_always_has():
    from medfrag_probe.extraction import slug
    from medfrag_probe.specs import safe_name

    assert safe_name("hf:/ckpt/llava 1.5?x=1") == "hf--ckpt-llava-1.5-x-1"
    assert safe_name("--a::b__", keep="-.", limit=3) == "a--"
    assert safe_name("synth:brain-mri?n=200", keep=".", collapse=True) == "synth-brain-mri-n-200"
    assert slug("synth:brain-mri?n=200").startswith("synth-brain-mri-n-200-")  # the default cache file name


def test_the_slugifier_equals_the_three_it_replaced_on_random_strings():
    import random
    import re
    import string

    from medfrag_probe.specs import safe_name

    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + "-._/:?=&é ü+@"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90)))
        assert safe_name(text, keep="-.", limit=80) == "".join(
            c if c.isalnum() or c in "-." else "-" for c in text).strip("-")[:80]  # bridge sample tables
        assert safe_name(text) == "".join(c if c.isalnum() or c in "-._" else "-" for c in text).strip("-")  # labels
        assert safe_name(text, keep=".", collapse=True, limit=60) == re.sub(r"[^A-Za-z0-9.]+", "-", text).strip(
            "-")[:60]  # default cache file names
