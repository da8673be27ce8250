"""Fine-tune a cross-entropy-pretrained vision-language model with harmonic loss.

The plan this package was built for, with images: a supervised fine-tuning run whose prompt
tokens are masked, whose unembedding becomes the harmonic centers, on a vision-language model.
All offline, on CIFAR-10 (``../shared/data``):

1. a SentencePiece tokenizer of the prompts and class names (one token per class name);
2. a tiny keras-hub ``PaliGemmaCausalLM`` pretrained with cross-entropy to caption images
   (prompt ``"caption"``, response ``"a photo of a <class>"``);
3. from that checkpoint, fine-tuning on a question (prompt ``"what is this"``, response
   ``"<class>"``), once with cross-entropy and once as a ``HarmonicCausalLM`` (centers = the
   token embedding, exact harmonic loss: V is tiny), through keras-hub's own preprocessor, whose
   response mask is the sample weight;
4. held-out response-token loss (exact, float64, of each model's own logits) and answer
   accuracy (the argmax at the answer token is the class name) along the way, per seed.

Run: ``python examples/finetune_vlm.py --seeds 0,1,2`` (about 10 min on 2 cores); ``--quick``
for a smoke run. Writes ``runs/finetune_vlm/result.json`` and ``finetune_vlm.png``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

import keras
import numpy as np

try:
    import keras_hub
    import sentencepiece
except ImportError as error:  # pragma: no cover
    raise SystemExit("finetune_vlm.py needs keras-hub: pip install -e '.[examples,hub]'") from error

from harmonic_tf.keras.hub import HarmonicCausalLM  # noqa: E402

from cifar10 import CLASSES, load_cifar10  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "cifar10-images.tar.gz")
CAPTION, QUESTION = "caption", "what is this"


def tokenizer() -> keras_hub.models.PaliGemmaTokenizer:
    """A word-level SentencePiece vocabulary of the prompts, captions and class names."""
    words = [CAPTION, QUESTION, *(f"a photo of a {name}" for name in CLASSES)]
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(words * 10), model_writer=out, model_type="word",
        vocab_size=len(set(" ".join(words).split())) + 4, pad_id=0, bos_id=1, eos_id=2,
        unk_id=3, pad_piece="<pad>", bos_piece="<bos>", eos_piece="<eos>", unk_piece="<unk>",
    )  # fmt: skip
    return keras_hub.models.PaliGemmaTokenizer(out.getvalue())


def backbone(vocab: int, args) -> keras_hub.models.PaliGemmaBackbone:
    return keras_hub.models.PaliGemmaBackbone(
        vocabulary_size=vocab, image_size=32, num_layers=args.layers, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=args.width, intermediate_dim=2 * args.width,
        head_dim=args.width // 2, vit_patch_size=8, vit_num_heads=2, vit_hidden_dim=args.width,
        vit_num_layers=1,
    )  # fmt: skip


def batches(preprocessor, images, labels, prompt: str) -> tuple:
    """keras-hub's ``(x, y, sample_weight)`` for ``images`` with ``prompt``; the response is
    the caption or the class name, and the weight marks its tokens only."""
    responses = [f"a photo of a {CLASSES[c]}" if prompt == CAPTION else CLASSES[c] for c in labels]
    data = {"images": images.astype("float32") / 255.0, "prompts": [prompt] * len(labels)}
    x, y, weight = preprocessor({**data, "responses": responses})
    return {k: np.asarray(v) for k, v in x.items()}, np.asarray(y), np.asarray(weight)


def response_metrics(lm, x, y, weight) -> tuple[float, float]:
    """``(loss, accuracy)`` on response tokens: the mean float64 negative log-likelihood of the
    model's own logits (dot-product or harmonic), and how often the argmax at the answer's
    first token is the right class name."""
    z = np.asarray(lm.predict(x, batch_size=64, verbose=0), np.float64)
    z -= z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, y[..., None], -1)[..., 0]
    mask = weight > 0
    first = mask.argmax(1)  # the answer's first token
    rows = np.arange(len(y))
    accuracy = (z[rows, first].argmax(-1) == y[rows, first]).mean()
    return float(nll[mask].mean()), float(accuracy)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="CIFAR-10 archive or folder")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--finetune-steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train-images", type=int, default=4000, help="per split, all classes")
    parser.add_argument("--seeds", default="0", help="fine-tuning seeds, comma list")
    parser.add_argument("--out", default="runs/finetune_vlm")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (CI)")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in str(args.seeds).split(",")]
    if args.quick:
        args.width, args.layers, args.train_images = 16, 1, 200
        args.pretrain_steps, args.finetune_steps, args.eval_every, args.batch = 10, 10, 5, 8
    return args


def pretrain(args, preprocessor, images, labels) -> keras_hub.models.PaliGemmaCausalLM:
    """A stock PaliGemma captioner trained with cross-entropy (keras-hub's own loss)."""
    keras.utils.set_random_seed(0)
    vocab = preprocessor.tokenizer.vocabulary_size()
    lm = keras_hub.models.PaliGemmaCausalLM(backbone=backbone(vocab, args), preprocessor=None)
    lm.compile(keras.optimizers.Adam(args.lr), weighted_metrics=[])
    x, y, weight = batches(preprocessor, images, labels, CAPTION)
    print(f"pretraining with cross-entropy: {args.pretrain_steps} steps")
    _fit(lm, (x, y, weight), args.pretrain_steps, args.batch, seed=0)
    return lm


def _fit(lm, data, steps: int, batch: int, seed: int) -> None:
    """``steps`` optimizer steps on shuffled batches of ``data``."""
    x, y, weight = data
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(y)) for _ in range(steps * batch // len(y) + 1)])
    idx = order[: steps * batch]
    pick = {k: v[idx] for k, v in x.items()}
    lm.fit(pick, y[idx], sample_weight=weight[idx], batch_size=batch, epochs=1, verbose=0)


def fine_tune(name: str, seed: int, base, args, train, test) -> list:
    """``[(step, loss, accuracy)]`` of fine-tuning a copy of ``base`` with ``name``'s loss."""
    keras.utils.set_random_seed(1 + seed)
    clone = keras_hub.models.PaliGemmaBackbone.from_config(base.backbone.get_config())
    clone.set_weights(base.backbone.get_weights())
    if name == "harmonic":
        lm = HarmonicCausalLM(clone)  # exact HarmonicLoss, eta = 2 D: the package defaults
        lm.compile(keras.optimizers.Adam(args.lr), weighted_metrics=[])
    else:
        lm = keras_hub.models.PaliGemmaCausalLM(backbone=clone, preprocessor=None)
        lm.compile(keras.optimizers.Adam(args.lr), weighted_metrics=[])
    curve = [(0, *response_metrics(lm, *test))]
    for step in range(args.eval_every, args.finetune_steps + 1, args.eval_every):
        _fit(lm, train, args.eval_every, args.batch, seed=seed * 1000 + step)
        curve.append((step, *response_metrics(lm, *test)))
        print(f"seed {seed} {name}: step {step} loss {curve[-1][1]:.4f} acc {curve[-1][2]:.3f}")
    return curve


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    (x_train, y_train), (x_test, y_test) = load_cifar10(args.data, limit=2 * args.train_images)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y_train))
    half = len(order) // 2  # captions on one half, questions on the other
    pre, ft = order[:half], order[half:]
    test_idx = rng.permutation(len(y_test))[: min(1000, len(y_test))]
    preprocessor = keras_hub.models.PaliGemmaCausalLMPreprocessor(
        tokenizer(), keras_hub.layers.PaliGemmaImageConverter(image_size=(32, 32)),
        sequence_length=12,
    )  # fmt: skip
    base = pretrain(args, preprocessor, x_train[pre], y_train[pre])
    train = batches(preprocessor, x_train[ft], y_train[ft], QUESTION)
    test = batches(preprocessor, x_test[test_idx], y_test[test_idx], QUESTION)
    runs = {
        seed: {
            n: fine_tune(n, seed, base, args, train, test) for n in ("cross-entropy", "harmonic")
        }
        for seed in args.seeds
    }
    result = {
        "args": vars(args),
        "runs": runs,
        "table": seed_table(runs),
        "seconds": round(time.time() - started, 1),
    }
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(runs, os.path.join(args.out, "finetune_vlm.png"))
    print(result["table"])
    return result


