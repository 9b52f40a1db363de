"""The `onnxfix` command: flags -> typed options (onnxfix.options) -> onnxfix.api -> printed
lines. Also here: the one table from API parameter names to flags (errors name parameters,
the CLI prints flags), the one-line usage errors, and the printed summary of a report."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from typer.core import TyperCommand, TyperGroup

try:  # typer >= 0.22 carries its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError
    from typer._click.exceptions import UsageError as _ClickUsageError
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import NoArgsIsHelpError
    from click.exceptions import UsageError as _ClickUsageError


from onnxfix import __version__
from onnxfix.cli_params import install as install_plain_coercion
from onnxfix.cli_params import plain_help_option
from onnxfix.errors import ModelError, OnnxfixError, ParityError, UsageError, api_words
from onnxfix.reporter import Reporter

if TYPE_CHECKING:
    from onnxfix.options import CheckSettings, RewriteOptions
    from onnxfix.report import RewriteReport

# onnx, numpy and the rewrite itself (onnxfix.api, onnxfix.options, onnxfix.io) are imported
# inside the commands that need them: `onnxfix --help` starts with typer alone (issue 10)


class Mode(StrEnum):
    input_noise = "input-noise"
    constant = "constant"
    deterministic = "deterministic"
    seeded = "seeded"


class MultinomialForm(StrEnum):
    inverse_cdf = "inverse-cdf"
    gumbel = "gumbel"


class NoiseDtype(StrEnum):
    same = "same"
    float32 = "float32"
    float16 = "float16"


class Weights(StrEnum):
    same = "same"
    embedded = "embedded"
    external = "external"


class _PlainHelp:
    """A typer command or group whose --help option is coerced without pydantic (cli_params)."""

    def get_help_option(self, ctx):
        return plain_help_option(super().get_help_option(ctx))


class _Command(_PlainHelp, TyperCommand):
    pass


class _OneLineErrors(_PlainHelp, TyperGroup):
    """Usage errors as one line on stderr with exit 2, instead of a framed help box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        install_plain_coercion(self)
        try:
            code = super().main(args=args, prog_name=prog_name or "onnxfix",
                                complete_var=complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as e:
            typer.echo(e.format_message())
            sys.exit(2)
        except _ClickUsageError as e:
            _error(e.format_message(), 2)
        except (typer.Abort, KeyboardInterrupt):
            _error("aborted", 130)
        except OSError as e:  # e.g. a closed stdout in a pipeline
            _error(str(e), 3)
        # without standalone mode, click returns typer.Exit's code instead of exiting
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=_OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # plain click help: rendering it with rich imports rich and markdown-it, which took
    # longer than `import onnx, numpy` (issue 10: start-up)
    rich_markup_mode=None,
    help="Rewrite random-sampling nodes (RandomNormal(Like), RandomUniform(Like), Bernoulli, "
         "Multinomial, training Dropout) of ONNX models into noise inputs, seeded constants "
         "or deterministic values, and prove the rewrite in onnxruntime.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"onnxfix {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Make exported ONNX models with random-sampling nodes deployable."""


def _error(message: str, code: int):
    typer.echo(f"onnxfix: error: {message}", err=True)
    sys.exit(code)


class _Printer(Reporter):
    """Lines on stdout unless --quiet; detail lines only with --verbose; a transient progress
    spinner only on a terminal."""

    def __init__(self, quiet: bool, verbose: bool):
        super().__init__(None if quiet else typer.echo,
                         typer.echo if verbose and not quiet else None)
        self.quiet, self.verbose = quiet, verbose
        self.tty = sys.stderr.isatty() and not quiet

    def lines(self, lines: list[str]) -> None:
        """Several lines in one write (thousands of PASSED and summary lines at many draws)."""
        if self.sink is not None and lines:
            typer.echo("\n".join(lines))

    def step(self, text: str):
        if not self.tty:
            return contextlib.nullcontext()
        from rich.console import Console  # noqa: PLC0415 - a spinner, only on a terminal

        return Console(stderr=True).status(text)


# API parameter -> the flag that sets it: core errors name parameters, the CLI prints flags.
FLAGS = {
    "mode": "--mode", "seed": "--seed", "dims": "--dim", "noise_dtype": "--noise-dtype",
    "multinomial": "--multinomial",
    "noise_bounds": "--noise-bound", "max_draw_bytes": "--max-draw-mb", "only": "--only",
    "exclude": "--exclude", "weights": "--weights", "check": "--no-check",
    "atol": "--atol", "rtol": "--rtol", "check_size": "--check-size",
    "check_inputs": "--check-inputs", "check_memory_mb": "--check-memory-mb",
    "check_timeout": "--check-timeout", "fail_on_skip": "--fail-on-skip",
}


def _flag_words(name: str, kind: str, payload: str) -> str:
    """A parameter reference of an error message in the CLI's words (see errors.param)."""
    flag = FLAGS.get(name)
    if flag is None:
        return api_words(name, kind, payload)
    if kind == "n":
        return flag
    if kind == "e":
        items = [item.split("\x02", 1) for item in payload.split("\x03") if item]
        return " ".join(f"{flag} {k}={v}" for k, v in items)
    api_value, cli_value = payload.split("\x02", 1)
    if api_value in ("True", "False"):  # a switch: the flag alone says it
        return flag
    return f"{flag} {cli_value}"


def _fail(e: OnnxfixError):
    _error(e.render(_flag_words), e.exit_code)


_INPUT = typer.Argument(..., help="The .onnx model to rewrite (never modified), or a folder: "
                                  "every .onnx below it is rewritten.")
_OUTPUT = typer.Argument(..., help="Where to write the rewritten model (a folder when INPUT is "
                                   "one).")
_MODE = typer.Option(Mode.input_noise, "--mode", "-m",
                     help="input-noise: each draw becomes a graph input taking standard noise; "
                          "constant: a seeded draw frozen into the model; deterministic: the "
                          "mean / most probable outcome; seeded: an in-graph generator driven "
                          "by one int64 'seed' input (the same draws on every runtime).")
_SEED = typer.Option(0, "--seed", help="Seed for constant-mode draws and check inputs (seeded "
                                       "mode: the first seed its check runs).")
_DIM = typer.Option(None, "--dim", metavar="NAME=VALUE",
                    help="Fix a symbolic dim model-wide (repeatable).")
_NOISE_BOUND = typer.Option(None, "--noise-bound", metavar="NAME=N",
                            help="Upper bound of a data-dependent noise dim, named as the error "
                                 "or report gives it, e.g. noise_z:2=400 (repeatable).")
_ONLY = typer.Option(None, "--only", metavar="GLOB",
                     help="Rewrite only random nodes whose node name or output name matches "
                          "(repeatable).")
_EXCLUDE = typer.Option(None, "--exclude", metavar="GLOB",
                        help="Leave matching random nodes as they are (repeatable).")
_NOISE_DTYPE = typer.Option(NoiseDtype.same, "--noise-dtype",
                            help="dtype of the noise inputs (cast in-graph): same as the "
                                 "transform computes in, float32 or float16 (refused for "
                                 "Bernoulli and Multinomial: it would bias them).")
_MULTINOMIAL = typer.Option(MultinomialForm.inverse_cdf, "--multinomial",
                            help="Multinomial's rewrite: inverse-cdf (one uniform per sample) "
                                 "or gumbel (ArgMax(logits + Gumbel noise), noise [batch, "
                                 "samples, classes]: the same class on every runtime).")
_WEIGHTS = typer.Option(Weights.same, "--weights",
                        help="How OUT stores the weights: same layout as IN, embedded, or "
                             "external (OUT.data beside it).")
_REPORT = typer.Option(None, "--report", help="Write a JSON report here.")
_NO_CHECK = typer.Option(False, "--no-check", help="Skip the parity check.")
_ATOL = typer.Option(None, "--atol", help="Absolute tolerance (default by dtype: 1e-5 for "
                                          "float32).")
_RTOL = typer.Option(None, "--rtol", help="Relative tolerance (default by dtype: 1e-5 for "
                                          "float32).")
_CHECK_SIZE = typer.Option(2, "--check-size", help="Size given to symbolic dims in the check; "
                                                   "it runs again at size+1 when the first size "
                                                   "was cheap.")
_CHECK_INPUTS = typer.Option(None, "--check-inputs", metavar="FILE.npz",
                             help="Real inputs for the check (one array per input name); the "
                                  "check runs once, on them.")
_CHECK_MEMORY = typer.Option(None, "--check-memory-mb",
                             help="Memory cap of the check in MiB (default min(8192, half the "
                                  "RAM)); over it, the check is skipped.")
_CHECK_TIMEOUT = typer.Option(None, "--check-timeout",
                              help="Time limit of the check in seconds (default 300); over it, "
                                   "it is skipped.")
_FAIL_ON_SKIP = typer.Option(False, "--fail-on-skip",
                             help="A skipped check fails (exit 1, nothing written) instead of "
                                  "writing the output unverified.")
_MAX_DRAW_MB = typer.Option(256.0, "--max-draw-mb", help="Cap on constant-mode draws, in MiB.")
_QUIET = typer.Option(False, "--quiet", "-q", help="Print errors only.")
_VERBOSE = typer.Option(False, "--verbose", "-v",
                        help="Also print each node's replacement in full.")


@dataclass(frozen=True)
class _Job:
    """What every model of a run is rewritten with."""

    options: RewriteOptions
    settings: CheckSettings
    weights: str


@app.command("rewrite", cls=_Command)
def rewrite_cmd(
    input: Path = _INPUT, output: Path = _OUTPUT, mode: Mode = _MODE, seed: int = _SEED,
    dim: list[str] = _DIM, noise_bound: list[str] = _NOISE_BOUND, only: list[str] = _ONLY,
    exclude: list[str] = _EXCLUDE, noise_dtype: NoiseDtype = _NOISE_DTYPE,
    multinomial: MultinomialForm = _MULTINOMIAL, weights: Weights = _WEIGHTS,
    report: Path | None = _REPORT, no_check: bool = _NO_CHECK,
    atol: float | None = _ATOL, rtol: float | None = _RTOL, check_size: int = _CHECK_SIZE,
    check_inputs: Path | None = _CHECK_INPUTS, check_memory_mb: float | None = _CHECK_MEMORY,
    check_timeout: float | None = _CHECK_TIMEOUT, fail_on_skip: bool = _FAIL_ON_SKIP,
    max_draw_mb: float = _MAX_DRAW_MB, quiet: bool = _QUIET, verbose: bool = _VERBOSE,
) -> None:
    """Rewrite every random node of INPUT and write the result to OUTPUT."""
    from onnxfix.graph.noisedims import parse_bound_flags  # noqa: PLC0415 - see the imports
    from onnxfix.graph.shapes import parse_dim_flags  # noqa: PLC0415
    from onnxfix.io import check_writable, write_text_atomic  # noqa: PLC0415
    from onnxfix.options import CheckSettings, RewriteOptions  # noqa: PLC0415

    say = _Printer(quiet, verbose)
    try:
        dims = parse_dim_flags(dim)
        if not (math.isfinite(max_draw_mb) and max_draw_mb > 0):
            raise UsageError(f"--max-draw-mb {max_draw_mb}: must be a positive number")
        if report is not None:
            check_writable(report, "--report")
        options = RewriteOptions(mode=mode.value, seed=seed, dims=dims,
                                 noise_dtype=noise_dtype.value,
                                 multinomial=multinomial.value,
                                 noise_bounds=parse_bound_flags(noise_bound),
                                 max_draw_bytes=int(max_draw_mb * 2**20),
                                 only=tuple(only or ()), exclude=tuple(exclude or ()))
        settings = CheckSettings(enabled=not no_check, atol=atol, rtol=rtol, size=check_size,
                                 inputs=check_inputs, memory_mb=check_memory_mb,
                                 timeout=check_timeout, fail_on_skip=fail_on_skip)
        job = _Job(options, settings, weights.value)
        _settle_imports()
        if input.is_dir():
            raise typer.Exit(_rewrite_folder(input, output, job, report, say))
        code, rep = _rewrite_one(input, output, job, say)
        if report is not None and rep is not None:
            write_text_atomic(report, rep.to_json())
        if code:
            raise typer.Exit(code)
    except OnnxfixError as e:
        _fail(e)


@functools.cache
def _settle_imports() -> None:
    """Import the rewrite, then move every object made so far (onnx's, numpy's, onnxfix's:
    they live as long as the process) out of the cyclic GC's reach: its full collections
    then scan only what the rewrite makes (they took ~5% of a 2000-draw checked run). Once
    per process: a caller running the CLI in-process again freezes no garbage of its own."""
    from onnxfix import api  # noqa: F401, PLC0415 - imported now, to be frozen with the rest

    gc.freeze()


def _rewrite_one(src: Path, dst: Path, job: _Job, say: _Printer,
                 folder_mode: bool = False) -> tuple[int, RewriteReport | None]:
    from onnxfix import api  # noqa: PLC0415 - see the imports

    try:
        with say.step(f"rewriting {src} and checking parity in onnxruntime"):
            _, rep = api.run(src, job.options, job.settings, output=dst, weights=job.weights,
                             load_weights=False,
                             reporter=say if not folder_mode else Reporter(say.detail))
    except ParityError as e:
        if not folder_mode:
            say(_parity_summary(e.report))
        message = f"{e.render(_flag_words)} ({dst} not written)"
        if folder_mode:
            say(f"FAILED  {src}: {message}")
            return e.exit_code, e.report
        typer.echo(f"onnxfix: error: {message}", err=True)
        return e.exit_code, e.report
    if folder_mode:
        say(f"{_status_word(rep)}  {src} -> {dst}: {len(rep.nodes)} random node(s), "
            f"{_parity_summary(rep)}")
    else:
        say.lines(_summary(rep, say.verbose))
        if _check_skipped(rep):
            typer.echo("onnxfix: warning: parity check skipped: the output was written but not "
                       "verified (--fail-on-skip makes a skip fail)", err=True)
    return 0, rep


def _check_skipped(rep: RewriteReport | None) -> bool:
    """The check was asked for and ran without a verdict (not --no-check, not 'no nodes')."""
    return rep is not None and rep.parity is not None and rep.parity.status == "skipped" \
        and bool(rep.parity.note)


def _rewrite_folder(src: Path, dst: Path, job: _Job, report: Path | None,
                    say: _Printer) -> int:
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"{dst}: INPUT is a folder, so OUTPUT must be a folder too")
    models = sorted(p for p in src.rglob("*.onnx") if p.is_file())
    if not models:
        raise ModelError(f"{src}: no .onnx files below this folder")
    worst, reports, tally = 0, [], {"passed": 0, "skipped": 0, "failed": 0}
    for path in models:
        target = dst / path.relative_to(src)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            code, rep = _rewrite_one(path, target, job, say, folder_mode=True)
        except OnnxfixError as e:
            say(f"ERROR   {path}: {e.render(_flag_words)}")
            code, rep = e.exit_code, None
        except OSError as e:
            say(f"ERROR   {path}: cannot create {target.parent}: {e.strerror or e}")
            code, rep = 3, None
        tally[_tally_word(code, rep)] += 1
        worst = max(worst, code)
        entry = rep.to_dict() if rep is not None else {"input": str(path), "error": True}
        entry["exit_code"] = code
        reports.append(entry)
    say(f"{len(models)} model(s): {tally['passed'] + tally['skipped']} rewritten "
        f"({tally['passed']} checked and passed, {tally['skipped']} check skipped), "
        f"{tally['failed']} failed")
    if report is not None:
        from onnxfix.io import write_text_atomic  # noqa: PLC0415 - see the imports

        write_text_atomic(report, json.dumps({"models": reports}, indent=2, default=str))
    return worst


def _tally_word(code: int, rep: RewriteReport | None) -> str:
    """failed: nothing written; passed: written after a passed check; skipped: written unchecked."""
    if code or rep is None:
        return "failed"
    return "passed" if rep.parity is not None and rep.parity.status == "passed" else "skipped"


def _status_word(rep: RewriteReport) -> str:
    if rep.parity is not None and rep.parity.status == "skipped" and rep.nodes:
        return "SKIPPED"
    return "OK     "


def _summary(rep: RewriteReport, verbose: bool) -> list[str]:
    if not rep.nodes:
        return [f"no random nodes in {rep.input}; wrote an unchanged copy to {rep.output}"]
    done = [n for n in rep.nodes if n.status == "rewritten"]
    aside = [f"{sum(n.status == word for n in rep.nodes)} {word}" for word in ("kept", "removed")
             if any(n.status == word for n in rep.nodes)]
    lines = [f"{len(done)} random node(s) rewritten ({rep.mode})"
             + "".join(f", {a}" for a in aside) + ":"]
    for n in rep.nodes:
        r = n.replacement
        if r is None:
            lines.append(f"  {n.op_type} -> '{n.output}'  {n.status} ({n.note})")
            continue
        bounds = {d["axis"]: d["name"] for d in r.dims if d["kind"] == "bounded"}
        shape = "[" + ", ".join(f"{d} (bound of {bounds[k]})" if k in bounds else str(d)
                                for k, d in enumerate(r.shape)) + "]" \
            if r.shape is not None else "[?]"
        where = f" in {n.graph}" if n.graph != "main" else ""
        lines.append(f"  {n.op_type} -> '{n.output}'{where}  =>  {r.kind} '{r.name}' "
                     f"{r.dtype}{shape}" + (f" ({r.value})" if r.value else ""))
        if verbose:
            lines.append(f"      distribution: {n.distribution}")
    lines.extend(_op_table(rep))
    if rep.seed_input:
        lines.append(f"  seed input: '{rep.seed_input}' (int64 scalar; the same seed gives the "
                     f"same draws on every runtime)")
    lines.extend(f"  output '{c.output}' re-declared: declared {_dims_text(c.declared)}, shape "
                 f"inference proves {_dims_text(c.inferred)}" for c in rep.redeclared_outputs)
    lines.append(_parity_summary(rep))
    lines.append(f"wrote {rep.output}")
    return lines


def _dims_text(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _op_table(rep: RewriteReport) -> list[str]:
    """Op counts that changed, before -> after (what users screenshot)."""
    ops = sorted(set(rep.ops_before) | set(rep.ops_after))
    changed = [(op, rep.ops_before.get(op, 0), rep.ops_after.get(op, 0)) for op in ops
               if rep.ops_before.get(op, 0) != rep.ops_after.get(op, 0)]
    if not changed:
        return []
    width = max(len(op) for op, _, _ in changed)
    lines = [f"  {'op'.ljust(width)}  before  after"]
    lines += [f"  {op.ljust(width)}  {b:6d}  {a:5d}" for op, b, a in changed]
    total_b, total_a = sum(rep.ops_before.values()), sum(rep.ops_after.values())
    lines.append(f"  {'total'.ljust(width)}  {total_b:6d}  {total_a:5d}")
    if rep.new_inputs:
        lines.append(f"  new inputs: {', '.join(rep.new_inputs)}")
    return lines


def _parity_summary(rep: RewriteReport | None) -> str:
    if rep is None or rep.parity is None:
        return "Parity: not run"
    p = rep.parity
    if p.status == "skipped":
        return f"Parity: SKIPPED ({p.reason})"
    sizes = "; ".join(", ".join(f"{k}={v}" for k, v in s.items()) or "static" for s in p.sizes)
    bad = sum(1 for c in p.outputs if not c.passed)
    word = "PASSED" if p.status == "passed" else "FAILED"
    at = f" at {sizes}" if sizes else ""
    dist = ""
    if p.distributions:
        good = sum(1 for d in p.distributions if d.passed)
        dist = f"; {good}/{len(p.distributions)} distribution tests"
    return f"Parity: {word} ({len(p.outputs) - bad}/{len(p.outputs)} comparisons{at}{dist})"


@app.command("inspect", cls=_Command)
def inspect_cmd(
    model: Path = typer.Argument(..., help="The .onnx model to inspect."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a 'nodes' list)."),
    fail_if_random: bool = typer.Option(False, "--fail-if-random",
                                        help="Exit 1 when any random node remains (CI gate)."),
) -> None:
    """List every random node: where it lives, op, attributes, shape, dtype, consumers."""
    from onnxfix import api  # noqa: PLC0415 - see the imports

    try:
        rep = api.inspect(model)
    except OnnxfixError as e:
        _fail(e)
    if as_json:
        typer.echo(rep.to_json())
    elif not rep.nodes:
        typer.echo(f"{model}: no random nodes")
    else:
        rows = [("graph", "op", "node", "output", "dtype", "shape", "attributes", "consumers",
                 "noise input")]
        for n in rep.nodes:
            shape = "?" if n.shape is None else "[" + ", ".join(
                "?" if d is None else str(d) for d in n.shape) + "]"
            attrs = ", ".join(f"{k}={v}" for k, v in n.attributes.items())
            rows.append((n.graph, n.op_type, n.name or "-", n.output, n.dtype, shape,
                         attrs or "-", "; ".join(n.consumers) or "-", _noise_text(n.noise)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        typer.echo(f"{model}: {len(rep.nodes)} random node(s)")
        for r in rows:
            typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if not as_json and rep.seed_input:
        typer.echo(f"{model}: seed input '{rep.seed_input['name']}' (int64 scalar) drives "
                   f"{len(rep.seed_input['draws'])} seeded draw(s)")
    if fail_if_random and rep.nodes:
        typer.echo(f"onnxfix: {len(rep.nodes)} random node(s) remain in {model}", err=True)
        raise typer.Exit(1)


def _noise_text(noise: dict | None) -> str:
    """`noise_z [batch, 2, noise_z:2 (data-dependent)]`; '-' when no rewrite is possible."""
    if not noise:
        return "-"
    dims = [f"{d['name']} (data-dependent)" if d["kind"] == "data-dependent" else
            str(d.get("size", d.get("name", "?"))) for d in noise["dims"]]
    return f"{noise['input']} [{', '.join(dims)}]"


def main() -> None:
    app()
