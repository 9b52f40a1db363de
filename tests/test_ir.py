"""onnxfix.ir: the rewrite as an onnx-ir pass, next to onnx-ir's own passes, on a loaded file and
on a dynamo export - with the same noise inputs, numbers and parity verdict as the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, fixture_path, session
from typer.testing import CliRunner

import onnxfix
import onnxfix.check.conditional
from onnxfix.cli import app
from onnxfix.feeds import noise_inputs

ir = pytest.importorskip("onnx_ir", minversion="1.1")
from onnx_ir.passes.common import CheckerPass, RemoveUnusedNodesPass  # noqa: E402

from onnxfix.ir import RewritePass, RewritePassResult, rewrite_options  # noqa: E402

REF3 = fixture_path("ref3_dynamic_ts.onnx")


def _pipeline(rewrite: RewritePass) -> ir.passes.PassManager:
    return ir.passes.PassManager([rewrite, RemoveUnusedNodesPass(),
                                  CheckerPass(full_check=True)])


def _cli(src: Path, out: Path, *flags: str) -> tuple[onnx.ModelProto, dict]:
    import json

    report = out.with_suffix(".json")
    result = CliRunner().invoke(app, ["rewrite", str(src), str(out), "--report", str(report),
                                      "-q", *flags])
    assert result.exit_code == 0, result.output
    return onnx.load(str(out)), json.loads(report.read_text())


def _noise_signature(model: onnx.ModelProto) -> list[tuple]:
    """(name, family, dtype, shape) of every noise input, as noise_feeds reads them."""
    return [(e["name"], e["family"], e["elem_type"], e["shape"]) for e in noise_inputs(model)]


def _ops(model) -> list[str]:
    return sorted(node.op_type for node in model.graph)


def _run(path: Path, feeds: dict) -> list[np.ndarray]:
    return session(onnx.load(str(path))).run(None, feeds)


def test_pass_in_a_pass_manager_matches_the_cli_on_a_loaded_file(tmp_path: Path):
    model = ir.load(str(REF3))
    before = ir.to_proto(model).SerializeToString()
    rewrite = RewritePass(seed=7)
    result = _pipeline(rewrite)(model)

    assert result.modified
    assert ir.to_proto(model).SerializeToString() == before  # changes_input is False, honestly
    assert _ops(model).count("RandomNormalLike") == 3
    assert "RandomNormalLike" not in _ops(result.model)
    assert result.model.metadata_props["onnxfix.noise_inputs"]  # what noise_feeds reads
    # Unchanged weights are the input's tensors, shared, not copied.
    weight = next(n for n, v in model.graph.initializers.items() if v.const_value.nbytes > 256)
    assert (result.model.graph.initializers[weight].const_value
            is model.graph.initializers[weight].const_value)

    out = tmp_path / "pass.onnx"
    ir.save(result.model, str(out))
    cli_model, cli_report = _cli(REF3, tmp_path / "cli.onnx", "--seed", "7")
    assert _noise_signature(onnx.load(str(out))) == _noise_signature(cli_model)
    assert len(_noise_signature(cli_model)) == 3
    assert rewrite.report.new_inputs == cli_report["new_inputs"]
    assert rewrite.report.parity.status == cli_report["parity"]["status"] == "passed"
    assert rewrite.report.input is None

    x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    feeds = {"x": x, **onnxfix.noise_feeds(str(out), dims={"batch": 4}, seed=1)}
    assert all(np.array_equal(a, b) for a, b in
               zip(_run(out, feeds), _run(tmp_path / "cli.onnx", feeds), strict=True))


def test_options_are_forwarded_like_the_cli(tmp_path: Path):
    """constant mode with dims and seed: the same frozen draws, byte for byte."""
    result = RewritePass("constant", seed=42, dims={"batch": 1})(ir.load(str(REF3)))
    assert isinstance(result, RewritePassResult)
    assert result.report.parity.status == "passed"
    assert [n.replacement.kind for n in result.report.nodes] == ["initializer"] * 3
    cli_model, _ = _cli(REF3, tmp_path / "cli.onnx", "--mode", "constant", "--dim", "batch=1",
                        "--seed", "42")
    ours = {t.name: onnx.numpy_helper.to_array(t)
            for t in ir.to_proto(result.model).graph.initializer}
    theirs = {t.name: onnx.numpy_helper.to_array(t) for t in cli_model.graph.initializer}
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_only_selects_nodes_and_no_check_skips():
    result = RewritePass(only=["*RandomNormalLike_1*"], check=False)(ir.load(str(REF3)))
    assert [n.status for n in result.report.nodes].count("rewritten") == 1
    assert _ops(result.model).count("RandomNormalLike") == 2
    assert result.report.parity.status == "skipped"
    assert result.report.parity.reason == "--no-check"


def test_options_are_those_of_rewrite():
    assert {"seed", "dims", "only", "exclude", "noise_dtype", "check", "atol"} <= set(
        rewrite_options())
    assert not {"output", "weights", "load_weights", "mode"} & set(rewrite_options())
    with pytest.raises(onnxfix.UsageError, match=r"^RewritePass: unknown option\(s\) output, "
                                                 r"sed; options are mode, temp_dir, seed, "):
        RewritePass(sed=1, output="x.onnx")


def test_a_bad_option_value_is_the_core_usage_error():
    with pytest.raises(onnxfix.UsageError, match=r"^mode='noisy': choose one of"):
        RewritePass("noisy")(ir.load(str(REF3)))


def test_a_model_error_of_the_core_surfaces_unchanged():
    model = ir.load(str(REF3))
    with pytest.raises(onnxfix.ModelError, match=r"constant mode needs a concrete shape, but dim "
                                                 r"batch is symbolic"):
        RewritePass("constant")(model)
    assert _ops(model).count("RandomNormalLike") == 3


def test_model_without_random_nodes_is_not_modified():
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { y = Relu(x) }""")
    model = ir.from_proto(proto)
    result = RewritePass()(model)
    assert not result.modified
    assert result.model is not model
    assert _ops(result.model) == ["Relu"]
    assert result.report.parity.status == "skipped"


