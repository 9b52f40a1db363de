"""The passes: every selected random node becomes a noise input or a seeded constant.

A site in the main graph reads its noise (or frozen draw) directly. A site inside If / Loop /
Scan bodies reads a main-graph tensor through outer scope; every Loop or Scan on the way adds
a leading iteration axis to it, and each iteration reads its own slice (Gather by the Loop's
iteration number, or an extra scan input). Model-local functions holding random nodes are
inlined first, and only those.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper

from onnxfix.errors import ModelError, UsageError
from onnxfix.graph.builder import NodeBuilder
from onnxfix.graph.find import (
    Scope,
    Site,
    as_int,
    constant_lookup,
    default_opset,
    find_sites,
)
from onnxfix.graph.functions import inline_random_functions, take_origin
from onnxfix.graph.graph_edit import GraphEdits, names_used
from onnxfix.graph.naming import NameAllocator, sanitize
from onnxfix.graph.noisedims import (
    BOUNDED,
    DATA,
    DERIVED,
    NoiseDim,
    check_bound_names,
    classify,
    slice_to_need,
    unbounded_error,
)
from onnxfix.graph.shapes import (
    Shape,
    TensorFacts,
    collect_facts,
    fix_dims,
    infer_facts,
    input_dim_names,
    name_unnamed_input_dims,
    ort_symbolic_facts,
    tied_score,
)
from onnxfix.ops import (
    Dtypes,
    RandomOp,
    attrs_of,
    distribution_of,
    dtype_name,
    np_dtype,
    spec_for,
)
from onnxfix.passes.tidy import drop_unused_opset_imports
from onnxfix.report import NodeRecord, Replacement

MODES = ("input-noise", "constant", "deterministic")
NOISE_DTYPES = {"same": None, "float32": onnx.TensorProto.FLOAT,
                "float16": onnx.TensorProto.FLOAT16}
DEFAULT_MAX_DRAW_BYTES = 256 * 2**20
NOISE_METADATA_KEY = "onnxfix.noise_inputs"


@dataclass
class Plan:
    """What is known about one site before it is rewritten."""

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


def rewrite_model(model: onnx.ModelProto, mode: str, *, seed: int = 0,
                  dims: dict[str, int] | None = None,
                  max_draw_bytes: int = DEFAULT_MAX_DRAW_BYTES,
                  select: Callable[[Site], bool] | None = None,
                  noise_dtype: str = "same",
                  noise_bounds: dict[str, int] | None = None,
                  allow_unbounded: bool = False,
                  ) -> tuple[onnx.ModelProto, list[NodeRecord]]:
    """Return a rewritten copy of `model` and one record per random node.

    noise_dtype: "same" (noise inputs in the dtype the draw needs), "float32" or "float16"
    (inputs in that dtype, cast in-graph; for targets that cannot feed other dtypes).
    noise_bounds: upper bounds of data-dependent noise dims, by name (`<noise input>:<axis>`).
    allow_unbounded: declare unbounded data-dependent dims symbolically instead of refusing
    (for `inspect`: such an output cannot be fed from the inputs alone).
    """
    if mode not in MODES:
        raise UsageError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    if noise_dtype not in NOISE_DTYPES:
        raise UsageError(f"--noise-dtype {noise_dtype!r}: choose one of "
                         f"{', '.join(NOISE_DTYPES)}")
    if seed < 0:
        raise UsageError(f"--seed {seed}: the seed must be a non-negative integer")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not find_sites(out):
        fix_dims(out, dims or {})
        return out, []
    out = inline_random_functions(out)
    name_unnamed_input_dims(out)
    trip_names = _iteration_dim_names(out)
    fixed_trips = fix_dims(out, dims or {}, extra=set(trip_names.values()))
    sites = find_sites(out)
    if select is not None and hasattr(select, "check_matches"):
        select.check_matches(sites)
    edits = GraphEdits()
    kept, chosen = _sort_sites(sites, select, edits)
    if not chosen:
        edits.apply()
        drop_unused_opset_imports(model, out)
        return out, list(kept.values())
    plans = _plan(out, chosen, trip_names, fixed_trips)
    names = NameAllocator(out)
    _plan_noise_dims(out, plans, names, trip_names, noise_bounds or {})
    if mode != "deterministic" and not allow_unbounded:
        for p in plans:
            if p.unbounded:
                raise unbounded_error(p.site.describe(), p.noise, p.unbounded, mode)
    if mode == "constant":
        _check_constant_budget(plans, max_draw_bytes, input_dim_names(out))
    opset = default_opset(out)
    lookup = constant_lookup(out)
    noise_meta = []
    records: list[NodeRecord] = []
    for plan in plans:
        site = plan.site
        prefix = "onnxfix_" + sanitize(site.node.name or site.output)
        b = NodeBuilder(names, opset, prefix, constant_of=lookup)
        if mode == "deterministic":
            how = plan.spec.deterministic(b, site.node, plan.attrs, plan.dtypes)
            local = plan.declared[len(plan.lead):] if plan.declared is not None else None
            repl = Replacement("deterministic", site.output, plan.spec.draw_shape(local),
                               dtype_name(plan.dtypes.draw), how,
                               dims=[d.to_dict() for d in plan.dims])
            edits.replace(site, b.nodes)
        elif mode == "constant" and plan.freezes_draw:
            repl = _freeze_draw(out, plan, seed)
            edits.replace(site, [])
        else:
            if mode == "input-noise":
                repl = _add_noise_input(out, plan, names, NOISE_DTYPES[noise_dtype],
                                        edits)
                noise_meta.append({"name": repl.name, "family": plan.spec.family,
                                   "dtype": repl.dtype, "shape": repl.shape,
                                   "draw": site.output, "op_type": site.op_type,
                                   "dims": repl.dims})
            else:
                repl = _add_noise_initializer(out, plan, names, seed)
            inner = _route(plan, repl.cast_name or repl.name, names, edits, opset)
            if plan.source:
                inner = slice_to_need(b, inner, plan.dims, len(plan.lead), plan.source,
                                      len(plan.shape), site.op_type)
            plan.spec.transform(b, inner, site.node, plan.attrs, plan.dtypes)
            edits.replace(site, b.nodes)
        where = site.location + (f" (inlined from {plan.origin})" if plan.origin else "")
        records.append(NodeRecord(
            op_type=site.op_type, node=site.node.name, output=site.output, graph=where,
            distribution=plan.spec.distribution(plan.attrs), replacement=repl,
        ))
    edits.apply()
    # one record per random node, in graph order
    done = iter(records)
    records = [kept[k] if k in kept else next(done) for k in range(len(sites))]
    if noise_meta:
        _record_noise_metadata(out, noise_meta)
    drop_unused_opset_imports(model, out)
    validate_output(model, out)
    return out, records


def _has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def validate_output(original: onnx.ModelProto, new: onnx.ModelProto) -> None:
    """The output must pass every check the input passed (full_check where the input does)."""
    from onnxfix.io.wire import checkable

    if _has_external(original):  # the checker would look for the weights file in the cwd
        original, new = checkable(original), checkable(new)
    strict = None
    for level in (True, False):
        try:
            onnx.checker.check_model(original, full_check=level)
            strict = level
            break
        except Exception:  # noqa: BLE001 - e.g. a wrong declared shape in the input model
            continue
    if strict is None:
        return  # the input passes no check either (API callers may hand in any proto)
    try:
        onnx.checker.check_model(new, full_check=strict)
    except Exception as e:  # noqa: BLE001
        first = " ".join(str(e).split())[:300]
        raise ModelError(f"internal error: the rewritten model fails the onnx checker "
                         f"({'full' if strict else 'basic'} check): {first}") from None


def _sort_sites(sites: list[Site], select, edits: GraphEdits):
    """Split the sites: kept as they are, removed as dead, or chosen for the rewrite."""
    aside: dict[int, NodeRecord] = {}
    chosen = []
    used: dict[int, set[str]] = {}  # per graph, computed once
    for k, site in enumerate(sites):
        origin = take_origin(site.node)
        if site.in_function:
            aside[k] = _kept(site, "in a model-local function that is never called")
        elif select is not None and not select(site):
            aside[k] = _kept(site, "not selected by --only/--exclude")
        elif _is_dead(site, used):
            edits.replace(site, [])  # a draw nothing reads needs no noise: the node goes
            aside[k] = _kept(site, "its draw is read by nothing, so the node was removed")
            aside[k].status = "removed"
        else:
            chosen.append((site, origin))
    return aside, chosen


def _is_dead(site: Site, used: dict[int, set[str]]) -> bool:
    """Nothing in the site's graph reads any of its outputs, and none is a graph output."""
    key = id(site.container)
    if key not in used:
        used[key] = names_used(site.container)
    return not {o for o in site.node.output if o} & used[key]


