"""Capturing module outputs with forward hooks that are always removed and can stop the forward pass early."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch

from .base import Point


class StopForward(Exception):
    """Raised inside a hook once the last requested point has been captured, to skip the rest of the model."""


def first_tensor(output) -> torch.Tensor:
    """The first tensor in a module output (tensor, tuple/list, or a ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"module output of type {type(output).__name__} holds no tensor")


@contextmanager
def trace(points: list[Point], *, stop_after: str | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Hook `points` and yield a dict that fills with their captured tensors during a forward pass.

    Hooks are removed on exit, also on error. With `stop_after`, capturing that point raises `StopForward`, which
    ends the forward pass there and is swallowed by the `with` block (as baukit's `TraceDict` does); to keep the
    forward call's result when it does finish, wrap it in `run_traced`.

        with trace(points, stop_after="vision.block.05") as captured:
            model(**inputs)                  # stops after vision.block.05
        captured["vision.block.05"]
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for point in points:
            if point.module is None:
                continue
            handles.append(_attach(point, captured, stop=point.name == stop_after))
        try:
            yield captured
        except StopForward:
            pass  # the pass ended at `stop_after`, as asked
    finally:
        for handle in handles:
            handle.remove()


def _attach(point: Point, captured: dict, *, stop: bool):
    def keep(value: torch.Tensor) -> None:
        captured[point.name] = point.select(value) if point.select else value.detach()
        if stop:
            raise StopForward(point.name)

    if point.pre:
        def pre_hook(module, args, kwargs):
            keep(args[0] if args else first_tensor(kwargs))
        return point.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(module, args, output):
        keep(first_tensor(output))
    return point.module.register_forward_hook(hook)


def run_traced(call) -> object | None:
    """Run `call()`, treating `StopForward` as a normal early end; returns the call's result or None."""
    try:
        return call()
    except StopForward:
        return None
