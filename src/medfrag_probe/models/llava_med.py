"""LLaVA-Med v1.5 (and other original-codebase LLaVA checkpoints) in their `llava_mistral` / `llava_llama` layout.

transformers cannot load these: their config carries `mm_*` keys instead of a `vision_config`, the projector is
`model.mm_projector.{0,2}`, the language model sits at `model.*`, and the CLIP tower is usually not in the
checkpoint at all but named by `mm_vision_tower` (a hub id or directory). This adapter builds the equivalent
transformers `LlavaConfig`, loads each component's weights into `LlavaForConditionalGeneration`, and pads images
to a square with the mean colour, as the original `image_aspect_ratio: pad` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import UserError
from .hf_common import drop_language_model, read_config
from .llava import LlavaAdapter
from .registry import register

PROJECTOR_KEYS = {"0": "linear_1", "2": "linear_2"}
TOWER_PREFIXES = ("model.vision_tower.vision_tower.", "model.vision_tower.")
ORIGINAL_ONLY = {"architectures", "model_type", "transformers_version", "torch_dtype", "dtype"}
MISTRAL_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}[INST] {% for c in m['content'] %}"
                    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]"
                    "{% else %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}{% endfor %}")


def is_original_llava(config: dict) -> bool:
    """Whether a raw config.json is the original LLaVA codebase layout."""
    return "mm_vision_tower" in config and "vision_config" not in config


@register("llava-original", model_types=("llava_mistral", "llava_llama"))
@dataclass
class LlavaOriginalAdapter(LlavaAdapter):
    """An original-layout LLaVA / LLaVA-Med checkpoint mapped onto transformers' LLaVA classes."""

    @classmethod
    def load(cls, target: str, *, spec: str, vision_only: bool, dtype: torch.dtype, trust_remote_code: bool = False):
        """Build the transformers config, then load tower, projector (and language model) weights by component."""
        import transformers

        raw = read_config(target)
        tower_dir = _resolve(raw["mm_vision_tower"], relative_to=target)
        processor = _processor(target, tower_dir)
        config = _llava_config(raw, tower_dir, processor.tokenizer, vision_only=vision_only)
        with torch.device("cpu"):
            model = transformers.LlavaForConditionalGeneration(config).to(dtype).eval()
        state = _read_checkpoint(target, keep_language=not vision_only)
        _load_components(model, state, tower_dir, vision_only=vision_only)
        if vision_only:
            drop_language_model(model)
        processor.patch_size = config.vision_config.patch_size
        adapter = cls(spec=spec, model=model, processor=processor, loaded="vision" if vision_only else "full")
        adapter.info["source_layout"] = raw.get("model_type", "llava")
        adapter.info["lm_layers"] = raw.get("num_hidden_layers")
        return adapter

    def fit_images(self, images):
        mean = tuple(int(round(255 * m)) for m in self.processor.image_processor.image_mean)
        return [_pad_square(image, mean) for image in images]


def _resolve(tower: str, *, relative_to: str) -> str:
    local = Path(relative_to).expanduser() / tower
    return str(local) if local.is_dir() else tower


def _llava_config(raw: dict, tower_dir: str, tokenizer, *, vision_only: bool):
    import transformers

    tower_cfg = read_config(tower_dir)
    vision = transformers.CLIPVisionConfig(**tower_cfg.get("vision_config", tower_cfg))
    text_cls = transformers.MistralConfig if raw.get("model_type") == "llava_mistral" else transformers.LlamaConfig
    text_fields = {k: v for k, v in raw.items() if not k.startswith("mm_") and k not in ORIGINAL_ONLY}
    text = text_cls(**text_fields)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    text.vocab_size = max(text.vocab_size, len(tokenizer))  # one row more when <image> was added to the tokenizer
    if vision_only:
        text.num_hidden_layers, text.vocab_size = 0, 8
    return transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id,
        vision_feature_layer=raw.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default" if raw.get("mm_vision_select_feature", "patch") == "patch" else "full",
        projector_hidden_act="gelu")


def _read_checkpoint(target: str, *, keep_language: bool) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    root = Path(target).expanduser()
    if not root.is_dir():
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(target, allow_patterns=["*.safetensors", "*.json", "*.model"]))
    index = root / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        p.name for p in root.glob("*.safetensors")]
    if not files:
        raise UserError(f"{root} holds no .safetensors weights (original .bin checkpoints: convert them first)")
    state = {}
    for name in files:
        with safe_open(str(root / name), "pt") as fh:
            for key in fh.keys():
                if keep_language or "mm_projector" in key or "vision_tower" in key:
                    state[key] = fh.get_tensor(key)
    return state


def _load_components(model, state: dict, tower_dir: str, *, vision_only: bool) -> None:
    projector = {f"{PROJECTOR_KEYS[k.split('.')[-2]]}.{k.split('.')[-1]}": v
                 for k, v in state.items() if ".mm_projector." in k}
    _strict(model.model.multi_modal_projector, projector, "projector")
    tower_state = {k[len(p):]: v for k, v in state.items() for p in TOWER_PREFIXES[:1] if k.startswith(p)}
    if not tower_state:
        import transformers

        tower_state = transformers.CLIPVisionModel.from_pretrained(tower_dir).state_dict()
    _strict(model.model.vision_tower, _fit_keys(tower_state, model.model.vision_tower), "vision tower")
    if not vision_only:
        language = {k[len("model."):]: v for k, v in state.items()
                    if k.startswith("model.") and "mm_projector" not in k and "vision_tower" not in k}
        _load_language(model, language, state.get("lm_head.weight"))


def _fit_keys(state: dict, module) -> dict:
    """Add or strip a `vision_model.` prefix so `state` matches `module`'s own key names."""
    wants_prefix = any(k.startswith("vision_model.") for k in module.state_dict())
    has_prefix = any(k.startswith("vision_model.") for k in state)
    if wants_prefix and not has_prefix:
        return {f"vision_model.{k}": v for k, v in state.items()}
    if has_prefix and not wants_prefix:
        return {k.removeprefix("vision_model."): v for k, v in state.items()}
    return state


def _load_language(model, language: dict, lm_head) -> None:
    lm = model.model.language_model
    embed = language.pop("embed_tokens.weight")
    rows = lm.embed_tokens.weight.shape[0]
    if embed.shape[0] == rows - 1:  # one row more for the <image> token the original code did not have
        embed = torch.cat([embed, embed.mean(0, keepdim=True)])
        lm_head = torch.cat([lm_head, lm_head.mean(0, keepdim=True)]) if lm_head is not None else None
    language["embed_tokens.weight"] = embed
    _strict(lm, language, "language model")
    if lm_head is not None:
        model.lm_head.weight.data.copy_(lm_head)


def _strict(module, state: dict, what: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(("position_ids", "inv_freq"))]
    if missing:
        raise UserError(f"original LLaVA checkpoint lacks {len(missing)} {what} weights, e.g. {missing[0]}")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _processor(target: str, tower_dir: str):
    import transformers

    image_processor = transformers.CLIPImageProcessor.from_pretrained(tower_dir)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the llava_mistral model type is unknown to transformers: expected
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(target)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_tokens(["<image>"], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tower_cfg = read_config(tower_dir)
    patch = tower_cfg.get("vision_config", tower_cfg).get("patch_size", 14)
    return transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                       vision_feature_select_strategy="default",
                                       chat_template=tokenizer.chat_template or MISTRAL_TEMPLATE,
                                       num_additional_image_tokens=1)


def _pad_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas
