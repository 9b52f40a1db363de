"""Deployment ergonomics: inspect and its CI gate, folders, node selection, deterministic
mode, noise_feeds; through the CLI (typer's CliRunner) and the API."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, full_check, random_nodes, run
from typer.testing import CliRunner

import onnxfix
from onnxfix.cli import app

runner = CliRunner()
MIXED = FIXTURES / "mixed_dynamic_ts.onnx"


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_inspect_lists_every_random_node_with_shape_dtype_and_consumers():
    result = invoke("inspect", MIXED)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == f"{MIXED}: 4 random node(s)"
    assert lines[1].split() == ["graph", "op", "node", "output", "dtype", "shape",
                                "attributes", "consumers", "noise", "input"]
    ops = [ln.split()[1] for ln in lines[2:]]
    assert ops == ["RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"]
    assert "int64  [batch, 1]" in lines[5] and "graph output" in lines[5]
    assert lines[5].endswith("noise_idx [batch, 1]")


def test_inspect_json_for_machines():
    result = invoke("inspect", MIXED, "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    first = data["nodes"][0]
    assert set(first) >= {"op_type", "output", "graph", "shape", "dtype", "attributes"}
    assert first["shape"] == ["batch", 10] and first["dtype"] == "float"
    assert [n["op_type"] for n in data["nodes"]] == ["RandomNormalLike", "RandomUniformLike",
                                                     "Bernoulli", "Multinomial"]


def test_fail_if_random_is_a_ci_gate(tmp_path):
    gate = invoke("inspect", MIXED, "--fail-if-random")
    assert gate.exit_code == 1 and "4 random node(s) remain" in gate.stderr
    out = tmp_path / "clean.onnx"
    assert invoke("rewrite", MIXED, out, "-q").exit_code == 0
    clean = invoke("inspect", out, "--fail-if-random")
    assert clean.exit_code == 0 and "no random nodes" in clean.output


def test_inspect_refuses_a_bad_file_cleanly(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = invoke("inspect", bad)
    assert result.exit_code == 3 and result.stderr.startswith("onnxfix: error: ")


def test_folder_rewrite_keeps_relative_paths_and_tallies(tmp_path):
    src = tmp_path / "in"
    (src / "a" / "b").mkdir(parents=True)
    shutil.copy(FIXTURES / "ref1_static_ts.onnx", src / "top.onnx")
    shutil.copy(FIXTURES / "ref3_dynamic_dynamo.onnx", src / "a" / "b" / "deep.onnx")
    (src / "a" / "broken.onnx").write_bytes(b"\x00garbage")
    (src / "a" / "notes.txt").write_text("ignored")
    dst = tmp_path / "out"
    result = invoke("rewrite", src, dst, "--report", tmp_path / "r.json")
    assert result.exit_code == 3  # the broken model; the others were still done
    assert (dst / "top.onnx").exists() and (dst / "a" / "b" / "deep.onnx").exists()
    assert not (dst / "a" / "broken.onnx").exists() and not (dst / "a" / "notes.txt").exists()
    assert ("3 model(s): 2 rewritten (2 checked and passed, 0 check skipped), 1 failed"
            in result.output)
    assert random_nodes(onnx.load(dst / "a" / "b" / "deep.onnx")) == []
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(m["exit_code"] for m in report["models"]) == [0, 0, 3]


def test_folder_rewrite_all_good_exits_0(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("ref2_static_ts.onnx", "bernoulli_dynamic_dynamo.onnx"):
        shutil.copy(FIXTURES / name, src / name)
    result = invoke("rewrite", src, tmp_path / "out", "--mode", "deterministic")
    assert result.exit_code == 0, result.output
    assert ("2 model(s): 2 rewritten (2 checked and passed, 0 check skipped), 0 failed"
            in result.output)


def test_only_and_exclude_select_nodes_by_glob():
    model, rep = onnxfix.rewrite(MIXED, only=["*Bernoulli*", "idx"])
    assert [(n.op_type, n.status) for n in rep.nodes] == [
        ("RandomNormalLike", "kept"), ("RandomUniformLike", "kept"),
        ("Bernoulli", "rewritten"), ("Multinomial", "rewritten")]
    assert sorted(n.op_type for n in random_nodes(model)) == ["RandomNormalLike",
                                                              "RandomUniformLike"]
    assert rep.nodes[0].note == "not selected by --only/--exclude"
    model, rep = onnxfix.rewrite(MIXED, exclude=["/Random*"])
    assert [n.status for n in rep.nodes] == ["kept", "kept", "rewritten", "rewritten"]
    assert rep.parity.status == "passed"


def test_only_through_the_cli_reports_kept_nodes(tmp_path):
    result = invoke("rewrite", MIXED, tmp_path / "o.onnx", "--only", "idx")
    assert result.exit_code == 0
    assert "1 random node(s) rewritten (input-noise), 3 kept:" in result.output
    assert "kept (not selected by --only/--exclude)" in result.output
    assert "NOTE | outputs downstream of unselected random nodes are not compared: y" \
        in result.output


def test_deterministic_mode_twice_gives_identical_results(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for out in (a, b):
        assert invoke("rewrite", MIXED, out, "--mode", "deterministic", "-q").exit_code == 0
    assert a.read_bytes() == b.read_bytes()
    model = onnx.load(a)
    full_check(model)
    assert random_nodes(model) == [] and len(model.graph.input) == 1  # no new inputs
    x = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    first, second = run(model, {"x": x}), run(model, {"x": x})
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])


def test_deterministic_values_are_mean_midpoint_likely_outcome_and_argmax():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] p, float[2,4] logits) => (float[2,3] n, float[2,3] u, float[2,3] b,
                                           int32[2,2] c, float[2,3] d) {
      n = RandomNormalLike<mean=1.5, scale=9.0>(p)
      u = RandomUniformLike<low=2.0, high=4.0>(p)
      b = Bernoulli(p)
      c = Multinomial<sample_size=2>(logits)
      r = Constant<value=float {0.5}>()
      t = Constant<value=bool {1}>()
      d = Dropout(p, r, t)
    }""")
    new, rep = onnxfix.rewrite(model, "deterministic")
    full_check(new)
    p = np.array([[0.2, 0.7, 0.5], [0.9, 0.1, 0.6]], np.float32)
    logits = np.array([[0, 3, 1, 2], [5, 0, 0, 0]], np.float32)
    res = run(new, {"p": p, "logits": logits})
    np.testing.assert_array_equal(res["n"], np.full((2, 3), 1.5))
    np.testing.assert_array_equal(res["u"], np.full((2, 3), 3.0))
    np.testing.assert_array_equal(res["b"], (p > 0.5).astype(np.float32))
    np.testing.assert_array_equal(res["c"], [[1, 1], [0, 0]])
    assert res["c"].dtype == np.int32
    np.testing.assert_array_equal(res["d"], p)
    assert rep.parity.status == "passed"


