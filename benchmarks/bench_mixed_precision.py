"""Skipped steps under ``mixed_float16``: how often the loss scale overflows with cross-entropy,
the exact harmonic loss and the sampled harmonic loss, side by side on one model and data.

A keras-hub GPT-2 (random init) on the bytes of tiny Shakespeare, trained the same steps with
Keras's ``LossScaleOptimizer`` (a step whose gradients overflow float16 is skipped and halves
the scale; ``--growth`` steps without one double it). A skip is read as a halving of
``dynamic_scale`` after a batch. ``--growth 100`` shows the steady state of a long run (each
doubling probes float16's ceiling again).

    python benchmarks/bench_mixed_precision.py                  # ~5 min on 2 cores
    python benchmarks/bench_mixed_precision.py --quick          # seconds (CI smoke)
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import harmonic_tf as ht  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TEXT = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")
LOSSES = ("cross-entropy", "exact harmonic", "sampled harmonic")


class ScaleLog(keras.callbacks.Callback):
    """The loss scale after every batch, and the steps at which it halved (skipped steps)."""

    def __init__(self):
        super().__init__()
        self.scales: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.scales.append(float(self.model.optimizer.dynamic_scale.numpy()))

    def skipped(self, initial: float) -> list[int]:
        before = [initial, *self.scales[:-1]]
        return [i for i, (a, b) in enumerate(zip(before, self.scales, strict=True)) if b < a]


def byte_windows(path: str, seq_len: int, count: int, seed: int) -> np.ndarray:
    data = np.frombuffer(open(path, "rb").read(), np.uint8).astype("int32")
    starts = np.random.default_rng(seed).integers(0, len(data) - seq_len - 1, count)
    return np.stack([data[s : s + seq_len + 1] for s in starts])


def build(name: str, args):
    import keras_hub

    from harmonic_tf.keras.hub import HarmonicCausalLM

    keras.utils.set_random_seed(args.seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=256,
        num_layers=args.layers,
        num_heads=4,
        hidden_dim=args.width,
        intermediate_dim=4 * args.width,
        max_sequence_length=args.seq_len,
        dropout=0.0,
    )
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(args.lr), dynamic_growth_steps=args.growth
    )
    if name == "cross-entropy":
        lm = keras_hub.models.GPT2CausalLM(backbone)
        lm.compile(optimizer, weighted_metrics=[])
        return lm
    sampled = ht.SampledOptions(k=64) if name == "sampled harmonic" else None
    lm = HarmonicCausalLM(backbone)
    # The sampled estimator's own float16 behaviour, even at V = 256 (where HarmonicLoss would
    # otherwise train with the faster exact loss).
    loss = ht.HarmonicLoss(sampled=sampled, seed=args.seed, exact_fallback=False)
    lm.compile(optimizer, loss=loss)
    return lm


def run(name: str, args, windows: np.ndarray) -> dict:
    lm = build(name, args)
    x = {"token_ids": windows[:, :-1], "padding_mask": np.ones_like(windows[:, :-1], bool)}
    log = ScaleLog()
    hist = lm.fit(
        x, windows[:, 1:], batch_size=args.batch, epochs=1, callbacks=[log], verbose=args.verbose
    )
    skipped = log.skipped(lm.optimizer.initial_scale)
    return {
        "loss": name,
        "steps": len(log.scales),
        "skipped": len(skipped),
        "skipped_at": skipped,
        "final_scale": log.scales[-1],
        "final_train_loss": float(hist.history["loss"][-1]),
    }


def table(rows: list[dict], args) -> str:
    lines = [
        f"mixed_float16, GPT-2 {args.layers}x{args.width} on bytes, {rows[0]['steps']} steps, "
        f"growth every {args.growth} finite steps, seed {args.seed}",
        "",
        "| loss | skipped steps | share | at steps | final loss scale | final train loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        at = ", ".join(map(str, r["skipped_at"][:12])) + (" ..." if r["skipped"] > 12 else "")
        lines.append(
            f"| {r['loss']} | {r['skipped']} | {r['skipped'] / r['steps']:.1%} | {at} | "
            f"2^{np.log2(r['final_scale']):.0f} | {r['final_train_loss']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--growth", type=int, default=2000, help="dynamic_growth_steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "results", "mixed_precision"))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.width, args.seq_len, args.layers = 6, 32, 32, 1
    windows = byte_windows(args.text, args.seq_len, args.steps * args.batch, args.seed)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        rows = [run(name, args, windows) for name in LOSSES]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    result = {"config": vars(args), "rows": rows, "table": table(rows, args)}
    print(result["table"])
    if not args.quick:
        with open(f"{args.out}_growth{args.growth}.json", "w") as f:
            json.dump(result, f, indent=1)
        with open(f"{args.out}_growth{args.growth}.md", "w") as f:
            f.write(result["table"] + "\n")
    return result


if __name__ == "__main__":
    main()
