"""Reading and scoring the answers: each response parsed by its prompt kind, the class it implies, and one
`VQARecord` per sample x prompt x condition."""

from __future__ import annotations

from ..artifacts.answers import VQARecord
from .parse import Parsed, parse_class, parse_option, parse_yes_no
from .plan import (
    plan_items,
)
from .tasks import Prompt, Task


def class_probabilities(task: Task, prompt: Prompt, probs: dict | None) -> dict | None:
    """Scored option mass per task class: multiple-choice letters map to their classes; yes/no only with two
    classes (yes names the positive class, inverted for a negated wording)."""
    if not probs:
        return None
    if prompt.kind == "multiple_choice":
        return {prompt.options[letter]: p for letter, p in probs.items() if letter in prompt.options}
    positive = [c for c in task.classes if c in task.positive]
    negative = [c for c in task.classes if c not in task.positive]
    if prompt.kind != "yes_no" or len(positive) != 1 or len(negative) != 1:
        return None
    yes, no = (probs["no"], probs["yes"]) if prompt.negated else (probs["yes"], probs["no"])
    return {positive[0]: yes, negative[0]: no}


def parse_answer(task: Task, prompt: Prompt, response: str) -> Parsed:
    """Parse a response by the prompt's kind (descriptions are not parsed)."""
    if prompt.kind == "yes_no":
        return parse_yes_no(response, prompt.text)
    if prompt.kind == "multiple_choice":
        return parse_option(response, prompt.options)
    if prompt.kind == "open":
        return parse_class(response, task.classes)
    return Parsed(None, "description")


def implied_class(task: Task, prompt: Prompt, parsed: Parsed) -> str | None:
    """The class an answer names: the option's class, the open answer, or yes/no where it picks one class."""
    if not parsed.answered:
        return None
    if prompt.kind == "multiple_choice":
        return prompt.options.get(parsed.answer)
    if prompt.kind == "open":
        return parsed.answer
    if prompt.kind == "yes_no" and len(task.classes) == 2:  # with more classes a yes/no names no single class
        negative = [c for c in task.classes if c not in task.positive]
        said_yes = (parsed.answer == "yes") != prompt.negated
        chosen = task.positive if said_yes else negative
        return chosen[0] if len(chosen) == 1 else None
    return None


def score_answers(task, source, class_map, prompts, rows, swaps, conditions, responses) -> list[VQARecord]:
    """One record per sample x prompt x condition, shared-condition answers scored against every sample."""
    records = []
    asks = task.asks
    for item in plan_items(prompts, rows, conditions, asks=asks):
        response = responses.get(item.key)
        probs = None
        if isinstance(response, dict):
            response, probs = response["response"], response.get("option_probs")
        if response is None:  # not generated, or its image could not be read
            continue
        for row in (rows if item.sample < 0 else [item.sample]):
            if item.condition == "swap" and int(row) not in swaps:
                continue
            if asks is not None and asks.get(int(row)) != item.prompt.id:  # a shared answer to another question
                continue
            records.append(score_record(task, source, class_map, item.prompt, item.condition, int(row), response, swaps,
                                   probs))
    return records


def score_record(task, source, class_map, prompt, condition, row, response, swaps, probs=None) -> VQARecord:
    sample = source.samples[row]
    label = class_map[sample.label]
    parsed = parse_answer(task, prompt, response)
    expected = task.expected(prompt, label)
    swap = {}
    if condition == "swap":
        partner = source.samples[swaps[row]]
        swap_label = class_map[partner.label]
        swap = dict(swap_id=partner.id, swap_label=swap_label, swap_expected=task.expected(prompt, swap_label))
    return VQARecord(sample_id=sample.id, prompt_id=prompt.id, condition=condition, response=response,
                     parsed=parsed.answer, correct=None if expected is None else parsed.answer == expected,
                     refused=parsed.kind == "refusal", answer_kind=parsed.kind, kind=prompt.kind, expected=expected,
                     class_pred=implied_class(task, prompt, parsed), label=label, group=sample.group,
                     split=sample.split, paraphrase=prompt.group, negated=prompt.negated, option_probs=probs,
                     class_probs=class_probabilities(task, prompt, probs), **swap)
