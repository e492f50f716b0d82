"""What every data source is: `Sample` records, the `DataSource` interface, and the registry of spec kinds.

Source modules (`sources`, `synth`, `hf_datasets`, a user's own) register a factory per spec prefix with
`@register_source("kind")`; `sources.open_source` dispatches through the registry and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from .._registry import Registry
from ..specs import Spec

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}


@dataclass(frozen=True)
class Sample:
    """One image of a data source; `group` is the patient (or the id itself), `split` is '' when none."""

    id: str
    label: int
    group: str
    split: str = ""
    path: str = ""


class DataSource:
    """A labelled image collection; subclasses fill `samples`, `classes` and implement `image`."""

    spec: str
    classes: tuple[str, ...]
    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int, *, keep_side: int | None = None) -> Image.Image:
        """The RGB image of sample `index`; raises `ImageError` when it cannot be decoded. `keep_side` allows a very
        large image to be decoded at a reduced size whose shorter side stays >= `keep_side` (see `data.images`)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """SHA-256 over class names, ids and labels (and `content_key`): two sources with the same fingerprint label
        the same images."""
        digest = hashlib.sha256(json.dumps([self.classes, self.content_key()]).encode())
        for sample in self.samples:
            digest.update(f"{sample.id}\t{sample.label}\n".encode())
        return digest.hexdigest()[:16]

    def content_key(self) -> str:
        """What decides the images beyond their ids ("" for files, whose ids are their paths)."""
        return ""

    @property
    def has_splits(self) -> bool:
        """Whether every sample carries its own train/val/test split."""
        return bool(self.samples) and all(s.split for s in self.samples)


SOURCES: dict[str, Callable[[Spec], DataSource]] = Registry("data source kind")


def register_source(kind: str):
    """Decorator adding a source factory under its spec prefix (a name already taken raises)."""
    return SOURCES.register(kind)
