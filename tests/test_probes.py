"""Probes: known answers, controls, honest splits, estimator contract, degenerate inputs, outputs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from medfrag_probe.cache import write_embeddings
from medfrag_probe.errors import UserError
from medfrag_probe.probes import KNNProbe, LinearProbe, probe
from medfrag_probe.probes.metrics import bootstrap_scores, bootstrap_weights, inflation
from medfrag_probe.probes.similarity import linear_cka
from medfrag_probe.stats import PERMUTATIONS


def write_cache(path, X, labels, *, groups=None, splits=None, point="layer", pooling="mean", classes=None):
    """A cache in the minimal schema, plus groups/splits when given."""
    k = int(np.max(labels)) + 1
    embeddings = {f"{name}/{pooling}": v for name, v in X.items()} if isinstance(X, dict) else {f"{point}/{pooling}": X}
    return write_embeddings(path, ids=[f"s{i:05d}" for i in range(len(labels))], labels=labels,
                            classes=classes or [f"c{i}" for i in range(k)], embeddings=embeddings, groups=groups,
                            splits=splits)


def gaussian(n, d, separation, seed=0):
    """Two classes N(-mu, I) and N(+mu, I) with |mu| = separation / 2: Bayes accuracy Phi(separation / 2)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    mu = np.zeros(d)
    mu[0] = separation / 2
    X = rng.normal(size=(n, d)) + np.where(y[:, None] == 1, mu, -mu)
    return X.astype(np.float32), y


def test_linear_probe_reaches_bayes_accuracy(tmp_path):
    X, y = gaussian(3000, 16, separation=2 * norm.ppf(0.8))
    path = write_cache(tmp_path / "g.h5", X, y)
    (result,) = probe([path], probes="linear", out=tmp_path / "out", controls=False, figures=False)
    assert abs(result.accuracy - 0.8) < 0.03
    assert result.accuracy_ci[0] < result.accuracy < result.accuracy_ci[1]
    assert result.split == "stratified-kfold" and result.n == 3000


def test_noise_scores_at_chance(tmp_path):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(600, 32)).astype(np.float32), rng.integers(0, 2, 600)
    path = write_cache(tmp_path / "n.h5", X, y)
    for result in probe([path], out=tmp_path / "out", figures=False):
        low, high = result.balanced_accuracy_ci
        assert low <= 0.5 <= high, result.probe
        assert abs(result.skill) < 0.1


def test_shuffled_control_is_at_chance_on_real_signal_and_selectivity_is_the_signal(tmp_path):
    """A control that never shuffles would score like the probe itself and give selectivity 0: this fails it."""
    X, y = gaussian(600, 16, separation=1.5, seed=3)  # Bayes accuracy 0.77
    groups = np.arange(600) // 3
    for result in probe([write_cache(tmp_path / "s.h5", X, y, groups=groups)], out=tmp_path / "out", figures=False):
        assert result.shuffled_balanced_accuracy == pytest.approx(0.5, abs=0.07), result.probe
        assert result.selectivity == pytest.approx(result.balanced_accuracy - 0.5, abs=0.07), result.probe
        assert result.selectivity > 0.15


def _leaky(rng, patients=60, per=6):
    """Patient-level labels, images of one patient alike, no class signal at all."""
    anatomy = rng.normal(size=(patients, 32))
    patient_label = rng.permutation(np.arange(patients) % 2)
    groups = np.repeat(np.arange(patients), per)
    X = (anatomy[groups] + 0.1 * rng.normal(size=(patients * per, 32))).astype(np.float32)
    return X, patient_label[groups], groups


def test_the_patient_shuffle_control_exposes_a_leaky_split(tmp_path):
    """Train and test share patients: the probe scores high by recognising patients. Labels shuffled per image would
    destroy that and pass the probe (selectivity ~0.5); shuffled across patients the leak survives: selectivity ~0."""
    X, y, groups = _leaky(np.random.default_rng(5))
    splits = np.where(np.arange(len(y)) % 6 < 4, "train", "test")  # every patient in both
    path = write_cache(tmp_path / "leak.h5", X, y, groups=groups, splits=splits)
    with pytest.raises(UserError, match=r"share 60 patient\(s\): 0, 1, 10, 11, 12 and 55 more"):
        probe([path], probes="knn", out=tmp_path / "refused", figures=False)
    (result,) = probe([path], probes="knn", out=tmp_path / "out", figures=False, allow_split_overlap=True)
    assert result.balanced_accuracy > 0.9 and "share 60 patients" in result.note
    assert result.shuffled_balanced_accuracy > 0.85 and result.selectivity < 0.15


def test_patient_leakage_random_split_high_group_split_chance(tmp_path):
    """Label constant per patient, images of one patient alike, no class signal: only a leaky split scores."""
    X, y, groups = _leaky(np.random.default_rng(2))
    leaky = probe([write_cache(tmp_path / "leaky.h5", X, y)], probes="knn", out=tmp_path / "a", figures=False,
                  controls=False)[0]
    honest = probe([write_cache(tmp_path / "honest.h5", X, y, groups=groups)], probes="knn", out=tmp_path / "b",
                   figures=False, controls=False)[0]
    assert leaky.split == "stratified-kfold" and leaky.balanced_accuracy > 0.9
    assert honest.split == "group-kfold" and abs(honest.balanced_accuracy - 0.5) < 0.12


