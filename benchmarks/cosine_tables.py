"""The cosine-head tables and picture of docs/training-quality.md, from the runs' result files:
the CIFAR-10 exponent sweep and 3-seed comparison (``examples/cifar10.py``), and the small
language model's (``examples/transformer_lm.py``).

    python benchmarks/cosine_tables.py benchmarks/results/cosine

Reads ``DIR/cifar10/*.json`` and ``DIR/lm/*.json`` (each a script's ``results.json``), prints
the markdown tables and draws ``DIR/cosine.png``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def load(folder: str) -> list[dict]:
    """Every run of every result file in ``folder``, with its file's seed and settings."""
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            summary = json.load(f)
        for run in summary["runs"]:
            config = summary["config"]
            run = {**run, "seed": config["seed"], "eta_flag": config.get("eta")}
            run.setdefault("distance", config.get("distance") if run["kind"] != "ce" else None)
            runs.append(run)
    return runs


def label(run: dict) -> str:
    if run["kind"] == "ce":
        return "cross-entropy"
    eta = run["eta_flag"] or "default"  # the package's: 2 D (Euclidean), a constant (cosine)
    return f"{run['name'].split(' (')[0]} ({run['distance']}, eta {eta})"


def mean_sd(values: list[float], digits: int) -> str:
    sd = f" ± {np.std(values, ddof=1):.{digits}f}" if len(values) > 1 else ""
    return f"{np.mean(values):.{digits}f}{sd}"


def grouped(runs: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(label(run), []).append(run)
    return groups


def cifar_table(runs: list[dict], seeds: int) -> str:
    """Rows with ``seeds`` seeds: per-seed and mean ± sd test accuracy and ECE."""
    lines = [
        "| head | seeds | test accuracy, per seed | mean ± sd | test ECE, mean ± sd |",
        "|---|---|---|---|---|",
    ]
    for name, group in grouped(runs).items():
        if len(group) != seeds:
            continue
        group = sorted(group, key=lambda r: r["seed"])
        acc = [r["test_accuracy"] for r in group]
        ece = [r["test_ece"] for r in group]
        per_seed = " / ".join(f"{a:.4f}" for a in acc)
        lines.append(
            f"| {name} | {seeds} | {per_seed} | **{mean_sd(acc, 4)}** | {mean_sd(ece, 4)} |"
        )
    return "\n".join(lines)


def sweep_table(runs: list[dict], metric: str, seed: int = 0) -> str:
    """The cosine exponent sweep at one seed: ``metric`` per exponent."""
    cosine = [r for r in runs if r["distance"] == "cosine" and r["seed"] == seed]
    cosine = [r for r in cosine if r["kind"] == "exact"]
    cosine.sort(key=lambda r: float(r["eta_flag"]))
    head = " | ".join(f"eta {r['eta_flag']}" for r in cosine)
    values = " | ".join(f"{r[metric]:.4f}" for r in cosine)
    return f"| {metric} | {head} |\n|---{'|---' * len(cosine)}|\n| seed {seed} | {values} |"


def lm_table(runs: list[dict]) -> str:
    lines = [
        "| run | seeds | exact val loss, per seed | mean ± sd | train tokens/s, median |",
        "|---|---|---|---|---|",
    ]
    for name, group in grouped(runs).items():
        group = sorted(group, key=lambda r: r["seed"])
        losses = [r["final_val_loss"] for r in group]
        speed = np.median([r["tokens_per_second"] for r in group])
        per_seed = " / ".join(f"{v:.3f}" for v in losses)
        lines.append(
            f"| {name} | {len(group)} | {per_seed} | {mean_sd(losses, 3)} | {speed:,.0f} |"
        )
    return "\n".join(lines)


def plot(cifar: list[dict], lm: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, runs, metric, title in (
        (axes[0], cifar, "test_accuracy", "CIFAR-10 test accuracy (3 epochs)"),
        (axes[1], lm, "final_val_loss", "small LM exact validation loss (600 steps)"),
    ):
        groups = {k: v for k, v in grouped(runs).items() if len(v) > 1}
        for i, group in enumerate(groups.values()):
            values = [r[metric] for r in group]
            ax.scatter([i] * len(values), values, color="C0", alpha=0.6)
            ax.errorbar(i, np.mean(values), np.std(values, ddof=1), fmt="_", color="k")
        ax.set_xticks(range(len(groups)), list(groups), rotation=15, ha="right", fontsize=8)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", help="holds cifar10/ and lm/ result files")
    args = p.parse_args(argv)
    cifar = load(os.path.join(args.folder, "cifar10"))
    lm = load(os.path.join(args.folder, "lm"))
    tables = {
        "cifar_sweep": sweep_table(cifar, "test_accuracy"),
        "cifar": cifar_table(cifar, 3),
        "lm_sweep": sweep_table(lm, "final_val_loss"),
        "lm": lm_table(lm),
    }
    for name, text in tables.items():
        print(f"\n{name}:\n{text}")
    plot(cifar, lm, os.path.join(args.folder, "cosine.png"))
    return tables


if __name__ == "__main__":
    main()