def _kept(site: Site, why: str) -> NodeRecord:
    spec = spec_for(site.node)
    return NodeRecord(op_type=site.op_type, node=site.node.name, output=site.output,
                      graph=site.location, distribution=distribution_of(spec, attrs_of(site.node)),
                      replacement=None, status="kept", note=why)


# -- planning ----------------------------------------------------------------------------

def _iteration_dim_names(model: onnx.ModelProto) -> dict[str, str]:
    """A readable, stable dim name for the iteration axis of each Loop/Scan holding a draw.

    A Loop whose trip count is one of the graph inputs' dims (`Shape(timesteps)[0]`) takes
    that dim's name, so its noise is tied to the input.
    """
    names: dict[str, str] = {}
    used: set[str] = set()
    inputs = set(input_dim_names(model))
    declared = None
    for site in find_sites(model):
        for scope in site.scopes:
            if scope.owner.op_type not in ("Loop", "Scan"):
                continue
            key = _scope_key(scope)
            if key in names:
                continue
            if scope.owner.op_type == "Loop" and scope.owner.input and scope.owner.input[0]:
                declared = declared if declared is not None else collect_facts(model)
                dim = trip_dim(scope.parent, scope.owner.input[0], declared, model)
                if isinstance(dim, str) and dim in inputs:
                    names[key] = dim
                    continue
            base = sanitize(scope.owner.name or scope.owner.op_type.lower()) + "_iterations"
            name, k = base, 1
            while name in used:
                k += 1
                name = f"{base}_{k}"
            used.add(name)
            names[key] = name
    return names


