"""constant / deterministic checks with a random node left in place (--only / --exclude).

The outputs such a node reaches stay random in the rewritten model and its input-noise twin,
so comparing them failed a correct rewrite ("two runs of the constant model differ"); they
are left out, as in input-noise and seeded mode, and the check is a skip when that is every
output."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import FIXTURES, parse

import onnxfix

KEPT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2, 3] x) => (float[2, 3] y, float[2, 3] z) {
  a = RandomNormal<shape = [2, 3]>()
  b = RandomUniform<shape = [2, 3]>()
  y = Add(x, a)
  z = Mul(x, b)
}"""


@pytest.mark.parametrize("mode", ["constant", "deterministic"])
def test_an_output_of_a_draw_left_random_is_not_compared(mode):
    new, report = onnxfix.rewrite(parse(KEPT), mode, exclude=["b"])
    assert [(r.output, r.status) for r in report.nodes] == [("a", "rewritten"), ("b", "kept")]
    assert report.parity.status == "passed", report.parity.reason
    names = [c.name for c in report.parity.outputs]
    assert [n for n in names if "(" in n] == [f"y ({mode})"], names
    assert [n.op_type for n in new.graph.node].count("RandomUniform") == 1


@pytest.mark.parametrize("mode", ["constant", "deterministic"])
def test_every_output_left_random_is_a_skip(mode):
    model = parse(KEPT.replace("  y = Add(x, a)\n", "").replace("z = Mul(x, b)",
                                                                  "z = Mul(x, b)\n  y = Add(z, a)"))
    _, report = onnxfix.rewrite(model, mode, exclude=["b"])
    assert report.parity.status == "skipped"
    assert report.parity.reason == (f"every output of the {mode} model depends on a random "
                                    f"node left in place (b), so no output can be compared")


def test_the_cli_names_the_outputs_it_leaves_out(tmp_path):
    out = tmp_path / "det.onnx"
    proc = subprocess.run([sys.executable, "-m", "onnxfix", "rewrite",
                           str(FIXTURES / "mixed_dynamic_ts.onnx"), str(out), "--mode",
                           "deterministic", "--exclude", "/Bernoulli"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert ("NOTE | outputs downstream of unselected random nodes are not compared: y"
            in proc.stdout)
    assert "Parity: PASSED" in proc.stdout and out.exists()
