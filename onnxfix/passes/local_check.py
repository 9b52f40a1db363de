"""When the rewritten model's full onnx check follows from the input's (issue 10).

onnx's full check is its basic check plus strict shape inference with type checks and without
data propagation (checker.cc: `InferShapes(model, {check_type, strict, no data_prop})`). On a
100k-node graph that inference of the output costs more than onnx.load + onnx.save, yet the
output differs from the input only around the rewritten draws. The argument, each step checked
here or in the validate pass, falling back to the whole check wherever one does not hold:

1. Every node of the input is a default-domain op of `NO_PROPAGATED_DATA`, in the main graph
   (no subgraph, no local function): ops whose shape inference reads no propagated data. Data
   propagation then changes no fact, and only adds checks of its own, so the plan's inference
   (data propagation on, run strict with type checks for such a model) passing means the
   input passes the full check's inference, with the very facts the plan read.
2. The main outputs' declarations only restate what inference proves (`infer_for_plan`'s
   `_restates`), so checking them against inference, as the full check does, finds nothing.
3. The rewrite changed nothing but the draws' producers: no function inlined, no dim named or
   fixed (`Prepared.as_input`); the replacement nodes sit in the main graph and read only graph
   inputs, initializers and each other (`replacements_alone`); no draw is frozen into a
   constant (a constant's value is read by some ops' inference, a draw's is not); their new
   names are not declared in the graph's value_info.
4. The replacement nodes alone pass strict inference with type checks and give every draw
   exactly the facts the plan had for it. In the output each of them reads the same
   declarations as alone, so they infer as alone; every other node then reads exactly the
   facts it read in the input and infers as it did there, without error (1).
5. The validate pass runs the output's basic check (names defined once and before use, node
   and attribute validity, opsets, initializers): with 1-4, basic passing is full passing.

That basic check (checker.cc `check_model` / `check_graph`) is itself a sum of local checks:
model fields (ir_version, opset imports, metadata keys unique, local functions), the graph's
name, each main input and output declaration, each initializer, each node (op, attributes,
input and output counts: `check_node`), and three relations over names - inputs, initializers
and node outputs defined once (SSA), every node input defined before the node, every graph
output defined. When 1-4 hold, the input passed its basic check when it was read (the API's
readers refuse it otherwise: `input_checked`), and 6-9 hold, the output passes it too:

6. The output's ir_version, opset imports and graph name are the input's; neither has local
   functions (the metadata goes into the patch, step 9).
7. Its graph outputs are the input's byte for byte, its inputs are the input's followed by the
   noise inputs, its initializers as many as the input's (none added, none removed).
8. It has as many nodes as the input minus the replaced ones plus the replacement nodes, and
   the replacement nodes stand where splice puts them: the prepended ones first, each site's
   where its random node stood (checked at those positions). With the count, every other node
   is an input node, in the input's order (the emit edits a copy of the input; splice deletes
   each replaced node and inserts its replacements in its place), so every node reading a
   draw comes after the replacements, which define it.
9. Every name the replacements define, but the draws, and every noise input name occur
   nowhere in the input (fresh: the plan's name allocator, made before it named anything,
   says so from the input's serialized bytes or its every name). The patch - the replacement
   nodes in order, the graph inputs and initializers they read, the noise inputs, the
   output's metadata, ir_version and opset imports - passes the basic check.
Then every input node checks as in the input (same node, same opsets; no subgraph, 1); it reads
names the input defined before it, or draws, now defined earlier by a replacement (8); the
replacement nodes read graph inputs, initializers and earlier replacement outputs (9, 8); names
are defined once: the input's (checked), the draws (once each in the patch, no longer by the
removed node), the fresh ones (9); the outputs are defined as before. Anything else, or a patch
that fails, falls back to the output's whole check (validate), so a refusal reads as before.
"""

from __future__ import annotations

from operator import attrgetter

import onnx

from onnxfix.graph.find import main_op_census
from onnxfix.graph.shapes import declared_facts
from onnxfix.ops import RANDOM_OP_TYPES
from onnxfix.passes.output_shapes import replacements_alone

# Default-domain ops whose onnx shape inference reads only input types and shapes, attributes
# and constant inputs - never data propagated through the graph (as Reshape, Expand,
# ConstantOfShape, Tile... do) - and hold no subgraph; the random ops among them.
NO_PROPAGATED_DATA = frozenset(RANDOM_OP_TYPES) | frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Concat", "Constant", "Conv",
    "ConvTranspose", "Cos", "Cosh", "Div", "Elu", "Equal", "Erf", "Exp", "Flatten",
    "Floor", "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater",
    "GreaterOrEqual", "GroupNormalization", "HardSigmoid", "HardSwish", "Identity",
    "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less",
    "LessOrEqual", "Log", "LogSoftmax", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mish",
    "Mod", "Mul", "Neg", "Not", "Or", "PRelu", "Pow", "Reciprocal", "Relu", "Round",
    "Selu", "Sigmoid", "Sign", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt", "Sub",
    "Sum", "Tan", "Tanh", "ThresholdedRelu", "Transpose", "Where", "Xor",
})
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
_NAME = attrgetter("name")


def reads_no_propagated_data(model: onnx.ModelProto) -> bool:
    """Step 1's condition on the model (from the main graph's op census, which the report's
    op counts read again: graph.find.main_op_census)."""
    if model.functions:
        return False
    census = main_op_census(model)
    return (all(d in _DEFAULT_DOMAINS for d, _ in census)
            and all(op in NO_PROPAGATED_DATA for _, op in census))


