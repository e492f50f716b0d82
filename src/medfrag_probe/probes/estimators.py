"""Probes as scikit-learn estimators: `LinearProbe` (nested choice of C) and `KNNProbe` (cosine, softmax votes).

Both follow the estimator contract: `__init__` stores keyword arguments, learned state ends in `_`, `fit` returns
self, and they work with `clone`, pipelines and `cross_val_score`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted, validate_data

from .._registry import Registry
from ..devices import resolve_device
from .solver import logistic_path, logistic_path_cpu, logistic_path_newton
from .splits import stratified_group_folds

DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 8))


SMALL_WORK = 20_000_000  # rows x features x problems x logit columns below which one CPU thread is fastest
SCIPY_WORK = 2_000_000  # ... below which SciPy's L-BFGS-B on NumPy beats torch's per-operation overhead (about 2x)
NEWTON_PARAMS = 520  # parameters per problem, (features + 1) x logit columns, up to which CPU solves use Newton


def solve_work(rows: int, features: int, problems: int, n_classes: int) -> int:
    """The size of a batched logistic solve, rows x features x problems x logit columns, that `SMALL_WORK` and
    `SCIPY_WORK` are measured in."""
    return rows * features * problems * max(n_classes - 1, 1)


@contextlib.contextmanager
def cpu_threads(device: torch.device, work: float):
    """Run small CPU solves on one torch thread and one BLAS thread (NumPy's, through threadpoolctl). Their matrix
    products take microseconds, so extra threads only add wake-up and synchronisation, and on a machine shared with
    other jobs they spin against them (measured: a 240 x 64 probe fit took 0.23 s on one torch thread, 0.60 s on
    two, with one other job running; an 800 x 64 fit by SciPy took 0.15 s on one BLAS thread, 0.46 s on two, alone).
    Large solves keep the thread counts (`torch.set_num_threads`, or OMP_NUM_THREADS, sets them)."""
    if device.type != "cpu" or work >= SMALL_WORK:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _blas().limit(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _blas():
    """One threadpoolctl controller (finding the loaded BLAS libraries costs ~6 ms; do it once)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Standardise (fit on the training rows), L2 logistic regression (L-BFGS), C chosen by inner group CV, refit.

    With `fit(X, y, groups=...)` C is chosen by `inner_folds`-fold stratified group CV on the training rows (balanced
    accuracy, the metric results report; ties to the stronger regularisation), each inner fold standardised on its
    own training rows, as the refit is on all of them; with `fit(X, y, X_val=..., y_val=...)` it is chosen on the
    given validation rows. A single value in `Cs` skips the search. The grid is walked from strong to weak
    regularisation with warm starts, and the walk stops once the held-out score has stayed below its best for
    `patience` consecutive values (`patience=None` walks the whole grid): the weakly regularised end is the slow one
    and rarely wins.

        probe = LinearProbe().fit(X_train, y_train, groups=patients)
        probe.C_, probe.predict_proba(X_test)

    Inside a scikit-learn `Pipeline` (or `cross_validate`), the patient groups reach the inner C search through
    metadata routing: `LinearProbe` requests `groups` for `fit` by default, so with
    `sklearn.set_config(enable_metadata_routing=True)`, `make_pipeline(StandardScaler(), LinearProbe()).fit(X, y,
    groups=patients)` chooses C by grouped inner folds, exactly as a bare `fit` does.
    """

    __metadata_request__fit = {"groups": True}  # route patient groups to the inner C search by default

    def __init__(self, *, Cs: Sequence[float] = DEFAULT_CS, inner_folds: int = 3, max_iter: int = 500,
                 tol: float = 1e-4, patience: int | None = 2, device: str = "cpu", random_state: int = 0):
        self.Cs = Cs
        self.inner_folds = inner_folds
        self.max_iter = max_iter
        self.tol = tol
        self.patience = patience
        self.device = device
        self.random_state = random_state

    def fit(self, X, y, groups=None, X_val=None, y_val=None, folds=None):
        """Fit on (X, y); returns self. `folds` are precomputed inner (train, test) index pairs (optional)."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("LinearProbe needs at least 2 classes in the training rows")
        self.mean_ = X.mean(0)
        self.scale_ = X.std(0)
        self.scale_[self.scale_ == 0] = 1.0
        Cs = sorted(float(c) for c in self.Cs)
        rows, masks, checks = self._problems(X, codes, groups, X_val, y_val, len(Cs), folds)
        dev = resolve_device(self.device)
        Xn = (rows - self.mean_) / self.scale_
        yn = np.concatenate([codes, checks[1]]) if checks[1] is not None else codes
        Xt, yt = torch.from_numpy(Xn).to(dev), torch.from_numpy(yn).to(dev)
        scales = torch.from_numpy(self._penalty_scales(X, masks)).to(dev)
        path, scores = [], []
        work = solve_work(*Xt.shape, len(masks), len(self.classes_))
        solve = _solver(dev, work, X.shape[1], len(self.classes_))
        with cpu_threads(dev, work):
            for W, b in solve(Xt, yt.long(), torch.from_numpy(masks).to(dev), Cs, n_classes=len(self.classes_),
                              max_iter=self.max_iter, tol=self.tol, penalty_scales=scales):
                path.append((W, b))
                if checks[0]:
                    scores.append(self._score(Xn, yn, W, b, checks[0]))
                    if _past_peak(scores, self.patience):
                        break
        self.cv_scores_ = np.array(scores)
        if checks[0]:
            best = int(np.argmax(self.cv_scores_))  # first maximum: the strongest regularisation among ties
        else:  # nothing held out to choose on (one C, or too few groups per class): the C nearest 1
            best = int(np.argmin(np.abs(np.log10(Cs))))
        self.C_ = Cs[best]
        W, b = path[best]
        self.coef_ = W[-1].T.cpu().numpy()
        self.intercept_ = b[-1].cpu().numpy()
        return self

    # -- the fold protocol `probes.run` and `probes.curves` drive every registered probe through --------------------
    sweeps_k = False  # one fit answers one setting (kNN: every k at once)

    def fit_fold(self, X, y, *, groups=None, folds=None, X_val=None, y_val=None, search: bool = True):
        """Fit on one outer fold's training rows: C chosen on the validation rows when given, else by the inner
        group folds (`folds`, or built from `groups`); `search=False` fits C = 1 without a search."""
        if not search:
            self.Cs = (1.0,)
            return self.fit(X, y)
        if X_val is not None and len(X_val):
            return self.fit(X, y, X_val=X_val, y_val=y_val)
        return self.fit(X, y, groups=groups, folds=folds)

    def fold_hyper(self) -> dict:
        """What the fold chose: C and its held-out (training-side) score, None when nothing was held out."""
        return {"C": self.C_, "val_score": float(self.cv_scores_.max()) if len(self.cv_scores_) else None}

    def proba_at(self, X, ks) -> dict:
        """Class probabilities of `X` (columns: the fold's classes), keyed like `ks` (a linear probe has no k)."""
        proba = self.predict_proba(X)
        return {k: proba for k in ks}

    def relabelled_at(self, X_train, codes: np.ndarray, X_test, ks, n_classes: int) -> dict:
        """`relabelled_proba` keyed like `ks`."""
        proba = self.relabelled_proba(X_train, codes, X_test, n_classes)
        return {k: proba for k in ks}

    def relabelled_proba(self, X, codes: np.ndarray, X_test, n_classes: int) -> np.ndarray:
        """Class probabilities (P, n_test, n_classes) of P refits on the training rows `X` (the rows of the last
        `fit`) at the chosen C and standardisation, one per label vector in `codes` (P, n; codes 0..n_classes-1),
        solved together. The permutation refits behind the probe's intervals: same data, same protocol, no signal."""
        check_is_fitted(self, "coef_")
        X = np.asarray(X, dtype=np.float32)
        dev = resolve_device(self.device)
        Xt = torch.from_numpy((X - self.mean_) / self.scale_).to(dev)
        masks = torch.ones(len(codes), len(X), device=dev)
        work = solve_work(*Xt.shape, len(codes), n_classes)
        with cpu_threads(dev, work):
            solve = _solver(dev, work, X.shape[1], n_classes)
            W, b = next(iter(solve(Xt, torch.from_numpy(np.asarray(codes)).long().to(dev), masks, [self.C_],
                                   n_classes=n_classes, max_iter=self.max_iter, tol=self.tol)))
        Z = torch.from_numpy((np.asarray(X_test, dtype=np.float32) - self.mean_) / self.scale_).to(dev)
        return _probabilities((torch.einsum("nd,pdk->pnk", Z, W) + b[:, None, :]).cpu().numpy())

    def _penalty_scales(self, X, masks) -> np.ndarray:
        """(P, D) squared ratio of each problem's own feature scale to the shared one (1 for the refit): each inner
        fold is standardised on its own training rows (see `solver`)."""
        scales = np.ones((len(masks), X.shape[1]), np.float32)
        for p, mask in enumerate(masks[:, :len(X)]):
            if mask.all():
                continue
            own = X[mask > 0].std(0)
            scales[p] = np.where(own > 0, own / self.scale_, 1.0) ** 2
        return scales

    def _problems(self, X, codes, groups, X_val, y_val, n_cs, folds):
        """Rows to solve on, a 0/1 mask per problem (inner folds then the refit), and the held-out checks."""
        n = len(X)
        if X_val is not None:
            val_codes = np.searchsorted(self.classes_, np.asarray(y_val))
            rows = np.concatenate([X, np.asarray(X_val, dtype=np.float32)])
            mask = np.zeros((1, len(rows)), np.float32)
            mask[0, :n] = 1
            return rows, mask, ([np.arange(n, len(rows))], val_codes)
        if n_cs == 1:
            return X, np.ones((1, n), np.float32), ([], None)
        if folds is None:
            folds = inner_folds(codes, groups, self.inner_folds, self.random_state)
        if not folds:  # too few groups per class to cross-validate: keep the middle of the grid
            return X, np.ones((1, n), np.float32), ([], None)
        masks = np.zeros((len(folds) + 1, n), np.float32)
        for i, (train, _) in enumerate(folds):
            masks[i, train] = 1
        masks[-1] = 1
        return X, masks, ([test for _, test in folds], None)

    @staticmethod
    def _score(X: np.ndarray, y: np.ndarray, W: torch.Tensor, b: torch.Tensor, held_out) -> float:
        """Mean held-out balanced accuracy of the problems of one C (features and codes in NumPy: a few hundred
        held-out rows cost microseconds there, against a millisecond of torch calls)."""
        W, b = W.detach().cpu().numpy(), b.detach().cpu().numpy()
        K = max(W.shape[-1], 2)
        accs = []
        for p, rows in enumerate(held_out):
            logits = X[rows] @ W[p] + b[p]
            pred = (logits[:, 0] > 0).astype(np.int64) if W.shape[-1] == 1 else logits.argmax(1)
            truth = y[rows]
            total = np.bincount(truth, minlength=K)
            hits = np.bincount(truth[pred == truth], minlength=K)
            present = total > 0
            accs.append((hits[present] / total[present]).mean())
        return float(np.mean(accs))

    def decision_function(self, X) -> np.ndarray:
        """Logits: (n,) for binary problems, (n, K) otherwise."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        logits = ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_
        return logits[:, 0] if logits.shape[1] == 1 else logits

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, K)."""
        logits = self.decision_function(X)
        return _probabilities(logits[:, None] if logits.ndim == 1 else logits)

    def predict(self, X) -> np.ndarray:
        """Most probable class."""
        check_is_fitted(self, "coef_")
        return self.classes_[self.predict_proba(X).argmax(1)]


def _solver(device: torch.device, work: float, features: int, n_classes: int):
    """On the CPU, for small solves (`SMALL_WORK`): Newton's method where problems have few parameters
    (`NEWTON_PARAMS`; one Newton step costs about as much as parameters / 2 L-BFGS steps, worth it only where L-BFGS
    would need many), else SciPy's L-BFGS-B for the smallest (`SCIPY_WORK`); the batched torch path otherwise."""
    if device.type != "cpu" or work >= SMALL_WORK:
        return logistic_path
    if (features + 1) * (1 if n_classes == 2 else n_classes) <= NEWTON_PARAMS:
        return logistic_path_newton
    return logistic_path_cpu if work < SCIPY_WORK else logistic_path


def _probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits (..., K'): a sigmoid over one binary column, else a softmax."""
    if logits.shape[-1] == 1:
        p = 0.5 * (1 + np.tanh(0.5 * logits[..., 0]))  # the sigmoid, without overflow at large logits
        return np.stack([1 - p, p], axis=-1)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _past_peak(scores: list[float], patience: int | None) -> bool:
    """Whether the last `patience` scores all fall below the best one seen before them."""
    if patience is None or len(scores) <= patience:
        return False
    return max(scores[-patience:]) < max(scores[:-patience])


def inner_folds(codes: np.ndarray, groups, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified group folds for choosing hyper-parameters; fewer folds when a class has few groups."""
    codes = np.asarray(codes)
    if groups is None or len(np.unique(groups)) == len(codes):
        k = min(k, int(np.bincount(codes).min()))
        if k < 2:
            return []
        return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(codes, codes))
    groups = np.asarray(groups)
    per_class = min(len(np.unique(groups[codes == c])) for c in np.unique(codes))
    k = min(k, per_class)
    if k < 2:
        return []
    return stratified_group_folds(codes, groups, k, seed)


class KNNProbe(ClassifierMixin, BaseEstimator):
    """k nearest neighbours on L2-normalised features (cosine), votes weighted by softmax(sim / temperature).

    `metric="euclidean", weights="uniform"` gives a plain majority vote (the `knn-euclid-11` preset). k larger than
    the training set is clipped to it. Neighbour search runs in chunks of queries whose similarity block stays
    under `memory_mb` (or of `chunk_size` queries when given), so memory is bounded whatever the data size.
    """

    def __init__(self, *, k: int = 20, temperature: float = 0.07, metric: str = "cosine", weights: str = "softmax",
                 chunk_size: int | None = None, memory_mb: int = 256, device: str = "cpu"):
        self.k = k
        self.temperature = temperature
        self.metric = metric
        self.weights = weights
        self.chunk_size = chunk_size
        self.memory_mb = memory_mb
        self.device = device

    def fit(self, X, y):
        """Store the (normalised) training features; returns self."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        if self.metric not in ("cosine", "euclidean"):
            raise ValueError(f"unknown metric {self.metric!r}; valid: cosine, euclidean")
        if self.weights not in ("softmax", "uniform"):
            raise ValueError(f"unknown weights {self.weights!r}; valid: softmax, uniform")
        self.classes_, codes = np.unique(y, return_inverse=True)
        dev = resolve_device(self.device)
        self._last_search = None  # neighbours found against the previous training rows
        self.train_ = self._prepare(torch.from_numpy(X).to(dev))
        self.codes_ = torch.from_numpy(codes).to(dev)
        self.k_ = int(min(self.k, len(X)))
        self.k_max_ = len(X)  # no k reaches past the training rows
        return self

    def _prepare(self, X: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(X, dim=1) if self.metric == "cosine" else X

    def predict_proba(self, X) -> np.ndarray:
        """Vote shares (n, K) of the k nearest training rows."""
        return self.predict_proba_sweep(X, [self.k_])[self.k_]

    def predict_proba_sweep(self, X, ks: Sequence[int]) -> dict[int, np.ndarray]:
        """Vote shares for several k from one neighbour search (the k sweep)."""
        votes = self._vote_sweep(X, self.codes_[None], ks, len(self.classes_))
        return {k: v[0] for k, v in votes.items()}

    def relabelled_proba(self, X, codes: np.ndarray, ks: Sequence[int], n_classes: int) -> dict[int, np.ndarray]:
        """Vote shares {k: (P, n, n_classes)} of the queries `X` with the training rows relabelled by each row of
        `codes` (P, n_train; codes 0..n_classes-1): one neighbour search serves every label vector and every k."""
        return self._vote_sweep(X, torch.from_numpy(np.asarray(codes)).long().to(self.train_.device), ks, n_classes)

    # -- the fold protocol (see `LinearProbe.fit_fold`) -------------------------------------------------------------
    sweeps_k = True

    def fit_fold(self, X, y, **_ignored):
        """Fit on one outer fold's training rows (a kNN probe has nothing to choose on held-out rows)."""
        return self.fit(X, y)

    def fold_hyper(self) -> dict:
        return {}

    def proba_at(self, X, ks) -> dict:
        """Vote shares of `X` for each k in `ks` (None: the probe's own k), from one neighbour search."""
        sweep = self.predict_proba_sweep(X, [k or self.k for k in ks])
        return {k: sweep[min(k or self.k, self.k_max_)] for k in ks}

    def relabelled_at(self, X_train, codes: np.ndarray, X_test, ks, n_classes: int) -> dict:
        """`relabelled_proba` for each k in `ks` (the training rows are those of the last `fit`)."""
        votes = self.relabelled_proba(X_test, codes, [k or self.k for k in ks], n_classes)
        return {k: votes[min(k or self.k, self.k_max_)] for k in ks}

    def _vote_sweep(self, X, codes: torch.Tensor, ks: Sequence[int], n_classes: int) -> dict[int, np.ndarray]:
        """Vote shares {k: (P, n, n_classes)} under each label vector of `codes` (P, n_train), for every k, from
        one chunked neighbour search."""
        check_is_fitted(self, "train_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        ks = sorted({int(min(k, len(self.codes_))) for k in ks})
        out = {k: [] for k in ks}
        per_query = 4 * len(self.codes_) + 16 * len(codes) * ks[-1]  # similarities, then gathered codes and weights
        chunk = self.chunk_size or max(1, min(8192, (self.memory_mb << 20) // per_query))
        with cpu_threads(self.train_.device, len(X) * self.train_.numel()):
            all_sims, all_idx = self._search(X, ks[-1], chunk)
            for start in range(0, len(X), chunk):
                sims, idx = all_sims[start:start + chunk], all_idx[start:start + chunk]
                for k in ks:
                    weight = self._weights(sims[:, :k])
                    votes = torch.zeros(len(codes), len(sims), n_classes, dtype=weight.dtype, device=weight.device)
                    votes.scatter_add_(2, codes[:, idx[:, :k]], weight.expand(len(codes), -1, -1).contiguous())
                    out[k].append(votes.cpu().numpy())
        return {k: np.concatenate(v, axis=1) for k, v in out.items()}

    def _search(self, X: np.ndarray, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Similarities and indices (n, k) of the k nearest training rows of each query, searched in chunks of
        `chunk` queries. The last search is kept (keyed by the queries' bytes and k): a fold's permutation refits
        (`relabelled_at`) ask for the neighbours its own predictions (`proba_at`) just found."""
        key = (X.shape, k, hashlib.blake2b(X.tobytes(), digest_size=16).digest())
        memo = self.__dict__.get("_last_search")
        if memo is None or memo[0] != key:
            found = [self._neighbours(self._prepare(torch.from_numpy(X[start:start + chunk]).to(self.train_.device)),
                                      k) for start in range(0, len(X), chunk)]
            memo = (key, torch.cat([s for s, _ in found]), torch.cat([i for _, i in found]))
            self._last_search = memo
        return memo[1], memo[2]

    def _weights(self, sims: torch.Tensor) -> torch.Tensor:
        if self.weights == "softmax":
            return torch.softmax(sims / self.temperature, dim=1)
        return torch.full_like(sims, 1.0 / sims.shape[1])

    def _neighbours(self, query: torch.Tensor, k: int):
        if self.metric == "cosine":
            return torch.topk(query @ self.train_.T, k, dim=1)
        dist = torch.cdist(query, self.train_)
        neg, idx = torch.topk(-dist, k, dim=1)
        return neg, idx

    def predict(self, X) -> np.ndarray:
        """Class with the largest vote share (ties to the first class)."""
        check_is_fitted(self, "train_")
        return self.classes_[self.predict_proba(X).argmax(1)]


PROBES = Registry("probe")  # name -> factory(device=..., seed=...) of an estimator with the fold protocol
PROBES["linear"] = lambda *, device="cpu", seed=0: LinearProbe(device=device, random_state=seed)
PROBES["knn"] = lambda *, device="cpu", seed=0: KNNProbe(device=device)
PROBES["knn-euclid-11"] = lambda *, device="cpu", seed=0: KNNProbe(k=11, metric="euclidean", weights="uniform",
                                                                   device=device)
