"""`intervene`: does the answer depend on the signal a linear probe finds in the image tokens the language model
reads? A probe shows that a signal is decodable, not that the answer uses it; this asks the model.

    from medfrag_probe import intervene
    record = intervene("tiny:organism-sound", "synth:brain-mri?n=320&seed=7", "synth-brain-mri",
                       probes="probes/organism-sound", out="probes/interventions/organism-sound")
    record["causal_effect"], record["causal_ci"], record["patch_follow_rate"]

The tokens are the projector's output (the image tokens in the language model's space). Per sample, its mean token
`m` is the feature the probe reads. Per outer fold, a LEACE eraser (least-squares concept erasure, Belrose et al.
2023) is fitted on `m` of the *other* folds: the rank K - 1 oblique projection after which every class has the same
mean, so no linear probe beats chance, moving the features as little as possible. (Removing the probe's weight
directions orthogonally is not enough: a class code spread over many correlated dimensions survives it, and on a
trained tiny LLaVA the answers did not move.) Folds are those of the linear probe's predictions in `probes` (the
projector point), so no sample is intervened on with an eraser fitted on it; without `probes`, patient-grouped
stratified folds are drawn here.

Conditions, each answering every closed question (yes/no where it names a class, multiple choice) about every
sample by option probabilities (scored mode: no generation, no parsing). Edits shift all of an image's tokens by one
vector, so the tokens keep their own variation:
- `clean`: the model as it is;
- `ablate-probe`: the shift that erases the probed signal from `m`: `-(m - mu) E^T`;
- `ablate-random`: the orthogonal removal of `m - mu` within a random subspace of the same rank (the control);
- `patch-tokens`: the image tokens of a donor (an image of another class from another patient) in place of the
  sample's own, i.e. the donor image through the tower and projector;
- `patch-probe`: only the probed signal moved to the donor's: `(m_donor - m) E^T`;
- `patch-random`: the same move within the random subspace.
A sample's answer is its class probabilities averaged over the prompts; its class the most probable.

Measures, with 95% patient-bootstrap intervals, paired across conditions. Skills are balanced and chance-normalised
as in the bridge, of the answers' *expected* credit (the probability of the right class): a model whose option
probabilities are flat scores 0 whichever option wins a near-tie by 1e-5 (the most-probable-answer skills are
reported too, `answer_skill` and `answer_effect`, and are not used for the decision).
- `causal_effect` = skill(clean) - skill(ablate-probe); `random_effect` the same for the random subspace;
  `specific_effect` their difference; `p_right_drop` the mean fall in the right class's probability;
- `patch_follow_rate`: the share of the other classes' probability that moves to the donor's class under
  `patch-tokens`, `(p_patched(donor) - p(donor)) / (1 - p(donor))` averaged (1: the answer follows the donor fully,
  0: unmoved); `probe_patch_follow_rate` and `random_patch_follow_rate` the same under `patch-probe` and
  `patch-random`; `patch_flip_rate` the share of most-probable answers that become the donor's class.
`uses_probed_signal` is True when the causal effect's lower bound exceeds `min_effect` and the specific effect's
lower bound exceeds 0, False when the causal effect's upper bound is below `min_effect`, None (undecided) otherwise.

Writes `OUT/interventions.jsonl` (one `InterventionRecord`) and `OUT/samples.csv`; `bridge(..., interventions=...)`
joins the records to the verdicts.
"""

from __future__ import annotations

import hashlib
import io
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from ._log import info
from .artifacts.interventions import InterventionRecord, write_interventions
from .artifacts.probes import find_results, read_predictions
from .data.sources import DataSource, open_source
from .errors import UserError, option
from .stats import balanced_skill, bootstrap_weights, interval

CONDITIONS = ("clean", "ablate-probe", "ablate-random", "patch-tokens", "patch-probe", "patch-random")
REPLICATES = 1000
MIN_EFFECT = 0.05


