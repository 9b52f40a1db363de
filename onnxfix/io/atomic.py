"""Atomic replace: outputs appear whole or not at all, and a failure leaves what was there.

Every file onnxfix writes (models, their .data files, reports) goes through
`replace_atomically`: each target is written to a temporary file in its own folder, flushed
to disk, given the mode the file had (or 0666 less the umask), then renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from onnxfix.errors import UsageError

# Writes a file's content to the open descriptor it is given.
Writer = Callable[[int], None]


def check_writable(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse, before any work, an output whose folder is missing or which is a folder."""
    out = Path(path)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{what} {out}: folder {folder} does not exist")
    if out.is_dir():
        raise UsageError(f"{what} {out}: is a folder; give a file name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {out}: folder {folder} is not writable")


def target_mode(out: Path) -> int:
    """Keep an existing file's mode; a new file gets 0666 less the umask (not mkstemp's 0600)."""
    try:
        return out.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def replace_atomically(targets: list[tuple[Path, Writer]], *, fsync: bool = True) -> None:
    """Write every (path, writer) target, then rename them into place, the last one last
    (it makes the output visible: the model after its .data file).

    An OSError becomes a UsageError naming the last target; whatever fails, no temporary file
    is left and every target keeps its previous content.
    """
    out = targets[-1][0]
    check_writable(out)
    temps: list[str] = []
    try:
        try:
            written = [(_write_temp(dest, write, fsync, temps), dest) for dest, write in targets]
            for tmp, dest in written:
                os.chmod(tmp, target_mode(dest))
            _install(written, temps)
        except OSError as e:
            raise UsageError(f"{out}: cannot write: {e.strerror or e}") from None
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    replace_atomically([(Path(path), lambda fd: write_all(fd, data))])


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (a report) atomically, like the model itself."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _write_temp(dest: Path, write: Writer, fsync: bool, temps: list[str]) -> str:
    """A temp file beside `dest`, filled by write(fd); recorded in `temps` for cleanup."""
    folder = dest.parent if str(dest.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    temps.append(tmp)
    with os.fdopen(fd, "wb", buffering=0) as f:
        write(f.fileno())
        if fsync:
            os.fsync(f.fileno())
    return tmp


def _install(targets: list[tuple[str, Path]], temps: list[str]) -> None:
    """Rename the temp files into place, the last target last.

    A file already at an earlier target's destination (an older output's data) is set aside
    first and put back if a later rename fails, so a failure leaves every file as it was.
    """
    placed: list[tuple[Path, str | None]] = []
    last = targets[-1][1]
    try:
        for tmp, dest in targets:
            backup = None
            if dest != last and dest.exists():
                fd, backup = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".old",
                                              dir=dest.parent)
                os.close(fd)
                os.replace(dest, backup)
            placed.append((dest, backup))
            os.replace(tmp, dest)
            temps.remove(tmp)
    except BaseException:
        for dest, backup in reversed(placed):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, dest)
                elif dest != last:
                    os.unlink(dest)
        raise
    for _, backup in placed:
        if backup is not None:
            with contextlib.suppress(OSError):
                os.unlink(backup)
