"""Resolve a model spec (preset, `hf:`, `open_clip:`, `timm:`, `tiny:`) and load its adapter."""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

from ..devices import resolve_device  # noqa: F401  (re-exported: the one device resolver)
from ..errors import UserError, bad_choice
from ..specs import Spec, parse_spec
from .base import Adapter
from .hf_common import read_config, torch_dtype
from .registry import ARCHITECTURES, MODEL_TYPES, PRESETS

MODEL_KINDS = {"hf", "open_clip", "timm", "tiny"}
_ADAPTER_MODULES = ("llava", "llava_med", "gemma3", "paligemma", "qwen2_vl", "clip", "generic", "timm_adapter",
                    "open_clip_adapter")


def load_registry() -> None:
    """Import every adapter module so that each registers itself."""
    for name in _ADAPTER_MODULES:
        importlib.import_module(f"{__package__}.{name}")


def resolve_spec(spec: str) -> Spec:
    """Expand presets and `tiny:` specs into the spec of a loadable checkpoint."""
    if ":" not in spec:
        if spec not in PRESETS:
            from .tiny import TINY

            raise bad_choice("model", spec, sorted(PRESETS) + [f"tiny:{name}" for name in sorted(TINY)] +
                             ["hf:ORG/NAME", "hf:ORG/NAME@REVISION", "hf:/local/dir", "open_clip:ARCH[/PRETRAINED]",
                              "timm:NAME"])
        spec = PRESETS[spec].spec
    parsed = parse_spec(spec, kinds=MODEL_KINDS, what="model")
    if parsed.kind == "tiny":
        from .tiny import tiny_spec

        return parse_spec(tiny_spec(parsed.target), kinds=MODEL_KINDS, what="model")
    if parsed.kind == "hf" and "@" in parsed.target and not Path(parsed.target).expanduser().exists():
        return replace(parsed, target=pinned_snapshot(*parsed.target.rsplit("@", 1)))
    return parsed


def pinned_snapshot(repo_id: str, revision: str) -> str:
    """`hf:ORG/NAME@REV`: the local snapshot folder of that exact Hub revision (a commit, tag or branch), fetched
    once into the Hugging Face cache (or found there when offline). Every later load reads that folder, so the
    processor, config and weights all come from the one revision."""
    if not repo_id or not revision:
        raise UserError(f"model spec hf:{repo_id}@{revision}: give both a repository and a revision, "
                        "e.g. hf:llava-hf/llava-1.5-7b-hf@a272c74")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision)
    except Exception as exc:  # noqa: BLE001 - no network, unknown revision, gated repository: one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot get revision {revision!r} of {repo_id} ({type(exc).__name__}: {first}); with "
                        "HF_HUB_OFFLINE=1 the revision must already be in the Hugging Face cache") from None


def architecture_of(parsed: Spec, *, trust_remote_code: bool = False) -> str:
    """Registry name of the adapter that serves a resolved spec."""
    if parsed.kind in ("open_clip", "timm"):
        return parsed.kind
    if "arch" in parsed.params:
        arch = parsed.params["arch"]
        if arch not in ARCHITECTURES:
            raise bad_choice("architecture", arch, sorted(ARCHITECTURES))
        return arch
    from .llava_med import is_original_llava

    raw = read_config(parsed.target, trust_remote_code=trust_remote_code)
    if is_original_llava(raw):
        return "llava-original"
    return MODEL_TYPES.get(raw.get("model_type", ""), "auto")


def load_adapter(spec: str, *, lm: bool = False, device: str = "cpu", dtype: str = "float32",
                 trust_remote_code: bool = False) -> Adapter:
    """Load `spec` for extraction; without `lm`, VLMs load only their vision tower and projector weights.

        adapter = load_adapter("tiny:llava")
        adapter.points.keys()   # vision.embed, vision.block.00.., vision.post, vision.pooled, projector
    """
    load_registry()
    parsed = resolve_spec(spec)
    arch = architecture_of(parsed, trust_remote_code=trust_remote_code)
    cls = ARCHITECTURES[arch]
    kwargs = dict(spec=spec, vision_only=not lm, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
    if parsed.kind == "timm":
        adapter = cls.load(parsed.target, checkpoint=parsed.params.get("checkpoint"),
                           model_kwargs=_timm_kwargs(parsed), **kwargs)
    else:
        adapter = cls.load(parsed.target, **kwargs)
    adapter.model.to(resolve_device(device))
    adapter.info.setdefault("arch", arch)
    return adapter


def _timm_kwargs(parsed: Spec) -> dict:
    out = {}
    for key, raw in parsed.params.items():
        if key == "checkpoint":
            continue
        for cast in (int, float):
            try:
                out[key] = cast(raw)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(raw.lower(), raw)
    return out


