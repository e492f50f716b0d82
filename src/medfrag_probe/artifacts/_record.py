"""The base of every record that passes between stages: a frozen dataclass that is written as one flat JSON object
and read back from one, and that also reads like that JSON object (`record["point"]`, `record.get("hyper")`), so
code written against the files works on the records unchanged."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TypeVar

from ..errors import UserError

R = TypeVar("R", bound="Record")


class Record:
    """Mix-in for frozen dataclasses: `record()`, mapping-style reads, and `from_record` with clear errors."""

    def record(self) -> dict:
        """The flat JSON-ready dict (every field)."""
        return dataclasses.asdict(self)

    def __getitem__(self, name: str):
        if name not in self._field_names():
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default=None):
        return getattr(self, name) if name in self._field_names() else default

    def keys(self):
        return self._field_names()

    def __contains__(self, name: object) -> bool:
        return name in self._field_names()

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_record(cls: type[R], data: dict, *, where: str = "") -> R:
        """The record from its JSON dict: fields it does not know (written by a newer version) are ignored, fields
        with defaults may be missing (written by an older one); a missing required field is a clear error."""
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise UserError(f"{where or cls.__name__}: not a {cls.__name__} record (missing {', '.join(missing)})")
        return cls(**{f.name: data[f.name] for f in fields if f.name in data})


def jsonl_text(records) -> str:
    """One JSON object per line."""
    return "".join(json.dumps(r.record() if isinstance(r, Record) else r) + "\n" for r in records)


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file (blank lines skipped); a line that is not JSON is a clear error."""
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {n} is not JSON ({exc.msg}); the file is damaged") from None
    return rows


def folders(paths) -> list[Path]:
    """`paths` (one or several) as folders; one that is not a folder is a clear error."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    for path in paths:
        if not Path(path).is_dir():
            raise UserError(f"{path} is not a folder")
    return [Path(p) for p in paths]
