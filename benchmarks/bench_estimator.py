"""Where the sampled estimator's gap to the exact loss comes from: one LM setup, several seeds,
one change at a time, every run scored by the exact validation loss.

Configurations (``--configs``):
  exact, sampled                 the exact loss; the sampled loss with the package defaults
  exact-chunked                  the exact loss over 4,096-column chunks: the same math summed in
                                 another order, so its gap to ``exact`` is the floor that
                                 floating-point chaos alone gives a paired gap
  exact-centers                  sampled loss and hidden-state gradient, EXACT center gradient
  exact-hidden                   the reverse: exact hidden-state gradient, sampled centers' one
  rows=S, k=K, in-batch=M|all|none, sampler=NAME   one estimator setting changed
                                 (several joined by ``+``: ``control-variate=1+k=1024``)
  control-variate=1              the centers' push with its control variate (own label and
                                 in-batch columns in full)

After each sampled run the denominator estimate alone is measured on a held-out batch of the
trained model: the sampled per-token loss minus the exact one over ``--draws`` seeds (the
log-denominator's error: the true logit carries no correction), its bias and spread.

    python benchmarks/bench_estimator.py --setup stdlib12k --seeds 0,1,2
    python benchmarks/bench_estimator.py --quick            # a smoke run

Writes ``estimator_<setup>.json`` (after every run: a long sweep can be cut short), ``.md``
and ``.png`` (exact validation loss against training seconds) to ``--out``. Each sampled run
stores the settings it ran with; a stored run whose configuration means other settings today
(new package defaults) is shown with the ones that differ (``sampled (k=256,
control_variate=False)``), and a resumed sweep runs today's anew.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import harmonic_tf as ht  # noqa: E402
from harmonic_tf.ops import loss_terms  # noqa: E402

import transformer_lm  # noqa: E402
from _common import run_settings  # noqa: E402

SETUPS = {
    # Untuned: word-level CPython standard library (code and docstrings), V = 12,000, D = 160,
    # 3 blocks (the embedded pydoc text has only 3,600 distinct words).
    "stdlib12k": "--corpus stdlib --tokens words --vocab-size 12000 --d-model 160 --layers 3 "
    "--mlp-dim 640 --steps 1500 --eval-every 250",
    "stdlib-code16k": "--corpus stdlib --tokens code --vocab-size 16000 --d-model 160 "
    "--layers 3 --mlp-dim 640 --steps 1500 --eval-every 250",
    # The equal-wall-clock run's model at V = 50,000 (D = 128, 2 blocks), at equal steps: 600,
    # since one exact step costs ~1 s here.
    "stdlib-code50k": "--corpus stdlib --tokens code --vocab-size 50000 --steps 600 "
    "--eval-every 100 --chunk-size 4096",
    "quick": "--quick --vocab-size 400 --samples 0",
}


class MixedGradientLoss(ht.HarmonicLoss):
    """The sampled loss's value with one half of its gradient taken from the exact loss:
    ``exact_part="centers"`` (exact center gradient, sampled hidden-state gradient) or
    ``"hidden"`` (the reverse). An ablation, not an estimator: it costs the exact loss too."""

    def __init__(self, exact_part: str, **kwargs):
        super().__init__(**kwargs)
        if exact_part not in ("centers", "hidden"):
            raise ValueError(f"`exact_part` must be 'centers' or 'hidden', got {exact_part!r}.")
        self.exact_part = exact_part

    def terms(self, head, hidden, labels, sample_weight=None, training=True, step=None):
        if not training:
            return super().terms(head, hidden, labels, sample_weight, training, step)
        common = dict(**head.measure(), ignore_index=self.ignore_index, weights=sample_weight)
        w, stop = head.centers, tf.stop_gradient
        # Each loss sees the other half as a constant: its gradient reaches one half only.
        x_s, w_s, x_e, w_e = (
            (hidden, stop(w), stop(hidden), w)
            if self.exact_part == "centers"
            else (stop(hidden), w, hidden, stop(w))
        )
        sampled = loss_terms(
            x_s, w_s, labels, sampled=self.sampled, seed=self.seed_for(step), **common
        )
        exact = loss_terms(x_e, w_e, labels, chunk_size=self.exact.chunk_size, **common).total
        return sampled._replace(total=sampled.total + exact - stop(exact))

    def get_config(self) -> dict:
        return {**super().get_config(), "exact_part": self.exact_part}


def denominator_error(model, head, options, batch, draws: int) -> dict:
    """Sampled minus exact per-token loss on one batch over ``draws`` seeds: its bias (mean),
    the spread of one token's estimate (sd over draws, averaged over tokens) and of the batch
    mean (sd over draws)."""
    tokens, labels = batch
    hidden = model.hidden_states(tokens)
    measure = head.measure()
    exact = ht.harmonic_loss(hidden, head.centers, labels, reduction="none", **measure)
    diffs = np.stack(
        [
            (
                ht.sampled_harmonic_loss(
                    hidden, head.centers, labels, options, reduction="none", seed=s, **measure
                ) - exact
            ).numpy()
            for s in range(draws)
        ]
    )  # fmt: skip
    return {
        "bias": float(diffs.mean()),
        "token_sd": float(diffs.std(axis=0).mean()),
        "batch_mean_sd": float(diffs.mean(axis=(1, 2)).std()),
        "exact_mean": float(exact.numpy().mean()),
    }


def held_out_batch(val_ids: np.ndarray, seq_len: int, batch: int):
    """``(tokens, labels)`` ``[batch, seq_len]`` each: the first windows of the validation ids,
    one training-sized batch (the in-batch block depends on the batch)."""
    ids = np.stack([val_ids[i * seq_len : (i + 1) * seq_len + 1] for i in range(batch)])
    return tf.constant(ids[:, :-1]), tf.constant(ids[:, 1:])


def config_args(name: str) -> tuple[str, list[str], str | None]:
    """``(kind, extra transformer_lm arguments, exact_part)`` of a configuration name;
    settings combine with ``+`` (``control-variate=1+k=1024``)."""
    if name in ("exact", "sampled"):
        return name, [], None
    if name == "exact-chunked":  # the same loss summed in another order: the chaos floor
        return "exact", ["--chunk-size", "4096"], None
    if name in ("exact-centers", "exact-hidden"):
        return "sampled", [], name.split("-")[1]
    flags = {
        "rows": "--exact-center-rows",
        "k": "--k",
        "in-batch": "--in-batch-negatives",
        "sampler": "--sampler",
        "control-variate": "--center-control-variate",
    }
    extra = []
    for key, value in run_settings(name, name):
        if key not in flags:
            raise SystemExit(f"unknown configuration {name!r}: no setting {key!r}")
        extra += [flags[key], value]
    return "sampled", extra, None


def estimator(options, sampler: str) -> dict:
    """The settings a sampled run ran with, as stored beside its result: a configuration's name
    means today's defaults, which may not be those of a stored run."""
    return {
        "k": options.k,
        "in_batch_negatives": options.in_batch_negatives,
        "center_rows": options.center_rows,
        "control_variate": options.center_control_variate,
        "sampler": sampler,
        "log_q_correction": options.log_q_correction,
    }


