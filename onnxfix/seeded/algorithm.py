"""The seeded generator in numpy: the reference every ONNX build matches bit for bit.

Why this shape of algorithm: some runtimes compute integers through float32 (measured: OpenVINO's
CPU plugin for integer Div and Mod, MNN for integer Mul) and some narrow int64 to int32
(OpenVINO, MNN). Every integer the generator holds therefore stays below 2^24, where float32,
int32 and int64 all compute exactly: the state is four 12-bit words (`WORD`), sums are of two
words, no product exceeds 2^24. The non-linear step is a table look-up (Gather from a fixed
S-box, a permutation of 0..4095), which is a copy on every runtime, never arithmetic. No bitwise
op is needed, so one algorithm serves every opset from 6 on (integer Add, Sub, Mul, Div).

The permutation is a type-2 generalized Feistel network on the four words: each round
    (x0, x1, x2, x3) -> (x1 + S[x0 + k0] mod W, x2, x3 + S[x2 + k1] mod W, x0)
with round keys k0, k1 in [0, W) (the S-box is stored twice over, so x + k indexes it without a
Mod). It is a bijection for any key. It is applied twice:

1. per stream (scalars, cheap): the words (seed low, seed high, iteration low, iteration high)
   are permuted under the 48-bit node key, giving the stream key K0..K3 (in nested loops,
   each inner loop's index, as words (low, high, 0, 0), is permuted once more under the key
   so far: `stream_key`);
2. per element: the words (counter low, mid, high, 0) are permuted under K0..K3.

Distinct counters in one stream therefore give distinct 48-bit outputs. The first 24 bits make
a float32 uniform exactly: an integer < 2^24, cast to float32 (exact), times 2^-24 (exact, a
power of two). Normals use Box-Muller on the two 24-bit halves; float64 uniforms use all 48.

Rounds: the statistical suite (tests/test_seeded_generator.py, 2^20 draws) fails at 4 rounds
(pairs of neighbours) and passes from 5; 10 are used for both permutations.

Limits: seeds and iteration indices are taken modulo 2^24 (floor mod, so -1 is 2^24 - 1); a
draw has at most 2^36 elements. Runtimes that compute integers through float32 (OpenVINO, MNN)
hold a value exactly only below 2^24, so they agree bit for bit for seeds and iteration indices
in [0, 2^24) and draws of at most 2^24 elements.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import numpy as np

from onnxfix.seeded.cosine import reference as cosine_of_turns

WORD_BITS = 12
WORD = 1 << WORD_BITS            # every word is in [0, WORD)
SEED_BITS = 2 * WORD_BITS        # seeds are taken modulo 2^24
ITERATION_BITS = 2 * WORD_BITS   # iteration indices modulo 2^24
COUNTER_BITS = 3 * WORD_BITS     # at most 2^36 elements per draw
NODE_KEY_BITS = 4 * WORD_BITS    # a node key is 48 bits
KEY_STEPS = (2897, 1747)         # Weyl steps of the round keys (odd, < WORD)
STREAM_ROUNDS = 10
ELEMENT_ROUNDS = 10
UNIT = 2.0 ** -SEED_BITS         # one step of a 24-bit uniform
TWO_PI_F32 = np.float32(2 * np.pi)
COS_OPSET = 7  # the Cos op; before it a float32 normal's cosine is `cosine`'s polynomial
# a draw's loop iteration: None (no loop), an index, or one index per enclosing loop
Iteration = int | Sequence[int] | None


def node_key(text: str) -> int:
    """A stable 48-bit key for a random node (e.g. from its graph path, op type and output)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % (1 << NODE_KEY_BITS)


def split_words(value: int, count: int) -> list[int]:
    """`value`'s low `count` 12-bit words, least significant first."""
    return [(value >> (WORD_BITS * i)) % WORD for i in range(count)]


@functools.cache
def _sbox() -> np.ndarray:
    """A fixed permutation of 0..WORD-1 (sorted by a hash: the same on every machine, forever),
    stored twice over so that a word plus a round key (< 2 WORD) indexes it directly. Made on
    first use (4096 hashes: a few ms of every start-up when it was made at import)."""
    order = sorted(range(WORD), key=lambda i: hashlib.sha256(b"onnxfix-seeded-sbox-%d" % i)
                   .digest())
    table = np.array(order, dtype=np.int64)
    return np.concatenate([table, table])


