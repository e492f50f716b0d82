"""Options shared by several commands, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

Model = Annotated[str, typer.Option("--model", "-m", help="Model spec: a preset, hf:ORG/NAME, hf:/dir, "
                                    "open_clip:ARCH[/PRETRAINED], timm:NAME or tiny:ARCH (see `models`).")]
Data = Annotated[str, typer.Option("--data", "-d", help="Data spec: imagefolder:DIR, manifest:FILE.csv|.jsonl, "
                                   "medmnist:FILE.npz or synth:NAME[?n=..&difficulty=..&seed=..].")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
Dtype = Annotated[str, typer.Option(help="Compute dtype: float32, bfloat16 or float16.")]
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Allow a checkpoint's own Python code "
                                               "(only for checkpoints you trust).")]