def seed_table(runs: dict) -> str:
    """Markdown: per seed, held-out response loss at step 0, best and final, and final answer
    accuracy, for both losses; the mean of harmonic - cross-entropy over seeds."""
    rows = [
        "| seed | loss | step 0 | best | final | final accuracy |",
        "|---|---|---|---|---|---|",
    ]
    gaps = []
    for seed, run in runs.items():
        for name, curve in run.items():
            c = np.array(curve)
            rows.append(
                f"| {seed} | {name} | {c[0, 1]:.4f} | {c[:, 1].min():.4f} | {c[-1, 1]:.4f} "
                f"| {c[-1, 2]:.3f} |"
            )
        ce, hm = (np.array(run[n]) for n in ("cross-entropy", "harmonic"))
        gaps.append((hm[0, 1] - ce[0, 1], hm[:, 1].min() - ce[:, 1].min(), hm[-1, 1] - ce[-1, 1]))
    mean, spread = np.mean(gaps, 0), np.ptp(np.array(gaps), 0)
    rows.append(
        "| mean | harmonic - CE | "
        + " | ".join(f"{m:+.4f} (spread {s:.4f})" for m, s in zip(mean, spread, strict=True))
        + " | |"
    )
    return "\n".join(rows)


def plot(runs: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for seed, run in runs.items():
        for name, curve in run.items():
            c = np.array(curve)
            style = "-" if name == "harmonic" else "--"
            for ax, col in zip(axes, (1, 2), strict=True):
                ax.plot(c[:, 0], c[:, col], style, label=f"{name} (seed {seed})")
    axes[0].set_ylabel("held-out response-token loss (nats)")
    axes[1].set_ylabel("held-out answer accuracy")
    for ax in axes:
        ax.set_xlabel("fine-tuning step")
    axes[1].legend(fontsize=7)
    fig.suptitle("Fine-tuning a CE-pretrained PaliGemma on CIFAR-10 questions: CE vs harmonic")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
