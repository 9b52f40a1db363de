"""Which tensors have a shape that is not a function of the graph inputs' dims.

Symbolic shape inference names a dim it cannot tie to anything with a fresh name, and a fresh
name says nothing about where the size comes from. This pass traces it: walking every graph in
order, each tensor gets two facts, `value` and `shape`, each either None (a function of the
graph inputs' dims and of constants alone) or a short text saying what it depends on instead
(the values of a graph input, a draw, the iteration number of a Loop, a loop state whose shape
changes between iterations). Unknown ops are treated conservatively: their output's shape
depends on everything they read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from onnxfix.graph.find import constant_values, iter_graphs
from onnxfix.graph.shapes import TensorFacts, infer_facts, ort_symbolic_facts
from onnxfix.ops import RANDOM_OP_TYPES

# Output shape follows the input *shapes* (and attributes) only, never input values.
SHAPE_FROM_SHAPES = frozenset({
    "Abs", "Acos", "Acosh", "Add", "AffineGrid", "And", "ArgMax", "ArgMin", "Asin", "Asinh",
    "Atan", "Atanh", "AveragePool", "BatchNormalization", "Bernoulli", "BitShift", "BitwiseAnd",
    "BitwiseNot", "BitwiseOr", "BitwiseXor", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat",
    "Conv", "ConvInteger", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace",
    "DequantizeLinear", "Det", "Div", "Dropout", "DynamicQuantizeLinear", "Einsum", "Elu",
    "EyeLike",
    "Equal", "Erf", "Exp", "Flatten", "Floor", "GRU", "Gather", "GatherElements", "GatherND",
    "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater",
    "GreaterOrEqual", "GridSample", "GroupNormalization", "HardSigmoid", "HardSwish", "Hardmax",
    "Identity", "InstanceNormalization", "IsInf", "IsNaN", "LRN", "LSTM", "LayerNormalization",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "LpNormalization", "LpPool",
    "MatMul", "MatMulInteger", "Max", "MaxPool", "MaxRoiPool", "MaxUnpool", "Mean",
    "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Multinomial", "Neg", "Not", "Or",
    "PRelu", "Pow", "QLinearConv", "QLinearMatMul", "QuantizeLinear", "RNN", "RandomNormalLike",
    "RandomUniformLike", "Reciprocal", "Relu", "ReverseSequence", "RMSNormalization", "RoiAlign",
    "Round", "ScatterElements", "ScatterND", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh",
    "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Sqrt", "Sub", "Sum", "Swish",
    "Tan", "Tanh", "ThresholdedRelu", "Transpose", "Trilu", "Where", "Xor",
})

# Output shape also follows the *values* of the inputs at these positions.
SHAPE_FROM_VALUES = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,),
    "Range": (0, 1, 2), "Slice": (1, 2, 3, 4), "Pad": (1, 3), "Resize": (1, 2, 3),
    "Upsample": (1,), "TopK": (1,), "OneHot": (1,), "Split": (1,), "Squeeze": (1,),
    "Unsqueeze": (1,), "CenterCropPad": (1, 2), "Col2Im": (1, 2), "DFT": (1, 2),
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
    "ReduceProd": (1,), "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,),
}

# Ops whose output values depend only on an input's shape.
SHAPE_READERS = frozenset({"Shape", "Size"})
# Ops whose output values are fixed by attributes (and the shape of what they make).
VALUE_FREE = frozenset({"Constant", "ConstantOfShape"})
RANDOM = frozenset(RANDOM_OP_TYPES)


@dataclass
class Provenance:
    """value[name] / shape[name]: None, or what the tensor's values / shape depend on."""

    value: dict[str, str | None] = field(default_factory=dict)
    shape: dict[str, str | None] = field(default_factory=dict)
    # origins that change between loop iterations: no inferred dim can be trusted there
    per_iteration: set[str] = field(default_factory=set)

    def shape_origin(self, name: str) -> str | None:
        """Why `name`'s shape is not a function of the input dims (None if it is).

        A name never seen (no producer anywhere) is treated as data-dependent.
        """
        if name not in self.shape:
            return f"'{name}', which the analysis cannot trace"
        return self.shape[name]


