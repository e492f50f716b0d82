"""VQA generation benchmark (not part of the test run). Prints a final JSON line.

A random LLaVA-1.5-shaped model (CLIP ViT-B/16-sized tower at 224 px, a 6-layer 512-wide Llama decoder), with the
tiny model's tokenizer and processor, answers prompts about synthetic brain MRIs under the `image` condition (16 new
tokens each), through `medfrag_probe.answering.vqa`.

- `batch_speedup`: wall time at batch size 1 over batch size 8 (every yes/no and multiple-choice prompt of
  `synth-brain-mri` about `--batch-images` images, prefix sharing off); `same_batch_answers`: identical answers.
- `prefix_speedup`: answers per second with prefix sharing over answers per second without it, batch size 8, on
  `--images` images x 25 prompts each (the task's yes/no, multiple-choice, open and paraphrase prompts plus eight
  more wordings; with sharing each image and the chat's common prefix run once per image, `models.prefix`);
  `same_prefix_answers`: the two answer files are identical.
- `shared_saving`: generate calls avoided by answering `no-image` and `blank` once per prompt instead of once per
  sample (1 - calls made / calls a per-sample loop makes), measured by counting calls.

    python tests/bench/bench_vqa.py [--images 16] [--batch-images 8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from medfrag_probe.answering import vqa


def build(out: Path) -> str:
    import torch
    import transformers

    from medfrag_probe.models.tiny import tiny_spec

    tiny = Path(tiny_spec("llava").removeprefix("hf:"))
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                           num_attention_heads=12, image_size=224, patch_size=16)
    text = transformers.LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                                    num_attention_heads=8, num_key_value_heads=8, vocab_size=32000,
                                    max_position_embeddings=1024)
    image_token = transformers.AutoTokenizer.from_pretrained(tiny).convert_tokens_to_ids("<image>")
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token,
                                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    transformers.LlavaForConditionalGeneration(config).save_pretrained(out)
    processor = transformers.AutoProcessor.from_pretrained(tiny)
    processor.image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 224},
                                                                crop_size={"height": 224, "width": 224})
    processor.patch_size = 16
    processor.save_pretrained(out)
    return f"hf:{out}"


def shaped_adapter(folder: Path):
    """The LLaVA-1.5-shaped model built into `folder` and loaded with its language model, quietly, on every core."""
    import torch

    from medfrag_probe._log import set_quiet
    from medfrag_probe.models.loading import load_adapter

    set_quiet(True)
    torch.set_num_threads(os.cpu_count() or 1)
    return load_adapter(build(folder), lm=True)


class Counting:
    """Counts generate calls of a loaded adapter."""

    def __init__(self, adapter):
        self.adapter, self.calls = adapter, 0

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    def generate(self, inputs, *, max_new_tokens):
        self.calls += 1
        return self.adapter.generate(inputs, max_new_tokens=max_new_tokens)


MORE_WORDINGS = ["Do you see a tumor in this scan?", "Is any mass visible in this brain image?",
                 "Would you report a brain tumor for this MRI?", "Is there a lesion suggesting a tumor here?",
                 "Does this scan contain a tumor? Reply yes or no.", "Is a neoplasm present in this MRI?",
                 "Are there findings of a brain tumor in this image?", "Is this image positive for a brain tumor?"]


def long_task(out: Path) -> Path:
    """synth-brain-mri with eight more yes/no wordings and a third multiple-choice wording: 25 prompts to answer."""
    import yaml

    from medfrag_probe._yaml import configs_dir

    task = yaml.safe_load((configs_dir("tasks") / "synth-brain-mri.yaml").read_text())
    task["name"] = "synth-brain-mri-long"
    task["yes_no"] += [{"id": f"yn-more-{i}", "text": text} for i, text in enumerate(MORE_WORDINGS)]
    task["multiple_choice"].append({"id": "mc-short", "text": "Which of these is shown?"})
    out.write_text(yaml.safe_dump(task))
    return out


def timed(adapter, data, task, out: Path, *, size: int, share: bool, **common) -> tuple[float, str]:
    adapter.share_prefix = share
    start = time.perf_counter()
    vqa(adapter, data, task, batch_size=size, out=out, **common)
    return time.perf_counter() - start, (out / "answers.jsonl").read_text()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-images", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapter = shaped_adapter(tmp / "model")
        closed = dict(prompts="yes_no,multiple_choice", max_new_tokens=16, describe_with=None)
        small = f"synth:brain-mri?n={args.batch_images}&size=224"
        b1_s, b1 = timed(adapter, small, "synth-brain-mri", tmp / "b1", size=1, share=False, **closed)
        b8_s, b8 = timed(adapter, small, "synth-brain-mri", tmp / "b8", size=8, share=False, **closed)
        task = long_task(tmp / "long.yaml")
        many = dict(prompts="yes_no,multiple_choice,open,paraphrase", max_new_tokens=16, describe_with=None)
        data = f"synth:brain-mri?n={args.images}&size=224"
        plain_s, plain = timed(adapter, data, task, tmp / "plain", size=8, share=False, **many)
        shared_s, shared = timed(adapter, data, task, tmp / "shared", size=8, share=True, **many)
        adapter.share_prefix = False
        counted = Counting(adapter)
        vqa(counted, small, "synth-brain-mri", conditions="image,no-image,blank", batch_size=1, out=tmp / "controls",
            **closed)
    answers = plain.count("\n")
    print(json.dumps({"batch_images": args.batch_images, "batch1_s": round(b1_s, 2), "batch8_s": round(b8_s, 2),
                      "batch_speedup": round(b1_s / b8_s, 2), "same_batch_answers": b1 == b8,
                      "images": args.images, "prompts_per_image": answers // args.images, "answers": answers,
                      "plain_s": round(plain_s, 2), "shared_s": round(shared_s, 2),
                      "answers_per_s_plain": round(answers / plain_s, 2),
                      "answers_per_s_shared": round(answers / shared_s, 2),
                      "prefix_speedup": round(plain_s / shared_s, 2), "same_prefix_answers": plain == shared,
                      "shared_saving": round(1 - counted.calls / (3 * b8.count("\n")), 3)}))


if __name__ == "__main__":
    main()
