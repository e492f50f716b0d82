"""Batched L2 logistic regression: several problems that share one feature matrix, solved together.

Problems differ by which rows they train on (a 0/1 mask per problem: the inner CV folds and the refit), and may
differ by their labels (one label vector per problem: the permutation refits behind the probe's intervals); they
share the regularisation `C`. Walking a grid of C values from strong to weak regularisation, each solve starts from the
previous solution. One wide matrix product serves all problems, so the feature matrix is read once per step instead
of once per problem; the gradient is written by hand (no autograd).

Objective per problem (the same as scikit-learn's lbfgs solver): mean log-loss over its rows + ||W||^2 / (2 C n).
Binary problems use one logit column (sigmoid), multi-class ones a softmax over K columns.

Problems may standardise their features differently (each inner fold on its own training rows) while sharing one
feature matrix: standardising feature d of problem p by `r_pd` times the shared scale is the same model with weights
`V = W / r` on the shared features and the penalty `sum_d r_pd^2 V_pd^2` (the intercept absorbs the centring and is
not penalised), so `penalty_scales` (P, D) = r^2 gives each problem its own standardisation exactly.
"""

from __future__ import annotations

import numpy as np
import torch


def _loss_grad(X, XT, Y, M, n, W, b, C, binary, S=None):
    """Loss (summed over problems) and gradients; X (N, D), Y (N, K', 1) or per problem (N, K', P) (see `_targets`),
    M (P, N), W (P, D, K'), b (P, K').

    Logits are laid out (N, K', P), problems innermost: the softmax over a few classes then runs along a strided
    axis with the problems contiguous, about 7x faster than over a last axis of length K' (the (N, P, K') layout)."""
    P, D, K = W.shape
    Z = (X @ W.permute(1, 2, 0).reshape(D, K * P)).view(-1, K, P) + b.T  # N, K, P
    if binary:
        prob = torch.sigmoid(Z)
        nll = torch.nn.functional.softplus(Z) - Z * Y
    else:
        logp = torch.log_softmax(Z, dim=1)
        prob = logp.exp()
        nll = -(logp * Y)
    weight = (M / n[:, None]).T[:, None, :]  # N, 1, P
    SW = W if S is None else W * S[:, :, None]
    loss = (nll * weight).sum() + ((W * SW).sum((1, 2)) / (2 * C * n)).sum()
    G = (prob - Y) * weight  # N, K, P
    gW = (XT @ G.reshape(-1, K * P)).view(D, K, P).permute(2, 0, 1) + SW / (C * n)[:, None, None]
    return loss, gW, G.sum(0).T


def _targets(codes, n_classes: int, binary: bool, dtype):
    """Targets laid out like the logits, from class codes (N,) shared by every problem or (N, P) per problem (torch
    or NumPy): (N, K', 1) or (N, K', P)."""
    torchy = isinstance(codes, torch.Tensor)
    if binary:
        Y = codes[:, None, None] if codes.ndim == 1 else codes[:, None, :]
    else:
        onehot = torch.nn.functional.one_hot(codes, n_classes) if torchy else np.eye(n_classes)[codes]
        Y = onehot[..., None] if codes.ndim == 1 else onehot.swapaxes(1, 2)  # (N, P, K) -> (N, K, P)
    return Y.to(dtype) if torchy else Y.astype(dtype)


