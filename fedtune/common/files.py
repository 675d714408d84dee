"""Crash-safe writes: a reader (or a restart) sees the old file or the new one, never half of one.

Used for reports, exported adapters, privacy ledgers and the coordinator's checkpoint: the data
and the rename are both fsynced.  ``folder_lock`` keeps two runs from writing into one results
folder at the same time; ``exclusive_lock`` serialises a node's budget check and ledger write.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator


def cache_root() -> Path:
    """Where fedtune keeps what it can rebuild (converted models, simulated nodes' state)."""
    return Path(os.environ.get("FEDTUNE_CACHE_DIR") or Path.home() / ".cache" / "fedtune")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes, private: bool = False) -> None:
    """Temp file in the same folder + fsync + rename. ``private``: readable by the owner only (keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        try:
            _write_and_rename(path, data, private)
            break
        except FileNotFoundError:  # another writer's clean-up took our temp file in the instant before we locked it
            if attempt == 2 or not path.parent.is_dir():
                raise
    fsync_directory(path.parent)  # the rename itself must survive a power cut, not only the bytes
    _remove_stale_temps(path)


def _write_and_rename(path: Path, data: bytes, private: bool) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:  # locked until closed, after the rename: a live write, not a crash's leftover
            fcntl.flock(fh, fcntl.LOCK_EX)
            os.fchmod(fh.fileno(), 0o600 if private else 0o666 & ~_umask())  # mkstemp makes 0600; results are read
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_directory(folder: str | Path) -> None:
    """Make a rename or a new file in ``folder`` durable (POSIX: fsync the directory itself)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Temp files of earlier writes to ``path`` that a crash left behind.  Not another process's live
    write (two tuning workers both rewrite the study's report): a writer holds a lock on its temp file
    until it is renamed, and the OS drops the lock of a process that died."""
    stale = re.compile(rf"\.{re.escape(path.name)}-[a-z0-9_]{{8}}")
    for p in path.parent.glob(f".{glob.escape(path.name)}-*"):
        if not stale.fullmatch(p.name) or not p.is_file():
            continue
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # renamed meanwhile, or not a plain file
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            p.unlink(missing_ok=True)
        except BlockingIOError:
            pass  # being written right now
        finally:
            os.close(fd)


def atomic_write_text(path: str | Path, text: str, private: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), private)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it replaces ``path``, on error it is removed."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class LockTimeout(RuntimeError):
    """Another process held a lock for longer than we were willing to wait."""


@contextlib.contextmanager
def exclusive_lock(path: str | Path, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed), waiting up to ``timeout`` seconds
    for another holder; the OS releases it if the holder dies, so a crash never leaves it stuck."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with path.open("a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"{what}: {path} stayed locked by another process for {timeout:g}s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class FolderBusy(RuntimeError):
    """Another process is writing into this results folder."""


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (which must exist); the OS releases it if the process dies."""
    folder = Path(folder)
    fh = (folder / ".fedtune.lock").open("a")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(
                f"another process is running a federation in {folder} (it holds {folder / '.fedtune.lock'}). "
                f"Wait for it to end, or stop it (a SuperLink left behind by a killed `fedtune simulate`: "
                f"pkill -f 'flower-superlink.*{folder}'), then try again"
            ) from None
        yield
    finally:
        fh.close()
