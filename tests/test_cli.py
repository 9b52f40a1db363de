"""The `onnxfix` command line, driven through typer's CliRunner (plus a few real processes).

Every run checks the contract of README "Reference" and "Exit codes": exact exit codes, errors
as one `onnxfix: error: ...` line on stderr without a traceback, the input file byte-for-byte
unchanged, and no output or temp file (`.out.onnx.*.tmp`) left behind when a run fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import parser
from typer.testing import CliRunner

import onnxfix
import onnxfix.check.conditional
from onnxfix.cli import app
from onnxfix.ops import RANDOM_OP_TYPES

FIXTURES = Path(__file__).parent.parent / "fixtures"
STATIC = FIXTURES / "ref1_static_ts.onnx"  # x: float[3, 10], one RandomNormalLike
DYNAMIC = FIXTURES / "ref1_dynamic_ts.onnx"  # x: float[batch, 10], one RandomNormalLike
DYNAMIC3 = FIXTURES / "ref3_dynamic_dynamo.onnx"  # three RandomNormalLike, opset 18
RANDOM_OPS = set(RANDOM_OP_TYPES)

ERROR_PREFIX = "onnxfix: error: "

runner = CliRunner()


# -- helpers -------------------------------------------------------------------------------

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(*args: str | Path):
    """Run `onnxfix ARGS`; for `rewrite IN OUT ...`, assert that IN is byte-for-byte unchanged.

    The one exception is OUT naming the same file as IN: a successful run replaces it.
    """
    argv = [str(a) for a in args]
    inp = Path(argv[1]) if len(argv) > 1 and argv[0] == "rewrite" else None
    before = _sha(inp) if inp is not None and inp.is_file() else None
    result = runner.invoke(app, argv)
    if before is not None:
        in_place = len(argv) > 2 and Path(argv[2]).resolve() == inp.resolve()
        if not (in_place and result.exit_code == 0):
            assert _sha(inp) == before, f"{inp} was modified by {argv}"
    return result


def assert_ok(result) -> None:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr,
                                   result.exception)
    assert result.stderr == ""


def assert_error(result, code: int, *fragments: str) -> str:
    """Exit `code`, one `onnxfix: error:` line on stderr naming every fragment; return it."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr,
                                      repr(result.exception))
    # anything but a deliberate sys.exit is an uncaught exception (a traceback in a real run)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith(ERROR_PREFIX), line
    assert len(line) > len(ERROR_PREFIX)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert "Traceback" not in result.stdout
    return line


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _model(text: str) -> onnx.ModelProto:
    return parser.parse_model(text)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


INT32_NORMAL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) {
  n = RandomNormal <dtype = 6, shape = [2, 3]> ()
  nf = Cast <to = 1> (n)
  y = Add(x, nf)
}
"""

NO_RANDOM = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3] x) => (float[N, 3] y) {
  r = Relu(x)
  y = Mul(r, x)
}
"""


def _random_ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node if n.op_type in RANDOM_OPS]


# -- success -------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", [DYNAMIC, DYNAMIC3, STATIC], ids=lambda p: p.stem)
def test_input_noise_mode_succeeds(fixture: Path, out_dir: Path):
    out = out_dir / "out.onnx"
    result = invoke("rewrite", fixture, out, "--mode", "input-noise")
    assert_ok(result)
    assert leftovers(out_dir) == ["out.onnx"]
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert _random_ops(model) == []
    original = onnx.load(str(fixture))
    added = {i.name for i in model.graph.input} - {i.name for i in original.graph.input}
    assert len(added) == len(_random_ops(original))
    lines = result.stdout.splitlines()
    outputs = [o.name for o in original.graph.output]
    for name in outputs:
        assert any(ln.startswith("PASSED | ") and f"'{name}'" in ln for ln in lines), name
    assert not any(ln.startswith("FAILED") for ln in lines)
    assert any(ln.startswith("Parity: PASSED") for ln in lines)
    assert f"wrote {out}" in lines


