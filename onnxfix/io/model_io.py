"""Reading and writing model files: clear errors on bad input, atomic output."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxfix.errors import ModelError, UsageError

# A declared dimension above this is refused as absurd (no real tensor has one).
MAX_DIM = 2**32

# protobuf refuses to serialize a single message above 2 GiB.
PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and validate an ONNX file with its weights; any problem is a one-line ModelError.

    The same reader as the rewrite (the skeleton: location, link and bounds checks included),
    with the weights then read into memory.
    """
    skeleton = open_model(path)
    try:
        return materialize(skeleton.model, skeleton)
    finally:
        skeleton.close()


def parse_model_bytes(data: bytes, origin: str = "<bytes>") -> onnx.ModelProto:
    model = _parse(data, origin)
    validate_model(model, origin)
    return model


def _parse(data: bytes, origin: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelError(f"{origin}: not a valid ONNX protobuf ({_one_line(e)})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise ModelError(f"{origin}: not an ONNX model (no graph or no opset_import)")
    return model


def validate_model(model: onnx.ModelProto, origin: str) -> None:
    if not model.HasField("graph") or not model.opset_import:
        raise ModelError(f"{origin}: not an ONNX model (no graph or no opset_import)")
    _check_opsets(model, origin)
    _check_names(model, origin)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - the checker raises several types
        raise ModelError(f"{origin}: invalid ONNX model: {_one_line(e)}") from None
    _check_declared_dims(model, origin)


def _known_opsets() -> dict[str, int]:
    latest_ml = max((row[3] for row in onnx.helper.VERSION_TABLE if row[3]), default=1)
    latest = onnx.defs.onnx_opset_version()
    return {"": latest, "ai.onnx": latest, "ai.onnx.ml": latest_ml}


def _check_opsets(model: onnx.ModelProto, origin: str) -> None:
    """An opset newer than this onnx release defines cannot be checked or rewritten safely."""
    known = _known_opsets()
    for imp in model.opset_import:
        latest = known.get(imp.domain)
        if latest is not None and not 1 <= imp.version <= latest:
            name = imp.domain or "ai.onnx (default)"
            raise ModelError(f"{origin}: opset {imp.version} of domain {name} is unknown "
                             f"(this onnx release knows versions 1 to {latest})")


def _check_names(model: onnx.ModelProto, origin: str) -> None:
    """protobuf hands string fields that are not valid UTF-8 back as bytes (names, dim
    params, doc strings...), which breaks everything downstream: refuse them up front."""
    from google.protobuf.descriptor import FieldDescriptor

    stack: list = [model]
    while stack:
        msg = stack.pop()
        for fd, value in msg.ListFields():
            if fd.type == FieldDescriptor.TYPE_STRING:
                values = value if fd.is_repeated else [value]
                if any(not isinstance(v, str) for v in values):
                    raise ModelError(f"{origin}: a text field ({fd.full_name}) is not valid "
                                     f"UTF-8")
            elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                if fd.is_repeated:
                    stack.extend(value)
                else:
                    stack.append(value)


def _check_declared_dims(model: onnx.ModelProto, origin: str) -> None:
    from onnxfix.graph.find import iter_graphs

    declared = [vi for g, _ in iter_graphs(model) if isinstance(g, onnx.GraphProto)
                for vi in (*g.input, *g.output, *g.value_info)]
    for vi in declared:
        t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if t is None or not t.HasField("shape"):
            continue
        for d in t.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                raise ModelError(f"{origin}: '{vi.name}' declares a negative dimension "
                                 f"({d.dim_value})")
            if d.HasField("dim_value") and d.dim_value > MAX_DIM:
                raise ModelError(f"{origin}: '{vi.name}' declares an absurd dimension "
                                 f"({d.dim_value}): too large (over 2**32)")


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


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write `model` to `path` through a temporary file in the same folder, then rename.

    A failure at any point leaves no partial file and leaves an existing `path` untouched.
    """
    if model.ByteSize() > PROTOBUF_LIMIT:
        raise ModelError(f"{path}: model is larger than 2 GB; save with external data")
    _write_atomic(Path(path), model.SerializeToString())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (a report) atomically, like the model itself."""
    _write_atomic(Path(path), text.encode("utf-8"))


def _write_atomic(out: Path, data: bytes) -> None:
    check_writable(out)
    folder = out.parent if str(out.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise UsageError(f"{out}: cannot write to {folder}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, target_mode(out))
        os.replace(tmp, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UsageError(f"{out}: cannot write: {e.strerror or e}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def target_mode(out: Path) -> int:
    """Keep an existing file's mode; a new file gets 0666 less the umask (not mkstemp's 0600)."""
    try:
        return out.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def open_model(path: str | os.PathLike):
    """The model's skeleton: graph parsed, large weights left in the file (see wire.py)."""
    from onnxfix.io.wire import checkable, load_skeleton

    skeleton = load_skeleton(path)
    try:
        validate_model(checkable(skeleton.model), str(path))
    except BaseException:
        skeleton.close()
        raise
    return skeleton


def materialize(model: onnx.ModelProto, skeleton) -> onnx.ModelProto:
    """A copy of a skeleton-based model with every weight read into memory."""
    from onnxfix.io.wire import read_weights

    full = onnx.ModelProto()
    full.CopyFrom(model)
    read_weights(full, skeleton)
    return full
