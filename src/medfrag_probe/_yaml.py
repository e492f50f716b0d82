"""Named YAML files (`configs/tasks/NAME.yaml`, `configs/experiments/NAME.yaml`): find them and read them safely."""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import UserError, bad_choice


def configs_dir(kind: str) -> Path:
    """The shipped `configs/KIND/` folder: inside the installed package (`medfrag_probe/configs`, mapped from the
    repository's top-level `configs/` at build time), or the repository's own folder in a source checkout."""
    from importlib.resources import files

    shipped = Path(str(files("medfrag_probe") / "configs" / kind))  # a folder on disk: wheels install unzipped
    if shipped.is_dir():
        return shipped
    return Path(__file__).resolve().parents[2] / "configs" / kind


def shipped_names(kind: str) -> list[str]:
    """Names of the shipped configs of a kind (`tasks`, `experiments`)."""
    return sorted(p.stem for p in configs_dir(kind).glob("*.yaml"))


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


MAX_NODES = 100_000  # what a config may expand to once aliases are followed


def read(path: Path, *, what: str):
    """`yaml.safe_load` of a file; a syntax error, a non-UTF-8 file, or one whose aliases expand past `MAX_NODES`
    values (an alias bomb) is one line naming the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        raise UserError(f"{what} file {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} file {path} is not UTF-8; save it as UTF-8") from None
    if _expanded_size(data, MAX_NODES) > MAX_NODES:
        raise UserError(f"{what} file {path} expands to more than {MAX_NODES:,} values through its aliases")
    return data


def _expanded_size(data, limit: int) -> int:
    """How many values `data` holds with shared (aliased) parts counted each time they are reached; stops past
    `limit`, so a billion-laughs document costs `limit` steps, not its expansion."""
    count, stack = 0, [data]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count
