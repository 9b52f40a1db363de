"""Measure onnxfix against baselines on every scenario of issue 10; --assert fails on a miss.

Run:
    python scripts/bench.py [--scenario NAME ...] [--runs 5] [--quick] [--large] [--markdown]
                            [--work DIR] [--assert]

Scenarios (models built by scripts/bench_models.py, cached in --work):
  bytes    `rewrite --no-check` on a 192 MiB model vs onnx.load+save (<= 0.4x) and cp+fsync
           (<= 2.5x); --large adds a 1 GiB model.
  nodes    `rewrite --no-check` on 1k / 10k / 100k-node Add/Mul chains (one random node) vs
           onnx.load+save: wall <= 3x, peak RSS <= 2x; cost per node printed.
  inspect  `inspect` on the 100k-node chain vs onnx.load (<= 1.5x).
  check    the checked rewrite at 1, 100, 2000 random nodes and a conv VAE with a 256k-element
           draw vs an onnxruntime floor doing the same work with the check's session options
           (sessions for the original and rewritten models, a run of each at the check's sizes):
           wall <= 1.3x, peak RSS <= 1.5x.
  startup  `onnxfix --help` and `rewrite --no-check` on a tiny model vs
           `python -c "import onnx, numpy"` (<= 1.5x).

Stack floors (nodes, inspect, check; wall time): the same work done by the required stack
alone - onnx's load, checker, shape inference and save, the imports of onnx, numpy and typer -
measured against the same baseline and printed in a third table: a wall target below its floor
is out of reach while that work runs.

Every measurement is a fresh subprocess; the rows of a scenario run interleaved (one warm-up
round, then --runs rounds); medians with min-max and each run's peak RSS from os.wait4. Linux
carries a process's peak RSS across fork+exec, so this process imports neither onnx nor numpy:
a child's reported peak is never below this process's own (printed as the RSS floor).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(__file__).resolve().parent / "bench_models.py"
PY = sys.executable
SPREAD_WARNING = 0.25  # (max - min) / median above this: the machine is too busy for a ratio

LOAD_SAVE = "import onnx, sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"
LOAD = "import onnx, sys; onnx.load(sys.argv[1])"
IMPORTS = "import onnx, numpy"
# Stack floors: the least the required stack itself costs for a scenario's work, with none of
# onnxfix's own. A rewrite must import onnx, numpy and typer, read the model, check it (hostile
# inputs), infer its shapes once (the plan) and write it; inspect must read and infer. A target
# whose limit sits below its floor cannot be met while those passes run on the whole graph.
# Wall time only: onnx's inference holds every value's type of the graph at once, and a
# rewrite may infer a large graph in slices instead (graph.sliced_inference), in about the same
# time but not the same memory, so a whole inference's peak RSS is no floor.
STACK_REWRITE = (
    "import onnx, numpy, typer, sys; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m); "
    "onnx.shape_inference.infer_shapes(m); onnx.save(m, sys.argv[2])")
STACK_INSPECT = ("import onnx, numpy, typer, sys; m = onnx.load(sys.argv[1]); "
                 "onnx.shape_inference.infer_shapes(m)")
# A checked rewrite is a rewrite (imports, load, check, infer, save) plus the check's
# onnxruntime work (FLOOR); the last argument is where the model is saved.
STACK_CHECK = (
    "import onnx, numpy, typer, sys\nout = sys.argv.pop()\nm = onnx.load(sys.argv[1]); "
    "onnx.checker.check_model(m); onnx.shape_inference.infer_shapes(m); onnx.save(m, out)\n")
COPY_FSYNC = """
import os, shutil, sys
shutil.copyfile(sys.argv[1], sys.argv[2])
fd = os.open(sys.argv[2], os.O_RDONLY)
os.fsync(fd)
os.close(fd)
"""
# A weights-heavy rewrite copies the weights it keeps and makes them durable: at the least the
# stack's imports plus copy + fsync (it reads no weight, so no load+save enters its floor).
STACK_BYTES = "import onnx, numpy, typer\n" + COPY_FSYNC

# The check's onnxruntime work and nothing else: onnxfix/check/compare.py make_session's options,
# sessions for the original and the rewritten model, each run at the check's sizes (symbolic
# dims 2 then 3, as --check-size 2 does; static models once), inputs N(0, 1).
FLOOR = """
import sys
import numpy as np
import onnxruntime as ort
TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
         "tensor(float16)": np.float16, "tensor(int64)": np.int64}
