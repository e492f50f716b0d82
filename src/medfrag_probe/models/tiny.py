"""`tiny:ARCH`: small random models of the real architecture classes, for tests and the demo.

Each is built deterministically (fixed seed) into `CACHE/models/tiny-ARCH-VERSION/` (CACHE: `$MEDFRAG_CACHE`,
default `~/.cache/medfrag-probe`) with its processor and a small BPE tokenizer, saved with `save_pretrained`, and then
loaded back through exactly the code path of a real checkpoint (`hf:DIR`, `open_clip:local-dir:DIR`,
`timm:NAME?checkpoint=FILE`). Nothing is downloaded. A build goes to a temporary directory that is renamed into place,
so a crash never leaves half a model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .._fs import cache_root
from ..errors import bad_choice

VERSION = "v3"
IMAGE = 32
WIDTH = 64
TINY: dict[str, Callable[[Path], str]] = {}
TINY_TEXT: dict[str, Callable[[Path], str]] = {}  # text-only models for the description pipeline (not adapters)

WORDS = ("yes no the image shows a an is there this of in on with what which does show answer describe brain mri "
         "tumor tumour mass glioma meningioma pituitary no_tumor chest x-ray xray pneumonia normal lung opacity "
         "skin lesion benign malignant histology tissue nuclei patch question option A B C D user assistant model "
         "diagnosis likely cannot sure not present absent finding").split()


def _tiny(name: str, registry: dict | None = None):
    def wrap(build: Callable[[Path], str]):
        (TINY if registry is None else registry)[name] = build
        return build
    return wrap


def tiny_spec(name: str) -> str:
    """Build `tiny:NAME` if needed and return the real-checkpoint spec that loads it."""
    builders = {**TINY, **TINY_TEXT}
    if name not in builders:
        raise bad_choice("tiny model", name, sorted(TINY))
    version = getattr(builders[name], "version", lambda: VERSION)()
    root = cache_root() / "models" / f"tiny-{name}-{version}"
    marker = root / "spec.txt"
    if not marker.is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tiny-{name}-", dir=root.parent))
        try:
            spec = builders[name](staging)
            (staging / "spec.txt").write_text(spec.replace(str(staging), "{dir}"))
            try:
                staging.rename(root)
            except OSError:  # another process finished the same build first
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return marker.read_text().replace("{dir}", str(root.resolve()))


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def tokenizer(special: list[str], *, named: dict[str, str], template: str | None):
    """A byte-level BPE tokenizer trained on a fixed word list, with `special` tokens (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    standard = {k: v for k, v in named.items() if k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    extra = {k: v for k, v in named.items() if k not in standard}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=extra or None, **standard)
    if template:
        fast.chat_template = template
    return fast


def _clip_vision(**over):
    from transformers import CLIPVisionConfig

    cfg = dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=4, num_attention_heads=4,
               image_size=IMAGE, patch_size=8, projection_dim=32)
    return CLIPVisionConfig(**{**cfg, **over})


def _siglip_vision(**over):
    from transformers import SiglipVisionConfig

    cfg = dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=3, num_attention_heads=4,
               image_size=IMAGE, patch_size=8)
    return SiglipVisionConfig(**{**cfg, **over})


def _decoder(kind: str, vocab: int, **over):
    import transformers

    cfg = dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=512)
    return getattr(transformers, kind)(**{**cfg, **over})


LLAVA_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
                  "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} "
                  "{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}"
                  "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
                  "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{% for c in m['content'] %}"
                  "{% if c['type'] == 'image' %}<start_of_image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
                  "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}"
                 "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")


def _llava(out: Path, text_kind: str) -> str:
    import transformers

    tok = tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], template=LLAVA_TEMPLATE,
                    named={"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                           "image_token": "<image>"})
    _seeded()
    config = transformers.LlavaConfig(vision_config=_clip_vision(), text_config=_decoder(text_kind, len(tok)),
                                      image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                                      vision_feature_select_strategy="default")
    transformers.LlavaForConditionalGeneration(config).save_pretrained(out)
    images = transformers.CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    processor = transformers.LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8,
                                            vision_feature_select_strategy="default", chat_template=LLAVA_TEMPLATE,
                                            num_additional_image_tokens=1)
    processor.save_pretrained(out)
    return f"hf:{out}"