def logistic_path(X: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, Cs, *, n_classes: int, max_iter: int = 500,
                  tol: float = 1e-4, penalty_scales: torch.Tensor | None = None):
    """Solve every masked problem for each C in `Cs` (ascending), yielding (W (P, D, K'), b (P, K')) per C.

    `y` holds class codes: (N,) shared by every problem, or (P, N), one label vector per problem.
    `penalty_scales` (P, D): per-problem, per-feature penalty weights (module docstring); None means all ones.

    A generator, so the caller can stop walking the path early (the weakly regularised end is the costly one).
    """
    binary = n_classes == 2
    K = 1 if binary else n_classes
    codes = y if y.dim() == 1 else y.T  # N or (N, P)
    Y = _targets(codes, n_classes, binary, X.dtype)
    n = masks.sum(1).clamp(min=1)
    XT = X.T.contiguous()  # the gradient's product reads X by columns; a transposed copy is ~25% faster
    P, D = masks.shape[0], X.shape[1]
    row_weight = masks / n[:, None]  # P, N
    second_moment = row_weight @ (X * X)  # P, D
    S = penalty_scales if penalty_scales is not None else torch.ones_like(second_moment)
    W = torch.zeros(P, D, K, dtype=X.dtype, device=X.device)
    b = _prior_intercepts((Y * row_weight.T[:, None, :]).sum(0), binary)  # the path starts at the class log-odds
    for C in Cs:
        # rescaled parameters, as `_lbfgs`: weights stiffened by strong regularisation, intercepts left free
        curvature, spread = _curvature(second_moment, S, C, n, binary, K)
        top = max(float(curvature.max()), spread)
        uW = (top / curvature).sqrt()[:, :, None].expand(P, D, K)
        ub = (top / spread) ** 0.5
        V = (W / uW).requires_grad_()
        c = (b / ub).requires_grad_()
        optimizer = torch.optim.LBFGS([V, c], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-10,
                                      history_size=20, line_search_fn="strong_wolfe")

        def closure(C=float(C), V=V, c=c, uW=uW, ub=ub):
            with torch.no_grad():
                loss, gW, gb = _loss_grad(X, XT, Y, masks, n, V * uW, c * ub, C, binary, penalty_scales)
            V.grad, c.grad = (gW * uW).contiguous(), (gb * ub).contiguous()
            return loss

        optimizer.step(closure)
        W, b = (V * uW).detach(), (c * ub).detach()  # fresh tensors: the next C starts from them, unchanged
        yield W, b


def logistic_path_cpu(X, y, masks, Cs, *, n_classes: int, max_iter: int = 500, tol: float = 1e-4,
                      penalty_scales=None):
    """`logistic_path` for small problems on the CPU: the same objective and warm-started walk, solved by SciPy's
    L-BFGS-B on NumPy arrays in float64. For a few hundred rows the torch path spends its time in per-operation
    overhead (one closure call costs ~0.7 ms, the product itself microseconds); this path costs a fraction of that.
    The walk starts from each problem's class log-odds and solves on rescaled parameters (`_lbfgs`). Takes and
    yields torch tensors like `logistic_path`."""
    P, D = masks.shape[0], X.shape[1]
    K = 1 if n_classes == 2 else n_classes
    problems = _numpy_problems(X, y, masks, n_classes, penalty_scales)
    fun = _numpy_objective(problems)
    start = _prior_intercepts((problems["Y"] * problems["weight"]).sum(2), problems["binary"])
    theta = np.concatenate([np.zeros(P * D * K), start.ravel()])

    for C in Cs:
        theta = _lbfgs(fun, theta, float(C), problems, max_iter=max_iter, tol=tol)
        W = torch.from_numpy(theta[:P * D * K].reshape(P, D, K).astype(np.float32)).to(X.device)
        b = torch.from_numpy(theta[P * D * K:].reshape(P, K).astype(np.float32)).to(X.device)
        yield W, b


def _fit_terms(Z, Y, binary: bool):
    """Probabilities and per-entry log-loss terms of NumPy logits Z (K', P, N) against targets Y (K', P or 1, N).

    The NumPy solvers lay logits out classes first, rows last (the torch path's (N, K', P) turned around): the
    softmax's reductions then run over the leading axis, whole contiguous blocks at a time, 2-4x faster in NumPy
    than over a middle axis of a few classes."""
    if binary:
        return 0.5 * (1 + np.tanh(0.5 * Z)), np.logaddexp(0, Z) - Z * Y  # a stable sigmoid
    Z = Z - Z.max(0)
    e = np.exp(Z)
    total = e.sum(0)
    return e / total, (np.log(total) - Z) * Y