def intervene(model, data, task, *, probes=None, out: str | Path = "probes/interventions", limit: int | None = None,
              prompts=None, batch_size: int = 16, folds: int = 5, min_effect: float = MIN_EFFECT,
              replicates: int = REPLICATES, seed: int = 0, device: str = "auto", dtype: str = "float32",
              trust_remote_code: bool = False) -> dict:
    """Ablate and patch the probe subspace of the projector tokens; write interventions.jsonl and samples.csv under
    `out`; return the record as a dict. `limit` intervenes on a seeded subset of that many samples (the subspaces
    are still fitted on every sample of the other folds)."""
    from .answering.plan import map_classes
    from .answering.tasks import resolve_task
    from .devices import resolve_device
    from .models.loading import load_adapter

    if replicates < 10:
        raise UserError(f"replicates must be >= 10, got {replicates}")
    if limit is not None and limit < 2:
        raise UserError(f"{option('limit')} must be >= 2, got {limit}")
    if batch_size < 1:
        raise UserError(f"{option('batch_size')} must be >= 1, got {batch_size}")
    start = time.perf_counter()
    source = data if isinstance(data, DataSource) else open_source(data)
    task = resolve_task(task, source)
    class_map = map_classes(task, source)
    prompts = closed_prompts(task, prompts)
    adapter = model if not isinstance(model, str) else load_adapter(model, lm=True, device=str(resolve_device(device)),
                                                                     dtype=dtype, trust_remote_code=trust_remote_code)
    if not adapter.can_generate or not hasattr(adapter, "option_scores") or "projector" not in adapter.points:
        raise UserError(f"model {adapter.spec} ({adapter.arch}) has no projector and language model to intervene "
                        "on; intervene needs a vision-language model (llava, llava-next, gemma3, paligemma, qwen2-vl)")
    prints = adapter.fingerprints()
    fold_of = _folds(source, probes, adapter, prints, folds=folds, seed=seed)
    rows = np.array(sorted(fold_of), dtype=int)
    images, rows = _images(source, adapter, rows)
    means = _mean_tokens(adapter, [images[r] for r in rows], batch_size=batch_size)
    labels = np.array([class_map[source.samples[r].label] for r in rows], dtype=object)
    groups = np.array([source.samples[r].group for r in rows], dtype=object)
    fold = np.array([fold_of[r] for r in rows])
    chosen = _subset(len(rows), limit, seed)
    erasers = _erasers(means, labels, fold, seed=seed)
    donors = _donors(labels, groups, chosen, seed=seed)

    classes = list(task.classes)
    probs = {c: np.zeros((len(rows), len(classes))) for c in CONDITIONS}
    for condition in CONDITIONS:
        for f in np.unique(fold[chosen]):
            members = chosen[fold[chosen] == f]
            edits = _edits(condition, erasers[f], means, members, donors)
            shown = [images[rows[donors[i] if condition == "patch-tokens" and donors[i] >= 0 else i]] for i in members]
            probs[condition][members] = _answers(adapter, task, prompts, shown, edits, classes=classes,
                                                 batch_size=batch_size)
        info(f"intervene {adapter.spec}: {condition} answered")
    record = _measure(probs, labels, groups, donors, chosen, classes, min_effect=min_effect, replicates=replicates)
    record = InterventionRecord(
        model=adapter.spec, data=source.spec, task=task.name, point="projector", n=int(len(chosen)),
        n_prompts=len(prompts), rank=int(erasers[fold[chosen][0]]["rank"]),
        folds=int(len(np.unique(fold))), **record, rule={"min_effect": min_effect, "replicates": replicates,
                                                           "seed": seed, "probes": str(probes or "")},
        model_fingerprint=prints.get("model", ""), vision_fingerprint=prints.get("vision", ""),
        data_fingerprint=source.fingerprint(), prompts=[p.id for p in prompts],
        seconds=round(time.perf_counter() - start, 2))
    out = Path(out)
    write_interventions(out, record, _samples_csv(source, rows, chosen, labels, groups, fold, donors, probs, classes))
    info(f"intervene {adapter.spec} on {source.spec}: {record.conclusion}; wrote {out / 'interventions.jsonl'}")
    return record.record()


