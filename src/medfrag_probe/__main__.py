"""`python -m medfrag_probe` (also what `torchrun -m medfrag_probe` runs)."""

from .cli import main

main()
