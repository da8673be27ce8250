"""What measuring distances from a reference point costs: forward+backward of the chunked exact
and the sampled loss (package defaults) at the reference point, with the shift as shipped and
with the shift replaced by zeros, in interleaved rounds in one process (XLA, median step time).

    python benchmarks/bench_reference_point.py                  # N=4096, D=512, V=50,257
    python benchmarks/bench_reference_point.py --vocab-size 8001 --rounds 5

Writes reference_point.json and .md to --out.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import harmonic_tf as ht  # noqa: E402
from harmonic_tf.ops import _kernel, distances, exact  # noqa: E402

from _common import interleaved_times, loss_step, median_ms, write_timings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _no_shift(x):
    return tf.zeros_like(x[0])


def make_step(kind: str, shifted: bool, args):
    """A jit-compiled forward+backward; ``shifted=False`` swaps the reference point for zeros
    while the function is traced (the modules look it up by name at trace time)."""

    def loss_fn(x, w, y):
        if kind == "exact":
            return ht.harmonic_loss(x, w, y, chunk_size=args.chunk_size)
        return ht.sampled_harmonic_loss(x, w, y, seed=0)

    step = loss_step(args.tokens, args.dim, args.vocab_size, loss_fn)
    # Every module that measures from the reference point (the kernel for every per-token
    # path, exact for the fused one, distances for the logits).
    modules = (distances, exact, _kernel)
    saved = [m.reference_point for m in modules]
    if not shifted:
        for m in modules:
            m.reference_point = _no_shift
    try:
        step()  # trace and compile with the chosen reference point
    finally:
        for m, f in zip(modules, saved, strict=True):
            m.reference_point = f
    return step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--vocab-size", type=int, default=50257)
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=3, help="timed steps per round and variant")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    steps = {
        f"{kind} {'shifted' if shifted else 'unshifted'}": make_step(kind, shifted, args)
        for kind in ("exact", "sampled")
        for shifted in (True, False)
    }
    times = interleaved_times(steps, args.rounds, args.reps)
    median = median_ms(times)
    lines = [
        f"Reference-point cost, N={args.tokens}, D={args.dim}, V={args.vocab_size:,} "
        f"(chunk {args.chunk_size}), forward+backward under XLA, median of "
        f"{args.rounds} interleaved rounds x {args.reps} steps:",
        "",
        "| loss | shifted (ms) | unshifted (ms) | cost |",
        "|---|---|---|---|",
    ]
    for kind in ("exact", "sampled"):
        a, b = median[f"{kind} shifted"], median[f"{kind} unshifted"]
        lines.append(f"| {kind} | {a:,.1f} | {b:,.1f} | {100 * (a / b - 1):+.1f}% |")
    return write_timings(args.out, "reference_point", vars(args), times, "\n".join(lines))


if __name__ == "__main__":
    main()