def test_noise_feeds_reads_names_shapes_and_kinds_from_the_graph(tmp_path):
    out = tmp_path / "noise.onnx"
    onnxfix.rewrite(MIXED, output=out)
    feeds = onnxfix.noise_feeds(out, dims={"batch": 5}, seed=1)
    model = onnx.load(out)
    noise_names = [i.name for i in model.graph.input if i.name != "x"]
    assert sorted(feeds) == sorted(noise_names)
    shapes = {k: v.shape for k, v in feeds.items()}
    assert shapes["noise_idx"] == (5, 1)  # Multinomial: [batch, samples], one u per sample
    assert all(s[0] == 5 for s in shapes.values())
    u = feeds["noise_RandomUniformLike_output_0"]
    assert u.min() >= 0 and u.max() < 1
    x = np.random.default_rng(2).standard_normal((5, 10)).astype(np.float32)
    res = run(model, {"x": x, **feeds})
    assert res["y"].shape == (5, 10) and res["idx"].shape == (5, 1)
    again = onnxfix.noise_feeds(out, dims={"batch": 5}, seed=1)
    for k in feeds:
        np.testing.assert_array_equal(feeds[k], again[k])


def test_noise_feeds_names_the_missing_dim(tmp_path):
    out = tmp_path / "noise.onnx"
    onnxfix.rewrite(FIXTURES / "ref2_dynamic_ts.onnx", output=out)
    with pytest.raises(onnxfix.UsageError, match="needs a size for batch"):
        onnxfix.noise_feeds(out)


