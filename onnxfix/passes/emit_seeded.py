"""Seeded mode's emit: each random node becomes the in-graph generator (onnxfix.seeded) feeding
the op's input-noise transform.

The model gets ONE int64 scalar input (`seed` unless taken) and one shared S-box constant at
the top of the main graph; both reach If / Loop bodies through outer scope, and a Scan body
as state variables the Scan carries unchanged (OpenVINO 2026.4's Scan converter refuses a body
that reads an outer value: "Number of Scan node inputs (3) is less than required (4)"), as do
the pass numbers of the loops around a Scan. Each site draws its own stream, keyed by
`site_key` (the same key `noise_feeds(generator="seeded")` uses), in the shape the original
node drew: its static shape where it has one (or where inference proved every dim), else the
shape of the tensor it read, at run time (no noise bound needed). Inside a Loop, the body's
iteration number picks the draw of that pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfix.errors import ModelError, param, param_name
from onnxfix.graph.builder import NodeBuilder
from onnxfix.graph.naming import sanitize
from onnxfix.ops import dtype_name
from onnxfix.passes.plan import SitePlan
from onnxfix.passes.splice import ScanState
from onnxfix.report import Replacement
from onnxfix.seeded import algorithm as alg
from onnxfix.seeded.graph import (
    MIN_OPSET,
    NONZERO_OPSET,
    RANGE_OPSET,
    Rank,
    sbox_constant,
    seeded_gumbel,
    seeded_normal,
    seeded_uniform,
)

SEED_INPUT = "seed"
_DRAWN = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def site_key(location: str, op_type: str, output: str) -> int:
    """A site's 48-bit stream key: its graph path, op type and output name."""
    return alg.node_key(f"{location}/{op_type}/{output}")


@dataclass
class SeededGraph:
    """What every seeded site of one emit shares: the seed input and the S-box constant."""

    seed: str = ""
    table: str = ""
    front: list[onnx.NodeProto] = field(default_factory=list)  # nodes for the main graph's top
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    scan_counters: dict[int, str] = field(default_factory=dict)  # id(Scan node) -> its counter
    # (id(Scan node), a name outside it) -> the name its body reads (a carried state)
    carried: dict[tuple[int, str], str] = field(default_factory=dict)


@dataclass
class SeededSite:
    """One site's generator: the nodes (transform included) and its report entries."""

    replacement: Replacement
    nodes: list[onnx.NodeProto]
    meta: dict
    scan_states: list[ScanState] = field(default_factory=list)  # a Scan's new states
    prepends: list[tuple] = field(default_factory=list)  # (graph, node, depth) for splice


def shared(state: SeededGraph, names, opset: int) -> SeededGraph:
    """Allocate the seed input and the S-box once per emit (the first site's call)."""
    if state.seed:
        return state
    state.seed = names.fresh(SEED_INPUT)
    vi = helper.make_tensor_value_info(state.seed, onnx.TensorProto.INT64, [])
    vi.doc_string = ("onnxfix seed input: int64 scalar. Every random node draws its own "
                     "stream from it (onnxfix seeded generator); the same seed gives the same "
                     "draws on every runtime. Taken modulo 2^24.")
    state.inputs.append(vi)
    if opset >= MIN_OPSET:
        b = NodeBuilder(names, opset, "onnxfix_seeded")
        state.table = sbox_constant(b)
        state.front.extend(b.nodes)
    return state


