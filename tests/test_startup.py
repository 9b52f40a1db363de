"""What onnxfix imports: the symbolic-inference fallback must not pull in torch."""

import importlib.util
import subprocess
import sys

import pytest

PROBE = """
import sys
import onnx
from onnxfix.graph.shapes import ort_symbolic_facts
model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) { y = Relu(x) }''')
facts = ort_symbolic_facts(model)
print(facts["y"].shape, "torch" in sys.modules)
"""


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="torch is not installed, so nothing could import it")
def test_symbolic_shape_fallback_runs_without_importing_torch():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out == ["['batch',", "4]", "False"]


CHECK_PROBE = """
import gc, sys
import onnx
import onnxfix
from onnxfix.check.parity import check_parity
from onnxfix.cli import app
from onnxfix.seeded import algorithm
model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) { e = RandomNormalLike(x)  y = Add(x, e) }''')
new, report = onnxfix.rewrite(model, check=False)
status = check_parity(model, new, report.nodes, "input-noise").status
onnx.save(model, sys.argv[1])
frozen = gc.get_freeze_count()
app(["rewrite", sys.argv[1], sys.argv[2], "--no-check", "--quiet"], standalone_mode=False)
print(status, "onnxfix.check.twin" in sys.modules, "onnxfix.check.seeded" in sys.modules,
      algorithm._sbox.cache_info().currsize, frozen == 0 and gc.get_freeze_count() > 0)
"""


def test_an_input_noise_run_builds_nothing_only_other_modes_need(tmp_path):
    """Start-up (issue 10): an input-noise check imports neither the twin nor the seeded
    check, no S-box is built, and the CLI moves what its imports made out of the GC's scans."""
    out = subprocess.run([sys.executable, "-c", CHECK_PROBE, str(tmp_path / "m.onnx"),
                          str(tmp_path / "o.onnx")], capture_output=True, text=True,
                         check=True, timeout=300).stdout.split()
    assert out == ["passed", "False", "False", "0", "True"]
    assert (tmp_path / "o.onnx").is_file()