@pytest.mark.parametrize("fixture", [DYNAMIC, DYNAMIC3], ids=lambda p: p.stem)
def test_constant_mode_with_dim_succeeds(fixture: Path, out_dir: Path):
    out = out_dir / "out.onnx"
    result = invoke("rewrite", fixture, out, "--mode", "constant", "--dim", "batch=3",
                    "--seed", "7")
    assert_ok(result)
    assert leftovers(out_dir) == ["out.onnx"]
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert _random_ops(model) == []
    original = onnx.load(str(fixture))
    # no new inputs in constant mode; the batch dim is fixed to 3
    assert [i.name for i in model.graph.input] == [i.name for i in original.graph.input]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 10]
    for name in (o.name for o in original.graph.output):
        assert any(ln.startswith("PASSED | ") and f"'{name}'" in ln
                   for ln in result.stdout.splitlines()), name
    assert any(ln.startswith("Parity: PASSED") for ln in result.stdout.splitlines())


def test_constant_mode_is_reproducible(out_dir: Path):
    a, b, c = out_dir / "a.onnx", out_dir / "b.onnx", out_dir / "c.onnx"
    for out, seed in ((a, "5"), (b, "5"), (c, "6")):
        assert_ok(invoke("rewrite", DYNAMIC, out, "--mode", "constant", "--dim", "batch=3",
                         "--seed", seed, "-q"))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_quiet_prints_nothing(out_dir: Path):
    out = out_dir / "out.onnx"
    result = invoke("rewrite", DYNAMIC, out, "--quiet")
    assert_ok(result)
    assert result.stdout == ""
    assert out.exists()
    result = invoke("rewrite", DYNAMIC, out_dir / "c.onnx", "-q", "--mode", "constant",
                    "--dim", "batch=2")
    assert_ok(result)
    assert result.stdout == ""


def test_quiet_still_reports_errors(out_dir: Path):
    result = invoke("rewrite", DYNAMIC, out_dir / "out.onnx", "-q", "--mode", "constant")
    assert_error(result, 3, "batch")
    assert result.stdout == ""
    assert leftovers(out_dir) == []


def test_existing_output_is_replaced(out_dir: Path):
    out = out_dir / "out.onnx"
    out.write_bytes(b"old contents")
    assert_ok(invoke("rewrite", STATIC, out, "-q"))
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert leftovers(out_dir) == ["out.onnx"]


def test_relative_paths_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _copy(STATIC, tmp_path / "in.onnx")
    monkeypatch.chdir(tmp_path)
    assert_ok(invoke("rewrite", "in.onnx", "out.onnx", "-q"))
    assert sorted(leftovers(tmp_path)) == ["in.onnx", "out.onnx"]


# -- report --------------------------------------------------------------------------------

def _check_report_shape(rep: dict, mode: str, inp: Path, out: Path) -> None:
    assert {"mode", "input", "output", "nodes", "parity"} <= set(rep)
    assert rep["mode"] == mode
    assert rep["input"] == str(inp)
    assert rep["output"] == str(out)
    assert isinstance(rep["nodes"], list)
    for node in rep["nodes"]:
        assert {"op_type", "output", "graph", "replacement", "distribution"} <= set(node)
        assert set(node["replacement"]) >= {"kind", "name", "shape", "dtype"}
        assert isinstance(node["distribution"], dict)
    assert rep["parity"]["status"] in ("passed", "failed", "skipped")
    assert isinstance(rep["parity"].get("outputs", []), list)