@_tiny("llava")
def _tiny_llava(out: Path) -> str:
    return _llava(out, "LlamaConfig")


@_tiny("llava-mistral")
def _tiny_llava_mistral(out: Path) -> str:
    return _llava(out, "MistralConfig")


@_tiny("llava-med")
def _tiny_llava_med(out: Path) -> str:
    """A tiny LLaVA-Mistral rewritten in the original `llava_mistral` layout, tower in a separate directory."""
    import transformers
    from safetensors.torch import save_file

    source = Path(tiny_spec("llava-mistral").removeprefix("hf:"))
    model = transformers.LlavaForConditionalGeneration.from_pretrained(source)
    tower_dir = out / "clip-tower"
    tower = transformers.CLIPVisionModel(model.config.vision_config)
    tower.load_state_dict(model.model.vision_tower.state_dict())
    tower.save_pretrained(tower_dir)
    transformers.CLIPImageProcessor.from_pretrained(source).save_pretrained(tower_dir)
    # the language model is "fine-tuned" (seeded perturbation); tower and projector stay those of tiny:llava-mistral,
    # as LLaVA-Med keeps LLaVA's CLIP tower
    noise = torch.Generator().manual_seed(1)
    state = {f"model.{k}": v + 0.05 * v.std() * torch.randn(v.shape, generator=noise) if v.is_floating_point()
             and v.ndim == 2 else v for k, v in model.model.language_model.state_dict().items()}
    state["lm_head.weight"] = model.lm_head.weight
    for ours, theirs in (("linear_1", "0"), ("linear_2", "2")):
        for part in ("weight", "bias"):
            layer = getattr(model.model.multi_modal_projector, ours)
            state[f"model.mm_projector.{theirs}.{part}"] = getattr(layer, part)
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(out / "model.safetensors"))
    text = model.config.text_config.to_dict()
    raw = {k: text[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "hidden_act")}
    raw.update(architectures=["LlavaMistralForCausalLM"], model_type="llava_mistral", vocab_size=text["vocab_size"],
               mm_vision_tower="clip-tower", mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
               mm_vision_select_feature="patch", mm_hidden_size=WIDTH, image_aspect_ratio="pad")
    (out / "config.json").write_text(json.dumps(raw, indent=1))
    tok = transformers.AutoTokenizer.from_pretrained(source)
    tok.save_pretrained(out)
    return f"hf:{out}"


@_tiny("llava-next")
def _tiny_llava_next(out: Path) -> str:
    import transformers

    tok = tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], template=LLAVA_TEMPLATE,
                    named={"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                           "image_token": "<image>"})
    _seeded()
    pinpoints = [[IMAGE, IMAGE], [IMAGE, 2 * IMAGE], [2 * IMAGE, IMAGE]]
    config = transformers.LlavaNextConfig(vision_config=_clip_vision(), text_config=_decoder("MistralConfig", len(tok)),
                                          image_token_id=tok.convert_tokens_to_ids("<image>"),
                                          image_grid_pinpoints=pinpoints)
    transformers.LlavaNextForConditionalGeneration(config).save_pretrained(out)
    images = transformers.LlavaNextImageProcessor(size={"shortest_edge": IMAGE}, image_grid_pinpoints=pinpoints,
                                                  crop_size={"height": IMAGE, "width": IMAGE})
    transformers.LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=8, chat_template=LLAVA_TEMPLATE,
                                    vision_feature_select_strategy="default",
                                    num_additional_image_tokens=1).save_pretrained(out)
    return f"hf:{out}"


@_tiny("gemma3")
def _tiny_gemma3(out: Path) -> str:
    return _gemma3(out, seed=0)


@_tiny("medgemma")
def _tiny_medgemma(out: Path) -> str:
    """Gemma 3 architecture with its own weights throughout (MedGemma's tower is fine-tuned too)."""
    return _gemma3(out, seed=1)


