"""The paper's toy tasks, reproduced as its released code runs them: do harmonic heads give
cleaner geometry and faster generalization than standard (dot-product) heads?

Five tasks (``toy_data.py``: modular addition, in-context lattice, equivalence classes,
genealogy, permutations), the MLP and the transformer, standard and harmonic heads
(``toy_models.py``), the paper's 20 seeds trained together in one stacked model, 7,000 epochs
(10,000 for the permutation transformers). Every setting is the released one (``FACTS.md``
1d) unless a flag changes it: harmonic ``eta = 2``, ``eps = 1e-4``; AdamW lr 2e-3, batch 32,
weight decay 0.01 (MLP) / 0.005 (transformer); dropout 0.1 in the transformers, on at test
time too (the released code never calls ``.eval()``).

Reports per task, model and head: the top-2 explained variance of the embedding (median over
seeds, and the seeds >= 99%), the grokking epoch (first epoch of 20 in a row with test accuracy
> 0.9; median over the seeds that get there), final test accuracy; one JSON per run in --out.

    python examples/algorithmic.py                       # everything: 20 configurations, see docs
    python examples/algorithmic.py --tasks modular_addition --models mlp --seeds 5
    python examples/algorithmic.py --summarize runs/algorithmic   # table and pictures again
    python examples/algorithmic.py --quick               # CI smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf

import harmonic_tf as ht

import toy_data
import toy_models

BATCH = 32
# The model settings a flag may change; their defaults are toy_models.Config's (the released).
KNOBS = ("eta", "eps", "table_scale", "dropout", "mlp_penalty", "distance")
RELEASED = toy_models.Config._field_defaults


def _padded(arrays: list[np.ndarray], fill: int) -> tf.Tensor:
    """Stacks arrays of different lengths, padding the first axis with ``fill``."""
    n = max(len(a) for a in arrays)
    out = np.full((len(arrays), n) + arrays[0].shape[1:], fill, "int32")
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return tf.constant(out)


class AdamW:
    """PyTorch's AdamW (decoupled decay ``p *= 1 - lr * wd``, epsilon outside the bias-corrected
    root) on ``[S, ...]`` weights, with a step count per seed: a seed whose batch is empty (a
    smaller train set in the same stack) is left exactly as it was."""

    def __init__(self, weights: dict, lr: float, weight_decay: float, betas=(0.9, 0.999)):
        self.lr, self.wd, self.betas, self.eps = lr, weight_decay, betas, 1e-8
        self.m = {k: tf.Variable(tf.zeros_like(v)) for k, v in weights.items()}
        self.v = {k: tf.Variable(tf.zeros_like(v)) for k, v in weights.items()}
        self.steps = tf.Variable(tf.zeros([next(iter(weights.values())).shape[0]]))

    def apply(self, weights: dict, grads: dict, active: tf.Tensor) -> None:
        b1, b2 = self.betas
        t = self.steps + tf.cast(active, tf.float32)
        self.steps.assign(t)
        for k, p in weights.items():
            on = tf.reshape(active, [-1] + [1] * (p.shape.rank - 1))
            m = tf.where(on, b1 * self.m[k] + (1 - b1) * grads[k], self.m[k])
            v = tf.where(on, b2 * self.v[k] + (1 - b2) * tf.square(grads[k]), self.v[k])
            tt = tf.reshape(tf.maximum(t, 1.0), on.shape)
            denom = tf.sqrt(v / (1 - b2**tt)) + self.eps
            step = self.lr * (m / (1 - b1**tt)) / denom
            p.assign(tf.where(on, p * (1 - self.lr * self.wd) - step, p))
            self.m[k].assign(m)
            self.v[k].assign(v)


class StackedTrainer:
    """One compiled training loop for ``S`` stacked runs of one configuration (seeds, or train
    fractions of one seed): PyTorch's AdamW, every run's own shuffles and dropout masks."""

    def __init__(self, cfg, seeds, splits, lr, weight_decay, test_dropout=True):
        self.cfg, self.seeds, self.test_dropout = cfg, list(seeds), test_dropout
        self.weights = {
            k: tf.Variable(v, name=k) for k, v in toy_models.initial_weights(cfg, seeds).items()
        }
        self.optimizer = AdamW(self.weights, lr, weight_decay)
        self.train_x = _padded([s.train_tokens for s in splits], 0)
        self.train_y = _padded([s.train_labels for s in splits], -100)
        self.test_x = _padded([s.test_tokens for s in splits], 0)
        self.test_y = _padded([s.test_labels for s in splits], -1)
        self.num_train = [len(s.train_labels) for s in splits]
        self.batches = -(-max(self.num_train) // BATCH)
        self._epochs = tf.function(self._run_epochs, jit_compile=True)

    def orders(self, first_epoch: int, count: int) -> np.ndarray:
        """``[count, S, batches, BATCH]`` sample ids of each epoch's shuffle; -1 pads a short
        last batch (PyTorch's DataLoader keeps it short) and smaller train sets."""
        out = -np.ones([count, len(self.seeds), self.batches * BATCH], "int32")
        for e in range(count):
            for i, (seed, n) in enumerate(zip(self.seeds, self.num_train, strict=True)):
                out[e, i, :n] = np.random.default_rng([seed, first_epoch + e, 7]).permutation(n)
        return out.reshape(count, len(self.seeds), self.batches, BATCH)

    def _dropout(self, key, train: bool) -> toy_models.Dropout:
        on = self.cfg.model == "transformer" and (train or self.test_dropout)
        return toy_models.Dropout(self.seeds, key, self.cfg.dropout if on else 0.0)

    def _step(self, ids: tf.Tensor, key: tf.Tensor) -> None:
        safe = tf.maximum(ids, 0)
        tokens = tf.gather(self.train_x, safe, batch_dims=1)
        labels = tf.where(ids >= 0, tf.gather(self.train_y, safe, batch_dims=1), -100)
        active = tf.reduce_any(ids >= 0, axis=1)
        with tf.GradientTape() as tape:
            h = toy_models.hidden(self.cfg, self.weights, tokens, self._dropout(key, True))
            losses = toy_models.seed_losses(self.cfg, self.weights, h, labels)
            losses = tf.where(active, losses, 0.0)  # an empty batch's mean is 0/0
            total = tf.reduce_sum(losses + toy_models.table_penalty(self.cfg, self.weights))
        grads = tape.gradient(total, self.weights)
        grads = {k: tf.convert_to_tensor(g) for k, g in grads.items()}  # dense, as in PyTorch
        self.optimizer.apply(self.weights, grads, active)

    def test_accuracy(self, key) -> tf.Tensor:
        """``[S]``: each run's test accuracy (the argmax of harmonic logits: nearest center)."""
        h = toy_models.hidden(self.cfg, self.weights, self.test_x, self._dropout(key, False))
        predicted = tf.argmax(toy_models.logits(self.cfg, self.weights, h), axis=-1)
        valid = tf.cast(self.test_y >= 0, tf.float32)
        right = tf.cast(predicted == tf.cast(self.test_y, tf.int64), tf.float32) * valid
        return tf.reduce_sum(right, 1) / tf.reduce_sum(valid, 1)

    def _run_epochs(self, orders: tf.Tensor, first_epoch: tf.Tensor) -> tf.Tensor:
        count = orders.shape[0]
        accuracy = tf.TensorArray(tf.float32, size=count)
        for e in tf.range(count):
            epoch = first_epoch + e
            for b in tf.range(self.batches):
                self._step(orders[e, :, b], epoch * self.batches + b)
            accuracy = accuracy.write(e, self.test_accuracy(-(epoch + 1)))
        return accuracy.stack()

    def fit(self, epochs: int, chunk: int = 50, progress=None) -> np.ndarray:
        """Trains ``epochs`` epochs; returns test accuracy after each, ``[epochs, S]``."""
        out = []
        for start in range(0, epochs, chunk):
            count = min(chunk, epochs - start)
            out.append(self._epochs(tf.constant(self.orders(start, count)), tf.constant(start)))
            if progress is not None:
                progress.update(count)
        return np.concatenate([a.numpy() for a in out])


def grokking_epoch(accuracy, threshold: float = 0.9, hold: int = 20) -> int | None:
    """The first epoch (1-based) from which test accuracy stays above ``threshold`` for
    ``hold`` epochs (to the end, when fewer remain), or ``None``."""
    above = np.asarray(accuracy) > threshold
    for start in range(len(above)):
        window = above[start : start + hold]
        if window.all() and (len(window) == hold or start + len(window) == len(above)):
            return start + 1
    return None


def default_epochs(task: str, model: str) -> int:
    """The released budget: 7,000 epochs, 10,000 for the permutation transformers."""
    return 10_000 if (task, model) == ("permutations", "transformer") else 7_000


def train_config(task: str, model: str, head: str, args, seeds, fractions, progress=None):
    """Trains one configuration for every (seed, train fraction) pair, stacked; returns the
    trained trainer and the test accuracy after each epoch, ``[epochs, S]``."""
    tasks = [toy_data.TASKS[task](s) for s in seeds]
    splits = [toy_data.split(t, s, f) for t, s, f in zip(tasks, seeds, fractions, strict=True)]
    cfg = toy_models.Config(
        model, head, tasks[0].vocab_size, tasks[0].tokens.shape[1],
        **{k: getattr(args, k) for k in KNOBS},
    )  # fmt: skip
    decay = args.weight_decay if args.weight_decay is not None else {"mlp": 0.01}.get(model, 0.005)
    trainer = StackedTrainer(cfg, seeds, splits, args.lr, decay, args.test_dropout == "on")
    epochs = args.epochs or default_epochs(task, model)
    return trainer, trainer.fit(epochs, progress=progress), tasks[0].pca_rows


def run_config(task: str, model: str, head: str, args, progress=None) -> dict:
    """The seeds experiment of one configuration: EV, grokking epoch and final accuracy per seed."""
    seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else None
    seeds = seeds or toy_data.paper_seeds(args.seeds)
    start = time.time()
    trainer, accuracy, rows = train_config(
        task, model, head, args, seeds, [args.train_fraction] * len(seeds), progress
    )
    tables = trainer.weights["table"].numpy()[:, rows]
    return {
        "task": task,
        "model": model,
        "head": head,
        "settings": settings(args),
        "seeds": seeds,
        "explained_variance_top2": [float(np.sum(ht.explained_variance(t, 2))) for t in tables],
        "grokking_epoch": [grokking_epoch(a) for a in accuracy.T],
        "final_test_accuracy": [float(a) for a in accuracy[-1]],
        "test_accuracy_every_10": np.round(accuracy[9::10].T, 3).tolist(),
        "pca": [ht.principal_components(t, 2).numpy().round(4).tolist() for t in tables[:4]],
        "seconds": round(time.time() - start, 1),
    }


def run_fractions(task: str, model: str, head: str, args, progress=None) -> dict:
    """Data efficiency: final test accuracy at train fractions 0.1..0.9 (the released seed 66),
    the nine fractions stacked."""
    fractions = [round(0.1 * i, 1) for i in range(1, 10)]
    seeds = [args.efficiency_seed] * len(fractions)
    _, accuracy, _ = train_config(task, model, head, args, seeds, fractions, progress)
    return {
        "task": task,
        "model": model,
        "head": head,
        "settings": settings(args),
        "seed": args.efficiency_seed,
        "train_fractions": fractions,
        "final_test_accuracy": [float(a) for a in accuracy[-1]],
    }


def settings(args) -> dict:
    keys = ("lr", "weight_decay", *KNOBS, "test_dropout", "epochs")
    return {k: getattr(args, k) for k in keys}


# The paper's figures (FACTS.md 1d; median over its 20 seeds, seeds with EV >= 99% in brackets).
PAPER = {
    ("modular_addition", "mlp", "standard"): "EV 45.5% (0/20), grokking 1,032",
    ("modular_addition", "mlp", "harmonic"): "EV 100% (14/20), grokking 308",
    ("modular_addition", "transformer", "standard"): "grokking 911",
    ("modular_addition", "transformer", "harmonic"): "grokking 4,172",
    ("lattice", "mlp", "standard"): "EV 90% (0/20)",
    ("lattice", "mlp", "harmonic"): "EV 100% (20/20)",
    ("lattice", "transformer", "standard"): "EV 76%",
    ("lattice", "transformer", "harmonic"): "EV 100% (20/20)",
    ("permutations", "mlp", "standard"): "grokking 2,861",
    ("permutations", "mlp", "harmonic"): "grokking 1,049",
}
HEADER = (
    "| task | model | head | seeds | EV top-2, median | seeds >= 99% | grokking epoch, median "
    "(never) | final test accuracy, median | paper (20 seeds) |\n|---|---|---|---|---|---|---|---|---|"
)


def table_row(run: dict, paper: bool = True) -> str:
    ev, grok = run["explained_variance_top2"], run["grokking_epoch"]
    reached = [g for g in grok if g is not None]
    grok_text = f"{np.median(reached):.0f}" if reached else "-"
    return (
        f"| {run['task']} | {run['model']} | {run['head']} | {len(ev)} | "
        f"{100 * np.median(ev):.1f}% | {sum(e >= 0.99 for e in ev)}/{len(ev)} | "
        f"{grok_text} ({len(grok) - len(reached)}) | {np.median(run['final_test_accuracy']):.3f} |"
        + (f" {PAPER.get((run['task'], run['model'], run['head']), '')} |" if paper else "")
    )


def efficiency_table(runs: list[dict]) -> str:
    fractions = runs[0]["train_fractions"]
    lines = [
        "| task | model | head | " + " | ".join(f"{f:.1f}" for f in fractions) + " |",
        "|---" * (3 + len(fractions)) + "|",
    ]
    for r in runs:
        accuracy = " | ".join(f"{a:.2f}" for a in r["final_test_accuracy"])
        lines.append(f"| {r['task']} | {r['model']} | {r['head']} | {accuracy} |")
    return "\n".join(lines)


def load_runs(folder: str) -> tuple[list[dict], list[dict]]:
    """The seed runs and the train-fraction runs saved in ``folder``, in the task order."""
    runs = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json") and name != "summary.json":
            with open(os.path.join(folder, name)) as f:
                runs.append(json.load(f))
    order = {t: i for i, t in enumerate(toy_data.TASKS)}
    runs.sort(key=lambda r: (order[r["task"]], r["model"], r["head"] != "standard"))
    return [r for r in runs if "seeds" in r], [r for r in runs if "train_fractions" in r]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pca(runs: list[dict], path: str) -> None:
    """Each run's first seed's embedding on its top two principal axes (rows: tasks)."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    columns = list(dict.fromkeys((r["model"], r["head"]) for r in runs))
    fig, axes = plt.subplots(
        len(tasks), len(columns), figsize=(2.6 * len(columns), 2.6 * len(tasks)), squeeze=False
    )
    for ax in axes.flat:  # a missing run leaves its panel empty
        ax.set_visible(False)
    for r in runs:
        ax = axes[tasks.index(r["task"]), columns.index((r["model"], r["head"]))]
        ax.set_visible(True)
        pts = np.asarray(r["pca"][0])
        ax.scatter(pts[:, 0], pts[:, 1], s=8)
        for i, (a, b) in enumerate(pts):
            ax.annotate(str(i), (a, b), fontsize=5)
        ev = 100 * r["explained_variance_top2"][0]
        ax.set_title(f"{r['task']}\n{r['model']} {r['head']}, EV {ev:.0f}%", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(runs: list[dict], path: str) -> None:
    """Median test accuracy over seeds against epochs, standard vs harmonic (rows: models,
    columns: tasks)."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    models = list(dict.fromkeys(r["model"] for r in runs))
    fig, axes = plt.subplots(
        len(models), len(tasks), figsize=(3.0 * len(tasks), 2.5 * len(models)), squeeze=False
    )
    for r in runs:
        ax = axes[models.index(r["model"]), tasks.index(r["task"])]
        curve = np.median(np.asarray(r["test_accuracy_every_10"]), axis=0)
        ax.plot(10 * np.arange(1, len(curve) + 1), curve, label=r["head"])
        ax.set_title(f"{r['task']}, {r['model']}", fontsize=8)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=6)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy\n(median of seeds)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(folder: str) -> str:
    runs, fractions = load_runs(folder)
    text = "\n".join([HEADER] + [table_row(r) for r in runs]) if runs else ""
    if fractions:
        text += "\n\nFinal test accuracy by train fraction:\n\n" + efficiency_table(fractions)
    if runs:
        plot_pca(runs, os.path.join(folder, "pca.png"))
        if any(r["test_accuracy_every_10"][0] for r in runs):
            plot_curves(runs, os.path.join(folder, "curves.png"))
    with open(os.path.join(folder, "table.md"), "w") as f:
        f.write(text + "\n")
    return text


