"""Fine-tune a cross-entropy-pretrained keras-hub GPT-2 with harmonic loss.

The plan this package was built for: supervised fine-tuning of a model whose output matrix becomes the class centers,
with prompt tokens masked out of the loss. Steps, all offline:

1. train a byte-level BPE tokenizer on tiny Shakespeare (its ids are not sorted by frequency);
2. pretrain a small ``GPT2CausalLM`` with cross-entropy on the running text (or load any
   keras-hub preset passed with ``--preset``);
3. from that checkpoint, fine-tune twice for the same steps on prompt/response pairs (one
   speaker's turn, then the next speaker's name as the prompt; the reply as the response):
   with cross-entropy, and as a ``HarmonicCausalLM`` (centers = the token embedding) with the
   sampled harmonic loss and a unigram sampler counted from the data (``ht.label_counts``);
4. report the exact response-token loss of both on held-out pairs along the way (the switch's
   cost at step 0 and its recovery), and greedy generations.

Run: ``python examples/finetune_lm.py`` (about 15 min on 2 cores); ``--quick`` for a smoke run.
``--lora RANK`` fine-tunes LoRA adapters of rank ``RANK`` on the backbone instead of every
weight (``backbone.enable_lora``), for both losses: the tied embedding, so the harmonic
centers, stays the pretrained one (frozen) and the adapters move the hidden states to it, or
with ``--centers trainable`` it is trained beside the adapters. ``--seeds 0,1,2`` fine-tunes
each seed from the one pretrained checkpoint and prints a per-seed table.
Writes ``runs/finetune/result.json`` and ``finetune.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
import zlib

import keras
import numpy as np
import tensorflow as tf

import harmonic_tf as ht

try:
    import keras_hub
    import tokenizers
except ImportError as error:  # pragma: no cover
    raise SystemExit("finetune_lm.py needs keras-hub: pip install -e '.[examples,hub]'") from error

from harmonic_tf.keras.hub import HarmonicCausalLM  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TEXT = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")
END = "<|endoftext|>"
# GPT2Tokenizer pads with id 0: a token of its own, so padding never reads as end-of-text.
PAD = "<|pad|>"


def train_bpe(text: str, vocab_size: int) -> keras_hub.models.GPT2Tokenizer:
    """A GPT-2-style byte-level BPE trained on ``text`` with HuggingFace ``tokenizers``."""
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, END],  # ids 0 and 1
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([text], trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return keras_hub.models.GPT2Tokenizer(vocabulary=model["vocab"], merges=merges)


def _ids(tokenizer, text: str) -> list[int]:
    return np.asarray(tokenizer(text)).tolist()


def _text(detokenized) -> str:
    value = np.asarray(detokenized).item()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def turns(text: str) -> list[tuple[str, str]]:
    """``(speaker, speech)`` blocks of the play text."""
    out = []
    for block in text.split("\n\n"):
        match = re.match(r"^([A-Z][A-Za-z ]+):\n(.+)", block.strip(), re.S)
        if match:
            out.append((match.group(1), match.group(2).strip()))
    return out


def pairs(text: str, tokenizer, seq_len: int, prompt_max: int):
    """Token ids ``[n, seq_len + 1]`` of prompt + response, and a mask of response labels."""
    blocks = turns(text)
    ids, masks = [], []
    end_id = tokenizer.token_to_id(END)
    for (who, said), (next_who, reply) in zip(blocks[:-1], blocks[1:], strict=True):
        prompt = _ids(tokenizer, f"{who}:\n{said}\n\n{next_who}:\n")[-prompt_max:]
        response = _ids(tokenizer, reply) + [end_id]
        seq = (prompt + response)[: seq_len + 1]
        if len(seq) <= len(prompt) + 1:
            continue
        pad = seq_len + 1 - len(seq)
        ids.append(seq + [0] * pad)
        masks.append([0] * len(prompt) + [1] * (len(seq) - len(prompt)) + [0] * pad)
    return np.array(ids, "int32"), np.array(masks, "float32")


def batches(ids, mask, ignore_prompt: bool):
    """keras-hub layout ``({"token_ids", "padding_mask"}, labels, sample_weight)``: labels are
    the next tokens; prompt and padding labels are ``-100`` (harmonic loss) or weight 0."""
    x = {"token_ids": ids[:, :-1], "padding_mask": ids[:, :-1] != 0}
    x["padding_mask"][:, 0] = True
    labels, weight = ids[:, 1:].copy(), mask[:, 1:]
    if ignore_prompt:
        labels[weight == 0] = -100
        return x, labels, None
    return x, labels, weight


def response_loss(lm, x, labels, weight) -> float:
    """Mean exact per-token loss over response tokens: cross-entropy of the dot logits, or the
    exact harmonic loss (``score`` of a HarmonicCausalLM)."""
    total = count = 0.0
    for i in range(0, len(labels), 32):
        sl = slice(i, i + 32)
        target = np.maximum(labels[sl], 0)
        per_token = lm.score(
            x["token_ids"][sl], x["padding_mask"][sl], scoring_mode="loss", target_ids=target
        )
        total += float(np.sum(per_token.numpy() * weight[sl]))
        count += float(weight[sl].sum())
    return total / count


def enable_lora(backbone, rank: int, centers: str = "frozen") -> None:
    """keras-hub's LoRA, with the adapted layers' biases frozen too: ``enable_lora`` leaves
    them trainable and ``save_lora_weights`` does not save them. ``centers="trainable"``
    trains the tied token embedding (the harmonic centers) beside the adapters."""
    backbone.enable_lora(rank)
    for v in backbone.trainable_variables:
        if v.path.endswith("/bias"):
            v.trainable = False
    backbone.token_embedding.trainable = centers == "trainable"


def greedy(lm, tokenizer, prompts, length) -> list[str]:
    """Greedy continuations by keras-hub's own ``generate()``: strings in and out, stopping at
    the end-of-text token (``stop_token_ids="auto"``). The preprocessor is attached for
    generation only: training feeds token ids."""
    lm.preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer)
    room = lm.backbone.max_sequence_length - length - 1  # -1: the start token
    out = []
    for prompt in prompts:
        ids = _ids(tokenizer, prompt)[-room:]
        text = _text(tokenizer.detokenize(ids))
        full = _text(lm.generate(text, max_length=len(ids) + 1 + length))
        out.append(full[len(text) :] if full.startswith(text) else full)
    lm.preprocessor = None
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text", default=DEFAULT_TEXT)
    parser.add_argument("--preset", default=None, help="a keras-hub GPT-2 preset to start from")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--finetune-steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--k", type=int, default=256, help="sampled negatives per step")
    parser.add_argument(
        "--harmonic-loss",
        default="sampled",
        choices=["sampled", "exact"],
        help="the harmonic training loss: sampled (k negatives) or exact over all V classes "
        "(what cross-entropy computes)",
    )
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank on the backbone (0: off)")
    parser.add_argument(
        "--centers",
        default="frozen",
        choices=["frozen", "trainable"],
        help="with --lora: the tied embedding (the harmonic centers) frozen, or trained beside "
        "the adapters (for both losses)",
    )
    _exponent_arguments(parser)
    parser.add_argument(
        "--seeds",
        default="0",
        help="fine-tuning seeds (data order, negatives), comma list: each fine-tunes both "
        "losses from the one pretrained checkpoint",
    )
    parser.add_argument("--out", default="runs/finetune")
    parser.add_argument(
        "--cache",
        default="",
        help="a folder for the pretrained checkpoint: reused by later runs of the same "
        "pretraining arguments (the fine-tuning comparisons share one checkpoint)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (CI)")
    parser.add_argument(
        "--summarize",
        nargs="+",
        default=None,
        metavar="RESULT_JSON",
        help="only print the table of finished runs' result.json files (one row each)",
    )
    return _settled(parser.parse_args(argv))


def _exponent_arguments(parser: argparse.ArgumentParser) -> None:
    """How the harmonic head's exponent is set: calibrated, learned, or swept."""
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="fix the harmonic exponent by HarmonicCausalLM.calibrate_eta on 256 training "
        "pairs before fine-tuning (the default: eta = 2 D)",
    )
    parser.add_argument(
        "--learn-eta",
        action="store_true",
        help="train the exponent during fine-tuning (HarmonicLMHead eta='learned'), starting "
        "from the calibrated one with --calibrate, else from 2 D",
    )
    parser.add_argument("--eta-rate", type=float, default=1.0, help="a learned exponent's rate")
    parser.add_argument(
        "--anneal-eta",
        type=int,
        default=0,
        metavar="STEPS",
        help="move the exponent from its start (calibrated with --calibrate) to 2 D over the "
        "first STEPS fine-tuning steps (0: off)",
    )
    parser.add_argument(
        "--eta-sweep",
        default="",
        help="comma list of exponents as multiples of D: only the step-0 held-out response "
        "loss of a harmonic head on the checkpoint at each (no fine-tuning)",
    )