rng = np.random.default_rng(0)
for path in sys.argv[1:]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    symbolic = any(not isinstance(d, int) for i in inputs for d in i.shape)
    for n in (2, 3) if symbolic else (2,):
        feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else n for d in i.shape])
                 .astype(TYPES[i.type]) for i in inputs}
        sess.run(None, feeds)
"""

STACK_CHECK += FLOOR


@dataclass
class Row:
    """One command measured over rounds; outputs it writes are removed after each run."""

    label: str
    argv: list[str]
    outputs: list[Path] = field(default_factory=list)
    must_print: str = ""  # a run whose stdout lacks this failed (e.g. a check that was skipped)
    times: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)  # bytes
    failed: str = ""

    @property
    def time(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def peak(self) -> float:
        return statistics.median(self.rss) if self.rss else float("nan")

    def spread(self) -> float:
        if len(self.times) < 2:
            return 0.0
        return (max(self.times) - min(self.times)) / self.time

    def time_text(self) -> str:
        if self.failed:
            return "failed"
        if len(self.times) < 2:
            return f"{self.time:.3f}"
        return f"{self.time:.3f} ({min(self.times):.3f}-{max(self.times):.3f})"


@dataclass
class Target:
    """candidate / baseline on one metric must not exceed limit."""

    scenario: str
    candidate: Row
    baseline: Row
    metric: str  # "wall" or "RSS"
    limit: float

    def ratio(self) -> float:
        if self.metric == "wall":
            return self.candidate.time / self.baseline.time
        return self.candidate.peak / self.baseline.peak

    def missed(self) -> bool:
        if self.candidate.failed or self.baseline.failed:
            return True
        return not self.ratio() <= self.limit

    def text(self) -> str:
        if self.candidate.failed or self.baseline.failed:
            bad = self.candidate if self.candidate.failed else self.baseline
            return f"{bad.label} failed: {bad.failed}"
        return f"{self.ratio():.2f}x (target <= {self.limit}x)"


@dataclass
class Floor:
    """The stack floor of a target: `row` does the target's unavoidable stack work alone, and
    is measured against the target's baseline on the target's metric."""

    target: Target
    row: Row

    def ratio(self) -> float:
        t = self.target
        return Target(t.scenario, self.row, t.baseline, t.metric, t.limit).ratio()

    def verdict(self) -> str:
        if self.row.failed or self.target.baseline.failed:
            return "failed"
        return "within target" if self.ratio() <= self.target.limit else "above target"


@dataclass
class Scenario:
    name: str
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    floors: list[Floor] = field(default_factory=list)
    summary: Callable[[], list[str]] = list  # lines printed after the runs


def run_once(row: Row, work: Path) -> None:
    """One fresh subprocess; wall time from spawn to reap, peak RSS from os.wait4."""
    log = work / "last.log"
    with open(log, "wb") as err, open(work / "last.out", "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(row.argv, stdout=out, stderr=err, cwd=work)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    for p in row.outputs:
        p.unlink(missing_ok=True)
        p.with_name(p.name + ".data").unlink(missing_ok=True)
    stdout = (work / "last.out").read_text(errors="replace")
    if code != 0 or row.must_print not in stdout:
        lines = (log.read_text(errors="replace") + stdout).strip().splitlines() or ["no output"]
        row.failed = f"exit {code}: {lines[-1][:160]}"
        return
    row.times.append(elapsed)
    row.rss.append(usage.ru_maxrss * 1024)  # Linux reports KiB


def measure(rows: list[Row], runs: int, work: Path, warm_up: bool = True) -> None:
    """A warm-up round (page cache, .pyc files), then runs interleaved rounds."""
    for round_ in range(runs + warm_up):
        print(f"  round {round_ + 1}/{runs + warm_up}{' (warm-up)' * (warm_up and not round_)}",
              file=sys.stderr, flush=True)
        for row in rows:
            if row.failed:
                continue
            run_once(row, work)
            if warm_up and round_ == 0 and row.times:
                row.times.clear()
                row.rss.clear()


def onnxfix() -> list[str]:
    """The console script installed next to this Python (not a pyenv shim), else -m."""
    exe = Path(PY).parent / "onnxfix"
    return [str(exe)] if exe.exists() else [PY, "-m", "onnxfix"]


def build(work: Path, kind: str, n: int) -> Path:
    """A model from bench_models.py, built once in a subprocess and cached in work."""
    path = work / f"{kind}_{n}.onnx"
    if not path.exists():
        print(f"building {path.name} ...", file=sys.stderr, flush=True)
        subprocess.run([PY, str(MODELS), kind, str(path), str(n)], check=True)
    return path


def label_size(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def bytes_scenario(work: Path, quick: bool, large: bool) -> Scenario:
    sc = Scenario("bytes")
    models = [("16 MiB" if quick else "192 MiB", build(work, "mlp", 4 if quick else 48))]
    if large:
        models.append(("1 GiB", build(work, "mlp-wide", 64)))
    for tag, model in models:
        outs = [work / f"bytes_{k}.onnx" for k in ("base", "cp", "cli")]
        base = Row(f"onnx.load+save, {tag}", [PY, "-c", LOAD_SAVE, str(model), str(outs[0])],
                   [outs[0]])
        copy = Row(f"cp+fsync, {tag}", [PY, "-c", COPY_FSYNC, str(model), str(outs[1])],
                   [outs[1]])
        cli = Row(f"rewrite --no-check, {tag}",
                  [*onnxfix(), "rewrite", str(model), str(outs[2]), "--no-check"], [outs[2]])
        stack_out = work / "bytes_stack.onnx"
        stack = Row(f"stack floor (import onnx, numpy, typer + cp+fsync), {tag}",
                    [PY, "-c", STACK_BYTES, str(model), str(stack_out)], [stack_out])
        sc.rows += [base, copy, cli, stack]
        targets = [Target("bytes", cli, base, "wall", 0.4),
                   Target("bytes", cli, copy, "wall", 2.5)]
        sc.targets += targets
        sc.floors += [Floor(t, stack) for t in targets]
    return sc


def nodes_scenario(work: Path, quick: bool) -> Scenario:
    sc = Scenario("nodes")
    pairs = []
    for n in [1000] if quick else [1000, 10_000, 100_000]:
        model, tag = build(work, "chain", n), f"{label_size(n)} nodes"
        outs = [work / f"nodes_{k}.onnx" for k in ("base", "cli")]
        base = Row(f"onnx.load+save, {tag}", [PY, "-c", LOAD_SAVE, str(model), str(outs[0])],
                   [outs[0]])
        cli = Row(f"rewrite --no-check, {tag}",
                  [*onnxfix(), "rewrite", str(model), str(outs[1]), "--no-check"], [outs[1]])
        stack = Row(f"stack floor (load, check, infer, save), {tag}",
                    [PY, "-c", STACK_REWRITE, str(model), str(outs[0])], [outs[0]])
        sc.rows += [base, cli, stack]
        targets = [Target("nodes", cli, base, "wall", 3.0), Target("nodes", cli, base, "RSS", 2.0)]
        sc.targets += targets
        sc.floors.append(Floor(targets[0], stack))  # wall only: see STACK_REWRITE
        pairs.append((n, base, cli))
    sc.summary = lambda: per_node_notes(pairs)
    return sc


def per_node_notes(pairs) -> list[str]:
    """Cost per node, and the marginal cost between sizes: constant when the cost is linear."""
    notes = []
    for i in (1, 2):
        parts = []
        for k, (n, *rows) in enumerate(pairs):
            row = rows[i - 1]
            text = f"{label_size(n)}: {1e6 * row.time / n:.1f} us/node"
            if k:
                m, *prev = pairs[k - 1]
                step = 1e6 * (row.time - prev[i - 1].time) / (n - m)
                text += f" (marginal {step:.1f} us/node from {label_size(m)})"
            parts.append(text)
        notes.append(f"{pairs[0][i].label.split(',')[0]}: " + "; ".join(parts))
    return notes


def inspect_scenario(work: Path, quick: bool) -> Scenario:
    n = 1000 if quick else 100_000
    model, tag = build(work, "chain", n), f"{label_size(n)} nodes"
    base = Row(f"onnx.load, {tag}", [PY, "-c", LOAD, str(model)])
    cli = Row(f"inspect, {tag}", [*onnxfix(), "inspect", str(model)])
    stack = Row(f"stack floor (load, infer), {tag}", [PY, "-c", STACK_INSPECT, str(model)])
    target = Target("inspect", cli, base, "wall", 1.5)
    return Scenario("inspect", [base, cli, stack], [target], [Floor(target, stack)])


def check_scenario(work: Path, quick: bool) -> Scenario:
    sc = Scenario("check")
    models = [(f"{n} random node{'s' * (n > 1)}", build(work, "randn", n))
              for n in ([1] if quick else [1, 100, 2000])]
    if not quick:
        models.append(("conv VAE, 256k-element draw", build(work, "vae", 4)))
    for tag, model in models:
        rewritten = work / f"{model.stem}_rewritten.onnx"
        floor = Row(f"ORT floor, {tag}", [PY, "-c", FLOOR, str(model), str(rewritten)])
        out = work / "check_cli.onnx"
        cli = Row(f"rewrite (checked), {tag}", [*onnxfix(), "rewrite", str(model), str(out)],
                  [out], must_print="Parity: PASSED")
        prep = subprocess.run([*onnxfix(), "rewrite", str(model), str(rewritten), "--no-check"],
                              capture_output=True, text=True)
        if prep.returncode != 0:
            floor.failed = f"cannot prepare the rewritten model: {prep.stderr.strip()[-160:]}"
        # the same onnxruntime work, plus the stack work a checked rewrite cannot skip
        stack_out = work / "stack_check_out.onnx"
        stack = Row(f"stack floor (ORT floor + load, check, infer, save), {tag}",
                    [PY, "-c", STACK_CHECK, str(model), str(rewritten), str(stack_out)],
                    [stack_out])
        if floor.failed:
            stack.failed = floor.failed
        sc.rows += [floor, cli, stack]
        targets = [Target("check", cli, floor, "wall", 1.3),
                   Target("check", cli, floor, "RSS", 1.5)]
        sc.targets += targets
        sc.floors.append(Floor(targets[0], stack))
    return sc


def startup_scenario(work: Path, quick: bool) -> Scenario:
    tiny = build(work, "tiny", 0)
    out = work / "startup_cli.onnx"
    base = Row('python -c "import onnx, numpy"', [PY, "-c", IMPORTS])
    helps = Row("onnxfix --help", [*onnxfix(), "--help"])
    cli = Row("rewrite --no-check, tiny model",
              [*onnxfix(), "rewrite", str(tiny), str(out), "--no-check"], [out])
    return Scenario("startup", [base, helps, cli],
                    [Target("startup", helps, base, "wall", 1.5),
                     Target("startup", cli, base, "wall", 1.5)])


SCENARIOS = {
    "bytes": lambda a: bytes_scenario(a.work, a.quick, a.large),
    "nodes": lambda a: nodes_scenario(a.work, a.quick),
    "inspect": lambda a: inspect_scenario(a.work, a.quick),
    "check": lambda a: check_scenario(a.work, a.quick),
    "startup": lambda a: startup_scenario(a.work, a.quick),
}


def machine(load_start: tuple[float, ...]) -> list[str]:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip()
                   for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    versions = subprocess.run(
        [PY, "-c", "import onnx, onnxruntime, numpy; print(f'onnx {onnx.__version__}, "
         "onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}')"],
        capture_output=True, text=True).stdout.strip()
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return [f"onnxfix at {commit}{' (uncommitted changes)' if dirty else ''}; "
            f"{cpu}, {os.cpu_count()} cores; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, {versions}",
            f"load average at start: {load_text(load_start)}"]


def load_text(load: tuple[float, ...]) -> str:
    return " / ".join(f"{x:.2f}" for x in load) + " (1 / 5 / 15 min)"


def render(header: list[str], rows: list[list[str]], markdown: bool, numeric: int) -> str:
    """A table; the last `numeric` columns are numbers (right-aligned in markdown)."""
    if markdown:
        first = len(header) - numeric
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i < first else "---:" for i in range(len(header)))
                 + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def rows_table(scenarios: list[Scenario], markdown: bool) -> str:
    body = [[sc.name, r.label, r.time_text(),
             "failed" if r.failed else f"{r.peak / 2**20:.0f}"]
            for sc in scenarios for r in sc.rows]
    return render(["scenario", "command", "median s (min-max)", "peak RSS MB"], body, markdown,
                  numeric=2)


def targets_table(scenarios: list[Scenario], markdown: bool) -> str:
    body = []
    for sc in scenarios:
        for t in sc.targets:
            ratio = "-" if t.candidate.failed or t.baseline.failed else f"{t.ratio():.2f}x"
            body.append([sc.name, t.candidate.label, t.baseline.label, t.metric, ratio,
                         f"<= {t.limit}x", "MISSED" if t.missed() else "ok"])
    return render(["scenario", "candidate", "baseline", "metric", "ratio", "target", "result"],
                  body, markdown, numeric=3)


def floors_table(scenarios: list[Scenario], markdown: bool) -> str:
    body = []
    for sc in scenarios:
        for f in sc.floors:
            t = f.target
            ratio = "-" if f.verdict() == "failed" else f"{f.ratio():.2f}x"
            body.append([sc.name, f.row.label, t.baseline.label, t.metric, ratio,
                         f"<= {t.limit}x", f.verdict()])
    return render(["scenario", "stack floor", "baseline", "metric", "ratio", "target", "floor"],
                  body, markdown, numeric=3)


def warnings(scenarios: list[Scenario], load_start, load_end) -> list[str]:
    out = []
    rows = [r for sc in scenarios for r in sc.rows if len(r.times) > 1]
    noisy = sorted((r for r in rows if r.spread() > SPREAD_WARNING), key=Row.spread)
    if noisy:
        worst = noisy[-1]
        out.append(f"WARNING: {len(noisy)} of {len(rows)} commands ranged over more than "
                   f"{100 * SPREAD_WARNING:.0f}% of their median (worst: '{worst.label}', "
                   f"{min(worst.times):.3f}-{max(worst.times):.3f} s, "
                   f"{100 * worst.spread():.0f}%): the machine is busy, and a ratio that moves "
                   "with load is not a result")
    cores = os.cpu_count() or 1
    # at the end, about 1.0 of the load is this benchmark's own (one process at a time)
    if load_start[0] > 0.25 * cores or load_end[0] > 1 + 0.25 * cores:
        out.append(f"WARNING: load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at "
                   f"end on {cores} cores: other processes shared the machine")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                    help="run only this scenario (repeatable; default: all)")
    ap.add_argument("--runs", type=int, default=5, help="measured rounds after the warm-up")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: one round, no warm-up, the smallest models (ratios are not "
                    "results)")
    ap.add_argument("--large", action="store_true", help="bytes: also a 1 GiB model")
    ap.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "onnxfix-bench",
                    help="where models are built and cached, and outputs written")
    ap.add_argument("--assert", dest="assert_", action="store_true",
                    help="exit 1, with a line per missed target, when a target is missed")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.quick:
        args.runs = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    # the onnxfix of this checkout, even when another copy is pip-installed
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                             os.environ.get("PYTHONPATH")]))
    # an installed onnxfix runs from bytecode, as onnx and numpy do: with
    # PYTHONDONTWRITEBYTECODE set (some sandboxes and CI images), every run would compile
    # onnxfix's sources again, a cost no user pays. The cache goes to --work, not the checkout.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(args.work / "pycache")
    load_start = os.getloadavg()
    header = machine(load_start)
    scenarios = [SCENARIOS[name](args) for name in args.scenario or SCENARIOS]
    warm_up = not args.quick
    for sc in scenarios:
        print(f"running {sc.name} ({len(sc.rows)} commands x {args.runs + warm_up} rounds) ...",
              file=sys.stderr, flush=True)
        measure(sc.rows, args.runs, args.work, warm_up)
    for name in ("last.log", "last.out"):
        (args.work / name).unlink(missing_ok=True)
    load_end = os.getloadavg()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("\n".join(header))
    print(f"load average at end: {load_text(load_end)}")
    print(f"{args.runs} interleaved round(s){' after a warm-up' * warm_up}, fresh process each "
          f"(bytecode cached in --work); "
          f"this process's peak RSS {own:.0f} MB (a floor for the children's)"
          + ("; --quick: smoke run, the ratios are not results" if args.quick else ""))
    print()
    print(rows_table(scenarios, args.markdown))
    print()
    print(targets_table(scenarios, args.markdown))
    if any(sc.floors for sc in scenarios):
        print()
        print("Stack floors: the required stack's own unavoidable work for the target (no onnxfix "
              "code), against the same baseline; a floor above its target puts the target out of "
              "reach while that work runs")
        print(floors_table(scenarios, args.markdown))
    extra = [line for sc in scenarios for line in sc.summary()]
    extra += warnings(scenarios, load_start, load_end)
    if extra:
        print()
        print("\n".join(extra))
    missed = [t for sc in scenarios for t in sc.targets if t.missed()]
    if missed:
        print(f"\n{len(missed)} target(s) missed:", file=sys.stderr)
        for t in missed:
            print(f"MISSED | {t.scenario} | {t.candidate.label} vs {t.baseline.label} | "
                  f"{t.metric} {t.text()}", file=sys.stderr)
    return 1 if args.assert_ and missed else 0


if __name__ == "__main__":
    sys.exit(main())
