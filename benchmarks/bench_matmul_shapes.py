"""The matmul rate of the exact loss's chunk shapes against cross-entropy's, under XLA.

The fused exact path runs cross-entropy's three products (distances ``x w^T``, ``dx = c w``,
``dW = c^T x``) on token chunks of ``rows = N * chunk_size / V`` tokens; this measures each
product's GFLOP/s at those row counts and at the full batch (what dense cross-entropy runs), so
the chunked path's distance from cross-entropy's speed can be read per product.

    python benchmarks/bench_matmul_shapes.py                      # D=512 and D=128, V=50,257
    python benchmarks/bench_matmul_shapes.py --d 128 --rows 83,333,2048

Writes matmul_shapes.json and matmul_shapes.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _common import machine

PRODUCTS = {
    "distances x w^T": "rows x V from [rows, D] x [V, D]^T",
    "dx = c w": "rows x D from [rows, V] x [V, D]",
    "dW = c^T x": "V x D from [rows, V]^T x [rows, D]",
}


def measure(rows: int, d: int, v: int, reps: int) -> dict:
    """Median seconds and GFLOP/s of each product at ``rows`` tokens, scaled to 2,048 tokens."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(rows, d)).astype(np.float32))
    w = tf.constant(rng.normal(size=(v, d)).astype(np.float32))
    c = tf.constant(rng.normal(size=(rows, v)).astype(np.float32))
    fns = {
        "distances x w^T": (lambda x, w: tf.matmul(x, w, transpose_b=True), (x, w)),
        "dx = c w": (lambda c, w: tf.matmul(c, w), (c, w)),
        "dW = c^T x": (lambda c, x: tf.matmul(c, x, transpose_a=True), (c, x)),
    }
    out = {}
    for name, (fn, args) in fns.items():
        step = tf.function(fn, jit_compile=True)
        for _ in range(3):
            step(*args).numpy()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            step(*args).numpy()
            times.append(time.perf_counter() - start)
        seconds = float(np.median(times))
        out[name] = {"seconds": seconds, "gflops": 2.0 * rows * v * d / seconds / 1e9}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--v", type=int, default=50257)
    p.add_argument("--d", default="512,128", help="comma list")
    p.add_argument("--rows", default="", help="comma list (default: chunk rows and full batch)")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tqdm import tqdm

    # The reference point (N=4,096, D=512) and the example's training step (N=2,048, D=128),
    # at chunk_size 2,048, 4,096 and 8,192, and the full batch.
    default_rows = {512: [166, 333, 667, 4096], 128: [83, 166, 333, 2048]}
    plan = []
    for d in map(int, args.d.split(",")):
        rows = [int(r) for r in args.rows.split(",")] if args.rows else default_rows.get(d, [4096])
        plan += [(d, r) for r in rows]
    results = []
    for d, rows in tqdm(plan, desc="shapes"):
        results.append({"d": d, "rows": rows, "v": args.v, **measure(rows, d, args.v, args.reps)})
    info = machine()
    command = " ".join(["python", os.path.relpath(os.path.abspath(__file__)), *sys.argv[1:]])
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; TensorFlow {info['tensorflow']}; "
        f"command: `{command}`",
        "",
        f"GFLOP/s of each product under XLA, V = {args.v:,} (median of {args.reps}):",
        "",
        "| D | rows | " + " | ".join(PRODUCTS) + " | all three, ms per 2,048 tokens |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        total = sum(r[name]["seconds"] for name in PRODUCTS) * 2048 / r["rows"]
        cells = " | ".join(f"{r[name]['gflops']:,.0f}" for name in PRODUCTS)
        lines.append(f"| {r['d']} | {r['rows']:,} | {cells} | {total * 1000:,.0f} |")
    text = "\n".join(lines)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "matmul_shapes.json"), "w") as f:
        json.dump({"machine": info, "command": command, "rows": results}, f, indent=1)
    with open(os.path.join(args.out, "matmul_shapes.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return {"rows": results}


if __name__ == "__main__":
    main()