def todays_estimator(name: str, setup: str, counts) -> dict | None:
    """What configuration ``name`` runs with today (``None``: the exact loss)."""
    kind, extra, _ = config_args(name)
    if kind == "exact":
        return None
    args = transformer_lm.parse_args([*SETUPS[setup].split(), *extra])
    return estimator(transformer_lm.make_loss(kind, None, args, counts).sampled, args.sampler)


def label(run: dict, today: dict | None) -> str:
    """A stored run's row name: its configuration's, plus the settings it ran with where they
    are not what that name runs with today (``sampled (k=256, control_variate=False)``)."""
    stored = run.get("estimator")
    if stored == today:
        return run["config"]
    if stored is None or today is None:
        return f"{run['config']} (settings not recorded)"
    keys = {**today, **stored}
    changed = ", ".join(f"{k}={stored.get(k)}" for k in keys if stored.get(k) != today.get(k))
    return f"{run['config']} ({changed})"


def one_run(name: str, seed: int, setup: str, data, draws: int) -> dict:
    kind, extra, exact_part = config_args(name)
    argv = [*SETUPS[setup].split(), *extra, "--runs", kind, "--seed", str(seed), "--verbose", "0"]
    args = transformer_lm.parse_args(argv)
    (train_ids, val_ids), vectorizer, counts = data
    args.vocab_size = len(vectorizer.get_vocabulary())
    loss = None
    sampled = None
    if kind == "sampled":
        sampled = transformer_lm.make_loss("sampled", None, args, counts)
        if exact_part:
            sampled = MixedGradientLoss(exact_part, sampled=sampled.sampled, seed=seed + 1000)
        loss = sampled
    batch = held_out_batch(val_ids, args.seq_len, args.batch)

    def measure(model, head):
        if sampled is None:
            return None
        return denominator_error(model, head, sampled.sampled, batch, draws)

    r = transformer_lm.run(kind, args, (train_ids, val_ids), vectorizer, counts, loss, measure)
    settings = estimator(sampled.sampled, args.sampler) if sampled is not None else None
    r.update(config=name, seed=seed, estimator=settings, samples=[], prototypes=[])
    return r


