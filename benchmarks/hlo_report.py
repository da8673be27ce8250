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
import json
import os
import subprocess
import sys
import tempfile

from _common import (
    CONFIGS,
    REFERENCE,
    floor_bytes,
    inputs,
    loss_and_grads,
    read_dump,
    with_dump_flags,
)

PATHS = [name for name in CONFIGS if name.endswith("_xla") and name != "matmul_rate_xla"]
SIZES = [REFERENCE, {**REFERENCE, "v": 262_144}]


def compile_one(name: str, n: int, d: int, v: int, k: int, dump: str) -> None:
    """Compiles the configuration in this process with the dump directory set."""
    import tensorflow as tf

    x, w, y = inputs(n, d, v)
    fn = tf.function(loss_and_grads(name, x, w, y, k, reduce_outputs=False), jit_compile=True)
    fn.experimental_get_compiler_ir(x, w)(stage="optimized_hlo")


def _subprocess(name: str, size: dict) -> dict:
    with tempfile.TemporaryDirectory() as dump:
        env = with_dump_flags(dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), dump)
        args = [name, str(size["n"]), str(size["d"]), str(size["v"]), str(size["k"]), dump]
        cmd = [sys.executable, os.path.abspath(__file__), "--compile-one", *args]
        subprocess.run(cmd, check=True, env=env)
        return read_dump(dump)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--paths", nargs="*", default=PATHS)
    parser.add_argument("--v", nargs="*", type=int, default=[s["v"] for s in SIZES])
    parser.add_argument("--n", type=int, default=REFERENCE["n"])
    parser.add_argument("--d", type=int, default=REFERENCE["d"])
    parser.add_argument("--k", type=int, default=REFERENCE["k"])
    parser.add_argument("--compile-one", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compile_one:  # the subprocess: compile one configuration with the dump flags set
        name, n, d, v, k, dump = args.compile_one
        compile_one(name, int(n), int(d), int(v), int(k), dump)
        return []
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
