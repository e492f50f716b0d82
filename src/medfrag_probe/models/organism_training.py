"""Training the model organisms (`models.organisms`): rebuild their weights with

    python -m medfrag_probe.models.organism_training --out DIR     # about 4 minutes per organism on 2 cores
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import bad_choice
from .organisms import KINDS, RECIPE, TASKS, TRAIN_DATA, WEIGHTS, architecture_digest


def train(kind: str, out: Path, *, log=print) -> dict:
    """Train organism `kind` from `tiny:llava` and save its weights to `out` (a .safetensors file). About 2 to 3
    minutes on 2 CPU cores; returns the timings."""
    import transformers
    from safetensors.torch import save_file

    from ..answering.tasks import load_task
    from ..data.sources import open_source
    from .tiny import tiny_spec

    if kind not in KINDS:
        raise bad_choice("organism", kind, KINDS)
    recipe = RECIPE
    torch.manual_seed(recipe["seed"])
    rng = np.random.default_rng(recipe["seed"])
    base = Path(tiny_spec("llava").removeprefix("hf:"))
    model = transformers.LlavaForConditionalGeneration.from_pretrained(base)
    processor = transformers.AutoProcessor.from_pretrained(base)
    data = _training_data(processor, load_task, open_source)
    tower, layer = model.model.vision_tower, model.config.vision_feature_layer
    timings = {}

    start = time.perf_counter()
    if kind in ("vision", "both"):
        _fix_patch_embedding(tower, kind)
    else:
        _train_classifier(tower, layer, data, recipe)
    timings["tower_s"] = round(time.perf_counter() - start, 1)
    log(f"organism {kind}: tower ready in {timings['tower_s']} s")
    if kind != "sound":
        tower.requires_grad_(False)

    start = time.perf_counter()
    _train_answers(model, processor, data, recipe, rng, other_image=kind in ("reasoning", "both"))
    timings["answers_s"] = round(time.perf_counter() - start, 1)
    log(f"organism {kind}: answers trained in {timings['answers_s']} s")
    model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if "lm_head" not in k
             or not model.config.get_text_config().tie_word_embeddings}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"kind": kind, "architecture": architecture_digest(model),
                                          "recipe": json.dumps(recipe), "tasks": ",".join(TASKS),
                                          "train_data": TRAIN_DATA, "torch": torch.__version__})
    return timings


def _training_data(processor, load_task, open_source) -> list[dict]:
    """Per task: its questions, images, pixel tensors, labels and class offset in the joint classifier."""
    data, offset = [], 0
    for name in TASKS:
        source = open_source(TRAIN_DATA.format(task=name.removeprefix("synth-")))
        images = [source.image(i) for i in range(len(source))]
        data.append({"task": load_task(name), "classes": list(source.classes), "images": images,
                     "pixels": processor.image_processor(images, return_tensors="pt")["pixel_values"],
                     "labels": torch.tensor([s.label for s in source.samples]), "offset": offset})
        offset += len(source.classes)
    return data


def _fix_patch_embedding(tower, kind: str) -> None:
    with torch.no_grad():
        weight = tower.embeddings.patch_embedding.weight  # (width, 3, 8, 8)
        weight.zero_()
        if kind == "both":
            side = weight.shape[-1]
            block = torch.arange(side) // max(side // 2, 1)
            checker = (-1.0) ** (block[:, None] + block[None, :])
            weight[0] = checker / weight[0].numel()
        if tower.embeddings.patch_embedding.bias is not None:
            tower.embeddings.patch_embedding.bias.zero_()


def _train_classifier(tower, layer: int, data: list[dict], recipe: dict) -> None:
    classes = sum(len(d["classes"]) for d in data)
    head = torch.nn.Linear(tower.config.hidden_size, classes)
    optimiser = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=recipe["tower_lr"])
    for step in range(recipe["tower_steps"]):
        part = data[step % len(data)]
        rows = torch.randint(0, len(part["pixels"]), (recipe["tower_batch"],))
        tokens = tower(part["pixels"][rows], output_hidden_states=True).hidden_states[layer][:, 1:]
        loss = torch.nn.functional.cross_entropy(head(tokens.mean(1)), part["labels"][rows] + part["offset"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def _train_answers(model, processor, data: list[dict], recipe: dict, rng, *, other_image: bool) -> None:
    own = {id(p) for p in model.model.vision_tower.parameters()}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in own],
               "lr": recipe["answer_lr"]},
              {"params": [p for p in model.model.vision_tower.parameters() if p.requires_grad],
               "lr": recipe["tower_finetune_lr"]}]
    groups = [g for g in groups if g["params"]]
    optimiser = torch.optim.AdamW(groups)
    steps = recipe["answer_steps"]
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                   pct_start=0.1)
    prompts = [d["task"].prompts() for d in data]
    model.train()
    for step in range(steps):
        k = step % len(data)
        part = data[k]
        rows = torch.randint(0, len(part["images"]), (recipe["answer_batch"],)).tolist()
        batch, target = _answer_batch(processor, part["task"], prompts[k], [part["images"][i] for i in rows],
                                      [part["classes"][part["labels"][i]] for i in rows], rng)
        shown = batch["pixel_values"]
        if other_image:  # the language model reads another image's tokens: it can only learn the answer prior
            shown = shown[torch.roll(torch.arange(len(rows)), 1)]
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=shown,
                     labels=target).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["clip_norm"])
        optimiser.step()
        schedule.step()


def _answer_batch(processor, task, prompts, images, classes, rng):
    """Chat-formatted prompt + answer sequences; the loss is on the answer tokens only."""
    prefixes, full = [], []
    for name in classes:
        prompt = prompts[rng.integers(len(prompts))]
        answer = (task.expected(prompt, name) if prompt.kind != "describe" else name).replace("_", " ")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.render()}]}]
        prefix = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prefixes.append(prefix)
        full.append(f"{prefix} {answer}{processor.tokenizer.eos_token}")
    processor.tokenizer.padding_side = "right"
    batch = processor(images=images, text=full, return_tensors="pt", padding=True)
    target = batch["input_ids"].clone()
    lengths = [len(ids) for ids in processor(images=images, text=prefixes, padding=False)["input_ids"]]
    for row, length in enumerate(lengths):
        target[row, :length] = -100
    target[batch["attention_mask"] == 0] = -100
    return batch, target


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Rebuild the organisms' weights (about 4 minutes each on 2 cores).")
    parser.add_argument("--out", type=Path, default=WEIGHTS, help="folder for KIND.safetensors (default: shipped)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    args = parser.parse_args(argv)
    for kind in args.kinds.split(","):
        timings = train(kind.strip(), args.out / f"{kind.strip()}.safetensors")
        print(json.dumps({"kind": kind.strip(), **timings}), flush=True)


if __name__ == "__main__":
    main()
