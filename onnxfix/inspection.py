"""`onnxfix inspect`: every random node, where it lives, what it draws, what reads it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from itertools import compress, count
from operator import attrgetter, not_

import onnx

from onnxfix.errors import OnnxfixError
from onnxfix.graph.find import Site, find_sites, iter_scoped
from onnxfix.graph.shapes import infer_facts
from onnxfix.ops import attribute_refs, attrs_of, dtype_name, spec_for
from onnxfix.passes.emit import emit
from onnxfix.passes.plan import plan
from onnxfix.passes.prepare import prepare
from onnxfix.seeded.metadata import seed_metadata


@dataclass
class RandomNodeInfo:
    op_type: str
    name: str
    output: str
    graph: str
    dtype: str
    shape: list | None
    attributes: dict
    consumers: list[str] = field(default_factory=list)
    # the noise input an input-noise rewrite gives it: {"input", "shape", "dims"}, each dim
    # named as the rewrite names it and marked constant / input / iterations / derived /
    # data-dependent (those need --noise-bound)
    noise: dict | None = None


@dataclass
class InspectReport:
    model: str | None
    nodes: list[RandomNodeInfo]
    # a seeded rewrite's seed input: {"name", "draws": [{draw, op_type, graph, family, ...}]}
    seed_input: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


_INPUT = attrgetter("input")


def inspect_model(model: onnx.ModelProto, origin: str | None = None) -> InspectReport:
    planned, facts, sites = _planned_noise(model)
    facts = facts if facts is not None else infer_facts(model)
    sites = sites if sites is not None else find_sites(model)
    readers = _consumers(model, {s.node.output[0] for s in sites} - {""}, sites)
    nodes = []
    for site in sites:
        node = site.node
        spec = spec_for(node)

        def elem_type(name: str) -> int | None:
            f = facts.get(name)
            return f.elem_type if f else None

        if site.in_function:
            dtype = _per_call_dtype(spec, node)
        else:
            try:
                dtype = dtype_name(spec.dtypes(node, elem_type).draw)
            except OnnxfixError as e:
                dtype = f"invalid ({e})"
        out = facts.get(node.output[0])
        shape = out.shape if out is not None else None
        if shape is None and spec.noise_is_draw_shaped and not attribute_refs(
                attrs_of(node)):
            shape = spec.noise_shape(node, lambda n: facts[n].shape if n in facts else None)
        attrs = {k: _plain(v) for k, v in attrs_of(node).items()}
        noise = planned.get(node.output[0])
        if noise is not None and shape is not None:
            shape = _named_like_noise(shape, noise, spec.noise_is_draw_shaped)
        nodes.append(RandomNodeInfo(node.op_type, node.name, node.output[0], site.location,
                                    dtype, shape, attrs, readers.get(node.output[0], []),
                                    noise))
    return InspectReport(origin, nodes, seed_metadata(model))


def _planned_noise(model: onnx.ModelProto
                   ) -> tuple[dict[str, dict], Mapping | None, list[Site] | None]:
    """Draw name -> the noise input an input-noise rewrite would declare for it: the plan and
    one input-noise emit (nothing is spliced, checked or written). Also the plan's shape facts
    and random nodes when they hold for `model` as it is (else None: the caller finds them)."""
    try:
        model_plan = plan(prepare(model), keep_facts=True, strict=False)
        emitted = emit(model_plan, "input-noise", allow_unbounded=True)
    except OnnxfixError:  # the rewrite refuses this model; inspect still lists its nodes
        return {}, None, None
    same = model_plan.prepared.as_input
    # without local functions nothing was inlined: the prepared copy is `model` node for node
    sites = model_plan.prepared.sites if same and not model.functions else None
    return ({r.output: {"input": r.replacement.name, "shape": r.replacement.shape,
                        "dims": r.replacement.dims}
             for r in emitted.records if r.replacement is not None},
            model_plan.facts if same else None, sites)


def _named_like_noise(shape: list, noise: dict, draw_shaped: bool) -> list:
    """The draw's shape with the dim names the rewrite gives (same rank, per axis)."""
    lead = len(noise["dims"]) - len(shape) if draw_shaped else None
    if lead is None or lead < 0:
        return shape
    named = list(shape)
    for d in noise["dims"][lead:]:
        k = d["axis"] - lead
        if d["kind"] in ("input", "derived", "data-dependent") and not isinstance(shape[k], int):
            named[k] = d["name"]
    return named