def test_report_input_noise(tmp_path: Path, out_dir: Path):
    out, rep_path = out_dir / "out.onnx", tmp_path / "report.json"
    assert_ok(invoke("rewrite", DYNAMIC, out, "--report", rep_path))
    rep = json.loads(rep_path.read_text())
    _check_report_shape(rep, "input-noise", DYNAMIC, out)
    assert len(rep["nodes"]) == 1
    node = rep["nodes"][0]
    assert node["op_type"] == "RandomNormalLike"
    assert node["output"] == "/RandomNormalLike_output_0"
    assert node["graph"] == "main"
    repl = node["replacement"]
    assert repl["kind"] == "input"
    assert repl["dtype"] == "float"
    assert repl["shape"] == ["batch", 10]
    model = onnx.load(str(out))
    assert repl["name"] in {i.name for i in model.graph.input}
    assert node["distribution"]["family"] == "normal"
    parity = rep["parity"]
    assert parity["status"] == "passed"
    assert parity["outputs"], parity
    for check in parity["outputs"]:
        assert {"max_abs_err", "max_rel_err"} <= set(check)
        assert isinstance(check["max_abs_err"], float)
        assert isinstance(check["max_rel_err"], float)
        assert check["max_abs_err"] == 0.0
    names = {c["name"] for c in parity["outputs"]}
    assert {"y", "/RandomNormalLike_output_0"} <= names
    assert leftovers(tmp_path) == ["out", "report.json"]


def test_report_constant(tmp_path: Path, out_dir: Path):
    out, rep_path = out_dir / "out.onnx", tmp_path / "report.json"
    assert_ok(invoke("rewrite", DYNAMIC3, out, "--mode", "constant", "--dim", "batch=3",
                     "--report", rep_path, "-q"))
    rep = json.loads(rep_path.read_text())
    _check_report_shape(rep, "constant", DYNAMIC3, out)
    assert len(rep["nodes"]) == 3
    model = onnx.load(str(out))
    inits = {t.name: t for t in model.graph.initializer}
    for node in rep["nodes"]:
        repl = node["replacement"]
        assert repl["kind"] == "initializer"
        assert repl["shape"] == [3, 10]
        assert repl["dtype"] == "float"
        assert list(inits[repl["name"]].dims) == [3, 10]
    assert len({n["output"] for n in rep["nodes"]}) == 3
    assert rep["parity"]["status"] == "passed"


def test_report_no_check(tmp_path: Path, out_dir: Path):
    out, rep_path = out_dir / "out.onnx", tmp_path / "report.json"
    result = invoke("rewrite", DYNAMIC, out, "--no-check", "--report", rep_path)
    assert_ok(result)
    assert "PASSED | " not in result.stdout
    assert "Parity: SKIPPED" in result.stdout
    rep = json.loads(rep_path.read_text())
    _check_report_shape(rep, "input-noise", DYNAMIC, out)
    assert rep["parity"]["status"] == "skipped"
    assert rep["parity"]["reason"]
    assert rep["parity"].get("outputs", []) == []
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_report_overwrites_existing(tmp_path: Path, out_dir: Path):
    rep_path = tmp_path / "report.json"
    rep_path.write_text("stale")
    assert_ok(invoke("rewrite", STATIC, out_dir / "out.onnx", "--report", rep_path, "-q"))
    assert json.loads(rep_path.read_text())["mode"] == "input-noise"
    assert leftovers(tmp_path) == ["out", "report.json"]


def test_report_into_missing_folder_writes_nothing(tmp_path: Path, out_dir: Path):
    result = invoke("rewrite", STATIC, out_dir / "out.onnx",
                    "--report", tmp_path / "nope" / "r.json")
    assert_error(result, 2, "nope")
    assert leftovers(out_dir) == []


def test_report_path_is_a_folder(tmp_path: Path, out_dir: Path):
    folder = tmp_path / "reports"
    folder.mkdir()
    result = invoke("rewrite", STATIC, out_dir / "out.onnx", "--report", folder)
    line = assert_error(result, 2, str(folder))
    assert "Errno" not in line
    assert leftovers(out_dir) == []
    assert leftovers(folder) == []


# -- no random nodes -----------------------------------------------------------------------

def test_model_without_random_nodes_is_copied(tmp_path: Path, out_dir: Path):
    inp = _save(_model(NO_RANDOM), tmp_path / "plain.onnx")
    out, rep_path = out_dir / "out.onnx", tmp_path / "report.json"
    result = invoke("rewrite", inp, out, "--report", rep_path)
    assert_ok(result)
    assert "no random nodes" in result.stdout
    original, copy = onnx.load(str(inp)), onnx.load(str(out))
    assert copy.graph == original.graph
    assert copy.ir_version == original.ir_version
    assert list(copy.opset_import) == list(original.opset_import)
    rep = json.loads(rep_path.read_text())
    assert rep["nodes"] == []
    assert rep["parity"]["status"] == "skipped"
    assert rep["parity"]["reason"]
    assert leftovers(out_dir) == ["out.onnx"]


def test_model_without_random_nodes_constant_mode(tmp_path: Path, out_dir: Path):
    inp = _save(_model(NO_RANDOM), tmp_path / "plain.onnx")
    out = out_dir / "out.onnx"
    result = invoke("rewrite", inp, out, "--mode", "constant")
    assert_ok(result)
    assert "no random nodes" in result.stdout
    assert onnx.load(str(out)).graph == onnx.load(str(inp)).graph


@pytest.mark.parametrize("name", ["bernoulli_dynamic_ts.onnx", "multinomial_dynamic_ts.onnx",
                                  "dropout_train_dynamic_ts.onnx", "mixed_dynamic_dynamo.onnx"])
def test_other_random_ops_are_rewritten(name: str, out_dir: Path):
    """Bernoulli, Multinomial and Dropout are random nodes too (README), never "absent"."""
    out = out_dir / "out.onnx"
    result = invoke("rewrite", FIXTURES / name, out)
    assert_ok(result)
    assert "no random nodes" not in result.stdout
    assert any(ln.startswith("Parity: PASSED") for ln in result.stdout.splitlines())
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert _random_ops(model) == []
    assert leftovers(out_dir) == ["out.onnx"]


# -- in place ------------------------------------------------------------------------------

def test_in_place_overwrite_succeeds(tmp_path: Path):
    model = _copy(DYNAMIC, tmp_path / "model.onnx")
    result = invoke("rewrite", model, model, "--mode", "constant", "--dim", "batch=3", "-q")
    assert_ok(result)
    assert model.read_bytes() != DYNAMIC.read_bytes()
    rewritten = onnx.load(str(model))
    onnx.checker.check_model(rewritten, full_check=True)
    assert _random_ops(rewritten) == []
    assert leftovers(tmp_path) == ["model.onnx"]


def test_in_place_input_noise_succeeds(tmp_path: Path):
    model = _copy(STATIC, tmp_path / "model.onnx")
    assert_ok(invoke("rewrite", model, model, "-q"))
    assert _random_ops(onnx.load(str(model))) == []
    assert leftovers(tmp_path) == ["model.onnx"]


def test_in_place_failure_leaves_input_intact(tmp_path: Path):
    model = _copy(DYNAMIC, tmp_path / "model.onnx")
    result = invoke("rewrite", model, model, "--mode", "constant")  # no --dim
    assert_error(result, 3, "batch", "--dim")
    assert model.read_bytes() == DYNAMIC.read_bytes()
    assert leftovers(tmp_path) == ["model.onnx"]


