"""One writer per recording: an advisory lock on ``NAME.fdt/.lock`` (docs/format.md, "One writer").

Every process that modifies a recording (the live writer, ``reconstruct``, crash
recovery, an overwrite) holds the lock for as long as it writes. The lock is
``fcntl.flock(LOCK_EX | LOCK_NB)`` on the file ``.lock`` inside the recording; the
file holds one JSON line describing the holder (process id, command line, start
time, host), so a refused writer can say who holds it.

flock locks belong to the open file and the kernel drops them when the process
ends, however it ends (``kill -9`` included). A lock file that still describes a
holder but is not locked is therefore *stale*: its holder died. The next writer
takes it over (the old description is kept in :attr:`RecordingLock.stale`) and
recovers what the dead writer left (see :func:`recording.recover_recording`).
The file is never deleted while a recording exists: deleting it would let two
writers lock two different files of the same name.

Fallback: where ``fcntl.flock`` does not exist (Windows), the exclusion comes from
the ``filelock`` library (``filelock.FileLock`` on ``.lock.os``, an OS lock that
also dies with its process); the holder's description stays in ``.lock``.

Readers never take the lock; :func:`lock_holder` tells them whether someone writes.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from nvplive.errors import RecordingError, RecordingLockedError

try:
    import fcntl
except ImportError:  # Windows: see the module docstring
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
#: How long a writer retries a contended lock before refusing (s): absorbs the instant a reader probes it.
_RETRY_S = 0.25


def _command_line() -> str:
    argv = list(sys.argv) or ["python"]
    if Path(argv[0]).name in ("-c", "-m", "__main__.py", ""):  # python -c / -m: the interpreter's own command line
        argv = list(getattr(sys, "orig_argv", argv))
    argv[0] = Path(argv[0]).name or argv[0]
    text = " ".join(argv).replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."


def describe_holder(holder: dict) -> str:
    """``process 1234 (`nvplive demo --headless`) since 2026-11-29 10:41:02 UTC`` for a holder description."""
    pid = holder.get("pid", "?")
    command = holder.get("command") or "unknown command"
    since = holder.get("since")
    try:
        when = _dt.datetime.fromisoformat(since).astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError):
        when = "an unknown time"
    host = holder.get("host")
    on = f" on {host}" if host and host != socket.gethostname() else ""
    return f"process {pid}{on} (`{command}`) since {when}"


def _read_holder(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
    except OSError:
        return None
    try:
        holder = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


class _OsLock:
    """The operating-system lock: flock on the lock file's descriptor, or filelock where flock is missing."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self._fallback: Any = None

    def try_acquire(self) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            except PermissionError:  # some file systems report contention as EACCES
                return False
            return True
        import filelock

        lock = filelock.FileLock(str(self.path) + ".os")
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        self._fallback = lock
        return True

    def release(self) -> None:
        if self._fallback is not None:
            self._fallback.release()
            self._fallback = None
        elif fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


class RecordingLock:
    """The exclusive write lock of one recording folder; a context manager.

    Args:
        root: the recording folder (it must exist).

    Raises (from :meth:`acquire`):
        RecordingLockedError: another live process holds the lock (the message names it).
        RecordingError: the lock file cannot be created (read-only folder, ...).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.stale: dict | None = None
        self._fd: int | None = None
        self._os: _OsLock | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None

    def acquire(self) -> RecordingLock:
        """Take the lock and return ``self``; :class:`RecordingLockedError` names the holder when another
        process keeps it (a stale lock left by a dead process is taken over; ``stale`` describes it)."""
        path = self.root / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RecordingError(f"{self.root}: cannot create its lock file {LOCK_NAME} ({exc.strerror or exc}).") from None
        oslock = _OsLock(fd, path)
        deadline = time.monotonic() + _RETRY_S
        while not oslock.try_acquire():
            if time.monotonic() >= deadline:
                holder = _read_holder(fd) or {}
                os.close(fd)
                raise RecordingLockedError(
                    f"{self.root} is being written by {describe_holder(holder)}; wait until it finishes or stop it first."
                )
            time.sleep(0.01)
        previous = _read_holder(fd)
        self.stale = previous if previous and previous.get("pid") is not None else None
        mine = {
            "pid": os.getpid(),
            "command": _command_line(),
            "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
        }
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(mine) + "\n").encode("utf-8"))
        except OSError as exc:
            oslock.release()
            os.close(fd)
            raise RecordingError(f"{path}: cannot be written ({exc.strerror or exc}).") from None
        self._fd, self._os = fd, oslock
        return self

    def moved(self, root: str | os.PathLike) -> None:
        """The folder was renamed (the writer creates it under a staging name); the lock goes with it."""
        self.root = Path(root)

    def release(self) -> None:
        """Mark the lock free (empty file) and unlock. Idempotent."""
        if self._fd is None:
            return
        fd, oslock = self._fd, self._os
        self._fd = self._os = None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        try:
            assert oslock is not None
            oslock.release()
        finally:
            os.close(fd)

    def __enter__(self) -> RecordingLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # the OS drops the lock with the descriptor


def lock_holder(root: str | os.PathLike) -> dict | None:
    """The description of the live process writing ``root``, or None when nobody writes it.

    Readers use this to tell a recording being written (open) from one whose writer
    died (interrupted). It locks the file for an instant when it is free; writers
    retry for a moment, so this never makes one fail.
    """
    path = Path(root) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        oslock = _OsLock(fd, path)
        if oslock.try_acquire():
            oslock.release()
            return None
        return _read_holder(fd) or {}
    finally:
        os.close(fd)
