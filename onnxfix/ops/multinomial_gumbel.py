"""Multinomial by Gumbel-max: ArgMax(logits + g), one standard Gumbel g per sample and class.

The alternative to the inverse CDF (RewriteOptions(multinomial="gumbel")): its noise is
[batch, sample_size, classes], C times the inverse CDF's, but the graph is one Add and an
ArgMax. An Add is correctly rounded on every runtime, so every runtime picks the same class
for the same noise; the inverse CDF goes through Softmax and a cumulative sum, which runtimes
round an ulp apart, so a u near a class boundary picks the adjacent class there. The Gumbel
values are drawn on the host (-log(-log u) in-graph would put a Log, which runtimes may round
differently, in front of the ArgMax).
"""

from __future__ import annotations

import zlib

import numpy as np
from onnx import TensorProto

from onnxfix.ops.base import Improbable, Inconsistent, narrow_uniform_problem, widened
from onnxfix.ops.multinomial import MultinomialOp
from onnxfix.ops.noise import GUMBEL

FORM = "gumbel"  # RewriteOptions.multinomial value, and the record's distribution["form"]
# How far (in steps of the noise dtype) a non-chosen class may be pushed below the chosen
# one before standardize gives up (only rounding ties need it).
MAX_NUDGES = 16


class MultinomialGumbelOp(MultinomialOp):
    """Gumbel-max: sample = ArgMax over classes of logits + g, g ~ Gumbel(0, 1) i.i.d."""

    family = GUMBEL

    def noise_dtype_problem(self, node, fed: int) -> str:
        return narrow_uniform_problem(node, fed, lambda name, step: (
            f"{name} Gumbel noise ties between classes, which ArgMax then resolves to the "
            f"lower class id"))

    def noise_shape(self, node, shape_of) -> list | None:
        logits = shape_of(node.input[0])
        batch, classes = (logits if logits is not None and len(logits) == 2 else (None, None))
        return [batch, self._samples(node), classes]

    def noise_dims(self, batch: int, samples: int, classes: int) -> list[int]:
        return [batch, samples, classes]

    def draw_axis(self, k: int) -> int | None:
        return k if k < 2 else None

    def source_axes(self, rank: int) -> list[int | None]:
        """Batch follows the logits' axis 0, the samples an attribute, classes axis 1."""
        return [0, None, 1][:rank]

    def distribution(self, attrs: dict) -> dict:
        return {"family": GUMBEL, "form": FORM,
                "noise": "standard Gumbel(0, 1) [batch, sample_size, classes]",
                "sample_size": int(attrs.get("sample_size", 1)),
                "transform": "Gumbel-max: ArgMax over classes of logits + noise"}

    def transform_text(self, attrs: dict) -> str:
        return "ArgMax over classes of logits + noise (Gumbel-max)"

    def transform(self, b, noise, node, attrs, dt) -> None:
        logits = widened(b, node.input[0], dt, "logits_wide")
        # [batch, 1, classes] + [batch, samples, classes]
        scores = b.op("Add", [b.unsqueeze(logits, 1, "logits_3d"), noise], "perturbed")
        last = dt.draw == TensorProto.INT64
        pick = b.op("ArgMax", [scores], "gumbel_max", axis=2, keepdims=0,
                    output=node.output[0] if last else None)
        if not last:
            b.op("Cast", [pick], "cast", output=node.output[0], to=dt.draw)

    def forward(self, noise, attrs, inputs) -> dict:
        logits = np.asarray(inputs[0]).astype(noise.dtype)
        return {0: np.argmax(logits[:, None, :] + noise, axis=2)}

    def standardize(self, outputs, attrs, inputs, noise_dtype) -> np.ndarray:
        """Gumbel noise drawn given the captured sample: the winner's perturbed score M is
        Gumbel(logsumexp(logits)), every other class's a Gumbel truncated below M (the
        exact conditional law of Gumbel-max); rounding ties are then pushed below."""
        picks = np.asarray(outputs[0]).astype(np.int64)
        logits = np.asarray(inputs[0]).astype(np.float64)
        classes = logits.shape[1]
        if picks.size and (picks.min() < 0 or picks.max() >= classes):
            raise Inconsistent("a Multinomial sample lies outside its class range")
        seed = zlib.crc32(picks.tobytes()) ^ zlib.crc32(logits.tobytes())
        g = _conditional_gumbel(np.random.default_rng(seed), logits, picks)
        return _strict(g.astype(np.dtype(noise_dtype)), logits, picks)

    def standardize_frozen(self, draw, distribution):
        raise Inconsistent("a frozen Multinomial draw has no Gumbel noise")

    def own_reference(self, nodes, noise: str) -> str | None:
        return None  # one correctly rounded Add: the captured logits are the reference


def _conditional_gumbel(rng: np.random.Generator, logits: np.ndarray,
                        picks: np.ndarray) -> np.ndarray:
    """float64 Gumbel noise [batch, samples, classes] under which each pick wins."""
    batch, samples = picks.shape
    classes = logits.shape[1]
    rows = np.arange(batch)[:, None]
    chosen = logits[rows, picks]  # [batch, samples]
    if np.isneginf(chosen).any():
        raise Inconsistent("a Multinomial sample picked a class of probability 0")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        top = logits.max(axis=1, keepdims=True)
        lse = top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True))  # [batch, 1]
        best = lse + rng.gumbel(size=(batch, samples))  # M, the winner's perturbed score
        free = logits[:, None, :] + rng.gumbel(size=(batch, samples, classes))
        # truncated below M: -log(exp(-M) + exp(-free)), in a stable form
        lo = np.minimum(best[..., None], free)
        hi = np.maximum(best[..., None], free)
        below = lo - np.log1p(np.exp(lo - hi))
        g = below - logits[:, None, :]
    g = np.where(np.isfinite(logits)[:, None, :], g, rng.gumbel(size=g.shape))
    g[rows, np.arange(samples)[None, :], picks] = best - chosen
    return g


def _strict(g: np.ndarray, logits: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """g (noise dtype) with every non-chosen score strictly below the chosen one, as the
    transform computes them in that dtype (ArgMax takes the first of equal scores)."""
    dt = g.dtype
    lw = logits.astype(dt)[:, None, :]
    idx = (np.arange(picks.shape[0])[:, None], np.arange(picks.shape[1])[None, :], picks)
    classes = np.arange(g.shape[2])
    for _ in range(MAX_NUDGES):
        scores = lw + g
        win = scores[idx][..., None]
        bad = (scores >= win) & (classes != picks[..., None]) & np.isfinite(lw)
        if not bad.any():
            return g
        g = np.where(bad, np.nextafter(g - (scores - win), dt.type(-np.inf)), g)
    raise Improbable(f"a Multinomial sample is too improbable to reproduce in {dt.name} "
                       f"Gumbel noise")


__all__ = ["FORM", "MultinomialGumbelOp"]


# Alternative forms of an op's rewrite, chosen by an option (the registry collects them).
FORMS = {("Multinomial", "gumbel"): MultinomialGumbelOp()}