def closed_prompts(task, wanted=None) -> list:
    """The task's closed questions whose options name classes (multiple choice, and yes/no with two classes), or
    those of them `wanted` names (see `answering.plan.select_prompts`)."""
    from .answering.plan import select_prompts
    from .answering.scoring import class_probabilities

    closed = [p for p in task.prompts() if p.kind == "multiple_choice" or
              (p.kind == "yes_no" and class_probabilities(task, p, {"yes": 0.5, "no": 0.5}) is not None)]
    if not closed:
        raise UserError(f"task {task.name} has no closed question that names a class (multiple choice, or yes/no "
                        "with two classes); intervene scores those")
    if not wanted:
        return closed
    chosen = {p.id for p in select_prompts(task, wanted)}
    kept = [p for p in closed if p.id in chosen]
    if not kept:
        raise UserError(f"none of the prompts {wanted!r} of task {task.name} is a closed question that names a "
                        f"class; valid: {', '.join(p.id for p in closed)}, multiple_choice, yes_no")
    return kept


def _folds(source, probes, adapter, prints: dict, *, folds: int, seed: int) -> dict[int, int]:
    """Row -> outer fold: the linear projector probe's folds from `probes`, else drawn here."""
    rows = {s.id: i for i, s in enumerate(source.samples)}
    if probes is None:
        from sklearn.model_selection import StratifiedGroupKFold

        if folds < 2:
            raise UserError(f"{option('folds')} must be >= 2, got {folds}")
        labels = [s.label for s in source.samples]
        groups = [s.group for s in source.samples]
        split = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        out = {}
        for k, (_, test) in enumerate(split.split(np.zeros(len(labels)), labels, groups)):
            out.update({int(r): k for r in test})
        return out
    results = [r for r in find_results(probes) if r.probe == "linear" and r.point == "projector"
               and (r.model_fingerprint == prints.get("model") if r.model_fingerprint and prints.get("model")
                    else r.model == adapter.spec)
               and (r.data_fingerprint == source.fingerprint() if r.data_fingerprint else r.data == source.spec)]
    if not results:
        raise UserError(f"no linear probe of the projector point for {adapter.spec} on {source.spec} in {probes}; "
                        "run `medfrag-probe probe` on a cache extracted with points including 'projector'")
    chosen = next((r for r in results if r.pooling == "mean"), results[0])
    pred = read_predictions(chosen.predictions)
    if (pred.folds < 0).any():
        raise UserError(f"{chosen.predictions} has no outer folds (a train/test split or an old file); rerun "
                        f"`medfrag-probe probe` with folds, or leave out {option('probes')}")
    missing = [i for i in pred.ids if i not in rows]
    if missing:
        raise UserError(f"{len(missing)} probed samples (e.g. {missing[0]}) are not in {source.spec}")
    return {rows[i]: int(f) for i, f in zip(pred.ids, pred.folds)}


def _images(source, adapter, rows: np.ndarray):
    from .data.images import ImageError
    from .data.sources import decode_hint

    keep, images = [], {}
    hint = decode_hint(source, adapter)
    for r in rows:
        try:
            images[int(r)] = source.image(int(r), **hint)
            keep.append(int(r))
        except ImageError as exc:
            info(f"intervene: skipping {source.samples[r].id}: {exc}")
    if len(keep) < 4:
        raise UserError(f"intervene needs at least 4 readable images, found {len(keep)}")
    return images, np.array(keep)


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _per_image(tokens: torch.Tensor, n_images: int) -> torch.Tensor:
    """Projector output as (images, tokens, width): (B, T, D), (B * P, T, D) or packed (B * T, D) alike."""
    if tokens.shape[0] % n_images or tokens.numel() % (n_images * tokens.shape[-1]):
        raise UserError(f"the projector output {tuple(tokens.shape)} does not split into {n_images} equal images; "
                        "intervene needs images of one size for this model (resize them in the data source)")
    return tokens.reshape(n_images, -1, tokens.shape[-1])


def _mean_tokens(adapter, images: list, *, batch_size: int) -> np.ndarray:
    """Each image's mean projector token."""
    from .models.hooks import trace

    point = adapter.points["projector"]
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            batch = images[i:i + batch_size]
            inputs = adapter.prepare(batch)
            with trace([point], stop_after=point.name) as captured:
                adapter.forward(inputs, point.stage)
            out.append(_per_image(captured[point.name].float(), len(batch)).mean(1).cpu().numpy())
    return np.concatenate(out)