def trip_dim(graph, name: str, facts: dict[str, TensorFacts], model: onnx.ModelProto):
    """The input dim a trip count reads (`Gather(Shape(x), k)`, `Shape<start=k,end=k+1>(x)`,
    `Slice(Shape(x), k, k+1)`, through Cast/Squeeze/Reshape...), or None."""
    producers = {o: n for n in graph.node for o in n.output}
    lookup = constant_lookup(model)
    for _ in range(16):  # a short chain of single-value ops
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten"):
            name = node.input[0]
            continue
        shape_node, k = node, 0
        if node.op_type in ("Gather", "Slice") and len(node.input) > 1:
            k = as_int(lookup(node.input[1]))
            shape_node = producers.get(node.input[0])
        if shape_node is None or shape_node.op_type != "Shape" or k is None:
            return None
        start = int(attrs_of(shape_node).get("start", 0))
        shape = (facts.get(shape_node.input[0]) or TensorFacts(None, None)).shape
        if shape is None or start < 0 or not 0 <= start + k < len(shape):
            return None
        return shape[start + k]
    return None


def _scope_key(scope: Scope) -> str:
    return "\0".join(scope.owner.output) + "\0" + scope.attr


def _plan(model: onnx.ModelProto, chosen: list[tuple[Site, str]], trip_names: dict[str, str],
          fixed: dict[str, int]) -> list[Plan]:
    facts = infer_facts(model)
    anchors = set(input_dim_names(model))
    lookup = constant_lookup(model)
    plans = []

    def elem_type(name: str) -> int | None:
        f = facts.get(name)
        return f.elem_type if f else None

    def shape_of(name: str) -> Shape:
        f = facts.get(name)
        return f.shape if f else None

    for site, origin in chosen:
        spec = spec_for(site.node)
        if spec.reads_input and not (site.node.input and site.node.input[0]):
            raise ModelError(f"{site.describe()}: the op needs an input")
        spec.check_attributes(site.node)
        dtypes = spec.dtypes(site.node, elem_type)
        shape = spec.noise_shape(site.node, shape_of)
        if shape is None and site.node.output:
            shape = spec.noise_shape_from_output(site.node, shape_of)
        lead = [_iteration_dim(s, trip_names, fixed, lookup, shape_of) for s in site.scopes
                if s.owner.op_type in ("Loop", "Scan")]
        attrs = {**attrs_of(site.node), **spec.shape_facts(site.node, shape_of)}
        plans.append(Plan(site, spec, attrs, dtypes, shape, lead, origin))
    if any(tied_score(p.shape, anchors) < len(p.shape or [None]) for p in plans):
        # onnx inference left dims unproven: onnxruntime's symbolic inference often ties them.
        sym = ort_symbolic_facts(model)
        if sym:
            def sym_shape(name: str) -> Shape:
                f = sym.get(name)
                return f.shape if f else None

            for p in plans:
                cand = p.spec.noise_shape(p.site.node, sym_shape)
                if tied_score(cand, anchors) > tied_score(p.shape, anchors):
                    p.onnx_shape, p.shape = p.shape, cand
    return plans


