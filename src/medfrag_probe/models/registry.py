"""The architecture registry: adapters register themselves by name and by the `model_type`s they serve."""

from __future__ import annotations

from dataclasses import dataclass

from .._registry import Registry

ARCHITECTURES: dict[str, type] = Registry("architecture")
MODEL_TYPES: dict[str, str] = Registry("transformers model_type")


def register(name: str, *, model_types: tuple[str, ...] = ()):
    """Class decorator adding an adapter under `name` and its transformers `model_type`s (a taken name raises)."""
    def wrap(cls):
        cls.arch = name
        ARCHITECTURES[name] = cls
        for model_type in model_types:
            MODEL_TYPES[model_type] = name
        return cls
    return wrap


@dataclass(frozen=True)
class Preset:
    """A named real checkpoint: its model spec and what it is."""

    name: str
    spec: str
    description: str


PRESETS = {p.name: p for p in [
    Preset("llava-1.5-7b", "hf:llava-hf/llava-1.5-7b-hf", "LLaVA-1.5 7B (CLIP ViT-L/14-336 + Vicuna-7B)"),
    Preset("llava-med-1.5", "hf:microsoft/llava-med-v1.5-mistral-7b",
           "LLaVA-Med v1.5 (Mistral-7B), original llava_mistral layout mapped onto transformers LLaVA"),
    Preset("llava-next-mistral-7b", "hf:llava-hf/llava-v1.6-mistral-7b-hf", "LLaVA-NeXT (1.6) Mistral-7B"),
    Preset("gemma-3-4b", "hf:google/gemma-3-4b-it", "Gemma 3 4B instruction-tuned (SigLIP-400M tower)"),
    Preset("medgemma-4b", "hf:google/medgemma-4b-it", "MedGemma 4B instruction-tuned (Gemma 3 architecture)"),
    Preset("paligemma-3b", "hf:google/paligemma-3b-mix-224", "PaliGemma 3B mix 224"),
    Preset("qwen2-vl-2b", "hf:Qwen/Qwen2-VL-2B-Instruct", "Qwen2-VL 2B instruct"),
    Preset("qwen2.5-vl-3b", "hf:Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL 3B instruct"),
    Preset("biomedclip", "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
           "BiomedCLIP (ViT-B/16 timm tower, PubMedBERT text)"),
    Preset("clip-vit-l14-336", "hf:openai/clip-vit-large-patch14-336", "OpenAI CLIP ViT-L/14 at 336 px"),
    Preset("clip-vit-b16", "hf:openai/clip-vit-base-patch16", "OpenAI CLIP ViT-B/16"),
    Preset("siglip-so400m", "hf:google/siglip-so400m-patch14-384", "SigLIP so400m/14 at 384 px"),
    Preset("medsiglip-448", "hf:google/medsiglip-448", "MedSigLIP 448 (SigLIP tuned on medical images)"),
]}