def trace(model: onnx.ModelProto, wanted: set[str] | None = None) -> Provenance:
    """Trace every tensor of the main graph and its bodies (model-local functions excluded).

    wanted: the names the caller will ask about. When the main graph holds no subgraph, only
    the nodes they depend on are walked (each node's facts follow from its inputs' alone, so
    the answers for `wanted` are the same); other names may then be missing."""
    sliced = _ancestors(model.graph, wanted) if wanted is not None else None
    prov = _start(model)
    if sliced is not None:
        for init in model.graph.initializer:
            prov.value.setdefault(init.name, None)
            prov.shape.setdefault(init.name, None)
        for node in sliced:
            _plain_node(node, prov)
        return prov
    _walk(model.graph, prov, _Inferences(model), constant_values(model))
    return prov


def _ancestors(graph: onnx.GraphProto, wanted: set[str]) -> list[onnx.NodeProto] | None:
    """The nodes `wanted` depends on, in graph order; None when the graph holds a subgraph."""
    producer: dict[str, int] = {}
    for k, node in enumerate(graph.node):
        if node.attribute and any(a.type in (onnx.AttributeProto.GRAPH,
                                             onnx.AttributeProto.GRAPHS)
                                  for a in node.attribute):
            return None
        for o in node.output:
            producer.setdefault(o, k)
    keep: set[int] = set()
    seen: set[str] = set()
    pending = list(wanted)
    while pending:
        name = pending.pop()
        k = producer.get(name)
        if name in seen or k is None or k in keep:
            continue
        seen.add(name)
        keep.add(k)
        pending.extend(graph.node[k].input)
    return [graph.node[k] for k in sorted(keep)]


def _start(model: onnx.ModelProto) -> Provenance:
    prov = Provenance()
    overridable = {i.name for i in model.graph.input}
    for vi in model.graph.input:
        prov.value[vi.name] = f"the values of input '{vi.name}'"
        prov.shape[vi.name] = None
    for init in model.graph.initializer:
        if init.name not in overridable:
            prov.value[init.name] = None
            prov.shape[init.name] = None
    return prov


class _Inferences:
    """Shape facts from three inferences, each run only when an earlier one cannot decide."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.done: list[dict[str, TensorFacts]] = []
        self.makers = [infer_facts, _body_facts, ort_symbolic_facts]

    def __iter__(self):
        for k, make in enumerate(self.makers):
            if k == len(self.done):
                self.done.append(make(self.model))
            yield self.done[k]


def _body_facts(model: onnx.ModelProto) -> dict[str, TensorFacts]:
    """Shapes inferred afresh inside bodies: whether a loop state keeps its shape is judged
    also from what the body computes, not only from the output shapes an exporter declared
    (TorchScript names them `Looph_dim_0`, which hides that the state keeps `batch`).
    onnxruntime's symbolic inference, the last resort, follows a state through the iterations
    (`2*L` for a doubling one)."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    for graph, where in iter_graphs(stripped):
        if where == "main" or not isinstance(graph, onnx.GraphProto):
            continue
        for vi in graph.output:
            if vi.type.HasField("tensor_type"):
                vi.type.tensor_type.ClearField("shape")
        del graph.value_info[:]
    return infer_facts(stripped)


def _first(*texts: str | None) -> str | None:
    return next((t for t in texts if t), None)


def node_label(node: onnx.NodeProto) -> str:
    if node.name:
        return f"{node.op_type} '{node.name}'"
    return f"{node.op_type} -> '{node.output[0]}'" if node.output else node.op_type


