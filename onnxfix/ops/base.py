"""What every random op shares: the RandomOp interface, dtypes, attribute helpers.

Each op subclass answers, for one random node:
- `applies`: is this node random at all (Dropout only is in training mode);
- `dtypes`: the dtype of its draw and of the standard noise that stands for it;
- `noise_shape`: the noise's shape, from the shapes of the node's inputs;
- `transform`: the in-graph ops turning noise into the node's outputs (input-noise mode);
- `forward` / `standardize`: the same transform in numpy, and its inverse, which turns draws
  captured from the original back into standard noise (the parity check);
- `sample`: seeded standard noise (constant mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxfix.errors import ModelError
from onnxfix.ops.noise import NOISE_CENTRE, UNIFORM, below_one, standard_noise

if TYPE_CHECKING:  # the builder is only handed in: importing it would close a cycle
    from onnxfix.graph.builder import NodeBuilder

# No tensor has more elements than this; a shape beyond it is refused as absurd.
MAX_ELEMENTS = 2**48

FLOAT_TYPES = (TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.BFLOAT16)
INDEX_TYPES = (TensorProto.INT32, TensorProto.INT64)

# Standard noise families (NORMAL, UNIFORM, from the sampler) are also written into the
# model's noise metadata.


class Inconsistent(Exception):
    """No standard noise reproduces a captured draw (parity cannot condition on it)."""


class Improbable(Inconsistent):
    """The draw is a legitimate one that the noise dtype cannot reproduce (e.g. a class whose
    interval rounds to nothing): another draw of the original may well be reproducible."""


_FLOAT, _INT = onnx.AttributeProto.FLOAT, onnx.AttributeProto.INT


def attrs_of(node: onnx.NodeProto) -> dict:
    """Attribute values; inside a function body, a reference to the caller's attribute `s`
    (set per call) reads "@s"."""
    attrs = {}
    for a in node.attribute:
        # a float or an int (a draw's mean, scale, dtype, seed) read directly: the plan and
        # the emit ask several times per draw, and get_attribute_value tests type by type
        kind = a.type
        if a.ref_attr_name:
            attrs[a.name] = f"@{a.ref_attr_name}"
        elif kind == _FLOAT:
            attrs[a.name] = a.f
        elif kind == _INT:
            attrs[a.name] = a.i
        else:
            attrs[a.name] = helper.get_attribute_value(a)
    return attrs


def attribute_refs(attrs: dict) -> dict:
    """The attributes a function body leaves to each call ("@name" values)."""
    return {k: v for k, v in attrs.items() if isinstance(v, str) and v.startswith("@")}


def distribution_of(spec: RandomOp, attrs: dict) -> dict:
    """The node's distribution; parameters a function leaves to each call read "@name"."""
    refs = attribute_refs(attrs)
    plain = {k: v for k, v in attrs.items() if k not in refs}
    return {**spec.distribution(plain), **refs}


def np_dtype(elem_type: int) -> np.dtype:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:  # noqa: BLE001 - unknown or unsupported enum value
        raise ModelError(f"unsupported tensor element type {elem_type}") from None


def dtype_name(elem_type: int) -> str:
    try:
        return helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()
    except Exception:  # noqa: BLE001
        return f"type{elem_type}"


def with_attr(node: onnx.NodeProto, name: str, value) -> onnx.NodeProto:
    """A copy of `node` with attribute `name` set to `value` (replaced if present)."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    kept = [a for a in copy.attribute if a.name != name]
    del copy.attribute[:]
    copy.attribute.extend([*kept, helper.make_attribute(name, value)])
    return copy


def label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


def require_float(node: onnx.NodeProto, dt: int, what: str = "dtype") -> int:
    if dt not in FLOAT_TYPES:
        raise ModelError(f"{label(node)}: {what} {dtype_name(dt)} is not allowed "
                         f"(the op takes float16, float, double or bfloat16)")
    return dt


def float_input_type(node: onnx.NodeProto, input_type) -> int:
    """The element type of the node's input 0, which must be known and a float type."""
    elem = input_type(node.input[0])
    if not elem:
        raise ModelError(f"{label(node)}: cannot tell the element type of its input")
    return require_float(node, elem, "input type")


def narrow_uniform_problem(node: onnx.NodeProto, fed: int, why) -> str:
    """'' unless noise fed as `fed` is a 16-bit float; else the refusal, naming noise_dtype,
    with why(dtype name, its largest step below 1) as the reason."""
    if fed not in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
        return ""
    name = dtype_name(fed)
    step = 1 - float(below_one(np_dtype(fed)))
    return (f"{label(node)}: noise_dtype=\"{name}\" cannot represent its noise faithfully: "
            f"{why(name, step)}; use noise_dtype=\"float32\" or \"same\"")