def _plan_noise_dims(model: onnx.ModelProto, plans: list[Plan], names: NameAllocator,
                     trip_names: dict[str, str], bounds: dict[str, int]) -> None:
    """Name each plan's noise and say what each of its axes is (see noisedims)."""
    from onnxfix.graph.datadep import trace

    prov = trace(model)
    anchors = set(input_dim_names(model)) | set(trip_names.values())
    known: set[str] = set()
    strict = None
    for p in plans:
        p.noise = names.fresh("noise_" + p.site.output)
        node = p.site.node
        static = p.spec.static_shape(node)
        p.source = "" if static is not None or not node.input else node.input[0]
        if p.shape is None:
            continue
        origin = prov.shape_origin(p.source) if p.source else None
        if origin and p.onnx_shape is not None:
            strict = strict if strict is not None else ort_symbolic_facts(model, False)
            p.shape = _strictly_tied(p, strict, anchors)
        per_iteration = bool(origin) and any(t in origin for t in prov.per_iteration)
        p.dims = classify(p.noise, p.lead, p.shape, p.site.op_type, p.source or None, origin,
                          per_iteration, anchors, bounds, _trip_origins(p.site, prov))
        for d in p.dims:
            if d.kind == DERIVED:
                d.name = names.fresh(f"{p.noise}_d{d.axis}")
            elif d.kind in (DATA, BOUNDED):
                known.add(d.name)
    check_bound_names(bounds, known)


def _trip_origins(site: Site, prov) -> list[str | None]:
    """Per enclosing Loop/Scan: why its iteration count is not a function of the input dims
    (a Loop trip count computed from an input's values), else None. Scans and Loops without a
    trip count (bounded by their condition only) keep a named iteration axis."""
    from onnxfix.graph.datadep import _label

    out = []
    for s in site.scopes:
        if s.owner.op_type not in ("Loop", "Scan"):
            continue
        trip = s.owner.input[0] if s.owner.op_type == "Loop" and s.owner.input else ""
        value = prov.value.get(trip) if trip else None
        out.append(f"the iterations of {_label(s.owner)} come from {value}" if value else None)
    return out


def _strictly_tied(p: Plan, strict: dict[str, TensorFacts], anchors: set[str]) -> Shape:
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


def _iteration_dim(scope: Scope, trip_names: dict[str, str], fixed: dict[str, int], lookup,
                   shape_of):
    name = trip_names[_scope_key(scope)]
    if name in fixed:
        return fixed[name]
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