def test_python_m_onnxfix_inspect(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "onnxfix", "inspect", str(MIXED), "--json"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert len(json.loads(proc.stdout)["nodes"]) == 4


@pytest.mark.parametrize("fixture,noise_dtype,fed,draw", [
    ("randn_f64_dynamic_dynamo.onnx", "float32", np.float32, "double"),
    ("ref3_dynamic_ts.onnx", "float16", np.float16, "float"),
    ("dropout_train_dynamic_ts.onnx", "float16", np.float16, "float"),
])
def test_noise_dtype_feeds_the_target_dtype_and_casts_in_graph(fixture, noise_dtype, fed, draw,
                                                               tmp_path):
    out = tmp_path / "n.onnx"
    result = invoke("rewrite", FIXTURES / fixture, out, "--noise-dtype", noise_dtype)
    assert result.exit_code == 0, result.output
    model = onnx.load(out)
    full_check(model)
    _, rep = onnxfix.rewrite(FIXTURES / fixture, noise_dtype=noise_dtype, check=False)
    for node in rep.nodes:
        assert node.replacement.dtype == noise_dtype.replace("float32", "float")
        assert node.replacement.cast_to == draw
    casts = [n for n in model.graph.node if n.op_type == "Cast" and n.input[0] in rep.new_inputs]
    assert len(casts) == len(rep.new_inputs)
    feeds = onnxfix.noise_feeds(model, dims={"batch": 4}, seed=0)
    assert all(v.dtype == fed for v in feeds.values())
    x = np.zeros((4, 10), np.float32)
    assert all(np.isfinite(v).all() for v in run(model, {"x": x, **feeds}).values())


def test_float16_noise_is_refused_for_a_bernoulli_or_multinomial(tmp_path):
    # their float16 uniforms would round p to a coarse grid / blur the classes of an inverse CDF
    result = invoke("rewrite", MIXED, tmp_path / "o.onnx", "--noise-dtype", "float16")
    assert result.exit_code == 2
    assert result.stderr.startswith("onnxfix: error: Bernoulli '/Bernoulli': noise_dtype="
                                    "\"float16\" cannot represent its noise faithfully")
    assert not (tmp_path / "o.onnx").exists()


def test_noise_dtype_same_is_the_default_and_adds_no_cast():
    _, rep = onnxfix.rewrite(FIXTURES / "randn_f64_dynamic_dynamo.onnx", check=False)
    assert rep.nodes[0].replacement.dtype == "double" and rep.nodes[0].replacement.cast_to == ""


def test_unknown_noise_dtype_is_a_usage_error(tmp_path):
    result = invoke("rewrite", MIXED, tmp_path / "o.onnx", "--noise-dtype", "int8")
    assert result.exit_code == 2 and "onnxfix: error:" in result.stderr


def test_progress_is_silent_off_a_terminal_and_shown_on_one(monkeypatch):
    import contextlib

    from onnxfix.cli import _Printer

    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert isinstance(_Printer(quiet=False, verbose=False).step("x"), contextlib.nullcontext)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert not isinstance(_Printer(quiet=False, verbose=False).step("x"),
                          contextlib.nullcontext)
    assert isinstance(_Printer(quiet=True, verbose=False).step("x"), contextlib.nullcontext)


def test_verbose_prints_each_distribution(tmp_path):
    result = invoke("rewrite", FIXTURES / "ref1_static_ts.onnx", tmp_path / "o.onnx", "-v")
    assert result.exit_code == 0
    assert "distribution: {'family': 'normal', 'mean': 0.0, 'scale': 1.0" in result.output


def test_folder_rewrite_carries_external_data_along(tmp_path):
    src = tmp_path / "in" / "sub"
    src.mkdir(parents=True)
    model = onnx.load(FIXTURES / "ref2_dynamic_ts.onnx")
    onnx.save(model, src / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.weights", size_threshold=0)
    dst = tmp_path / "out"
    result = invoke("rewrite", tmp_path / "in", dst)
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (dst / "sub").iterdir())
    assert written == ["m.onnx", "m.onnx.data"]  # same layout: weights beside the model
    out = onnx.load(dst / "sub" / "m.onnx")
    assert random_nodes(out) == []
    original = onnx.load(FIXTURES / "ref2_dynamic_ts.onnx")  # onnx.save moved `model`'s data
    ref = {t.name: onnx.numpy_helper.to_array(t) for t in original.graph.initializer}
    got = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    for name, value in ref.items():
        if name in got:
            np.testing.assert_array_equal(got[name], value)
    assert sorted(p.name for p in src.iterdir()) == ["m.onnx", "m.weights"]  # input untouched
