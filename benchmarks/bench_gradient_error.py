"""The sampled estimator's gradient error, part by part, on a partly trained LM: for each
estimator setting, the bias and the noise of the hidden-state gradient and of the centers'
gradient against the exact loss's, over many draws on the same held-out batch.

One exact run of the setup (``bench_estimator.SETUPS``) is trained for ``--steps``; then, per
configuration, ``--draws`` seeded sampled gradients ``g_s`` are compared with the exact ``g*``:
``bias = ||mean_s g_s - g*|| / ||g*||`` (floored by ``noise / sqrt(draws)``) and
``noise = sqrt(mean_s ||g_s - mean g||^2) / ||g*||``. Cheap next to training runs; it says
which half of the gradient a setting changes.

    python benchmarks/bench_gradient_error.py --setup stdlib12k
    python benchmarks/bench_gradient_error.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
sys.path.insert(0, HERE)

import bench_estimator  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import harmonic_tf as ht  # noqa: E402

import transformer_lm  # noqa: E402

# name -> SampledOptions changes from the defaults (with the setup's unigram counts)
CONFIGS = {
    "defaults": {},
    "control-variate": {"center_control_variate": True},
    "control-variate+rows=512": {"center_control_variate": True, "center_rows": 512},
    "rows=512": {"center_rows": 512},
    "rows=2048": {"center_rows": 2048},
    "rows=0 (sparse)": {"center_gradient": "indexed_slices"},
    "k=1024": {"k": 1024},
    "k=64": {"k": 64},
    "in-batch=all": {"in_batch_negatives": "all"},
    "in-batch=0": {"in_batch_negatives": 0},
    "sampler=log_uniform": {"sampler": "log_uniform"},
    "sampler=uniform": {"sampler": "uniform"},
}


def gradients(loss_fn, hidden, centers_variable):
    with tf.GradientTape() as tape:
        tape.watch(hidden)
        loss = loss_fn()
    dx, dw = tape.gradient(loss, [hidden, centers_variable])
    return tf.convert_to_tensor(dx).numpy(), tf.convert_to_tensor(dw).numpy()


def error(samples: list[np.ndarray], exact: np.ndarray) -> tuple[float, float]:
    """``(bias, noise)`` relative to ``||exact||``."""
    stack = np.stack(samples)
    mean = stack.mean(0)
    norm = np.linalg.norm(exact)
    noise = np.sqrt(np.mean(np.sum((stack - mean) ** 2, axis=tuple(range(1, stack.ndim)))))
    return float(np.linalg.norm(mean - exact) / norm), float(noise / norm)


def sweep(model, head, batch, counts, draws: int, configs: list[str]) -> list[dict]:
    tokens, labels = batch
    hidden = tf.convert_to_tensor(model.hidden_states(tokens))
    measure, var = head.measure(), head.centers_variable
    exact_x, exact_w = gradients(
        lambda: ht.harmonic_loss(hidden, head.centers, labels, **measure), hidden, var
    )
    rows = []
    for name in configs:
        options = ht.SampledOptions(**{"sampler": counts, **CONFIGS[name]})
        xs, ws = [], []
        for s in range(draws):
            dx, dw = gradients(
                lambda s=s, o=options: ht.sampled_harmonic_loss(
                    hidden, head.centers, labels, o, seed=s, **measure
                ),
                hidden,
                var,
            )
            xs.append(dx)
            ws.append(dw)
        (xb, xn), (wb, wn) = error(xs, exact_x), error(ws, exact_w)
        rows.append({"config": name, "x_bias": xb, "x_noise": xn, "w_bias": wb, "w_noise": wn})
        print(f"{name}: hidden bias {xb:.3f} noise {xn:.3f}; centers bias {wb:.3f} noise {wn:.3f}")
    return rows


def table(rows: list[dict], draws: int) -> str:
    lines = [
        "| estimator | hidden-state grad: bias | noise | centers' grad: bias | noise |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['x_bias']:.3f} | {r['x_noise']:.3f} | {r['w_bias']:.3f} | "
            f"{r['w_noise']:.3f} |"
        )
    lines.append(
        f"\nRelative to the exact gradient's norm, over {draws} draws; a bias below about "
        f"noise / {np.sqrt(draws):.1f} is the floor of its own estimate."
    )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--setup", default="stdlib12k", choices=list(bench_estimator.SETUPS))
    p.add_argument("--steps", type=int, default=500, help="exact training steps first")
    p.add_argument("--draws", type=int, default=32)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.setup, args.steps, args.draws = "quick", 10, 3
        args.configs = "defaults,rows=0 (sparse)"
    setup = bench_estimator.SETUPS[args.setup].split()
    run_args = transformer_lm.parse_args(
        [*setup, "--runs", "exact", "--steps", str(args.steps), "--eval-every", str(args.steps)]
        + ["--verbose", "0", "--samples", "0"]
    )
    (train_ids, val_ids), vectorizer, counts, source = transformer_lm.prepare(run_args)
    window, n = run_args.seq_len, run_args.batch
    batch = bench_estimator.held_out_batch(val_ids, window, n)
    configs = args.configs.split(",")

    def measure(model, head):
        return sweep(model, head, batch, counts, args.draws, configs)

    run = transformer_lm.run(
        "exact", run_args, (train_ids, val_ids), vectorizer, counts, on_trained=measure
    )
    rows = run["extra"]
    text = table(rows, args.draws)
    header = (
        f"Setup `{args.setup}` ({source}), exact model after {args.steps} steps "
        f"(val loss {run['final_val_loss']:.3f}); one held-out batch of {n} x {window} tokens.\n\n"
    )
    print(header + text)
    if not args.quick:
        stem = os.path.join(args.out, f"gradient_error_{args.setup}")
        with open(stem + ".json", "w") as f:
            json.dump({"args": vars(args), "rows": rows, "val_loss": run["final_val_loss"]}, f)
        with open(stem + ".md", "w") as f:
            f.write(header + text + "\n")
    return rows


if __name__ == "__main__":
    main()
