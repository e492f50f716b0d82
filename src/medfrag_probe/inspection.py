"""`inspect`: the hook points of a model with their token counts and widths, measured on one blank image."""

from __future__ import annotations

from PIL import Image

from .models.loading import load_adapter
from .pooling import valid_poolings


def inspect_model(model: str, *, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False) -> dict:
    """Load `model` vision-only, run one grey image through every point, and describe each point."""
    from .extraction import _to_device, capture
    from .models.base import PointBatch

    adapter = load_adapter(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    points = list(adapter.points.values())
    inputs = _to_device(adapter.prepare([Image.new("RGB", (224, 224), (128, 128, 128))]),
                        next(adapter.model.parameters()).device, next(adapter.model.parameters()).dtype)
    captured = capture(adapter, points, inputs)
    batch: PointBatch = adapter.point_batch(inputs)
    rows = [_describe(p, captured[p.name], batch) for p in points]
    rows += _lm_rows(adapter)
    return {"model": model, "arch": adapter.arch, "reads_point": adapter.reads_point,
            "reads_tokens": adapter.info.get("reads_tokens", ""), "fingerprints": adapter.fingerprints(),
            "points": rows}


def _describe(point, value, batch) -> dict:
    shape = tuple(value.shape)
    if point.layout == "packed":
        tokens, width = batch.counts[0] // point.merge, shape[-1]
    elif point.layout == "map":
        tokens, width = shape[2] * shape[3], shape[1]
    elif point.layout == "vector":
        tokens, width = 1, shape[-1]
    else:
        tokens, width = shape[1], shape[-1]
    return {"point": point.name, "layout": point.layout, "tokens": tokens, "width": width, "prefix": point.prefix,
            "poolings": list(valid_poolings(point))}


def _lm_rows(adapter) -> list[dict]:
    config = getattr(adapter.model.config, "text_config", None)
    if config is None or adapter.loaded == "full" or not hasattr(adapter, "projector"):
        return []
    layers = adapter.info.get("lm_layers")
    if not layers:
        return []
    return [{"point": f"lm.block.{i:02d}", "layout": "lm", "tokens": "prompt", "width": config.hidden_size,
             "prefix": 0, "poolings": ["image", "last", "mean"]} for i in range(layers)]
