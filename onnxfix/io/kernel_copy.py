"""Moving a payload from one file to another in the kernel: `os.copy_file_range`, then
`os.sendfile`, then bounded read/write chunks as the last resort."""

from __future__ import annotations

import errno
import os

from onnxfix.errors import ModelError
from onnxfix.io.atomic import write_all

# Bounded buffer of the last-resort copy (read/write) and of the zero padding.
COPY_CHUNK = 8 * 2**20
# Copy strategies tried in order; tests narrow this to exercise the fallbacks.
COPY_METHODS: tuple[str, ...] = ("copy_file_range", "sendfile", "readwrite")

_UNSUPPORTED = {errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP,
                errno.EBADF, errno.EPERM, errno.ETXTBSY}


def copy_range(src: int, dst: int, offset: int, length: int) -> None:
    """Append `length` bytes at `offset` of `src` to `dst`, in the kernel when possible."""
    done = 0
    for method in COPY_METHODS:
        try:
            done += _COPIERS[method](src, dst, offset + done, length - done)
        except _Unsupported:
            continue
        if done == length:
            return
    raise ModelError(f"a weights file ended early: {done} of {length} bytes at offset {offset} "
                     "could be read (was it changed while being written?)")


class _Unsupported(Exception):
    pass


def _kernel_copy(call, src: int, dst: int, offset: int, length: int) -> int:
    """Loop a kernel copy call(src, dst, offset, count) until `length` bytes have moved."""
    done = 0
    while done < length:
        try:
            n = call(src, dst, offset + done, min(length - done, 1 << 30))
        except OSError as e:
            if done == 0 and e.errno in _UNSUPPORTED:
                raise _Unsupported from None
            raise
        if n == 0:
            break
        done += n
    return done


def _by_copy_file_range(src: int, dst: int, offset: int, length: int) -> int:
    if not hasattr(os, "copy_file_range"):
        raise _Unsupported
    return _kernel_copy(lambda s, d, off, n: os.copy_file_range(s, d, n, off),
                        src, dst, offset, length)


def _by_sendfile(src: int, dst: int, offset: int, length: int) -> int:
    if not hasattr(os, "sendfile"):
        raise _Unsupported
    return _kernel_copy(lambda s, d, off, n: os.sendfile(d, s, off, n), src, dst, offset, length)


def _by_readwrite(src: int, dst: int, offset: int, length: int) -> int:
    done = 0
    while done < length:
        chunk = os.pread(src, min(length - done, COPY_CHUNK), offset + done)
        if not chunk:
            break
        write_all(dst, chunk)
        done += len(chunk)
    return done


_COPIERS = {"copy_file_range": _by_copy_file_range, "sendfile": _by_sendfile,
            "readwrite": _by_readwrite}
