"""What XLA makes of each loss path: the optimized HLO's memory plan and op mix.

For each configuration of ``bench_loss.py`` that runs under XLA, compiles (does not run) the
forward+backward ``(loss, dx, dW)`` at the reference point and at V = 262,144 in a subprocess
with ``XLA_FLAGS=--xla_dump_to``, and reads XLA's buffer assignment: bytes of the temporary
arena, of the outputs, the largest temporary values, and the count of each HLO opcode. The CPU
compiler's plan is the evidence for what a GPU user should expect (the same tf2xla lowering;
GPU fusion and layouts differ, buffer sizes do not).

    python benchmarks/hlo_report.py            # writes hlo_report.json and hlo_report.md to --out
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_loss import CONFIGS, REFERENCE, floor_bytes, inputs, loss_and_grads  # noqa: E402

PATHS = [name for name in CONFIGS if name.endswith("_xla") and name != "matmul_rate_xla"]
SIZES = [REFERENCE, {**REFERENCE, "v": 262_144}]
# Opcodes worth counting (the rest are reshapes, bitcasts, tuples, parameters, constants).
OPS = (
    "dot", "fusion", "while", "scatter", "gather", "sort", "rng-bit-generator", "dynamic-slice",
    "dynamic-update-slice", "reduce", "exponential", "log", "divide", "transpose", "copy",
    "all-reduce", "custom-call",
)  # fmt: skip


def compile_one(name: str, n: int, d: int, v: int, k: int, dump: str) -> None:
    """Compiles the configuration in this process with the dump directory set."""
    import tensorflow as tf

    x, w, y = inputs(n, d, v)
    fn = tf.function(loss_and_grads(name, x, w, y, k, reduce_outputs=False), jit_compile=True)
    fn.experimental_get_compiler_ir(x, w)(stage="optimized_hlo")


def read_dump(dump: str) -> dict:
    """Memory plan and op mix of the largest module in ``dump`` (the step; small ones are
    argument conversions)."""
    reports = glob.glob(os.path.join(dump, "*cpu_after_optimizations-buffer-assignment.txt"))
    best = max(reports, key=lambda p: _total_bytes(open(p).read()))
    text = open(best).read()
    temp, outputs, params, values = 0, 0, 0, []
    for block in re.split(r"\n(?=allocation \d+:)", text.split("\nTotal bytes used")[0]):
        head = block.split("\n", 1)[0]
        match = re.match(r"allocation \d+: size (\d+)", head)
        if not match:
            continue
        size = int(match.group(1))
        if "preallocated-temp" in head:
            temp += size
            for value in re.finditer(
                r"value: <\d+ (\S+) @\d+> \(size=(\d+),offset=\d+\): (\S+)", block
            ):
                values.append((int(value.group(2)), value.group(1), value.group(3)))
        elif "parameter" in head:
            params += size
        elif "maybe-live-out" in head or "output shape" in head:
            outputs += size
    hlo = open(best.replace("-buffer-assignment.txt", ".txt")).read()
    ops = collections.Counter(op for op in re.findall(r"= \S+ ([a-z][a-z\-]*)\(", hlo) if op in OPS)
    values.sort(reverse=True)
    return {
        "temp_bytes": temp,
        "output_bytes": outputs,
        "parameter_bytes": params,
        "largest_temp_values": [
            {"bytes": b, "instruction": i, "shape": s} for b, i, s in values[:5]
        ],
        "ops": dict(sorted(ops.items())),
    }


def _total_bytes(text: str) -> int:
    match = re.search(r"Total bytes used: (\d+)", text)
    return int(match.group(1)) if match else 0


def with_dump_flags(env: dict, dump: str) -> dict:
    """``env`` with XLA told to dump each compiled module's HLO and buffer assignment to
    ``dump`` (after any ``XLA_FLAGS`` already set)."""
    flags = f"--xla_dump_to={dump} --xla_dump_hlo_as_text"
    return {**env, "XLA_FLAGS": (env.get("XLA_FLAGS", "") + " " + flags).strip()}


def _subprocess(name: str, size: dict) -> dict:
    with tempfile.TemporaryDirectory() as dump:
        env = with_dump_flags(dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), dump)
        args = [name, str(size["n"]), str(size["d"]), str(size["v"]), str(size["k"]), dump]
        code = f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
        code += "import hlo_report as h; h.compile_one(sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6])"
        subprocess.run([sys.executable, "-c", code, *args], check=True, env=env)
        return read_dump(dump)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--paths", nargs="*", default=PATHS)
    parser.add_argument("--v", nargs="*", type=int, default=[s["v"] for s in SIZES])
    parser.add_argument("--n", type=int, default=REFERENCE["n"])
    parser.add_argument("--d", type=int, default=REFERENCE["d"])
    parser.add_argument("--k", type=int, default=REFERENCE["k"])
    args = parser.parse_args(argv)
    rows = []
    for v in args.v:
        size = {"n": args.n, "d": args.d, "v": v, "k": args.k}
        for name in args.paths:
            print(f"compiling {name} at V={size['v']}", flush=True)
            row = {"name": name, **size, **_subprocess(name, size)}
            row["floor_bytes"] = floor_bytes(name, **size)
            rows.append(row)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "hlo_report.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out, "hlo_report.md"), "w") as f:
        f.write(table(rows))
    print(table(rows))
    return rows


def table(rows: list[dict]) -> str:
    mb = 2**20
    lines = [
        "| path | V | XLA temp (MB) | outputs (MB) | temp + outputs / floor | largest temporaries | ops |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = (r["temp_bytes"] + r["output_bytes"]) / r["floor_bytes"]
        largest = ", ".join(
            f"{v['shape']} ({v['bytes'] / mb:.0f})" for v in r["largest_temp_values"][:3]
        )
        ops = ", ".join(f"{op} {count}" for op, count in r["ops"].items())
        lines.append(
            f"| {r['name']} | {r['v']:,} | {r['temp_bytes'] / mb:,.0f} | {r['output_bytes'] / mb:,.0f} "
            f"| {ratio:.2f} | {largest} | {ops} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
