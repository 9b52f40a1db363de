"""Plan pass: what is known about every random node before anything is rewritten.

Effect: none on the model. `plan(prepared, ...)` finds the sites once, sorts them (kept,
removed as dead, chosen), runs shape inference once (onnx, then onnxruntime's symbolic
inference where onnx left dims unproven), traces where data-dependent sizes come from, names
each noise input and classifies its dims. The resulting ModelPlan is read-only for the emits:
each emit works on a copy of the prepared model and finds its sites there by node path, so one
plan serves the rewrite, the check's input-noise twin and `inspect`. `ModelPlan.with_bounds`
re-classifies the noise dims with extra bounds without re-running inference or the trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from operator import attrgetter

import onnx

from onnxfix.errors import ModelError
from onnxfix.graph.datadep import Provenance, node_label, trace
from onnxfix.graph.find import Scope, Site, as_int, constant_lookup, find_sites
from onnxfix.graph.functions import take_origin
from onnxfix.graph.graph_edit import unread
from onnxfix.graph.naming import NameAllocator
from onnxfix.graph.noisedims import BOUNDED, DATA, DERIVED, NoiseDim, check_bound_names, classify
from onnxfix.graph.shapes import (
    Shape,
    TensorFacts,
    input_dim_names,
    ort_symbolic_facts,
    tied_score,
)
from onnxfix.ops import Dtypes, RandomOp, attrs_of, distribution_of, spec_for
from onnxfix.passes.local_check import reads_no_propagated_data
from onnxfix.passes.output_shapes import OutputFacts, draw_facts, infer_for_plan
from onnxfix.passes.prepare import Prepared, scope_key
from onnxfix.report import NodeRecord

_ATTRIBUTES = attrgetter("attribute")

# one step down from a graph: (index of the node holding the body, attribute, graph index)
PathStep = tuple[int, str, int]


@dataclass
class SitePlan:
    """What is known about one chosen site before it is rewritten."""

    site: Site
    spec: RandomOp
    attrs: dict
    dtypes: Dtypes
    shape: Shape  # of the noise for one invocation of the node
    lead: list = field(default_factory=list)  # one iteration axis per enclosing Loop/Scan
    origin: str = ""  # "function dom::name" when the node came from an inlined function
    noise: str = ""  # the name its noise input (or frozen noise) gets
    dims: list[NoiseDim] = field(default_factory=list)  # what each noise axis is
    source: str = ""  # the node input whose shape the draw takes ("" for a static shape)
    # the shape onnx inference gave, when onnxruntime's symbolic inference tied more: its
    # auto-merge equates dims that merely broadcast together, so a data-dependent source
    # keeps only what onnx inference proved
    onnx_shape: Shape = None
    # traced once (see graph.datadep): what the source's shape comes from, whether it varies
    # per loop iteration, and per enclosing loop why its trip count is data-dependent
    shape_origin: str | None = None
    per_iteration: bool = False
    trip_origins: list[str | None] = field(default_factory=list)
    path: tuple = ()  # where the node is: PathStep per scope, then its index in its graph

    @property
    def bounded(self) -> bool:
        return any(d.kind == BOUNDED for d in self.dims)

    @property
    def unbounded(self) -> list[NoiseDim]:
        return [d for d in self.dims if d.kind == DATA]

    @property
    def declared(self) -> Shape:
        """The noise input's shape: bounds in place of data-dependent sizes."""
        if not self.dims:
            return self.full_shape
        return [d.size if d.kind in (BOUNDED, "constant") else
                (d.name or None) for d in self.dims]

    @property
    def full_shape(self) -> Shape:
        return None if self.shape is None else [*self.lead, *self.shape]

    @property
    def freezes_draw(self) -> bool:
        """Constant mode stores the draw itself (else: standard noise, transform kept)."""
        return (not self.spec.data_dependent and not self.lead and not self.site.scopes
                and not self.bounded)