@dataclass(frozen=True)
class Dtypes:
    draw: int   # the node's first output
    noise: int  # the standard noise input
    param: int = 0  # the probabilities / logits / ratio as the model holds them (0: as noise)


def wide_noise(param_type: int) -> int:
    """The noise dtype of a discrete op: float32, or double when its parameter is double.

    Its comparison (Bernoulli, Dropout) or inverse CDF (Multinomial) then runs in at least
    float32: float16 parameters are cast up in-graph, never the noise down. float16 uniforms
    have only 15,360 distinct values in [0, 1) and would tie and bias the sample.
    """
    return TensorProto.DOUBLE if param_type == TensorProto.DOUBLE else TensorProto.FLOAT


def widened(b: NodeBuilder, name: str, dt: Dtypes, hint: str) -> str:
    """`name` (a parameter in dt.param) cast to the noise dtype where they differ."""
    if dt.param and dt.param != dt.noise:
        return b.op("Cast", [name], hint, to=dt.noise)
    return name


class RandomOp:
    """One random op's knowledge. The passes and the parity check call only these members;
    a new op is a subclass in its own module plus its line in the registry."""

    op_type = ""
    family = UNIFORM
    # The draw depends on runtime tensors (probabilities, logits, data): constant mode then
    # freezes the standard noise and keeps the transform, instead of freezing the draw.
    data_dependent = True
    # The transform is not the identity on its noise (a compare, an inverse CDF): the check's
    # distribution test always runs for it, not only when the noise is fed narrower.
    discrete = True
    # The noise has the draw's shape (Multinomial's noise is [batch, sample_size]).
    noise_is_draw_shaped = True

    @property
    def reads_input(self) -> bool:
        """The node cannot be rewritten without its input 0 (probabilities, data, ...)."""
        return True

    @property
    def deterministic_noise(self) -> float | None:
        """The noise the transform maps onto the deterministic value (None where none does)."""
        return NOISE_CENTRE[self.family]

    def applies(self, node: onnx.NodeProto, opset: int, constant_of) -> bool:
        return True

    def check_attributes(self, node: onnx.NodeProto) -> None:
        """Raise ModelError for attribute values no distribution has."""

    def ort_abort_reason(self, node: onnx.NodeProto) -> str:
        """Why onnxruntime would abort the process drawing from this node ('' if it would
        not)."""
        return ""

    def dtypes(self, node: onnx.NodeProto, input_type) -> Dtypes:
        raise NotImplementedError

    def static_shape(self, node: onnx.NodeProto) -> list[int] | None:
        """The draw's shape when an attribute fixes it (None: it follows an input)."""
        return None

    def noise_shape(self, node: onnx.NodeProto, shape_of) -> list | None:
        """Shape of the noise; shape_of(name) gives a shape (list of int|str|None) or None."""
        return shape_of(node.input[0])

    def noise_shape_from_output(self, node: onnx.NodeProto, shape_of) -> list | None:
        """The noise's shape read off the draw's inferred shape, where they are the same."""
        return shape_of(node.output[0]) if self.noise_is_draw_shaped else None

    def draw_shape(self, noise_shape: list | None) -> list | None:
        """Shape of the node's first output, given its noise's shape."""
        return noise_shape

    def draw_axis(self, k: int) -> int | None:
        """The draw's axis that noise axis k (within one invocation) has the size of."""
        return k

    def source_axes(self, rank: int) -> list[int | None]:
        """For each axis of one invocation's noise, the axis of the node's input it follows."""
        return list(range(rank))

    def shape_facts(self, node: onnx.NodeProto, shape_of) -> dict:
        """Static facts the transform needs beyond the attributes (merged into them)."""
        return {}

    def distribution(self, attrs: dict) -> dict:
        raise NotImplementedError

    def transform_text(self, attrs: dict) -> str:
        raise NotImplementedError

    def transform(self, b: NodeBuilder, noise: str, node: onnx.NodeProto, attrs: dict,
                  dt: Dtypes) -> None:
        raise NotImplementedError

    def noise_dtype_problem(self, node: onnx.NodeProto, fed: int) -> str:
        """Why noise fed as `fed` (narrower than its own dtype) would bias the draw ('' if
        it would not)."""
        return ""

    def sample(self, rng: np.random.Generator, shape: list[int], dtype: int) -> np.ndarray:
        """Seeded standard noise (constant mode freezes it where the op is data-dependent)."""
        return standard_noise(rng, self.family, shape, np_dtype(dtype))

    def sample_draw(self, rng: np.random.Generator, shape: list[int], attrs: dict,
                    dtype: int) -> np.ndarray:
        """One seeded draw of the node's own distribution (constant mode freezes it where
        the op is not data-dependent)."""
        raise NotImplementedError

    def deterministic(self, b: NodeBuilder, node: onnx.NodeProto, attrs: dict,
                      dt: Dtypes) -> str:
        """Append nodes computing the most representative value; return a description."""
        raise NotImplementedError

    # -- the parity check: capture the original's draws, turn them back into noise --------

    def capture_inputs(self, node: onnx.NodeProto) -> list[str]:
        """Node inputs whose runtime values `standardize` needs."""
        return [i for i in node.input[:1] if i]

    def input_role(self, index: int) -> str | None:
        """What the check's synthetic inputs must hold where they reach input `index`:
        "probability" (in [0, 1)), "switch" (a training flag, true), or None."""
        return None

    def probability_inputs(self, node: onnx.NodeProto) -> list[str]:
        """Inputs the check's synthetic feeds must fill with probabilities in [0, 1)."""
        return []

    def expose_outputs(self, node: onnx.NodeProto, fresh) -> None:
        """Name optional outputs the check must capture (fresh(hint) gives a new name)."""

    def output_type(self, node: onnx.NodeProto, index: int, opset: int,
                    draw_type: int) -> int | None:
        """The element type of output `index` where inference may not know it (None: ask
        the model's facts); draw_type is that of output 0."""
        return None

    def forward(self, noise: np.ndarray, attrs: dict, inputs: dict) -> dict[int, np.ndarray]:
        """Output index -> value, as the transform computes it."""
        raise NotImplementedError

    def standardize(self, outputs: dict[int, np.ndarray], attrs: dict, inputs: dict,
                    noise_dtype: np.dtype) -> np.ndarray:
        """Standard noise the transform maps onto the captured outputs (Inconsistent if
        none does)."""
        raise NotImplementedError

    def standardize_stacked(self, outputs: dict, attrs: dict, inputs: dict, noise_dtype,
                            lead: int) -> np.ndarray:
        """`standardize` for draws stacked over `lead` enclosing loop axes."""
        if lead:
            rank = max(v.ndim for v in outputs.values())
            # inputs captured once per iteration (a Dropout ratio: [trips]) broadcast
            inputs = {i: v.reshape(v.shape + (1,) * (rank - v.ndim))
                      if lead <= v.ndim < rank else v for i, v in inputs.items()}
        return self.standardize(outputs, attrs, inputs, noise_dtype)

    def standardize_all(self, jobs: list[tuple]) -> list[np.ndarray]:
        """`standardize_stacked(*job)` of each job (outputs, attrs, inputs, noise_dtype, lead),
        in order. An op whose standardize works element by element overrides it to do many
        draws in one pass (per-draw numpy calls dominated a check over thousands of draws)."""
        return [self.standardize_stacked(*job) for job in jobs]

    def distribution_test(self, h) -> tuple[list, list[str]]:
        """The check's distribution test of this op's transform: ([(against, ChiSquare,
        samples)], notes). `h` is check/distribution_check's Harness: the draw under test,
        seeded noise, and onnxruntime runs of the transform and of the original node."""
        raise NotImplementedError

    def standardize_frozen(self, draw: np.ndarray, distribution: dict) -> np.ndarray:
        """The noise for a draw constant mode froze itself (ops that are not data-dependent),
        from its report `distribution`."""
        raise NotImplementedError

    def own_reference(self, nodes, noise: str) -> str | None:
        """A tensor of the rewritten transform reading `noise` that the check should
        re-standardize against (None: the captured inputs are enough)."""
        return None

    def recondition(self, outputs: dict[int, np.ndarray], reference: np.ndarray,
                    noise_dtype) -> np.ndarray:
        """Noise for the captured outputs, against the rewritten model's own `reference`."""
        raise NotImplementedError

    def provisional(self, outputs: dict[int, np.ndarray], noise_dtype) -> np.ndarray:
        """Noise of the right shape for the run that reads the `own_reference` (its values
        are replaced by `recondition` before anything is compared)."""
        raise NotImplementedError

    def seed_attribute(self, value: int):
        """The op's `seed` attribute holding `value` (a float for most ops)."""
        return float(value)
