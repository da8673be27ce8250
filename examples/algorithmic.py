"""The paper's toy tasks with this package: does a harmonic head give cleaner geometry and
faster generalization than a standard (dot-product) head?

Tasks (Baek et al. 2025, section 4; the released ``grow-crystals`` code): **modular addition**
(tokens x, y in 0..30, label (x + y) mod 31) and the **in-context lattice** (5 x 5 points with
ids 5 a + b; three tokens p, q, r, label the parallelogram's fourth point q + r - p). 1,000
samples drawn with replacement, 80/20 train/test split over samples. Model: token embedding
(dim 16), concatenated embeddings -> 100 -> SiLU -> 16 -> an unembedding **tied to the
embedding**: standard (dot product plus bias) or harmonic (``HarmonicLMHead`` tied to the
embedding, ``eta = 2``: the code's exponent 1 on squared distances). AdamW lr 2e-3, batch 32,
weight decay 0.01, plus 0.01 x the mean RMS of the embedding's columns.

Reports per head, over seeds: the top-2 explained variance of the embedding (median, and the
count of seeds >= 99%), the grokking epoch (first epoch from which test accuracy stays > 0.9
for 20 epochs), final test accuracy; and draws each head's embedding on its top 2 principal
axes for the first seed.

    python examples/algorithmic.py --seeds 5 --epochs 2000     # a few minutes a run on 2 cores
    python examples/algorithmic.py --quick                     # CI smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

import harmonic_tf as ht

EMBED, HIDDEN, SAMPLES, TRAIN_FRACTION = 16, 100, 1000, 0.8


def modular_addition(rng, p: int = 31):
    x = rng.integers(0, p, (SAMPLES, 2))
    return x.astype("int32"), ((x[:, 0] + x[:, 1]) % p).astype("int32"), p


def lattice(rng, side: int = 5):
    """Three corners of a parallelogram on a side x side grid, label the fourth (q + r - p)."""
    rows = []
    while len(rows) < SAMPLES:
        p, q, r = rng.integers(0, side, (3, 2))
        s = q + r - p
        if np.all((s >= 0) & (s < side)):
            rows.append([*(side * a + b for a, b in (p, q, r)), side * s[0] + s[1]])
    data = np.array(rows, "int32")
    return data[:, :3], data[:, 3], side * side


TASKS = {"modular_addition": modular_addition, "lattice": lattice}


def column_rms(weights: tf.Tensor) -> tf.Tensor:
    """The released code's extra penalty: 0.01 x the mean RMS of the embedding's columns."""
    return 0.01 * tf.reduce_mean(tf.sqrt(tf.reduce_mean(tf.square(weights), axis=0)))


def build(
    vocab: int, inputs: int, head: str, seed: int, eta: float = 2.0
) -> tuple[keras.Model, keras.layers.Layer]:
    keras.utils.set_random_seed(seed)
    tokens = keras.Input([inputs], dtype="int32")
    embedding = keras.layers.Embedding(
        vocab, EMBED, embeddings_regularizer=column_rms, name="embedding"
    )
    h = keras.layers.Flatten()(embedding(tokens))
    h = keras.layers.Dense(HIDDEN, activation="silu")(h)
    h = keras.layers.Dense(EMBED)(h)
    if head == "harmonic":
        out = ht.HarmonicLMHead(tied_embedding=embedding, eta=eta, name="head")(h)
        return ht.HarmonicModel(tokens, out), embedding
    out = TiedDotProduct(embedding, name="head")(h)
    return keras.Model(tokens, out), embedding


class TiedDotProduct(keras.layers.Layer):
    """The standard head: logits ``h @ E^T + b`` with ``E`` the embedding matrix."""

    def __init__(self, embedding, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(self.embedding.input_dim,), initializer="zeros")

    def call(self, h):
        return tf.matmul(h, self.embedding.embeddings, transpose_b=True) + self.bias


def train(task, head, seed, epochs, weight_decay, lr, eta=2.0) -> dict:
    rng = np.random.default_rng(seed)
    x, y, vocab = TASKS[task](rng)
    cut = int(TRAIN_FRACTION * SAMPLES)
    model, embedding = build(vocab, x.shape[1], head, seed, eta)
    if head == "harmonic":
        loss = ht.HarmonicLoss()
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.AdamW(lr, weight_decay=weight_decay)
    # One compiled call per epoch (25 steps): Keras's per-step overhead dwarfs this tiny MLP.
    model.compile(optimizer, loss=loss, jit_compile=True, steps_per_execution=25)
    started = time.time()
    accuracy = TestAccuracy(model, x[cut:], y[cut:])
    model.fit(x[:cut], y[:cut], batch_size=32, epochs=epochs, callbacks=[accuracy], verbose=0)
    accuracy = accuracy.history
    table = embedding.embeddings.numpy()
    return {
        "task": task,
        "head": head,
        "eta": eta if head == "harmonic" else None,
        "seed": seed,
        "explained_variance_top2": float(np.sum(ht.explained_variance(table, 2))),
        "grokking_epoch": grokking_epoch(accuracy),
        "final_test_accuracy": accuracy[-1],
        "test_accuracy": accuracy,
        "pca": ht.principal_components(table, 2).numpy().tolist(),
        "seconds": round(time.time() - started, 1),
    }


class TestAccuracy(keras.callbacks.Callback):
    """Test accuracy after every epoch by one compiled call (Keras's validation loop costs
    more than an epoch of this tiny model). The argmax of harmonic logits is the nearest
    center."""

    def __init__(self, model, x, y):
        super().__init__()
        self.x, self.y, self.history = tf.constant(x), y, []
        self.predict = tf.function(lambda t: tf.argmax(model(t), axis=-1), jit_compile=True)

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(float(np.mean(self.predict(self.x).numpy() == self.y)))


def grokking_epoch(accuracy: list[float], threshold: float = 0.9, hold: int = 20) -> int | None:
    """The first epoch (1-based) from which test accuracy stays above ``threshold`` for
    ``hold`` epochs (to the end, when fewer remain), or ``None``."""
    above = np.asarray(accuracy) > threshold
    for start in range(len(above)):
        window = above[start : start + hold]
        if window.all() and (len(window) == hold or start + len(window) == len(above)):
            return start + 1
    return None


# The paper's figures (median over 20 seeds; FACTS.md 1d): top-2 explained variance and the
# seeds >= 99%, and the median grokking epoch, MLPs on these tasks.
PAPER = {
    ("modular_addition", "standard"): "EV 45.5% (0/20), grokking epoch 1,032",
    ("modular_addition", "harmonic"): "EV 100% (14/20), grokking epoch 308",
    ("lattice", "standard"): "EV 90% (0/20)",
    ("lattice", "harmonic"): "EV 100% (20/20)",
}


def summarize(runs: list[dict]) -> str:
    lines = [
        "| task | head | seeds | EV top-2, median | seeds >= 99% | grokking epoch, median (never) | final test accuracy, median | paper (20 seeds) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        for head in ("standard", "harmonic"):
            group = [r for r in runs if r["task"] == task and r["head"] == head]
            if not group:
                continue
            ev = [r["explained_variance_top2"] for r in group]
            grok = [r["grokking_epoch"] for r in group if r["grokking_epoch"] is not None]
            never = len(group) - len(grok)
            grok_text = f"{np.median(grok):.0f}" if grok else "-"
            acc = np.median([r["final_test_accuracy"] for r in group])
            lines.append(
                f"| {task} | {head} | {len(group)} | {100 * np.median(ev):.1f}% | "
                f"{sum(e >= 0.99 for e in ev)}/{len(group)} | {grok_text} ({never}) | {acc:.3f} | "
                f"{PAPER[task, head]} |"
            )
    return "\n".join(lines)


def plot_pca(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    firsts = [r for r in runs if r["seed"] == min(x["seed"] for x in runs)]
    fig, axes = plt.subplots(1, len(firsts), figsize=(3.2 * len(firsts), 3.2), squeeze=False)
    for ax, r in zip(axes[0], firsts, strict=True):
        pts = np.asarray(r["pca"])
        ax.scatter(pts[:, 0], pts[:, 1], s=12)
        for i, (a, b) in enumerate(pts):
            ax.annotate(str(i), (a, b), fontsize=6)
        ax.set_title(
            f"{r['task']}\n{r['head']} head, EV {100 * r['explained_variance_top2']:.0f}%",
            fontsize=8,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--heads", default="standard,harmonic")
    parser.add_argument(
        "--eta", type=float, default=2.0, help="harmonic exponent on d (2: the code's 1 on d^2)"
    )
    parser.add_argument("--out", default="runs/algorithmic")
    parser.add_argument("--quick", action="store_true", help="a smoke run (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = 1, 3
    from tqdm import tqdm

    heads = args.heads.split(",")
    jobs = [(t, h, s) for t in args.tasks.split(",") for s in range(args.seeds) for h in heads]
    runs = [
        train(t, h, s, args.epochs, args.weight_decay, args.lr, args.eta)
        for t, h, s in tqdm(jobs, desc="runs")
    ]
    os.makedirs(args.out, exist_ok=True)
    text = summarize(runs)
    result = {"args": vars(args), "runs": runs, "table": text}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")
    plot_pca(runs, os.path.join(args.out, "pca.png"))
    print(text)
    return result


if __name__ == "__main__":
    main()