def test_given_splits_train_to_test_only(tmp_path):
    """The signal is reversed in test: a probe trained on train only must score far below chance on test."""
    X, y = gaussian(900, 8, separation=4.0, seed=3)
    splits = np.array(["train"] * 500 + ["val"] * 150 + ["test"] * 250)
    X[650:, 0] *= -1
    path = write_cache(tmp_path / "s.h5", X, y, splits=splits)
    results = probe([path], out=tmp_path / "out", figures=False, controls=False)
    for result in results:
        assert result.split == "given" and result.n == 250 and result.accuracy < 0.2
    lines = (tmp_path / "out" / "predictions" / "s__layer__mean__linear.csv").read_text().splitlines()
    assert len(lines) == 251 and all(",test," in line for line in lines[1:])


def test_result_records_carry_the_contract_keys(tmp_path):
    X, y = gaussian(400, 8, separation=3.0)
    path = write_cache(tmp_path / "c.h5", X, y, groups=np.arange(400) // 4)
    probe([path], out=tmp_path / "out", ks=[1, 5, 20])
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    keys = {"model", "data", "point", "pooling", "probe", "split", "n", "n_classes", "chance", "accuracy",
            "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "macro_f1", "auroc", "auroc_ci", "skill",
            "shuffled_accuracy", "selectivity"}
    assert all(keys <= set(r) for r in records)
    assert {r["probe"] for r in records} == {"linear", "knn@1", "knn@5", "knn@20"}
    assert (tmp_path / "out" / "results.csv").read_text().count("\n") == 5
    assert (tmp_path / "out" / "layers__c.png").stat().st_size > 5000


def test_same_bootstrap_resamples_for_every_model_of_a_data_source():
    groups = np.repeat(np.arange(50), 3)
    assert np.array_equal(bootstrap_weights(groups), bootstrap_weights(groups[::-1].copy())[:, ::-1])
    w = bootstrap_weights(groups)
    assert w.shape == (1000, 150) and np.all(w.sum(1) == 150)
    assert all(len(set(w[r, g * 3:(g + 1) * 3])) == 1 for r in range(5) for g in range(50))  # whole patients


def test_vectorised_bootstrap_auroc_equals_explicit_resamples():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 300)
    proba = rng.dirichlet(np.ones(3), 300) + np.eye(3)[y] * 0.3
    proba /= proba.sum(1, keepdims=True)
    weights = bootstrap_weights(np.arange(300), replicates=5)
    boot = bootstrap_scores(y, proba, weights, 3)
    for r in range(5):
        idx = np.repeat(np.arange(300), weights[r].astype(int))
        expected = np.mean([roc_auc_score(y[idx] == k, proba[idx, k]) for k in range(3)])
        assert boot["auroc"][r] == pytest.approx(expected, abs=1e-6)
        assert boot["accuracy"][r] == pytest.approx((proba[idx].argmax(1) == y[idx]).mean(), abs=1e-6)


def test_estimator_contract():
    X, y = gaussian(200, 5, separation=3.0)
    for estimator in (LinearProbe(Cs=(0.1, 1.0)), KNNProbe(k=5)):
        copy = clone(estimator)
        assert copy.get_params() == estimator.get_params()
        with pytest.raises(NotFittedError):
            copy.predict(X)
        assert copy.fit(X, y) is copy
        assert cross_val_score(clone(estimator), X, y, cv=3).mean() > 0.8
    labels = np.array(["benign", "malignant"])[y]
    assert set(LinearProbe().fit(X, labels).predict(X)) <= {"benign", "malignant"}


def test_patient_groups_reach_the_inner_c_search_inside_a_pipeline(monkeypatch):
    """With metadata routing on, `Pipeline.fit(X, y, groups=...)` hands the groups to LinearProbe's inner folds (no
    patient straddles an inner fold), as a bare fit does; a bare fit without groups keeps working."""
    import sklearn
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medfrag_probe.probes import estimators

    seen = []
    real = estimators.inner_folds

    def spy(codes, groups, k, seed):
        folds = real(codes, groups, k, seed)
        seen.append((groups, folds))
        return folds

    monkeypatch.setattr(estimators, "inner_folds", spy)
    X, y = gaussian(240, 5, separation=2.0)
    patients = np.repeat(np.arange(60), 4)
    with sklearn.config_context(enable_metadata_routing=True):
        make_pipeline(StandardScaler(), LinearProbe(Cs=(0.01, 1.0))).fit(X, y, groups=patients)
        scores = cross_val_score(make_pipeline(StandardScaler(), LinearProbe(Cs=(0.01, 1.0))), X, y,
                                 cv=GroupKFold(3), params={"groups": patients})
    assert len(seen) == 4 and scores.mean() > 0.7
    for groups, folds in seen:
        assert groups is not None and len(groups) == len(folds[0][0]) + len(folds[0][1])
        for train, test in folds:
            assert not set(groups[train]) & set(groups[test])
    LinearProbe(Cs=(0.01, 1.0)).fit(X, y)  # no routing, no groups: image-level inner folds, still fits


