"""scripts/bench.py keeps working: a smoke run of its startup scenario, and --assert's exit code."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import onnx
import onnxruntime as ort
from conftest import ROOT

from onnxfix.check.compare import make_session

BENCH = ROOT / "scripts" / "bench.py"


def test_quick_startup_scenario_prints_machine_rows_and_targets(tmp_path):
    # as in sandboxes that forbid bytecode files: the bench still lets onnxfix's be cached
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--scenario", "startup",
                           "--markdown", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "cores" in out and "onnxruntime" in out and "load average at start" in out
    rows = [line for line in out.splitlines() if line.startswith("| startup |")]
    commands = [r.split(" | ")[1] for r in rows]
    assert commands[:3] == ['python -c "import onnx, numpy"', "onnxfix --help",
                            "rewrite --no-check, tiny model"]
    for r in rows[:3]:  # a measured time and a peak RSS, not "failed"
        seconds, rss = r.split(" | ")[2], r.rstrip(" |").split(" | ")[3]
        assert float(seconds) > 0 and int(rss) > 0
    verdicts = [r.rstrip(" |").split(" | ")[-1] for r in rows[3:]]
    assert len(verdicts) == 2 and set(verdicts) <= {"ok", "MISSED"}
    assert not list(tmp_path.glob("*.log")) and not list(tmp_path.glob("startup_cli*"))
    cached = {p.name.split(".")[0] for p in (tmp_path / "pycache").rglob("*.pyc")}
    assert {"cli", "api", "plan"} <= cached  # in --work, where the next run finds them


# Run in a fresh process: a child's peak RSS includes its parent's (pytest's) at fork.
FAKE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("bench", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
sys.modules["bench"] = bench  # dataclasses look their module up
spec.loader.exec_module(bench)
def fake(args):
    small = bench.Row("small", [sys.executable, "-c", "pass"])
    # writes 300 MB: its peak RSS is far above 1.5x a bare interpreter's, whatever the load
    big = bench.Row("big", [sys.executable, "-c", "b = b'x' * 300_000_000"])
    same = bench.Row("same", [sys.executable, "-c", "pass"])
    return bench.Scenario("fake", [small, big, same],
                          [bench.Target("fake", big, small, "RSS", 1.5),
                           bench.Target("fake", same, small, "RSS", 1.5)])
bench.SCENARIOS["startup"] = fake
sys.exit(bench.main(sys.argv[2:]))
"""


def test_assert_exits_1_with_a_line_per_missed_target(tmp_path):
    argv = [sys.executable, "-c", FAKE, str(BENCH), "--scenario", "startup", "--runs", "1",
            "--work", str(tmp_path)]
    proc = subprocess.run([*argv, "--assert"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    missed = [line for line in proc.stderr.splitlines() if line.startswith("MISSED")]
    assert len(missed) == 1, proc.stderr  # "same" is within its target
    assert missed[0].startswith("MISSED | fake | big vs small | RSS ")
    assert missed[0].endswith("x (target <= 1.5x)")


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_for_floor", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _options_seen(monkeypatch, run) -> list[tuple]:
    """The session options (and providers) of every onnxruntime session `run()` opens."""
    seen = []
    real = ort.InferenceSession

    class Spy(real):
        def __init__(self, model, sess_options=None, *args, **kwargs):
            o = sess_options
            seen.append((o.graph_optimization_level, o.intra_op_num_threads,
                         o.inter_op_num_threads, o.execution_mode, o.enable_cpu_mem_arena,
                         o.enable_mem_pattern, o.enable_mem_reuse, o.log_severity_level,
                         tuple(kwargs.get("providers") or ())))
            super().__init__(model, sess_options, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Spy)
    run()
    monkeypatch.undo()
    return seen


def test_the_floor_opens_its_sessions_with_the_checks_options(monkeypatch, tmp_path):
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) { y = Relu(x) }
""")
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    floor = _bench_module().FLOOR

    def run_floor():
        monkeypatch.setattr(sys, "argv", ["floor", str(path), str(path)])
        exec(floor, {"__name__": "__main__"})

    check = _options_seen(monkeypatch, lambda: make_session(model))
    assert len(check) == 1 and check[0][0] == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert _options_seen(monkeypatch, run_floor) == check * 2  # the original and the rewrite



def test_the_check_stack_floor_adds_the_rewrites_own_stack_work(monkeypatch, tmp_path):
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) { y = Relu(x) }
""")
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(path))
    done = []
    for name in ("check_model", "infer_shapes"):
        owner = onnx.checker if name == "check_model" else onnx.shape_inference
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name,
                            lambda m, *a, _real=real, _name=name, **k: (done.append(_name),
                                                                        _real(m, *a, **k))[1])

    def run_stack():
        monkeypatch.setattr(sys, "argv", ["floor", str(path), str(path), str(out)])
        exec(_bench_module().STACK_CHECK, {"__name__": "__main__"})

    seen = _options_seen(monkeypatch, run_stack)
    assert done == ["check_model", "infer_shapes"]  # the rewrite's passes, once each
    assert onnx.load(str(out)).graph.node[0].op_type == "Relu"  # and its save
    assert len(seen) == 2  # then the check's two sessions, as the floor opens them

def test_the_bytes_stack_floor_imports_the_stack_then_copies_and_syncs(tmp_path):
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(os.urandom(1 << 16))
    loaded = "print(sorted({'onnx', 'numpy', 'typer'} & set(sys.modules)))"
    code = _bench_module().STACK_BYTES + loaded
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(dst)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["['numpy',", "'onnx',", "'typer']"]
    assert dst.read_bytes() == src.read_bytes()


FAKE_FLOORS = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("bench", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
sys.modules["bench"] = bench
spec.loader.exec_module(bench)
def fake(args):
    small = bench.Row("small", [sys.executable, "-c", "pass"])
    cand = bench.Row("cand", [sys.executable, "-c", "pass"])
    big = bench.Row("heavy floor", [sys.executable, "-c", "b = b'x' * 300_000_000"])
    light = bench.Row("light floor", [sys.executable, "-c", "pass"])
    target = bench.Target("fake", cand, small, "RSS", 1.5)
    return bench.Scenario("fake", [small, cand, big, light], [target],
                          [bench.Floor(target, big), bench.Floor(target, light)])
bench.SCENARIOS["startup"] = fake
sys.exit(bench.main(sys.argv[2:]))
"""


def test_stack_floors_get_their_own_table_with_a_verdict_against_the_target(tmp_path):
    argv = [sys.executable, "-c", FAKE_FLOORS, str(BENCH), "--scenario", "startup", "--runs",
            "1", "--work", str(tmp_path), "--assert"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr  # floors are not targets: nothing is missed
    out = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("Stack floors:"))
    rows = [line.split() for line in out[start + 2:start + 4]]
    assert [r[1:3] for r in rows] == [["heavy", "floor"], ["light", "floor"]]
    assert rows[0][-2:] == ["above", "target"] and rows[1][-2:] == ["within", "target"]
    assert float(rows[0][-5].rstrip("x")) > 1.5  # its RSS ratio against "small"