def emit_site(b: NodeBuilder, p: SitePlan, state: SeededGraph) -> SeededSite:
    """The generator and the transform replacing site `p` (nodes collected in `b`)."""
    site = p.site
    _check_opset(b.opset, p)
    made = SeededSite(None, [], {})
    iteration = _iteration(b, p, state, made)
    seed = _reach(b.names, p, state, made, (state.seed, 0), "seed")
    table = _reach(b.names, p, state, made, (state.table, 0), "sbox", list(alg.SBOX.shape))
    shape, rank = _draw_shape(b, p)
    noise_type = p.dtypes.noise
    drawn = noise_type if noise_type in _DRAWN else onnx.TensorProto.FLOAT
    # the generator of each standard-noise family (ops.noise): the noise input-noise takes
    draw = {"normal": seeded_normal, "uniform": seeded_uniform,
            "gumbel": seeded_gumbel}[p.spec.family]
    key = site_key(site.location, site.op_type, site.output)
    try:
        noise = draw(b, seed, key, shape, iteration=iteration, dtype=drawn, table=table,
                     rank=rank)
    except ModelError as e:
        raise ModelError(f"{site.describe()}: {e}") from None
    if drawn != noise_type:  # float16 / bfloat16 draws: made in float32, then cast
        noise = b.op("Cast", [noise], "noise_cast", to=noise_type)
    p.spec.transform(b, noise, site.node, p.attrs, p.dtypes)
    repl = Replacement("seeded", state.seed, p.full_shape, dtype_name(noise_type),
                       dims=[d.to_dict() for d in p.dims])
    meta = {"draw": site.output, "op_type": site.op_type, "graph": site.location,
            "family": p.spec.family, "dtype": dtype_name(noise_type), "key": key,
            "iteration": iteration is not None, "loops": len(iteration or []), "noise": noise}
    made.replacement, made.nodes, made.meta = repl, b.nodes, meta
    return made


def _check_opset(opset: int, p: SitePlan) -> None:
    if opset < MIN_OPSET:
        raise ModelError(f"{p.site.describe()}: the seeded generator needs opset {MIN_OPSET} or "
                         f"later (integer Add, Sub, Mul and Div); the model uses opset {opset}: "
                         f"use "
                         f"{param('mode', 'input-noise', hint=True)}")


def _iteration(b: NodeBuilder, p: SitePlan, state: SeededGraph,
               made: SeededSite) -> list[str] | None:
    """The pass number of each enclosing Loop or Scan, outermost first (None outside loops):
    a Loop body's iteration input, or a counter the Scan carries as one more state (made once
    per Scan), as the site's body reads it (`_reach`)."""
    scopes = p.site.scopes
    loops = [d for d, s in enumerate(scopes) if s.owner.op_type in ("Loop", "Scan")]
    if not loops:
        return None
    return [_reach(b.names, p, state, made,
                   (_pass_number(b, p, scopes[d], state, made), d + 1), "outer_pass")
            for d in loops]


def _reach(names, p: SitePlan, state: SeededGraph, made: SeededSite, value: tuple[str, int],
           hint: str, shape: list[int] | None = None) -> str:
    """The name the site's body reads for `value` = (an int64 name, the depth of the graph
    defining it in the site's scopes, 0 for the main graph): carried into every Scan below
    that depth as a state passed through unchanged (once per Scan and name, shared by its
    sites); Loop and If bodies read it from outer scope, which OpenVINO converts."""
    name, depth = value
    for d in range(depth, len(p.site.scopes)):
        scope = p.site.scopes[d]
        if scope.owner.op_type != "Scan":
            continue
        key = (id(scope.owner), name)
        if key not in state.carried:
            state.carried[key] = _carry(names, scope, d, name, hint, shape or [], made)
        name = state.carried[key]
    return name


def _carry(names, scope, depth: int, outer: str, hint: str, shape: list[int],
           made: SeededSite) -> str:
    stem = f"onnxfix_{sanitize(scope.owner.name or 'scan')}_{hint}"
    carried = ScanState(scope, outer, names.fresh(stem), names.fresh(f"{stem}_next"),
                        names.fresh(f"{stem}_last"), shape)
    made.scan_states.append(carried)
    made.prepends.append((scope.body, helper.make_node(
        "Identity", [carried.inner], [carried.after],
        name=names.fresh(f"{stem}_carry")), depth + 1))
    return carried.inner


