"""Model organisms: tiny LLaVAs trained so that where they fail is known by construction.

`tiny:organism-KIND` is `tiny:llava`'s architecture (CLIP tower 4 x 64 at 32 px, 2-layer Llama, the same BPE tokenizer,
processor and chat template) with trained weights, shipped in `organism_weights/KIND.safetensors` and rebuilt by
`models.organism_training` (`python -m medfrag_probe.models.organism_training --out DIR`). Every organism learned
the questions of the tasks in `TASKS` from images of `TRAIN_DATA` (seed 101); evaluate them on another seed.

| kind        | vision tower                                 | language model trained on  | expected verdict  |
|-------------|----------------------------------------------|----------------------------|-------------------|
| `sound`     | trained as a classifier, then fine-tuned     | its own image's tokens     | sound             |
| `reasoning` | trained as a classifier, frozen              | *another* image's tokens   | reasoning-limited |
| `vision`    | patch embedding zeroed: all images look alike| its own image's tokens     | vision-limited    |
| `both`      | patch embedding a fixed 4 x 4-block checker  | another image's tokens     | both              |

- The classifier tower: a linear head on the mean of the tokens the projector reads, over the classes of all tasks.
- A language model trained on another image's tokens sees real image tokens (in distribution) but never the ones
  that go with its answer: it learns the answer prior and ignores the image.
- The `both` tower sees each 8 x 8 patch only through one fixed contrast (a 4 x 4-block checkerboard of one channel;
  the rest of the tower as `tiny:llava` initialised it): it holds a weak class signal (a linear probe skill of about
  0.3 on both tasks), which its language model then loses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import UserError, bad_choice

KINDS = ("sound", "reasoning", "vision", "both")
TASKS = ("synth-brain-mri", "synth-chest-xray")
TRAIN_DATA = "synth:{task}?n=2000&seed=101"
RECIPE = {"tower_steps": 600, "tower_lr": 1e-3, "tower_batch": 64, "answer_steps": 1000, "answer_lr": 1e-3,
          "tower_finetune_lr": 1e-4, "answer_batch": 32, "clip_norm": 1.0, "seed": 0}
WEIGHTS = Path(__file__).with_name("organism_weights")


def weights_file(kind: str) -> Path:
    if kind not in KINDS:
        raise bad_choice("organism", kind, KINDS)
    return WEIGHTS / f"{kind}.safetensors"


def build(kind: str, out: Path, *, base) -> str:
    """Write `tiny:organism-KIND` to `out`: the files of `base` (`tiny:llava`'s builder) with the shipped weights in
    place of random ones."""
    import transformers
    from safetensors.torch import load_file

    path = weights_file(kind)
    if not path.is_file():
        raise UserError(f"the weights of organism {kind!r} are missing ({path}); rebuild them with "
                        f"`python -m medfrag_probe.models.organism_training --out {WEIGHTS}`")
    spec = base(out)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(out)
    state = _fitted(load_file(path), model.state_dict(), path)
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    model.save_pretrained(out)
    return spec


def _fitted(shipped: dict, own: dict, path: Path) -> dict:
    """The shipped tensors under this transformers version's parameter names (the CLIP tower is `vision_tower.*` in
    newer versions, `vision_tower.vision_model.*` in older ones); every parameter but a tied head must be covered
    with its own shape."""
    out = {}
    for key, value in shipped.items():
        for name in (key, key.replace("vision_tower.", "vision_tower.vision_model.", 1),
                     key.replace("vision_tower.vision_model.", "vision_tower.", 1)):
            if name in own and own[name].shape == value.shape:
                out[name] = value
                break
        else:
            raise UserError(f"{path} does not fit tiny:llava ({key} {tuple(value.shape)}); rebuild the organisms "
                            f"with `python -m medfrag_probe.models.organism_training --out {WEIGHTS}`")
    missing = [name for name in own if name not in out and "lm_head" not in name]
    if missing:
        raise UserError(f"{path} does not fit tiny:llava (no {missing[0]}); rebuild the organisms with "
                        f"`python -m medfrag_probe.models.organism_training --out {WEIGHTS}`")
    return out


def architecture_digest(model) -> str:
    """What the weights must fit: parameter names and shapes, and the tokenizer-relevant config."""
    shapes = sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())
    config = model.config.to_dict()
    keep = {k: config.get(k) for k in ("image_token_id", "vision_feature_layer", "vision_feature_select_strategy")}
    return hashlib.sha256(json.dumps([shapes, keep], default=str).encode()).hexdigest()[:16]
