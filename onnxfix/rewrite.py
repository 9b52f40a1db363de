"""The passes: every selected random node becomes a noise input or a seeded constant."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .builder import NodeBuilder
from .errors import ModelError, UsageError
from .find import Site, find_sites
from .naming import NameAllocator, sanitize
from .ops import AffineOp, attrs_of, dtype_name, np_dtype, spec_for
from .report import NodeRecord, Replacement
from .shapes import (
    Shape,
    TensorFacts,
    fix_dims,
    infer_facts,
    input_dim_names,
    ort_symbolic_facts,
    tied_score,
)

MODES = ("input-noise", "constant")
DEFAULT_MAX_DRAW_BYTES = 256 * 2**20
NOISE_METADATA_KEY = "onnxfix.noise_inputs"


@dataclass
class Plan:
    """What is known about one site before it is rewritten."""

    site: Site
    spec: AffineOp
    attrs: dict
    dtype: int
    shape: Shape


def rewrite_model(model: onnx.ModelProto, mode: str, *, seed: int = 0,
                  dims: dict[str, int] | None = None,
                  max_draw_bytes: int = DEFAULT_MAX_DRAW_BYTES,
                  ) -> tuple[onnx.ModelProto, list[NodeRecord]]:
    """Return a rewritten copy of `model` and one record per rewritten node."""
    if mode not in MODES:
        raise UsageError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    if seed < 0:
        raise UsageError(f"--seed {seed}: the seed must be a non-negative integer")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    fix_dims(out, dims or {})
    sites = find_sites(out)
    if not sites:
        return out, []
    nested = [s for s in sites if not s.in_main_graph]
    if nested:
        raise ModelError(f"random node inside a subgraph or function is not supported yet: "
                         f"{nested[0].describe()}")
    plans = _plan(out, sites)
    names = NameAllocator(out)
    opset = _default_opset(out)
    records: list[NodeRecord] = []
    replaced: dict[str, list[onnx.NodeProto]] = {}
    if mode == "constant":
        _check_constant_budget(plans, max_draw_bytes)
    anchors = set(input_dim_names(out))
    noise_meta = []
    for plan in plans:
        site = plan.site
        prefix = "onnxfix_" + sanitize(site.node.name or site.output)
        b = NodeBuilder(names, opset, prefix)
        if mode == "input-noise":
            repl = _to_noise_input(out, plan, b, names, anchors)
            noise_meta.append({"name": repl.name, "family": plan.spec.family,
                               "dtype": repl.dtype, "shape": repl.shape,
                               "draw": site.output})
        else:
            repl = _to_initializer(out, plan, seed)
        replaced[site.output] = b.nodes
        records.append(NodeRecord(
            op_type=site.op_type, node=site.node.name, output=site.output,
            graph=site.location, distribution=plan.spec.distribution(plan.attrs),
            replacement=repl,
        ))
    removed_inputs = _splice(out.graph, replaced)
    _remove_dead_producers(out, removed_inputs)
    if noise_meta:
        _record_noise_metadata(out, noise_meta)
    return out, records


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ModelError("the model imports no default-domain opset")


def _plan(model: onnx.ModelProto, sites: list[Site]) -> list[Plan]:
    facts = infer_facts(model)
    anchors = set(input_dim_names(model))
    plans = []
    for site in sites:
        spec = spec_for(site.node)
        like = site.node.input[0] if spec.like_input and site.node.input else None
        if spec.like_input and not like:
            raise ModelError(f"{site.describe()}: the op needs an input")
        in_facts = facts.get(like) if like else None
        dtype = spec.dtype(site.node, in_facts.elem_type if in_facts else None)
        shape = spec.static_shape(site.node)
        if shape is None:
            shape = _best_shape(facts, [like, site.output], anchors)
        plans.append(Plan(site, spec, attrs_of(site.node), dtype, shape))
    if any(tied_score(p.shape, anchors) < len(p.shape or [None]) for p in plans):
        # onnx inference left dims unproven: onnxruntime's symbolic inference often ties them.
        sym = ort_symbolic_facts(model)
        for p in plans:
            if p.spec.like_input:
                cand = _best_shape(sym, [p.site.node.input[0], p.site.output], anchors)
                if tied_score(cand, anchors) > tied_score(p.shape, anchors):
                    p.shape = cand
    return plans


def _best_shape(facts: dict[str, TensorFacts], names: list[str | None],
                anchors: set[str]) -> Shape:
    best: Shape = None
    for n in names:
        f = facts.get(n) if n else None
        if f is not None and tied_score(f.shape, anchors) > tied_score(best, anchors):
            best = f.shape
    return best


def _to_noise_input(model: onnx.ModelProto, plan: Plan, b: NodeBuilder,
                    names: NameAllocator, anchors: set[str]) -> Replacement:
    site = plan.site
    noise = names.fresh("noise_" + site.output)
    dims: list | None = None
    if plan.shape is not None:
        dims = []
        for i, d in enumerate(plan.shape):
            if isinstance(d, int) or (isinstance(d, str) and d in anchors):
                dims.append(d)
            else:
                dims.append(names.fresh(f"{noise}_d{i}"))
    vi = helper.make_tensor_value_info(noise, plan.dtype, dims)
    dist = plan.spec.distribution(plan.attrs)
    vi.doc_string = (
        f"onnxfix noise input ({dist['family']}): feed {dist['noise']} noise, "
        f"{dtype_name(plan.dtype)}. In-graph: {site.output} = "
        f"{_transform_text(plan.spec, plan.attrs)}. Replaces {site.describe()}."
    )
    model.graph.input.append(vi)
    plan.spec.transform(b, noise, site.output, plan.attrs, plan.dtype)
    return Replacement("input", noise, dims, dtype_name(plan.dtype))


def _transform_text(spec: AffineOp, attrs: dict) -> str:
    offset, factor = spec.offset_factor(attrs)
    return f"{offset:g} + {factor:g} * noise"


def _check_constant_budget(plans: list[Plan], max_bytes: int) -> None:
    total = 0
    for p in plans:
        shape = p.shape
        if shape is None or not all(isinstance(d, int) for d in shape):
            symbolic = [d for d in (shape or []) if isinstance(d, str)]
            if shape is not None and symbolic and None not in shape:
                raise ModelError(
                    f"{p.site.describe()}: constant mode needs a concrete shape, but dims "
                    f"{', '.join(symbolic)} are symbolic; fix them with "
                    + " ".join(f"--dim {d}=N" for d in symbolic)
                )
            raise ModelError(
                f"{p.site.describe()}: constant mode needs a concrete shape, but its shape "
                f"{_shape_text(shape)} cannot be determined; fix the model's symbolic dims "
                f"with --dim NAME=N"
            )
        count = 1
        for d in shape:
            count *= d
        total += count * np_dtype(p.dtype).itemsize
        if total > max_bytes:
            raise ModelError(
                f"{p.site.describe()}: constant draws would take {total:,} bytes, over the "
                f"cap of {max_bytes:,}; raise it with --max-draw-mb if this is intended"
            )


def _shape_text(shape: Shape) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _draw_rng(seed: int, site: Site) -> np.random.Generator:
    key = f"{site.location}\0{site.op_type}\0{site.output}".encode()
    digest = hashlib.sha256(key).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *words])))


def _to_initializer(model: onnx.ModelProto, plan: Plan, seed: int) -> Replacement:
    site = plan.site
    shape = [int(d) for d in plan.shape]
    value = plan.spec.sample(_draw_rng(seed, site), shape, plan.attrs, plan.dtype)
    graph = site.container
    graph.initializer.append(numpy_helper.from_array(value, name=site.output))
    if model.ir_version < 4:  # before IR 4, every initializer had to be a graph input too
        graph.input.append(helper.make_tensor_value_info(site.output, plan.dtype, shape))
    return Replacement("initializer", site.output, shape, dtype_name(plan.dtype))


def _splice(graph: onnx.GraphProto, replaced: dict[str, list[onnx.NodeProto]]) -> list[str]:
    """Put each random node's replacement where it stood; return the inputs it no longer reads."""
    freed: list[str] = []
    new_nodes = []
    for node in graph.node:
        if node.output and node.output[0] in replaced and _is_site(node):
            freed.extend(i for i in node.input if i)
            new_nodes.extend(replaced[node.output[0]])
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return freed