def _numpy_problems(X, y, masks, n_classes: int, penalty_scales=None) -> dict:
    """The batched problems as float64 NumPy arrays, shared by the NumPy solvers: X (N, D), targets Y (K', P or 1, N)
    laid out like their logits (see `_fit_terms`), masks M (P, N), rows per problem n (P,), row weights (1, P, N),
    penalty scales S (P, D; ones when None), `binary` and K' (logit columns)."""
    binary = n_classes == 2
    M = masks.detach().cpu().numpy().astype(np.float64)
    yn = y.detach().cpu().numpy()
    n = np.maximum(M.sum(1), 1)
    Xn = X.detach().cpu().numpy().astype(np.float64)
    Y = _targets(yn if yn.ndim == 1 else yn.T, n_classes, binary, np.float64)  # N, K', P or 1
    return {"X": Xn, "Y": np.ascontiguousarray(Y.transpose(1, 2, 0)), "M": M, "n": n,
            "weight": (M / n[:, None])[None], "binary": binary, "K": 1 if binary else n_classes,
            "S": (np.ones((len(M), Xn.shape[1])) if penalty_scales is None
                  else penalty_scales.detach().cpu().numpy().astype(np.float64)),
            "second_moment": (M @ Xn ** 2) / n[:, None]}  # P, D: each feature's mean square over a problem's rows


def _prior_intercepts(freq, binary: bool):
    """(P, K') intercepts of each problem's best model without features: its class frequencies' log-odds (classes
    absent from its rows at a floor), from the frequencies `freq` (K', P; NumPy or torch). The path starts there, so
    its strongly regularised end, where the weights stay near zero and the intercepts do not, is reached in a few
    steps."""
    torchy = isinstance(freq, torch.Tensor)
    log = torch.log if torchy else np.log
    freq = freq.clamp(1e-3, None) if torchy else np.clip(freq, 1e-3, None)
    if binary:
        freq = freq.clamp(None, 1 - 1e-3) if torchy else np.clip(freq, None, 1 - 1e-3)
        return log(freq / (1 - freq)).T.contiguous() if torchy else log(freq / (1 - freq)).T
    logs = log(freq / freq.sum(0)[None])
    centred = logs - logs.mean(0)[None]
    return centred.T.contiguous() if torchy else centred.T


def _numpy_objective(problems: dict):
    """fun(params, C) -> (loss, gradient) of every problem together, in float64 NumPy, on flat parameters: W (P, D, K')
    then b (P, K'). The same objective as `_loss_grad`; `problems` from `_numpy_problems`."""
    Xn, Y, S, n, weight = (problems[k] for k in ("X", "Y", "S", "n", "weight"))  # weight (1, P, N), logits (K', P, N)
    binary, K = problems["binary"], problems["K"]
    XT = np.ascontiguousarray(Xn.T)
    P, D = len(n), Xn.shape[1]

    def fun(params, C):
        W = params[:P * D * K].reshape(P, D, K)
        b = params[P * D * K:].reshape(P, K)
        prob, nll = _fit_terms((W.transpose(2, 0, 1).reshape(K * P, D) @ XT).reshape(K, P, -1) + b.T[:, :, None], Y,
                               binary)
        SW = W * S[:, :, None]
        loss = (nll * weight).sum() + ((W * SW).sum((1, 2)) / (2 * C * n)).sum()
        G = (prob - Y) * weight
        gW = (G.reshape(K * P, -1) @ Xn).reshape(K, P, D).transpose(1, 2, 0) + SW / (C * n)[:, None, None]
        return loss, np.concatenate([gW.ravel(), G.sum(2).T.ravel()])

    return fun


def _curvature(second_moment, S, C: float, n, binary: bool, K: int):
    """A diagonal estimate of the objective's curvature along each weight (P, D; NumPy or torch): the log-loss's at
    uniform probabilities, p (1 - p) times the feature's mean square, plus the penalty's S / (C n); and that p (1 - p),
    the intercepts' curvature. `_lbfgs` and `logistic_path` rescale their parameters by it."""
    spread = 0.25 if binary else (1 / K) * (1 - 1 / K)
    return spread * second_moment + S / (C * n[:, None]), spread


