"""Procedural imaging tasks with a known label rule and a `difficulty` knob (DESIGN section 6).

`synth:NAME?n=400&difficulty=0.3&seed=0&size=96&per_patient=4&splits=0`

Each simulated patient has its own anatomy (head shape, lung fields, skin tone, stain) and a diagnosis, and
contributes `per_patient` images that share both; so a split that puts one patient on both sides leaks, as in real
data. `difficulty` in [0, 1] shrinks the class signal and raises the noise. Images are rendered on demand from
`(seed, task, patient, image)`, so any worker renders any sample identically. They validate the tool; they are
not medical data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError, bad_choice
from ..specs import Spec
from .base import DataSource, Sample, register_source

Render = Callable[[np.random.Generator, np.random.Generator, int, float, int], np.ndarray]


@dataclass(frozen=True)
class SynthTask:
    """A procedural task: class names and a renderer `(patient_rng, image_rng, label, difficulty, size)`."""

    name: str
    classes: tuple[str, ...]
    render: Render
    description: str


TASKS: dict[str, SynthTask] = {}


def _task(name: str, classes: tuple[str, ...], description: str):
    def wrap(render: Render) -> Render:
        TASKS[name] = SynthTask(name, classes, render, description)
        return render
    return wrap


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-1.0, 1.0, size)
    return np.meshgrid(axis, axis, indexing="ij")


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length `sigma` pixels."""
    white = rng.standard_normal((size, size))
    freq = np.fft.fftfreq(size)
    kernel = np.exp(-2 * (math.pi * sigma) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    field = np.real(np.fft.ifft2(np.fft.fft2(white) * kernel))
    return field / (field.std() + 1e-8)


def _blob(yy, xx, cy, cx, radius):
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _grey(img: np.ndarray) -> np.ndarray:
    return np.repeat(_to_uint8(img)[..., None], 3, axis=2)


@_task("brain-mri", ("glioma", "meningioma", "no_tumor", "pituitary"),
       "axial head MRI; a bright mass whose place and shape give the class (easy)")
def _brain(prng, irng, label, difficulty, size):
    yy, xx = _grid(size)
    a, b = prng.uniform(0.72, 0.82), prng.uniform(0.84, 0.94)
    dy, dx = irng.normal(0, 0.03, 2)
    r = np.sqrt(((yy - dy) / b) ** 2 + ((xx - dx) / a) ** 2)
    img = np.where(np.abs(r - 1) < 0.07, 0.85, 0.0)
    tissue = prng.uniform(0.4, 0.55) + 0.06 * _smooth_noise(irng, size, size / 16)
    img = np.where(r < 0.93, tissue, img)
    for side in (-1, 1):
        img -= 0.25 * _blob(yy, xx, dy - 0.05, dx + side * 0.12, 0.07) * (r < 0.93)
    contrast = 0.05 + 0.45 * (1 - difficulty)
    angle = prng.uniform(0, 2 * math.pi)
    if label == 0:  # glioma: irregular mass inside the parenchyma
        cy, cx = dy + 0.45 * b * math.sin(angle), dx + 0.45 * a * math.cos(angle)
        for _ in range(3):
            oy, ox = prng.normal(0, 0.06, 2)
            img += contrast * _blob(yy, xx, cy + oy, cx + ox, prng.uniform(0.07, 0.11))
    elif label == 1:  # meningioma: round mass against the skull
        cy, cx = dy + 0.78 * b * math.sin(angle), dx + 0.78 * a * math.cos(angle)
        img += contrast * 1.2 * _blob(yy, xx, cy, cx, 0.1)
    elif label == 3:  # pituitary: small mass at the skull base, midline
        img += contrast * 1.3 * _blob(yy, xx, dy + 0.5 * b, dx, 0.06)
    img += irng.normal(0, 0.03 + 0.15 * difficulty, img.shape)
    return _grey(np.clip(img, 0, 1))


@_task("chest-xray", ("normal", "pneumonia"),
       "frontal chest radiograph; pneumonia is a diffuse opacity in one lung field")
def _chest(prng, irng, label, difficulty, size):
    yy, xx = _grid(size)
    img = 0.15 + 0.55 * (((yy / 0.95) ** 2 + (xx / 0.85) ** 2) < 1)
    lung_masks = []
    for side in (-1, 1):
        ay, ax = prng.uniform(0.5, 0.62), prng.uniform(0.22, 0.3)
        mask = ((yy + 0.05) / ay) ** 2 + ((xx - side * 0.38) / ax) ** 2 < 1
        lung_masks.append(mask)
        img = np.where(mask, 0.22, img)
    img += 0.06 * np.sin(yy * prng.uniform(18, 24)) * (lung_masks[0] | lung_masks[1])
    img += 0.35 * _blob(yy, xx, 0.25, 0.1, 0.16)
    if label == 1:
        side = int(prng.integers(2))
        cy, cx = prng.uniform(-0.3, 0.35), (2 * side - 1) * 0.38
        haze = _blob(yy, xx, cy, cx, 0.22) * (1 + 0.5 * _smooth_noise(irng, size, size / 12))
        img += (0.03 + 0.32 * (1 - difficulty)) * np.clip(haze, 0, None) * lung_masks[side]
    img += 0.04 * _smooth_noise(irng, size, size / 20)
    img += irng.normal(0, 0.02 + 0.12 * difficulty, img.shape)
    return _grey(np.clip(img, 0, 1))


@_task("dermoscopy", ("benign", "malignant"),
       "dermoscopic image of a pigmented lesion; malignant lesions have irregular borders and mottled colour")
def _derm(prng, irng, label, difficulty, size):
    yy, xx = _grid(size)
    skin = np.array([0.86, 0.66, 0.56]) + prng.normal(0, 0.04, 3)
    img = np.broadcast_to(skin, (size, size, 3)).copy()
    img += 0.03 * _smooth_noise(irng, size, size / 10)[..., None]
    theta, rad = np.arctan2(yy, xx), np.sqrt(yy**2 + xx**2)
    radius = prng.uniform(0.42, 0.6)
    wobble = sum(prng.normal(0, 1) * np.sin(k * theta + prng.uniform(0, 6.3)) for k in range(3, 9)) / 3
    amplitude = 0.04 + (0.22 * (1 - difficulty) if label == 1 else 0.0)
    inside = rad < radius * (1 + amplitude * wobble)
    brown = np.array([0.45, 0.29, 0.2]) + prng.normal(0, 0.03, 3)
    mottle = (0.2 * (1 - difficulty) if label == 1 else 0.03) * _smooth_noise(irng, size, size / 14)
    lesion = brown[None, None, :] * (1 + mottle[..., None])
    img = np.where(inside[..., None], lesion, img)
    img += irng.normal(0, 0.02 + 0.1 * difficulty, img.shape)
    return _to_uint8(np.clip(img, 0, 1))


@_task("histology", ("benign", "malignant"),
       "H&E tissue patch; malignant tissue has denser, larger, darker, more varied nuclei (hardest)")
def _histo(prng, irng, label, difficulty, size):
    yy, xx = _grid(size)
    stain = np.array([0.93, 0.72, 0.84]) + prng.normal(0, 0.03, 3)
    img = np.broadcast_to(stain, (size, size, 3)).copy()
    img -= 0.06 * np.clip(_smooth_noise(irng, size, size / 18), 0, None)[..., None]
    signal = 1 - difficulty
    count = int(size * size / 300 * (1 + (0.5 * signal if label == 1 else 0)))
    base_r = size / 45 * (1 + (0.35 * signal if label == 1 else 0))
    spread = 0.1 + (0.3 * signal if label == 1 else 0)
    nucleus = np.array([0.36, 0.2, 0.55]) - (0.08 * signal if label == 1 else 0)
    for _ in range(count):
        cy, cx = irng.uniform(0, size, 2)
        r = max(1.0, base_r * (1 + spread * irng.standard_normal()))
        y0, y1 = int(max(0, cy - r - 1)), int(min(size, cy + r + 2))
        x0, x1 = int(max(0, cx - r - 1)), int(min(size, cx + r + 2))
        py, px = np.mgrid[y0:y1, x0:x1]
        disk = ((py - cy) ** 2 + (px - cx) ** 2) <= r * r
        img[y0:y1, x0:x1][disk] = nucleus
    img += irng.normal(0, 0.02 + 0.1 * difficulty, img.shape)
    return _to_uint8(np.clip(img, 0, 1))


MAX_N = 10_000_000  # images are rendered on demand, but ids, labels and patients are held in memory


class SynthSource(DataSource):
    """A `synth:` task rendered on demand."""

    def __init__(self, spec: Spec):
        spec.check_params({"n", "difficulty", "seed", "size", "per_patient", "splits"})
        if spec.target not in TASKS:
            raise bad_choice("synth task", spec.target, sorted(TASKS))
        self.task = TASKS[spec.target]
        self.spec = spec.text
        self.n = spec.get("n", 400, int)
        self.difficulty = spec.get("difficulty", 0.3, float)
        self.seed = spec.get("seed", 0, int)
        self.size = spec.get("size", 96, int)
        self.per_patient = spec.get("per_patient", 4, int)
        self._validate(spec.get("splits", 0, int))
        self.classes = self.task.classes
        self.samples = self._make_samples(bool(spec.get("splits", 0, int)))

    def _validate(self, splits: int) -> None:
        checks = [(1 <= self.n <= MAX_N, f"n must be in 1..{MAX_N:,}"),
                  (0 <= self.difficulty <= 1, "difficulty must be in [0, 1]"),
                  (8 <= self.size <= 1024, "size must be in 8..1024"),
                  (self.per_patient >= 1, "per_patient must be >= 1"),
                  (splits in (0, 1), "splits must be 0 or 1")]
        for ok, message in checks:
            if not ok:
                raise UserError(f"{self.spec}: {message}")

    def _make_samples(self, with_splits: bool) -> list[Sample]:
        n_patients = math.ceil(self.n / self.per_patient)
        k = len(self.task.classes)
        rng = np.random.default_rng([self.seed, 7])
        labels = rng.permutation(np.arange(n_patients) % k)
        split_of = rng.permutation(np.arange(n_patients) % 5)
        samples = []
        for i in range(self.n):
            patient = i // self.per_patient
            split = ("train", "train", "train", "val", "test")[split_of[patient]] if with_splits else ""
            samples.append(Sample(id=f"p{patient:05d}/img{i % self.per_patient}", label=int(labels[patient]),
                                  group=f"p{patient:05d}", split=split))
        return samples

    def content_key(self) -> str:
        # two synthetic tasks can share ids and labels (same patients, same seed) but never their images
        return f"synth:{self.task.name}|difficulty={self.difficulty}|size={self.size}|seed={self.seed}"

    def array(self, index: int) -> np.ndarray:
        """The uint8 H x W x 3 rendering of sample `index`."""
        patient, image = divmod(index, self.per_patient)
        task_id = sorted(TASKS).index(self.task.name)
        prng = np.random.default_rng([self.seed, task_id, patient])
        irng = np.random.default_rng([self.seed, task_id, patient, image + 1])
        return self.task.render(prng, irng, self.samples[index].label, self.difficulty, self.size)

    def image(self, index: int, *, keep_side: int | None = None) -> Image.Image:
        return Image.fromarray(self.array(index), "RGB")


@register_source("synth")
def synth(spec: Spec) -> DataSource:
    """`synth:NAME?...`: a procedural task (see module docs)."""
    return SynthSource(spec)


def write_synth(name: str, out: str | Path, *, n: int = 400, difficulty: float = 0.3, seed: int = 0,
                size: int = 96, per_patient: int = 4, splits: bool = False) -> Path:
    """Write a synth task as an imagefolder `OUT/CLASS/*.png` plus `OUT/manifest.csv`; return the manifest path."""
    import csv

    spec = f"synth:{name}?n={n}&difficulty={difficulty}&seed={seed}&size={size}&per_patient={per_patient}" \
           f"&splits={int(splits)}"
    source = SynthSource(_parse(spec))
    out = Path(out)
    rows = []
    for i, sample in enumerate(source.samples):
        cls = source.classes[sample.label]
        rel = f"{cls}/{sample.id.replace('/', '_')}.png"
        (out / cls).mkdir(parents=True, exist_ok=True)
        source.image(i).save(out / rel)
        rows.append({"path": rel, "label": cls, "group": sample.group, "split": sample.split, "id": sample.id})
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "group", "split", "id"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _parse(spec: str) -> Spec:
    from ..specs import parse_spec

    return parse_spec(spec, kinds={"synth"}, what="data")
