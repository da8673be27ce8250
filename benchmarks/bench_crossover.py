"""Where the sampled loss stops paying: forward+backward of the exact loss (``ExactOptions()``'s
path choice) and of the sampled loss (``SampledOptions()``), side by side at each batch size
``N``, width ``D`` and vocabulary ``V``, against the sampled estimate's share of the exact
loss's matmul FLOPs (``SampledOptions.matmul_flops``). ``HarmonicLoss``'s exact fallback is
set from where the two times cross.

    python benchmarks/bench_crossover.py                         # the grid below, ~10 minutes
    python benchmarks/bench_crossover.py --points 1024x64,1024x256,4096x64,4096x256 \
        --vocab-sizes 800,1200,1800,2500,3500,5000 --stem crossover_validation   # held out

Writes <stem>.json, .md and .png (stem ``crossover``) to --out.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import harmonic_tf as ht  # noqa: E402

from _common import interleaved_times, loss_step, median_ms, write_timings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
POINTS = "512x128,2048x128,8192x128,2048x512"
VOCAB_SIZES = "500,1000,1500,2000,3000,4000,6000,8000"


def point_times(tokens: int, dim: int, vocab_size: int, args) -> dict[str, list[float]]:
    """Seconds per step of the exact and the sampled loss at one point (compiled first)."""
    exact = ht.ExactOptions()
    options = ht.SampledOptions()
    steps = {
        "exact": loss_step(
            tokens, dim, vocab_size,
            lambda x, w, y: ht.harmonic_loss(
                x, w, y, chunk_size=exact.chunk_size, dense_max_bytes=exact.dense_max_bytes
            ),
        ),
        "sampled": loss_step(
            tokens, dim, vocab_size,
            lambda x, w, y: ht.sampled_harmonic_loss(x, w, y, options, seed=0),
        ),
    }  # fmt: skip
    for step in steps.values():
        step()  # compile
    return interleaved_times(steps, args.rounds, args.reps)


def flop_share(tokens: int, dim: int, vocab_size: int) -> float:
    """The sampled defaults' matmul FLOPs over the exact loss's."""
    sampled = ht.SampledOptions().matmul_flops(tokens, vocab_size, dim)
    return sampled / ht.ops.exact_matmul_flops(tokens, vocab_size, dim)


def measure(args) -> tuple[list[dict], dict]:
    """One row per (N, D, V): median ms of both losses, their ratio and the FLOP share."""
    rows, times = [], {}
    points = [tuple(int(n) for n in p.split("x")) for p in args.points.split(",")]
    vocab_sizes = [int(v) for v in args.vocab_sizes.split(",")]
    for i, (tokens, dim) in enumerate(points):
        for j, vocab_size in enumerate(vocab_sizes):
            done = i * len(vocab_sizes) + j
            print(
                f"[{done + 1}/{len(points) * len(vocab_sizes)}] N={tokens} D={dim} V={vocab_size}"
            )
            t = point_times(tokens, dim, vocab_size, args)
            ms = median_ms(t)
            key = f"N={tokens} D={dim} V={vocab_size}"
            times.update({f"{key} {name}": v for name, v in t.items()})
            rows.append(
                dict(tokens=tokens, dim=dim, vocab_size=vocab_size, exact_ms=ms["exact"],
                     sampled_ms=ms["sampled"], flop_share=flop_share(tokens, dim, vocab_size))
            )  # fmt: skip
    return rows, times


def table(rows: list[dict], args) -> str:
    command = "python benchmarks/bench_crossover.py"
    if args.points != POINTS or args.vocab_sizes != VOCAB_SIZES:
        command += f" --points {args.points} --vocab-sizes {args.vocab_sizes}"
    if args.stem != "crossover":
        command += f" --stem {args.stem}"
    lines = [
        f"Forward+backward under XLA, `ExactOptions()` against `SampledOptions()` (seed 0), "
        f"median of {args.rounds} interleaved rounds x {args.reps} steps (`{command}`):",
        "",
        "| N | D | V | exact (ms) | sampled (ms) | exact / sampled | sampled FLOP share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tokens']} | {r['dim']} | {r['vocab_size']:,} | {r['exact_ms']:,.1f} | "
            f"{r['sampled_ms']:,.1f} | {r['exact_ms'] / r['sampled_ms']:.2f}x | "
            f"{r['flop_share']:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for tokens, dim in sorted({(r["tokens"], r["dim"]) for r in rows}):
        mine = [r for r in rows if (r["tokens"], r["dim"]) == (tokens, dim)]
        share = [r["flop_share"] for r in mine]
        speed = [r["exact_ms"] / r["sampled_ms"] for r in mine]
        ax.plot(share, speed, marker="o", label=f"N={tokens}, D={dim}")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sampled defaults' matmul FLOPs / exact loss's")
    ax.set_ylabel("speed-up of the sampled loss (exact ms / sampled ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--points", default=POINTS, help="NxD pairs: tokens per step x width")
    p.add_argument("--vocab-sizes", default=VOCAB_SIZES)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=3, help="timed steps per round and loss")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--stem", default="crossover", help="the result files' name")
    args = p.parse_args(argv)
    rows, times = measure(args)
    write_timings(args.out, args.stem, dict(vars(args), rows=rows), times, table(rows, args))
    plot(rows, os.path.join(args.out, args.stem + ".png"))
    return rows


if __name__ == "__main__":
    main()
