"""Parsing free-text VLM responses into answers: yes/no, option letters, class names; refusals and hedges.

Rules, applied in order:

1. Normalise: strip markdown (`**`, `__`, backticks, headings, bullets), lower-case, collapse white space.
2. Focus: when the response states a final answer ("final answer: ...", "the answer is ...", "answer: ...",
   "therefore, ..."), only the text after the *last* such cue is parsed; chain-of-thought before it is ignored.
3. Refusal: the model declines ("I cannot provide a diagnosis", "as an AI", "consult a radiologist") and gives no
   parseable answer -> `refusal`.
4. Answer: yes/no -- see `parse_yes_no` (a leading yes/no word; else, with the question, the first clause about
   the asked finding; explicit presence/absence statements; a lone yes/no word); options -- one letter given as
   `(B)`, `B)`, `B.`, `B:`, `option B`, `answer is B`, a lone `B`, or the text of exactly one option; classes -- the
   synonyms of exactly one class, mentions right after a negation ("not", "no", "rather than") or declared
   unlikely ("X is unlikely", "X is ruled out") discounted. Every reader first drops what is not the model's
   answer: echoed option lists ("choose from: [yes, no]"), a continuation in the user's voice ("USER: ..."),
   chat-template tokens and junk lines (copyright, code).
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


_YES_WORDS = (r"yes|yeah|yep|yup|affirmative|correct|indeed|absolutely|definitely|certainly|"
              r"s[ií]|oui|ja|sim|да|是|是的|有|はい|네|evet")
_NO_WORDS = r"no|nope|negative|non|nein|n[ãa]o|нет|否|不是|没有|いいえ|아니요|hayır"
# a yes/no word standing alone as the answer: followed by punctuation, the end, or the start of a new statement
_BARE = re.compile(rf"^(?:(?:well|so|ok|okay|hmm|answer|the answer)\s*[,:]?\s*)?(?P<word>{_YES_WORDS}|{_NO_WORDS})"
                   r"(?=\s*(?:[,.!:;)\-\u3002\uff0c]|$)|\s+(?:it|there|this|that|the|i|we|they|he|she|definitely|"
                   r"absolutely|certainly|indeed|as|because|since|but|although|however|sir|doctor)\b)")
# "no" that answers nothing: idioms a reader does not take as a "no" answer
_NOT_AN_ANSWER = re.compile(r"\b(?:no|without)\s+(?:idea|way|doubt|definitive|definite|clear|certain|conclusive|firm|"
                            r"reliable|comment|opinion|answer|access|information|context|further|additional|"
                            r"(?:medical|clinical) (?:advice|diagnosis))\b|\bno(?:t)? (?:one|problem|matter)\b|"
                            r"\bthere is no (?:way|telling)\b|\bundoubtedly\b|"
                            r"\bno \w+ (?:can|could) be (?:assessed|determined|evaluated|said|commented on)\b")
_NEG_BEFORE = re.compile(r"(?:\bno|\bnot|\bnor|\bneither|\bwithout|\bnegative (?:for|of)|\babsen(?:ce|t) of|"
                         r"\bfree (?:of|from)|\brule[sd]? out|\bruled out|\bexclud(?:e|es|ed|ing)|"
                         r"\b(?:don't|doesn't|didn't|do not|does not|did not|cannot|can't|can not|isn't|aren't|"
                         r"wasn't|weren't|is not|are not|was not|were not|unable to) (?:\w+ ){0,3}?)"
                         r"(?:\s+(?:\w+\s+){0,4})?$")
_NEG_AFTER = re.compile(r"^\W*(?:\w+\s+){0,2}?(?:is|are|was|were|appears?|seems?)?\s*(?:not|absent|unlikely|"
                        r"ruled out|excluded|negative|"
                        r"not (?:seen|present|visible|identified|detected|evident|noted))\b")
_HEDGE_NEAR = re.compile(r"\b(?:may|might|could|possibl[ey]|perhaps|maybe|"
                         r"cannot (?:be )?(?:excluded|ruled out|rule out)|"
                         r"can't (?:be )?(?:excluded|ruled out|rule out)|not (?:entirely )?(?:sure|certain|clear)|"
                         r"uncertain|unclear|equivocal|questionable|suspicious for|difficult to|hard to)\b")
_ABSENT = re.compile(r"^(?:there (?:is|are) no|there's no|no (?:evidence|signs?|sign|indication|findings?)|"
                     r"negative for|absence of|does not show|doesn't show|do not see|don't see|not that i can see|"
                     r"i (?:do not|don't) see|(?:it|this) is not)\b|\b(?:is|are) (?:absent|not (?:seen|present|visible"
                     r"|identified|detected))\b|^not (?:that i can see|seen|present|visible|really|at all)\b")
_PRESENT = re.compile(r"\b(?:is|are) (?:present|seen|visible|evident|noted|identified)\b|^positive for\b|"
                      r"^there (?:is|are) (?:clear |definite )?evidence of\b|^(?:it|this) is present\b")
_STOP = set("""a an the is are was were be been being am do does did there here this that these those it its of in on
at to for from with by as any some image images picture photo scan scans x ray xray x-ray ray ct mri radiograph film
view shown show shows showing see seen visible visualised visualized present evidence sign signs you your can could
would should will please answer question or and yes no not what which how does tell me look looking looks
appear appears appearance patient's patient this? case study examination exam given provided based on
expert radiologist specialist reviewing chest-x-ray like seem seems suggest suggests suggestive also other
there's has have having contain contains containing demonstrate demonstrates""".split())
_ANATOMY = set("""liver lung lungs brain heart kidney kidneys chest skin bone bones spine abdomen colon breast head
neck pelvis tissue organ organs field fields lobe lobes hemisphere ventricle region area slide sample cell cells
lesion mole lymph node nodes section sections""".split())
_FRAMING_NEG = re.compile(r"\b(?:clear of|free of|free from|without|absence of|absent|no|not|rule out|ruled out)\b")
_ANTONYMS = {"normal": "abnormal", "abnormal": "normal", "benign": "malignant", "malignant": "benign",
             "healthy": "diseased", "present": "absent", "absent": "present"}


