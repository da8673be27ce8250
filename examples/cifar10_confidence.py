"""Distance as confidence on CIFAR-10: train on 8 classes, hold 2 out, and ask each model's
confidence score to tell held-out-class test images from test images of the 8 known classes.

Scores, per seed, on the same CNN body (``cifar10.features``) at the same budget:
(a) the harmonic model's distance to its nearest center, (b) its max harmonic probability, and
(c) the cross-entropy model's max softmax probability (the usual baseline). Reported: AUROC of
held-out vs known (1.0: perfectly separated, 0.5: chance), known-class accuracy, and the
expected calibration error (ECE, 15 bins) of each max probability on the known classes.

    python examples/cifar10_confidence.py                      # ../shared/data, 3 seeds
    python examples/cifar10_confidence.py --quick              # a smoke run (CI)

Writes results.json, and confidence.png (score histograms and ROC curves of the first seed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import harmonic_tf as ht  # noqa: E402

from cifar10 import (  # noqa: E402
    CLASSES,
    augmented,
    expected_calibration_error,
    features,
    load_cifar10,
)
from exponents import eta_value  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "cifar10-images.tar.gz")
SCORES = {
    "distance": "harmonic: nearest-center distance",
    "harmonic_prob": "harmonic: max probability",
    "softmax_prob": "cross-entropy: max softmax probability",
}


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(score of an unknown > score of a known), ties counted half (the Mann-Whitney U
    statistic over the product of the sizes): scores are "how unknown", higher = more."""
    scores = np.concatenate([known, unknown]).astype(np.float64)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # Tied scores share the mean of their ranks.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    n_known, n_unknown = len(known), len(unknown)
    u = ranks[n_known:].sum() - n_unknown * (n_unknown + 1) / 2
    return float(u / (n_known * n_unknown))


def split_classes(data, held_out: list[int]):
    """Train on the known classes (relabelled 0..7); test on known and held-out images."""
    (x_train, y_train), (x_test, y_test) = data
    known = [c for c in range(10) if c not in held_out]
    relabel = np.full(10, -1, np.int32)
    relabel[known] = np.arange(len(known))
    keep = relabel[y_train] >= 0
    is_known = relabel[y_test] >= 0
    return (
        (x_train[keep], relabel[y_train[keep]]),
        (x_test[is_known], relabel[y_test[is_known]]),
        x_test[~is_known],
    )


def build(kind: str, seed: int, args, num_classes: int):
    """``(model, features_model, loss, metric)`` for ``ce`` or ``harmonic`` (exact loss)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input([32, 32, 3])
    h = features(inputs, args.width)
    body = keras.Model(inputs, h)
    if kind == "ce":
        model = keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(h))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return model, body, loss, "accuracy"
    eta, eta_init = eta_value(args.eta, h.shape[-1])
    head = ht.HarmonicLMHead(
        num_classes, eta=eta, eta_init=eta_init, distance=args.distance, name="harmonic_head"
    )
    return ht.HarmonicModel(inputs, head(h)), body, ht.HarmonicLoss(), ht.HarmonicAccuracy()


def train(kind: str, seed: int, args, train_data):
    x, y = train_data
    model, body, loss, metric = build(kind, seed, args, int(y.max()) + 1)
    steps = args.epochs * -(-len(x) // args.batch_size)
    lr = keras.optimizers.schedules.CosineDecay(args.lr, steps, alpha=0.05)
    model.compile(keras.optimizers.Adam(lr), loss=loss, metrics=[metric], jit_compile=True)
    name = "cross-entropy" if kind == "ce" else f"harmonic (exact, {args.distance})"
    print(f"\n== seed {seed}: {name}")
    model.fit(augmented(x, y, args.batch_size, seed), epochs=args.epochs, verbose=args.verbose)
    return model, body


def harmonic_scores(model, body, images, batch_size: int = 500):
    """``(distance, max probability, predicted class)`` from the head's public ``confidence``."""
    head = model.get_layer("harmonic_head")
    hidden = body.predict(images, batch_size=batch_size, verbose=0)
    conf = head.confidence(hidden)
    return conf.distance.numpy(), conf.probability.numpy(), conf.id.numpy()


def softmax_scores(model, images, batch_size: int = 500):
    """``(max softmax probability, predicted class)`` of the cross-entropy model."""
    probs = tf.nn.softmax(model.predict(images, batch_size=batch_size, verbose=0)).numpy()
    return probs.max(-1), probs.argmax(-1)


def evaluate_seed(seed: int, args, splits) -> dict:
    train_data, (x_known, y_known), x_unknown = splits
    row, curves = {"seed": seed}, {}
    model, body = train("harmonic", seed, args, train_data)
    dist_k, prob_k, pred_h = harmonic_scores(model, body, x_known)
    dist_u, prob_u, _ = harmonic_scores(model, body, x_unknown)
    # Every score is oriented as "how unknown": a far nearest center, a low max probability.
    curves["distance"] = (dist_k, dist_u)
    curves["harmonic_prob"] = (-prob_k, -prob_u)
    row["accuracy_harmonic"] = float(np.mean(pred_h == y_known))
    row["ece_harmonic"] = expected_calibration_error(prob_k, pred_h == y_known)
    if not args.no_ce:
        model, _ = train("ce", seed, args, train_data)
        soft_k, pred_c = softmax_scores(model, x_known)
        soft_u, _ = softmax_scores(model, x_unknown)
        curves["softmax_prob"] = (-soft_k, -soft_u)
        row["accuracy_ce"] = float(np.mean(pred_c == y_known))
        row["ece_ce"] = expected_calibration_error(soft_k, pred_c == y_known)
    for name, (k, u) in curves.items():
        row[f"auroc_{name}"] = auroc(k, u)
    return row, curves


