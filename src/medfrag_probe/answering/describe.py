"""The description pipeline: the VLM describes each image; a text-only classifier diagnoses from the description.

Classifiers (`method`):

- `vlm` (default): the VLM's own language model embeds each description (mean of its last hidden states over the
  description's tokens); a linear probe on those embeddings, with the same protocol, splits and bootstrap as the image
  probes (same samples, patients and seed give the same folds).
- `encoder:SPEC`: as `vlm`, with a local or hub sentence encoder (`AutoModel`, mean pooling), e.g.
  `encoder:/models/bge-small` or `encoder:tiny` (a tiny random BERT, tests).
- `llm:SPEC`: a text-only causal language model reads the description and answers the task's multiple-choice
  question (options in class order); its answer is parsed like any VQA answer. `llm:tiny` in tests.

Each description prompt is one point, `description.<prompt id>`; results land in `OUT/results.jsonl` like probes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, bad_choice
from .tasks import Prompt

METHODS = ("vlm", "encoder:SPEC", "llm:SPEC")


def classify_descriptions(records, *, source, task, adapter, method: str, out: Path, seed: int = 0,
                          device: str = "auto") -> dict:
    """Diagnose from the image-condition descriptions in `records`; write results under `out`; return a summary."""
    kind, _, target = check_method(method)
    described = [r for r in records if r.kind == "describe" and r.condition == "image"]
    by_prompt: dict[str, list] = {}
    for r in described:
        by_prompt.setdefault(r.prompt_id, []).append(r)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "llm":
        return _llm(by_prompt, task=task, target=target, out=out, device=device)
    embed = _VLMText(adapter) if kind == "vlm" else _Encoder(_resolve(target), device=device)
    return _probe(by_prompt, embed, source=source, task=task, method=method, out=out, seed=seed, device=device)


def check_method(method: str) -> tuple[str, str, str]:
    """(kind, ':', target) of a valid classifier name; a bad one is a user error raised before any generation."""
    kind, sep, target = method.partition(":")
    if kind not in ("vlm", "encoder", "llm") or (kind != "vlm" and not target) or (kind == "vlm" and target):
        raise bad_choice("description classifier", method, METHODS)
    return kind, sep, target


def _resolve(target: str) -> str:
    if target == "tiny" or target.startswith("tiny:"):
        from ..models.tiny import tiny_spec

        name = "text-encoder" if target in ("tiny", "tiny:text-encoder") else target.removeprefix("tiny:")
        return tiny_spec(name).removeprefix("hf:")
    return target.removeprefix("hf:")


class _VLMText:
    """Mean last-layer states of the VLM's language model over the tokens of a text (no image)."""

    def __init__(self, adapter):
        from ..models.base import find_module
        from ..models.hf_common import LM_CANDIDATES

        if adapter.loaded != "full":
            raise UserError("the `vlm` description classifier needs the full model (language model loaded)")
        self.lm = find_module(adapter.model, LM_CANDIDATES, what="language model")
        self.tokenizer = adapter.processor.tokenizer
        self.name = adapter.spec

    def __call__(self, texts: list[str]) -> np.ndarray:
        return _mean_states(self.lm, self.tokenizer, texts)


class _Encoder:
    """A transformers text encoder, mean-pooled over tokens."""

    def __init__(self, target: str, *, device: str):
        import transformers

        from ..devices import resolve_device

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(target)
        self.lm = transformers.AutoModel.from_pretrained(target).eval().to(resolve_device(device))
        self.name = target

    def __call__(self, texts: list[str]) -> np.ndarray:
        return _mean_states(self.lm, self.tokenizer, texts)


