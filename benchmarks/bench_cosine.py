"""What the cosine distance costs on each path: forward+backward of every loss path with
``distance="cosine"`` and with its Euclidean twin, in interleaved rounds in one process (XLA,
median step time), and the ratio.

    python benchmarks/bench_cosine.py                       # N=2048, D=256, V=16,384
    python benchmarks/bench_cosine.py --vocab-size 50257 --rounds 5

Writes cosine.json and cosine.md to --out.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import harmonic_tf as ht  # noqa: E402

from _common import interleaved_times, loss_step, median_ms, write_timings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> the loss call's arguments besides distance (chunk sizes filled in from the flags)
PATHS = {
    "exact dense": lambda a: dict(path="dense", chunk_size=a.chunk_size),
    "exact two-pass": lambda a: dict(path="two_pass", chunk_size=a.chunk_size),
    "exact fused": lambda a: dict(path="fused", chunk_size=a.chunk_size),
    "sampled, defaults (center rows)": lambda a: dict(options=ht.SampledOptions(k=a.k)),
    "sampled, sparse rows": lambda a: dict(
        options=ht.SampledOptions(k=a.k, center_gradient="indexed_slices")
    ),
}


def make_step(path: str, distance: str, args):
    """A jit-compiled forward+backward of one path, returning scalars, compiled."""
    call = PATHS[path](args)

    def loss_fn(x, w, y):
        if "options" in call:
            return ht.sampled_harmonic_loss(x, w, y, call["options"], seed=0, distance=distance)
        return ht.harmonic_loss(x, w, y, dense_max_bytes=0, distance=distance, **call)

    step = loss_step(args.tokens, args.dim, args.vocab_size, loss_fn)
    step()  # compile
    return step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--k", type=int, default=512, help="the sampled paths' draws")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=3, help="timed steps per round and variant")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    steps = {
        f"{path} | {distance}": make_step(path, distance, args)
        for path in PATHS
        for distance in ("euclidean", "cosine")
    }
    times = interleaved_times(steps, args.rounds, args.reps)
    median = median_ms(times)
    lines = [
        f"Cosine against Euclidean, N={args.tokens}, D={args.dim}, V={args.vocab_size:,} "
        f"(chunk {args.chunk_size}, k={args.k}), forward+backward under XLA, median of "
        f"{args.rounds} interleaved rounds x {args.reps} steps (`python "
        "benchmarks/bench_cosine.py`):",
        "",
        "| path | Euclidean (ms) | cosine (ms) | cosine / Euclidean |",
        "|---|---|---|---|",
    ]
    for path in PATHS:
        a, b = median[f"{path} | euclidean"], median[f"{path} | cosine"]
        lines.append(f"| {path} | {a:,.1f} | {b:,.1f} | {b / a:.2f}x |")
    return write_timings(args.out, "cosine", vars(args), times, "\n".join(lines))


if __name__ == "__main__":
    main()