def _walk(graph: onnx.GraphProto, prov: Provenance, facts, fixed) -> None:
    for init in graph.initializer:
        prov.value.setdefault(init.name, None)
        prov.shape.setdefault(init.name, None)
    for node in graph.node:
        bodies = [a for a in node.attribute if a.type in (onnx.AttributeProto.GRAPH,
                                                          onnx.AttributeProto.GRAPHS)]
        if bodies:
            _with_bodies(node, prov, facts, fixed)
        else:
            _plain_node(node, prov)


def _read(prov: Provenance, name: str) -> tuple[str | None, str | None]:
    if not name:
        return None, None
    if name not in prov.value:  # read before any producer: unknown, so data-dependent
        text = f"'{name}', which the analysis cannot trace"
        return text, text
    return prov.value[name], prov.shape[name]


def _plain_node(node: onnx.NodeProto, prov: Provenance) -> None:
    ins = [_read(prov, i) for i in node.input]
    in_values = [v for v, _ in ins]
    in_shapes = [s for _, s in ins]
    op = node.op_type if node.domain in ("", "ai.onnx") else None
    if op in SHAPE_FROM_SHAPES:
        shape = _first(*in_shapes)
    elif op in SHAPE_FROM_VALUES:
        by_value = [f"the values of '{node.input[i]}' ({in_values[i]})"
                    for i in SHAPE_FROM_VALUES[op] if i < len(ins) and in_values[i]]
        shape = _first(*in_shapes, *by_value)
    elif op in VALUE_FREE or op in SHAPE_READERS or (op in RANDOM and not node.input):
        shape = None
    else:  # unknown or value-dependent (NonZero, Unique, Compress, custom ops, ...)
        by_value = [f"the values of '{n}' ({v})" for n, v in zip(node.input, in_values,
                                                                 strict=True) if v]
        shape = _first(*in_shapes, *(f"{node_label(node)}, whose output size depends on {t}"
                                     for t in by_value[:1]))
    if op in SHAPE_READERS:
        value = in_shapes[0] if in_shapes else None
    elif op in RANDOM:
        value = f"the draw {node_label(node)}" if node.output else None
    elif op in VALUE_FREE:
        value = shape
    else:
        value = _first(*in_values, *in_shapes, shape)
    for out in node.output:
        if out:
            prov.value[out] = value
            prov.shape[out] = shape


def _same_shape(facts, a: str, b: str) -> bool:
    """Inference says `a` and `b` have one shape (declared, or recomputed in the bodies)."""
    for known in facts:
        fa, fb = known.get(a), known.get(b)
        if (fa is not None and fb is not None and fa.shape is not None
                and fa.shape == fb.shape and None not in fa.shape):
            return True
    return False


def _with_bodies(node: onnx.NodeProto, prov: Provenance, facts, fixed) -> None:
    ins = [_read(prov, i) for i in node.input]
    label = node_label(node)
    op = node.op_type
    outs_shape: list[str | None] = []
    if op == "Loop":
        outs_shape = _loop(node, ins, prov, facts, fixed, label)
    elif op == "Scan":
        outs_shape = _scan(node, ins, prov, facts, fixed, label)
    elif op == "If":
        outs_shape = _if(node, ins, prov, facts, fixed, label)
    else:  # any other body-carrying op: conservative
        for a in node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                for vi in g.input:
                    text = f"an input of a {op} body"
                    prov.value[vi.name], prov.shape[vi.name] = text, text
                _walk(g, prov, facts, fixed)
        outs_shape = [f"an output of {label}"] * len(node.output)
    every = _first(*(v for v, _ in ins), *(s for _, s in ins), *outs_shape)
    for k, out in enumerate(node.output):
        if out:
            prov.shape[out] = outs_shape[k] if k < len(outs_shape) else every
            prov.value[out] = every


def _body(node: onnx.NodeProto, name: str) -> onnx.GraphProto | None:
    return next((a.g for a in node.attribute if a.name == name), None)