COLUMNS = [
    ("auroc_distance", "AUROC (a) harmonic distance"),
    ("auroc_harmonic_prob", "AUROC (b) harmonic max prob"),
    ("auroc_softmax_prob", "AUROC (c) CE max softmax"),
    ("accuracy_harmonic", "known acc. harmonic"),
    ("accuracy_ce", "known acc. CE"),
    ("ece_harmonic", "ECE harmonic"),
    ("ece_ce", "ECE CE"),
]


def table(rows: list[dict]) -> str:
    """Markdown: one row per seed, then mean and standard deviation over seeds (the columns
    the rows have: no cross-entropy ones with ``--no-ce``)."""
    columns = [(k, title) for k, title in COLUMNS if k in rows[0]]
    lines = [
        "| seed | " + " | ".join(title for _, title in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for r in rows:
        lines.append(f"| {r['seed']} | " + " | ".join(f"{r[k]:.3f}" for k, _ in columns) + " |")
    cells = [
        f"{np.mean([r[k] for r in rows]):.3f} ± {np.std([r[k] for r in rows]):.3f}"
        for k, _ in columns
    ]
    lines.append("| mean ± sd | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def roc(known: np.ndarray, unknown: np.ndarray):
    """False and true positive rates ("unknown" is positive) at every threshold."""
    thresholds = np.unique(np.concatenate([known, unknown]))[::-1]
    fpr = [np.mean(known >= t) for t in thresholds]
    tpr = [np.mean(unknown >= t) for t in thresholds]
    return np.r_[0.0, fpr], np.r_[0.0, tpr]


def plot(curves: dict, held_out: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    known, unknown = curves["distance"]
    bins = np.linspace(min(known.min(), unknown.min()), max(known.max(), unknown.max()), 50)
    axes[0].hist(known, bins, alpha=0.6, density=True, label="test images, 8 known classes")
    axes[0].hist(unknown, bins, alpha=0.6, density=True, label=f"held out: {', '.join(held_out)}")
    axes[0].set_xlabel("distance to the nearest harmonic center")
    axes[0].set_ylabel("density")
    axes[0].legend()
    for name, (k, u) in curves.items():
        fpr, tpr = roc(k, u)
        axes[1].plot(fpr, tpr, label=f"{SCORES[name]} (AUROC {auroc(k, u):.3f})")
    axes[1].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[1].set_xlabel("false positive rate (known flagged)")
    axes[1].set_ylabel("true positive rate (held out flagged)")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", default=DEFAULT_DATA, help="as examples/cifar10.py")
    p.add_argument("--held-out", default="cat,truck", help="two (or more) class names")
    p.add_argument("--seeds", default="0,1,2", help="comma list")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=16, help="filters of the first stage")
    p.add_argument("--eta", default=None, help="harmonic exponent, as examples/cifar10.py")
    p.add_argument("--distance", default="euclidean", choices=ht.ops.inputs.DISTANCES)
    p.add_argument("--no-ce", action="store_true", help="the harmonic model only")
    p.add_argument("--limit", type=int, default=None, help="images per split (balanced)")
    p.add_argument("--verbose", type=int, default=1)
    p.add_argument("--out", default="runs/cifar10_confidence")
    p.add_argument("--quick", action="store_true", help="a smoke run")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.held_out = args.held_out.split(",")
    unknown = sorted(set(args.held_out) - set(CLASSES))
    if unknown or len(args.held_out) < 1:
        raise SystemExit(f"--held-out: expected names from {CLASSES}, got {unknown}")
    if args.quick:
        args.epochs, args.width, args.seeds = 1, 8, args.seeds[:1]
        args.limit = args.limit or 1000
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    held_out = [CLASSES.index(name) for name in args.held_out]
    splits = split_classes(load_cifar10(args.data_dir, args.limit), held_out)
    print(
        f"train {len(splits[0][0]):,} images of {10 - len(held_out)} classes; test "
        f"{len(splits[1][0]):,} known + {len(splits[2]):,} held out ({', '.join(args.held_out)})"
    )
    started = time.perf_counter()
    rows, first = [], None
    for seed in args.seeds:
        row, curves = evaluate_seed(seed, args, splits)
        rows.append(row)
        first = first or curves
    os.makedirs(args.out, exist_ok=True)
    plot(first, args.held_out, os.path.join(args.out, "confidence.png"))
    summary = {
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "config": vars(args),
        "rows": rows,
        "table": table(rows),
        "seconds": round(time.perf_counter() - started, 1),
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("\n" + summary["table"])
    print(f"\nwrote {args.out}/results.json, confidence.png")
    return summary


if __name__ == "__main__":
    main()