def _gemma3(out: Path, *, seed: int) -> str:
    import transformers

    tok = tokenizer(["<pad>", "<bos>", "<eos>", "<start_of_image>", "<end_of_image>", "<image_soft_token>",
                     "<start_of_turn>", "<end_of_turn>"], template=GEMMA_TEMPLATE,
                    named={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                           "image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                           "eoi_token": "<end_of_image>"})
    _seeded(seed)
    text = _decoder("Gemma3TextConfig", len(tok), head_dim=16, sliding_window=64)
    config = transformers.Gemma3Config(vision_config=_siglip_vision(vision_use_head=False), text_config=text,
                                       mm_tokens_per_image=4, image_token_id=tok.image_token_id,
                                       boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id)
    model = transformers.Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # transformers initialises this projection to zeros: the image would never reach the LM
        weight = model.model.multi_modal_projector.mm_input_projection_weight
        weight.normal_(0.0, weight.shape[0] ** -0.5)
    model.save_pretrained(out)
    images = transformers.Gemma3ImageProcessor(size={"height": IMAGE, "width": IMAGE})
    transformers.Gemma3Processor(image_processor=images, tokenizer=tok, image_seq_length=4,
                                 chat_template=GEMMA_TEMPLATE).save_pretrained(out)
    return f"hf:{out}"


@_tiny("paligemma")
def _tiny_paligemma(out: Path) -> str:
    import transformers

    tok = tokenizer(["<pad>", "<bos>", "<eos>", "<image>"], template=None,
                    named={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "image_token": "<image>"})
    _seeded()
    text = _decoder("GemmaConfig", len(tok), head_dim=16)
    config = transformers.PaliGemmaConfig(vision_config=_siglip_vision(projection_dim=WIDTH), text_config=text,
                                          image_token_id=tok.image_token_id, projection_dim=WIDTH)
    transformers.PaliGemmaForConditionalGeneration(config).save_pretrained(out)
    images = transformers.SiglipImageProcessor(size={"height": IMAGE, "width": IMAGE})
    images.image_seq_length = (IMAGE // 8) ** 2
    transformers.PaliGemmaProcessor(image_processor=images, tokenizer=tok).save_pretrained(out)
    return f"hf:{out}"


@_tiny("qwen2-vl")
def _tiny_qwen2_vl(out: Path) -> str:
    import transformers

    tok = tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                     "<|image_pad|>", "<|video_pad|>"], template=QWEN_TEMPLATE,
                    named={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "image_token": "<|image_pad|>",
                           "video_token": "<|video_pad|>"})
    _seeded()
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in (("image_token_id", "<|image_pad|>"),
           ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
           ("vision_end_token_id", "<|vision_end|>"))}
    vision = dict(depth=3, embed_dim=WIDTH, hidden_size=WIDTH, num_heads=4, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    text = dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 2, 4], "rope_theta": 10000.0},
                bos_token_id=None, eos_token_id=ids["image_token_id"] - 3)
    config = transformers.Qwen2VLConfig(vision_config=vision, text_config=text, **ids)
    transformers.Qwen2VLForConditionalGeneration(config).save_pretrained(out)
    images = transformers.Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14,
                                                merge_size=2, temporal_patch_size=2)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    transformers.Qwen2VLProcessor(image_processor=images, tokenizer=tok, chat_template=QWEN_TEMPLATE,
                                  video_processor=Qwen2VLVideoProcessor()).save_pretrained(out)
    return f"hf:{out}"


@_tiny("clip")
def _tiny_clip(out: Path) -> str:
    import transformers

    _seeded()
    text = transformers.CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, vocab_size=100, max_position_embeddings=16)
    config = transformers.CLIPConfig(vision_config=_clip_vision().to_dict(), text_config=text.to_dict(),
                                     projection_dim=32)
    transformers.CLIPModel(config).save_pretrained(out)
    transformers.CLIPImageProcessor(size={"shortest_edge": IMAGE},
                                    crop_size={"height": IMAGE, "width": IMAGE}).save_pretrained(out)
    return f"hf:{out}"