@dataclass
class ModelPlan:
    """The plan of a whole model: read by every emit, changed by none."""

    prepared: Prepared
    n_sites: int = 0
    kept: dict[int, NodeRecord] = field(default_factory=dict)  # site index -> kept/removed
    dead: list[tuple] = field(default_factory=list)  # (path, location) of draws nothing reads
    sites: list[SitePlan] = field(default_factory=list)  # chosen, in graph order
    bounds: dict[str, int] = field(default_factory=dict)
    anchors: set[str] = field(default_factory=set)  # input dims and iteration dims
    names_before: NameAllocator | None = None  # before noise naming (replayed by with_bounds)
    names: NameAllocator | None = None  # after it: emits allocate from a copy
    # shape inference on the prepared model, kept only when asked for (plan(keep_facts=True)):
    # it holds the inferred copy of the whole graph
    facts: Mapping | None = None
    # what the same inference proved for the main outputs with their declared shapes cleared
    # (None: inference failed) and for the chosen draws: the output re-declaration reuses
    # them where the rewrite provably changes neither (passes.output_shapes)
    output_facts: OutputFacts | None = None
    draw_facts: OutputFacts = field(default_factory=dict)
    # the prepared model passes onnx's full check (basic aside): proven by the plan's
    # inference for some models (passes.local_check), else False (not known)
    input_full: bool = False

    @property
    def model(self) -> onnx.ModelProto:
        return self.prepared.model

    def with_bounds(self, extra: dict[str, int]) -> ModelPlan:
        """The same plan with more noise-dim bounds (e.g. measured ones): dims re-classified,
        names replayed identically; inference and the trace are not run again."""
        if not extra:
            return self
        sites = [replace(p, dims=[]) for p in self.sites]
        out = replace(self, sites=sites, bounds={**self.bounds, **extra})
        out.names = _classify_all(sites, self.names_before.copy(), out.anchors,
                                  out.bounds)
        return out


def plan(prepared: Prepared, select=None, bounds: dict[str, int] | None = None, *,
         keep_facts: bool = False, forms: dict[str, str] | None = None,
         strict: bool = True) -> ModelPlan:
    """call(prepared) -> ModelPlan: find, sort and describe every random node, once.

    forms: op type -> the alternative rewrite form to use (e.g. {"Multinomial": "gumbel"}).
    strict: let the inference prove `input_full` where it can (passes.local_check; what the
    validate pass reads): same facts, but a model failing it is inferred twice."""
    result = ModelPlan(prepared, bounds=dict(bounds or {}))
    if not prepared.random:
        return result
    model = prepared.model
    sites = prepared.sites if prepared.sites is not None else find_sites(model)
    result.n_sites = len(sites)
    if select is not None and hasattr(select, "check_matches"):
        select.check_matches(sites)
    result.kept, chosen, dead = _sort_sites(sites, select)
    result.dead = [(site_path(s), s.location) for s in dead]
    if not chosen:
        return result
    flat = reads_no_propagated_data(model)  # its ops hold no subgraph either
    facts, result.output_facts, result.input_full = infer_for_plan(model,
                                                                   strict=strict and flat)
    result.facts = facts if keep_facts else None
    result.sites = _describe(model, chosen, prepared, facts, dict(forms or {}))
    result.draw_facts = draw_facts(facts, (p.site.node for p in result.sites))
    result.anchors = set(input_dim_names(model)) | set(prepared.trip_names.values())
    _trace_sources(model, result.sites, result.anchors, flat)
    result.names_before = NameAllocator(model)
    result.names = _classify_all(result.sites, result.names_before.copy(),
                                 result.anchors, result.bounds)
    return result


# -- sorting -----------------------------------------------------------------------------

def _sort_sites(sites: list[Site], select):
    """Split the sites: kept as they are, removed as dead, or chosen for the rewrite."""
    aside: dict[int, NodeRecord] = {}
    chosen, dead = [], []
    unread_draws = _unread_draws(sites)
    for k, site in enumerate(sites):
        origin = take_origin(site.node)
        if site.in_function:
            aside[k] = _kept(site, "in a model-local function that is never called")
        elif select is not None and not select(site):
            aside[k] = _kept(site, "not selected by --only/--exclude")
        elif _is_dead(site, unread_draws):
            dead.append(site)  # a draw nothing reads needs no noise: the node goes
            aside[k] = _kept(site, "its draw is read by nothing, so the node was removed")
            aside[k].status = "removed"
        else:
            chosen.append((site, origin))
    return aside, chosen, dead


def _is_dead(site: Site, unread_draws) -> bool:
    """Nothing in the site's graph reads any of its outputs, and none is a graph output."""
    outputs = {o for o in site.node.output if o}
    return outputs <= unread_draws(site.container)


def _unread_draws(sites: list[Site]):
    """graph -> the outputs of its random nodes that nothing in it reads (nor outputs),
    found by one walk per graph that stops once every such output has a reader."""
    done: dict[int, set[str]] = {}

    def of(container) -> set[str]:
        key = id(container)
        if key not in done:
            here = [s for s in sites if s.container is container]
            outputs = {o for s in here for o in s.node.output if o}
            # their readers come after them in a valid graph: the walk starts there
            done[key] = unread(container, outputs, start=max(0, min(s.index for s in here)))
        return done[key]

    return of


def _kept(site: Site, why: str) -> NodeRecord:
    spec = spec_for(site.node)
    return NodeRecord(op_type=site.op_type, node=site.node.name, output=site.output,
                      graph=site.location, distribution=distribution_of(spec, attrs_of(site.node)),
                      replacement=None, status="kept", note=why)


