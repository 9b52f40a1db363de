"""Emit pass: per mode, what replaces each planned site, as typed records.

Effect: none on the plan. `emit(plan, mode, ...)` copies the prepared model, finds each site
in the copy by its node path, and returns an Emitted: per site the report's Replacement, the
new nodes, the new graph inputs, the frozen arrays (name, numpy array, onnx dtype enum) and the
routing into bodies, for `splice` to apply. One plan can be emitted any number of times, in any
mode. A mode is one function in EMITTERS (a new mode is one more entry).
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfix.errors import ModelError, UsageError, param
from onnxfix.graph.builder import NodeBuilder
from onnxfix.graph.find import Site, constant_lookup, default_opset
from onnxfix.graph.naming import NameAllocator, sanitize
from onnxfix.graph.noisedims import slice_to_need, unbounded_error
from onnxfix.graph.shapes import input_dim_names
from onnxfix.ops import dtype_name
from onnxfix.passes.budget import check_constant_budget
from onnxfix.passes.emit_seeded import SeededGraph, emit_site, shared, site_key
from onnxfix.passes.plan import ModelPlan, SitePlan, resolve
from onnxfix.passes.splice import ScanInput, ScanState, route
from onnxfix.report import NodeRecord, Replacement

MODES = ("input-noise", "constant", "deterministic", "seeded")
NOISE_DTYPES = {"same": None, "float32": onnx.TensorProto.FLOAT,
                "float16": onnx.TensorProto.FLOAT16}
DEFAULT_MAX_DRAW_BYTES = 256 * 2**20


@dataclass
class Frozen:
    """An array the rewrite stores in the model (a frozen draw or frozen standard noise)."""

    name: str
    array: np.ndarray
    elem_type: int  # onnx TensorProto dtype enum

    def tensor(self) -> onnx.TensorProto:
        return numpy_helper.from_array(self.array, name=self.name)


@dataclass
class SiteEmission:
    """What replaces one site: the record, the nodes, and what goes around them."""

    plan: SitePlan  # bound to the emit's copy of the model
    replacement: Replacement
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)  # new graph inputs
    frozen: list[Frozen] = field(default_factory=list)
    prepends: list[tuple[onnx.GraphProto, onnx.NodeProto, int]] = field(default_factory=list)
    scans: list[ScanInput] = field(default_factory=list)
    scan_states: list[ScanState] = field(default_factory=list)  # seeded mode (ScanState)
    noise_meta: dict | None = None  # the `onnxfix.noise_inputs` metadata entry
    seed_meta: dict | None = None  # seeded mode: the `onnxfix.seed_input` entry of its draw

    @property
    def record(self) -> NodeRecord:
        p, site = self.plan, self.plan.site
        where = site.location + (f" (inlined from {p.origin})" if p.origin else "")
        return NodeRecord(op_type=site.op_type, node=site.node.name, output=site.output,
                          graph=where, distribution=p.spec.distribution(p.attrs),
                          replacement=self.replacement)


@dataclass
class Emitted:
    """One emit of a plan: the model copy it will be spliced into, and its records."""

    mode: str
    model: onnx.ModelProto
    sites: list[SiteEmission] = field(default_factory=list)
    dead: list[Site] = field(default_factory=list)  # draws nothing reads, bound to the copy
    kept: dict[int, NodeRecord] = field(default_factory=dict)
    n_sites: int = 0
    # set by rewrite.apply_emitted: the output is the input with each draw's replacement nodes
    # in its place and nothing else changed (passes.local_check, steps 6-8)
    in_place: bool = False
    # the replacement nodes in a model of their own, once built for the spliced model
    # (output_shapes.replacements_alone: [the model or None])
    alone: list = field(default_factory=list)
    # set by passes.local_check: that model, inferred strictly, gives every draw exactly the
    # plan's facts (the output re-declaration then need not infer it again)
    alone_proven: bool = False
    seed_input: str = ""  # seeded mode: the int64 seed input's name

    @property
    def records(self) -> list[NodeRecord]:
        """One record per random node, in graph order."""
        done = iter(e.record for e in self.sites)
        return [copy.copy(self.kept[k]) if k in self.kept else next(done)
                for k in range(self.n_sites)]

    @property
    def prepended(self) -> list[onnx.NodeProto]:
        """The nodes put at the front of a graph, in order."""
        return [node for e in self.sites for _, node, _ in e.prepends]

    @property
    def replacement_nodes(self) -> list[onnx.NodeProto]:
        """Every node the splice puts in: the prepended ones, then each site's, in the order
        they stand in the output when `in_place`."""
        return self.prepended + [node for e in self.sites for node in e.nodes]

    @property
    def noise_meta(self) -> list[dict]:
        return [e.noise_meta for e in self.sites if e.noise_meta is not None]

    @property
    def seed_meta(self) -> dict | None:
        """Seeded mode's `onnxfix.seed_input` metadata: the seed input and every draw."""
        if not self.seed_input:
            return None
        return {"name": self.seed_input,
                "draws": [e.seed_meta for e in self.sites if e.seed_meta is not None]}