def test_in_place_parity_failure_leaves_input_intact(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    _break_parity(monkeypatch)
    model = _copy(STATIC, tmp_path / "model.onnx")
    result = invoke("rewrite", model, model)
    assert_error(result, 1, "not written")
    assert model.read_bytes() == STATIC.read_bytes()
    assert leftovers(tmp_path) == ["model.onnx"]


def test_in_place_relative_and_absolute_spelling(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    model = _copy(STATIC, tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    assert_ok(invoke("rewrite", "model.onnx", model, "-q"))
    assert _random_ops(onnx.load(str(model))) == []
    assert leftovers(tmp_path) == ["model.onnx"]


# -- file modes ----------------------------------------------------------------------------

def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def test_output_file_mode_follows_umask(tmp_path: Path, out_dir: Path):
    out, rep_path = out_dir / "out.onnx", out_dir / "report.json"
    assert_ok(invoke("rewrite", STATIC, out, "--report", rep_path, "-q"))
    expected = 0o666 & ~_umask()
    assert stat.S_IMODE(out.stat().st_mode) == expected
    assert stat.S_IMODE(rep_path.stat().st_mode) == expected


def test_in_place_keeps_file_mode(tmp_path: Path):
    model = _copy(STATIC, tmp_path / "model.onnx")
    model.chmod(0o644)
    assert_ok(invoke("rewrite", model, model, "-q"))
    assert stat.S_IMODE(model.stat().st_mode) == 0o644


# -- parity failure (exit 1) ---------------------------------------------------------------

def _break_parity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Feed the rewritten model noise that is off by one: every compared output must differ.

    The hook is the conditional check's "captured draw -> standard noise" step.
    """
    real = onnxfix.check.conditional.standard_noise

    def off_by_one(*args, **kwargs):
        noise = np.asarray(real(*args, **kwargs))
        return (noise + np.asarray(1.0, dtype=noise.dtype)).astype(noise.dtype)

    monkeypatch.setattr(onnxfix.check.conditional, "standard_noise", off_by_one)


def test_parity_failure_exits_1_and_writes_nothing(tmp_path: Path, out_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    _break_parity(monkeypatch)
    out = out_dir / "out.onnx"
    result = invoke("rewrite", DYNAMIC, out)
    line = assert_error(result, 1, "not written", str(out))
    assert "parity" in line
    lines = result.stdout.splitlines()
    assert any(ln.startswith("FAILED | ") for ln in lines)
    assert not any(ln.startswith("PASSED | ") for ln in lines)
    assert any(ln.startswith("Parity: FAILED") for ln in lines)
    assert not any(ln.startswith("wrote ") for ln in lines)
    assert leftovers(out_dir) == []


def test_parity_failure_report(tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch):
    _break_parity(monkeypatch)
    out, rep_path = out_dir / "out.onnx", tmp_path / "report.json"
    result = invoke("rewrite", DYNAMIC3, out, "--report", rep_path, "-q")
    assert_error(result, 1, "not written")
    assert result.stdout == ""
    assert leftovers(out_dir) == []
    rep = json.loads(rep_path.read_text())
    _check_report_shape(rep, "input-noise", DYNAMIC3, out)
    assert rep["parity"]["status"] == "failed"
    assert rep["parity"]["reason"]
    assert any(c["max_abs_err"] > 0 for c in rep["parity"]["outputs"])
    assert leftovers(tmp_path) == ["out", "report.json"]


def test_parity_failure_with_loose_tolerance_passes(out_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    """--atol is honoured: noise off by exactly one passes with a huge tolerance."""
    _break_parity(monkeypatch)
    out = out_dir / "out.onnx"
    result = invoke("rewrite", STATIC, out, "--atol", "1e6")
    assert_ok(result)
    assert out.exists()


def test_no_check_skips_parity(out_dir: Path, monkeypatch: pytest.MonkeyPatch):
    _break_parity(monkeypatch)
    out = out_dir / "out.onnx"
    result = invoke("rewrite", DYNAMIC, out, "--no-check")
    assert_ok(result)
    assert "FAILED" not in result.stdout
    assert out.exists()


# -- usage errors (exit 2) -----------------------------------------------------------------

USAGE_CASES = [
    (["--dim", "batch"], ["--dim", "NAME=VALUE"]),
    (["--dim", "batch=x"], ["--dim", "'x'"]),
    (["--dim", "batch=0"], ["--dim", "positive"]),
    (["--dim", "batch=-3"], ["--dim", "positive"]),
    (["--dim", "=3"], ["--dim"]),
    (["--dim", "nope=3"], ["nope", "batch"]),
    (["--seed", "-1"], ["--seed", "-1"]),
    (["--atol", "-1"], ["--atol"]),
    (["--rtol", "-0.5"], ["--rtol"]),
    (["--atol", "nan"], ["--atol"]),
    (["--max-draw-mb", "0"], ["--max-draw-mb"]),
    (["--max-draw-mb", "-5"], ["--max-draw-mb"]),
    (["--check-size", "0"], ["--check-size"]),
    (["--mode", "constant", "--dim", "nope=3"], ["nope"]),
    (["--mode", "constant", "--seed", "-2", "--dim", "batch=3"], ["--seed"]),
]


@pytest.mark.parametrize(("flags", "fragments"), USAGE_CASES,
                         ids=["_".join(flags) for flags, _ in USAGE_CASES])
def test_usage_errors(flags: list[str], fragments: list[str], out_dir: Path):
    result = invoke("rewrite", DYNAMIC, out_dir / "out.onnx", *flags)
    assert_error(result, 2, *fragments)
    assert result.stdout == ""  # refused before any work
    assert leftovers(out_dir) == []


def test_output_folder_does_not_exist(tmp_path: Path):
    missing = tmp_path / "missing"
    result = invoke("rewrite", STATIC, missing / "out.onnx", "-q")
    assert_error(result, 2, str(missing), "does not exist")
    assert not missing.exists()
    assert leftovers(tmp_path) == []


def test_output_is_a_folder(tmp_path: Path, out_dir: Path):
    result = invoke("rewrite", STATIC, out_dir, "-q")
    assert_error(result, 2, "folder")
    assert leftovers(out_dir) == []


@pytest.mark.parametrize("argv", [
    ["rewrite", str(STATIC), "OUT", "--mode", "bogus"],
    ["rewrite", str(STATIC), "OUT", "--mode", "deterministic-ish"],
    ["rewrite"],
    ["rewrite", str(STATIC)],
    ["rewrite", str(STATIC), "OUT", "--seed", "x"],
    ["rewrite", str(STATIC), "OUT", "--atol", "tiny"],
    ["rewrite", str(STATIC), "OUT", "--no-such-flag"],
    ["rewrite", str(STATIC), "OUT", "--dim"],
    ["no-such-command"],
], ids=["unknown-mode", "unknown-mode-2", "no-args", "missing-output", "seed-not-int",
        "atol-not-float", "unknown-option", "dim-without-value", "unknown-command"])
def test_click_usage_errors(argv: list[str], out_dir: Path):
    argv = [str(out_dir / "out.onnx") if a == "OUT" else a for a in argv]
    result = invoke(*argv)
    assert_error(result, 2)
    assert leftovers(out_dir) == []


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_max_draw_mb_not_finite(value: str, out_dir: Path):
    result = invoke("rewrite", DYNAMIC, out_dir / "out.onnx", "--mode", "constant",
                    "--dim", "batch=3", "--max-draw-mb", value)
    assert_error(result, 2, "--max-draw-mb")
    assert leftovers(out_dir) == []


# -- the model cannot be read or processed (exit 3) ----------------------------------------

def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    data = DYNAMIC.read_bytes()
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    files = {
        "missing": tmp_path / "missing.onnx",
        "empty": tmp_path / "empty.onnx",
        "truncated": tmp_path / "truncated.onnx",
        "random": tmp_path / "random.onnx",
        "text": tmp_path / "text.onnx",
        "folder": folder,
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    files["text"].write_text("this is not an ONNX model\n" * 20)
    return files


@pytest.mark.parametrize(("kind", "fragment"), [
    ("missing", "no such file"),
    ("empty", "empty"),
    ("truncated", "not a valid ONNX"),
    ("random", "not a valid ONNX"),
    ("text", "not a valid ONNX"),
    ("folder", "folder"),
])
@pytest.mark.parametrize("mode", ["input-noise", "constant"])
def test_unreadable_input(kind: str, fragment: str, mode: str, tmp_path: Path, out_dir: Path):
    inp = _bad_inputs(tmp_path)[kind]
    result = invoke("rewrite", inp, out_dir / "out.onnx", "--mode", mode)
    assert_error(result, 3, str(inp), fragment)
    assert leftovers(out_dir) == []


def test_unreadable_input_in_place(tmp_path: Path):
    inp = _bad_inputs(tmp_path)["truncated"]
    before = inp.read_bytes()
    result = invoke("rewrite", inp, inp)
    assert_error(result, 3, "not a valid ONNX")
    assert inp.read_bytes() == before
    assert temp_files(tmp_path) == []


def test_missing_input_in_place_exits_3(tmp_path: Path):
    inp = tmp_path / "missing.onnx"
    result = invoke("rewrite", inp, inp)
    assert_error(result, 3, "no such file")
    assert leftovers(tmp_path) == []


def test_invalid_model_checker_error(tmp_path: Path, out_dir: Path):
    """A well-formed protobuf that the ONNX checker rejects: one line, exit 3."""
    model = _model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
          y = Add(x, undefined_tensor)
        }
    """)
    inp = _save(model, tmp_path / "bad.onnx")
    assert_error(invoke("rewrite", inp, out_dir / "out.onnx"), 3, "invalid ONNX model")
    assert leftovers(out_dir) == []


def test_constant_mode_needs_dims(out_dir: Path):
    result = invoke("rewrite", DYNAMIC, out_dir / "out.onnx", "--mode", "constant")
    line = assert_error(result, 3, "batch", "--dim")
    assert "--dim batch=" in line
    assert result.stdout == ""
    assert leftovers(out_dir) == []


def test_constant_mode_draw_cap(tmp_path: Path, out_dir: Path):
    rep_path = tmp_path / "report.json"
    # one draw of float[3, 10] is 120 bytes; the cap is ~10 bytes
    result = invoke("rewrite", DYNAMIC, out_dir / "out.onnx", "--mode", "constant",
                    "--dim", "batch=3", "--max-draw-mb", "0.00001", "--report", rep_path)
    assert_error(result, 3, "cap", "--max-draw-mb", "120")
    assert leftovers(out_dir) == []
    assert not rep_path.exists()


def test_constant_mode_draw_cap_counts_all_draws(out_dir: Path):
    # three draws of 120 bytes: 300 bytes is enough for two, not for three
    result = invoke("rewrite", DYNAMIC3, out_dir / "out.onnx", "--mode", "constant",
                    "--dim", "batch=3", "--max-draw-mb", str(300 / 2**20))
    assert_error(result, 3, "cap", "360")
    assert leftovers(out_dir) == []
    result = invoke("rewrite", DYNAMIC3, out_dir / "out.onnx", "--mode", "constant",
                    "--dim", "batch=3", "--max-draw-mb", str(360 / 2**20), "-q")
    assert_ok(result)


@pytest.mark.parametrize("mode", ["input-noise", "constant"])
def test_random_normal_with_int_dtype(mode: str, tmp_path: Path, out_dir: Path):
    inp = _save(_model(INT32_NORMAL), tmp_path / "int.onnx")
    result = invoke("rewrite", inp, out_dir / "out.onnx", "--mode", mode)
    assert_error(result, 3, "int32", "RandomNormal")
    assert leftovers(out_dir) == []


# -- entry points --------------------------------------------------------------------------

def test_version():
    result = runner.invoke(app, ["--version"])
    assert_ok(result)
    assert result.stdout.strip() == f"onnxfix {onnxfix.__version__}"


def test_rewrite_help():
    result = runner.invoke(app, ["rewrite", "--help"])
    assert_ok(result)
    for flag in ("--mode", "--seed", "--dim", "--report", "--no-check", "--atol", "--rtol"):
        assert flag in result.stdout


def _run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxfix", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_python_m_help():
    proc = _run_module("--help")
    assert proc.returncode == 0, proc.stderr
    assert "rewrite" in proc.stdout
    assert "Usage: onnxfix" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_python_m_version():
    proc = _run_module("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"onnxfix {onnxfix.__version__}"


def test_python_m_rewrite_error_is_one_line(tmp_path: Path):
    proc = _run_module("rewrite", str(tmp_path / "missing.onnx"), str(tmp_path / "o.onnx"))
    assert proc.returncode == 3
    assert proc.stderr.startswith(ERROR_PREFIX)
    assert len(proc.stderr.splitlines()) == 1
    assert leftovers(tmp_path) == []


def test_python_m_usage_error_is_one_line(tmp_path: Path):
    proc = _run_module("rewrite", str(STATIC), str(tmp_path / "o.onnx"), "--mode", "bogus")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(ERROR_PREFIX)
    assert len(proc.stderr.splitlines()) == 1
    assert leftovers(tmp_path) == []