# -- node paths: the same site in a copy of the prepared model ---------------------------

def site_path(site: Site) -> tuple:
    """(PathStep per scope..., index of the node in its graph)."""
    steps = []
    for scope in site.scopes:
        k = _index(scope.parent.node, scope.owner, scope.owner_index)
        attr = next(a for a in scope.owner.attribute if a.name == scope.attr)
        g = 0 if attr.type == onnx.AttributeProto.GRAPH else _index(attr.graphs, scope.body)
        steps.append((k, scope.attr, g))
    return (*steps, _index(site.container.node, site.node, site.index))


def _index(seq, item, known: int = -1) -> int:
    """The position of `item` in `seq`: `known` when it still holds there (find_sites records
    it; a scan per site made planning N random nodes cost N^2), else found by a scan."""
    if 0 <= known < len(seq) and seq[known] is item:
        return known
    return next(k for k, x in enumerate(seq) if x is item)


def resolve(model: onnx.ModelProto, path: tuple, location: str) -> Site:
    """The site at `path` in `model` (a copy of the model the path was taken in)."""
    graph, scopes = model.graph, []
    for k, attr_name, g in path[:-1]:
        owner = graph.node[k]
        attr = next(a for a in owner.attribute if a.name == attr_name)
        body = attr.g if attr.type == onnx.AttributeProto.GRAPH else attr.graphs[g]
        scopes.append(Scope(owner, attr_name, body, graph, k))
        graph = body
    return Site(graph.node[path[-1]], graph, location, scopes, path[-1])


# -- describing the chosen sites ---------------------------------------------------------

def _describe(model: onnx.ModelProto, chosen: list[tuple[Site, str]],
              prepared: Prepared, facts: Mapping,
              forms: dict[str, str]) -> list[SitePlan]:
    lookup = constant_lookup(model)

    def elem_type(name: str) -> int | None:
        f = facts.get(name)
        return f.elem_type if f else None

    def shape_of(name: str) -> Shape:
        f = facts.get(name)
        return f.shape if f else None

    plans = []
    for site, origin in chosen:
        spec = spec_for(site.node, forms.get(site.op_type))
        _check_inputs(site, spec)
        spec.check_attributes(site.node)
        dtypes = spec.dtypes(site.node, elem_type)
        shape = spec.noise_shape(site.node, shape_of)
        if shape is None and site.node.output:
            shape = spec.noise_shape_from_output(site.node, shape_of)
        lead = [_iteration_dim(s, prepared, lookup, shape_of) for s in site.scopes
                if s.owner.op_type in ("Loop", "Scan")]
        attrs = {**attrs_of(site.node), **spec.shape_facts(site.node, shape_of)}
        plans.append(SitePlan(site, spec, attrs, dtypes, shape, lead, origin,
                              path=site_path(site)))
    _tie_with_ort(model, plans, set(input_dim_names(model)))
    return plans


def _check_inputs(site: Site, spec: RandomOp) -> None:
    has_input = bool(site.node.input and site.node.input[0])
    if spec.reads_input and not has_input:
        raise ModelError(f"{site.describe()}: the op needs an input")


def _tie_with_ort(model: onnx.ModelProto, plans: list[SitePlan], anchors: set[str]) -> None:
    """Where onnx inference left dims unproven, onnxruntime's symbolic inference often ties
    them."""
    if not any(tied_score(p.shape, anchors) < len(p.shape or [None]) for p in plans):
        return
    sym = ort_symbolic_facts(model)
    if not sym:
        return

    def sym_shape(name: str) -> Shape:
        f = sym.get(name)
        return f.shape if f else None

    for p in plans:
        cand = p.spec.noise_shape(p.site.node, sym_shape)
        if tied_score(cand, anchors) > tied_score(p.shape, anchors):
            p.onnx_shape, p.shape = p.shape, cand


def _iteration_dim(scope: Scope, prepared: Prepared, lookup, shape_of):
    name = prepared.trip_names[scope_key(scope)]
    if name in prepared.fixed_trips:
        return prepared.fixed_trips[name]
    node = scope.owner
    if node.op_type == "Loop":
        trips = as_int(lookup(node.input[0])) if node.input and node.input[0] else None
        return trips if trips is not None and trips >= 0 else name
    # Scan: the length of the first scan input along its scan axis
    attrs = attrs_of(node)
    n_scan = int(attrs.get("num_scan_inputs", 1))
    scan_inputs = list(node.input[len(node.input) - n_scan:])
    axes = list(attrs.get("scan_input_axes", [])) or [0]
    shape = shape_of(scan_inputs[0]) if scan_inputs else None
    if shape:
        axis = axes[0] if axes[0] >= 0 else len(shape) + axes[0]
        if 0 <= axis < len(shape) and shape[axis] is not None:
            return shape[axis]
    return name