def table(runs: list[dict]) -> str:
    """Markdown: per configuration, the final exact validation loss per seed, the gap to the
    exact run of the same seed (mean and range), tokens/s and the denominator's error."""
    exact = {r["seed"]: r["final_val_loss"] for r in runs if r["config"] == "exact"}
    name_of = {id(r): r.get("label", r["config"]) for r in runs}
    lines = [
        "| configuration | seeds | val loss per seed | gap to exact: mean [min, max] | "
        "tokens/s | denominator bias | token sd | batch-mean sd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(name_of.values()):
        rows = [r for r in runs if name_of[id(r)] == name]
        losses = " / ".join(f"{r['final_val_loss']:.3f}" for r in rows)
        gaps = [r["final_val_loss"] - exact[r["seed"]] for r in rows if r["seed"] in exact]
        gap = f"**{np.mean(gaps):+.3f}** [{min(gaps):+.3f}, {max(gaps):+.3f}]" if gaps else "-"
        tps = np.median([r["tokens_per_second"] for r in rows])
        den = [r["extra"] for r in rows if r.get("extra")]
        den_cells = (
            " | ".join(
                f"{np.mean([d[k] for d in den]):+.3f}"
                for k in ("bias", "token_sd", "batch_mean_sd")
            )
            if den
            else "- | - | -"
        )
        lines.append(f"| {name} | {len(rows)} | {losses} | {gap} | {tps:,.0f} | {den_cells} |")
    return "\n".join(lines)


def plot(runs: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for r in runs:
        name = r.get("label", r["config"])
        first = name not in colors
        color = colors.setdefault(name, f"C{len(colors) % 10}")
        ax.plot(
            r["train_seconds"], r["val_loss"], color=color, marker="o", ms=3,
            label=name if first else None,
        )  # fmt: skip
    ax.set_xlabel("training seconds (2 CPU cores)")
    ax.set_ylabel("exact validation loss (nats)")
    lows = [min(r["val_loss"]) for r in runs]
    ax.set_ylim(min(lows) - 0.1, min(lows) + 1.5)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--setup", default="stdlib12k", choices=list(SETUPS))
    p.add_argument("--configs", default="exact,sampled,exact-centers,exact-hidden")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--draws", type=int, default=32, help="seeds of the denominator study")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--quick", action="store_true", help="the quick setup, one seed")
    args = p.parse_args(argv)
    if args.quick:
        args.setup, args.seeds, args.draws = "quick", "0", 4
    setup_args = transformer_lm.parse_args(SETUPS[args.setup].split())
    train_val, vectorizer, counts, source = transformer_lm.prepare(setup_args)
    data = (train_val, vectorizer, counts)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"estimator_{args.setup}")
    runs = []
    if os.path.exists(stem + ".json") and not args.quick:  # resume a cut-short sweep
        runs = json.load(open(stem + ".json"))["runs"]
    names = dict.fromkeys([*(r["config"] for r in runs), *args.configs.split(",")])
    today = {name: todays_estimator(name, args.setup, counts) for name in names}
    for r in runs:  # a stored run under today's name only if it ran with today's settings
        r["label"] = label(r, today[r["config"]])
    done = {(r["label"], r["seed"]) for r in runs}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.configs.split(","):
            if (name, seed) in done:
                continue
            runs.append(one_run(name, seed, args.setup, data, args.draws))
            runs[-1]["label"] = name
            print(
                f"{name} seed {seed}: exact val loss {runs[-1]['final_val_loss']:.4f}", flush=True
            )
            stored = [{k: v for k, v in r.items() if k != "label"} for r in runs]
            summary = {"setup": SETUPS[args.setup], "source": source, "runs": stored}
            with open(stem + ".json", "w") as f:
                json.dump(summary, f, indent=1)
    text = table(runs)
    with open(stem + ".md", "w") as f:
        f.write(f"Setup `{args.setup}`: `{SETUPS[args.setup]}` ({source})\n\n{text}\n")
    plot(runs, stem + ".png", f"{args.setup}: exact validation loss against training time")
    print(text)
    return runs


if __name__ == "__main__":
    main()
