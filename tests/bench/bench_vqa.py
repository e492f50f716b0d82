"""VQA generation benchmark (not part of the test run). Prints a final JSON line.

A random LLaVA-1.5-shaped model (CLIP ViT-B/16-sized tower at 224 px, a 6-layer 512-wide Llama decoder), with the
tiny model's tokenizer and processor, answers every yes/no and multiple-choice prompt of `synth-brain-mri` about 16
images under the `image` condition (16 new tokens each), through `medfrag_probe.vqa.vqa`.

- `batch_speedup`: wall time at batch size 1 over batch size 8; the answers must be identical (`same_answers`).
- `shared_saving`: generate calls avoided by answering `no-image` and `blank` once per prompt instead of once per
  sample (1 - calls made / calls a per-sample loop makes), measured by counting calls.

    python tests/bench/bench_vqa.py [--images 16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


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


class Counting:
    """Counts generate calls of a loaded adapter."""

    def __init__(self, adapter):
        self.adapter, self.calls = adapter, 0

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    def generate(self, inputs, *, max_new_tokens):
        self.calls += 1
        return self.adapter.generate(inputs, max_new_tokens=max_new_tokens)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    import torch

    from medfrag_probe._log import set_quiet
    from medfrag_probe.models.loading import load_adapter
    from medfrag_probe.vqa import vqa

    set_quiet(True)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapter = load_adapter(build(tmp / "model"), lm=True)
        data = f"synth:brain-mri?n={args.images}&size=224"
        common = dict(prompts="yes_no,multiple_choice", max_new_tokens=16, describe_with=None)
        seconds, answers = {}, {}
        for size in (1, 8):
            start = time.perf_counter()
            vqa(adapter, data, "synth-brain-mri", batch_size=size, out=tmp / f"b{size}", **common)
            seconds[size] = time.perf_counter() - start
            answers[size] = (tmp / f"b{size}" / "answers.jsonl").read_text()
        counted = Counting(adapter)
        vqa(counted, data, "synth-brain-mri", conditions="image,no-image,blank", batch_size=1, out=tmp / "shared",
            **common)
    items = answers[8].count("\n")
    per_sample_calls = 3 * items
    print(json.dumps({"images": args.images, "answers": items, "batch1_s": round(seconds[1], 2),
                      "batch8_s": round(seconds[8], 2), "batch_speedup": round(seconds[1] / seconds[8], 2),
                      "same_answers": answers[1] == answers[8], "answers_per_s_batch8": round(items / seconds[8], 1),
                      "shared_saving": round(1 - counted.calls / per_sample_calls, 3)}))


if __name__ == "__main__":
    main()