def _is_site(node: onnx.NodeProto) -> bool:
    from .ops import is_random_node

    return is_random_node(node)


def _reads(node: onnx.NodeProto) -> set[str]:
    """Names a node reads, including outer-scope names read inside its subgraphs."""
    from .find import _walk_graph

    names = {i for i in node.input if i}
    for attr in node.attribute:
        bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for body in bodies:
            for g, _ in _walk_graph(body, ""):
                for n in g.node:
                    names.update(i for i in n.input if i)
                names.update(o.name for o in g.output)
    return names


def _remove_dead_producers(model: onnx.ModelProto, freed: list[str]) -> None:
    """Drop the chains (Shape -> ConstantOfShape ...) that only fed the removed random nodes.

    Only what the rewrite made dead goes: nodes and initializers that were dead before stay.
    """
    graph = model.graph
    if not freed:
        return
    keep_alive = {o.name for o in graph.output} | {i.name for i in graph.input}
    readers: dict[str, int] = {}
    node_reads = []
    for node in graph.node:
        r = _reads(node)
        node_reads.append(r)
        for name in r:
            readers[name] = readers.get(name, 0) + 1
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output if o}
    initializers = {t.name for t in graph.initializer}
    dead_nodes: set[int] = set()
    dead_names: set[str] = set()
    pending = list(dict.fromkeys(freed))
    while pending:
        name = pending.pop()
        if readers.get(name, 0) > 0 or name in keep_alive or name in dead_names:
            continue
        k = producer.get(name)
        if k is None:
            if name in initializers:
                dead_names.add(name)
            continue
        if k in dead_nodes:
            continue
        outs = [o for o in graph.node[k].output if o]
        if any(readers.get(o, 0) > 0 or o in keep_alive for o in outs):
            continue
        dead_nodes.add(k)
        dead_names.update(outs)
        for r in node_reads[k]:
            readers[r] -= 1
            pending.append(r)
    if not dead_nodes and not dead_names:
        return
    keep = [n for k, n in enumerate(graph.node) if k not in dead_nodes]
    del graph.node[:]
    graph.node.extend(keep)
    for field in (graph.initializer, graph.value_info):
        kept = [x for x in field if x.name not in dead_names]
        if len(kept) != len(field):
            del field[:]
            field.extend(kept)


def _record_noise_metadata(model: onnx.ModelProto, entries: list[dict]) -> None:
    existing = []
    for prop in list(model.metadata_props):
        if prop.key == NOISE_METADATA_KEY:
            try:
                existing = json.loads(prop.value)
            except ValueError:
                existing = []
            model.metadata_props.remove(prop)
    helper.set_model_props(model, {
        **{p.key: p.value for p in model.metadata_props},
        NOISE_METADATA_KEY: json.dumps(existing + entries),
    })