@pytest.mark.parametrize("classes", [2, 4])
def test_the_small_problem_solver_reaches_the_torch_solvers_objective(classes):
    """SciPy's L-BFGS-B path and Newton's method (small CPU problems) and the batched torch path solve the same
    objective, per-problem standardisation included: their objectives agree at every C of the walk."""
    import torch

    from medfrag_probe.probes import solver

    rng = np.random.default_rng(classes)
    y = rng.integers(0, classes, 200)
    X = (rng.normal(size=(200, 12)) + np.eye(classes, 12)[y] * 1.5).astype(np.float32)
    X = (X - X.mean(0)) / X.std(0)
    masks = (rng.random((4, 200)) < 0.7).astype(np.float32)
    masks[-1] = 1
    scales = torch.from_numpy(rng.uniform(0.5, 2.0, (4, 12)).astype(np.float32))
    Xt, yt, mt = torch.from_numpy(X), torch.from_numpy(y).long(), torch.from_numpy(masks)
    Y = solver._targets(yt, classes, classes == 2, torch.float32)
    Cs = [0.001, 0.1, 10.0]
    paths = [list(f(Xt, yt, mt, Cs, n_classes=classes, penalty_scales=scales, tol=1e-6))
             for f in (solver.logistic_path, solver.logistic_path_cpu, solver.logistic_path_newton)]
    for C, *solutions in zip(Cs, *paths):
        losses = [float(solver._loss_grad(Xt, Xt.T.contiguous(), Y, mt, mt.sum(1), W, b, C, classes == 2, scales)[0])
                  for W, b in solutions]
        assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5)
        assert losses[2] == pytest.approx(losses[0], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("classes", [2, 4])
def test_strongly_regularised_refits_converge_in_a_few_steps(classes, monkeypatch):
    """At C = 1e-4 (the grid's strong end, where a weak signal's C lands) the weights are ~1 / (C n) stiffer than the
    free intercepts: started from the class log-odds on rescaled parameters, 20 permutation refits of imbalanced
    classes reach every gradient entry below the tolerance in a few objective evaluations (unscaled from zero: ~26)."""
    import torch

    from medfrag_probe.probes import solver

    rng = np.random.default_rng(classes)
    y = np.minimum(rng.integers(0, classes + 2, 240), classes - 1)  # the last class 3x as frequent
    X = torch.from_numpy(rng.normal(size=(240, 64)).astype(np.float32))
    codes = torch.from_numpy(np.stack([rng.permutation(y) for _ in range(20)])).long()
    masks = torch.ones(20, 240)
    calls = []
    objective = solver._numpy_objective

    def counted(problems):
        fun = objective(problems)
        return lambda params, C: calls.append(C) or fun(params, C)

    monkeypatch.setattr(solver, "_numpy_objective", counted)
    W, b = next(iter(solver.logistic_path_cpu(X, codes, masks, [1e-4], n_classes=classes)))
    Y = solver._targets(codes.T, classes, classes == 2, torch.float64)
    _, gW, gb = solver._loss_grad(X.double(), X.T.double().contiguous(), Y, masks.double(), masks.sum(1).double(),
                                  W.double(), b.double(), 1e-4, classes == 2)
    assert max(gW.abs().max(), gb.abs().max()) < 1e-4
    assert len(calls) <= 8


@pytest.mark.parametrize("classes", [2, 4])
def test_newton_converges_where_l_bfgs_runs_out_of_steps(classes):
    """Weak regularisation on nearly separable classes (C = 100, 150 rows x 64 features, 40 random label vectors:
    the permutation refits' case): L-BFGS stops at its step limit short of the optimum; Newton's method reaches a
    gradient below the tolerance (1e-4) and a lower objective."""
    import torch

    from medfrag_probe.probes import solver

    rng = np.random.default_rng(classes + 10)
    X = torch.from_numpy(rng.normal(size=(150, 64)).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, classes, (40, 150))).long()
    masks = torch.ones(40, 150)
    Y = solver._targets(codes.T, classes, classes == 2, torch.float32)
    objective = {}
    for name, f in (("lbfgs", solver.logistic_path), ("newton", solver.logistic_path_newton)):
        W, b = next(iter(f(X, codes, masks, [100.0], n_classes=classes, max_iter=100)))
        loss, gW, gb = solver._loss_grad(X.double(), X.T.double().contiguous(), Y.double(), masks.double(),
                                         masks.sum(1).double(), W.double(), b.double(), 100.0, classes == 2)
        objective[name] = (float(loss), float(max(gW.abs().max(), gb.abs().max())))
    assert objective["newton"][0] < objective["lbfgs"][0] - 1e-3
    assert objective["newton"][1] < 1e-4 < objective["lbfgs"][1]


