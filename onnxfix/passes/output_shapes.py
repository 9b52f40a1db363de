"""Re-declare graph outputs whose declared shape contradicts what shape inference proves.

Exporters and hand edits leave wrong declarations behind (a MIGraphX test model declares its
Multinomial output [?, 10] and produces [N, 12]). onnxruntime ignores them; compilers such as
IREE trust them and fail. Only a contradiction is corrected - a different rank, or two fixed
sizes that differ - never a declaration that is merely less precise than inference.

What inference proves for the outputs is what it proves on the rewritten model with the
outputs' declarations cleared. The plan's one inference already runs that way
(`infer_for_plan`); when every rewritten draw is proven to have the same facts in the rewritten
model as in the plan (`reusable_output_facts`: the replacement nodes are inferred alone), the
outputs' facts are the plan's and no second inference of the whole graph runs (issue 10).
Otherwise, or when a correction is due, the rewritten model is inferred as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import onnx
from onnx import helper

from onnxfix.graph.shapes import Facts, TensorFacts, collect_facts, inferred_or_none
from onnxfix.graph.sliced_inference import infer_in_slices
from onnxfix.report import ShapeCorrection

OutputFacts = dict[str, TensorFacts | None]  # main-graph output -> inferred facts

# Draw dtypes whose values shape inference never propagates (its data propagation tracks
# integer shape data): a draw of one of them feeds the rest of the graph its type and shape only.
_NO_DATA = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BFLOAT16, onnx.TensorProto.BOOL}


def redeclare_output_shapes(model: onnx.ModelProto,
                            known: OutputFacts | None = None) -> list[ShapeCorrection]:
    """Correct the main graph's contradicted output shapes in place; return what changed.

    known: the outputs' facts when already proven (see `reusable_output_facts`); a
    contradiction found in them is corrected from a fresh inference all the same, so the
    corrected dims are named exactly as that inference names them."""
    if known is not None and not _corrections(model, known):
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    _clear_output_shapes(probe)
    facts = collect_facts(inferred_or_none(probe) or probe)
    corrections = []
    for out, correction in _corrections(model, facts):
        _declare(out, correction.inferred)
        corrections.append(correction)
    return corrections


class PlanFacts(NamedTuple):
    """What the plan's inference gives (see `infer_for_plan`)."""

    facts: Facts
    outputs: OutputFacts | None
    # the model passes the inference of onnx's full check (strict, type-checked), proven
    # only when asked for (strict=True, see passes.local_check)
    input_full: bool = False


def infer_for_plan(model: onnx.ModelProto, *, strict: bool = False) -> PlanFacts:
    """The plan's shape inference, run with the main outputs' declared shapes cleared, and
    what it proves for those outputs (None when inference failed, or when the plan reads other
    facts, below).

    The facts are the ones inference gives with the declarations in place (what the plan
    always read) whenever every declaration only restates what inference proves: that is
    checked, and where a declaration adds to or contradicts inference, inference runs again
    with the declarations, as before; the output facts are then not offered for reuse (the
    draws' facts the reuse compares with would be the declarations', see
    `reusable_output_facts`).

    strict: first infer strictly, with type checks (the same facts when it passes, which
    `input_full` then reports for a model whose declarations restate inference); a failure
    falls back to the lenient inference. For models whose inference reads no propagated
    data (passes.local_check)."""
    saved = _clear_output_shapes(model)
    try:
        facts, passed = _strict_facts(model) if strict else (None, False)
        if not passed:
            inferred = inferred_or_none(model)
            facts = None if inferred is None else collect_facts(inferred)
    finally:
        for out, shape in saved:
            if shape is not None:
                out.type.tensor_type.shape.CopyFrom(shape)
    if facts is None:
        return PlanFacts(collect_facts(model), None)
    outputs = {o.name: facts.get(o.name) for o, _ in saved}
    if all(_restates(_declared_facts(o), outputs[o.name]) for o, _ in saved):
        return PlanFacts(facts, outputs, passed)
    return PlanFacts(collect_facts(inferred_or_none(model) or model), None)


def _strict_facts(model: onnx.ModelProto) -> tuple[Mapping | None, bool]:
    """The strict inference's facts (a large graph inferred in slices where that gives the
    whole graph's: graph.sliced_inference), and whether it passed."""
    try:
        facts = infer_in_slices(model)
        if facts is None:
            facts = collect_facts(onnx.shape_inference.infer_shapes(
                model, check_type=True, strict_mode=True, data_prop=True))
        return facts, True
    except Exception:  # noqa: BLE001 - not proven; the lenient inference follows
        return None, False


def draw_facts(facts: Mapping, site_nodes) -> OutputFacts:
    """The plan's facts of every output of the rewritten random nodes."""
    return {o: facts.get(o) for node in site_nodes for o in node.output if o}


def reusable_output_facts(outputs: OutputFacts | None, draws: OutputFacts, model: onnx.ModelProto,
                          emitted) -> OutputFacts | None:
    """The plan's output facts when they hold for the rewritten `model`, else None.

    They hold when every replacement sits in the main graph, reads nothing the rest of the
    graph computes (only graph inputs, initializers and its own nodes), and, inferred alone,
    gives each draw exactly the facts the plan had for it (a dtype whose values inference does
    not propagate, no generated dim name): everything downstream then infers as it did."""
    if outputs is None or not emitted.sites:
        return None
    for draw in draws.values():
        if draw is None or draw.elem_type not in _NO_DATA or draw.shape is None or any(
                isinstance(d, str) and d.startswith("unk__") for d in draw.shape):
            return None
    alone = replacements_alone(model, emitted, list(draws))
    if alone is None:
        return None
    if emitted.alone_proven and all(None not in draw.shape for draw in draws.values()):
        # the local check's strict inference of `alone` (no data propagation) gave each draw
        # the plan's facts, every dim known: data propagation only fills unknown dims, so the
        # inference below would give the same (a second inference of thousands of nodes)
        return outputs
    inferred = inferred_or_none(alone)
    if inferred is None:
        return None
    facts = collect_facts(inferred)
    return outputs if all(facts.get(name) == fact for name, fact in draws.items()) else None


