"""Tables and plots over several ``transformer_lm.py`` result files.

    python examples/summarize_runs.py lr runs/lr/*/results.json --out docs/images/lr_sweep.png
    python examples/summarize_runs.py seeds runs/seed*/results.json
    python examples/summarize_runs.py eta runs/eta/pydoc/*/results.json --out docs/images/eta_pydoc.png

``lr``: final exact validation loss against the peak learning rate, one line per loss.
``eta``: the exact harmonic loss over the (exponent, learning rate) grid, one row per exponent,
with cross-entropy's row for comparison; ``--out`` draws loss against ``eta / D`` per rate.
``learned``: runs with a learned exponent, where it started and ended.
``seeds``: per seed, each run's final loss and tokens/s, the sampled-minus-exact gap and the
tokens/s ratio, then the means (a later file's run replaces an earlier one of the same seed and
kind); ``--out`` draws every seed's validation curves.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from exponents import eta_value


def load(paths: list[str]) -> list[tuple[dict, dict]]:
    """``(config, run)`` for every run of every file."""
    out = []
    for path in paths:
        with open(path) as f:
            summary = json.load(f)
        out.extend((summary["config"], run) for run in summary["runs"])
    return out


def lr_of(config: dict, run: dict) -> float:
    return config["lr_ce"] if run["kind"] == "ce" else config["lr_harmonic"]


def lr_table(runs: list[tuple[dict, dict]]) -> tuple[str, dict]:
    by_kind: dict[str, dict[float, float]] = defaultdict(dict)
    for config, run in runs:
        if run["kind"] in ("ce", "exact"):
            by_kind[run["name"]][lr_of(config, run)] = run["final_val_loss"]
    rates = sorted({lr for losses in by_kind.values() for lr in losses})
    lines = ["| run | " + " | ".join(f"lr {lr:g}" for lr in rates) + " |"]
    lines.append("|---|" + "---|" * len(rates))
    for name, losses in by_kind.items():
        best = min(losses.values())
        cells = [
            "-"
            if lr not in losses
            else f"**{losses[lr]:.3f}**"
            if losses[lr] == best
            else f"{losses[lr]:.3f}"
            for lr in rates
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines), by_kind


def plot_lr(by_kind: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, losses in by_kind.items():
        rates = sorted(losses)
        ax.plot(rates, [losses[r] for r in rates], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate (Adam, warm-up + cosine)")
    ax.set_ylabel("exact validation loss at the end (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def eta_of(config: dict) -> str:
    """The exponent a run used, as given on the command line (``None``: the package default)."""
    return config.get("eta") or "default"


def eta_table(runs: list[tuple[dict, dict]]) -> tuple[str, dict]:
    """Rows: cross-entropy, then each exponent by increasing value; columns: learning rates."""
    grid: dict[str, dict[float, float]] = defaultdict(dict)
    ratio: dict[str, float] = {"cross-entropy": -1.0}
    for config, run in runs:
        if run["kind"] == "ce":
            grid["cross-entropy"][lr_of(config, run)] = run["final_val_loss"]
        elif run["kind"] == "exact" and not eta_of(config).startswith("learned"):
            name = f"eta = {eta_of(config)}"
            grid[name][lr_of(config, run)] = run["final_val_loss"]
            ratio[name] = _eta_over_d(eta_of(config), config["d_model"])
    rates = sorted({lr for row in grid.values() for lr in row})
    best = min(v for name, row in grid.items() if name != "cross-entropy" for v in row.values())
    lines = ["| run | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | best |"]
    lines.append("|---|" + "---|" * (len(rates) + 1))
    for name in sorted(grid, key=lambda n: ratio.get(n, 0.0)):
        row = grid[name]
        cells = [
            "-" if lr not in row else f"**{row[lr]:.3f}**" if row[lr] == best else f"{row[lr]:.3f}"
            for lr in rates
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {min(row.values()):.3f} |")
    return "\n".join(lines), {"grid": grid, "ratio": ratio}


def learned_table(runs: list[tuple[dict, dict]]) -> str:
    """Runs with a learned exponent: where it started, where it ended, the final loss."""
    lines = [
        "| run | lr | eta at the start | eta at the end | exact val loss |",
        "|---|---|---|---|---|",
    ]
    for config, run in runs:
        if run["kind"] != "ce" and eta_of(config).startswith("learned") and run.get("eta"):
            lines.append(
                f"| {run['name']}, `--eta {eta_of(config)}` | {lr_of(config, run):g} | "
                f"{run['eta'][0]:.1f} | {run['eta'][-1]:.1f} | {run['final_val_loss']:.3f} |"
            )
    return "\n".join(lines)


def _eta_over_d(spec: str, dim: int) -> float:
    if spec == "default":  # runs made before --eta existed: the old default sqrt(D)
        return dim**-0.5
    return eta_value(spec, dim)[0] / dim


def plot_eta(table: dict, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (NullLocator below)

    grid, ratio = table["grid"], table["ratio"]
    rates = sorted({lr for name, row in grid.items() if name != "cross-entropy" for lr in row})
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, lr in enumerate(rates):
        points = sorted(
            (ratio[name], row[lr])
            for name, row in grid.items()
            if name != "cross-entropy" and lr in row
        )
        ax.plot(*zip(*points, strict=True), marker="o", color=f"C{i}", label=f"harmonic, lr {lr:g}")
    if "cross-entropy" in grid:
        lr, value = min(grid["cross-entropy"].items(), key=lambda kv: kv[1])
        ax.axhline(value, color="k", ls=":", label=f"cross-entropy, best (lr {lr:g})")
    ax.set_xscale("log")
    # One tick per exponent in the grid, named by its rule (minor log ticks would overlap).
    ticks = sorted({(ratio[n], n.removeprefix("eta = ")) for n in grid if n != "cross-entropy"})
    ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("eta  (p ∝ d^-eta; D = hidden size)")
    ax.set_ylabel("exact validation loss at the end (nats)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def by_seed_and_kind(runs: list[tuple[dict, dict]]) -> dict[int, dict[str, dict]]:
    by_seed: dict[int, dict[str, dict]] = defaultdict(dict)
    for config, run in runs:
        by_seed[config["seed"]][run["kind"]] = run
    return by_seed


def plot_seeds(by_seed: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    styles = {"ce": ":", "exact": "-", "sampled": "--"}
    for i, seed in enumerate(sorted(by_seed)):
        for kind, run in sorted(by_seed[seed].items()):
            ax.plot(
                run["steps"][1:],
                run["val_loss"][1:],
                styles.get(kind, "-"),
                color=f"C{i}",
                marker="o",
                ms=3,
                label=f"{run['name']}, seed {seed}",
            )
    ax.set_xlabel("training step")
    ax.set_ylabel("exact validation loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def seeds_table(by_seed: dict[int, dict[str, dict]]) -> str:
    lines = [
        "| seed | exact harmonic | sampled | sampled - exact | tokens/s exact / sampled |",
        "|---|---|---|---|---|",
    ]
    gaps, ratios, exact, sampled = [], [], [], []
    for seed in sorted(by_seed):
        runs_of_seed = by_seed[seed]
        if not {"exact", "sampled"} <= runs_of_seed.keys():
            continue
        e, s = runs_of_seed["exact"], runs_of_seed["sampled"]
        gap = s["final_val_loss"] - e["final_val_loss"]
        ratio = s["tokens_per_second"] / e["tokens_per_second"]
        gaps.append(gap)
        ratios.append(ratio)
        exact.append(e["final_val_loss"])
        sampled.append(s["final_val_loss"])
        lines.append(
            f"| {seed} | {e['final_val_loss']:.3f} | {s['final_val_loss']:.3f} | {gap:+.3f} | "
            f"{e['tokens_per_second']:,.0f} / {s['tokens_per_second']:,.0f} ({ratio:.2f}x) |"
        )
    if gaps:
        lines.append(
            f"| **mean of {len(gaps)}** | **{np.mean(exact):.3f}** | **{np.mean(sampled):.3f}** | "
            f"**{np.mean(gaps):+.3f}** | **{np.mean(ratios):.2f}x** |"
        )
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("mode", choices=["lr", "seeds", "eta", "learned"])
    p.add_argument("results", nargs="+", help="results.json files of transformer_lm.py")
    p.add_argument("--out", help="PNG path for the plot")
    p.add_argument("--title", default="", help="plot title")
    args = p.parse_args(argv)
    runs = load(args.results)
    if args.mode == "lr":
        text, by_kind = lr_table(runs)
        if args.out:
            plot_lr(by_kind, args.out)
    elif args.mode == "learned":
        text = learned_table(runs)
    elif args.mode == "eta":
        text, table = eta_table(runs)
        if args.out:
            plot_eta(table, args.out, args.title)
    else:
        by_seed = by_seed_and_kind(runs)
        text = seeds_table(by_seed)
        if args.out:
            plot_seeds(by_seed, args.out)
    print(text)
    return text


if __name__ == "__main__":
    main()
