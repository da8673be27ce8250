"""Tokens/s of a full training step (forward, backward, Adam update) of the example transformer
at an LM vocabulary: cross-entropy (tied dot-product head) vs sampled and exact harmonic loss.

    python benchmarks/bench_train_step.py                 # V = 50,257, batch 32 x 64
    python benchmarks/bench_train_step.py --vocab-size 8001 --steps 30
    python benchmarks/bench_train_step.py --chunk-size 2048,4096,0   # exact at three chunk sizes
    python benchmarks/bench_train_step.py --base-tree /tmp/old   # also an older checkout's rows
    python benchmarks/bench_train_step.py --vocab-size 12000 --d-model 160 --layers 3 \
        --mlp-dim 640 --runs sampled,sampled:k=1024+center_control_variate=1,exact_chunked

A run ``sampled:FIELD=VALUE+FIELD=VALUE`` changes those fields of the package's
``SampledOptions`` (ints, or 0/1 for a flag).

Each loss runs in its own subprocess. Writes train_step_v<V>.json and .md to --out. With
--base-tree, each round also runs the same losses with the package (and this script's
`--single` mode) of another checkout, so a change is measured side by side with its base.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from _common import child_result, machine, run_settings

HERE = os.path.dirname(os.path.abspath(__file__))
LOSSES = {
    "ce": "cross-entropy (tied dot-product head)",
    "sampled": "sampled harmonic (package defaults, unigram tail draws)",
    "exact_default": "exact harmonic (HarmonicLoss() defaults)",
    "exact_chunked": "exact harmonic",
}
EXAMPLES = os.path.join(HERE, "..", "examples")


def run_single(kind: str, args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    import harmonic_tf as ht

    import small_lm

    model, head = small_lm.build_lm(
        args.vocab_size, args.seq_len, "dot" if kind == "ce" else "harmonic", seed=0,
        d_model=args.d_model, num_layers=args.layers, mlp_dim=args.mlp_dim,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    # Zipf-like token ids, as in text (id 0 most frequent).
    ranks = np.arange(1, args.vocab_size + 1)
    p = 1.0 / ranks
    p /= p.sum()
    tokens = rng.choice(
        args.vocab_size, size=(args.batch * (args.steps + args.warmup), args.seq_len + 1), p=p
    )
    counts = np.bincount(tokens.reshape(-1), minlength=args.vocab_size) + 1.0
    if kind == "ce":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    elif kind.startswith("sampled"):
        options = ht.SampledOptions(sampler=counts, **sampled_changes(kind))
        loss = ht.HarmonicLoss(sampled=options, seed=0, exact_fallback=False)
    elif kind == "exact_default":
        loss = ht.HarmonicLoss()
    else:  # the chunked path at this chunk size (0: dense), whatever "auto" would take
        chunk = int(kind.split("@")[1]) or None
        exact = ht.ExactOptions(chunk_size=chunk, **({"dense_max_bytes": 0} if chunk else {}))
        loss = ht.HarmonicLoss(exact=exact)
    model.compile(keras.optimizers.Adam(1e-3), loss=loss, jit_compile=True)
    x = tf.constant(tokens[:, :-1], tf.int32)
    y = tf.constant(tokens[:, 1:], tf.int32)
    batches = [
        (x[i : i + args.batch], y[i : i + args.batch]) for i in range(0, len(tokens), args.batch)
    ]
    for xb, yb in batches[: args.warmup]:
        model.train_on_batch(xb, yb)
    times = []
    for xb, yb in batches[args.warmup :]:
        t = time.perf_counter()
        model.train_on_batch(xb, yb)
        times.append(time.perf_counter() - t)
    median = float(np.median(times))
    return {
        "median_step_s": median,
        "tokens_per_s": args.batch * args.seq_len / median,
        "steps": len(times),
    }


SINGLE_ARGS = ("vocab_size", "batch", "seq_len", "steps", "warmup", "d_model", "layers", "mlp_dim")


def sampled_changes(kind: str) -> dict:
    """The ``SampledOptions`` fields a run name changes: ``sampled:k=1024+center_rows=512``."""
    changes = {}
    for field, value in run_settings(kind, kind.partition(":")[2]):
        if not value.isdigit():
            raise SystemExit(f"run {kind!r}: expected FIELD=INTEGER, got {field}={value}")
        changes[field] = bool(int(value)) if field == "center_control_variate" else int(value)
    return changes


def _run_in(folder: str, kind: str, single_args: list[str]) -> dict:
    """One loss's run by the ``bench_train_step.py`` in ``folder`` (a checkout's benchmarks/),
    with that checkout's package and examples first on the path."""
    root = os.path.dirname(folder)
    path = os.pathsep.join([root, os.path.join(root, "examples")])
    env = dict(os.environ, PYTHONPATH=path + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = os.path.join(folder, "bench_train_step.py")
    cmd = [sys.executable, script, "--single", kind, *single_args]
    return child_result(cmd, env=env)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--vocab-size", type=int, default=50257)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--mlp-dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds of all losses")
    p.add_argument("--runs", default=",".join(LOSSES))
    p.add_argument(
        "--chunk-size", default="2048", help="exact runs' chunk sizes, comma-separated; 0: dense"
    )
    p.add_argument("--single", help=argparse.SUPPRESS)
    p.add_argument("--base-tree", help="another checkout to measure side by side (rows base:...)")
    p.add_argument("--out", default="benchmarks/results")
    return p