def _check_constant_budget(plans: list[Plan], max_bytes: int, input_dims: list[str]) -> None:
    total = 0
    for p in plans:
        shape = p.declared
        if shape is None or not all(isinstance(d, int) for d in shape):
            symbolic = [d for d in (shape or []) if isinstance(d, str)]
            derived = [d.name for d in p.dims if d.kind == DERIVED]
            if derived:
                raise ModelError(
                    f"{p.site.describe()}: constant mode needs a concrete shape, but its shape "
                    f"{_shape_text(shape)} has {'a dim' if len(derived) == 1 else 'dims'} that "
                    f"shape inference cannot compute from the input dims; fix the model's "
                    f"input dims with --dim NAME=N (its dims: "
                    f"{', '.join(input_dims) or 'none'})")
            if shape is not None and symbolic and None not in shape:
                raise ModelError(
                    f"{p.site.describe()}: constant mode needs a concrete shape, but "
                    f"{_plural_dims(symbolic)} symbolic; fix "
                    f"{'it' if len(symbolic) == 1 else 'them'} with "
                    + " ".join(f"--dim {d}=N" for d in symbolic)
                )
            raise ModelError(
                f"{p.site.describe()}: constant mode needs a concrete shape, but its shape "
                f"{_shape_text(shape)} cannot be determined; fix the model's symbolic dims "
                f"with --dim NAME=N"
            )
        dtype = p.dtypes.draw if p.freezes_draw else p.dtypes.noise
        itemsize = np_dtype(dtype).itemsize
        if 0 in shape and math.prod(d for d in shape if d) * itemsize > max_bytes:
            # empty, yet numpy refuses to make an array with such dims
            raise ModelError(f"{p.site.describe()}: absurd shape {_shape_text(shape)} for a "
                             f"constant draw")
        total += math.prod(shape) * itemsize
        if total > max_bytes:
            raise ModelError(
                f"{p.site.describe()}: constant draws would take {total:,} bytes, over the "
                f"cap of {max_bytes:,}; raise it with --max-draw-mb if this is intended"
            )


def _plural_dims(names: list[str]) -> str:
    if len(names) == 1:
        return f"dim {names[0]} is"
    return "dims " + ", ".join(names) + " are"


def _shape_text(shape: Shape) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


# -- replacements ------------------------------------------------------------------------

def _add_noise_input(model: onnx.ModelProto, plan: Plan, names: NameAllocator,
                     fed_type: int | None, edits: GraphEdits) -> Replacement:
    site = plan.site
    if plan.shape is None:
        raise ModelError(f"{site.describe()}: shape inference cannot tell even the rank of "
                         f"this draw (an op it does not know feeds it), so no noise input can "
                         f"be declared; try --mode deterministic, or give the model's "
                         f"intermediate tensors value_info shapes")
    noise = plan.noise
    dims = plan.declared
    fed_type = fed_type or plan.dtypes.noise
    if fed_type != plan.dtypes.noise:
        problem = plan.spec.noise_dtype_problem(site.node, fed_type)
        if problem:
            raise UsageError(problem)
    vi = helper.make_tensor_value_info(noise, fed_type, dims)
    dist = plan.spec.distribution(plan.attrs)
    per_iteration = (f" Leading axes: one per enclosing loop ({len(plan.lead)}); iteration i "
                     f"reads slice i." if plan.lead else "")
    cast = ""
    if fed_type != plan.dtypes.noise:
        cast = f" Fed as {dtype_name(fed_type)}, cast in-graph to {dtype_name(plan.dtypes.noise)}."
    vi.doc_string = (
        f"onnxfix noise input ({dist['family']}): feed {dist['noise']} noise, "
        f"{dtype_name(fed_type)}. In-graph: {site.output} = "
        f"{plan.spec.transform_text(plan.attrs)}. Replaces {site.describe()}.{per_iteration}{cast}"
    )
    model.graph.input.append(vi)
    repl = Replacement("input", noise, dims, dtype_name(fed_type),
                       dims=[d.to_dict() for d in plan.dims])
    if fed_type != plan.dtypes.noise:
        repl.cast_to = dtype_name(plan.dtypes.noise)
        repl.cast_name = names.fresh(f"{noise}_cast")
        edits.prepend(model.graph, helper.make_node(
            "Cast", [noise], [repl.cast_name], to=plan.dtypes.noise,
            name=names.fresh(f"onnxfix_{noise}_cast")), 0)
    return repl


def _draw_rng(seed: int, site: Site) -> np.random.Generator:
    key = f"{site.location}\0{site.op_type}\0{site.output}".encode()
    digest = hashlib.sha256(key).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *words])))


