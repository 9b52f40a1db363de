"""Time onnxfix on a ~200 MB model against a plain onnx.load + onnx.save of the same file.

Run:
    python scripts/bench.py [--work DIR] [--runs 5] [--check] [--assert]

The model (built once, cached in --work): x float32 [batch, 1024] -> 48 x (MatMul by a
1024x1024 float32 weight, + RandomNormalLike of the product), opset 17, weights embedded.

Every measurement is a fresh subprocess; baseline and candidates run interleaved (one warm-up
round first, then --runs rounds) and the medians are reported with each run's peak RSS (from
os.wait4). Targets (--assert exits 1 when one is missed):
  - `onnxfix rewrite --no-check` wall time <= 0.5 x baseline, peak RSS <= 0.5 x file size;
  - with --check: `onnxfix rewrite --mode input-noise` (parity included) <= 1.3 x the time of
    creating two onnxruntime sessions (original and rewritten) and running each at batch 2, 3.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIME_TARGET = 0.5
RSS_TARGET = 0.5
CHECK_TARGET = 1.3

BASELINE = "import onnx, sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"

# The wire layer alone: skeleton, a trivial edit (new small initializer + node), streamed save.
WIRE = """
import sys
import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxfix.wire import load_skeleton
from onnxfix.wire_write import save_with_weights
with load_skeleton(sys.argv[1]) as sk:
    m = onnx.ModelProto()
    m.CopyFrom(sk.model)
    m.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    m.graph.node.append(helper.make_node("Mul", ["y", "one"], ["y_times_one"]))
    m.graph.output.append(helper.make_tensor_value_info("y_times_one", 1, None))
    save_with_weights(m, sk, sys.argv[2], fsync=sys.argv[3] == "fsync")
"""

# The wire layer around the real rewrite passes (what the CLI will do once integrated).
WIRE_REWRITE = """
import sys
from onnxfix.rewrite import rewrite_model
from onnxfix.wire import load_skeleton
from onnxfix.wire_write import save_with_weights
with load_skeleton(sys.argv[1]) as sk:
    new, records = rewrite_model(sk.model, "input-noise")
    assert records, "no random node rewritten"
    save_with_weights(new, sk, sys.argv[2])
"""

# Two onnxruntime sessions from files, each run once at batch 2 and batch 3.
SESSIONS = """
import sys
import numpy as np
import onnxruntime as ort
rng = np.random.default_rng(0)
types = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
         "tensor(double)": np.float64, "tensor(int64)": np.int64}
for path in sys.argv[1:]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    for batch in (2, 3):
        feeds = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) else batch for d in i.shape]
            feeds[i.name] = rng.standard_normal(shape).astype(types[i.type])
        sess.run(None, feeds)
