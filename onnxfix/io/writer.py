"""The one model writer: a (modified) skeleton written back with its weights moved by the kernel.

Every small part is serialized by protobuf; every payload still living in a file is streamed
by `kernel_copy` (no weight passes through Python memory). Length prefixes are computed before
anything is written. Output is atomic (`atomic.replace_atomically`): data file first, model last.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf import unknown_fields

from onnxfix.errors import ModelError, UsageError
from onnxfix.io import kernel_copy, wire
from onnxfix.io.atomic import check_writable, replace_atomically, write_all, write_bytes_atomic
from onnxfix.io.skeleton import Payload, Skeleton
from onnxfix.io.tensors import (
    EXTERNAL,
    external_info,
    external_positions,
    external_tensors,
    graph_tensors,
)

# Offsets of tensors in a written .data file are multiples of this (mmap friendly).
DATA_ALIGN = 4096
LAYOUTS = ("same", "embedded", "external")


@dataclass(frozen=True)
class Saved:
    """What save_with_weights wrote: the layout actually used and the sizes."""

    path: Path
    layout: str  # "embedded" (one file) or "external" (weights in data_path)
    data_path: Path | None
    model_bytes: int
    data_bytes: int


class DataFile:
    """Plans a .data file: every tensor at an aligned offset, in order."""

    def __init__(self, name: str, items: list | None = None, size: int = 0):
        self.name = name
        self.items: list[tuple[int, Payload | bytes]] = list(items or [])
        self.size = size

    def add(self, t: onnx.TensorProto, payload: Payload | bytes) -> None:
        """Plan `payload` into the file and make `t` an external reference to it."""
        length = payload.length if isinstance(payload, Payload) else len(payload)
        offset = -(-self.size // DATA_ALIGN) * DATA_ALIGN
        self.items.append((offset, payload))
        self.size = offset + length
        info = external_info(t)
        info.update(location=self.name, offset=str(offset), length=str(length))
        t.ClearField("raw_data")
        t.ClearField("external_data")
        t.data_location = EXTERNAL
        for key in ("location", "offset", "length"):  # then any other keys, e.g. checksum
            entry = t.external_data.add()
            entry.key, entry.value = key, info.pop(key)
        for key, val in info.items():
            entry = t.external_data.add()
            entry.key, entry.value = key, val

    def write(self, dst: int) -> None:
        pos = 0
        for offset, payload in self.items:
            if offset > pos:
                write_all(dst, bytes(offset - pos))
            if isinstance(payload, Payload):
                kernel_copy.copy_range(payload.fd, dst, payload.offset, payload.length)
                pos = offset + payload.length
            else:
                write_all(dst, payload)
                pos = offset + len(payload)


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write an in-memory `model` to `path` atomically (see atomic.py).

    A failure at any point leaves no partial file and leaves an existing `path` untouched.
    """
    if model.ByteSize() > wire.PROTOBUF_LIMIT:
        raise ModelError(f"{path}: model is larger than 2 GB; save with external data")
    write_bytes_atomic(path, model.SerializeToString())