def _freeze_draw(model: onnx.ModelProto, plan: Plan, seed: int) -> Replacement:
    """Main-graph continuous draw: the initializer takes the node's output name."""
    site = plan.site
    shape = [int(d) for d in plan.shape]
    value = plan.spec.sample_draw(_draw_rng(seed, site), shape, plan.attrs, plan.dtypes.draw)
    model.graph.initializer.append(numpy_helper.from_array(value, name=site.output))
    if model.ir_version < 4:  # before IR 4, every initializer had to be a graph input too
        model.graph.input.append(helper.make_tensor_value_info(site.output, plan.dtypes.draw,
                                                               shape))
    return Replacement("initializer", site.output, shape, dtype_name(plan.dtypes.draw))


def _add_noise_initializer(model: onnx.ModelProto, plan: Plan, names: NameAllocator,
                           seed: int) -> Replacement:
    """Seeded standard noise, frozen; the transform stays in the graph."""
    site = plan.site
    name = plan.noise
    shape = [int(d) for d in plan.declared]
    value = plan.spec.sample(_draw_rng(seed, site), shape, plan.dtypes.noise)
    model.graph.initializer.append(numpy_helper.from_array(value, name=name))
    if model.ir_version < 4:
        model.graph.input.append(helper.make_tensor_value_info(name, plan.dtypes.noise, shape))
    return Replacement("initializer", name, shape, dtype_name(plan.dtypes.noise),
                       dims=[d.to_dict() for d in plan.dims])


def _route(plan: Plan, top: str, names: NameAllocator, edits: GraphEdits, opset: int) -> str:
    """Carry the main-graph noise tensor down to the site, slicing one axis per loop level."""
    current = top
    shape = plan.full_shape
    for depth, scope in enumerate(plan.site.scopes):
        op = scope.owner.op_type
        if op == "If":
            continue
        rest = None if shape is None else shape[1:]
        if op == "Loop":
            iteration = scope.body.input[0].name if scope.body.input else ""
            if not iteration:
                raise ModelError(f"Loop '{scope.owner.name}': body has no iteration input")
            sliced = names.fresh(f"{top}_it{depth}")
            node = helper.make_node("Gather", [current, iteration], [sliced], axis=0,
                                    name=names.fresh(f"onnxfix_{sliced}_gather"))
            edits.prepend(scope.body, node, depth + 1)
        elif op == "Scan":
            if opset < 9:
                raise ModelError(f"Scan '{scope.owner.name}': random nodes inside opset-8 Scan "
                                 f"bodies are not supported")
            sliced = names.fresh(f"{top}_it{depth}")
            _add_scan_input(scope, current, sliced, plan.dtypes.noise, rest)
        else:
            raise ModelError(f"{plan.site.describe()}: random nodes inside a {op} body are not "
                             f"supported (only If, Loop and Scan)")
        current, shape = sliced, rest
    return current


def _add_scan_input(scope: Scope, outer: str, inner: str, elem_type: int, shape) -> None:
    node = scope.owner
    node.input.append(outer)
    for a in node.attribute:
        if a.name == "num_scan_inputs":
            a.i += 1
        elif a.name in ("scan_input_axes", "scan_input_directions"):
            a.ints.append(0)
    dims = [d if isinstance(d, int) else None for d in shape] if shape is not None else None
    scope.body.input.append(helper.make_tensor_value_info(inner, elem_type, dims))


def _record_noise_metadata(model: onnx.ModelProto, entries: list[dict]) -> None:
    existing = []
    props = {}
    for prop in model.metadata_props:
        if prop.key == NOISE_METADATA_KEY:
            try:
                existing = json.loads(prop.value)
            except ValueError:
                existing = []
        else:
            props[prop.key] = prop.value
    helper.set_model_props(model, {**props, NOISE_METADATA_KEY: json.dumps(existing + entries)})


__all__ = ["DEFAULT_MAX_DRAW_BYTES", "MODES", "NOISE_METADATA_KEY", "Plan", "TensorFacts",
           "rewrite_model"]