"""


@dataclass
class Row:
    what: str
    argv: list[str]
    out: Path | None = None
    times: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)  # bytes
    failed: str = ""

    @property
    def time(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def peak(self) -> int:
        return max(self.rss) if self.rss else 0


def build_model(path: Path, layers: int, size: int) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev = "x"
    for i in range(layers):
        w = (rng.standard_normal((size, size), dtype=np.float32) / np.sqrt(size))
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"layer{i}.weight"))
        nodes += [
            helper.make_node("MatMul", [prev, f"layer{i}.weight"], [f"h{i}"], name=f"mm{i}"),
            helper.make_node("RandomNormalLike", [f"h{i}"], [f"eps{i}"], name=f"randn{i}",
                             scale=0.01),
            helper.make_node("Add", [f"h{i}", f"eps{i}"], [f"a{i}" if i < layers - 1 else "y"],
                             name=f"add{i}"),
        ]
        prev = f"a{i}"
    graph = helper.make_graph(
        nodes, "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


TIME_V = "/usr/bin/time"


def run_once(row: Row, workdir: Path) -> None:
    """One subprocess: wall time and peak RSS.

    Linux keeps a process's peak RSS across exec, so a child forked from a big parent would
    inherit the parent's peak: /usr/bin/time -v (a tiny parent) reports the real one. Without
    it, os.wait4 is used (this script stays small: the model is built in a subprocess).
    """
    log = workdir / "last.log"
    use_time = os.access(TIME_V, os.X_OK)
    argv = [TIME_V, "-v", *row.argv] if use_time else row.argv
    with open(log, "wb") as f:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=workdir)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if row.out is not None:
        for p in (row.out, row.out.with_name(row.out.name + ".data")):
            p.unlink(missing_ok=True)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        row.failed = f"exit {proc.returncode}: " + text.strip()[-300:]
        return
    peak = usage.ru_maxrss
    if use_time:
        for line in text.splitlines():
            if "Maximum resident set size" in line:
                peak = int(line.rsplit(":", 1)[1])
    row.times.append(elapsed)
    row.rss.append(peak * 1024)  # Linux reports KiB


def cli() -> list[str]:
    exe = shutil.which("onnxfix")
    return [exe] if exe else [sys.executable, "-m", "onnxfix"]


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnx
    import onnxruntime

    return (f"CPU: {cpu}; cores: {os.cpu_count()}; python {platform.python_version()}; "
            f"onnx {onnx.__version__}; onnxruntime {onnxruntime.__version__}; "
            f"{platform.system()} {platform.release()}")


def measure(rows: list[Row], runs: int, workdir: Path) -> None:
    for round_ in range(runs + 1):  # round 0 warms the page cache and is not counted
        for row in rows:
            if row.failed:
                continue
            before = (len(row.times), len(row.rss))
            run_once(row, workdir)
            if round_ == 0 and not row.failed:
                del row.times[before[0]:]
                del row.rss[before[1]:]


def table(rows: list[Row], base: Row, size: int, ref: Row | None = None) -> str:
    ref = ref or base
    lines = [f"| what | median s | ratio to {'baseline' if ref is base else ref.what} | "
             "peak RSS MB | RSS / file size |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        if r.failed:
            lines.append(f"| {r.what} | failed: {r.failed.splitlines()[-1][:80]} | | | |")
            continue
        lines.append(f"| {r.what} | {r.time:.3f} | {r.time / ref.time:.2f} | "
                     f"{r.peak / 2**20:.0f} | {r.peak / size:.2f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "onnxfix-bench")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--check", action="store_true",
                    help="also time the rewrite with parity against two ORT sessions + runs")
    ap.add_argument("--assert", dest="assert_", action="store_true",
                    help="exit 1 when a target is missed")
    ap.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build_model(args.build, args.layers, args.size)
        return 0

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"bench_{args.layers}x{args.size}.onnx"
    if not model.exists():  # in a subprocess, so that this process stays small
        print(f"building {model} ...", file=sys.stderr)
        subprocess.run([sys.executable, __file__, "--build", str(model), "--layers",
                        str(args.layers), "--size", str(args.size)], check=True)
    size = model.stat().st_size
    py = sys.executable
    env_path = str(ROOT)
    os.environ["PYTHONPATH"] = env_path + os.pathsep + os.environ.get("PYTHONPATH", "")

    def out(name: str) -> Path:
        return work / name

    base = Row("baseline: onnx.save(onnx.load(f))", [py, "-c", BASELINE, str(model),
                                                    str(out("base.onnx"))], out("base.onnx"))
    rows = [
        base,
        Row("onnxfix rewrite --no-check (CLI)",
            [*cli(), "rewrite", str(model), str(out("cli.onnx")), "--no-check"], out("cli.onnx")),
        Row("wire: load_skeleton + edit + save_with_weights",
            [py, "-c", WIRE, str(model), str(out("wire.onnx")), "fsync"], out("wire.onnx")),
        Row("wire, no fsync",
            [py, "-c", WIRE, str(model), str(out("wire2.onnx")), "nofsync"], out("wire2.onnx")),
        Row("wire + rewrite_model (input-noise, no check)",
            [py, "-c", WIRE_REWRITE, str(model), str(out("wr.onnx"))], out("wr.onnx")),
    ]
    measure(rows, args.runs, work)
    print(f"model: {model} ({size / 2**20:.1f} MiB, {args.layers} layers of "
          f"{args.size}x{args.size} float32); {args.runs} interleaved runs after one warm-up; "
          "medians")
    print(machine())
    print()
    print(table(rows, base, size))

    missed = []
    cli_row = rows[1]
    for row in (cli_row, rows[2]):
        if row.failed:
            continue
        ok_t = row.time <= TIME_TARGET * base.time
        ok_m = row.peak <= RSS_TARGET * size
        print(f"\n{row.what}: time {row.time / base.time:.2f}x baseline (target "
              f"<= {TIME_TARGET}) {'ok' if ok_t else 'MISSED'}; RSS {row.peak / size:.2f}x file "
              f"size (target <= {RSS_TARGET}) {'ok' if ok_m else 'MISSED'}")
        if row is cli_row:
            missed += [] if ok_t else ["CLI time"]
            missed += [] if ok_m else ["CLI RSS"]
    if cli_row.failed:
        missed.append("CLI failed")

    if args.check:
        rewritten = out("checked_input.onnx")
        prep = subprocess.run([*cli(), "rewrite", str(model), str(rewritten), "--no-check"],
                              capture_output=True, text=True)
        if prep.returncode != 0:
            print(f"cannot prepare the rewritten model: {prep.stderr.strip()[-300:]}")
            missed.append("check prep")
        else:
            sessions = Row("2 ORT sessions + runs at batch 2 and 3",
                           [py, "-c", SESSIONS, str(model), str(rewritten)])
            checked = Row("onnxfix rewrite --mode input-noise (parity)",
                          [*cli(), "rewrite", str(model), str(out("chk.onnx")),
                           "--mode", "input-noise"], out("chk.onnx"))
            measure([sessions, checked], args.runs, work)
            print()
            print(table([sessions, checked], base, size, ref=sessions))
            if checked.failed or sessions.failed:
                missed.append("check failed")
            else:
                ratio = checked.time / sessions.time
                ok = ratio <= CHECK_TARGET
                print(f"\nrewrite with parity: {ratio:.2f}x sessions+runs (target <= "
                      f"{CHECK_TARGET}) {'ok' if ok else 'MISSED'}")
                missed += [] if ok else ["check time"]
            rewritten.unlink(missing_ok=True)

    (work / "last.log").unlink(missing_ok=True)
    if missed:
        print(f"\ntargets missed: {', '.join(missed)}")
    return 1 if (args.assert_ and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