@_tiny("siglip")
def _tiny_siglip(out: Path) -> str:
    import transformers

    _seeded()
    text = transformers.SiglipTextConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=100, max_position_embeddings=16)
    config = transformers.SiglipConfig(vision_config=_siglip_vision().to_dict(), text_config=text.to_dict())
    transformers.SiglipModel(config).save_pretrained(out)
    transformers.SiglipImageProcessor(size={"height": IMAGE, "width": IMAGE}).save_pretrained(out)
    return f"hf:{out}"


@_tiny("vit-registers")
def _tiny_vit_registers(out: Path) -> str:
    import transformers

    _seeded()
    config = transformers.Dinov2WithRegistersConfig(hidden_size=WIDTH, num_hidden_layers=3, num_attention_heads=4,
                                                    intermediate_size=2 * WIDTH, image_size=IMAGE, patch_size=8,
                                                    num_register_tokens=4)
    transformers.Dinov2WithRegistersModel(config).save_pretrained(out)
    transformers.BitImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE},
                                   do_convert_rgb=True).save_pretrained(out)
    return f"hf:{out}"


@_tiny("convnext")
def _tiny_convnext(out: Path) -> str:
    import transformers

    _seeded()
    config = transformers.ConvNextConfig(num_channels=3, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 2, 1],
                                         image_size=IMAGE)
    transformers.ConvNextModel(config).save_pretrained(out)
    transformers.ConvNextImageProcessor(size={"shortest_edge": IMAGE}, crop_pct=1.0).save_pretrained(out)
    return f"hf:{out}"


@_tiny("open-clip")
def _tiny_open_clip(out: Path) -> str:
    import open_clip
    from safetensors.torch import save_file

    model_cfg = {"embed_dim": 32, "vision_cfg": {"image_size": IMAGE, "layers": 3, "width": WIDTH, "patch_size": 8,
                                                 "head_width": 16},
                 "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}}
    _seeded()
    model = open_clip.CLIP(**model_cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    preprocess = {"size": IMAGE, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258,
                                                                                       0.27577711]}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    return f"open_clip:local-dir:{out}"


@_tiny("timm-vit")
def _tiny_timm(out: Path) -> str:
    import timm
    from safetensors.torch import save_file

    kwargs = dict(img_size=IMAGE, patch_size=8, embed_dim=WIDTH, depth=3, num_heads=4, reg_tokens=2)
    _seeded()
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    query = "&".join(f"{k}={v}" for k, v in kwargs.items())
    return f"timm:vit_small_patch16_224?checkpoint={out / 'model.safetensors'}&{query}"


@_tiny("text-encoder", TINY_TEXT)
def _tiny_text_encoder(out: Path) -> str:
    """A tiny BERT sentence encoder (for the description pipeline's `encoder:` classifier)."""
    import transformers

    tok = tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], template=None,
                    named={"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"})
    _seeded()
    config = transformers.BertConfig(vocab_size=len(tok), hidden_size=WIDTH, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=2 * WIDTH, max_position_embeddings=512)
    transformers.BertModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return f"hf:{out}"


@_tiny("text-llm", TINY_TEXT)
def _tiny_text_llm(out: Path) -> str:
    """A tiny Llama chat model (for the description pipeline's `llm:` classifier)."""
    import transformers

    tok = tokenizer(["<unk>", "<s>", "</s>", "<pad>"], template=LLAVA_TEMPLATE,
                    named={"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
    _seeded()
    transformers.LlamaForCausalLM(_decoder("LlamaConfig", len(tok))).save_pretrained(out)
    tok.save_pretrained(out)
    return f"hf:{out}"


def _organism(kind: str) -> Callable[[Path], str]:
    """`tiny:organism-KIND` (`models.organisms`): tiny:llava with shipped trained weights; cached per weights file."""
    def build(out: Path) -> str:
        from .organisms import build as build_organism

        return build_organism(kind, out, base=_tiny_llava)

    def version() -> str:
        import hashlib

        from .organisms import weights_file

        path = weights_file(kind)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:10] if path.is_file() else "missing"
        return f"{VERSION}-{digest}"

    build.version = version
    return build


for _kind in ("sound", "reasoning", "vision", "both"):
    TINY[f"organism-{_kind}"] = _organism(_kind)