def _lbfgs(flat, start: np.ndarray, C: float, problems: dict, *, max_iter: int, tol: float) -> np.ndarray:
    """SciPy's L-BFGS-B on the flat objective at `C` from `start`, on rescaled parameters: each parameter divided by
    the square root of a diagonal estimate of its curvature (the penalty's S / (C n) plus the log-loss's at uniform
    probabilities) relative to the largest. Strong regularisation makes the weights ~1 / (C n) stiffer than the
    unpenalised intercepts; unscaled, L-BFGS needs ~20 steps to reconcile them, scaled a few (a 240 x 64, 4-class
    problem at C = 1e-4: 19 steps from zero unscaled). The gradient test applies to the rescaled gradient, which is at
    least as large as the original entry by entry, so every solve still ends with each gradient entry below `tol`."""
    from scipy.optimize import minimize

    S, K = problems["S"], problems["K"]
    weight_curvature, spread = _curvature(problems["second_moment"], S, C, problems["n"], problems["binary"], K)
    curvature = np.concatenate([np.repeat(weight_curvature[:, :, None], K, 2).ravel(), np.full(len(S) * K, spread)])
    u = np.sqrt(curvature.max() / curvature)  # >= 1

    def scaled(params, C):
        loss, grad = flat(params * u, C)
        return loss, grad * u

    result = minimize(scaled, start / u, args=(C,), jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-12, "maxcor": 20})
    return result.x * u


LBFGS_FIRST = 20  # L-BFGS steps per C before `logistic_path_newton` switches to Newton's method