def _measure(args, defaults: argparse.ArgumentParser) -> dict:
    """Every run's median step over interleaved rounds (with --base-tree, also the base
    checkout's), each round's own median kept in ``round_step_s``."""
    # Rounds interleave the losses, so a slow spell of a shared CPU hits them alike; each loss
    # reports the median over rounds of its per-round median step.
    kinds = []
    for kind in args.runs.split(","):
        chunks = args.chunk_size.split(",") if kind == "exact_chunked" else [None]
        kinds += [kind if c is None else f"{kind}@{int(c)}" for c in chunks]
    runs = [(kind, kind, HERE) for kind in kinds]
    if args.base_tree:  # the base checkout knows neither the defaults' row nor newer kinds
        base = os.path.join(os.path.abspath(args.base_tree), "benchmarks")
        runs += [(f"base:{kind}", kind, base) for kind in kinds if kind != "exact_default"]
    # Only the settings that differ from the defaults: an older --base-tree knows no newer flag.
    single_args = [
        f"--{name.replace('_', '-')}={getattr(args, name)}"
        for name in SINGLE_ARGS
        if getattr(args, name) != defaults.get_default(name)
    ]
    rounds: dict[str, list[dict]] = {name: [] for name, _, _ in runs}
    for r in range(args.repeats):
        for name, kind, folder in runs:
            rounds[name].append(_run_in(folder, kind, single_args))
            print(f"round {r + 1}", name, rounds[name][-1], flush=True)
    rows = {}
    for kind, results in rounds.items():
        ok = [res for res in results if "median_step_s" in res]
        if not ok:
            rows[kind] = results[-1]
            continue
        step = float(np.median([res["median_step_s"] for res in ok]))
        rows[kind] = {
            "median_step_s": step,
            "tokens_per_s": args.batch * args.seq_len / step,
            "round_step_s": [res.get("median_step_s") for res in results],  # None: failed
        }
    return rows


def main(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    if args.single:
        print("RESULT " + json.dumps(run_single(args.single, args)), flush=True)
        return None
    command = " ".join(["python", os.path.relpath(os.path.abspath(__file__)), *sys.argv[1:]])
    rows = _measure(args, p)
    info = machine()
    chunked = [kind for kind in rows if kind.startswith(("exact_chunked@", "base:exact_chunked@"))]
    # The ratio's base: the first chunked exact run, else the defaults' exact run.
    bases = chunked or [kind for kind in ("exact_default",) if kind in rows]
    text = [
        f"Machine: {info['cpu']}, {info['cores']} cores; TensorFlow {info['tensorflow']}; command: `{command}`",
        "",
        f"Full training step of the example transformer (D={args.d_model}, {args.layers} blocks, "
        f"MLP {args.mlp_dim}), V = {args.vocab_size:,}, "
        f"batch {args.batch} x {args.seq_len} tokens, Adam, XLA; median of {args.repeats} "
        "interleaved rounds:",
        "",
        *_table(rows, chunked, bases[0] if bases else None),
    ]
    os.makedirs(args.out, exist_ok=True)
    shape = "" if args.d_model == p.get_default("d_model") else f"_d{args.d_model}"
    stem = os.path.join(args.out, f"train_step_v{args.vocab_size}{shape}")
    with open(stem + ".json", "w") as f:
        json.dump(
            {"machine": info, "command": command, "config": vars(args), "rows": rows}, f, indent=1
        )
    with open(stem + ".md", "w") as f:
        f.write("\n".join(text) + "\n")
    print("\n".join(text))
    return rows


def _table(rows: dict, chunked: list[str], base: str | None) -> list[str]:
    """The markdown table: each loss's median step, tokens/s, its ratio to cross-entropy and to
    ``base`` (an exact run), and that ratio's range over the rounds (each round's runs are
    neighbours in time, so its ratio is less hit by a slow spell than the medians are)."""
    names = dict(LOSSES)
    for kind in rows:
        if kind.startswith("sampled:"):
            names[kind] = f"sampled harmonic ({kind.partition(':')[2].replace('+', ', ')})"
    for kind in chunked:
        chunk = int(kind.split("@")[1])
        names[kind] = f"exact harmonic ({f'chunk_size={chunk}' if chunk else 'dense logits'})"
    for kind in rows:
        if kind.startswith("base:"):
            names[kind] = f"base checkout: {names.get(kind[5:], LOSSES.get(kind[5:], kind))}"
    ce = rows.get("ce", {}).get("tokens_per_s")
    exact = rows[base].get("tokens_per_s") if base else None
    text = [
        "| loss | step (ms) | tokens/s | vs cross-entropy | vs the first exact harmonic "
        "| that, per round |",
        "|---|---|---|---|---|---|",
    ]
    for kind, r in rows.items():
        if "tokens_per_s" not in r:
            text.append(f"| {names[kind]} | failed | - | - | - | - |")
            continue
        rel = [f"{r['tokens_per_s'] / b:.2f}x" if b else "-" for b in (ce, exact)]
        text.append(
            f"| {names[kind]} | {r['median_step_s'] * 1000:.0f} | {r['tokens_per_s']:,.0f} | "
            f"{rel[0]} | {rel[1]} | {_round_range(rows, kind, base)} |"
        )
    return text


def _round_range(rows: dict, kind: str, base: str | None) -> str:
    """``min-max`` over the rounds of ``base``'s step over ``kind``'s (rounds where either
    failed left out); ``-`` without a base."""
    ours, theirs = (rows.get(k, {}).get("round_step_s") or [] for k in (kind, base))
    ratios = [b / a for a, b in zip(ours, theirs, strict=False) if a and b]
    return f"{min(ratios):.2f}-{max(ratios):.2f}x" if ratios else "-"


if __name__ == "__main__":
    main()
