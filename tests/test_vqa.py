"""VQA runner and measures: batch invariance on every tiny VLM, controls, resume, and measures with known answers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from medfrag_probe.answering import vqa
from medfrag_probe.answering.tasks import load_task
from medfrag_probe.data.sources import open_source
from medfrag_probe.errors import UserError

TINY_VLMS = ["llava", "llava-mistral", "llava-med", "gemma3", "paligemma", "qwen2-vl", "llava-next"]
DESIGN_KEYS = {"sample_id", "prompt_id", "condition", "response", "parsed", "correct", "refused"}


def _answers(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", TINY_VLMS)
def test_batch_size_1_and_8_give_the_same_answers(arch, tmp_path):
    from medfrag_probe.models.loading import load_adapter

    adapter = load_adapter(f"tiny:{arch}", lm=True, device="cpu")
    runs = {}
    for size in (1, 8):
        vqa(adapter, "synth:brain-mri?n=6", "synth-brain-mri", conditions="image,no-image,swap",
            prompts="yes_no,multiple_choice,desc-detail", batch_size=size, max_new_tokens=8, describe_tokens=12,
            describe_with=None, out=tmp_path / str(size))
        runs[size] = [(r["sample_id"], r["prompt_id"], r["condition"], r["response"]) for r in
                      _answers(tmp_path / str(size))]
    assert runs[1] == runs[8]
    assert len({r[3] for r in runs[8]}) > 1, "responses should vary across prompts and images"


class _Oracle:
    """A stand-in VLM that reads the class off each synthetic image (by its bytes) and answers by a policy."""

    can_generate = True
    loaded = "full"
    reads_point = ""
    arch = "fake"

    def __init__(self, source, task, policy: str, seed: int = 0):
        self.spec = f"fake:{policy}"
        self.task = task
        self.policy = policy
        self.rng = np.random.default_rng(seed)
        names = list(task.classes)
        self.label_of = {source.image(i).tobytes(): names[s.label] for i, s in enumerate(source.samples)}
        self.calls = 0

    def fingerprints(self):
        return {"model": self.spec, "vision": "v"}

    def chat_inputs(self, prompts, images=None):
        return {"prompts": prompts, "images": images}

    def generate(self, inputs, *, max_new_tokens):
        self.calls += 1
        images = inputs["images"] or [None] * len(inputs["prompts"])
        return [self._answer(text, image) for text, image in zip(inputs["prompts"], images)]

    def _answer(self, text, image):
        prompt = next(p for p in self.task.prompts() if p.render() == text)
        label = self.label_of.get(image.tobytes()) if image is not None else None
        if self.policy == "always-yes":
            return "Yes." if prompt.kind == "yes_no" else "A"
        if label is None:
            return "I cannot tell without seeing the image."
        if self.policy == "coin" and prompt.kind == "yes_no":
            return str(self.rng.choice(["Yes.", "No."]))
        if prompt.kind == "describe":
            return f"The scan shows findings typical of {label.replace('_', ' ')}."
        answer = self.task.expected(prompt, label)
        return {"yes": "Yes, it is.", "no": "No."}.get(answer, f"The answer is ({answer})" if len(answer) == 1
                                                             else answer.replace("_", " "))


@pytest.fixture(scope="module")
def brain():
    return open_source("synth:brain-mri?n=40"), load_task("synth-brain-mri")


def test_an_oracle_scores_perfectly_and_is_ideal(brain, tmp_path):
    source, task = brain
    summary = vqa(_Oracle(source, task, "oracle"), source, task, conditions="image,no-image,blank,swap",
                  out=tmp_path, describe_with=None)
    image = summary["conditions"]["image"]
    assert image["accuracy"] == 1.0 and image["answered_accuracy"] == 1.0
    assert summary["classification"]["skill"] == 1.0
    assert summary["paraphrase"]["flip_rate"] == 0.0 and summary["paraphrase"]["negation_flip_rate"] == 0.0
    # it never answers without an image; the swap shows its reliance wherever the swapped image changes the answer
    quadrants = summary["quadrants"]
    assert quadrants["Ideal"] > 0.3 and quadrants["Ideal"] + quadrants["Abstains-blind"] == 1.0
    assert summary["swap"]["sensitivity"] == 1.0 and summary["swap"]["follows"] == 1.0
    assert summary["conditions"]["no-image"]["hedge_rate"] == 1.0  # "I cannot tell" is a hedge, never correct
    assert summary["conditions"]["no-image"]["accuracy"] == 0.0
    assert summary["spread"]["all"]["std"] == 0.0


def test_a_text_biased_model_is_consistent_but_dangerous(brain, tmp_path):
    source, task = brain
    summary = vqa(_Oracle(source, task, "always-yes"), source, task, conditions="image,no-image,swap",
                  prompts="yes_no", out=tmp_path / "plain", describe_with=None)
    positives = np.mean([list(task.classes)[s.label] in task.positive for s in source.samples])
    assert all(p["accuracy"] == pytest.approx(positives) for p in summary["prompts"])
    assert summary["quadrants"]["Dangerous"] == 1.0  # the same answer to every wording, image or not
    assert summary["text_only"]["agreement"] == 1.0
    assert summary["swap"]["sensitivity"] == 0.0


def test_yes_to_everything_contradicts_itself_under_negation(brain, tmp_path):
    source, task = brain
    summary = vqa(_Oracle(source, task, "always-yes"), source, task, conditions="image,no-image",
                  prompts="paraphrase", out=tmp_path, describe_with=None)
    assert summary["paraphrase"]["flip_rate"] == 0.0
    assert summary["paraphrase"]["negation_flip_rate"] == 1.0  # "yes" to "is it free of a tumour?" contradicts
    assert summary["quadrants"]["Worst"] == 1.0  # inconsistent once negations are undone, and blind to the image


def test_coin_flipping_yes_no_gives_the_expected_flip_rate(tmp_path):
    source, task = open_source("synth:brain-mri?n=120"), load_task("synth-brain-mri")
    summary = vqa(_Oracle(source, task, "coin"), source, task, prompts="paraphrase", out=tmp_path,
                  describe_with=None)
    # a pair of random answers differs with probability 1/2; three agree with probability 2 * (1/2)^3 = 1/4
    assert summary["paraphrase"]["paraphrase_flip_rate"] == pytest.approx(0.5, abs=0.08)
    assert summary["paraphrase"]["paraphrase_set_inconsistency"] == pytest.approx(0.75, abs=0.1)
    assert summary["paraphrase"]["negation_flip_rate"] == pytest.approx(0.5, abs=0.1)
    accuracy = summary["conditions"]["image"]
    assert accuracy["accuracy"] == pytest.approx(0.5, abs=3 * accuracy["accuracy_se"] + 0.02)
    assert accuracy["accuracy_se"] > 0


def test_shared_conditions_are_generated_once_per_prompt(brain, tmp_path):
    source, task = brain
    model = _Oracle(source, task, "oracle")
    vqa(model, source, task, conditions="image,no-image,blank", prompts="yes_no", batch_size=64, out=tmp_path,
        describe_with=None)
    rows = _answers(tmp_path)
    n_prompts = len([p for p in task.prompts() if p.kind == "yes_no" and not p.group])
    assert len(rows) == 3 * len(source) * n_prompts
    assert DESIGN_KEYS <= set(rows[0])
    # 40 images x 4 prompts in 3 batches of <= 64 under image; one batch of 4 for each shared condition
    assert model.calls == 3 + 1 + 1


class _Crash(Exception):
    pass


@dataclass
class _Dies:
    """Wraps a model; generate raises after `after` calls (a killed run)."""

    inner: object
    after: int
    calls: int = 0
    spec: str = field(init=False)

    def __post_init__(self):
        self.spec = self.inner.spec
        for name in ("can_generate", "loaded", "reads_point", "arch", "fingerprints", "chat_inputs"):
            setattr(self, name, getattr(self.inner, name))

    def generate(self, inputs, *, max_new_tokens):
        self.calls += 1
        if self.calls > self.after:
            raise _Crash()
        return self.inner.generate(inputs, max_new_tokens=max_new_tokens)


def test_a_killed_run_resumes_without_redoing_finished_chunks(brain, tmp_path):
    source, task = brain
    args = dict(conditions="image,swap", prompts="yes_no,multiple_choice", batch_size=8, describe_with=None)
    vqa(_Oracle(source, task, "coin", seed=3), source, task, out=tmp_path / "clean", **args)
    with pytest.raises(_Crash):
        vqa(_Dies(_Oracle(source, task, "coin", seed=3), after=20), source, task, out=tmp_path / "killed", **args)
    assert list((tmp_path / "killed" / ".parts").glob("chunk-*.jsonl"))
    assert not (tmp_path / "killed" / "answers.jsonl").exists()
    # the coin's random stream must continue where the killed run stopped: replay the first 20 calls' draws
    resumed = _Oracle(source, task, "coin", seed=3)
    first = _Dies(resumed, after=10**6)
    done_items = sum(len(p.read_text().splitlines()) for p in (tmp_path / "killed" / ".parts").glob("chunk-*.jsonl"))
    vqa(first, source, task, out=tmp_path / "killed", **args)
    total = len(_answers(tmp_path / "clean"))
    assert done_items >= 64 and first.calls < 20 + (total - done_items) // 8 + 4
    assert not (tmp_path / "killed" / ".parts").exists()
    assert len(_answers(tmp_path / "killed")) == total


def test_a_finished_run_asked_again_generates_nothing(brain, tmp_path):
    source, task = brain
    args = dict(conditions="image,no-image", prompts="yes_no", describe_with=None)
    vqa(_Oracle(source, task, "oracle"), source, task, out=tmp_path, **args)
    before = (tmp_path / "answers.jsonl").read_text()
    again = _Oracle(source, task, "oracle")
    vqa(again, source, task, out=tmp_path, **args)
    assert again.calls == 0
    assert (tmp_path / "answers.jsonl").read_text() == before


def test_a_different_run_in_the_same_folder_is_refused(brain, tmp_path):
    source, task = brain
    vqa(_Oracle(source, task, "oracle"), source, task, prompts="yes_no", out=tmp_path, describe_with=None)
    with pytest.raises(UserError, match="different run.*conditions"):
        vqa(_Oracle(source, task, "oracle"), source, task, prompts="yes_no", conditions="image,no-image",
            out=tmp_path, describe_with=None)
    vqa(_Oracle(source, task, "oracle"), source, task, prompts="yes_no", conditions="image,no-image",
        out=tmp_path, describe_with=None, overwrite=True)
    assert {r["condition"] for r in _answers(tmp_path)} == {"image", "no-image"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(conditions="image,bogus"), "unknown condition 'bogus'; valid: image, no-image, blank, swap"),
    (dict(conditions="no-image"), "must include 'image'"),
    (dict(prompts="nope"), "unknown prompt of task synth-brain-mri 'nope'"),
    (dict(batch_size=0), "batch-size must be a positive integer"),
    (dict(split="test"), "no samples in split 'test'"),
    (dict(describe_with="bert"), "unknown description classifier 'bert'"),
])
def test_bad_options_get_one_clear_error(brain, tmp_path, kwargs, message):
    source, task = brain
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        vqa(_Oracle(source, task, "oracle"), source, task, out=tmp_path, **{"prompts": "yes_no", **kwargs})


def test_data_classes_must_map_onto_task_classes(tmp_path):
    source = open_source("synth:chest-xray?n=8")
    with pytest.raises(UserError, match="data class 'pneumonia' is not a class of task synth-brain-mri"):
        vqa(_Oracle(source, load_task("synth-chest-xray"), "oracle"), source, "synth-brain-mri", out=tmp_path)


def test_an_encoder_cannot_answer(tmp_path):
    with pytest.raises(UserError, match="image encoder and cannot answer questions"):
        vqa("tiny:clip", "synth:brain-mri?n=4", "synth-brain-mri", out=tmp_path)


def test_description_pipeline_separates_classes_from_informative_descriptions(brain, tmp_path):
    source, task = brain
    summary = vqa(_Oracle(source, task, "oracle"), source, task, prompts="describe", out=tmp_path,
                  describe_with="encoder:tiny")
    points = summary["description"]["points"]
    assert {p["point"] for p in points} == {"description.desc-detail", "description.desc-report"}
    # the oracle names the class in every description: a probe on even a random text encoder recovers it
    assert all(p["skill"] > 0.8 for p in points)
    assert (tmp_path / "description" / "results.jsonl").is_file()


def test_description_pipeline_with_a_text_llm(brain, tmp_path):
    source, task = brain
    summary = vqa(_Oracle(source, task, "oracle"), source, task, prompts="desc-detail", out=tmp_path,
                  describe_with="llm:tiny")
    (point,) = summary["description"]["points"]
    assert point["point"] == "description.desc-detail" and point["n"] == len(source)
    rows = (tmp_path / "description" / "llm_answers.jsonl").read_text().splitlines()
    assert len(rows) == len(source)


@pytest.mark.parametrize("arch", TINY_VLMS + ["medgemma"])
def test_every_tiny_vlm_projects_the_image_into_its_language_model(arch, tmp_path):
    """The projector output varies with the image (a zero-initialised projection would hide the image from the LM)."""
    from medfrag_probe.cache import EmbeddingCache
    from medfrag_probe.extraction import extract

    result = extract(f"tiny:{arch}", "synth:brain-mri?n=4", points="projector", poolings="mean",
                     out=tmp_path / "c.h5")
    features = EmbeddingCache(result.path).load("projector", "mean")
    assert np.isfinite(features).all() and features.std(0).mean() > 1e-3


# ---- scored closed questions -------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", TINY_VLMS)
def test_scored_choice_equals_constrained_greedy_generation(arch):
    """HF's own generate, restricted to the options' first tokens, picks the option the scored mode ranks first."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from medfrag_probe.models.loading import load_adapter

    class Only(LogitsProcessor):
        def __init__(self, allowed):
            self.allowed = allowed

        def __call__(self, ids, scores):
            mask = torch.full_like(scores, float("-inf"))
            mask[:, self.allowed] = 0
            return scores + mask

    adapter = load_adapter(f"tiny:{arch}", lm=True, device="cpu")
    source = open_source("synth:brain-mri?n=6")
    images = [source.image(i) for i in range(6)]
    tokenizer = adapter.processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for prompt, options in (("Is there a tumor in this MRI?", ["Yes", "No"]),
                            ("Which?\nA. glioma\nB. meningioma\nC. no tumor\nAnswer with a letter.", ["A", "B", "C"])):
        inputs = adapter.chat_inputs([prompt + " " * i for i in range(6)], images)  # mixed lengths: left padding
        scores = adapter.option_scores(inputs, [options] * 6, variants=False)
        allowed = [next(iter(adapter.first_tokens(o, variants=False))) for o in options]
        assert len(set(allowed)) == len(options)
        out = adapter.model.generate(**inputs, max_new_tokens=1, do_sample=False, pad_token_id=pad,
                                     logits_processor=LogitsProcessorList([Only(allowed)]))
        chosen = [allowed.index(t) for t in out[:, -1].tolist()]
        assert chosen == [int(np.argmax(s)) for s in scores]
        assert all(abs(sum(s) - 1) < 1e-5 for s in scores)


