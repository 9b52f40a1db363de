"""The one model reader: an .onnx file's structure without its weights (a Skeleton).

`load_skeleton` walks the protobuf wire format only far enough to find the top-level
initializers' large `raw_data` payloads: the model's fields, the graph's fields (a node is
skipped by its length prefix, never decoded) and the fields of initializers too big to be
small. Each large payload becomes an external-data reference into the *input file itself*
(location = its base name, offset and length of the payload). protobuf's own parser then
reads everything else, so the skeleton is an ordinary, small `onnx.ModelProto`: the rewrite
edits it like any model, and onnxruntime runs it straight from the original file when it is
saved in the same folder. Writing it back, weights streamed, is `writer.save_with_weights`.

Safety (DESIGN.md): external-data locations that are absolute, climb out of the model folder or
pass through a symlink are refused; malformed wire data (truncated varints, lengths past the end
of the file or of the enclosing message, unknown wire types, nesting deeper than protobuf allows)
becomes a one-line `ModelError`; nothing is ever read outside the file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

import onnx

from onnxfix.errors import ModelError, UsageError, one_line
from onnxfix.io import wire
from onnxfix.io.skeleton import Skeleton
from onnxfix.io.tensors import EXTERNAL, check_payload_size, external_tensors
from onnxfix.io.validate import CHECKER, precheck, validate_model

# Bounded buffer when payloads are read into memory.
READ_CHUNK = 8 * 2**20
# A file up to this size is first parsed whole by protobuf: when none of its initializers
# holds a payload over inline_limit (a graph of many small tensors), that parse is the
# skeleton and the Python field scan (about 4 us per node and initializer) is not needed.
WHOLE_PARSE_LIMIT = 64 * 2**20
_RAW_DATA = attrgetter("raw_data")
# Before that parse, this many of the graph's fields are walked by their headers (about 4 us
# each) looking for a payload over inline_limit: a file of a few large weights is then
# scanned without being parsed (and held) whole first.
PEEK_FIELDS = 4096


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


def open_model(path: str | os.PathLike, *, checker: bool = True) -> Skeleton:
    """The model's skeleton, validated: graph parsed, large weights left in the file.

    checker=False: every validation but onnx's checker (for `inspect`, which lists nodes and
    proves nothing; the checker alone takes longer than onnx.load on a large graph)."""
    skeleton, passed = _load(path, 1024, check=True, checker=checker)
    try:
        if not checker:
            passed |= {CHECKER}
        model = (checkable(skeleton.model) if skeleton.locations and CHECKER not in passed
                 else skeleton.model)
        validate_model(model, str(path), passed=passed)
    except BaseException:
        skeleton.close()
        raise
    return skeleton


def parse_model_bytes(data: bytes, origin: str = "<bytes>") -> onnx.ModelProto:
    """A validated model from serialized bytes (weights included)."""
    model = wire.parse(onnx.ModelProto(), data, origin)
    validate_model(model, origin, data)
    return model


def load_skeleton(path: str | os.PathLike, *, inline_limit: int = 1024) -> Skeleton:
    """Read an .onnx file without its weights.

    Every top-level initializer whose raw_data exceeds `inline_limit` bytes becomes an
    external-data reference into the source file itself ({location: base name, offset, length}),
    with name, dims, data_type and doc_string kept. Everything else is parsed normally.
    Initializers already external in the input stay external (relative to the input's folder)
    after their locations and bounds are checked. Problems raise a one-line ModelError.
    """
    return _load(path, inline_limit, check=False)[0]


def _load(path: str | os.PathLike, inline_limit: int, check: bool, checker: bool = True
          ) -> tuple[Skeleton, frozenset[str]]:
    """The skeleton, and with `check` the validations passed on its bytes (precheck)."""
    p = Path(os.path.abspath(path))
    if not p.exists():
        raise ModelError(f"{path}: no such file")
    if p.is_dir():
        raise ModelError(f"{path}: is a folder, not an .onnx file")
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise ModelError(f"{path}: cannot read: {e.strerror or e}") from None
    skeleton = None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        if st.st_size == 0:
            raise ModelError(f"{path}: empty file, not an ONNX model")
        model, stubs, spans, passed = _read(fd, st.st_size, inline_limit, p.name, str(path),
                                            check, checker)
        skeleton = Skeleton(model=model, path=p, stubs=stubs, inline_limit=inline_limit,
                            fds={(p.name,): fd},
                            stat=(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
                            spans=spans)
        for t, where in external_tensors(model):
            skeleton.resolve(t, f"{path} ({where})")
        return skeleton, passed
    except BaseException as e:
        if skeleton is not None:
            skeleton.close()
        else:
            os.close(fd)
        if isinstance(e, OSError):
            raise ModelError(f"{path}: cannot read: {e.strerror or e}") from None
        if isinstance(e, Exception) and not isinstance(e, (ModelError, UsageError)):
            # hostile input must not surface as a traceback; keep the cause on one line
            raise ModelError(f"{path}: unreadable model ({type(e).__name__}: "
                             f"{one_line(e)})") from None
        raise


def _read(fd: int, size: int, inline_limit: int, location: str, origin: str, check: bool,
          checker: bool = True):
    """The skeleton model, its stubs and their spans, and with `check` the validations its
    bytes passed; a file that is not ONNX is refused clearly."""
    src = wire.FileBytes(fd, size)
    try:
        whole = None
        if size <= WHOLE_PARSE_LIMIT:
            peek = _peek_payloads(src, inline_limit)
            whole = None if peek else _parse_whole(src, inline_limit, origin, peek is None)
        if whole is not None:
            model, data = whole
            passed = precheck(data, checker=checker) if check else frozenset()
            return _checked_model(model, origin), {}, set(), passed
        try:
            # stubs point at "#<location>" (what the checker skips) until the model is parsed
            data, scan = _scan_model(src, inline_limit, "#" + location, origin)
            passed = precheck(data, checker=checker) if check else frozenset()
            model = wire.parse(onnx.ModelProto(), data, origin)
            del data
        except ModelError:
            # The fast scan skips small initializers: scan them all to name what is wrong.
            _scan_model(src, inline_limit, location, origin, thorough=True)
            raise
        _checked_model(model, origin)
        if scan.marked and len(model.graph.initializer) != scan.initializers:
            raise ModelError(f"{origin}: cannot line up the initializers")  # not reached
        for k in scan.marked:
            _set_location(model.graph.initializer[k], location)
        return model, scan.stubs, scan.spans, passed
    except (wire.Malformed, ModelError) as e:
        refuse_pytorch_checkpoint(fd, origin)  # the usual mix-up: say so, not "malformed"
        if isinstance(e, wire.Malformed):
            raise ModelError(f"{origin}: not a valid ONNX protobuf (malformed: {e})") from None
        raise


def _parse_whole(src: wire.FileBytes, inline_limit: int, origin: str, look: bool = True):
    """(model, its bytes) when protobuf parses the whole file and no initializer's raw_data
    exceeds inline_limit (then the file is its own skeleton), else None: the field scan
    decides (and words any refusal, as before). look=False: `_peek_payloads` has already
    seen every initializer and found no such payload."""
    data = src.read(0, src.size)
    try:
        model = wire.parse(onnx.ModelProto(), data, origin)
    except ModelError:
        return None
    inits = model.graph.initializer
    # looked for in C (no Python step per tensor), each payload copied out in turn and
    # dropped: half the time of sizing every record (ByteSize) and then its payload
    large = look and any(map(inline_limit.__lt__, map(len, map(_RAW_DATA, inits))))
    return None if large else (model, data)


def _peek_payloads(src: wire.FileBytes, inline_limit: int) -> bool | None:
    """Whether an initializer of the graph holds a raw_data payload over inline_limit, from
    the headers of at most PEEK_FIELDS of its fields: True (one does), False (none does: every
    field was seen), None (not known: too many fields, or malformed - the parse decides)."""
    try:
        budget = PEEK_FIELDS
        for number, wire_type, _, value, end in wire.fields(src, 0, src.size):
            if number != wire.MODEL_GRAPH or wire_type != 2:
                continue
            for number, wire_type, _, start, stop in wire.fields(src, value, end):
                budget -= 1
                if budget < 0:
                    return None
                if (number == wire.GRAPH_INITIALIZER and wire_type == 2
                        and stop - start > inline_limit
                        and _raw_data_length(src, start, stop) > inline_limit):
                    return True
        return False
    except wire.Malformed:
        return None


def _raw_data_length(src: wire.FileBytes, pos: int, end: int) -> int:
    """The length of a tensor record's raw_data (the last occurrence wins, as in protobuf)."""
    length = 0
    for number, wire_type, _, value, stop in wire.fields(src, pos, end):
        if number == wire.TENSOR_RAW_DATA and wire_type == 2:
            length = stop - value
    return length


def _checked_model(model: onnx.ModelProto, origin: str) -> onnx.ModelProto:
    if not model.HasField("graph") or not model.opset_import:
        raise ModelError(f"{origin}: not an ONNX model (no graph or no opset_import)")
    return model


def _set_location(t: onnx.TensorProto, location: str) -> None:
    for e in t.external_data:
        if e.key == "location":
            e.value = location


def refuse_pytorch_checkpoint(fd: int, path) -> None:
    """Raise a clear ModelError if a file that is not ONNX is a torch.save checkpoint.

    torch.save writes a zip holding `<name>/data.pkl` (since PyTorch 1.6), or before that a
    bare pickle (first byte 0x80, then the protocol number).
    """
    head = os.pread(fd, 4, 0)
    checkpoint = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    if head == b"PK\x03\x04":
        import zipfile

        try:
            with zipfile.ZipFile(os.fdopen(os.dup(fd), "rb")) as z:
                checkpoint = any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            checkpoint = False
    if checkpoint:
        raise ModelError(f"{path} is a PyTorch checkpoint, not an ONNX model; export it with "
                         f"torch.onnx.export")


@dataclass
class _Scan:
    """What the scan of one file found: the graph's content as pieces (spans of the file, or
    a stub's bytes), the stubs by name, their (offset, length) spans, and their positions
    among the initializers."""

    graph: list[tuple[int, int] | bytes] = field(default_factory=list)
    stubs: dict[str, tuple[int, int]] = field(default_factory=dict)
    spans: set[tuple[int, int]] = field(default_factory=set)
    marked: list[int] = field(default_factory=list)
    initializers: int = 0


def _scan_model(src: wire.FileBytes, inline_limit: int, location: str, origin: str,
                thorough: bool = False) -> tuple[bytes, _Scan]:
    """The skeleton's serialized bytes, and what the scan found.

    thorough: look inside every initializer, not only those that may hold a payload over
    inline_limit (the diagnosis of a file protobuf refused).
    """
    rest: list[tuple[int, int]] = []  # the model's other fields
    scan = _Scan()
    for number, wire_type, start, value, end in wire.fields(src, 0, src.size):
        if number == wire.MODEL_GRAPH and wire_type == 2:
            # Repeated occurrences of a message field merge: concatenating their contents does.
            _scan_graph(src, (value, end), inline_limit, (location, origin), thorough, scan)
        else:
            rest.append((start, end))
    if not scan.stubs:
        return src.read(0, src.size), scan  # nothing stubbed: the file is the skeleton
    size = sum(len(p) if isinstance(p, bytes) else p[1] - p[0] for p in scan.graph)
    pieces = [*rest, wire.TAG_GRAPH + wire.varint(size), *scan.graph]
    return b"".join(p if isinstance(p, bytes) else src.read(p[0], p[1] - p[0])
                    for p in pieces), scan


def _scan_graph(src: wire.FileBytes, region: tuple[int, int], inline_limit: int,
                names: tuple[str, str], thorough: bool, scan: _Scan) -> None:
    pos, end = region
    run = pos  # start of the current run of fields copied verbatim
    for number, wire_type, start, value, stop in wire.fields(src, pos, end):
        if number != wire.GRAPH_INITIALIZER or wire_type != 2:
            continue
        scan.initializers += 1
        if stop - value <= inline_limit and not thorough:
            continue  # a record no longer than inline_limit cannot hold a larger raw_data
        stub = _stub_tensor(src, value, stop, inline_limit, *names)
        if stub is None:
            continue
        tensor, span = stub
        body = tensor.SerializeToString()
        scan.graph += [(run, start), wire.TAG_INITIALIZER + wire.varint(len(body)) + body]
        run = stop
        scan.stubs[tensor.name] = span
        scan.spans.add(span)
        scan.marked.append(scan.initializers - 1)
    scan.graph.append((run, end))


def _stub_tensor(src: wire.FileBytes, pos: int, end: int, inline_limit: int, location: str,
                 origin: str):
    raw = None
    keep: list[tuple[int, int]] = []
    for number, wire_type, start, value, stop in wire.fields(src, pos, end):
        if number == wire.TENSOR_RAW_DATA and wire_type == 2:
            raw = (value, stop)  # the last occurrence wins, as in protobuf
        else:
            keep.append((start, stop))
    if raw is None or raw[1] - raw[0] <= inline_limit:
        return None
    try:
        head = wire.parse(onnx.TensorProto(), b"".join(src.read(a, b - a) for a, b in keep),
                          origin)
    except ModelError:
        raise ModelError(f"{origin}: malformed initializer at byte {pos}") from None
    if not isinstance(head.name, str):
        raise ModelError(f"{origin}: initializer name {head.name!r} is not valid UTF-8")
    offset, length = raw[0], raw[1] - raw[0]
    check_payload_size(head, length, origin)
    head.ClearField("external_data")
    head.data_location = EXTERNAL
    for key, val in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = head.external_data.add()
        entry.key, entry.value = key, val
    return head, (offset, length)


def checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as onnx.checker.check_model and shape inference may see it (do not edit it).

    The checker resolves external-data locations of an in-memory model against the current
    directory; a model with external tensors is copied with each location prefixed by '#',
    which onnx's checker treats as "not a file", so structure is checked without touching the
    weights (load_skeleton has already checked the locations, links and bounds). A model
    without external tensors is returned as it is.
    """
    if next(external_tensors(model), None) is None:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t, _ in external_tensors(copy):
        for e in t.external_data:
            if e.key == "location":
                e.value = "#" + e.value
    return copy


def materialize(model: onnx.ModelProto, skeleton: Skeleton) -> onnx.ModelProto:
    """A copy of a skeleton-based model with every weight read into memory."""
    full = onnx.ModelProto()
    full.CopyFrom(model)
    read_weights(full, skeleton)
    return full


def read_weights(model: onnx.ModelProto, skeleton: Skeleton) -> None:
    """Read every external payload (stubs and input data files) into raw_data, in place.

    Reads go through the skeleton's open descriptors, so they come from the very files that
    were scanned and checked.
    """
    origin = str(skeleton.path)
    for t, where in external_tensors(model):
        p = skeleton.resolve(t, f"{origin} ({where})")
        chunks, done = [], 0
        while done < p.length:
            piece = os.pread(p.fd, min(READ_CHUNK, p.length - done), p.offset + done)
            if not piece:
                raise ModelError(f"{origin}: tensor {t.name!r}: the file ended early")
            chunks.append(piece)
            done += len(piece)
        t.raw_data = b"".join(chunks)
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def session_options(skeleton: Skeleton, options=None):
    """onnxruntime SessionOptions that resolve a skeleton's stubs from the source folder.

    With them, `InferenceSession(model.SerializeToString(), options)` runs a skeleton (or an
    edited copy of it) from memory, reading the weights straight from the source files;
    without them, ORT refuses external data of a model given as bytes.
    """
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(skeleton.folder))
    return options
