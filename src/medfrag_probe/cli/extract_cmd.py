"""`medfrag-probe extract`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Data, Device, Dtype, Model, TrustRemoteCode


def register(app: typer.Typer) -> None:
    """Add the command to `app`."""
    app.command("extract", no_args_is_help=True)(extract_command)


def extract_command(
    model: Model,
    data: Data,
    points: Annotated[Optional[str], typer.Option(help="Points or globs, comma-separated (default: vision.*,"
                                                  "projector; lm.block.* needs --prompt).")] = None,
    poolings: Annotated[Optional[str], typer.Option(help="cls, mean, max, tokens; image, last for lm points.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Cache file (default ~/.cache/medfrag-probe/embeddings/MODEL__DATA.h5, or under $MEDFRAG_CACHE).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    device: Device = "cpu",  # under torchrun, cuda/auto put each rank on its LOCAL_RANK GPU
    dtype: Dtype = "float32",
    store_dtype: Annotated[str, typer.Option(help="Storage dtype: float16 or float32.")] = "float16",
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers decoding images (default: cores-1, "
                                                   "at most 4).")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Task prompt for language-model points.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing cache made differently.")] = False,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any image failed.")] = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Extract embeddings of MODEL over DATA into an HDF5 cache (resumes a killed run)."""
    from ..extraction import extract

    result = extract(model, data, points=points, poolings=poolings, out=out, batch_size=batch_size, device=device,
                     dtype=dtype, store_dtype=store_dtype, workers=workers, prompt=prompt, overwrite=overwrite,
                     trust_remote_code=trust_remote_code)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports the consolidated cache
        return
    typer.echo(f"{result.path}: {result.samples} samples, {result.extracted} extracted now, {result.skipped} "
               f"already done, {len(result.failed)} failed ({result.images_per_second:.1f} img/s)")
    for sample_id, reason in result.failed.items():
        typer.echo(f"  failed {sample_id}: {reason}")
    if strict and result.failed:
        raise typer.Exit(1)
