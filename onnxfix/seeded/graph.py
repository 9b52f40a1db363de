"""The seeded generator as ONNX nodes, built with a NodeBuilder: the same algorithm as
`onnxfix.seeded.algorithm`, op for op, so the uniforms are bit-identical to the numpy reference.

Opsets: 6 and later (integer Add, Sub, Mul and Div exist from 6; before opset 7 the builder
adds broadcast=1, and no first operand is ever the broadcast one, which legacy broadcasting
forbids). Range (for the element counter) exists from opset 11; below it, a draw of
static shape gets its counter words as constants, a runtime shape counts with NonZero over a
ConstantOfShape of ones (opsets 9 and 10), and is refused before opset 9. The element words
use Mod from opset 13 and `a - (a / W) * W` (integer Div of non-negative values) before it;
the seed and iteration are split into words by floor mods made from Div alone, at every
opset: IREE's ONNX import takes Mod, Less and Unsqueeze only at opset 13 or later.

Ops used: Constant, Add, Sub, Mul, Div, Mod, Gather, Cast, Reshape (Identity for a static shape
before opset 9, whose counters are made in that shape); for a runtime shape also
Range (ConstantOfShape, NonZero and Squeeze before opset 11), ReduceSum (the strides), and
for one of unknown rank ConstantOfShape, Shape, Equal, Expand; for normals Log, Sqrt, Cos
(float32 from opset 7; float64, and float32 before Cos exists, `seeded.cosine` and a Cast);
for Gumbel noise Log, Neg. All elementwise integer work is int64 on values < 2^24. Cost,
measured in onnxruntime 1.32 on this 2-core machine: about 0.6-1 us per element (20 Gathers
and 20 Mods over the draw dominate).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx.numpy_helper

from onnxfix.errors import ModelError
from onnxfix.graph.builder import NodeBuilder
from onnxfix.seeded import algorithm as alg
from onnxfix.seeded.cosine import cos_of_turns

MIN_OPSET = 6
NONZERO_OPSET = 9
RANGE_OPSET = 11
MOD_OPSET = 13  # IREE's ONNX import legalizes Mod, Less, Unsqueeze only from opset 13
_FLOATS = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}
# the iteration index tensor of the enclosing loop, or one per enclosing loop (outermost first)
Loops = str | Sequence[str] | None
# a runtime shape's length, or its dims (an int where static, None where not), or None
Rank = int | Sequence[int | None] | None


class _Words:
    """Integer helpers on int64 tensors whose values all stay in [0, 2^24)."""

    def __init__(self, b: NodeBuilder, table: str | None):
        self.b = b
        self.table = table or sbox_constant(b)
        self._consts: dict[int, str] = {}
        self.no_zero_shape: str | None = None

    def const(self, value: int) -> str:
        if value not in self._consts:
            self._consts[value] = self.b.constant(np.array(value, dtype=np.int64), f"c{value}")
        return self._consts[value]

    def mod(self, name: str, hint: str) -> str:
        """`name` mod W for `name` >= 0: Mod from opset 13, `a - (a / W) * W` before (Mod
        exists from opset 10, but IREE's ONNX import takes it only from 13)."""
        if self.b.opset >= MOD_OPSET:
            return self.b.op("Mod", [name, self.const(alg.WORD)], hint)
        return self._truncated_rem(name, hint)

    def div(self, name: str, hint: str) -> str:
        return self.b.op("Div", [name, self.const(alg.WORD)], hint)

    def split(self, scalar: str, bits: int, hint: str) -> list[str]:
        """An int64 scalar reduced modulo 2^bits (floor mod, like numpy's %; bits = 24), as two
        words: low = a mod W, high = floor(a / W) mod W, each floor mod made from truncating
        Div as `(a rem W + W) rem W`. No Mod or Less (IREE takes neither before opset 13), and
        for seeds in [0, 2^24) no intermediate reaches 2^24 (OpenVINO divides in float32)."""
        if bits != 2 * alg.WORD_BITS:
            raise ValueError(f"bits={bits}: a scalar splits into two {alg.WORD_BITS}-bit words")
        low = self._floor_mod(scalar, hint + "_lo")
        high = self.div(self.b.op("Sub", [scalar, low], hint + "_floor"), hint + "_quotient")
        return [low, self._floor_mod(high, hint + "_hi")]

    def _floor_mod(self, name: str, hint: str) -> str:
        shifted = self.b.op("Add", [self._truncated_rem(name, hint + "_rem"),
                                    self.const(alg.WORD)], hint + "_shift")
        return self._truncated_rem(shifted, hint)

    def _truncated_rem(self, name: str, hint: str) -> str:
        """name - trunc(name / W) * W: in (-W, W), and name mod W where name >= 0."""
        modulus = self.const(alg.WORD)
        quotient = self.b.op("Div", [name, modulus], hint + "_q")
        whole = self.b.op("Mul", [quotient, modulus], hint + "_qm")
        return self.b.op("Sub", [name, whole], hint)

    def feistel(self, words: list[str], keys, rounds: int, hint: str) -> list[str]:
        """`algorithm.permute`: `keys` are four ints (constants) or four scalar tensors."""
        x0, x1, x2, x3 = words
        for r in range(rounds):
            pair = keys[:2] if r % 2 == 0 else keys[2:]
            k0, k1 = (self._round_key(pair[lane], r, lane, f"{hint}_r{r}_k{lane}")
                      for lane in (0, 1))
            f0 = self._sbox(x0, k0, f"{hint}_r{r}_f0")
            f1 = self._sbox(x2, k1, f"{hint}_r{r}_f1")
            # the S-box word first: x3 starts as the constant 0, and before opset 7 only
            # the second operand may be broadcast
            x0, x1, x2, x3 = (self.mod(self.b.op("Add", [f0, x1], f"{hint}_r{r}_s0"),
                                       f"{hint}_r{r}_y0"),
                              x2,
                              self.mod(self.b.op("Add", [f1, x3], f"{hint}_r{r}_s1"),
                                       f"{hint}_r{r}_y2"),
                              x0)
        return [x0, x1, x2, x3]

    def _round_key(self, key, r: int, lane: int, hint: str) -> str:
        if isinstance(key, int):
            return self.const(alg.round_key(key, r, lane))
        step = self.const(r * alg.KEY_STEPS[lane] % alg.WORD)
        return self.mod(self.b.op("Add", [key, step], hint + "_add"), hint)

    def _sbox(self, word: str, key: str, hint: str) -> str:
        index = self.b.op("Add", [word, key], hint + "_index")
        return self.b.op("Gather", [self.table, index], hint, axis=0)


def sbox_constant(b: NodeBuilder) -> str:
    """The S-box as one int64 constant (64 KiB); several generators in a graph may share it."""
    return b.constant(alg.SBOX, "sbox")


def _pruned(draw: Callable[..., str]) -> Callable[..., str]:
    """A draw whose nodes nothing reads are dropped (among the nodes it added to the builder):
    a float32 uniform or Gumbel draw reads only the first number of the last Feistel round,
    so the second number's word (its S-box Gather, two Adds and a floor mod) would be
    computed for nothing, in every site. The nodes are in topological order, so one sweep
    from the end keeps exactly the ones the draw's output needs."""
    @functools.wraps(draw)
    def pruned(b: NodeBuilder, *args, **kwargs) -> str:
        start = len(b.nodes)
        result = draw(b, *args, **kwargs)
        needed, kept = {result}, []
        for node in reversed(b.nodes[start:]):
            if needed.intersection(node.output):
                kept.append(node)
                needed.update(node.input)
        b.nodes[start:] = kept[::-1]
        return result
    return pruned


@_pruned
def seeded_uniform(b: NodeBuilder, seed: str, key: int, shape: Sequence[int] | str,
                   iteration: Loops = None, dtype: int = onnx.TensorProto.FLOAT,
                   output: str | None = None, table: str | None = None,
                   rank: Rank = None) -> str:
    """Nodes drawing U[0, 1) of `shape` for stream `key`; returns the tensor holding it.

    seed: an int64 scalar tensor; key: the node's 48-bit key (`algorithm.node_key`); shape: a
    static list of dims or the name of a 1-D int64 shape tensor (evaluated at run time);
    iteration: an optional int64 scalar tensor (the Loop/Scan iteration index), or one per
    enclosing loop (outermost first); dtype: FLOAT or
    DOUBLE; output: the name to write the draw to; table: a shared `sbox_constant`; rank: the
    length of a runtime `shape` when known (see `_grid_index`; give it whenever it is known),
    or its dims with an int where a dim is static (None elsewhere): a static dim is then a
    constant in the graph, so shape inference types that axis of the draw.
    """
    np_dtype = _float_dtype(dtype)
    if _is_empty(shape):
        return _empty(b, shape, np_dtype, output)
    words, high, second = _generate(b, table, seed, key, shape, iteration, rank)
    if np_dtype == np.float32:
        flat = _unit(words, high, dtype, alg.UNIT, "uniform")
    else:
        low = _join(words, *second, "bits_b")
        flat = b.op("Add", [_unit(words, high, dtype, alg.UNIT, "uniform_hi"),
                            _unit(words, low, dtype, alg.UNIT * alg.UNIT, "uniform_lo")],
                    "uniform")
    return _reshape(b, flat, shape, output, "uniform_shaped", words, rank)


def _generate(b: NodeBuilder, table: str | None, seed: str, key: int, shape, iteration: Loops,
              rank: Rank) -> tuple[_Words, str, tuple[str, str]]:
    """The word helpers, the first 24-bit number of every element of a draw, and the two
    12-bit words of its second (joined by `_join` only where a sampler reads them as one)."""
    words = _Words(b, table)
    return (words, *_draw_words(words, seed, key, shape, iteration, rank))


@_pruned
def seeded_normal(b: NodeBuilder, seed: str, key: int, shape: Sequence[int] | str,
                  iteration: Loops = None, dtype: int = onnx.TensorProto.FLOAT,
                  output: str | None = None, table: str | None = None,
                  rank: Rank = None) -> str:
    """Nodes drawing N(0, 1) of `shape` by Box-Muller (`algorithm.normal`); same arguments as
    `seeded_uniform`. The uniforms are exact; Log, Sqrt and Cos round as the runtime does."""
    np_dtype = _float_dtype(dtype)
    if _is_empty(shape):
        return _empty(b, shape, np_dtype, output)
    words, high, second = _generate(b, table, seed, key, shape, iteration, rank)
    above_zero = b.op("Add", [high, words.const(1)], "bits_plus_one")
    u1 = _unit(words, above_zero, dtype, alg.UNIT, "u1")
    with_cos_op = np_dtype == np.float32 and b.opset >= alg.COS_OPSET
    u2 = _unit(words, _join(words, *second, "bits_b"), dtype, alg.UNIT, "u2") \
        if with_cos_op else None
    minus_two = b.constant(np.array(-2.0, dtype=np_dtype), "minus_two")
    radius = b.op("Sqrt", [b.op("Mul", [b.op("Log", [u1], "log_u1"), minus_two], "m2log")],
                  "radius")
    if u2 is not None:
        angle = b.op("Mul", [u2, b.constant(np.array(alg.TWO_PI_F32), "two_pi")], "angle")
        cos = b.op("Cos", [angle], "cos")
    else:  # no float64 Cos op (IREE links none), no Cos before opset 7: `seeded.cosine`
        cos = cos_of_turns(b, *second)
        if np_dtype == np.float32:  # made in float64, rounded once (`algorithm.normal`)
            cos = b.op("Cast", [cos], "cos_float", to=onnx.TensorProto.FLOAT)
    flat = b.op("Mul", [radius, cos], "normal")
    return _reshape(b, flat, shape, output, "normal_shaped", words, rank)


@_pruned
def seeded_gumbel(b: NodeBuilder, seed: str, key: int, shape: Sequence[int] | str,
                  iteration: Loops = None, dtype: int = onnx.TensorProto.FLOAT,
                  output: str | None = None, table: str | None = None,
                  rank: Rank = None) -> str:
    """Nodes drawing Gumbel(0, 1) of `shape` as -log(-log v), v in (0, 1) open
    (`algorithm.gumbel`); same arguments as `seeded_uniform`. v is exact; Log rounds as the
    runtime does."""
    np_dtype = _float_dtype(dtype)
    if _is_empty(shape):
        return _empty(b, shape, np_dtype, output)
    words, high, second = _generate(b, table, seed, key, shape, iteration, rank)
    if np_dtype == np.float32:
        unit = _unit(words, _odd(words, high, "odd"), dtype, alg.UNIT, "open_unit")
    else:
        low = _join(words, *second, "bits_b")
        unit = b.op("Add", [_unit(words, high, dtype, alg.UNIT, "open_hi"),
                            _unit(words, _odd(words, low, "odd"), dtype, alg.UNIT * alg.UNIT,
                                  "open_lo")], "open_unit")
    exponential = b.op("Neg", [b.op("Log", [unit], "log_v")], "exponential")
    flat = b.op("Neg", [b.op("Log", [exponential], "log_e")], "gumbel")
    return _reshape(b, flat, shape, output, "gumbel_shaped", words, rank)


def _odd(words: _Words, bits: str, hint: str) -> str:
    """bits // 2 * 2 + 1: the lowest bit set (values stay below 2^24)."""
    b = words.b
    half = b.op("Div", [bits, words.const(2)], hint + "_half")
    return b.op("Add", [b.op("Mul", [half, words.const(2)], hint + "_even"), words.const(1)],
                hint)


def _is_empty(shape) -> bool:
    return not isinstance(shape, str) and 0 in [int(d) for d in shape]


def _empty(b: NodeBuilder, shape, np_dtype: type, output: str | None) -> str:
    """A static shape with a 0 dim: no draw at all (Reshape would read the 0 as "copy")."""
    empty = b.constant(np.zeros([int(d) for d in shape], dtype=np_dtype), "empty")
    return b.op("Identity", [empty], "empty_draw", output=output)


def _float_dtype(dtype: int) -> type:
    if dtype not in _FLOATS:
        raise ModelError(f"dtype={onnx.TensorProto.DataType.Name(dtype)}: the seeded generator "
                         f"draws FLOAT or DOUBLE")
    return _FLOATS[dtype]


def _draw_words(words: _Words, seed: str, key: int, shape, iteration: Loops, rank: Rank):
    """The first 24-bit integer per element and the two 12-bit words of the second (int64
    tensors): flat, or in the draw's shape when
    it is a runtime shape of known rank."""
    b = words.b
    if b.opset < MIN_OPSET:
        raise ModelError(f"the seeded generator needs opset {MIN_OPSET} or later (integer Add, "
                         f"Sub, Mul and Div); the model uses opset {b.opset}")
    if not 0 <= key < 1 << alg.NODE_KEY_BITS:
        raise ModelError(f"key={key} is not a {alg.NODE_KEY_BITS}-bit node key")
    stream = words.split(seed, alg.SEED_BITS, "seed")
    loops = [] if iteration is None else [iteration] if isinstance(iteration, str) \
        else list(iteration)
    if loops:
        stream += words.split(loops[0], alg.ITERATION_BITS, "iteration")
    else:
        stream += [words.const(0), words.const(0)]
    stream_key = words.feistel(stream, alg.split_words(key, 4), alg.STREAM_ROUNDS, "stream")
    for depth, inner in enumerate(loops[1:], start=2):  # nested loops: `algorithm.stream_key`
        inner_words = words.split(inner, alg.ITERATION_BITS, f"iteration{depth}")
        stream_key = words.feistel(inner_words + [words.const(0), words.const(0)], stream_key,
                                   alg.STREAM_ROUNDS, f"stream{depth}")
    counter = _counter_words(words, shape, rank)
    y0, y1, y2, y3 = words.feistel(counter, stream_key, alg.ELEMENT_ROUNDS, "elem")
    return _join(words, y0, y1, "bits_a"), (y2, y3)


def _join(words: _Words, high: str, low: str, hint: str) -> str:
    scaled = words.b.op("Mul", [high, words.const(alg.WORD)], hint + "_high")
    return words.b.op("Add", [scaled, low], hint)


def _counter_words(words: _Words, shape, rank: Rank) -> list[str]:
    """Counter words (low, mid, high, 0) of the flat indices 0..count-1 (in the draw's shape
    when it is a runtime shape of known rank)."""
    b = words.b
    static = None if isinstance(shape, str) else [int(d) for d in shape]
    if static is not None:
        count = int(np.prod(static, dtype=np.int64))
        if count > 1 << alg.COUNTER_BITS:
            raise ModelError(f"shape={static} has more than 2^{alg.COUNTER_BITS} elements, the "
                             f"seeded generator's limit")
    if static is None and b.opset < NONZERO_OPSET:
        raise ModelError(f"a seeded draw of runtime shape needs Range (opset "
                         f"{RANGE_OPSET}) or NonZero (opset {NONZERO_OPSET}); the model "
                         f"uses opset {b.opset}: fix the shape (a static shape) or use "
                         f"input-noise")
    if static is None and rank is not None:
        index = _grid_index(words, shape, rank)
    elif static is None and b.opset < RANGE_OPSET:
        index = _nonzero_index(words, shape)
    elif b.opset < RANGE_OPSET:
        # before opset 9 in the draw's own shape: a Reshape's shape is then a Cast of a double
        # constant (`NodeBuilder.constant`), which onnx inference cannot read, so a reshaped
        # draw had no rank (IREE typed it as a scalar); every later step is elementwise
        index = np.arange(count, dtype=np.int64).reshape(static if b.opset < 9 else [-1])
        return [b.constant(index % alg.WORD, "counter_lo"),
                b.constant(index // alg.WORD % alg.WORD, "counter_mid"),
                b.constant(index // (alg.WORD * alg.WORD), "counter_hi"), words.const(0)]
    else:
        total = words.const(count) if static is not None else _runtime_count(words, shape)
        index = b.op("Range", [words.const(0), total, words.const(1)], "index")
    rows = words.div(index, "index_rows")
    return [words.mod(index, "counter_lo"), words.mod(rows, "counter_mid"),
            words.div(rows, "counter_hi"), words.const(0)]


def _grid_index(words: _Words, shape: str, rank: int | Sequence[int | None]) -> str:
    """The flat indices 0..count-1 built directly in the runtime shape (of `rank` dims): each
    axis' positions (`_positions`) placed on their axis, times the axis' stride (the product
    of the later dims, each a `_count` of the positions), summed by broadcasting; a 0 dim
    gives an empty draw by itself.

    Why not Range(count) reshaped to the shape: before opset 14 onnx shape inference gives a
    Reshape to a runtime shape no rank, which IREE's importer then types as a scalar (it took
    the first element and broadcast it: every element of the draw equal), and TVM converts
    no Equal on a shape (the 0-dim guard). Every tensor here has a known rank."""
    b = words.b
    known = [None] * rank if isinstance(rank, int) else list(rank)
    if not known:
        return words.const(0)
    index = stride = None
    for axis in reversed(range(len(known))):
        static = known[axis]
        if static is not None:
            size = words.const(int(static))
            positions = b.op("Range", [words.const(0), size, words.const(1)], f"axis{axis}") \
                if b.opset >= RANGE_OPSET else b.constant(np.arange(static, dtype=np.int64),
                                                          f"axis{axis}")
        else:
            positions = _positions(words, shape, axis, f"axis{axis}")
            size = _count(words, positions, f"axis{axis}_size") if axis else None
        placed = _place(b, positions, axis, len(known), f"axis{axis}_placed")
        term = placed if stride is None else b.op("Mul", [placed, stride], f"axis{axis}_term")
        index = term if index is None else b.op("Add", [index, term], f"index{axis}")
        if axis:
            stride = size if stride is None else b.op("Mul", [stride, size], f"stride{axis}")
    return index


def _count(words: _Words, positions: str, hint: str) -> str:
    """The length of a 1-D tensor as a sum of ones made from it (ReduceSum of positions * 0
    + 1): the dim, but one that tract holds as a number. tract keeps a value read from a
    shape as a symbol (the dim's name) where the dim is symbolic, and its optimizer refuses a
    Mul by a symbol ("Undetermined symbol in expression"); a Range by one is fine. TVM
    converts no ConstantOfShape of a dim read from a shape, so the ones come from the
    positions. An empty axis sums to 0."""
    b = words.b
    zeros = b.op("Mul", [positions, words.const(0)], hint + "_zeros")
    ones = b.op("Add", [zeros, words.const(1)], hint + "_ones")
    return b.op("ReduceSum", [ones], hint, keepdims=0)


def _positions(words: _Words, shape: str, axis: int, hint: str) -> str:
    """0..dim-1 (1-D int64) for axis `axis` of `shape`: Range, or before opset 11 the
    positions of a ConstantOfShape of ones as NonZero lists them (in order)."""
    b = words.b
    if b.opset >= RANGE_OPSET:
        dim = b.op("Gather", [shape, words.const(axis)], hint + "_dim", axis=0)
        return b.op("Range", [words.const(0), dim, words.const(1)], hint)
    dim_1d = b.op("Gather", [shape, b.constant(np.array([axis], dtype=np.int64),
                                               hint + "_index")], hint + "_dim", axis=0)
    ones = b.op("ConstantOfShape", [dim_1d], hint + "_ones",
                value=onnx.numpy_helper.from_array(np.array([1], dtype=np.int32)))
    return b.op("Squeeze", [b.op("NonZero", [ones], hint + "_nonzero")], hint, axes=[0])


def _place(b: NodeBuilder, name: str, axis: int, rank: int, hint: str) -> str:
    """A 1-D tensor as axis `axis` of a rank-`rank` tensor (the other dims 1): a Reshape to a
    constant shape, which onnx inference types at every opset (IREE's import takes Unsqueeze
    only from opset 13); the -1 reads 0 for an empty axis."""
    if rank == 1:
        return name
    dims = np.ones(rank, dtype=np.int64)
    dims[axis] = -1
    return b.op("Reshape", [name, b.constant(dims, hint + "_shape")], hint)


def _nonzero_index(words: _Words, shape: str) -> str:
    """0..count-1 for a runtime shape before Range (opsets 9 and 10): the positions of a
    flattened ConstantOfShape of ones, as NonZero lists them (in order)."""
    b = words.b
    ones = b.op("ConstantOfShape", [_no_zero_dims(words, shape)], "ones",
                value=onnx.numpy_helper.from_array(np.array([1], dtype=np.int32)))
    flat = b.op("Reshape", [ones, b.constant(np.array([-1], dtype=np.int64), "flat")],
                "ones_flat")
    rows = b.op("NonZero", [flat], "positions")
    return b.op("Reshape", [rows, b.constant(np.array([-1], dtype=np.int64), "flat_index")],
                "index")


def _unit(words: _Words, bits: str, dtype: int, scale: float, hint: str) -> str:
    """An integer < 2^24 as a float of `dtype` times a power of two: exact on every runtime."""
    b = words.b
    as_float = b.op("Cast", [bits], hint + "_float", to=dtype)
    return b.op("Mul", [as_float, b.constant(np.array(scale, dtype=_FLOATS[dtype]),
                                             hint + "_scale")], hint)


def _runtime_count(words: _Words, shape: str) -> str:
    """The element count of `shape` (0 dims counted as 1), an int64 scalar. Not ReduceProd:
    onnx2torch has no ReduceProd-18; the length of a flattened ConstantOfShape is portable."""
    b = words.b
    ones = b.op("ConstantOfShape", [_no_zero_dims(words, shape)], "ones",
                value=onnx.numpy_helper.from_array(np.array([1], dtype=np.int32)))
    flat = b.op("Reshape", [ones, b.constant(np.array([-1], dtype=np.int64), "flat")],
                "ones_flat")
    return b.op("Reshape", [b.op("Shape", [flat], "count_1d"),
                            b.constant(np.array([], dtype=np.int64), "scalar")], "count")


def _no_zero_dims(words: _Words, shape: str) -> str:
    """The runtime shape with every 0 dim made 1 (made once per draw): Reshape reads a 0 as
    "copy this dim" (allowzero, opset 14, is not portable), so the draw is made in this shape
    and expanded to the real one; with no 0 dim the two are the same."""
    b = words.b
    if words.no_zero_shape is None:
        zero = b.op("Equal", [shape, words.const(0)], "dim_is_zero")
        as_int = b.op("Cast", [zero], "zero_dims", to=onnx.TensorProto.INT64)
        words.no_zero_shape = b.op("Add", [shape, as_int], "shape_no_zero")
    return words.no_zero_shape


def _reshape(b: NodeBuilder, flat: str, shape, output: str | None, hint: str,
             words: _Words, rank: Rank) -> str:
    if isinstance(shape, str) and rank is not None:  # made in its shape (`_grid_index`)
        # an Expand to the same shape: a no-op that ties the draw's dims to the shape's (TVM
        # cannot tell that the length of the generator's own Range equals the source's dim,
        # so it converted no broadcast of the draw with the model's tensors of that shape)
        return b.op("Expand", [flat, shape], hint, output=output)
    if not isinstance(shape, str):
        if b.opset < 9:  # already in its shape (`_counter_words`)
            return b.op("Identity", [flat], hint, output=output)
        return b.op("Reshape", [flat, b.constant(np.array(list(shape), dtype=np.int64),
                                                 "shape")], hint, output=output)
    shaped = b.op("Reshape", [flat, _no_zero_dims(words, shape)], hint + "_full")
    # the same shape, or 1 where the real dim is 0: Expand broadcasts those 1s to 0
    return b.op("Expand", [shaped, shape], hint, output=output)