def local_proof(model_plan, emitted, out: onnx.ModelProto, original: onnx.ModelProto,
                input_checked: bool = False) -> tuple[bool, onnx.ModelProto | None]:
    """(full_follows, patch): whether the full check follows from the basic one (steps
    1-4), and the patch model whose basic check, with the input's, stands for the output's
    (steps 6-9; None where they do not hold or the input is not known to pass its basic
    check: `input_checked`)."""
    alone = _alone_if_full(model_plan, emitted, out)
    if alone is None:
        return False, None
    if not input_checked or model_plan.names_before is None:
        return True, None
    # the plan's names before it named anything: the prepared model's, which is the input
    taken = model_plan.names_before.copy().taken
    return True, basic_check_patch(original, emitted, out, alone, taken)


def _alone_if_full(model_plan, emitted, out: onnx.ModelProto) -> onnx.ModelProto | None:
    """The replacement nodes alone (see output_shapes.replacements_alone) when steps 1-4
    hold, else None."""
    draws = model_plan.draw_facts
    if not (model_plan.input_full and model_plan.prepared.as_input and emitted.sites
            and draws) or any(e.frozen for e in emitted.sites):
        return None
    if any(f is None or f.shape is None or any(isinstance(d, str) and d.startswith("unk__")
                                               for d in f.shape) for f in draws.values()):
        return None
    alone = replacements_alone(out, emitted, list(draws))
    if alone is None:
        return None
    made = {o: n.op_type for n in alone.graph.node for o in n.output if o}
    if any(made.get(d, "Constant") == "Constant" for d in draws):
        return None  # a draw that is not computed by a replacement node
    fresh = (set(made) - set(draws)) | {vi.name for e in emitted.sites for vi in e.inputs}
    if not fresh.isdisjoint(map(_NAME, out.graph.value_info)):
        return None
    try:
        inferred = onnx.shape_inference.infer_shapes(alone, check_type=True, strict_mode=True,
                                                     data_prop=False)
    except Exception:  # noqa: BLE001 - not proven: the validate pass runs the full check
        return None
    # the replacements alone hold no subgraph (replacements_alone): the main graph's
    # declarations are the model's, and no walk of its nodes looks for more
    g = inferred.graph
    facts = declared_facts([g.initializer, g.input, g.output, g.value_info])
    if not all(facts.get(name) == fact for name, fact in draws.items()):
        return None
    emitted.alone_proven = True  # read by output_shapes.reusable_output_facts
    return alone


# -- the output's basic check from the input's and the patch's (steps 6-9) ----------------

def basic_check_patch(original: onnx.ModelProto, emitted, out: onnx.ModelProto,
                      alone: onnx.ModelProto, taken) -> onnx.ModelProto | None:
    """The patch model (step 9) when steps 6-8 hold for `out` against `original`, else None.
    taken: name -> whether the input holds it anywhere (graph.naming.NameAllocator.taken)."""
    g, before = out.graph, original.graph
    front, nodes = emitted.prepended, emitted.replacement_nodes  # in the output's order
    noise = [vi for e in emitted.sites for vi in e.inputs]
    if emitted.dead or not (
            _same_frame(original, out) and _same_declarations(before, g, noise)
            and len(g.node) == len(before.node) - len(emitted.sites) + len(nodes)
            and _in_place(g.node, emitted.sites, front, nodes)):
        return None
    draws = {o for e in emitted.sites for o in e.plan.site.node.output if o}
    defined = [o for n in nodes for o in n.output if o and o not in draws]
    if any(map(taken, (*defined, *map(_NAME, noise)))):
        return None  # not provably fresh
    patch = onnx.ModelProto(ir_version=out.ir_version, metadata_props=out.metadata_props,
                            opset_import=out.opset_import)
    patch.graph.name = g.name
    patch.graph.node.extend(nodes)
    patch.graph.input.extend(alone.graph.input)
    patch.graph.initializer.extend(alone.graph.initializer)
    return patch


def _same_frame(original: onnx.ModelProto, out: onnx.ModelProto) -> bool:
    """Step 6: the model-level fields the basic check reads (ir_version, opset imports, local
    functions) and the graph's name are the input's."""
    return (out.ir_version == original.ir_version and not out.functions
            and not original.functions and out.graph.name == original.graph.name
            and _serialized(out.opset_import) == _serialized(original.opset_import))


def _same_declarations(before: onnx.GraphProto, g: onnx.GraphProto, noise: list) -> bool:
    """Step 7: the graph's outputs are the input's, its inputs are the input's followed by
    the noise inputs, and its initializers are as many as the input's (none was added or
    removed)."""
    n = len(before.input)
    return (len(g.initializer) == len(before.initializer)
            and len(g.sparse_initializer) == len(before.sparse_initializer)
            and _serialized(g.output) == _serialized(before.output)
            and len(g.input) == n + len(noise)
            and _serialized(g.input) == _serialized(before.input) + _serialized(noise))


def _serialized(messages) -> list[bytes]:
    return [m.SerializeToString() for m in messages]


def _in_place(nodes, sites, front: list, patch: list) -> bool:
    """Step 8: the replacement nodes stand in the output where splice puts them - the
    prepended ones first, each site's where its random node stood in the input (the input's
    nodes before it shifted by the replacements before it) - checked at those positions
    only (no walk of the graph)."""
    at, shift, last = list(range(len(front))), len(front), -1
    for e in sites:
        k = e.plan.path[-1]
        if len(e.plan.path) != 1 or k <= last:
            return False  # not a main-graph node, or not in graph order
        at.extend(range(k + shift, k + shift + len(e.nodes)))
        shift, last = shift + len(e.nodes) - 1, k
    return (not at or at[-1] < len(nodes)) and all(
        nodes[k] == node for k, node in zip(at, patch, strict=True))
