"""Measure how random onnxruntime's training-mode Dropout is across runs (README, Notes).

One session, 500 runs on x = ones(1000), ratio 0.5: a Dropout alone, and a 3-iteration Loop
applying it to its carried state (MC-dropout style). Independent masks would keep each element
in 43-57% of the runs; prints what onnxruntime does.
    python scripts/measure_ort_dropout.py
"""

from __future__ import annotations

import numpy as np
import onnx.parser
import onnxruntime as ort

RUNS = 500
FLAT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1000] x) => (float[1000] y, bool[1,1000] masks) {
  ratio = Constant<value=float {0.5}>()
  train = Constant<value=bool {1}>()
  y, m = Dropout(x, ratio, train)
  zero = Constant<value=int64[1] {0}>()
  masks = Unsqueeze(m, zero)
}
"""
LOOP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1000] x) => (float[1000] y, bool[3,1000] masks) {
  trips = Constant<value=int64 {3}>()
  cond = Constant<value=bool {1}>()
  y, masks = Loop (trips, cond, x) <
    body = b (int64 i, bool c_in, float[1000] a_in) => (bool c_out, float[1000] a_out,
                                                       bool[1000] m) {
      c_out = Identity(c_in)
      ratio = Constant<value=float {0.5}>()
      train = Constant<value=bool {1}>()
      a_out, m = Dropout(a_in, ratio, train)
    }
  >
}
"""


def measure(name: str, text: str) -> None:
    model = onnx.parser.parse_model(text)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones(1000, np.float32)
    runs = [sess.run(None, {"x": x}) for _ in range(RUNS)]
    y = np.stack([r[0] for r in runs])
    masks = np.stack([r[1] for r in runs])  # [runs, iterations, 1000]
    keep = masks.mean(axis=0)
    print(f"{name}: per-element keep frequency over {RUNS} runs {keep.min():.3f}-{keep.max():.3f}"
          f"; elements with the same output in every run: {(y.std(axis=0) == 0).sum()} of 1000")
    if masks.shape[1] > 1:
        both = (masks[:, 0] & masks[:, 1]).mean()
        print(f"{name}: P(kept in iterations 0 and 1) {both:.4f} (independent: 0.25); "
              f"P(kept in all 3) {masks.all(axis=1).mean():.4f} (independent: 0.125); "
              f"mean output {y.mean():.3f} (Dropout keeps the mean: 1)")


if __name__ == "__main__":
    print(f"onnxruntime {ort.__version__}")
    measure("Dropout", FLAT)
    measure("Dropout in a Loop", LOOP)