def _loop(node, ins, prov, facts, fixed, label) -> list[str | None]:
    body = _body(node, "body")
    if body is None:
        return []
    trip_value = ins[0][0] if node.input and node.input[0] else None
    cond_given = len(node.input) > 1 and node.input[1]
    carried = ins[2:]
    b_in = [vi.name for vi in body.input]
    b_out = [vi.name for vi in body.output]
    if b_in:
        prov.value[b_in[0]] = f"the iteration number of {label}"
        prov.per_iteration.add(prov.value[b_in[0]])
        prov.shape[b_in[0]] = None
    if len(b_in) > 1:
        prov.value[b_in[1]] = f"the condition of {label}"
        prov.shape[b_in[1]] = None
    varying = []
    for k, name in enumerate(b_in[2:]):
        init_value, init_shape = carried[k] if k < len(carried) else (None, None)
        out = b_out[k + 1] if k + 1 < len(b_out) else ""
        initial = node.input[k + 2] if k + 2 < len(node.input) else ""
        stable = out and (_same_shape(facts, name, out) or _same_shape(facts, initial, out))
        why = None if stable else (f"loop state '{name}' of {label}, whose shape can change "
                                   f"between iterations")
        if why:
            prov.per_iteration.add(why)
        varying.append(why)
        prov.value[name] = _first(init_value, why, f"loop state '{name}' of {label}")
        prov.shape[name] = _first(why, init_shape)
    _walk(body, prov, facts, fixed)
    cond_value = prov.value.get(b_out[0]) if b_out and cond_given else None
    count = _first(trip_value and f"the trip count of {label} ({trip_value})",
                   cond_value and f"the condition of {label} ({cond_value})")
    n_carried = len(b_in) - 2
    shapes = []
    for k, out in enumerate(b_out[1:]):
        if k < n_carried:
            shapes.append(_first(varying[k], prov.shape.get(out)))
        else:  # scan output: stacked over iterations
            shapes.append(_first(count, prov.shape.get(out)))
    return shapes


def _scan(node, ins, prov, facts, fixed, label) -> list[str | None]:
    body = _body(node, "body")
    if body is None:
        return []
    n_scan = next((a.i for a in node.attribute if a.name == "num_scan_inputs"), 1)
    b_in = [vi.name for vi in body.input]
    b_out = [vi.name for vi in body.output]
    n_state = len(b_in) - n_scan
    # Scan-8 has a leading sequence_lens input; the tail of the inputs lines up with the body
    outer = ins[len(ins) - len(b_in):] if len(ins) >= len(b_in) else ins
    varying = []
    for k, name in enumerate(b_in):
        value, shape = outer[k] if k < len(outer) else (None, None)
        why = None
        if k < n_state and not (k < len(b_out) and _same_shape(facts, name, b_out[k])):
            why = f"scan state '{name}' of {label}, whose shape can change between iterations"
            prov.per_iteration.add(why)
        if k < n_state:
            varying.append(why)
        prov.value[name] = _first(value, why)
        prov.shape[name] = _first(why, shape)
    _walk(body, prov, facts, fixed)
    lengths = _first(*(s for _, s in outer[n_state:]))
    return [_first(varying[k] if k < n_state else lengths, prov.shape.get(out))
            for k, out in enumerate(b_out)]


def _if(node, ins, prov, facts, fixed, label) -> list[str | None]:
    branches = [g for g in (_body(node, "then_branch"), _body(node, "else_branch")) if g]
    for g in branches:
        _walk(g, prov, facts, fixed)
    cond_value = ins[0][0] if ins else None
    shapes = []
    for k in range(len(node.output)):
        names = [g.output[k].name for g in branches if k < len(g.output)]
        inner = _first(*(prov.shape.get(n) for n in names))
        agree = len(names) == 2 and _same_shape(facts, names[0], names[1])
        shapes.append(_first(inner, None if agree or not cond_value else
                             f"which branch of {label} runs ({cond_value})"))
    return shapes