@pytest.mark.parametrize("arch", TINY_VLMS)
def test_scored_options_follow_their_second_token_where_first_tokens_collide(arch):
    """A form whose first token also begins other forms (the tiny tokenizer writes " C" as a bare space then "C")
    is scored P(t1) P(t2 | t1); the reference is HF's own generate, forced to t1, reading its second-step scores."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from medfrag_probe.models.loading import load_adapter

    class Force(LogitsProcessor):
        def __init__(self, token, at):
            self.token, self.at = token, at

        def __call__(self, ids, scores):
            if ids.shape[1] == self.at:
                scores = torch.full_like(scores, float("-inf"))
                scores[:, self.token] = 0
            return scores

    adapter = load_adapter(f"tiny:{arch}", lm=True, device="cpu")
    source = open_source("synth:brain-mri?n=3")
    images = [source.image(i) for i in range(3)]
    options = ["A", "B", "C", "D"]
    inputs = adapter.chat_inputs(["Which?\nA. glioma\nB. meningioma\nC. none\nD. pituitary" + " " * i
                                  for i in range(3)], images)
    scores = np.array(adapter.option_scores(inputs, [options] * 3))
    with torch.inference_mode():
        logits = adapter.model(**{k: v for k, v in inputs.items() if k != "labels"}).logits[:, -1].float()
    first = torch.softmax(logits, -1)
    tokenizer = adapter.processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    expected = np.zeros((3, 4))
    for k, option in enumerate(options):
        for seq in adapter.option_sequences(option):
            row = adapter._shared_first(seq[0], [adapter.option_sequences(o) for o in options])
            p = first[:, seq[0]].numpy().astype(float)
            if len(seq) > 1 and row:
                out = adapter.model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=pad,
                                             output_scores=True, return_dict_in_generate=True,
                                             logits_processor=LogitsProcessorList(
                                                 [Force(seq[0], inputs["input_ids"].shape[1])]))
                p = p * torch.softmax(out.scores[1].float(), -1)[:, seq[1]].numpy()
            expected[:, k] += p
    expected /= expected.sum(1, keepdims=True)
    assert np.allclose(scores, expected, atol=2e-4)


def test_scored_mode_writes_option_probabilities_and_a_vqa_auroc(tmp_path):
    source = open_source("synth:chest-xray?n=24")
    summary = vqa("tiny:llava", source, "synth-chest-xray", prompts="yes_no,multiple_choice", out=tmp_path,
                  describe_with=None, answer_mode="score", device="cpu")
    rows = _answers(tmp_path)
    assert rows and all(r["option_probs"] and abs(sum(r["option_probs"].values()) - 1) < 1e-4 for r in rows)
    assert all(r["parsed"] == max(r["option_probs"], key=r["option_probs"].get) for r in rows)
    assert all(r["answer_kind"] == "answer" for r in rows)  # a constrained choice always answers
    assert 0.0 <= summary["scored"]["auroc"] <= 1.0 and summary["scored"]["n"] == 24
    with pytest.raises(UserError, match="answer mode"):
        vqa("tiny:llava", source, "synth-chest-xray", out=tmp_path / "x", answer_mode="logits")


# ---- measures that mean what they say ----------------------------------------------------------------------------

@dataclass
class _Scripted:
    """Answers every prompt from a fixed rule: `yes_no` for yes/no prompts, the right class for the others; refuses
    without an image when `blind_refuses`."""

    source: object
    task: object
    yes_no: str
    blind_refuses: bool = False
    spec: str = "fake:scripted"
    can_generate: bool = True
    loaded: str = "full"
    reads_point: str = ""
    arch: str = "fake"

    def fingerprints(self):
        return {"model": "fp", "vision": "fp"}

    def chat_inputs(self, prompts, images=None):
        return {"prompts": prompts, "images": images}

    def generate(self, inputs, *, max_new_tokens):
        images = inputs["images"] or [None] * len(inputs["prompts"])
        labels = {self.source.image(i).tobytes(): self.source.classes[s.label]
                  for i, s in enumerate(self.source.samples)}
        out = []
        for text, image in zip(inputs["prompts"], images):
            prompt = next(p for p in self.task.prompts() if p.render() == text)
            if image is None and self.blind_refuses:
                out.append("I cannot provide a diagnosis without the image; please consult a radiologist.")
            elif prompt.kind == "yes_no" or prompt.group:
                out.append(self.yes_no)
            else:
                label = labels.get(image.tobytes()) if image is not None else self.source.classes[0]
                out.append(label.replace("_", " ") if prompt.kind == "open" else
                           f"({self.task.expected(prompt, label)})")
        return out


def test_yes_no_answers_do_not_vote_for_a_class_when_there_are_more_than_two(brain, tmp_path):
    source, task = brain
    assert len(task.classes) > 2
    skills = [vqa(_Scripted(source, task, word), source, task, out=tmp_path / word, describe_with=None,
                  prompts="yes_no,multiple_choice")["classification"]["skill"] for word in ("Yes.", "No.")]
    assert skills[0] == skills[1] == 1.0  # the multiple-choice answers are right; the yes/no words change nothing


def test_a_model_that_refuses_without_the_image_is_not_ideal(brain, tmp_path):
    source, task = brain
    summary = vqa(_Scripted(source, task, "Yes.", blind_refuses=True), source, task, conditions="image,no-image",
                  prompts="paraphrase", out=tmp_path, describe_with=None)
    quadrants = summary["quadrants"]
    assert quadrants["Abstains-blind"] == 1.0 and quadrants["Ideal"] == 0.0


def test_psf_yes_no_set_read_from_a_perfectly_right_responder_in_plain_words(tmp_path):
    """Statements, not just yes/no words: "Pneumonia is present", "There is no pneumonia", ..."""
    task = load_task("pneumonia-xray")
    source = open_source("synth:chest-xray?n=40")
    words = {True: ["Pneumonia is present.", "Yes, there is pneumonia in the right lower lobe.",
                    "There is evidence of pneumonia.", "Positive for pneumonia."],
             False: ["There is no pneumonia.", "Negative for pneumonia.", "No, the lungs show no pneumonia.",
                     "The image does not show pneumonia."]}
    labels = {source.image(i).tobytes(): source.classes[s.label] for i, s in enumerate(source.samples)}

    class Right(_Scripted):
        def generate(self, inputs, *, max_new_tokens):
            out = []
            for k, (text, image) in enumerate(zip(inputs["prompts"], inputs["images"])):
                prompt = next(p for p in task.prompts() if p.render() == text)
                expected = task.expected(prompt, labels[image.tobytes()])
                if "pneumonia" not in prompt.text.lower():
                    out.append("Yes." if expected == "yes" else "No.")
                    continue
                present = (expected == "yes") != prompt.negated
                # "Yes, there is pneumonia" to "Are the lungs clear of pneumonia?" contradicts itself: statements only
                options = [w for w in words[present] if not prompt.negated or not w.startswith(("Yes", "No"))]
                out.append(options[(k + len(text)) % len(options)])
            return out

    summary = vqa(Right(source, task, ""), source, task, prompts="yes_no,paraphrase", out=tmp_path, describe_with=None)
    assert summary["conditions"]["image"]["accuracy"] >= 0.98
    assert summary["conditions"]["image"]["unparsed_rate"] == 0.0


def test_abstentions_are_credited_at_chance_and_unparsed_answers_at_zero():
    from medfrag_probe.answering.measures import ABSTAINED, UNPARSED, class_scores

    classes = ["a", "b", "c", "d"]
    labels = ["a", "b", "c", "d"] * 5
    assert class_scores(labels, [ABSTAINED] * 20, classes)["skill"] == pytest.approx(0.0)
    assert class_scores(labels, [UNPARSED] * 20, classes)["skill"] == pytest.approx(-1 / 3)  # credit 0 = all wrong
    scores = class_scores(labels, [ABSTAINED] * 10 + [UNPARSED] * 10, classes)
    assert scores["abstained_rate"] == 0.5 and scores["unparsed_rate"] == 0.5 and scores["answered_rate"] == 0.0


def test_standard_errors_cluster_by_patient_not_by_image():
    from types import SimpleNamespace

    from medfrag_probe.answering.measures import item_stats

    # 10 patients x 4 images; a patient's images are all right or all wrong: 10 independent units, not 40
    records = [SimpleNamespace(sample_id=f"p{p}-{i}", group=f"p{p}", expected="yes", correct=p % 2 == 0,
                               answer_kind="answer") for p in range(10) for i in range(4)]
    stats = item_stats(records)
    assert stats["n_patients"] == 10
    assert stats["accuracy_se"] == pytest.approx(np.sqrt(0.25 / 9), rel=0.01)  # the SE of a mean of 10 coin flips


def test_clustered_rate_intervals_hold_their_level_near_the_ends():
    """Answers with patient effects (a random logit offset per patient): the rate's 95% interval covers the
    population rate ~95% of the time in the middle and near 100%, where value +- 1.96 SE covers far less."""
    from scipy.special import expit, logit

    from medfrag_probe.answering.measures import rate

    rng = np.random.default_rng(0)
    for p, sd, patients, per in [(0.5, 1.0, 80, 6), (0.97, 1.0, 80, 6), (0.99, 0.5, 40, 3)]:
        truth = expit(logit(p) + rng.normal(0, sd, 1_000_000)).mean()
        covered, wald = [], []
        for _ in range(1500):
            chance = expit(logit(p) + rng.normal(0, sd, patients))
            values = (rng.random((patients, per)) < chance[:, None]).astype(float).ravel()
            r = rate(values, np.repeat(np.arange(patients), per))
            covered.append(r["ci"][0] <= truth <= r["ci"][1])
            wald.append(abs(r["value"] - truth) <= 1.96 * r["se"])
        assert 0.93 <= np.mean(covered) <= 0.975, (p, np.mean(covered))
        if p == 0.99:
            assert np.mean(wald) < 0.85  # what the old interval did
    assert rate(np.ones(30), np.arange(30))["ci"][0] < 0.95  # 30 of 30 right is not certainty