def _erasers(means: np.ndarray, labels: np.ndarray, fold: np.ndarray, *, seed: int) -> dict:
    """Per outer fold, fitted on the other folds' mean tokens: the training mean, the LEACE eraser `E` (x - E (x - mu)
    has equal class means, so no linear probe beats chance) and a random orthonormal basis of the same rank."""
    out = {}
    for f in np.unique(fold):
        train = fold != f
        if len(np.unique(labels[train])) < 2:
            raise UserError(f"outer fold {f}'s training samples hold one class; intervene needs two or more")
        mu, eraser, rank = leace(means[train], labels[train])
        rng = np.random.default_rng(seed * 1009 + int(f))
        random, _ = np.linalg.qr(rng.standard_normal((means.shape[1], max(rank, 1))))
        out[f] = {"mean": mu, "eraser": eraser, "rank": rank, "random": random[:, :rank]}
    return out


def leace(x: np.ndarray, labels: np.ndarray, *, shrinkage: float = 1e-3) -> tuple[np.ndarray, np.ndarray, int]:
    """Least-squares concept erasure (LEACE; Belrose et al. 2023) of the classes in `labels` from features `x`:
    returns (mean, E, rank) with `x - (x - mean) @ E.T` the erased features. E = W^+ P W, W the whitening of the
    (shrunk) covariance, P the projection onto the whitened class cross-covariance: rank K - 1, the smallest
    change (in the covariance's norm) that makes every class mean equal."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / len(x)
    cov += shrinkage * max(np.trace(cov) / len(cov), 1e-12) * np.eye(len(cov))
    classes, codes = np.unique(labels, return_inverse=True)
    onehot = np.eye(len(classes))[codes]
    cross = centred.T @ (onehot - onehot.mean(0)) / len(x)
    values, vectors = np.linalg.eigh(cov)
    whiten = (vectors * values ** -0.5) @ vectors.T
    unwhiten = (vectors * values ** 0.5) @ vectors.T
    u, s, _ = np.linalg.svd(whiten @ cross, full_matrices=False)
    keep = u[:, s > max(s.max(), 1e-300) * 1e-6] if s.max() > 1e-12 else u[:, :0]
    return mean, unwhiten @ keep @ keep.T @ whiten, int(keep.shape[1])


def _donors(labels, groups, chosen: np.ndarray, *, seed: int) -> np.ndarray:
    """Per sample (index into rows): an intervened sample of another class from another patient (-1: none)."""
    rng = np.random.default_rng(seed + 7)
    donors = np.full(len(labels), -1)
    for i in chosen:
        pool = chosen[(labels[chosen] != labels[i]) & (groups[chosen] != groups[i])]
        if len(pool):
            donors[i] = int(rng.choice(pool))
    return donors


def _edits(condition: str, space: dict, means: np.ndarray, members: np.ndarray, donors: np.ndarray) -> dict | None:
    """Each image's token shift under `condition` (None: clean or whole-image patching, done by the images)."""
    if condition in ("clean", "patch-tokens"):
        return None
    m = means[members]
    if condition.startswith("ablate"):
        move = space["mean"] - m  # towards the training mean
    else:
        has = donors[members] >= 0
        move = np.zeros_like(m)
        move[has] = means[donors[members[has]]] - m[has]  # towards the donor
    if condition.endswith("probe"):
        return {"shift": move @ space["eraser"].T}
    basis = space["random"]
    return {"shift": (move @ basis) @ basis.T}