def _pass_number(b: NodeBuilder, p: SitePlan, scope, state: SeededGraph,
                 made: SeededSite) -> str:
    where = p.site.describe()
    if scope.owner.op_type == "Loop":
        body_inputs = scope.body.input
        if not body_inputs or not body_inputs[0].name:
            raise ModelError(f"{where}: its Loop body has no iteration input")
        return body_inputs[0].name
    if b.opset < 9:
        raise ModelError(f"{where}: a draw inside an opset-8 Scan body is not supported; use "
                         f"{param('mode', 'input-noise', hint=True)}")
    key = id(scope.owner)
    if key not in state.scan_counters:
        state.scan_counters[key] = _scan_counter(b, p, scope, made)
    return state.scan_counters[key]


def _scan_counter(b: NodeBuilder, p: SitePlan, scope, made: SeededSite) -> str:
    names, depth = b.names, p.site.scopes.index(scope)
    stem = sanitize(scope.owner.name or "scan")
    counter = ScanState(scope, names.fresh(f"onnxfix_{stem}_pass_start"),
                        names.fresh(f"onnxfix_{stem}_pass"),
                        names.fresh(f"onnxfix_{stem}_pass_next"),
                        names.fresh(f"onnxfix_{stem}_passes"))
    made.scan_states.append(counter)
    made.prepends.append((scope.parent, _int_constant(names, counter.start, 0), depth))
    one = names.fresh(f"onnxfix_{stem}_one")
    made.prepends.append((scope.body, _int_constant(names, one, 1), depth + 1))
    made.prepends.append((scope.body, helper.make_node(
        "Add", [counter.inner, one], [counter.after],
        name=names.fresh(f"onnxfix_{stem}_pass_add")), depth + 1))
    return counter.inner


def _int_constant(names, output: str, value: int) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [output], name=names.fresh(f"{output}_node"),
                            value=numpy_helper.from_array(np.array(value, dtype=np.int64)))


def _draw_shape(b: NodeBuilder, p: SitePlan) -> tuple[list[int] | str, Rank]:
    """One invocation's noise shape: static dims, or a 1-D int64 shape tensor and its dims
    when the plan knows the rank (an int where static, else None: the generator then builds
    the draw in that rank, which IREE and TVM need, `onnxfix.seeded.graph._grid_index`, with
    the static dims as constants)."""
    node = p.site.node
    static = p.spec.static_shape(node)
    if static is not None:
        return static, len(static)
    if p.shape is not None and all(isinstance(d, int) for d in p.shape):
        return [int(d) for d in p.shape], len(p.shape)
    if not p.source:
        raise ModelError(f"{p.site.describe()}: the size of this draw is not known")
    if b.opset < NONZERO_OPSET:
        raise ModelError(f"{p.site.describe()}: a seeded draw of runtime shape needs opset "
                         f"{NONZERO_OPSET} or later (NonZero; Range from {RANGE_OPSET}), the "
                         f"model uses opset {b.opset}: use "
                         f"{param('mode', 'input-noise', hint=True)}, or fix the shape with "
                         f"{param_name('dims')}")
    need = b.op("Shape", [p.source], "draw_shape")
    # the dims inference proved static are constants in the draw (typed by inference)
    known = None if p.shape is None else [d if isinstance(d, int) else None for d in p.shape]
    if node.op_type != "Multinomial":
        return need, known
    # Multinomial draws [batch, sample_size] (Gumbel form: [batch, sample_size, classes])
    # from logits [batch, classes]: each axis follows a logits axis, or is the sample count
    rank = len(p.spec.noise_shape(node, lambda _name: None))
    parts = [b.op("Gather", [need, b.constant(np.array([axis], dtype=np.int64), "logits_axis")],
                  "logits_dim", axis=0) if axis is not None else
             b.constant(np.array([int(p.attrs.get("sample_size", 1))], dtype=np.int64), "samples")
             for axis in p.spec.source_axes(rank)]
    return b.op("Concat", parts, "draw_shape", axis=0), known or rank