def test_knn_softmax_votes_by_hand():
    X = np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32)
    y = np.array([0, 0, 1])
    proba = KNNProbe(k=3, temperature=0.5).fit(X, y).predict_proba(np.array([[0.8, 0.6]], np.float32))[0]
    q = np.array([0.8, 0.6])
    sims = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ q
    w = np.exp(sims / 0.5) / np.exp(sims / 0.5).sum()
    assert proba == pytest.approx([w[0] + w[1], w[2]], abs=1e-6)


def test_knn_euclid_11_matches_scikit_learn():
    X, y = gaussian(500, 6, separation=1.5)
    ours = KNNProbe(k=11, metric="euclidean", weights="uniform").fit(X[:400], y[:400]).predict(X[400:])
    theirs = KNeighborsClassifier(11).fit(X[:400], y[:400]).predict(X[400:])
    assert np.array_equal(ours, theirs)


def test_k_larger_than_training_set_is_clipped():
    X, y = gaussian(10, 3, separation=3.0)
    model = KNNProbe(k=50).fit(X, y)
    assert model.k_ == 10 and model.predict_proba(X).shape == (10, 2)


def test_inner_cv_scores_match_scikit_learn_on_the_same_folds():
    """The batched solver and the C choice agree with per-fold scikit-learn pipelines: each inner fold standardised on
    its own training rows, scored by balanced accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medfrag_probe.probes.estimators import inner_folds

    X, y = gaussian(400, 30, separation=1.5, seed=6)
    y = y + 2 * (X[:, 1] > 0.5)  # 4 classes, unbalanced: accuracy and balanced accuracy differ
    X[:, 2] *= 1 + 4 * (np.arange(400) % 3 == 0)  # a feature whose scale differs between the inner folds
    model = LinearProbe(patience=None).fit(X, y)
    expected = []
    for C in sorted(model.Cs):
        scores = []
        for tr, te in inner_folds(y, None, 3, 0):
            fitted = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, tol=1e-8)).fit(X[tr], y[tr])
            scores.append(balanced_accuracy_score(y[te], fitted.predict(X[te])))
        expected.append(np.mean(scores))
    assert np.allclose(model.cv_scores_, expected, atol=0.01)
    assert expected[int(np.argmax(model.cv_scores_))] >= max(expected) - 0.01


@pytest.mark.parametrize("labels, groups, message", [
    (np.zeros(20, int), None, "at least 2 classes"),
    (np.r_[np.zeros(19, int), 1], None, "has only 1 sample"),
    (np.r_[np.zeros(15, int), np.ones(5, int)], np.r_[np.arange(15), np.full(5, 99)], "has only 1 patient"),
])
def test_degenerate_inputs_get_clear_errors(tmp_path, labels, groups, message):
    X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    with pytest.raises(UserError, match=message):
        probe([write_cache(tmp_path / "d.h5", X, labels, groups=groups)], out=tmp_path / "o", figures=False)


def test_small_class_reduces_folds_and_nan_rows_are_excluded(tmp_path):
    X, y = gaussian(200, 6, separation=3.0)
    y[:] = 0
    y[:3] = 1
    X[10:13] = np.nan
    (result,) = probe([write_cache(tmp_path / "d.h5", X, y)], probes="knn", out=tmp_path / "o", figures=False)
    assert result.folds == 3 and "3 folds instead of 5" in result.note
    assert result.n == 197 and result.n_excluded == 3


def test_unknown_probe_and_unmatched_points(tmp_path):
    X, y = gaussian(40, 3, separation=3.0)
    path = write_cache(tmp_path / "c.h5", X, y)
    with pytest.raises(UserError, match="unknown probe 'svm'"):
        probe([path], probes="svm", out=tmp_path / "o")
    with pytest.raises(UserError, match="valid: layer/mean"):
        probe([path], points="vision.*", out=tmp_path / "o")


def test_cka_properties():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 20))
    Q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    assert linear_cka(X, X) == pytest.approx(1.0)
    assert linear_cka(X, 3.0 * X @ Q) == pytest.approx(1.0)
    assert linear_cka(X, rng.normal(size=(300, 20))) < 0.2


def test_probe_cli_on_an_extracted_cache_with_curves_and_cka(tmp_path, capsys):
    from medfrag_probe.cli import main
    from medfrag_probe.extraction import extract

    data = "synth:brain-mri?n=64&size=48&difficulty=0"
    a = extract("tiny:clip", data, points="vision.block.01,vision.post", poolings="mean", out=tmp_path / "a.h5",
                workers=0).path
    b = extract("tiny:siglip", data, points="vision.block.01,vision.post", poolings="mean", out=tmp_path / "b.h5",
                workers=0).path
    with pytest.raises(SystemExit) as exc:
        main(["--quiet", "probe", str(a), str(b), "--out", str(tmp_path / "p"), "--probes", "knn",
              "--replicates", "100", "--curves", "--cka", "--folds", "4"])
    assert exc.value.code == 0
    out = tmp_path / "p"
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["split"] == "group-kfold" and r["folds"] == 4 for r in records)
    assert (out / "curves__a.png").is_file() and (out / "cka__a__b.png").is_file()
    cka = json.loads((out / "cka__a__b.json").read_text())
    assert cka["n"] == 64 and len(cka["cka"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["probe", str(a), "--ks", "0"])
    assert exc.value.code == 2


def test_paired_difference_detects_a_small_consistent_gain(tmp_path):
    """Two representations of the same samples, B a little better: the paired CI excludes 0."""
    from medfrag_probe.probes.compare import paired_difference

    X, y = gaussian(1200, 8, separation=1.6, seed=7)
    better = X.copy()
    better[:, 0] += 0.15 * (2 * y - 1)  # a slightly larger class shift: genuinely, a little, more separable
    groups = np.arange(1200) // 3
    path = write_cache(tmp_path / "c.h5", {"weak": X, "strong": better}, y, groups=groups)
    results = {r.point: r for r in probe([path], probes="linear", out=tmp_path / "o", figures=False, controls=False)}
    diff = paired_difference(results["strong"].predictions, results["weak"].predictions)
    assert diff["n"] == 1200 and diff["delta"] > 0 and diff["delta_ci"][0] > 0
    # pairing is what makes the gain visible: the two marginal intervals overlap, the paired one excludes 0
    weak, strong = results["weak"].balanced_accuracy_ci, results["strong"].balanced_accuracy_ci
    assert strong[0] < weak[1]
    assert diff["delta_ci"][1] - diff["delta_ci"][0] < 0.6 * ((strong[1] - strong[0]) + (weak[1] - weak[0]))
    with pytest.raises(UserError, match="unknown metric"):
        paired_difference(results["weak"].predictions, results["weak"].predictions, metric="kappa")
    # each side's replicates are widened by its own result's design effect, read from results.jsonl
    records = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    for effect, name in (({}, "plain"), ({"balanced_accuracy": 9.0}, "wide")):
        for r in records:
            r["design_effect"] = effect
        (tmp_path / "o" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        width = np.diff(paired_difference(results["strong"].predictions, results["weak"].predictions)["delta_ci"])
        if name == "plain":
            plain_width = width[0]
    assert width[0] == pytest.approx(inflation(9.0, PERMUTATIONS) * plain_width, rel=1e-6)  # 3 x t(P - 1) / z


def test_knn_memory_bounded_chunks_give_the_same_answer():
    X, y = gaussian(3000, 16, separation=2.0)
    whole = KNNProbe(chunk_size=10_000).fit(X[:2000], y[:2000]).predict_proba(X[2000:])
    bounded = KNNProbe(memory_mb=1).fit(X[:2000], y[:2000])  # 1 MiB -> 131 queries per chunk
    np.testing.assert_allclose(bounded.predict_proba(X[2000:]), whole, rtol=1e-6)


def test_knn_permutation_refits_reuse_the_folds_search_and_a_refit_searches_again():
    """The permutation refits ask for the neighbours the fold's own predictions found: relabelling the training rows
    with their own labels gives the fold's vote shares, other labels give what a fresh probe gives, and after `fit`
    on other rows the kept search is not reused."""
    X, y = gaussian(900, 16, separation=1.0)
    codes = np.stack([y[:600], np.random.default_rng(0).permutation(y[:600])])
    probe = KNNProbe(memory_mb=1).fit(X[:600], y[:600])
    own = probe.proba_at(X[600:], [None, 5])
    again = probe.relabelled_at(X[:600], codes, X[600:], [None, 5], 2)
    assert probe._last_search is not None
    for k in (None, 5):
        np.testing.assert_allclose(again[k][0], own[k], rtol=1e-6)
        fresh = KNNProbe(memory_mb=1).fit(X[:600], y[:600]).relabelled_at(X[:600], codes, X[600:], [k], 2)[k]
        np.testing.assert_allclose(again[k], fresh, rtol=1e-6)
    probe.fit(X[300:], y[300:])  # other training rows, the same queries' bytes
    np.testing.assert_allclose(probe.proba_at(X[600:], [None])[None],
                               KNNProbe().fit(X[300:], y[300:]).predict_proba(X[600:]), rtol=1e-6)


def test_learning_curves_leave_out_nan_rows_as_probe_does(tmp_path):
    from medfrag_probe.probes.curves import learning_curves

    X, y = gaussian(300, 6, separation=3.0)
    X[5:9] = np.nan
    rows = learning_curves(write_cache(tmp_path / "c.h5", X, y), [("layer", "mean")], probes=["knn"], sizes=(4, None),
                           replicates=100)
    assert [r["n_excluded"] for r in rows] == [4, 4]
    assert all(np.isfinite(r["balanced_accuracy"]) and r["balanced_accuracy"] > 0.8 for r in rows)


def test_calibration_bench_small_version():
    """The bench's generators mean what they say: no signal scores at chance, a known signal near its Bayes level."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("calibration", Path(__file__).parent / "bench" / "calibration.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    X, y, groups = bench.dataset(0, separation=0.0)
    assert X.shape == (480, 32) and len(np.unique(groups)) == 80
    assert all(len(set(y[groups == g])) == 1 for g in range(80))  # labels per patient
    result = bench.calibration(8, probes=("knn",), replicates=200)
    assert abs(result["null_mean"]["knn"] - 0.5) < 0.05
    assert result["bayes_accuracy"] == pytest.approx(0.7734, abs=1e-3)
    assert result["null_mean"]["knn"] + 0.04 < result["signal_mean"]["knn"] < result["bayes_accuracy"] + 0.03
    assert set(result["null_exclusion"]) == set(result["coverage"]) == {"knn"}