def _per_call_dtype(spec, node: onnx.NodeProto) -> str:
    """A function body's draw: its dtype may follow the types each call passes in."""
    ref = attribute_refs(attrs_of(node)).get("dtype")
    if ref:
        return f"per call (attribute dtype={ref})"
    try:
        as_float, as_double = (spec.dtypes(node, lambda _name, t=t: t).draw
                               for t in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE))
    except OnnxfixError as e:
        return f"invalid ({e})"
    if as_float == as_double:
        return dtype_name(as_float)
    return f"per call (the type of input '{node.input[0]}')"


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


def _consumers(model: onnx.ModelProto, wanted: set[str],
               sites: list[Site] = ()) -> dict[str, list[str]]:
    """Who reads each of the `wanted` names (node labels and graph outputs), in graph order.
    `sites`: the random nodes computing them (where to start looking, see _reading)."""
    readers: dict[str, list[str]] = {}
    for container, where, _ in iter_scoped(model):
        nodes = container.node
        start = min((s.index for s in sites if s.container is container and s.index >= 0),
                    default=0)
        for k in _reading(container, wanted, start):
            node = nodes[k]
            label = f"{node.op_type} '{node.name}'" if node.name else node.op_type
            for name in set(node.input):
                if name in wanted:
                    readers.setdefault(name, []).append(label)
        if isinstance(container, onnx.GraphProto):
            for o in container.output:
                if o.name not in wanted:
                    continue
                what = "graph output" if where == "main" else f"output of {where}"
                readers.setdefault(o.name, []).append(what)
    return readers


# A container of more nodes than this, with at most _FEW draws read, is searched from its
# draws on (see _reading); with more draws, one search of its bytes per draw would cost more
# than looking at every node.
SEARCH_FROM_DRAWS = 4096
_FEW = 8
_CHUNK = 512


def _reading(container, wanted: set[str], start: int) -> list[int]:
    """The positions of `container`'s nodes reading a `wanted` name, in order; picked out in
    C (no Python step per node). A large container is searched from `start` (its first
    draw: in a sorted graph every reader comes after it) to the end, then from its first
    node, and no further once as many reads are found as the container's bytes hold: each
    input slot naming a wanted value is that name's input field (0x0A, length, name) in
    the serialized container, so their count, found by a search of the bytes counting
    overlaps (nested bodies' and other fields' chance matches only add to it), bounds the
    reads left. A 100k-node graph's readers of a draw: 0.2 s for every node -> 0.05 s."""
    nodes = container.node
    if len(nodes) <= SEARCH_FROM_DRAWS or len(wanted) > _FEW:
        return list(_readers_among(nodes, wanted))
    try:
        data = container.SerializeToString()
    except Exception:  # noqa: BLE001 - a container protobuf will not serialize: look at all
        return list(_readers_among(nodes, wanted))
    left = sum(_occurrences(data, _input_field(n)) for n in wanted)
    del data
    found: list[int] = []
    spans = [(lo, min(lo + _CHUNK, len(nodes))) for lo in range(start, len(nodes), _CHUNK)]
    spans += [(lo, min(lo + _CHUNK, start)) for lo in range(0, start, _CHUNK)]
    for lo, hi in spans:
        if left <= 0:
            break
        for k in _readers_among(nodes[lo:hi], wanted, lo):
            found.append(k)
            left -= sum(name in wanted for name in nodes[k].input)
    return sorted(found)


def _readers_among(nodes, wanted: set[str], first: int = 0):
    """The positions (from `first`) of the nodes reading a wanted name, picked out in C."""
    return compress(count(first), map(not_, map(wanted.isdisjoint, map(_INPUT, nodes))))


def _occurrences(data: bytes, pattern: bytes) -> int:
    """How often `pattern` occurs in `data`, overlaps counted (bytes.count skips them: a
    chance match overlapping a real one would hide it)."""
    n, at = 0, data.find(pattern)
    while at >= 0:
        n, at = n + 1, data.find(pattern, at + 1)
    return n


def _input_field(name: str) -> bytes:
    """NodeProto's input field (number 1, length-delimited) holding `name`, as serialized."""
    raw = name.encode()
    size, length = len(raw), bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        length.append(byte | (0x80 if size else 0))
        if not size:
            return b"\x0a" + bytes(length) + raw