def _settled(args: argparse.Namespace) -> argparse.Namespace:
    """Lists parsed, and ``--quick``'s tiny sizes."""
    args.seeds = [int(s) for s in str(args.seeds).split(",")]
    args.eta_sweep = [float(f) for f in args.eta_sweep.split(",") if f]
    if args.quick:
        args.vocab, args.seq_len, args.width, args.layers = 512, 48, 32, 1
        args.pretrain_steps, args.finetune_steps, args.eval_every = 20, 20, 10
        args.batch, args.k = 8, 32
    return args


def pretrain(args, text: str):
    """``(tokenizer, causal_lm)``: a keras-hub preset, or a BPE and a small GPT-2 pretrained
    with cross-entropy on the running text."""
    if args.preset:
        base = keras_hub.models.GPT2CausalLM.from_preset(args.preset)
        return base.preprocessor.tokenizer, base
    tokenizer = train_bpe(text, args.vocab)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=args.layers,
        num_heads=4 if args.width >= 64 else 2,
        hidden_dim=args.width,
        intermediate_dim=4 * args.width,
        max_sequence_length=args.seq_len + 1,
        dropout=0.0,
    )
    base = keras_hub.models.GPT2CausalLM(backbone)
    ids = np.asarray(tokenizer(text))
    n = (len(ids) - 1) // args.seq_len
    windows = ids[: n * args.seq_len + 1]
    x = np.lib.stride_tricks.sliding_window_view(windows, args.seq_len + 1)[:: args.seq_len]
    data = (
        tf.data.Dataset.from_tensor_slices(x.astype("int32"))
        .shuffle(len(x), seed=0)
        .repeat()
        .batch(args.batch, drop_remainder=True)
        .map(
            lambda s: (
                {"token_ids": s[:, :-1], "padding_mask": tf.ones_like(s[:, :-1], tf.bool)},
                s[:, 1:],
            )
        )
    )
    base.compile(
        keras.optimizers.Adam(args.lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    cached = _checkpoint_path(args, text)
    if cached and os.path.exists(cached):
        print(f"pretrained checkpoint from {cached}")
        base.backbone.load_weights(cached)
        return tokenizer, base
    print(f"pretraining with cross-entropy: {args.pretrain_steps} steps")
    base.fit(data, steps_per_epoch=args.pretrain_steps, epochs=1, verbose=2)
    if cached:
        os.makedirs(args.cache, exist_ok=True)
        base.backbone.save_weights(cached)
    return tokenizer, base


def _checkpoint_path(args, text: str) -> str:
    """Where ``--cache`` keeps the checkpoint of these pretraining arguments and text ('' when
    off)."""
    if not args.cache:
        return ""
    key = (args.vocab, args.seq_len, args.width, args.layers, args.pretrain_steps, args.batch)
    name = (
        "gpt2_"
        + "_".join(map(str, key))
        + f"_{args.lr:g}_{zlib.crc32(text.encode()):08x}.weights.h5"
    )
    return os.path.join(args.cache, name)


def fine_tuned(name: str, seed: int, backbone, vocab: int, args, train):
    """A compiled ``GPT2CausalLM`` (cross-entropy) or ``HarmonicCausalLM`` (sampled harmonic
    loss) on ``backbone`` (LoRA adapters if ``--lora``), and its training batches."""
    keras.utils.set_random_seed(1 + seed)
    harmonic = name == "harmonic"
    x, labels, weight = batches(*train, ignore_prompt=harmonic)
    if harmonic:
        counts = ht.label_counts(labels, vocab)  # BPE ids: the unigram sampler needs counts
        lm = _harmonic_lm(backbone, seed, x, labels, args)
        if args.lora:
            enable_lora(lm.backbone, args.lora, args.centers)
        sampled = ht.SampledOptions(k=args.k, sampler=ht.UnigramSampler(counts + 1.0))
        loss = ht.HarmonicLoss(
            sampled=sampled if args.harmonic_loss == "sampled" else None,
            seed=seed,
            # With LoRA and frozen centers the head reads the pretrained embedding as is.
            require_trainable_centers=not (args.lora and args.centers == "frozen"),
        )
        lm.compile(keras.optimizers.Adam(args.lr), loss=loss, weighted_metrics=[], sampler="greedy")
        weight = None
    else:
        lm = keras_hub.models.GPT2CausalLM(backbone)
        if args.lora:
            enable_lora(lm.backbone, args.lora, args.centers)
        lm.compile(keras.optimizers.Adam(args.lr), weighted_metrics=[], sampler="greedy")
    data = tf.data.Dataset.from_tensor_slices(
        (x, labels) if weight is None else (x, labels, weight)
    )
    data = data.shuffle(len(labels), seed=seed).repeat().batch(args.batch, drop_remainder=True)
    return lm, data


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.summarize:  # the switch-cost study's table and plot from finished runs, then stop
        table = study_table(args.summarize)
        print(table)
        study_plot(args.summarize, os.path.join(args.out, "switch_study.png"))
        return {"table": table}
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(0)
    text = open(args.text, encoding="utf-8").read()
    if args.quick:
        text = text[:60_000]
    split = int(0.9 * len(text))
    started = time.time()
    tokenizer, base = pretrain(args, text[:split])
    vocab = tokenizer.vocabulary_size()
    checkpoint = base.backbone.get_weights()

    train = pairs(text[:split], tokenizer, args.seq_len, args.seq_len // 2)
    test_ids, test_mask = pairs(text[split:], tokenizer, args.seq_len, args.seq_len // 2)
    test_ids, test_mask = test_ids[:256], test_mask[:256]
    print(f"{len(train[0])} train / {len(test_ids)} held-out prompt/response pairs, V = {vocab}")
    tx, tlabels, _ = batches(test_ids, test_mask, ignore_prompt=True)
    tweight = (tlabels != -100).astype("float32")
    prompts = [
        f"{a}:\n{s}\n\n{b}:\n"
        for (a, s), (b, _) in zip(turns(text[split:])[:3], turns(text[split:])[1:4], strict=True)
    ]

    def fresh_backbone():
        clone = keras_hub.models.GPT2Backbone.from_config(base.backbone.get_config())
        clone.set_weights(checkpoint)
        return clone

    if args.eta_sweep:  # the switch's cost at step 0 against the exponent, then stop
        result = {"args": vars(args), "eta_sweep": eta_sweep(base, args, tx, tlabels, tweight)}
        with open(os.path.join(args.out, "eta_sweep.json"), "w") as f:
            json.dump(result, f, indent=1)
        return result
    held_out = (tx, tlabels, tweight)
    runs = {
        seed: fine_tune_both(seed, fresh_backbone, vocab, args, train, held_out, tokenizer, prompts)
        for seed in args.seeds
    }
    first = runs[args.seeds[0]]
    result = {"args": vars(args), "vocab": vocab, "pairs": [len(train[0]), len(test_ids)]}
    result.update(runs=runs, curves=first["curves"], prompts=prompts)
    result["switch_cost_at_step_0"] = (
        first["curves"]["harmonic"][0][1] - first["curves"]["cross-entropy"][0][1]
    )
    result.update(generations=first["generations"], table=seed_table(runs))
    result["seconds"] = round(time.time() - started, 1)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(first["curves"], os.path.join(args.out, "finetune.png"))
    print(result["table"])
    return result


def _harmonic_lm(backbone, seed: int, x, labels, args):
    """A ``HarmonicCausalLM`` on ``backbone``: its exponent calibrated on 256 training pairs
    (``--calibrate``), and a weight (``eta="learned"``) that training or a schedule moves
    from there (``--learn-eta``, ``--anneal-eta``)."""
    learned = bool(args.learn_eta or args.anneal_eta)
    rate = args.eta_rate if learned else 1.0
    lm = HarmonicCausalLM(backbone, eta="learned" if learned else None, eta_rate=rate)
    if args.calibrate:  # the exponent at which the pretrained centers read it best
        eta = lm.calibrate_eta({k: v[:256] for k, v in x.items()}, labels[:256])
        print(f"seed {seed} harmonic: calibrated eta = {eta:.1f}")
    return lm


def fine_tune_both(seed, fresh_backbone, vocab, args, train, held_out, tokenizer, prompts):
    """One seed: the held-out response-loss curves and greedy generations of fine-tuning the
    checkpoint with cross-entropy and with harmonic loss."""
    curves, generations = {}, {}
    for name in ("cross-entropy", "harmonic"):
        lm, data = fine_tuned(name, seed, fresh_backbone(), vocab, args, train)
        callbacks = []
        if name == "harmonic" and args.anneal_eta:  # to the default 2 D
            callbacks.append(ht.ExponentAnneal(lm.harmonic_head, steps=args.anneal_eta))
        curve = [(0, response_loss(lm, *held_out))]
        print(f"seed {seed} {name}: step 0 held-out response loss {curve[0][1]:.4f}")
        for step in range(args.eval_every, args.finetune_steps + 1, args.eval_every):
            lm.fit(data, steps_per_epoch=args.eval_every, epochs=1, verbose=0, callbacks=callbacks)
            curve.append((step, response_loss(lm, *held_out)))
            print(f"seed {seed} {name}: step {step} held-out response loss {curve[-1][1]:.4f}")
        curves[name] = curve
        generations[name] = greedy(lm, tokenizer, prompts, 24)
        if name == "harmonic":
            final_eta = float(lm.harmonic_head.resolved_eta())
            print(f"seed {seed} harmonic: eta after fine-tuning {final_eta:.1f}")
    return {"curves": curves, "generations": generations, "final_eta": final_eta}


def eta_sweep(base, args, x, labels, weight) -> dict:
    """Held-out response loss of the cross-entropy checkpoint itself and of a harmonic head on
    it (centers = its embedding, no training) at each exponent ``factor * D``."""
    out = {"cross-entropy": response_loss(base, x, labels, weight)}
    for factor in args.eta_sweep:
        lm = HarmonicCausalLM(base.backbone, eta=factor * args.width)
        out[f"{factor:g} D"] = response_loss(lm, x, labels, weight)
        gap = out[f"{factor:g} D"] - out["cross-entropy"]
        print(
            f"eta = {factor:g} D: {out[f'{factor:g} D']:.4f} (CE {out['cross-entropy']:.4f}, {gap:+.4f})"
        )
    return out


def seed_table(runs: dict) -> str:
    """Markdown: per seed, the held-out response loss of both losses after the last step and at
    their best evaluation, the difference harmonic - cross-entropy, and the mean over seeds."""
    rows = [
        "| seed | CE final | harmonic final | harmonic - CE | CE best | harmonic best |",
        "|---|---|---|---|---|---|",
    ]
    cols = []
    for seed, run in runs.items():
        ce, hm = (np.array(run["curves"][n])[:, 1] for n in ("cross-entropy", "harmonic"))
        cols.append((ce[-1], hm[-1], hm[-1] - ce[-1], ce.min(), hm.min()))
        rows.append(
            f"| {seed} | "
            + " | ".join(f"{v:+.3f}" if i == 2 else f"{v:.3f}" for i, v in enumerate(cols[-1]))
            + " |"
        )
    mean = np.mean(cols, axis=0)
    spread = np.ptp(np.array(cols)[:, 2])
    cells = [
        f"**{v:+.3f}** (spread {spread:.3f})" if i == 2 else f"{v:.3f}" for i, v in enumerate(mean)
    ]
    rows.append("| mean | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _eta_cell(args: dict) -> str:
    """How a run's exponent was set (runs before --learn-eta: fixed)."""
    start = "calibrated" if args["calibrate"] else "2 D"
    if args.get("anneal_eta"):
        return f"{start}, to 2 D over {args['anneal_eta']} steps"
    if args.get("learn_eta"):
        return f"{start}, then learned (rate {args['eta_rate']:g})"
    return start


def _seed_gaps(path: str) -> tuple[dict, np.ndarray]:
    """A fine-tuning command's arguments and, per seed, harmonic - cross-entropy at step 0,
    after the last step and at each run's best evaluation (``[seeds, 3]``)."""
    with open(path) as f:
        result = json.load(f)
    gaps = []
    for run in result["runs"].values():
        ce, hm = (np.array(run["curves"][n])[:, 1] for n in ("cross-entropy", "harmonic"))
        gaps.append((hm[0] - ce[0], hm[-1] - ce[-1], hm.min() - ce.min()))
    return result["args"], np.array(gaps)


def study_table(paths: list[str]) -> str:
    """Markdown: one row per ``result.json`` of a fine-tuning command (its recipe), the mean
    over seeds of harmonic - cross-entropy at step 0, after the last step and at each run's
    best evaluation, with the spread over seeds."""
    rows = [
        "| recipe | eta | harmonic loss | seeds | step 0 | final (spread) | best (spread) |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        a, gaps = _seed_gaps(path)
        recipe = f"LoRA {a['lora']}, centers {a['centers']}" if a["lora"] else "full"
        loss = a.get("harmonic_loss", "sampled")  # runs before --harmonic-loss: sampled
        loss += f" (k={a['k']})" if loss == "sampled" else ""
        start, final, best = gaps.mean(0)
        rows.append(
            f"| {recipe} | {_eta_cell(a)} | {loss} | {len(gaps)} | "
            f"{start:+.3f} | **{final:+.3f}** ({np.ptp(gaps[:, 1]):.3f}) | "
            f"{best:+.3f} ({np.ptp(gaps[:, 2]):.3f}) |"
        )
    return "\n".join(rows)


def study_plot(paths: list[str], path: str) -> None:
    """Per recipe, harmonic - cross-entropy at step 0 and after the last step (mean over seeds,
    the seeds as dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(paths)))
    for row, result_path in enumerate(paths):
        a, gaps = _seed_gaps(result_path)
        for col, (mark, label) in enumerate((("o", "step 0"), ("s", "final"))):
            ax.scatter(gaps[:, col], [row] * len(gaps), marker=mark, color=f"C{col}", alpha=0.5,
                       label=label if row == 0 else None)  # fmt: skip
        name = f"LoRA, {a['centers']}" if a["lora"] else "full"
        ax.annotate(f"{name}; {_eta_cell(a)}; {a.get('harmonic_loss', 'sampled')}", (0, row),
                    xytext=(4, 4), textcoords="offset points", fontsize=7)  # fmt: skip
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_yticks([])
    ax.set_xlabel("harmonic - cross-entropy, held-out response loss (nats)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        steps, losses = zip(*curve, strict=True)
        ax.plot(steps, losses, marker="o", label=name)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("held-out response-token loss (exact, nats)")
    ax.set_title("Fine-tuning a CE-pretrained GPT-2: CE vs harmonic head")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