@dataclass
class _Context:
    names: NameAllocator
    opset: int
    lookup: Callable
    seed: int
    fed_type: int | None  # the noise inputs' dtype when forced (noise_dtype), else None
    main: onnx.GraphProto  # the copy's main graph (casts of noise inputs go first there)
    seeded: SeededGraph = field(default_factory=SeededGraph)  # seeded mode's shared parts


def emit(model_plan: ModelPlan, mode: str, *, seed: int = 0, noise_dtype: str = "same",
         max_draw_bytes: int = DEFAULT_MAX_DRAW_BYTES,
         allow_unbounded: bool = False) -> Emitted:
    """call(plan, mode) -> Emitted (see the module doc); the plan is left as it was.

    allow_unbounded: declare unbounded data-dependent dims symbolically instead of refusing
    (for `inspect`: such an output cannot be fed from the inputs alone).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model_plan.model)
    result = Emitted(mode, out, kept=model_plan.kept, n_sites=model_plan.n_sites)
    if not model_plan.prepared.random:
        return result
    result.dead = [resolve(out, path, where) for path, where in model_plan.dead]
    plans = [_bound(p, out) for p in model_plan.sites]
    if not plans:
        return result
    if mode not in ("deterministic", "seeded") and not allow_unbounded:
        for p in plans:
            if p.unbounded:
                raise unbounded_error(p.site.describe(), p.noise, p.unbounded, mode)
    if mode == "constant":
        check_constant_budget(plans, max_draw_bytes, input_dim_names(out))
    # the plan's model holds the same constants as the copy `out` and nothing changes it, so
    # its index is built only if an emitter asks (a 100k-initializer graph often never does)
    lookup = constant_lookup(model_plan.model)
    ctx = _Context(model_plan.names.copy(), default_opset(out), lookup,
                   seed, NOISE_DTYPES[noise_dtype], out.graph)
    result.sites = [EMITTERS[mode](ctx, p) for p in plans]
    result.seed_input = ctx.seeded.seed
    return result


def _bound(p: SitePlan, model: onnx.ModelProto) -> SitePlan:
    """A shallow copy of the site plan whose site is the same node in `model`."""
    bound = SitePlan.__new__(SitePlan)  # copy.copy's result, without its generic protocol
    bound.__dict__.update(p.__dict__)
    bound.site = resolve(model, p.path, p.site.location)
    return bound


def _builder(ctx: _Context, p: SitePlan) -> NodeBuilder:
    prefix = "onnxfix_" + sanitize(p.site.node.name or p.site.output)
    return NodeBuilder(ctx.names, ctx.opset, prefix, constant_of=ctx.lookup)


def _emit_deterministic(ctx: _Context, p: SitePlan) -> SiteEmission:
    b = _builder(ctx, p)
    how = p.spec.deterministic(b, p.site.node, p.attrs, p.dtypes)
    local = p.declared[len(p.lead):] if p.declared is not None else None
    repl = Replacement("deterministic", p.site.output, p.spec.draw_shape(local),
                       dtype_name(p.dtypes.draw), how, dims=[d.to_dict() for d in p.dims])
    return SiteEmission(p, repl, b.nodes)


def _emit_constant(ctx: _Context, p: SitePlan) -> SiteEmission:
    if p.freezes_draw:  # a main-graph draw: the initializer takes the node's output name
        shape = [int(d) for d in p.shape]
        value = p.spec.sample_draw(draw_rng(ctx.seed, p.site), shape, p.attrs, p.dtypes.draw)
        repl = Replacement("initializer", p.site.output, shape, dtype_name(p.dtypes.draw))
        return SiteEmission(p, repl, [], frozen=[Frozen(p.site.output, value, p.dtypes.draw)])
    # seeded standard noise, frozen; the transform stays in the graph
    b = _builder(ctx, p)
    shape = [int(d) for d in p.declared]
    value = p.spec.sample(draw_rng(ctx.seed, p.site), shape, p.dtypes.noise)
    repl = Replacement("initializer", p.noise, shape, dtype_name(p.dtypes.noise),
                       dims=[d.to_dict() for d in p.dims])
    e = SiteEmission(p, repl, frozen=[Frozen(p.noise, value, p.dtypes.noise)])
    return _transformed(ctx, b, e, p.noise)


def _emit_input_noise(ctx: _Context, p: SitePlan) -> SiteEmission:
    site = p.site
    b = _builder(ctx, p)
    if p.shape is None:
        raise ModelError(f"{site.describe()}: shape inference cannot tell even the rank of "
                         f"this draw (an op it does not know feeds it), so no noise input can "
                         f"be declared; try {param('mode', 'deterministic', hint=True)}, or "
                         f"give the model's "
                         f"intermediate tensors value_info shapes")
    fed = ctx.fed_type or p.dtypes.noise
    if fed != p.dtypes.noise:
        problem = p.spec.noise_dtype_problem(site.node, fed)
        if problem:
            raise UsageError(problem)
    repl = Replacement("input", p.noise, p.declared, dtype_name(fed),
                       dims=[d.to_dict() for d in p.dims])
    e = SiteEmission(p, repl, inputs=[_noise_input(p, fed)])
    top = p.noise
    if fed != p.dtypes.noise:
        repl.cast_to = dtype_name(p.dtypes.noise)
        top = repl.cast_name = ctx.names.fresh(f"{p.noise}_cast")
        e.prepends.append((ctx.main, helper.make_node(
            "Cast", [p.noise], [top], to=p.dtypes.noise,
            name=ctx.names.fresh(f"onnxfix_{p.noise}_cast")), 0))
    e.noise_meta = {"name": repl.name, "family": p.spec.family, "dtype": repl.dtype,
                    "shape": repl.shape, "draw": site.output, "op_type": site.op_type,
                    "dims": repl.dims,
                    # what noise_feeds(generator="seeded") draws: the seeded rewrite's stream
                    "seeded_key": site_key(site.location, site.op_type, site.output)}
    if p.lead:  # the loops the leading axes iterate over, outermost first
        e.noise_meta["loops"] = [s.owner.op_type for s in site.scopes
                                 if s.owner.op_type in ("Loop", "Scan")]
    return _transformed(ctx, b, e, top)


def _emit_seeded(ctx: _Context, p: SitePlan) -> SiteEmission:
    first = not ctx.seeded.seed
    state = shared(ctx.seeded, ctx.names, ctx.opset)
    made = emit_site(_builder(ctx, p), p, state)
    e = SiteEmission(p, made.replacement, made.nodes, seed_meta=made.meta,
                     prepends=made.prepends, scan_states=made.scan_states)
    if first:  # the seed input and the shared S-box, once per model
        e.inputs.extend(state.inputs)
        e.prepends.extend((ctx.main, node, 0) for node in state.front)
    return e


def _transformed(ctx: _Context, b: NodeBuilder, e: SiteEmission, top: str) -> SiteEmission:
    """Route the noise `top` to the site, slice it to what a run needs, transform it."""
    p = e.plan
    way = route(p, top, ctx.names, ctx.opset)
    e.prepends.extend(way.prepends)
    e.scans.extend(way.scans)
    inner = way.inner
    if p.source:
        inner = slice_to_need(b, inner, p.dims, len(p.lead), p.source, len(p.shape),
                              p.site.op_type)
    p.spec.transform(b, inner, p.site.node, p.attrs, p.dtypes)
    e.nodes = b.nodes
    return e


def _noise_input(p: SitePlan, fed: int) -> onnx.ValueInfoProto:
    """The noise input, its doc_string stating the distribution and the transform."""
    vi = onnx.ValueInfoProto(name=p.noise)  # make_tensor_value_info's, its type cached
    declared = p.declared
    vi.type.CopyFrom(_tensor_type(fed, None if declared is None else tuple(declared)))
    dist = p.spec.distribution(p.attrs)
    per_iteration = (f" Leading axes: one per enclosing loop ({len(p.lead)}); iteration i "
                     f"reads slice i." if p.lead else "")
    cast = ""
    if fed != p.dtypes.noise:
        cast = f" Fed as {dtype_name(fed)}, cast in-graph to {dtype_name(p.dtypes.noise)}."
    vi.doc_string = (
        f"onnxfix noise input ({dist['family']}): feed {dist['noise']} noise, "
        f"{dtype_name(fed)}. In-graph: {p.site.output} = "
        f"{p.spec.transform_text(p.attrs)}. Replaces {p.site.describe()}.{per_iteration}{cast}")
    return vi


@functools.lru_cache(maxsize=1024)
def _tensor_type(elem_type: int, shape: tuple) -> onnx.TypeProto:
    """One TypeProto per dtype and declared shape: thousands of draws share a few (read-only:
    callers copy it)."""
    return helper.make_tensor_type_proto(elem_type, shape)


def draw_rng(seed: int, site: Site) -> np.random.Generator:
    """The generator of one site's constant-mode draw: the seed and a stable key of the node."""
    key = f"{site.location}\0{site.op_type}\0{site.output}".encode()
    digest = hashlib.sha256(key).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *words])))


EMITTERS: dict[str, Callable[[_Context, SitePlan], SiteEmission]] = {
    "input-noise": _emit_input_noise,
    "constant": _emit_constant,
    "deterministic": _emit_deterministic,
    "seeded": _emit_seeded,
}