def parse_yes_no(response: str, question: str | None = None) -> Parsed:
    """`yes` / `no`, read as a careful reader would; with `question`, statements about the asked finding count.

    In order, on the focused answer then on the whole response: a leading yes/no word (any later sentence that
    starts with the opposite word makes it a contradiction: no answer); the polarity of the first clause that
    speaks about the asked finding (question-aware, other findings ignored; negated questions such as "clear of X"
    invert it; a hedged clause is a hedge); explicit presence/absence statements ("negative for ...", "is
    present", "there is no ..."); a lone yes/no word elsewhere. Idioms that contain "no" without answering ("no
    idea", "no doubt", "no definitive ...") never count as a no.
    """
    text = clean(response)
    target = _finding(question) if question else None
    for part in (focus(text), text):
        found = _read_yes_no(part, target)
        if found is not None:
            return found
    return _no_answer(text)


def clean(response: str) -> str:
    """Normalise, then drop what is not the model's answer: echoed option lists, a continuation in the user's
    voice, junk lines (copyright, licence, code)."""
    text = re.sub(r"```.*?```", " ", response or "", flags=re.DOTALL)
    text = re.split(r"(?:^|\n|\s)(?:user|human|question|q|patient|###\s*(?:question|instruction|human|user))\s*:"
                    r"|<\|(?:user|im_start|end|eot_id)|\[inst\]|<start_of_turn>", text, maxsplit=1,
                    flags=re.IGNORECASE)[0]
    lines = [ln for ln in text.splitlines() if not re.search(r"copyright|©|all rights reserved|licen[cs]ed under|"
                                                               r"^\s*(?:import|def|print\(|return|#include)\b", ln,
                                                               re.IGNORECASE)]
    text = re.sub(r"<\|[a-z_]+\|>|</?s>|\[/?inst\]", " ", "\n".join(lines), flags=re.IGNORECASE)
    text = normalise(text)
    text = re.sub(r"(?:please )?(?:choose|select|pick|answer)\s+(?:from|with|between|one of|using)?\s*(?:the )?"
                  r"(?:following )?(?:two |2 )?(?:options|choices|answers)?\s*:?\s*[\[(]?\s*yes\s*[,/]?\s*(?:or\s+)?"
                  r"no\s*[\])]?\.?", " ", text)
    text = re.sub(r"[\[(]\s*yes\s*(?:/|,|or)\s*no\s*[\])]|\byes or no\b\??|\byes/no\b", " ", text)
    return re.sub(r"\s+", " ", text).strip(" ,")


def _finding(question: str) -> dict:
    """What a yes/no question asks about: its target words (anatomy dropped unless nothing else is left) and
    whether it is asked negatively ("Are the lungs clear of pneumonia?")."""
    q = normalise(question)
    asked = [part for part in re.split(r"(?<=[.?!])\s+", q) if part.endswith("?")]
    q = asked[-1] if asked else q  # the question itself, not the role play or instructions around it
    q = re.sub(r"\b(?:answer|reply|respond)?\s*(?:with|using)?\s*(?:yes or no|yes/no)\b", " ", q)
    negative = bool(_FRAMING_NEG.search(q))
    q = _FRAMING_NEG.sub(" ", q)

    def content(text: str) -> list[str]:
        return [w for w in re.findall(r"[a-z][a-z\-]+", text) if w not in _STOP and len(w) > 2]

    words = content(q)
    # the finding comes before where it is looked for: "Is there X in the liver?"
    head = [w for w in content(re.split(r"\b(?:in|under|within|on|at|inside|along|around)\b", q)[0])
            if w not in _ANATOMY]
    targets = head or [w for w in words if w not in _ANATOMY] or words
    return {"terms": targets, "negative": negative}


def _sentences(text: str) -> list[str]:
    return [s.strip(" ,") for s in re.split(r"(?<=[.!?;\u3002])\s+|\n", text) if s.strip(" ,.")]