# -- noise dims: traced once, classified per set of bounds -------------------------------

def _trace_sources(model: onnx.ModelProto, plans: list[SitePlan], anchors: set[str],
                   flat: bool = False) -> None:
    """Where each draw's shape comes from (see graph.datadep); run once per plan.
    flat: the main graph is known to hold no subgraph (no walk to find one)."""
    for p in plans:
        node = p.site.node
        static = p.spec.static_shape(node)
        p.source = "" if static is not None or not node.input else node.input[0]
    if not any(_needs_trace(p, anchors) for p in plans) and (
            flat or not _holds_subgraph(model.graph)):
        return  # every answer is known without it (see _needs_trace)
    wanted = {p.source for p in plans if p.source}
    wanted |= {s.owner.input[0] for p in plans for s in p.site.scopes
               if s.owner.op_type == "Loop" and s.owner.input}
    prov = trace(model, wanted)
    strict = None
    for p in plans:
        p.trip_origins = _trip_origins(p.site, prov)
        if p.shape is None:
            continue
        p.shape_origin = prov.shape_origin(p.source) if p.source else None
        if p.shape_origin and p.onnx_shape is not None:
            strict = strict if strict is not None else ort_symbolic_facts(model, False)
            p.shape = _strictly_tied(p, strict, anchors)
        p.per_iteration = bool(p.shape_origin) and any(t in p.shape_origin
                                                       for t in prov.per_iteration)


def _needs_trace(p: SitePlan, anchors: set[str]) -> bool:
    """Whether the trace can change what `p` is classified as. It cannot for a draw outside
    loops whose shape onnx inference proved from constants and the inputs' dims: every axis
    is then a constant or an input dim whatever the shape's origin, and with no subgraph in
    the main graph no origin varies per iteration. A 100k-node graph then skips a walk of
    the draws' ancestors (issue 10)."""
    if p.site.scopes:
        return True
    if p.shape is None:
        return False  # nothing is classified (and no loop: no trip origin)
    return p.onnx_shape is not None or not all(
        isinstance(d, int) or (isinstance(d, str) and d in anchors) for d in p.shape)


def _holds_subgraph(graph: onnx.GraphProto) -> bool:
    # the nodes with attributes are picked out in C (most nodes of a large graph have none)
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for attrs in filter(None, map(_ATTRIBUTES, graph.node)) for a in attrs)


def _classify_all(plans: list[SitePlan], names: NameAllocator, anchors: set[str],
                  bounds: dict[str, int]) -> NameAllocator:
    """Name each plan's noise and say what each of its axes is (see noisedims)."""
    known: set[str] = set()
    for p in plans:
        p.noise = names.fresh("noise_" + p.site.output)
        if p.shape is None:
            continue
        p.dims = classify(p.noise, p.lead, p.shape, p.site.op_type, p.source or None,
                          p.shape_origin, p.per_iteration, anchors, bounds, p.trip_origins)
        for d in p.dims:
            if d.kind == DERIVED:
                d.name = names.fresh(f"{p.noise}_d{d.axis}")
            elif d.kind in (DATA, BOUNDED):
                known.add(d.name)
    check_bound_names(bounds, known)
    return names


def _trip_origins(site: Site, prov: Provenance) -> list[str | None]:
    """Per enclosing Loop/Scan: why its iteration count is not a function of the input dims
    (a Loop trip count computed from an input's values), else None. Scans and Loops without a
    trip count (bounded by their condition only) keep a named iteration axis."""
    out = []
    for s in site.scopes:
        if s.owner.op_type not in ("Loop", "Scan"):
            continue
        trip = s.owner.input[0] if s.owner.op_type == "Loop" and s.owner.input else ""
        value = prov.value.get(trip) if trip else None
        out.append(f"the iterations of {node_label(s.owner)} come from {value}" if value
                   else None)
    return out


def _strictly_tied(p: SitePlan, strict: dict[str, TensorFacts], anchors: set[str]) -> Shape:
    """Per axis: what onnx inference proved, else what onnxruntime's inference propagates
    without merging dims (`strict`), else the onnx dim (then traced as data-dependent)."""
    def shape_of(name: str) -> Shape:
        f = strict.get(name)
        return f.shape if f else None

    cand = p.spec.noise_shape(p.site.node, shape_of) if strict else None
    base = p.onnx_shape
    if cand is None or len(cand) != len(base):
        return base
    return [d if tied_score([d], anchors) or tied_score([c], anchors) == 0 else c
            for d, c in zip(base, cand, strict=True)]