def compare(folders: list[str], tasks: list[str], models: list[str]) -> str:
    """One table of the seed runs of several folders (an ablation: one setting changed per
    folder) for ``tasks`` and ``models``, a leading column naming the folder."""
    names = "| setting " + HEADER.split("\n")[0].replace(" paper (20 seeds) |", "")
    lines = [names, "|---" * (names.count("|") - 1) + "|"]
    for folder in folders:
        for run in load_runs(folder)[0]:
            if run["task"] in tasks and run["model"] in models:
                name = os.path.basename(os.path.normpath(folder))
                lines.append(f"| {name} {table_row(run, paper=False)}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=",".join(toy_data.TASKS))
    p.add_argument("--models", default="mlp,transformer")
    p.add_argument("--heads", default="standard,harmonic")
    p.add_argument("--seeds", type=int, default=20, help="the first N of the released 20 seeds")
    p.add_argument("--seed-list", help="other seeds, e.g. 50 (the released case study)")
    p.add_argument(
        "--epochs", type=int, default=None, help="default: 7,000 (10,000 perm. transformers)"
    )
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--weight-decay", type=float, default=None, help="default 0.01 MLP, 0.005 transformer"
    )
    p.add_argument("--eta", type=float, default=RELEASED["eta"], help="harmonic exponent on d")
    p.add_argument("--eps", type=float, default=RELEASED["eps"], help="added to d^2")
    p.add_argument(
        "--table-scale", type=float, default=RELEASED["table_scale"], help="x the PyTorch table"
    )
    p.add_argument("--dropout", type=float, default=RELEASED["dropout"], help="transformer dropout")
    p.add_argument("--test-dropout", choices=["on", "off"], default="on")
    p.add_argument(
        "--distance", choices=ht.ops.inputs.DISTANCES, default=RELEASED["distance"],
        help="the harmonic head's distance",
    )  # fmt: skip
    p.add_argument("--mlp-penalty", action="store_true", help="the table penalty acts on MLPs")
    p.add_argument("--train-fraction", type=float, default=0.8)
    p.add_argument("--efficiency", action="store_true", help="train fractions 0.1..0.9 instead")
    p.add_argument("--efficiency-seed", type=int, default=66)
    p.add_argument("--out", default="runs/algorithmic")
    p.add_argument(
        "--summarize", nargs="+", metavar="DIR",
        help="only remake the table and pictures of DIR; several: one table, a row per DIR",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="a smoke run (CI)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.summarize:
        many = len(args.summarize) > 1
        pick = args.tasks.split(","), args.models.split(",")
        text = compare(args.summarize, *pick) if many else summarize(args.summarize[0])
        print(text)
        return {"table": text}
    if args.quick:
        args.tasks, args.seeds, args.epochs = "modular_addition", 2, 3
    from tqdm import tqdm

    os.makedirs(args.out, exist_ok=True)
    jobs = [
        (t, m, h)
        for t in args.tasks.split(",")
        for m in args.models.split(",")
        for h in args.heads.split(",")
    ]
    run = run_fractions if args.efficiency else run_config
    total = sum(args.epochs or default_epochs(t, m) for t, m, _ in jobs)
    with tqdm(total=total, desc="epochs (all runs)") as bar:
        for t, m, h in jobs:
            path = os.path.join(
                args.out, f"{t}-{m}-{h}{'-fractions' if args.efficiency else ''}.json"
            )
            if os.path.exists(path):  # resume: finished runs are kept
                bar.update(args.epochs or default_epochs(t, m))
                continue
            result = run(t, m, h, args, bar)  # written when done: a file is a finished run
            with open(path, "w") as f:
                json.dump(result, f)
    text = summarize(args.out)
    print(text)
    return {"table": text, "runs": load_runs(args.out)}


if __name__ == "__main__":
    main()
