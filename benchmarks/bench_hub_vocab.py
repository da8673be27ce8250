"""A keras-hub training step at Gemma's vocabulary (V = 262,144) on a tiny Gemma 3 backbone:
the stock ``Gemma3CausalLM`` with cross-entropy (its ``[B, T, V]`` logits) beside a
``HarmonicCausalLM`` with the exact chunked loss (``HarmonicLoss()``) and the sampled loss
(``HarmonicLoss(sampled=True)``), time and peak memory side by side.

    python benchmarks/bench_hub_vocab.py                        # V = 262,144, 4 x 512 tokens
    python benchmarks/bench_hub_vocab.py --batch 16 --runs exact,sampled   # past CE's memory

Each run is a process of its own (``--single``): its peak resident memory (``ru_maxrss``) is
its own, and ``step_mib`` is that peak less the memory before the first step (the model, its
optimizer state and the data are there already). Writes ``hub_vocab_v<V>_n<N>.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

from _common import child_result, machine

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = {
    "ce": "cross-entropy (stock Gemma3CausalLM)",
    "exact": "exact harmonic, HarmonicLoss() (chunked)",
    "sampled": "sampled harmonic, HarmonicLoss(sampled=True)",
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _model(kind: str, args):
    import keras
    import keras_hub

    import harmonic_tf as ht
    from harmonic_tf.keras.hub import HarmonicCausalLM

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=args.vocab, image_size=16, num_layers=args.layers, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=args.width, intermediate_dim=4 * args.width,
        head_dim=args.width // 2,
    )  # fmt: skip
    if kind == "ce":
        lm = keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        lm = HarmonicCausalLM(backbone)
        loss = ht.HarmonicLoss(sampled=kind == "sampled", seed=0 if kind == "sampled" else None)
    lm.compile(keras.optimizers.Adam(1e-3), loss=loss, weighted_metrics=[], jit_compile=True)
    return lm


def run_single(kind: str, args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    lm = _model(kind, args)
    rng = np.random.default_rng(0)
    ranks = np.arange(1, args.vocab + 1)
    p = 1.0 / ranks  # Zipf-like ids, as in text
    tokens = rng.choice(args.vocab, (args.steps + 2, args.batch, args.seq_len + 1), p=p / p.sum())
    mask = np.ones((args.batch, args.seq_len), bool)
    batches = [({"token_ids": t[:, :-1], "padding_mask": mask}, t[:, 1:]) for t in tokens]
    before = _rss_mib()
    lm.train_on_batch(*batches[0])  # compiles
    lm.train_on_batch(*batches[1])
    times = []
    for x, y in batches[2:]:
        start = time.perf_counter()
        lm.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    peak = _rss_mib()
    return {
        "median_step_s": float(np.median(times)),
        "tokens_per_s": args.batch * args.seq_len / float(np.median(times)),
        "peak_rss_mib": peak,
        "step_mib": peak - before,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--vocab", type=int, default=262_144)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--single", choices=sorted(RUNS), help="one run in this process (RESULT json)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    return p


def table(results: dict, args) -> str:
    rows = [
        f"V = {args.vocab:,}, {args.batch} x {args.seq_len} = {args.batch * args.seq_len:,} "
        f"tokens, Gemma 3 backbone D = {args.width}, {args.layers} layer(s), Adam, XLA; "
        f"median of {args.steps} steps.",
        "",
        "| loss | step (ms) | tokens/s | speed vs cross-entropy | peak RSS (MiB) | step's memory (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    base = results.get("ce", {}).get("median_step_s")
    for kind, r in results.items():
        if "error" in r:
            rows.append(f"| {RUNS[kind]} | failed: {r['error']} | | | | |")
            continue
        ratio = f"{base / r['median_step_s']:.2f}x" if base else "n/a"
        rows.append(
            f"| {RUNS[kind]} | {1e3 * r['median_step_s']:.0f} | {r['tokens_per_s']:,.0f} | "
            f"{ratio} | {r['peak_rss_mib']:,.0f} | {r['step_mib']:,.0f} |"
        )
    return "\n".join(rows)


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    single = ["--vocab", args.vocab, "--batch", args.batch, "--seq-len", args.seq_len]
    single += ["--width", args.width, "--layers", args.layers, "--steps", args.steps]
    if args.single:
        print("RESULT " + json.dumps(run_single(args.single, args)), flush=True)
        return {}
    results = {}
    for kind in args.runs.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--single", kind, *map(str, single)]
        results[kind] = child_result(cmd)
        print(kind, results[kind], flush=True)
    text = table(results, args)
    name = f"hub_vocab_v{args.vocab}_n{args.batch * args.seq_len}"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump({"args": vars(args), "machine": machine(), "results": results}, f, indent=1)
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return results


if __name__ == "__main__":
    main()
