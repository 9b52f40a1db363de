"""Safe access to external data files: a location may not leave the model folder, be
absolute, or pass through a symlink or a hard link (DESIGN.md)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from onnxfix.errors import ModelError


def check_location(location: str, origin: str) -> list[str]:
    """The location's path components, refusing what may not leave the model folder."""
    if not location:
        raise ModelError(f"{origin}: external data with an empty location")
    if "\x00" in location:
        raise ModelError(f"{origin}: external data location contains a NUL byte")
    if (location.startswith(("/", "\\")) or os.path.isabs(location)
            or (len(location) > 1 and location[1] == ":" and location[0].isalpha())):
        raise ModelError(f"{origin}: external data location {location!r} is absolute; only "
                         "paths inside the model folder are allowed")
    parts = [p for p in location.split("/") if p not in ("", ".")]
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            raise ModelError(f"{origin}: external data location {location!r} leaves the model "
                             "folder")
    if not parts:
        raise ModelError(f"{origin}: external data location {location!r} names no file")
    return parts


def open_external(folder: Path, location: str, origin: str) -> int:
    """Open `location` below `folder` one component at a time, refusing any symlink."""
    parts = check_location(location, origin)
    try:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ModelError(f"{origin}: cannot open folder {folder}: {e.strerror or e}") from None
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            flags |= os.O_NONBLOCK if last else os.O_DIRECTORY
            try:
                nfd = os.open(part, flags, dir_fd=dfd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR) and _is_link(part, dfd):
                    raise ModelError(f"{origin}: external data location {location!r} passes "
                                     f"through a symlink ({part!r}); links are refused"
                                     ) from None
                raise ModelError(f"{origin}: external data {location!r}: "
                                 f"{e.strerror or e}") from None
            os.close(dfd)
            dfd = nfd
        st = os.fstat(dfd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{origin}: external data {location!r} is not a regular file")
        if st.st_nlink > 1:  # a hard link can expose any file of the same filesystem
            raise ModelError(f"{origin}: external data {location!r} has {st.st_nlink} hard "
                             "links; links are refused")
        os.set_blocking(dfd, True)
        fd, dfd = dfd, -1
        return fd
    finally:
        if dfd >= 0:
            os.close(dfd)


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
