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
"""

from __future__ import annotations

from operator import attrgetter

import onnx

from onnxfix.graph.shapes import collect_facts
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
_OP_TYPE, _DOMAIN, _NAME = attrgetter("op_type"), attrgetter("domain"), attrgetter("name")


def reads_no_propagated_data(model: onnx.ModelProto) -> bool:
    """Step 1's condition on the model (ops picked out in C: no Python step per node)."""
    nodes = model.graph.node
    return (not model.functions and set(map(_DOMAIN, nodes)) <= _DEFAULT_DOMAINS
            and set(map(_OP_TYPE, nodes)) <= NO_PROPAGATED_DATA)


def full_check_follows(model_plan, emitted, out: onnx.ModelProto) -> bool:
    """Whether `out` (the spliced, tidied emit of `model_plan`) passes onnx's full check
    whenever it passes the basic one (steps 1-4 of the module doc)."""
    draws = model_plan.draw_facts
    if not (model_plan.input_full and model_plan.prepared.as_input and emitted.sites
            and draws) or any(e.frozen for e in emitted.sites):
        return False
    if any(f is None or f.shape is None or any(isinstance(d, str) and d.startswith("unk__")
                                               for d in f.shape) for f in draws.values()):
        return False
    alone = replacements_alone(out, emitted.sites, list(draws))
    if alone is None:
        return False
    made = {o: n.op_type for n in alone.graph.node for o in n.output if o}
    if any(made.get(d, "Constant") == "Constant" for d in draws):
        return False  # a draw that is not computed by a replacement node
    fresh = (set(made) - set(draws)) | {vi.name for e in emitted.sites for vi in e.inputs}
    if not fresh.isdisjoint(map(_NAME, out.graph.value_info)):
        return False
    try:
        inferred = onnx.shape_inference.infer_shapes(alone, check_type=True, strict_mode=True,
                                                     data_prop=False)
    except Exception:  # noqa: BLE001 - not proven: the validate pass runs the full check
        return False
    facts = collect_facts(inferred)
    return all(facts.get(name) == fact for name, fact in draws.items())