@torch.inference_mode()
def _mean_states(model, tokenizer, texts: list[str], batch_size: int = 16) -> np.ndarray:
    device = next(model.parameters()).device
    empty = tokenizer.eos_token or tokenizer.pad_token or "."  # an empty description still gets a token
    rows, side = [], tokenizer.padding_side
    tokenizer.padding_side = "right"  # pads after the text: a causal model's states of real tokens stay unpadded
    try:
        for i in range(0, len(texts), batch_size):
            chunk = [t if t.strip() else empty for t in texts[i:i + batch_size]]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=512)
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            states = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            rows.append(((states * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy())
    finally:
        tokenizer.padding_side = side
    return np.concatenate(rows).astype(np.float32)


def _probe(by_prompt, embed, *, source, task, method, out, seed, device) -> dict:
    from ..cache import write_embeddings
    from ..probes import probe

    names = list(task.classes)
    first = next(iter(by_prompt.values()))
    ids = [r.sample_id for r in first]
    for prompt_id, rs in by_prompt.items():
        if [r.sample_id for r in rs] != ids:
            raise RuntimeError(f"description prompt {prompt_id} covers other samples than {first[0].prompt_id}")
    cache = write_embeddings(
        out / "descriptions.h5", ids=ids, labels=[names.index(r.label) for r in first], classes=names,
        groups=[r.group for r in first], splits=[r.split for r in first],
        embeddings={f"description.{prompt_id}/mean": embed([r.response for r in rs])
                    for prompt_id, rs in by_prompt.items()},
        attrs={"model": f"{getattr(embed, 'name', method)} (descriptions)", "data": source.spec,
               "describe_with": method, "task": task.name})
    results = probe([cache], probes=("linear",), out=out, seed=seed, device=device, figures=False)
    from ..probes.select import inner_score

    return {"method": method, "points": [{"point": r.point, "skill": r.skill, "skill_ci": r.skill_ci,
                                          "inner_score": inner_score({"hyper": r.hyper}),
                                          "balanced_accuracy": r.balanced_accuracy,
                                          "balanced_accuracy_ci": r.balanced_accuracy_ci, "n": r.n,
                                          "predictions": r.predictions} for r in results],
            "results": str(out / "results.jsonl")}


def _llm(by_prompt, *, task, target, out, device) -> dict:
    """Zero-shot diagnosis by a text-only LLM from each description; scored like class-level VQA answers."""
    import transformers

    from ..devices import resolve_device
    from .measures import class_scores
    from .parse import parse_option

    path = _resolve_llm(target)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval().to(resolve_device(device))
    question = _question(task)
    summary = {"method": f"llm:{target}", "points": []}
    rows = []
    for prompt_id, rs in by_prompt.items():
        answers = _ask(model, tokenizer, [_llm_prompt(question, r.response, tokenizer) for r in rs])
        preds = [question.options.get(parse_option(a, question.options).answer) for a in answers]
        scores = class_scores([r.label for r in rs], preds, list(task.classes))
        summary["points"].append({"point": f"description.{prompt_id}", **scores})
        rows += [{"sample_id": r.sample_id, "prompt_id": prompt_id, "label": r.label, "response": a, "pred": p,
                  "correct": p == r.label} for r, a, p in zip(rs, answers, preds)]
    (out / "llm_answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return summary


def _resolve_llm(target: str) -> str:
    if target == "tiny":
        from ..models.tiny import tiny_spec

        return tiny_spec("text-llm").removeprefix("hf:")
    return target.removeprefix("hf:")


def _question(task) -> Prompt:
    options = {chr(65 + k): name for k, name in enumerate(task.classes)}
    return Prompt("llm-diagnosis", "multiple_choice", "Which diagnosis does this report describe?", options)


def _llm_prompt(question: Prompt, description: str, tokenizer) -> str:
    text = f"Report: {description.strip() or '(empty)'}\n\n{question.render()}"
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except (TypeError, ValueError, KeyError):  # templates that take plain-string content
            messages = [{"role": "user", "content": text}]
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text + "\nAnswer:"


@torch.inference_mode()
def _ask(model, tokenizer, prompts: list[str], batch_size: int = 8, max_new_tokens: int = 16) -> list[str]:
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True).to(device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                             temperature=None, top_p=None, top_k=None)
        answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers
