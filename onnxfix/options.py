"""Typed, validated options of a rewrite and of its check.

Both are frozen dataclasses validated once, when they are made: a bad value raises a
UsageError naming the API parameter (`mode='x': choose one of ...`); the CLI builds the same
objects from its flags and prints the parameter names as flags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from onnxfix.errors import UsageError, param, param_name
from onnxfix.graph.find import Selector, make_selector
from onnxfix.ops import MULTINOMIAL_FORMS
from onnxfix.passes.emit import DEFAULT_MAX_DRAW_BYTES, MODES, NOISE_DTYPES

# Sizes the check gives symbolic dims: beyond this, synthetic inputs stop being a test.
MAX_CHECK_SIZE = 2**16


@dataclass(frozen=True)
class RewriteOptions:
    """What to rewrite and how.

    mode: "input-noise" (standard noise as new graph inputs), "constant" (seeded draws),
        "deterministic" (the mean / most probable outcome, no mask) or "seeded" (an in-graph
        counter-based generator driven by one int64 `seed` input: the same draws on every
        runtime; noise_dtype and noise_bounds do not apply).
    seed: seeds constant-mode draws (and the check's synthetic inputs).
    dims: sizes for symbolic dims, fixed model-wide (constant mode needs concrete shapes).
    noise_dtype: "same", "float32" or "float16": the dtype noise inputs are fed in (cast
        in-graph to what the transform computes in: float32 or wider for Bernoulli,
        Multinomial and Dropout). float16 is refused (UsageError) for Bernoulli and
        Multinomial, whose samples it would bias.
    noise_bounds: upper bounds of data-dependent noise dims, by the name the error and the
        report give (`<noise input>:<axis>`), e.g. {"noise_z:2": 400}: that axis is declared
        with the bound and the graph slices what each run needs.
    max_draw_bytes: cap on the bytes constant-mode draws may take.
    multinomial: "inverse-cdf" (noise [batch, sample_size]: one uniform per sample) or
        "gumbel" (Gumbel-max, noise [batch, sample_size, classes]: one Add and an ArgMax,
        the same class on every runtime).
    only / exclude: glob patterns over node names and output names selecting the nodes to
        rewrite; unselected random nodes stay as they are (the report says so).
    """

    mode: str = "input-noise"
    seed: int = 0
    dims: Mapping[str, int] = field(default_factory=dict)
    noise_dtype: str = "same"
    noise_bounds: Mapping[str, int] = field(default_factory=dict)
    max_draw_bytes: int = DEFAULT_MAX_DRAW_BYTES
    multinomial: str = "inverse-cdf"
    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("dims", "noise_bounds"):
            object.__setattr__(self, name, dict(getattr(self, name) or {}))
        for name in ("only", "exclude"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        _choose("mode", self.mode, MODES)
        _choose("noise_dtype", self.noise_dtype, tuple(NOISE_DTYPES))
        _choose("multinomial", self.multinomial, MULTINOMIAL_FORMS)
        if self.mode == "seeded":
            _refuse_for_seeded(self.noise_dtype, self.noise_bounds)
        if self.seed < 0:
            raise UsageError(f"{param('seed', self.seed)}: the seed must be a non-negative "
                             f"integer")
        if not self.max_draw_bytes > 0:
            raise UsageError(f"{param('max_draw_bytes', self.max_draw_bytes)}: must be a "
                             f"positive number of bytes")

    @property
    def select(self) -> Selector | None:
        """The --only / --exclude predicate over sites, or None (every site)."""
        return make_selector(list(self.only), list(self.exclude))


@dataclass(frozen=True)
class CheckSettings:
    """How the parity check runs.

    enabled: run the conditional parity check in onnxruntime (ParityError on failure).
    atol / rtol: tolerances (default by dtype).
    size: the size symbolic dims take in the check (synthetic inputs); a dynamic model runs
        again at size + 1 when the first size was cheap.
    inputs: real inputs instead of synthetic ones: a path to an .npz file or a dict input
        name -> array; the check then runs once, on them.
    memory_mb / timeout: the check's memory cap (default min(8 GiB, half the RAM)) and time
        limit (default 300 s); a check that exceeds them is skipped.
    fail_on_skip: a skipped check raises ParityError (and nothing is written) instead of
        writing the output unverified.
    """

    enabled: bool = True
    atol: float | None = None
    rtol: float | None = None
    size: int = 2
    inputs: str | os.PathLike | dict | None = None
    memory_mb: float | None = None
    timeout: float | None = None
    fail_on_skip: bool = False

    def __post_init__(self):
        if not 1 <= self.size <= MAX_CHECK_SIZE:
            raise UsageError(f"{param('check_size', self.size)}: must be an integer from 1 "
                             f"to {MAX_CHECK_SIZE}")
        for name, value in (("atol", self.atol), ("rtol", self.rtol)):
            if value is not None and not value >= 0:
                raise UsageError(f"{param(name, value)}: a tolerance must be a non-negative "
                                 f"number")
        if self.fail_on_skip and not self.enabled:
            raise UsageError(f"{param('fail_on_skip', True)} with {param('check', False)}: "
                             f"a check that is not run would always fail")
        if self.memory_mb is not None or self.timeout is not None:
            # a bad value is refused before any work; the check's module (multiprocessing,
            # resource limits) is imported only when there is a value to judge
            from onnxfix.check.check_guard import make_limits  # noqa: PLC0415

            make_limits(self.memory_mb, self.timeout)


def _refuse_for_seeded(noise_dtype: str, noise_bounds: Mapping[str, int]) -> None:
    seeded = param("mode", "seeded", hint=True)
    if noise_dtype != "same":
        raise UsageError(f"{param('noise_dtype', noise_dtype, hint=True)} with {seeded}: a "
                         f"seeded model has no noise inputs (its draws are made in-graph)")
    if noise_bounds:
        raise UsageError(f"{param_name('noise_bounds')} with {seeded}: a seeded draw takes the "
                         f"size each run computes, so it needs no bound")


def _choose(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{param(name, value)}: choose one of {', '.join(allowed)}")
