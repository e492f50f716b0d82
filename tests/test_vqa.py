"""VQA runner and measures: batch invariance on every tiny VLM, controls, resume, and measures with known answers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from medfrag_probe.data.sources import open_source
from medfrag_probe.errors import UserError
from medfrag_probe.vqa import vqa
from medfrag_probe.vqa.tasks import load_task

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
    from medfrag_probe.extract import extract

    result = extract(f"tiny:{arch}", "synth:brain-mri?n=4", points="projector", poolings="mean",
                     out=tmp_path / "c.h5")
    features = EmbeddingCache(result.path).load("projector", "mean")
    assert np.isfinite(features).all() and features.std(0).mean() > 1e-3
