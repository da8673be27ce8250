"""The shortest complete use of harmonic-tf: a small transformer LM trained with the sampled
harmonic loss through ``compile``/``fit``, evaluated with the exact loss, and one greedy
continuation decoded from the harmonic distribution.

    python examples/minimal_lm.py              # embedded corpus (Python's docs), ~1 minute
    python examples/minimal_lm.py --steps 20   # a smoke run
"""

import argparse
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import harmonic_tf as ht  # noqa: E402

from small_lm import build_lm, build_vocabulary, embedded_corpus, encode  # noqa: E402


def windows(ids, seq_len, batch, rng):
    """Endless batches of random ``seq_len`` windows, labels shifted by one token."""
    while True:
        starts = rng.integers(0, len(ids) - seq_len - 1, batch)
        w = np.stack([ids[s : s + seq_len + 1] for s in starts])
        yield w[:, :-1], w[:, 1:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=400)
    args = p.parse_args(argv)
    vocab_size, seq_len, batch = 2000, 64, 32

    # Data: word ids sorted by frequency; 90% for training, the rest to validate.
    text = embedded_corpus()
    cut = int(0.9 * len(text))
    vectorizer = build_vocabulary(text[:cut], vocab_size)
    train_ids, val_ids = encode(vectorizer, text[:cut]), encode(vectorizer, text[cut:])

    # Model: the token embedding doubles as the harmonic head's class centers.
    model, head = build_lm(vocab_size, seq_len, "harmonic", seed=0)

    # Loss: sampled in training (unigram draws from the data's counts), exact in evaluate.
    estimator = ht.SampledOptions(sampler=ht.label_counts(train_ids, vocab_size))
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=ht.HarmonicLoss(sampled=estimator, seed=0),
        jit_compile=True,
    )
    rng = np.random.default_rng(0)
    model.fit(windows(train_ids, seq_len, batch, rng), steps_per_epoch=args.steps, epochs=1)

    n = (len(val_ids) - 1) // seq_len
    x_val = val_ids[: n * seq_len].reshape(n, seq_len)
    y_val = val_ids[1 : n * seq_len + 1].reshape(n, seq_len)
    val_loss = model.evaluate(x_val, y_val, batch_size=batch, verbose=0)
    print(f"exact validation loss {val_loss:.3f} (perplexity {math.exp(val_loss):.1f})")

    # Generation: greedy, from the harmonic logits of the last position.
    prompt = list(val_ids[:8])
    for _ in range(16):
        window = np.zeros((1, seq_len), np.int32)
        window[0, : len(prompt[-seq_len:])] = prompt[-seq_len:]
        logits = model(tf.constant(window), training=False)[0, min(len(prompt), seq_len) - 1]
        prompt.append(int(tf.argmax(logits[2:])) + 2)  # never padding (0) or unknown (1)
    words = vectorizer.get_vocabulary()
    print(" ".join(words[i] for i in prompt[:8]), ">>>", " ".join(words[i] for i in prompt[8:]))
    return val_loss


if __name__ == "__main__":
    main()
