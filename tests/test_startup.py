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