def replacements_alone(model: onnx.ModelProto, emitted, draws: list[str]
                       ) -> onnx.ModelProto | None:
    """A model of `emitted`'s replacement nodes only, or None where they are not
    self-contained. `model`: the rewritten model spliced from `emitted`. Built once per emit
    (`Emitted.alone`): the validate pass (local_check) and the output re-declaration both
    ask for it, and it goes when the emit does."""
    if not emitted.alone:
        emitted.alone.append(_alone(model, emitted.sites, draws))
    return emitted.alone[0]


def _alone(model: onnx.ModelProto, sites, draws: list[str]) -> onnx.ModelProto | None:
    nodes, inputs = [], []
    for e in sites:
        if e.plan.site.scopes or e.scans or e.scan_states or any(
                depth or graph is not model.graph for graph, _, depth in e.prepends):
            return None
        nodes += [node for _, node, _ in e.prepends] + list(e.nodes)
        inputs += list(e.inputs)
        inputs += [helper.make_tensor_value_info(f.name, f.elem_type, list(f.array.shape))
                   for f in e.frozen]
    made = {vi.name for vi in inputs} | {o for n in nodes for o in n.output}
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in nodes for a in n.attribute):
        return None  # a body may read outer names
    wanted = {i for n in nodes for i in n.input if i and i not in made}
    if any(d not in made for d in draws):
        return None
    initializers = []
    if wanted:
        declared = [vi for vi in model.graph.input if vi.name in wanted]
        initializers = [t for t in model.graph.initializer if t.name in wanted]
        if {vi.name for vi in declared} | {t.name for t in initializers} != wanted:
            return None  # reads a computed value: its propagated data is not at hand
        inputs += declared
    graph = helper.make_graph(nodes, "replacements", inputs,
                              [onnx.ValueInfoProto(name=d) for d in draws], initializers)
    alone = helper.make_model(graph, opset_imports=list(model.opset_import))
    alone.ir_version = model.ir_version
    return alone


def _clear_output_shapes(model: onnx.ModelProto) -> list[tuple[onnx.ValueInfoProto,
                                                              onnx.TensorShapeProto | None]]:
    """Clear the declared shapes of the main outputs (not those that are inputs too), in
    place, so inference infers them afresh rather than merged with them; return what was
    cleared (output, its shape or None when it declared none)."""
    inputs = {i.name for i in model.graph.input}
    saved = []
    for out in model.graph.output:
        if out.name not in inputs and out.type.HasField("tensor_type"):
            shape = None
            if out.type.tensor_type.HasField("shape"):
                shape = onnx.TensorShapeProto()
                shape.CopyFrom(out.type.tensor_type.shape)
            saved.append((out, shape))
            out.type.tensor_type.ClearField("shape")
    return saved


def _declared_facts(value: onnx.ValueInfoProto) -> TensorFacts:
    return TensorFacts(value.type.tensor_type.elem_type or None, _dims(value))


def _restates(declared: TensorFacts, inferred: TensorFacts | None) -> bool:
    """Inference merged with this declaration gives what inference alone gives: the
    declaration names no dim inference does not, fixes no size it does not, and is of the
    same type (onnx keeps a declared dim unless inference fixes a size or had none)."""
    if inferred is None:
        return declared.elem_type is None and declared.shape is None
    if declared.elem_type is not None and declared.elem_type != inferred.elem_type:
        return False
    if declared.shape is None:
        return True
    if inferred.shape is None or len(declared.shape) != len(inferred.shape):
        return False
    for d, i in zip(declared.shape, inferred.shape, strict=True):
        if isinstance(d, str) and d.startswith("unk__"):
            return False  # inference names dims unk__N after the names already in use
        if d is not None and d != i and not (isinstance(i, int) and not isinstance(d, int)):
            return False
    return True


def _corrections(model: onnx.ModelProto, facts: Mapping
                 ) -> list[tuple[onnx.ValueInfoProto, ShapeCorrection]]:
    inputs = {i.name for i in model.graph.input}
    corrections = []
    for out in model.graph.output:
        declared = _dims(out)
        fact = facts.get(out.name)
        inferred = fact.shape if fact is not None else None
        if out.name in inputs or declared is None or inferred is None:
            continue
        if _contradicts(declared, inferred):
            corrections.append((out, ShapeCorrection(out.name, declared, list(inferred))))
    return corrections


def _dims(value: onnx.ValueInfoProto) -> list | None:
    t = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if t is None or not t.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None)
            for d in t.shape.dim]


def _contradicts(declared: list, inferred: list) -> bool:
    if len(declared) != len(inferred):
        return True
    return any(isinstance(a, int) and isinstance(b, int) and a != b
               for a, b in zip(declared, inferred, strict=True))


def _declare(value: onnx.ValueInfoProto, dims: list) -> None:
    shape = value.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif d:
            dim.dim_param = d
