"""Parsing free-text VLM responses into answers: yes/no, option letters, class names; refusals and hedges.

Rules, applied in order:

1. Normalise: strip markdown (`**`, `__`, backticks, headings, bullets), lower-case, collapse white space.
2. Focus: when the response states a final answer ("final answer: ...", "the answer is ...", "answer: ...",
   "therefore, ..."), only the text after the *last* such cue is parsed; chain-of-thought before it is ignored.
3. Refusal: the model declines ("I cannot provide a diagnosis", "as an AI", "consult a radiologist") and gives no
   parseable answer -> `refusal`.
4. Answer: yes/no -- a "yes" without a "no" is yes, the reverse no (DESIGN 7); options -- one letter given as
   `(B)`, `B)`, `B.`, `B:`, `option B`, `answer is B`, a lone `B`, or the text of exactly one option; classes -- the
   synonyms of exactly one class, mentions right after a negation ("not", "no", "rather than") discounted.
5. Hedge: no answer and words of uncertainty ("unclear", "cannot be determined", "not sure") -> `hedge`;
   anything else -> `unknown`.

`Parsed.answered` is true only for `answer`; accuracy is reported over all items and over answered items.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

KINDS = ("answer", "refusal", "hedge", "unknown")

_FINAL = re.compile(r"(?:final answer|the answer is|answer is|answer:|my answer:|in conclusion,?|therefore,?|"
                    r"so the answer is|thus,?)\s*", re.IGNORECASE)
_REFUSAL = re.compile(
    r"\b(?:i (?:can ?not|can't|am unable to|am not able to|'m unable to|'m not able to|won't|will not) "
    r"(?:provide|give|make|offer|diagnose|determine|answer|interpret|assess)|as an ai|i am an ai|i'm an ai|"
    r"(?:consult|see|ask) (?:a|your|with a) (?:medical professional|doctor|physician|radiologist|dermatologist|"
    r"pathologist|healthcare (?:provider|professional)|specialist)|not (?:able|qualified) to (?:provide|give|make) "
    r"(?:a )?(?:medical )?(?:diagnos|advice)|cannot provide medical advice)")
_HEDGE = re.compile(r"\b(?:unclear|uncertain|not (?:entirely )?sure|(?:can ?not|can't) (?:tell|say)|"
                    r"cannot be (?:determined|ruled out|confirmed)|"
                    r"can't be (?:determined|ruled out)|difficult to (?:say|determine|tell)|hard to (?:say|tell)|"
                    r"may or may not|inconclusive|indeterminate|not possible to (?:say|determine|tell)|"
                    r"insufficient (?:information|detail)|ambiguous)\b")
_NEGATION = re.compile(r"(?:\bnot|\bno|\bwithout|\brather than|\bnor|\bexclud(?:e|es|ing)|\brule[sd]? out)\s+"
                       r"(?:(?:a|an|the|any|signs? of|evidence of|likely)\s+)*$")


@dataclass(frozen=True)
class Parsed:
    """A parsed response: `answer` (yes/no, an option letter, or a class name) or None, and its `kind`."""

    answer: str | None
    kind: str

    @property
    def answered(self) -> bool:
        """Whether the response gave a usable answer."""
        return self.kind == "answer"


def normalise(text: str) -> str:
    """Strip markdown and case, collapse white space."""
    text = re.sub(r"```.*?```", " ", text or "", flags=re.DOTALL)
    text = re.sub(r"[*_`#>]+", " ", text)
    text = re.sub(r"^\s*[-+]\s+", " ", text, flags=re.MULTILINE)
    return re.sub(r"\s+", " ", text).strip().lower()


def focus(text: str) -> str:
    """The text after the last final-answer cue, or all of it."""
    matches = list(_FINAL.finditer(text))
    if matches:
        tail = text[matches[-1].end():].strip()
        if tail:
            return tail
    return text


def _no_answer(text: str) -> Parsed:
    if _REFUSAL.search(text):
        return Parsed(None, "refusal")
    if _HEDGE.search(text):
        return Parsed(None, "hedge")
    return Parsed(None, "unknown")


def parse_yes_no(response: str) -> Parsed:
    """`yes` / `no` by the rule: a yes without a no is yes, the reverse no, else no answer."""
    text = normalise(response)
    for part in (focus(text), text):
        yes = bool(re.search(r"\b(?:yes|yeah|yep|affirmative)\b", part))
        no = bool(re.search(r"\b(?:no|nope)\b", part))
        if yes != no:
            return Parsed("yes" if yes else "no", "answer")
        if yes and no:
            break
    return _no_answer(text)


def parse_option(response: str, options: Mapping[str, str]) -> Parsed:
    """An option letter (keys of `options`, e.g. {"A": "glioma", "B": "meningioma"}), by letter or by text."""
    text = normalise(response)
    letters = {k.lower(): k for k in options}
    for part in (focus(text), text):
        found = _letters(part, letters)
        if len(found) == 1:
            return Parsed(found.pop(), "answer")
        by_text = {letters[k.lower()] for k, v in options.items() if _mentions(part, [normalise(v)])}
        if len(by_text) == 1 and not found:
            return Parsed(by_text.pop(), "answer")
        if len(found) > 1:
            break
    return _no_answer(text)


def _letters(text: str, letters: Mapping[str, str]) -> set[str]:
    keys = "".join(re.escape(k) for k in letters)
    if not keys:
        return set()
    patterns = [rf"\(([{keys}])\)", rf"(?:^|\s)([{keys}])[).:](?=\s|$)", rf"\boption ([{keys}])\b",
                rf"\banswer (?:is )?([{keys}])\b", rf"^([{keys}])$", rf"^([{keys}])\s*[-,]"]
    found = set()
    for pattern in patterns:
        found |= {letters[m] for m in re.findall(pattern, text)}
    return found


def _mentions(text: str, phrases: Sequence[str]) -> bool:
    """Whether any phrase occurs as whole words and not right after a negation."""
    for phrase in phrases:
        for match in re.finditer(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", text):
            if not _NEGATION.search(text[:match.start()][-40:]):
                return True
    return False


def parse_class(response: str, classes: Mapping[str, Sequence[str]]) -> Parsed:
    """A class name, when the synonyms of exactly one class are mentioned (not negated)."""
    text = normalise(response)
    names = {name: sorted({normalise(name).replace("_", " "), *[normalise(s) for s in synonyms]}, key=len,
                          reverse=True) for name, synonyms in classes.items()}
    for part in (focus(text), text):
        hits = [name for name, phrases in names.items() if _mentions(part.replace("_", " "), phrases)]
        if len(hits) == 1:
            return Parsed(hits[0], "answer")
        if len(hits) > 1:
            hits = _innermost(part.replace("_", " "), hits, names)
            if len(hits) == 1:
                return Parsed(hits[0], "answer")
            break
    return _no_answer(text)


def _innermost(text: str, hits: list[str], names) -> list[str]:
    """Drop classes whose every mention lies inside a longer mention of another class ("no tumor" vs "tumor")."""
    spans = {name: [m.span() for p in names[name] for m in re.finditer(rf"(?<![a-z0-9]){re.escape(p)}(?![a-z0-9])",
                                                                       text)] for name in hits}
    keep = []
    for name in hits:
        inside = all(any(o0 <= s0 and e0 <= o1 and (o1 - o0) > (e0 - s0) for other in hits if other != name
                         for o0, o1 in spans[other]) for s0, e0 in spans[name])
        if not inside:
            keep.append(name)
    return keep