def test_an_all_nan_point_is_skipped_and_the_others_kept(tmp_path, capsys):
    X, y = gaussian(200, 6, separation=3.0)
    broken = np.full_like(X, np.nan)
    path = write_cache(tmp_path / "c.h5", {"good": X, "broken": broken}, y)
    results = probe([path], probes="linear", out=tmp_path / "o", figures=False, controls=False, replicates=50)
    assert [r.point for r in results] == ["good"] and results[0].balanced_accuracy > 0.9
    assert "broken/mean linear: skipped, every row has NaN or inf values" in capsys.readouterr().err
    assert (tmp_path / "o" / "results.jsonl").read_text().count("\n") == 1
    with pytest.raises(UserError, match="every selected"):
        probe([write_cache(tmp_path / "b.h5", {"broken": broken}, y)], probes="knn", out=tmp_path / "b",
              figures=False)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("classes, absent", [(2, False), (4, False), (4, True)])
def test_point_scores_equal_scikit_learn(classes, absent):
    """The NumPy point scores equal scikit-learn's (ties in scores, and a class absent from the labels)."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

    from medfrag_probe.probes.metrics import point_scores

    rng = np.random.default_rng(classes + absent)
    y = rng.integers(0, classes - 1 if absent else classes, 300)
    proba = rng.dirichlet(np.ones(classes), 300).round(2)  # rounding makes ties
    ours = point_scores(y, proba, classes)
    pred = proba.argmax(1)
    labels = np.arange(classes)
    assert ours["confusion"] == confusion_matrix(y, pred, labels=labels).tolist()
    assert ours["macro_f1"] == pytest.approx(f1_score(y, pred, labels=labels, average="macro", zero_division=0))
    assert ours["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    present = np.unique(y)
    expected = (roc_auc_score(y, proba[:, 1]) if classes == 2 else
                np.mean([roc_auc_score(y == k, proba[:, k]) for k in present]))
    assert ours["auroc"] == pytest.approx(expected, abs=1e-6)


def test_relabelled_linear_refits_equal_separate_fits_at_the_chosen_c():
    """The batched permutation refits solve exactly what a separate fit at the same C on those labels solves."""
    X, y = gaussian(240, 8, separation=2.0, seed=3)
    model = LinearProbe(Cs=[0.1]).fit(X[:200], y[:200])
    other = np.random.default_rng(0).permutation(y[:200])
    together = model.relabelled_proba(X[:200], np.stack([y[:200], other]), X[200:], 2)
    for codes, proba in zip((y[:200], other), together):
        alone = LinearProbe(Cs=[0.1]).fit(X[:200], codes).predict_proba(X[200:])
        assert np.abs(proba - alone).max() < 2e-3


def test_relabelled_knn_votes_equal_a_refit_on_those_labels():
    X, y = gaussian(150, 6, separation=1.0, seed=4)
    model = KNNProbe(k=7).fit(X[:100], y[:100])
    other = np.random.default_rng(1).permutation(y[:100])
    votes = model.relabelled_proba(X[100:], np.stack([y[:100], other]), [3, 7], 2)
    for k in (3, 7):
        for codes, proba in zip((y[:100], other), votes[k]):
            assert np.allclose(proba, KNNProbe(k=k).fit(X[:100], codes).predict_proba(X[100:]), atol=1e-5)


def _clustered_null(seed, patients=80, per=6, dim=32):
    """No class signal; a random offset per patient shared by its images; labels per patient."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, patients)
    X = np.repeat(rng.normal(size=(patients, dim)), per, 0) + rng.normal(size=(patients * per, dim))
    return X.astype(np.float32), np.repeat(label, per), np.repeat(np.arange(patients), per)


