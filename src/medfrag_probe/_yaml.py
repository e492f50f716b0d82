"""Named YAML files (`configs/tasks/NAME.yaml`, `configs/experiments/NAME.yaml`): find them and read them safely."""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import UserError, bad_choice


def locate(name_or_path: str | Path, folder: Path, *, what: str) -> Path:
    """A path as given, or `folder/NAME.yaml` for a bare name; unknown names list the valid ones."""
    path = Path(name_or_path)
    if not path.is_file() and not path.suffix:
        path = folder / f"{name_or_path}.yaml"
        if not path.is_file():
            valid = sorted(p.stem for p in folder.glob("*.yaml"))
            raise bad_choice(what, str(name_or_path), valid + ["PATH.yaml"])
    if not path.is_file():
        raise UserError(f"{what} file {path} not found")
    return path


def read(path: Path, *, what: str):
    """`yaml.safe_load` of a file; a syntax error is one line naming the file."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{what} file {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
