"""Feasibility of model organisms (issue 13): train a tiny LLaVA whose place of failure is known by construction,
then run the real pipeline (extract -> probe -> vqa -> bridge) on synthetic data of a seed it was not trained on, and
print the verdict as one JSON line. Not part of the test run; about 3 minutes per organism on 2 CPU cores.

    python tests/bench/organism_feasibility.py --kind sound --task synth-chest-xray --seed 7 --n 640

Kinds (all start from `tiny:llava`: CLIP tower 4 x 64 at 32 px, 2-layer Llama, the demo's BPE tokenizer):
- `sound`: the tower is trained as a classifier on the task's images (a linear head on the mean of the tokens the
  projector reads), then tower (at a tenth of the learning rate), projector and language model learn to answer the
  task's prompts (yes/no, both multiple-choice orders, open, paraphrases; descriptions answered with the class).
- `reasoning`: the same classifier tower, frozen; the language model learns the answers from the image tokens of
  *another* image of the batch, so it learns the answer prior and never the image.
- `vision`: a tower that cannot see: patch embeddings zeroed and frozen (every image gives the same tokens); the
  language model is trained as for `sound` and uses what it sees, which is nothing.
- `both`: a tower that sees only each patch's mean intensity (one patch-embedding channel, an 8 x 8 x 3 average; the
  rest of the tower as initialised), frozen: a weak signal on synth-brain-mri (a probe skill of about 0.2), not on
  synth-chest-xray, where the intensity grid alone carries most of the class; the language model is trained as for
  `reasoning`, so it loses even that.
Training images: `synth:TASK?n=3000&seed=101`; evaluation: `synth:TASK?n=N&seed=SEED`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def train(kind: str, task_name: str, *, steps: int, out: Path, seed: int = 0) -> dict:
    import transformers

    from medfrag_probe.answering.tasks import load_task
    from medfrag_probe.data.sources import open_source
    from medfrag_probe.models.tiny import tiny_spec

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    base = Path(tiny_spec("llava").removeprefix("hf:"))
    model = transformers.LlavaForConditionalGeneration.from_pretrained(base)
    processor = transformers.AutoProcessor.from_pretrained(base)
    task = load_task(task_name)
    source = open_source(f"synth:{task_name.removeprefix('synth-')}?n=3000&seed=101")
    images = [source.image(i) for i in range(len(source))]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    labels = torch.tensor([s.label for s in source.samples])
    tower, layer = model.model.vision_tower, model.config.vision_feature_layer
    timings = {}

    start = time.perf_counter()
    if kind in ("vision", "both"):
        with torch.no_grad():
            weight = tower.embeddings.patch_embedding.weight
            weight.zero_()
            if kind == "both":
                weight[0] = 1.0 / weight[0].numel()
    else:
        head = torch.nn.Linear(tower.config.hidden_size, len(source.classes))
        optimiser = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=1e-3)
        for _ in range(600):
            rows = torch.randint(0, len(pixels), (64,))
            tokens = tower(pixels[rows], output_hidden_states=True).hidden_states[layer][:, 1:]
            loss = torch.nn.functional.cross_entropy(head(tokens.mean(1)), labels[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    timings["tower_s"] = round(time.perf_counter() - start, 1)
    if kind in ("reasoning", "vision", "both"):
        for p in tower.parameters():
            p.requires_grad_(False)

    own = {id(p) for p in tower.parameters()}
    groups = [g for g in ({"params": [p for p in model.parameters() if p.requires_grad and id(p) not in own],
                           "lr": 1e-3},
                          {"params": [p for p in tower.parameters() if p.requires_grad], "lr": 1e-4}) if g["params"]]
    optimiser = torch.optim.AdamW(groups)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                   pct_start=0.1)
    prompts = task.prompts()
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(pixels), (32,)).tolist()
        batch, target = _batch(processor, task, prompts, [images[i] for i in rows],
                               [source.classes[labels[i]] for i in rows], rng)
        shown = batch["pixel_values"]
        if kind in ("reasoning", "both"):  # the LM reads another image's tokens: it can only learn the prior
            shown = shown[torch.randperm(len(rows))]
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=shown,
                     labels=target).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
    timings["answers_s"] = round(time.perf_counter() - start, 1)
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return timings


def _batch(processor, task, prompts, images, classes, rng):
    """Chat-formatted prompt + answer sequences; the loss is on the answer tokens only."""
    prefixes, full = [], []
    for name in classes:
        prompt = prompts[rng.integers(len(prompts))]
        answer = (task.expected(prompt, name) if prompt.kind != "describe" else name).replace("_", " ")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.render()}]}]
        prefix = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prefixes.append(prefix)
        full.append(f"{prefix} {answer}{processor.tokenizer.eos_token}")
    batch = processor(images=images, text=full, return_tensors="pt", padding=True)
    target = batch["input_ids"].clone()
    for row, (image, prefix) in enumerate(zip(images, prefixes)):
        length = len(processor(images=[image], text=[prefix], return_tensors="pt")["input_ids"][0])
        target[row, :length] = -100
    target[batch["attention_mask"] == 0] = -100
    return batch, target


def evaluate(model_dir: Path, task: str, *, seed: int, n: int, work: Path) -> dict:
    from medfrag_probe import bridge, extract, probe, vqa

    data = f"synth:{task.removeprefix('synth-')}?n={n}&seed={seed}"
    extract(f"hf:{model_dir}", data, points="vision.block.*,projector", poolings="mean", out=work / "c.h5")
    probe([work / "c.h5"], out=work / "probes", probes=("linear",), figures=False, replicates=500)
    vqa(f"hf:{model_dir}", data, task, out=work / "vqa", prompts="mc-diagnosis,open-diagnosis,paraphrase,yes_no",
        describe_with=None, limit=n, max_new_tokens=6)
    (r,) = bridge(work / "probes", work / "vqa", out=work / "bridge", figures=False, replicates=500)
    return {"verdict": r["verdict"], "probe_skill": round(r["probe_skill"], 3),
            "probe_skill_ci": [round(v, 3) for v in r["probe_skill_ci"]], "vqa_skill": round(r["vqa_skill"], 3),
            "vqa_skill_ci": [round(v, 3) for v in r["vqa_skill_ci"]], "gap_ci": [round(v, 3) for v in r["gap_ci"]],
            "answered_rate": r["answered_rate"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("sound", "reasoning", "vision", "both"), default="sound")
    parser.add_argument("--task", default="synth-chest-xray", choices=("synth-chest-xray", "synth-brain-mri"))
    parser.add_argument("--seed", type=int, default=7, help="seed of the evaluation data (training uses 101)")
    parser.add_argument("--n", type=int, default=640, help="evaluation images")
    parser.add_argument("--steps", type=int, default=500, help="answer-training steps")
    args = parser.parse_args()
    from medfrag_probe._log import set_quiet

    set_quiet(True)
    with tempfile.TemporaryDirectory() as tmp:
        timings = train(args.kind, args.task, steps=args.steps, out=Path(tmp) / "model")
        start = time.perf_counter()
        result = evaluate(Path(tmp) / "model", args.task, seed=args.seed, n=args.n, work=Path(tmp) / "eval")
    print(json.dumps({"kind": args.kind, "task": args.task, "seed": args.seed, "n": args.n, **result, **timings,
                      "evaluate_s": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