@contextmanager
def edited_tokens(adapter, shifts: np.ndarray | None, row_image: list[int]):
    """Within the block, the projector's output is shifted per image by `shifts` (images, width; None: left as it
    is). A batch's rows ask about images `row_image` (row -> index into `shifts`, rows of one image adjacent, each
    image once in the batch). The projector runs either once per distinct image (a shared prefix, in the order of
    first appearance) or once per row (models that do not share prefixes, and full reruns)."""
    module = adapter.points["projector"].module
    order = list(dict.fromkeys(row_image))

    def hook(_module, _args, output):
        tokens = output if isinstance(output, torch.Tensor) else output[0]
        for images in (order, row_image):
            if tokens.shape[0] % len(images) == 0 and tokens.numel() % (len(images) * tokens.shape[-1]) == 0:
                break
        view = _per_image(tokens, len(images))
        shift = torch.as_tensor(shifts[images], dtype=view.dtype, device=view.device)
        edited = (view + shift[:, None, :]).reshape(tokens.shape)
        return edited if isinstance(output, torch.Tensor) else (edited, *output[1:])

    handle = module.register_forward_hook(hook) if shifts is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def _answers(adapter, task, prompts, images: list, edit: dict | None, *, classes: list, batch_size: int):
    """(images, classes) class probabilities averaged over the closed prompts, under `edit`. Rows are laid out
    image by image, every prompt of an image together, so an image (and the chat before it) runs once per condition
    where the model shares prefixes. A batch holds whole images (`batch_size // prompts` of them), or, with more
    prompts than `batch_size`, one image's prompts in pieces that reuse its prefix."""
    from .answering.generation import option_texts
    from .answering.scoring import class_probabilities

    texts = [p.render() for p in prompts]
    options = [option_texts(p) for p in prompts]
    shifts = None if edit is None else np.asarray(edit["shift"])
    total = np.zeros((len(images), len(classes)))
    for chunk in _image_chunks(images, max(1, batch_size // len(prompts))):
        rows = [(k, q) for k in chunk for q in range(len(prompts))]
        step = len(rows) if len(chunk) > 1 else batch_size
        alone = len(chunk) == 1 and hasattr(adapter, "reusing_prefixes")
        # one image alone: a fresh memo, so its prefix (edited tokens included) serves only its own prompts
        with adapter.reusing_prefixes() if alone else nullcontext():
            for r in range(0, len(rows), step):
                part = rows[r:r + step]
                inputs = adapter.chat_inputs([texts[q] for _, q in part], [images[k] for k, _ in part])
                with edited_tokens(adapter, shifts, [k for k, _ in part]):
                    scores = adapter.option_scores(inputs, [options[q] for _, q in part])
                for (k, q), row in zip(part, scores):
                    by_class = class_probabilities(task, prompts[q], dict(zip(options[q], row)))
                    total[k] += [by_class.get(c, 0.0) for c in classes]
    return total / len(prompts)


def _image_chunks(images: list, size: int) -> list[list[int]]:
    """Consecutive runs of `size` image indices; a run holding two identical images (the prefixes would be run once
    for both, and their edits may differ) is split into single images."""
    chunks = []
    for i in range(0, len(images), size):
        chunk = list(range(i, min(i + size, len(images))))
        digests = {hashlib.blake2b(np.asarray(images[k]).tobytes(), digest_size=16).digest() for k in chunk}
        chunks += [chunk] if len(digests) == len(chunk) else [[k] for k in chunk]
    return chunks


def _measure(probs: dict, labels, groups, donors, chosen, classes, *, min_effect: float, replicates: int) -> dict:
    y = labels[chosen]
    K = len(classes)
    index = {c: k for k, c in enumerate(classes)}
    code = np.array([index[c] for c in y])
    rows = np.arange(len(chosen))
    weights = bootstrap_weights(groups[chosen], replicates=replicates)
    pred = {c: probs[c][chosen].argmax(1) for c in CONDITIONS}
    right = {c: probs[c][chosen][rows, code] for c in CONDITIONS}
    skill, boot, hard, hard_boot = {}, {}, {}, {}
    for c in CONDITIONS[:3]:
        skill[c] = float(balanced_skill(right[c], code, K))  # expected skill of the answer distribution
        boot[c] = balanced_skill(right[c], code, K, weights)
        ok = (pred[c] == code).astype(float)
        hard[c] = float(balanced_skill(ok, code, K))  # skill of the most probable answer
        hard_boot[c] = balanced_skill(ok, code, K, weights)

    def mean_boot(values):
        return (weights @ values) / weights.sum(1)

    causal, random = boot["clean"] - boot["ablate-probe"], boot["clean"] - boot["ablate-random"]
    drop = right["clean"] - right["ablate-probe"]
    donor_code = np.array([code[np.searchsorted(chosen, d)] if d >= 0 else -1 for d in donors[chosen]])
    has = donor_code >= 0
    follow = {}
    for c in ("patch-tokens", "patch-probe", "patch-random"):
        if not has.any():
            follow[c] = (None, None)
            continue
        before = probs["clean"][chosen][rows[has], donor_code[has]]
        after = probs[c][chosen][rows[has], donor_code[has]]
        moved = np.zeros(len(chosen))
        moved[has] = (after - before) / np.maximum(1 - before, 1e-9)  # share of the other classes' mass moved
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = (weights @ moved) / (weights @ has)
        follow[c] = (float(moved[has].mean()), interval(reps))
    flips = has & (pred["clean"] != donor_code)
    flip_rate = float((pred["patch-tokens"][flips] == donor_code[flips]).mean()) if flips.any() else None
    effect = skill["clean"] - skill["ablate-probe"]
    random_effect = skill["clean"] - skill["ablate-random"]
    causal_ci, specific_ci = interval(causal), interval(causal - random)
    if causal_ci and specific_ci and causal_ci[0] > min_effect and specific_ci[0] > 0:
        uses = True
    elif causal_ci and causal_ci[1] < min_effect:
        uses = False
    else:
        uses = None
    return {"skill": {c: round(v, 6) for c, v in skill.items()},
            "skill_ci": {c: interval(b) for c, b in boot.items()},
            "answer_skill": {c: round(v, 6) for c, v in hard.items()},
            "p_right": {c: round(float(right[c].mean()), 6) for c in CONDITIONS},
            "causal_effect": effect, "causal_ci": causal_ci, "random_effect": random_effect,
            "random_ci": interval(random), "specific_effect": effect - random_effect, "specific_ci": specific_ci,
            "answer_effect": hard["clean"] - hard["ablate-probe"],
            "answer_effect_ci": interval(hard_boot["clean"] - hard_boot["ablate-probe"]),
            "p_right_drop": float(drop.mean()), "p_right_drop_ci": interval(mean_boot(drop)),
            "patch_follow_rate": follow["patch-tokens"][0], "patch_follow_ci": follow["patch-tokens"][1],
            "probe_patch_follow_rate": follow["patch-probe"][0], "probe_patch_follow_ci": follow["patch-probe"][1],
            "random_patch_follow_rate": follow["patch-random"][0],
            "random_patch_follow_ci": follow["patch-random"][1], "patch_flip_rate": flip_rate,
            "uses_probed_signal": uses,
            "conclusion": conclusion(uses, effect, causal_ci, random_effect, follow["patch-tokens"][0])}


def conclusion(uses: bool | None, effect: float, ci, random_effect: float, follow: float | None) -> str:
    """One sentence on whether the answers depend on the probed signal."""
    def fmt(ci):
        return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "[n/a]"

    said = {True: "the answers depend on the probed signal",
            False: "the answers do not depend on the probed signal",
            None: "whether the answers depend on the probed signal is undecided at this n"}[uses]
    patched = (f"; another image's tokens move {follow:.0%} of the answer probability to its class"
               if follow is not None else "")
    return (f"{said} (erasing the probed signal changes the answers' expected skill by {-effect:+.2f} "
            f"{fmt(ci and [-ci[1], -ci[0]])}, a random subspace of the same rank by {-random_effect:+.2f}{patched})")


def _samples_csv(source, rows, chosen, labels, groups, fold, donors, probs, classes) -> str:
    index = {c: k for k, c in enumerate(classes)}
    buffer = io.StringIO()
    head = ["sample_id", "group", "label", "fold", "donor_id"]
    for c in CONDITIONS:
        head += [f"p_right_{c}", f"pred_{c}"]
    buffer.write(",".join(head) + "\n")
    for i in chosen:
        donor = source.samples[rows[donors[i]]].id if donors[i] >= 0 else ""
        cells = [source.samples[rows[i]].id, groups[i], labels[i], int(fold[i]), donor]
        for c in CONDITIONS:
            cells += [round(float(probs[c][i, index[labels[i]]]), 6), classes[int(probs[c][i].argmax())]]
        buffer.write(",".join(str(v) for v in cells) + "\n")
    return buffer.getvalue()
