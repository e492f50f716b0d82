"""File-system helpers shared by every stage: atomic writes, one writer per output, stale temporary files.

    with output_lock(out, folder=False):  # a second run on the same output refuses with a clear message
        remove_stale_tmp(out.parent)   # temporary files of killed runs (none can be in flight: we hold the lock)
        atomic_write(out / "summary.json", text)

The lock is an advisory `flock` on `OUT.lock` (next to a file output, inside a folder output). The kernel drops it
when the holder dies, so a killed run never leaves a lock behind; the file records the holder's pid, host and
command for the message a second run prints.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

TMP_SUFFIX = ".tmp"
_held: dict[str, int] = {}  # lock path -> depth held by this process (re-entrant within one process)
_held_guard = threading.Lock()


def cache_root() -> Path:
    """Where reusable generated content goes (tiny models, default embedding caches): `$MEDFRAG_CACHE`, else the
    per-user cache folder (`$XDG_CACHE_HOME/medfrag-probe`, default `~/.cache/medfrag-probe`), as Hugging Face does;
    never the folder the user happens to stand in."""
    if os.environ.get("MEDFRAG_CACHE"):
        return Path(os.environ["MEDFRAG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "medfrag-probe"


def tmp_name(path: Path) -> Path:
    """The temporary sibling a writer of `path` uses: `.NAME.PID.tmp` (hidden, unique per process)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def atomic_write(path: str | Path, data: str | bytes, *, fsync: bool = False) -> Path:
    """Write `data` to `path` through a temporary sibling and a rename: readers see the old or the new file, never
    half of one. The temporary file is removed when the write fails (a full disk, a kill leaves it for
    `remove_stale_tmp`)."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_stamp(path: str | Path, identity: dict) -> None:
    """Record what a piece of finished (or started) work was made from: its identity as sorted JSON, atomically.
    The three resumable kinds of work share this: cache part files (`CACHE.parts/meta.json`), VQA parts
    (`OUT/.parts/identity.json`) and study stages (`OUT/.stamps/STAGE.json`)."""
    atomic_write(path, json.dumps(identity, sort_keys=True, default=str))


def read_stamp(path: str | Path) -> dict | None:
    """The identity recorded at `path`, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is damaged (not JSON); delete it to redo the work it describes") from None


def stamp_differences(recorded: dict, identity: dict) -> list[str]:
    """Keys whose values differ between a recorded identity and `identity` (compared as JSON stores them)."""
    plain = json.loads(json.dumps(identity, sort_keys=True, default=str))
    return sorted(k for k in set(recorded) | set(plain) if recorded.get(k) != plain.get(k))


def remove_stale_tmp(folder: str | Path, stem: str = "") -> int:
    """Remove `.STEM*.tmp` files left in `folder` by killed runs; return how many. Call it holding the output's lock
    (then no other writer can be in flight)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    count = 0
    for path in folder.glob(f".{stem}*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            path.unlink()
            count += 1
    return count


def lock_path(out: str | Path, *, folder: bool) -> Path:
    """Where the lock of an output lives: inside a folder output, beside a file output."""
    out = Path(out)
    return out / ".lock" if folder else out.with_name(out.name + ".lock")


@contextlib.contextmanager
def output_lock(out: str | Path, *, folder: bool, what: str = "output") -> Iterator[Path]:
    """Hold the exclusive right to write `out` for the duration of the block.

    A second process asking for the same output gets a `UserError` naming the holder; the same process may nest
    locks on one output (a study that runs an extraction into its own folder)."""
    path = lock_path(out, folder=folder)
    key = str(path.resolve())
    with _held_guard:
        if _held.get(key):
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield path
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, out, what)
    with _held_guard:
        _held[key] = 1
    try:
        yield path
    finally:
        with _held_guard:
            _held.pop(key, None)
        _release(path, fd)


def _acquire(path: Path, out, what: str) -> int:
    for _ in range(50):  # retry only when the file we locked was replaced under us (a holder released and removed it)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _try_lock(fd)
        except BlockingIOError:
            holder = _holder(path)
            os.close(fd)
            raise UserError(f"another run{holder} is writing the {what} {out}; wait for it to finish, or write to "
                            "another output") from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            _record_holder(fd)
            return fd
        os.close(fd)
        time.sleep(0.01)
    raise UserError(f"could not lock {path}: it keeps being replaced; is another run starting and stopping?")


def _try_lock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover - msvcrt locks a byte range; the same semantics for our use
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            raise BlockingIOError(errno.EAGAIN, str(exc)) from None
        return
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise BlockingIOError(exc.errno, str(exc)) from None
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP):  # a file system without locks: go on unprotected
            return
        raise


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _record_holder(fd: int) -> None:
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")})
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return ""
    if not isinstance(info, dict) or "pid" not in info:
        return ""
    return f" (pid {info['pid']} on {info.get('host', '?')}, since {info.get('since', '?')})"


def _release(path: Path, fd: int) -> None:
    # unlink while still holding the lock: a waiter that opened the old file sees it replaced and retries
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)