def __getattr__(name: str):
    if name == "SBOX":  # the table, made when first read (module attribute, PEP 562)
        return _sbox()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def round_key(key_word, round_index: int, lane: int):
    """Round `round_index`'s key for lane 0 or 1: the key pair alternates between (K0, K1) and
    (K2, K3), and each round adds a Weyl step. `key_word` is an int or an array."""
    return (key_word + round_index * KEY_STEPS[lane] % WORD) % WORD


def permute(words, key_words, rounds: int):
    """The Feistel permutation of four words (int64 scalars or arrays, all < WORD)."""
    x0, x1, x2, x3 = words
    sbox = _sbox()
    for r in range(rounds):
        pair = key_words[:2] if r % 2 == 0 else key_words[2:]
        k0, k1 = round_key(pair[0], r, 0), round_key(pair[1], r, 1)
        x0, x1, x2, x3 = (x1 + sbox[x0 + k0]) % WORD, x2, (x3 + sbox[x2 + k1]) % WORD, x0
    return x0, x1, x2, x3


def iteration_indices(iteration: Iteration) -> tuple[int, ...]:
    """A draw's loop iteration indices, outermost loop first: None (no loop), an int (one
    loop) or a sequence of ints (nested loops)."""
    if iteration is None:
        return ()
    if isinstance(iteration, (int, np.integer)):
        return (int(iteration),)
    return tuple(int(i) for i in iteration)


def stream_key(seed: int, key: int, iteration: Iteration = None) -> list[np.int64]:
    """The four words keying one node's stream for `seed` (and loop `iteration`: an int, or
    one index per enclosing loop, outermost first).

    The words (seed low, seed high, outermost index low, high) are permuted under the node
    key; each further (inner) index, as words (low, high, 0, 0), is then permuted under the
    key so far: a bijection of the inner index for every outer path, and one loop or none is
    the single step it always was."""
    indices = iteration_indices(iteration)
    seed_words = split_words(int(seed) % (1 << SEED_BITS), 2)
    first = indices[0] % (1 << ITERATION_BITS) if indices else 0
    words = [np.int64(w) for w in seed_words + split_words(first, 2)]
    keys = list(permute(words, [np.int64(w) for w in split_words(key, 4)], STREAM_ROUNDS))
    for inner in indices[1:]:
        words = [np.int64(w) for w in split_words(inner % (1 << ITERATION_BITS), 2)] + \
            [np.int64(0), np.int64(0)]
        keys = list(permute(words, keys, STREAM_ROUNDS))
    return keys


def element_words(seed: int, key: int, count: int, iteration: Iteration = None):
    """The four output words for flat indices 0..count-1 of one stream."""
    if count > 1 << COUNTER_BITS:
        raise ValueError(f"count={count} exceeds the generator's 2^{COUNTER_BITS} elements")
    index = np.arange(count, dtype=np.int64)
    counter = (index % WORD, index // WORD % WORD, index // (WORD * WORD),
               np.zeros_like(index))
    return permute(counter, stream_key(seed, key, iteration), ELEMENT_ROUNDS)


def uniform_bits(seed: int, key: int, count: int, iteration: Iteration = None):
    """Two 24-bit integers per element (int64 arrays): the first makes the uniform."""
    y0, y1, y2, y3 = element_words(seed, key, count, iteration)
    return y0 * WORD + y1, y2 * WORD + y3


def uniform(seed: int, key: int, shape, dtype=np.float32, iteration: Iteration = None):
    """U[0, 1) in `shape`: float32 has 24 random bits, float64 48."""
    shape = tuple(int(d) for d in shape)
    a, b = uniform_bits(seed, key, int(np.prod(shape, dtype=np.int64)), iteration)
    if np.dtype(dtype) == np.float32:
        u = a.astype(np.float32) * np.float32(UNIT)
    elif np.dtype(dtype) == np.float64:
        u = a.astype(np.float64) * UNIT + b.astype(np.float64) * (UNIT * UNIT)
    else:
        raise ValueError(f"dtype={np.dtype(dtype)}: the generator makes float32 or float64")
    return u.reshape(shape)