def save_with_weights(model: onnx.ModelProto, skeleton: Skeleton, out_path: str | os.PathLike,
                      *, layout: str = "same", fsync: bool = True) -> Saved:
    """Write `model` (an edited copy of skeleton.model) with the weights streamed from files.

    layout:
      "same"     each tensor keeps the layout it had in the input: payloads stubbed from the
                 input .onnx are embedded as raw_data; tensors that were external data in the
                 input go to one `<out name>.data` file beside the output.
      "embedded" every top-level initializer is embedded (external ones too); tensors external
                 elsewhere (subgraphs, attributes) still go to the .data file.
      "external" every payload (and every in-memory raw_data above skeleton.inline_limit) goes
                 to the .data file, at offsets aligned to DATA_ALIGN.
    "same" and "embedded" switch to "external" when the single file would exceed
    wire.PROTOBUF_LIMIT. The output (and its .data file) appear atomically; `out_path` may be
    the input file. Returns what was written. Raises ModelError for bad references, UsageError
    when the output cannot be written (nothing is left behind).
    """
    if layout not in LAYOUTS:
        raise UsageError(f"layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    out = Path(os.path.abspath(out_path))
    check_writable(out)
    parts = _Parts.of(model, skeleton, _free_data_name(out, skeleton))
    pieces, total, data = parts.assemble(layout, skeleton.inline_limit)
    if layout != "external" and total > wire.PROTOBUF_LIMIT:
        pieces, total, data = parts.assemble("external", skeleton.inline_limit)
        if total > wire.PROTOBUF_LIMIT:
            raise ModelError(f"{out}: the model without its weights still exceeds protobuf's "
                             f"{wire.PROTOBUF_LIMIT} byte limit")
    targets = [(out, lambda fd: _write_pieces(fd, pieces))]
    if data.items:
        targets.insert(0, (out.parent / data.name, data.write))
    replace_atomically(targets, fsync=fsync)
    return Saved(path=out, layout="external" if data.items else "embedded",
                 data_path=out.parent / data.name if data.items else None, model_bytes=total,
                 data_bytes=data.size if data.items else 0)


@dataclass
class _Parts:
    """A model split for writing: everything but the graph (serialized), the graph, where the
    payload of each external top-level initializer is (by position), and the external tensors
    elsewhere (already planned into the .data file)."""

    head: bytes
    graph: onnx.GraphProto
    payloads: dict[int, Payload]
    nested: DataFile
    _graph_bytes: memoryview | None = None
    _records: list[tuple[bool, int, int]] = field(default_factory=list)

    @classmethod
    def of(cls, model: onnx.ModelProto, skeleton: Skeleton, data_name: str) -> _Parts:
        origin = str(skeleton.path)
        # External tensors below the top level (rare: subgraph initializers, attributes,
        # functions) always go to the .data file; they are rewritten in copies.
        head = _model_without_graph(model)
        graph = model.graph
        if any(t.data_location == EXTERNAL
               for t, _ in graph_tensors(graph, "graph", initializers=False)):
            graph = onnx.GraphProto()
            graph.CopyFrom(model.graph)
            nested_tensors = list(graph_tensors(graph, "graph", initializers=False))
        else:
            nested_tensors = []
        nested = DataFile(data_name)
        for t, where in [*nested_tensors, *external_tensors(head)]:
            if t.data_location == EXTERNAL:
                nested.add(t, skeleton.resolve(t, f"{origin} ({where})"))
        inits = graph.initializer  # the external ones picked out in C (no step per tensor)
        payloads = {k: skeleton.resolve(inits[k], f"{origin} (initializer)")
                    for k in external_positions(inits)}
        return cls(head.SerializeToString(), graph, payloads, nested)

    def assemble(self, layout: str, inline_limit: int) -> tuple[list, int, DataFile]:
        """(pieces of the model file, its size, the .data file plan) for one layout."""
        data = DataFile(self.nested.name, self.nested.items, self.nested.size)
        inits = self.graph.initializer
        # in initializer order, as the .data file is planned; in-memory payloads only move
        # in the external layout
        which = range(len(inits)) if layout == "external" else self.payloads
        swaps = {k: _record(inits[k], self.payloads.get(k), layout, inline_limit, data)
                 for k in which}
        pieces = self._splice({k: swap for k, swap in swaps.items() if swap})
        size = sum(p.length if isinstance(p, Payload) else len(p) for p in pieces)
        total = len(self.head) + wire.len_field(wire.TAG_GRAPH, size)
        return [self.head, wire.TAG_GRAPH + wire.varint(size), *pieces], total, data

    def _splice(self, swaps: dict[int, list]) -> list:
        """The graph as protobuf writes it (unknown fields and all), the records of the
        initializers in `swaps` (by position) replaced, everything else kept byte for byte."""
        if self._graph_bytes is None:
            self._graph_bytes = memoryview(self.graph.SerializeToString())
        g = self._graph_bytes
        if not swaps:
            return [g]  # nothing to swap: no need to walk the graph's records
        if not self._records:
            self._records = [(number == wire.GRAPH_INITIALIZER and wire_type == 2, start, end)
                             for number, wire_type, start, _, end
                             in wire.fields(wire.MemoryBytes(g), 0, len(g))]
        if sum(1 for is_init, _, _ in self._records if is_init) != len(self.graph.initializer):
            raise ModelError("cannot line up the serialized initializers")  # not reached
        pieces: list = []
        k = -1
        run = 0  # start of the current run of records kept byte for byte
        for is_init, start, end in self._records:
            k += is_init
            if is_init and k in swaps:
                pieces += [g[run:start], *swaps[k]]
                run = end
        pieces.append(g[run:])
        return pieces


def _record(t: onnx.TensorProto, payload: Payload | None, layout: str, inline_limit: int,
            data: DataFile) -> list:
    """The pieces that replace one initializer's record ([] keeps it as serialized)."""
    if payload is None:
        if layout != "external" or not (t.HasField("raw_data")
                                        and len(t.raw_data) > inline_limit):
            return []
        moved = onnx.TensorProto()
        moved.CopyFrom(t)
        data.add(moved, moved.raw_data)
        return [_message(wire.TAG_INITIALIZER, moved.SerializeToString())]
    if layout == "embedded" or (layout == "same" and payload.stub):
        head = onnx.TensorProto()
        head.CopyFrom(t)
        head.ClearField("external_data")
        head.ClearField("data_location")
        hb = head.SerializeToString()
        inner = len(hb) + wire.len_field(wire.TAG_RAW_DATA, payload.length)
        return [wire.TAG_INITIALIZER + wire.varint(inner) + hb + wire.TAG_RAW_DATA
                + wire.varint(payload.length), payload]
    ref = onnx.TensorProto()
    ref.CopyFrom(t)
    data.add(ref, payload)
    return [_message(wire.TAG_INITIALIZER, ref.SerializeToString())]


def _message(tag: bytes, body: bytes) -> bytes:
    return tag + wire.varint(len(body)) + body


def _model_without_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model without its graph, without copying the graph when possible."""
    out = onnx.ModelProto()
    try:
        if len(unknown_fields.UnknownFieldSet(model)):
            raise TypeError("unknown fields")  # only a full copy keeps them
        for fd, value in model.ListFields():
            if fd.name == "graph":
                continue
            if fd.is_repeated:
                getattr(out, fd.name).extend(value)
            elif fd.message_type is not None:
                getattr(out, fd.name).CopyFrom(value)
            else:
                setattr(out, fd.name, value)  # TypeError for strings that are not UTF-8
    except (TypeError, ValueError):
        out.CopyFrom(model)
        out.ClearField("graph")
    return out


def _free_data_name(out: Path, skeleton: Skeleton) -> str:
    """`<out>.data`, unless that is a file the input still reads (in-place runs, or an input
    whose own data file has that name): then `<out>.1.data`, ... Replacing a file the input
    reads would change the input's weights, or break them if a later step failed."""
    protected = {os.path.realpath(skeleton.path)}
    protected.update(os.path.realpath(skeleton.folder / loc) for loc in skeleton.locations)
    name, k = out.name + ".data", 0
    while os.path.realpath(out.parent / name) in protected:
        k += 1
        name = f"{out.name}.{k}.data"
    return name


def _write_pieces(dst: int, pieces: list) -> None:
    pending: list[bytes] = []
    for piece in pieces:
        if isinstance(piece, Payload):
            write_all(dst, b"".join(pending))
            pending.clear()
            kernel_copy.copy_range(piece.fd, dst, piece.offset, piece.length)
        else:
            pending.append(piece)
    write_all(dst, b"".join(pending))