def test_parity_failure_raises_with_the_report(monkeypatch: pytest.MonkeyPatch):
    real = onnxfix.check.conditional.standard_noise

    def off_by_one(*args, **kwargs):
        noise = np.asarray(real(*args, **kwargs))
        return (noise + np.asarray(1.0, dtype=noise.dtype)).astype(noise.dtype)

    monkeypatch.setattr(onnxfix.check.conditional, "standard_noise", off_by_one)
    rewrite = RewritePass()
    with pytest.raises(onnxfix.ParityError) as caught:
        rewrite(ir.load(str(REF3)))
    assert caught.value.report.parity.status == "failed"
    assert rewrite.report is caught.value.report
    # Inside a PassManager, onnx-ir wraps it: the ParityError is in the cause chain.
    with pytest.raises(ir.passes.PassError) as wrapped:
        _pipeline(RewritePass())(ir.load(str(REF3)))
    causes = []
    error: BaseException | None = wrapped.value
    while error is not None:
        causes.append(type(error))
        error = error.__cause__
    assert onnxfix.ParityError in causes


def test_weights_not_from_the_input_are_read_before_the_folder_goes(tmp_path: Path):
    from onnxfix.ir import _share_weights

    folder = tmp_path / "w"
    folder.mkdir()
    ir.save(ir.load(str(REF3)), str(folder / "m.onnx"), external_data="m.onnx.data")
    model = ir.serde.deserialize_model(onnx.load(str(folder / "m.onnx"),
                                                 load_external_data=False))
    _share_weights(model, {}, str(folder))  # nothing to share: everything is read
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    proto = ir.to_proto(model)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    x = np.ones((2, 10), np.float32)
    reference = session(onnx.load(str(REF3)))
    expected = session(onnxfix.rewrite(str(REF3), mode="deterministic", check=False)[0])
    got = session(onnxfix.rewrite(proto, mode="deterministic", check=False)[0])
    assert reference.get_inputs()[0].name == "x"
    assert np.array_equal(expected.run(None, {"x": x})[0], got.run(None, {"x": x})[0])


def test_onnxfix_imports_without_onnx_ir_and_the_ir_module_says_what_to_install():
    code = ("import sys; sys.modules['onnx_ir'] = None\n"
            "import onnxfix\n"
            "try:\n    import onnxfix.ir\n"
            "except ImportError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    assert proc.stdout == "onnxfix.ir needs onnx-ir >= 1.1: pip install 'onnxfix[ir]'\n"


# -- straight from torch.onnx.export(..., dynamo=True) ---------------------------------------

@pytest.fixture(scope="module")
def dynamo_program():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")

    class Reparameterized(torch.nn.Module):  # the design notes' reference model 2
        def __init__(self):
            super().__init__()
            self.body, self.scale, self.loc = (torch.nn.Linear(10, 10) for _ in range(3))

        def forward(self, x):
            x = self.body(x)
            scale = torch.sigmoid(self.scale(x))
            return x + self.loc(x) + scale * torch.randn(x.shape)

    torch.manual_seed(0)
    batch = torch.export.Dim("batch")
    return torch.onnx.export(Reparameterized().eval(), (torch.randn(2, 10),), dynamo=True,
                             dynamic_shapes=({0: batch},), verbose=False)


def test_dynamo_export_through_the_pass_manager_matches_the_cli(dynamo_program, tmp_path: Path):
    prog = dynamo_program
    original = tmp_path / "exported.onnx"
    prog.save(str(original))
    before = ir.to_proto(prog.model).SerializeToString()
    rewrite = RewritePass()
    result = _pipeline(rewrite)(prog.model)
    assert ir.to_proto(prog.model).SerializeToString() == before

    prog.model = result.model
    out = tmp_path / "rewritten.onnx"
    prog.save(str(out))
    cli_model, cli_report = _cli(original, tmp_path / "cli.onnx")
    saved = onnx.load(str(out))
    assert _noise_signature(saved) == _noise_signature(cli_model) == [
        ("noise_randn", "normal", onnx.TensorProto.FLOAT, ["batch", 10])]
    assert rewrite.report.parity.status == cli_report["parity"]["status"] == "passed"
    assert [n.op_type for n in saved.graph.node if n.op_type.startswith("Random")] == []

    x = np.random.default_rng(1).standard_normal((3, 10)).astype(np.float32)
    feeds = {"x": x, **onnxfix.noise_feeds(str(out), dims={"batch": 3}, seed=5)}
    ours, theirs = _run(out, feeds), _run(tmp_path / "cli.onnx", feeds)
    assert np.array_equal(ours[0], theirs[0])
    zero = {"x": x, "noise_randn": np.zeros((3, 10), np.float32)}
    assert not np.array_equal(_run(out, zero)[0], ours[0])  # the noise input is really read
