"""A small decoder-only transformer LM trained three ways at the same budget: cross-entropy
(tied dot-product head), exact harmonic loss and sampled harmonic loss (shared negatives), all
reporting the EXACT validation loss and perplexity.

    python examples/transformer_lm.py                       # embedded corpus (CPython's pydoc text)
    python examples/transformer_lm.py --text ../shared/data/tinyshakespeare.txt --vocab-size 8001 \
        --steps 1800
    python examples/transformer_lm.py --corpus stdlib --tokens code --vocab-size 50000 \
        --runs exact,sampled --steps exact=1000,sampled=5000   # equal wall-clock at V = 50k

Writes results.json, curves.png and samples.txt to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import harmonic_tf as ht  # noqa: E402

from exponents import RULES as ETA_RULES  # noqa: E402
from exponents import eta_value  # noqa: E402
from small_lm import (  # noqa: E402
    TOKEN_PATTERNS,
    build_lm,
    build_vocabulary,
    embedded_corpus,
    encode,
    stdlib_corpus,
    train_dataset,
    val_dataset,
)


class TrainTimer(keras.callbacks.Callback):
    """Training seconds per epoch without validation, and the validation curve against them."""

    def __init__(self, tokens_per_epoch: int):
        super().__init__()
        self.tokens_per_epoch = tokens_per_epoch
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        if hasattr(self, "_start"):
            self.epoch_seconds.append(time.perf_counter() - self._start)
            del self._start

    def tokens_per_second(self) -> float:
        steady = self.epoch_seconds[1:] or self.epoch_seconds  # epoch 0 includes compilation
        return self.tokens_per_epoch / float(np.median(steady))


def make_loss(kind: str, head, args, counts: np.ndarray):
    if kind == "ce":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if kind == "exact":
        return ht.HarmonicLoss(exact=ht.ExactOptions(chunk_size=args.chunk_size))
    in_batch = args.in_batch_negatives
    in_batch = 0 if in_batch == "none" else in_batch if in_batch == "all" else int(in_batch)
    rows = args.exact_center_rows
    # Unset flags keep the package's defaults.
    changes = {"k": args.k, "center_control_variate": args.center_control_variate}
    options = ht.SampledOptions(
        sampler=counts if args.sampler == "unigram" else args.sampler,
        log_q_correction=args.log_q_correction,
        in_batch_negatives=in_batch,
        center_gradient="rows" if rows else "indexed_slices",
        center_rows=rows or None,
        **{key: value for key, value in changes.items() if value is not None},
    )
    return ht.HarmonicLoss(sampled=options, seed=args.seed + 1000)


def generate(model, vectorizer, prompt_ids, seq_len, length, rng, temperature=0.8, top_k=40):
    """Samples ``length`` tokens after each prompt (right-padded windows: causal attention never
    sees the padding)."""
    vocab = vectorizer.get_vocabulary()
    step = tf.function(lambda t: model(t, training=False))
    texts = []
    for prompt in prompt_ids:
        tokens = list(prompt)
        for _ in range(length):
            window = tokens[-seq_len:]
            padded = np.zeros((1, seq_len), np.int32)
            padded[0, : len(window)] = window
            logits = step(tf.constant(padded))[0, len(window) - 1].numpy().astype(np.float64)
            logits[:2] = -np.inf  # never emit padding or out-of-vocabulary
            top = np.argpartition(logits, -top_k)[-top_k:]
            p = np.exp((logits[top] - logits[top].max()) / temperature)
            tokens.append(int(rng.choice(top, p=p / p.sum())))
        words = [vocab[i] for i in tokens]
        texts.append(" ".join(words[: len(prompt)]) + " >>> " + " ".join(words[len(prompt) :]))
    return texts


def run(kind, args, data, vectorizer, counts, loss=None, on_trained=None):
    """Trains one run and evaluates it. ``loss`` replaces the kind's own (a harmonic kind's
    model either way); ``on_trained(model, head)`` is called on the trained model (its result
    is kept as ``"extra"``)."""
    train_ids, val_ids = data
    model, head = _compiled_lm(kind, args, counts, loss)
    val = val_dataset(val_ids, args.seq_len, args.batch, args.val_tokens)
    initial = model.evaluate(val, verbose=0)
    eval_every = args.eval_every[kind]
    timer = TrainTimer(eval_every * args.batch * args.seq_len)
    etas = [] if head is None else [float(head.resolved_eta())]
    track_eta = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: (
            head is not None and etas.append(float(head.resolved_eta()))
        )
    )
    print(f"\n== {RUN_NAMES[kind]} ({model.count_params():,} parameters)", flush=True)
    hist = model.fit(
        train_dataset(train_ids, args.seq_len, args.batch, args.seed),
        steps_per_epoch=eval_every,
        epochs=max(1, args.steps[kind] // eval_every),
        validation_data=val,
        callbacks=[timer, track_eta],
        verbose=args.verbose,
    )
    val_losses = [float(initial)] + [float(v) for v in hist.history["val_loss"]]
    extra = None if on_trained is None else on_trained(model, head)
    seconds = np.concatenate([[0.0], np.cumsum(timer.epoch_seconds)]).tolist()
    rng = np.random.default_rng(args.seed)
    prompts = [val_ids[i : i + 8] for i in rng.integers(0, len(val_ids) - 8, args.samples)]
    samples = generate(model, vectorizer, prompts, args.seq_len, 24, rng) if args.samples else []
    near = [] if head is None else prototypes(model, head, vectorizer, val_ids[:6], args.seq_len)
    return {
        "name": RUN_NAMES[kind]
        + (" (cosine)" if kind != "ce" and args.distance == "cosine" else ""),
        "kind": kind,
        "distance": None if kind == "ce" else args.distance,
        "steps": [i * eval_every for i in range(len(val_losses))],
        "val_loss": val_losses,
        "train_loss": [float(v) for v in hist.history["loss"]],
        "train_seconds": seconds,
        "final_val_loss": val_losses[-1],
        "final_val_ppl": math.exp(val_losses[-1]),
        "tokens_per_second": timer.tokens_per_second(),
        "eta": etas,  # the head's exponent at each evaluation (changes only when learned)
        "samples": samples,
        "prototypes": near,
        "extra": extra,
    }


def _compiled_lm(kind, args, counts, loss=None):
    """``(model, head)`` of one run, compiled with its loss and warm-up cosine schedule."""
    eta, eta_init = eta_value(args.eta, args.d_model)
    model, head = build_lm(
        args.vocab_size,
        args.seq_len,
        "dot" if kind == "ce" else "harmonic",
        args.d_model,
        args.layers,
        args.heads,
        args.mlp_dim,
        args.dropout,
        seed=args.seed,
        eta=eta,
        eta_init=eta_init,
        eta_rate=args.eta_rate,
        distance=args.distance,
    )
    lr = args.lr_ce if kind == "ce" else args.lr_harmonic
    steps = args.steps[kind]
    warmup = min(args.warmup, steps // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, max(1, steps - warmup), alpha=0.1, warmup_target=lr, warmup_steps=warmup
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=loss or make_loss(kind, head, args, counts),
        jit_compile=True,
    )
    return model, head


def prototypes(model, head, vectorizer, ids, seq_len: int, k: int = 5) -> list[dict]:
    """The ``k`` nearest centers (tokens) of the hidden state at each position of ``ids``,
    with their distances: the harmonic head's ranking of the next token, read as prototypes."""
    vocab = vectorizer.get_vocabulary()
    tokens = np.zeros([1, seq_len], "int32")
    tokens[0, : len(ids)] = ids  # causal: the padding after a position does not reach it
    hidden = model.hidden_states(tokens)[0, : len(ids)]
    near = head.nearest(hidden, k)
    return [
        {
            "context": " ".join(vocab[t] for t in ids[max(0, i - 3) : i + 1]),
            "nearest": [[vocab[j], round(float(d), 3)] for j, d in zip(ids_, dists, strict=True)],
        }
        for i, (ids_, dists) in enumerate(
            zip(near.ids.numpy(), near.distances.numpy(), strict=True)
        )
    ]


RUN_NAMES = {"ce": "cross-entropy", "exact": "exact harmonic", "sampled": "sampled harmonic"}


def plot(results: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        axes[0].plot(r["steps"], r["val_loss"], marker="o", ms=3, label=r["name"])
        axes[1].plot(r["train_seconds"], r["val_loss"], marker="o", ms=3, label=r["name"])
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("training seconds (2 CPU cores)")
    for ax in axes:
        ax.set_ylabel("exact validation loss (nats)")
        ax.grid(alpha=0.3)
        ax.legend()
        lows = [min(r["val_loss"]) for r in results]
        ax.set_ylim(min(lows) - 0.2, min(lows) + 3.0)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: list[dict]) -> str:
    lines = [
        "| run | steps | train seconds | exact val loss | val perplexity | train tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['steps'][-1]} | {r['train_seconds'][-1]:.0f} | "
            f"{r['final_val_loss']:.3f} | {r['final_val_ppl']:.1f} | {r['tokens_per_second']:,.0f} |"
        )
    return "\n".join(lines)


def estimator_note(results: list[dict], args, counts: np.ndarray) -> str:
    """What the sampled run trained with, and why: ``HarmonicLoss`` runs the exact loss where
    ``SampledOptions.faster_than_exact`` says sampling would be slower at this batch and V."""
    speed = {r["kind"]: r["tokens_per_second"] for r in results}
    if "sampled" not in speed:
        return ""
    loss = make_loss("sampled", None, args, counts)
    tokens, shape = args.batch * args.seq_len, (args.vocab_size, args.d_model)
    share = loss.sampled.matmul_flops(tokens, *shape) / ht.ops.exact_matmul_flops(tokens, *shape)
    work = (
        f"its matmuls are {share:.0%} of the exact loss's at {tokens:,} tokens a step and "
        f"V = {args.vocab_size:,}"
    )
    if loss.training_estimator(tokens, *shape) is None:
        return (
            f"\nThe sampled run trained with the exact loss: {work}, too close to pay for the "
            "sampling (HarmonicLoss's exact_fallback; docs/sampled.md, \"When the exact loss is "
            'faster").'
        )
    if "exact" not in speed:
        return ""
    return (
        f"\nThe sampled run trained at {speed['sampled'] / speed['exact']:.2f}x the exact run's "
        f"tokens/s: {work}, and the transformer's own work is the same in both "
        '(docs/sampled.md, "When the exact loss is faster").'
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--text", help="UTF-8 text file (default: --corpus)")
    p.add_argument(
        "--corpus",
        default="pydoc",
        choices=["pydoc", "stdlib"],
        help="built-in text: CPython's pydoc topics, or the standard library's sources",
    )
    p.add_argument("--tokens", default="words", choices=list(TOKEN_PATTERNS))
    p.add_argument("--vocab-size", type=int, default=3000, help="V, with padding and OOV ids")
    p.add_argument("--runs", default="ce,exact,sampled", help="comma list of ce, exact, sampled")
    p.add_argument(
        "--steps",
        default="600",
        help="training steps: N for every run, or e.g. exact=800,sampled=4000",
    )
    p.add_argument("--eval-every", default="100", help="steps between evaluations, as --steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp-dim", type=int, default=512)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr-ce", type=float, default=3e-3)
    p.add_argument("--lr-harmonic", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument(
        "--eta",
        default=None,
        help=f"harmonic exponent: a number, a rule of D ({', '.join(ETA_RULES)}), learned or "
        "learned:START; default: the package's",
    )
    p.add_argument(
        "--eta-rate",
        type=float,
        default=1.0,
        help="a learned exponent's rate multiplier (HarmonicLMHead(eta_rate=...))",
    )
    p.add_argument("--distance", default="euclidean", choices=ht.ops.inputs.DISTANCES)
    _estimator_arguments(p)
    p.add_argument("--chunk-size", type=int, default=None, help="exact run's vocabulary chunk")
    p.add_argument("--val-tokens", type=int, default=24576)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--samples", type=int, default=3, help="generated continuations per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=1, help="Keras progress bars (0, 1, 2)")
    p.add_argument("--out", default="runs/transformer_lm")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every, args.val_tokens, args.warmup = "20", "10", 2048, 5
        args.vocab_size, args.k, args.batch, args.samples = min(args.vocab_size, 500), 32, 8, 1
    args.steps = parse_steps(args.steps, args.runs.split(","))
    args.eval_every = parse_steps(args.eval_every, args.runs.split(","))
    return args


def _estimator_arguments(p: argparse.ArgumentParser) -> None:
    """The sampled run's estimator (``SampledOptions`` fields)."""
    p.add_argument(
        "--k", type=int, default=None, help="draws of the sampled run (default: the package's)"
    )
    p.add_argument("--sampler", default="unigram", choices=["uniform", "log_uniform", "unigram"])
    p.add_argument("--log-q-correction", default="negatives", choices=["negatives", "all", "none"])
    p.add_argument(
        "--in-batch-negatives", default="768", help="all, none, or a capacity m (distinct labels)"
    )
    p.add_argument(
        "--exact-center-rows", type=int, default=128, help="tokens giving the centers' exact push"
    )
    p.add_argument(
        "--center-control-variate",
        type=lambda v: bool(int(v)),
        default=None,
        help="1/0: the centers' push with/without its control variate (default: the package's)",
    )


def parse_steps(spec: str, kinds: list[str]) -> dict[str, int]:
    """``"1800"`` or ``"exact=800,sampled=4000"`` -> a count per run kind."""
    if "=" not in spec:
        return {kind: int(spec) for kind in kinds}
    steps = {key: int(value) for key, value in (part.split("=") for part in spec.split(","))}
    missing = [kind for kind in kinds if kind not in steps]
    if missing:
        raise SystemExit(f"no count for run(s) {missing} in {spec!r}")
    return steps


def prepare(args):
    """``((train_ids, val_ids), vectorizer, counts, source)`` for the run's text and tokens;
    sets ``args.vocab_size`` to the vocabulary's real size."""
    if args.text:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
    else:
        text = stdlib_corpus() if args.corpus == "stdlib" else embedded_corpus()
    cut = int(len(text) * (1 - args.val_fraction))
    vectorizer = build_vocabulary(text[:cut], args.vocab_size, args.tokens)
    args.vocab_size = len(vectorizer.get_vocabulary())
    train_ids, val_ids = encode(vectorizer, text[:cut]), encode(vectorizer, text[cut:])
    counts = np.bincount(train_ids, minlength=args.vocab_size).astype(np.float64)
    source = os.path.basename(args.text) if args.text else f"embedded {args.corpus} corpus"
    print(
        f"{source}: {len(train_ids):,} train / {len(val_ids):,} validation tokens, "
        f"V = {args.vocab_size:,}, steps {args.steps} of {args.batch}x{args.seq_len} tokens"
    )
    return (train_ids, val_ids), vectorizer, counts, source


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    (train_ids, val_ids), vectorizer, counts, source = prepare(args)
    results = []
    for kind in args.runs.split(","):
        results.append(run(kind, args, (train_ids, val_ids), vectorizer, counts))
    os.makedirs(args.out, exist_ok=True)
    summary = {
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "config": vars(args),
        "runs": results,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(results, os.path.join(args.out, "curves.png"), f"{source}, V = {args.vocab_size:,}")
    with open(os.path.join(args.out, "samples.txt"), "w") as f:
        for r in results:
            f.write(f"== {r['name']}\n" + "\n".join(r["samples"]) + "\n\n")
    print("\nGenerated continuations (prompt >>> model):")
    for r in results:
        for s in r["samples"]:
            print(f"  [{r['name']}] {s}")
    for r in results:
        if r["prototypes"]:
            print(f"\nNearest centers (tokens, distance) of the {r['name']} model's hidden states:")
            for p in r["prototypes"]:
                print(f"  ... {p['context']} -> " + ", ".join(f"{t} {d}" for t, d in p["nearest"]))
    print("\nExact validation loss at the end of training:\n" + table(results))
    print(estimator_note(results, args, counts))
    print(f"\nwrote {args.out}/results.json, curves.png, samples.txt")
    return results


if __name__ == "__main__":
    main()