def normal(seed: int, key: int, shape, dtype=np.float32, iteration: Iteration = None,
           opset: int | None = None):
    """N(0, 1) in `shape` by Box-Muller: sqrt(-2 log u1) * cos(2 pi u2), u1 in (0, 1].

    The same operations in the same order and dtype as the graph; a runtime's Log, Sqrt and
    Cos may differ from numpy's by a few ulps. opset: the model's (None: the latest). Before
    opset 7 there is no Cos op, so a float32 normal's cosine is the float64 polynomial of
    `onnxfix.seeded.cosine` rounded to float32 (the graph's Mul and Add: bit for bit)."""
    shape = tuple(int(d) for d in shape)
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype={dt}: the generator makes float32 or float64")
    a, b = uniform_bits(seed, key, int(np.prod(shape, dtype=np.int64)), iteration)
    u1 = (a + 1).astype(dt) * dt.type(UNIT)
    radius = np.sqrt(np.log(u1) * dt.type(-2.0))
    if dt == np.float32 and opset is not None and opset < COS_OPSET:
        cos = cosine_of_turns(b).astype(np.float32)
    else:
        u2 = b.astype(dt) * dt.type(UNIT)
        cos = np.cos(u2 * (TWO_PI_F32 if dt == np.float32 else dt.type(2 * np.pi)))
    return (radius * cos).reshape(shape)


def open_unit(a, b, dtype) -> np.ndarray:
    """A uniform in the open interval (0, 1) from the two 24-bit integers: an odd numerator
    (the lowest bit set), so neither 0 nor 1 is reachable and the value is exact in `dtype`
    (float32: 23 random bits over 2^24; float64: 47 over 2^48)."""
    dt = np.dtype(dtype)
    if dt == np.float32:
        return (a // 2 * 2 + 1).astype(np.float32) * np.float32(UNIT)
    return a.astype(np.float64) * UNIT + (b // 2 * 2 + 1).astype(np.float64) * (UNIT * UNIT)


def gumbel(seed: int, key: int, shape, dtype=np.float32, iteration: Iteration = None):
    """Gumbel(0, 1) in `shape`: -log(-log v), v = `open_unit` in (0, 1) (so finite: within
    [-2.82, 16.64] in float32). The same operations in the same order and dtype as the graph;
    a runtime's Log may differ from numpy's by an ulp."""
    shape = tuple(int(d) for d in shape)
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype={dt}: the generator makes float32 or float64")
    a, b = uniform_bits(seed, key, int(np.prod(shape, dtype=np.int64)), iteration)
    return (-np.log(-np.log(open_unit(a, b, dt)))).reshape(shape)


FAMILIES = {"normal": normal, "uniform": uniform, "gumbel": gumbel}


def family_draw(family: str, opset: int | None = None):
    """The reference draw function of a noise family ("normal", "uniform" or "gumbel"), as
    the generator makes it at `opset` (None: the latest; only normals differ, see `normal`)."""
    draw = FAMILIES.get(family)
    if draw is None:
        raise ValueError(f"family={family!r}: the seeded generator draws "
                         f"{', '.join(repr(f) for f in FAMILIES)}")
    if draw is normal and opset is not None:
        return functools.partial(normal, opset=opset)
    return draw


def standard_noise(family: str, seed: int, key: int, shape, dtype=np.float32,
                   iterations=None, opset: int | None = None) -> np.ndarray:
    """What one seeded node's generator feeds its transform, as input-noise mode's noise input
    holds it: family "normal", "uniform" or "gumbel"; with `iterations` (an int, or one count
    per enclosing loop, outermost first), a draw inside Loop/Scan bodies, stacked on one
    leading iteration axis per loop (element [i, j] is the draw of outer pass i, inner j);
    `opset`: the model's (see `normal`)."""
    draw = family_draw(family, opset)
    if iterations is None:
        return draw(seed, key, shape, dtype)
    counts = iteration_indices(iterations)
    out = np.zeros([*counts, *[int(d) for d in shape]], dtype=dtype)
    for index in np.ndindex(*counts):
        out[index] = draw(seed, key, shape, dtype, iteration=index)
    return out
