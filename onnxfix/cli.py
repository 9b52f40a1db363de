"""The `onnxfix` command: parse flags, call the API, print. Nothing else lives here."""

from __future__ import annotations

import math
import sys
from enum import Enum
from pathlib import Path

import typer
from typer.core import TyperGroup

try:  # typer >= 0.22 carries its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError
    from typer._click.exceptions import UsageError as _ClickUsageError
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import NoArgsIsHelpError
    from click.exceptions import UsageError as _ClickUsageError

from . import api
from .errors import OnnxfixError, ParityError, UsageError
from .model_io import check_writable, write_text_atomic
from .report import RewriteReport
from .shapes import parse_dim_flags


class Mode(str, Enum):
    input_noise = "input-noise"
    constant = "constant"


class _OneLineErrors(TyperGroup):
    """Usage errors as one line on stderr with exit 2, instead of a framed help box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        try:
            return super().main(args=args, prog_name=prog_name or "onnxfix",
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


app = typer.Typer(
    cls=_OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Rewrite random-sampling nodes (RandomNormal(Like), RandomUniform(Like), ...) of ONNX "
         "models into noise inputs or seeded constants, and prove the rewrite in onnxruntime.",
)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"onnxfix {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Make exported ONNX models with random-sampling nodes deployable."""


def _error(message: str, code: int):
    typer.echo(f"onnxfix: error: {message}", err=True)
    sys.exit(code)


@app.command("rewrite")
def rewrite_cmd(
    input: Path = typer.Argument(..., help="The .onnx model to rewrite (never modified)."),
    output: Path = typer.Argument(..., help="Where to write the rewritten model."),
    mode: Mode = typer.Option(Mode.input_noise, "--mode", "-m",
                              help="input-noise: each draw becomes a graph input taking standard "
                                   "noise; constant: a seeded draw frozen into the model."),
    seed: int = typer.Option(0, "--seed", help="Seed for constant-mode draws and check inputs."),
    dim: list[str] = typer.Option(None, "--dim", metavar="NAME=VALUE",
                                  help="Fix a symbolic dim model-wide (repeatable)."),
    report: Path | None = typer.Option(None, "--report", help="Write a JSON report here."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the parity check."),
    atol: float | None = typer.Option(None, "--atol", help="Absolute tolerance (default by "
                                                            "dtype: 1e-5 for float32)."),
    rtol: float | None = typer.Option(None, "--rtol", help="Relative tolerance (default by "
                                                            "dtype: 1e-5 for float32)."),
    check_size: int = typer.Option(2, "--check-size", help="Size given to symbolic dims in the "
                                                           "check; it also runs at size+1."),
    max_draw_mb: float = typer.Option(256.0, "--max-draw-mb",
                                      help="Cap on constant-mode draws, in MiB."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print errors only."),
) -> None:
    """Rewrite every random node of INPUT and write the result to OUTPUT."""
    say = (lambda _line: None) if quiet else typer.echo
    try:
        dims = parse_dim_flags(dim)
        if not (math.isfinite(max_draw_mb) and max_draw_mb > 0):
            raise UsageError(f"--max-draw-mb {max_draw_mb}: must be a positive number")
        if report is not None:
            check_writable(report, "--report")
        try:
            _, rep = api.rewrite(
                input, mode.value, seed=seed, dims=dims, check=not no_check, atol=atol,
                rtol=rtol, check_size=check_size, max_draw_bytes=int(max_draw_mb * 2**20),
                output=output, on_line=say,
            )
        except ParityError as e:
            if e.report is not None and report is not None:
                write_text_atomic(report, e.report.to_json())
            say(_parity_summary(e.report))
            _error(f"{e} ({output} not written)", e.exit_code)
        if report is not None:
            write_text_atomic(report, rep.to_json())
        for line in _summary(rep):
            say(line)
    except OnnxfixError as e:
        _error(str(e), e.exit_code)


def _summary(rep: RewriteReport) -> list[str]:
    lines = []
    if not rep.nodes:
        lines.append(f"no random nodes in {rep.input}; wrote an unchanged copy to {rep.output}")
        return lines
    lines.append(f"{len(rep.nodes)} random node(s) rewritten ({rep.mode}):")
    for n in rep.nodes:
        r = n.replacement
        shape = "[" + ", ".join(str(d) for d in r.shape) + "]" if r.shape is not None else "[?]"
        lines.append(f"  {n.op_type} -> '{n.output}'  =>  {r.kind} '{r.name}' {r.dtype}{shape}")
    lines.append(_parity_summary(rep))
    lines.append(f"wrote {rep.output}")
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
    return f"Parity: {word} ({len(p.outputs) - bad}/{len(p.outputs)} comparisons at {sizes})"


def main() -> None:
    app()