def test_knn_intervals_widen_to_the_spread_of_the_score_across_datasets(tmp_path):
    """On null data with patient clusters, the plain bootstrap's standard error is well below the real spread of the
    kNN score across datasets; the design-effect interval matches it (tolerance for 40 datasets)."""
    estimates, plain, widened, effects = [], [], [], []
    for seed in range(40):
        path = write_cache(tmp_path / "c.h5", *_clustered_null(seed)[:2], groups=_clustered_null(seed)[2])
        (r,) = probe([path], probes="knn", out=tmp_path / "o", controls=False, figures=False, seed=seed,
                     replicates=300)
        (p,) = probe([path], probes="knn", out=tmp_path / "p", controls=False, figures=False, seed=seed,
                     replicates=300, permutations=0)
        assert r.balanced_accuracy == p.balanced_accuracy and r.permutations == PERMUTATIONS and p.design_effect == {}
        estimates.append(r.balanced_accuracy)
        widened.append((r.balanced_accuracy_ci[1] - r.balanced_accuracy_ci[0]) / (2 * 1.96))
        plain.append((p.balanced_accuracy_ci[1] - p.balanced_accuracy_ci[0]) / (2 * 1.96))
        effects.append(r.design_effect["balanced_accuracy"])
    spread = np.std(estimates)
    assert np.mean(plain) / spread < 0.85  # what the bootstrap alone misses
    assert 0.8 < np.mean(widened) / spread < 1.3
    assert np.median(effects) > 1.3