def logistic_path_newton(X, y, masks, Cs, *, n_classes: int, max_iter: int = 500, tol: float = 1e-4,
                         penalty_scales=None):
    """`logistic_path` by Newton's method, for CPU problems with few parameters per problem ((D + 1) K' up to a few
    hundred): the same objective and warm-started walk, each problem's exact Hessian solved in float64 with a
    backtracking (Armijo) line search of its own, until its largest gradient entry is below `tol`.

    L-BFGS needs hundreds of steps where regularisation is weak and the classes nearly separable (measured on a
    384 x 64, 4-class probe at C = 100: 500 steps without converging); Newton's method needs a handful there too, and
    one step costs rows x parameters^2, so it wins while the parameters are few. Each C starts with up to
    `LBFGS_FIRST` L-BFGS steps (`logistic_path_cpu`'s), which finish the strongly regularised end of the path for
    less than one Newton step costs; Newton's method takes over where they do not. Takes and yields torch tensors."""

    problems = _numpy_problems(X, y, masks, n_classes, penalty_scales)
    Xn, Y, M, S, n, weight = (problems[k] for k in ("X", "Y", "M", "S", "n", "weight"))
    binary, K = problems["binary"], problems["K"]
    (N, D), P = Xn.shape, len(M)
    X1 = np.concatenate([Xn, np.ones((N, 1))], 1)  # the intercept as a last feature: parameters (P, K', D + 1)
    X1T = np.ascontiguousarray(X1.T)
    X1f = X1.astype(np.float32)  # the Hessian's products in float32 (half the time; the gradient stays in float64)
    rows = [np.flatnonzero(mask) for mask in M]
    m = K * (D + 1)
    theta = np.zeros((P, K, D + 1))
    theta[:, :, D] = _prior_intercepts((Y * weight).sum(2), binary)

    def evaluate(theta, C):
        """Per-problem losses (P,), gradients (P, K', D + 1) and probabilities (K', P, N)."""
        # matrix products, not np.einsum (which loops without BLAS here)
        Z = (theta.transpose(1, 0, 2).reshape(K * P, D + 1) @ X1T).reshape(K, P, N)
        prob, nll = _fit_terms(Z, Y, binary)
        W = theta[:, :, :D]
        loss = (nll * weight).sum((0, 2)) + (S[:, None, :] * W ** 2).sum((1, 2)) / (2 * C * n)
        grad = (((prob - Y) * weight).reshape(K * P, N) @ X1).reshape(K, P, D + 1).transpose(1, 0, 2).copy()
        grad[:, :, :D] += S[:, None, :] * W / (C * n)[:, None, None]
        return loss, grad, prob

    def hessian(p, prob, C):
        """The (m, m) Hessian of problem p, parameters ordered (class, feature)."""
        r = rows[p]
        w = (M[p, r] / n[p]).astype(np.float32)
        pi = prob[:, p, r].T.astype(np.float32)  # (rows, K')
        if binary:
            A = (w * pi[:, 0] * (1 - pi[:, 0]))[:, None, None]
        else:
            A = w[:, None, None] * (pi[:, :, None] * (np.eye(K, dtype=np.float32) - pi[:, None, :]))
        Xr = X1f[r]
        Q = (A[:, :, :, None] * Xr[:, None, None, :]).reshape(len(r), K * K * (D + 1))
        H = (Q.T @ Xr).reshape(K, K, D + 1, D + 1).transpose(0, 2, 1, 3).reshape(m, m).astype(np.float64)
        # the penalty; the intercepts are not penalised, but a softmax's intercepts may all move together without
        # changing the loss, so a tiny ridge keeps that one flat direction solvable (the gradient has no part along it)
        ridge = np.empty((K, D + 1))
        ridge[:, :D] = S[p] / (C * n[p])
        ridge[:, D] = 1e-10
        H[np.diag_indices(m)] += ridge.ravel()
        return H

    flat = _numpy_objective(problems)
    for C in Cs:
        C = float(C)
        # a few cheap L-BFGS steps first: strongly regularised problems converge within them
        start = np.concatenate([theta[:, :, :D].transpose(0, 2, 1).ravel(), theta[:, :, D].ravel()])
        params = _lbfgs(flat, start, C, problems, max_iter=min(LBFGS_FIRST, max_iter), tol=tol)
        theta = np.concatenate([params[:P * D * K].reshape(P, D, K).transpose(0, 2, 1),
                                params[P * D * K:].reshape(P, K, 1)], axis=2)
        loss, grad, prob = evaluate(theta, C)
        active = np.ones(P, bool)
        for _ in range(max_iter):
            active &= np.abs(grad).reshape(P, -1).max(1) > tol
            if not active.any():
                break
            idx = np.flatnonzero(active)
            g = grad[idx].reshape(len(idx), m)
            H = np.stack([hessian(p, prob, C) for p in idx])
            step = -np.linalg.solve(H, g[:, :, None])[:, :, 0].reshape(len(idx), K, D + 1)
            slope = (g.reshape(step.shape) * step).sum((1, 2))
            alpha, ok = np.ones(len(idx)), np.zeros(len(idx), bool)
            for _ in range(40):  # halve each problem's step until its loss falls enough (Armijo)
                trial = theta.copy()
                trial[idx] += alpha[:, None, None] * step
                new_loss, new_grad, new_prob = evaluate(trial, C)
                ok = new_loss[idx] <= loss[idx] + 1e-4 * alpha * slope
                if ok.all():
                    break
                alpha = np.where(ok, alpha, alpha / 2)
            stalled = idx[~ok]  # no step lowers the loss: as converged as float64 allows
            active[stalled] = False
            alpha = np.where(ok, alpha, 0.0)
            theta[idx] += alpha[:, None, None] * step
            if len(stalled):
                loss, grad, prob = evaluate(theta, C)
            else:
                loss, grad, prob = new_loss, new_grad, new_prob
        W = torch.from_numpy(theta[:, :, :D].transpose(0, 2, 1).astype(np.float32)).to(X.device)
        b = torch.from_numpy(theta[:, :, D].astype(np.float32)).to(X.device)
        yield W.contiguous(), b
