"""Sweep factors: one object per ablation factor of a study config, holding how it is validated, what it changes
in the plan of a run, and how its figure is drawn. The config, the runner and the report all dispatch here.

    sweep: {factor: resolution, values: [112, 224, 448]}

| factor | values | what the run does | figure |
|---|---|---|---|
| layer | -- | every point is probed anyway | linear skill per point |
| pooling | poolings | extracts and probes these poolings too | skill per pooling |
| probe | probe names | runs these probes too | skill per probe |
| k | whole numbers | kNN probes at each k | kNN skill against k |
| prompt | -- | every prompt is asked anyway | accuracy per prompt |
| train_size | samples per class (optional) | learning curves at the read point | accuracy against size |
| resolution | image sides (px) | one variant of each task per size | probe and VQA skill against size |
| pair | -- (needs `pairs`) | paired model deltas | medical minus generalist deltas |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._registry import Registry
from .ablation import by_field, by_k, by_layer, by_pair, by_prompt, by_resolution, by_train_size


@dataclass(frozen=True)
class Factor:
    """One sweep factor. `plot(study, path)` draws its figure (None: nothing to draw)."""

    name: str
    plot: Callable[[object, Path], Path | None]
    needs_values: bool = False
    integer_values: bool = False
    needs_pairs: bool = False
    extends: str = ""  # "poolings" / "probes": the swept values are added to the configured list
    data_param: str = ""  # a data-spec parameter set to each value: one variant of every task per value
    variant_suffix: str = ""
    probe_ks: bool = False  # the values are the k of kNN probes
    curves: bool = False  # learning curves over the values (training samples per class)

    def variants(self, data: str, values) -> list[tuple[str, str]]:
        """(data spec, variant label) of every task variant the sweep makes of `data`."""
        if not self.data_param:
            return [(data, "")]
        return [(with_param(data, self.data_param, v), f"{v}{self.variant_suffix}") for v in values]

    def extended(self, what: str, configured: list[str], values) -> list[str]:
        """`configured` plus the swept values when the factor sweeps `what` (poolings or probes)."""
        return list(dict.fromkeys([*configured, *values])) if self.extends == what else list(configured)


def with_param(spec: str, key: str, value) -> str:
    """`spec` with its query parameter `key` set to `value` (replacing any)."""
    base, _, query = spec.partition("?")
    params = [p for p in query.split("&") if p and not p.startswith(f"{key}=")]
    return f"{base}?{'&'.join([*params, f'{key}={value}'])}"


FACTORS: dict[str, Factor] = Registry("sweep factor")
for _factor in (
    Factor("layer", by_layer),
    Factor("pooling", by_field("pooling"), needs_values=True, extends="poolings"),
    Factor("probe", by_field("probe"), needs_values=True, extends="probes"),
    Factor("k", by_k, needs_values=True, integer_values=True, probe_ks=True),
    Factor("prompt", by_prompt),
    Factor("train_size", by_train_size, curves=True),
    Factor("resolution", by_resolution, needs_values=True, integer_values=True, data_param="size",
           variant_suffix="px"),
    Factor("pair", by_pair, needs_pairs=True),
):
    FACTORS[_factor.name] = _factor