def test_permutations_must_be_zero_or_at_least_two(tmp_path):
    X, y, g = _clustered_null(0, patients=20)
    path = write_cache(tmp_path / "c.h5", X, y, groups=g)
    with pytest.raises(UserError, match="`permutations` must be 0"):
        probe([path], out=tmp_path / "o", permutations=1, figures=False)


def test_stratified_group_folds_are_scikit_learns_fold_for_fold():
    """The vectorised stratified group k-fold gives scikit-learn's StratifiedGroupKFold(shuffle=True) folds exactly,
    over random sizes, class counts, patients per class, label schemes (per image, per patient), string patient
    ids and seeds; inputs with fewer members in a class than folds go to scikit-learn itself."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    from medfrag_probe.probes.splits import stratified_group_folds

    rng = np.random.default_rng(5)
    compared = 0
    for trial in range(80):
        n, classes, per = int(rng.integers(30, 400)), int(rng.integers(2, 7)), int(rng.integers(1, 7))
        groups = rng.integers(0, max(2, n // per), n)
        y = rng.integers(0, classes, n) if trial % 2 else np.repeat(rng.integers(0, classes, n), per)[:n]
        groups = groups.astype(str) if trial % 3 == 0 else groups
        k, seed = int(rng.integers(2, 7)), int(rng.integers(0, 10_000))
        if trial == 0:
            y[:] = 0
            y[:2] = 1  # a class with 2 members and k > 2 below: scikit-learn's own warning path
            k = 4
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                want = list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(y, y, groups))
            except ValueError:
                continue
            got = stratified_group_folds(y, groups, k, seed)
        assert len(got) == len(want)
        for (train, test), (train_sk, test_sk) in zip(got, want):
            np.testing.assert_array_equal(train, train_sk)
            np.testing.assert_array_equal(test, test_sk)
        compared += 1
    assert compared > 60


def _design_effects_one_refit_at_a_time(labels, probas, weights, groups, n_classes):
    """The design effect written out per refit with the public per-result statistics (the reference)."""
    from medfrag_probe.probes.metrics import clustered_auroc_variance, point_scores

    values, variances = {}, {}
    for labels_p, proba_p in zip(labels, probas):
        point = point_scores(labels_p, proba_p, n_classes)
        variance = {name: np.nanvar(v) for name, v in
                    bootstrap_scores(labels_p, proba_p, weights, n_classes, auroc=False).items()}
        variance["auroc"] = clustered_auroc_variance(labels_p, proba_p, groups, n_classes)
        for name, var in variance.items():
            if point[name] is None or not np.isfinite(point[name]) or var is None:
                continue
            values.setdefault(name, []).append(point[name])
            variances.setdefault(name, []).append(var)
    return {name: float(np.var(v, ddof=1) / np.mean(variances[name])) for name, v in values.items()
            if len(v) > 1 and np.mean(variances[name]) > 0}


@pytest.mark.parametrize("classes, per, tied, absent", [(2, 1, False, False), (2, 5, True, False),
                                                        (4, 6, False, False), (4, 3, True, True),
                                                        (3, 4, True, True)])
def test_design_effects_of_all_refits_at_once_equal_those_computed_refit_by_refit(classes, per, tied, absent):
    """The vectorised design effect (every refit's scores, bootstrap variances and clustered DeLong variance at once)
    equals the per-refit computation with the public statistics, with tied scores (kNN vote shares) and classes
    missing from some refits' labels (a 2-class refit of a 4-class task, one with a single class)."""
    from medfrag_probe.probes.metrics import PERMUTATION_REPLICATES, design_effects

    rng = np.random.default_rng(classes * 100 + per)
    n, P = 240, 12
    groups = np.arange(n) // per
    labels = np.stack([np.repeat(rng.integers(0, classes, n // per), per) for _ in range(P)])
    if absent:
        labels[0] = np.minimum(labels[0], 1)  # two classes only
        labels[1] = 0  # one class: no AUROC, balanced accuracy over one class
    logits = rng.normal(size=(P, n, classes)) + 0.5 * np.eye(classes)[labels]
    probas = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
    if tied:
        probas = np.round(probas * 5) / 5
    probas = probas.astype(np.float32)
    weights = bootstrap_weights(groups, replicates=PERMUTATION_REPLICATES)
    got = design_effects(labels, probas, weights, groups.astype(str), classes)
    want = _design_effects_one_refit_at_a_time(labels, probas, weights, groups, classes)
    assert set(got) == set(want) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-5), name


@pytest.mark.parametrize("classes, per", [(2, 1), (2, 6), (4, 6)])
def test_clustered_auroc_variance_matches_the_patient_bootstrap(classes, per):
    """The design effect's AUROC denominator (clustered DeLong) estimates what the patient bootstrap does."""
    from medfrag_probe.probes.metrics import clustered_auroc_variance

    rng = np.random.default_rng(classes * 10 + per)
    n = 480
    groups = np.arange(n) // per
    y = np.repeat(rng.integers(0, classes, n // per), per)
    logits = rng.normal(size=(n, classes)) + 0.8 * np.eye(classes)[y] + np.repeat(
        rng.normal(size=(n // per, classes)), per, 0)
    proba = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 2)  # with ties
    boot = bootstrap_scores(y, proba, bootstrap_weights(groups, replicates=4000), classes)["auroc"]
    assert clustered_auroc_variance(y, proba, groups, classes) == pytest.approx(boot.var(), rel=0.12)


def _forked_run_cache(tmp_path):
    """Two points x 2 poolings of grouped 3-class data, plus an all-NaN point: five jobs per probe."""
    rng = np.random.default_rng(5)
    y = np.repeat(rng.integers(0, 3, 50), 4)
    groups = np.repeat([f"p{i}" for i in range(50)], 4)
    X = {f"block.{i}": rng.normal(size=(200, 8)).astype(np.float32) + (i + 1) * np.eye(3, 8, dtype=np.float32)[y]
         for i in range(2)}
    embeddings = {f"{p}/{q}": v + (q == "cls") for p, v in X.items() for q in ("mean", "cls")}
    embeddings["broken/mean"] = np.full((200, 8), np.nan, np.float32)
    return write_embeddings(tmp_path / "c.h5", ids=[f"s{i}" for i in range(200)], labels=y,
                            classes=["a", "b", "c"], embeddings=embeddings, groups=groups)


def test_forked_workers_give_the_results_of_one_process(tmp_path, capsys):
    """`workers=2` (forked processes) and `workers=1` give the same records, predictions and result order, and the
    workers' status lines reach this process's stderr."""
    path = _forked_run_cache(tmp_path)
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        results = probe([path], probes="linear,knn", out=out, figures=False, ks=[5, 20], replicates=200,
                        workers=workers)
        runs[workers] = [{k: v for k, v in r.record().items() if k not in ("seconds", "predictions")}
                         for r in results]
        assert "broken/mean linear: skipped, every row has NaN or inf values" in capsys.readouterr().err
        runs[workers, "files"] = {p.name: p.read_text() for p in sorted((out / "predictions").iterdir())}
    assert len(runs[1]) == 12 and json.loads(json.dumps(runs[1])) == runs[2]
    assert runs[1, "files"] == runs[2, "files"] and len(runs[1, "files"]) == 12


def test_worker_counts(tmp_path, monkeypatch):
    """One worker per usable core (no more than torch's threads, or the jobs) where fits are small; one process on a
    GPU, for large fits, or for a single job; a count below 1 is a clear error."""
    import torch

    from medfrag_probe.cache import EmbeddingCache
    from medfrag_probe.devices import usable_cores
    from medfrag_probe.probes import run

    task = run._task(EmbeddingCache(_forked_run_cache(tmp_path)), folds=5, seed=0)
    jobs = [(task, p, q, "linear") for p, q in task.cache.points()]
    assert run._workers(None, "cpu", jobs) == min(usable_cores(), torch.get_num_threads(), len(jobs))
    assert run._workers(3, "cpu", jobs) == 3 and run._workers(9, "cpu", jobs) == len(jobs)
    assert run._workers(4, "cuda:0", jobs) == 1 and run._workers(4, "cpu", jobs[:1]) == 1
    monkeypatch.setattr(run, "SMALL_WORK", 1000)  # 200 rows x 8 features x 4 problems x 2 logits = 12,800
    assert run._workers(None, "cpu", jobs) == 1
    with pytest.raises(UserError, match="`workers` must be >= 1"):
        probe([task.cache.path], out=tmp_path / "o", figures=False, workers=0)


@pytest.mark.skipif(sys.platform != "linux", reason="forked workers run on Linux only")
def test_a_worker_that_dies_is_a_clear_error_not_a_hang(tmp_path):
    import os

    from medfrag_probe.probes.estimators import PROBES

    class Dies(LinearProbe):
        def fit_fold(self, X, y, **kw):
            os._exit(9)  # as a worker killed for memory

    PROBES["test-dies"] = lambda *, device="cpu", seed=0: Dies()
    try:
        with pytest.raises(UserError, match="a probe worker process died"):
            probe([_forked_run_cache(tmp_path)], probes="test-dies", out=tmp_path / "o", figures=False, workers=2)
    finally:
        dict.pop(PROBES, "test-dies")