def _clauses(text: str) -> list[str]:
    """Clauses in order, without those that echo a question ("Pneumonia?") or talk about the question."""
    parts = re.split(r"(?<=[.!?;\u3002])\s*|,?\s+\b(?:but|however|although|though|whereas|while)\b\s*|,\s+", text)
    return [p.strip(" .;") for p in parts if p.strip(" .;") and not p.strip().endswith("?")
            and not re.search(r"\bwhether\b|\bthe question\b|\basks?\b", p)]


def _read_yes_no(text: str, target: dict | None) -> Parsed | None:
    text = _NOT_AN_ANSWER.sub(" ", text).strip(" ,")
    if not text:
        return None
    bare = [_bare(s) for s in _sentences(text)]
    said = [b for b in bare if b]
    if said:
        if len(set(said)) > 1:
            return Parsed(None, "unknown")  # "Yes. ... No." -- a contradiction is no answer
        if bare[0]:
            return Parsed(bare[0], "answer")
    if target and target["terms"]:
        found = _about_finding(text, target)
        if found is not None:
            return found
    for clause in _clauses(text):
        if _HEDGE_NEAR.search(clause):
            continue
        if _ABSENT.search(clause):
            return Parsed("no", "answer") if not (target and target["negative"]) else Parsed("yes", "answer")
        if _PRESENT.search(clause):
            return Parsed("yes", "answer") if not (target and target["negative"]) else Parsed("no", "answer")
    if said:
        return Parsed(said[0], "answer")
    yes = re.findall(rf"(?<![\w-])(?:{_YES_WORDS})(?![\w-])", text)
    no = re.findall(r"(?<![\w-])(?:no|nope)(?=\s*(?:[.!,;]|$))", text)
    if bool(yes) != bool(no):
        return Parsed("yes" if yes else "no", "answer")
    return None


def _bare(sentence: str) -> str | None:
    match = _BARE.match(sentence.strip(" \"'"))
    if not match:
        match = re.match(r"^(?:actually|i think|i believe|i would say|my answer is|in short|overall|so)\s*,?\s*"
                         rf"(?P<word>{_YES_WORDS}|{_NO_WORDS})(?=\s*(?:[,.!:;]|$))", sentence)
    if not match:
        return None
    return "yes" if re.fullmatch(_YES_WORDS, match.group("word")) else "no"


def _about_finding(text: str, target: dict) -> Parsed | None:
    """The polarity of the first clause that names a target word. When its target words disagree, a word met as its
    antonym decides ("a benign tumor" to "Is this a malignant tumor?"), else the question's last target word."""
    for clause in _clauses(text):
        readings = []
        for term in target["terms"]:
            hit, flip = _find_term(clause, term)
            if hit is None:
                continue
            after = clause[hit.end():]
            negated = (bool(_NEG_BEFORE.search(clause[:hit.start()][-60:])) or bool(_NEG_AFTER.match(after))
                       or bool(re.match(r"^\s*[:=\-]\s*(?:no|none|absent|negative|not seen)\b", after)))
            readings.append((flip, (not negated) != flip))
        if not readings:
            continue
        if _HEDGE_NEAR.search(clause):
            return Parsed(None, "hedge")
        flipped = [present for flip, present in readings if flip]
        present = flipped[-1] if flipped else readings[-1][1]
        return Parsed("yes" if present != target["negative"] else "no", "answer")
    return None


def _find_term(clause: str, term: str):
    stem = term[:-1] if term.endswith("s") and len(term) > 4 else term
    hit = re.search(rf"(?<![a-z]){re.escape(stem)}[a-z]{{0,3}}(?![a-z])", clause)
    if hit is not None:
        return hit, False
    other = _ANTONYMS.get(term)
    if other:
        hit = re.search(rf"(?<![a-z]){re.escape(other)}(?![a-z])", clause)
        if hit is not None:
            return hit, True
    return None, False


def parse_option(response: str, options: Mapping[str, str]) -> Parsed:
    """An option letter (keys of `options`, e.g. {"A": "glioma", "B": "meningioma"}), by letter or by text."""
    text = clean(response)
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


_DISCOUNTED_AFTER = re.compile(r"^\s*(?:[a-z]+\s+){0,2}?(?:is|are|was|seems?|appears?)?\s*(?:very |highly )?"
                               r"(?:unlikely|less likely|"
                               r"ruled out|excluded|not (?:likely|present|seen|supported|favou?red)|absent)\b")


def _mentions(text: str, phrases: Sequence[str]) -> bool:
    """Whether any phrase occurs as whole words, neither right after a negation nor declared unlikely after it
    ("Glioma is unlikely; this is a meningioma")."""
    for phrase in phrases:
        for match in re.finditer(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", text):
            if not _NEGATION.search(text[:match.start()][-40:]) and not _DISCOUNTED_AFTER.match(text[match.end():]):
                return True
    return False


def parse_class(response: str, classes: Mapping[str, Sequence[str]]) -> Parsed:
    """A class name, when the synonyms of exactly one class are mentioned (not negated, not declared unlikely)."""
    text = clean(response)
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
