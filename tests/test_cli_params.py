"""Issue 10 (start-up): the CLI coerces plain flag values without typer's pydantic adapters,
and every value gets exactly what typer's own coercion gives it: the same value and type, or
the same error text."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main
from typer._click.exceptions import BadParameter
from typer._coercion import build_runtime_param

from onnxfix.cli import Mode, app
from onnxfix.cli_params import PlainCoercion

VALUES = {
    "seed": ["0", "7", "-3", "007", "+5", " 5", "1_000", "1.0", "abc", "", "9" * 30, 4, None],
    "max_draw_mb": ["1.5", "256", "1e3", "-2.5E-2", ".5", "5.", "inf", "nan", "1e999", "x",
                    256.0, 3],
    "mode": ["constant", "input-noise", "CONSTANT", "foo", "", Mode.seeded],
    "input": ["m.onnx", "dir/m.onnx", "", "-", Path("p.onnx")],
    "report": [None, "r.json"],
    "dim": [(), ("batch=2",), ("a=1", "b=2"), None],
}


def _outcome(runtime, value, param, ctx):
    try:
        out = runtime.coerce(value, param=param, ctx=ctx)
    except BadParameter as e:
        return ("error", e.format_message())
    return ("value", type(out), repr(out))  # repr: nan equals nan


@pytest.mark.parametrize("name", sorted(VALUES))
def test_plain_coercion_answers_as_typer_does(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = typer.main.get_command(app).commands["rewrite"]
    ctx = command.make_context("rewrite", ["a.onnx", "b.onnx"])
    param = next(p for p in command.params if p.name == name)
    for value in VALUES[name]:
        plain = _outcome(PlainCoercion(param.type_descriptor), value, param, ctx)
        typer_own = _outcome(build_runtime_param(param.type_descriptor), value, param, ctx)
        assert plain == typer_own, value


def test_a_typer_without_the_pieces_keeps_its_own_coercion(monkeypatch):
    from onnxfix import cli_params

    monkeypatch.setattr(cli_params, "_typer_pieces", lambda: False)
    command = typer.main.get_command(app)
    cli_params.install(command)
    params = [p for c in command.commands.values() for p in c.params]
    assert params and all(p._runtime_param is None for p in params)
