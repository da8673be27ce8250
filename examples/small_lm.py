"""The small decoder-only transformer LM and its data pipeline, shared by the examples and the
benchmarks: corpora that ship with Python, a word-level ``TextVectorization`` vocabulary, random
training windows, and a pre-LayerNorm transformer whose token embedding is tied to its head
(a dot product for cross-entropy, a :class:`harmonic_tf.HarmonicLMHead` for harmonic loss)."""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

import harmonic_tf as ht

# "words": words (with inner apostrophes) and single non-space characters, lower-cased.
# "code": case-kept identifiers/numbers ([A-Za-z0-9_]+) and single other characters.
TOKEN_PATTERNS = {"words": r"[a-z]+(?:'[a-z]+)*|[^\sa-z]", "code": r"[A-Za-z0-9_]+|[^\sA-Za-z0-9_]"}


def embedded_corpus() -> str:
    """The Python documentation topics that ship with every CPython (``pydoc_data``)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def stdlib_corpus() -> str:
    """Every ``.py`` file of this Python's standard library (tests included), in path order:
    about 7M code tokens and 118k distinct identifiers, on every machine."""
    import glob
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True))
    files = [f for f in files if "site-packages" not in os.path.relpath(f, root)]
    texts = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            texts.append(fh.read())
    return "\n".join(texts)


def tokenize(text: str, tokens: str = "words") -> list[str]:
    import re

    return re.findall(TOKEN_PATTERNS[tokens], text.lower() if tokens == "words" else text)


def _standardize_words(x):
    # Space out every character that is not a letter, apostrophe or space, so that the
    # whitespace split gives the "words" pattern's tokens.
    x = tf.strings.lower(x)
    return tf.strings.regex_replace(x, r"([^\sa-z'])", r" \1 ")


def _standardize_code(x):
    return tf.strings.regex_replace(x, r"([^\sA-Za-z0-9_])", r" \1 ")


def build_vocabulary(
    train_text: str, vocab_size: int, tokens: str = "words"
) -> keras.layers.TextVectorization:
    """Word-level ``TextVectorization``: id 0 padding, 1 out-of-vocabulary, then tokens by
    decreasing training frequency (what the log-uniform sampler assumes)."""
    standardize = _standardize_words if tokens == "words" else _standardize_code
    vectorizer = keras.layers.TextVectorization(
        max_tokens=vocab_size, standardize=standardize, split="whitespace", output_mode="int"
    )
    lines = [line for line in train_text.split("\n") if line.strip()]
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(lines).batch(512))
    return vectorizer


def encode(vectorizer, text: str) -> np.ndarray:
    """All token ids of ``text`` in order (lines vectorised in batches; padding dropped)."""
    lines = [line for line in text.split("\n") if line.strip()]
    out = []
    for start in range(0, len(lines), 2048):
        batch = vectorizer(tf.constant(lines[start : start + 2048])).numpy()
        out.extend(row[row > 0] for row in batch)
    return np.concatenate(out).astype(np.int32)


@keras.saving.register_keras_serializable(package="examples")
class AddPositions(keras.layers.Layer):
    """Adds a learned ``[seq_len, D]`` position embedding."""

    def build(self, input_shape):
        self.positions = self.add_weight(
            name="positions", shape=tuple(input_shape[1:]), initializer="random_normal"
        )

    def call(self, x):
        return x + self.positions


@keras.saving.register_keras_serializable(package="examples")
class Dropout(keras.layers.Dropout):
    """``keras.layers.Dropout`` drawing its mask with the threefry generator.

    Keras's dropout uses TensorFlow's ``"auto_select"`` generator, which XLA on the CPU expands
    into a Philox loop that took 23 of the body's 66 ms per step here; threefry takes about 8.
    Same Bernoulli(1 - rate) mask and 1 / (1 - rate) scaling; only the random stream differs."""

    def __init__(self, rate, **kwargs):
        if kwargs.get("noise_shape") is not None:
            raise ValueError("This Dropout draws one mask entry per input entry: no `noise_shape`.")
        super().__init__(rate, **kwargs)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        shape = tf.shape(inputs)
        # Keras keeps the seed state as int64; the stateless ops want int32 under XLA.
        seed = tf.cast(tf.math.floormod(self.seed_generator.next(), tf.int32.max - 1), tf.int32)
        u = tf.random.stateless_uniform(shape, seed=seed, alg="threefry", dtype=inputs.dtype)
        return tf.where(u >= self.rate, inputs / (1.0 - self.rate), tf.zeros_like(inputs))


@keras.saving.register_keras_serializable(package="examples")
class MultiHeadAttention(keras.layers.MultiHeadAttention):
    """``keras.layers.MultiHeadAttention`` whose attention dropout is :class:`Dropout`."""

    def _build_attention(self, rank):
        super()._build_attention(rank)
        self._dropout_layer = Dropout(self._dropout, dtype=self.dtype_policy, seed=self.seed)


def build_lm(
    vocab_size: int,
    seq_len: int,
    head: str,
    d_model: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    mlp_dim: int = 512,
    dropout: float = 0.1,
    seed: int = 0,
    eta: float | str | None = None,
    eta_init: float | None = None,
    eta_rate: float = 1.0,
    distance: str = "euclidean",
):
    """Pre-LayerNorm decoder-only transformer; the output head is tied to the token embedding:
    a dot product (``head="dot"``) or a :class:`HarmonicLMHead` (``head="harmonic"``, exponent
    ``eta``, ``distance``). The same ``seed`` gives the same initial weights for both heads."""
    keras.utils.set_random_seed(seed)
    tokens = keras.Input([seq_len], dtype="int32", name="tokens")
    embedding = keras.layers.ReversibleEmbedding(vocab_size, d_model, name="token_embedding")
    h = AddPositions(name="positions")(embedding(tokens))
    h = Dropout(dropout)(h)
    for i in range(num_layers):
        x = keras.layers.LayerNormalization(name=f"block{i}_ln1")(h)
        x = MultiHeadAttention(
            num_heads, d_model // num_heads, dropout=dropout, name=f"block{i}_attention"
        )(x, x, use_causal_mask=True)
        h = h + Dropout(dropout)(x)
        x = keras.layers.LayerNormalization(name=f"block{i}_ln2")(h)
        x = keras.layers.Dense(mlp_dim, activation="gelu", name=f"block{i}_mlp_in")(x)
        x = keras.layers.Dense(d_model, name=f"block{i}_mlp_out")(x)
        h = h + Dropout(dropout)(x)
    h = keras.layers.LayerNormalization(name="final_ln")(h)
    if head == "dot":
        return keras.Model(tokens, embedding(h, reverse=True), name="lm_dot"), None
    lm_head = ht.HarmonicLMHead(
        tied_embedding=embedding, eta=eta, eta_init=eta_init, eta_rate=eta_rate,
        distance=distance, name="lm_head",
    )  # fmt: skip
    return ht.HarmonicModel(tokens, lm_head(h), name="lm_harmonic"), lm_head


def train_dataset(ids: np.ndarray, seq_len: int, batch: int, seed: int) -> tf.data.Dataset:
    """Random windows of ``seq_len + 1`` tokens, labels shifted by one; same order every run."""
    ids = tf.constant(ids)
    span = int(ids.shape[0]) - seq_len - 1
    offsets = tf.range(seq_len + 1, dtype=tf.int64)

    def windows(starts):
        w = tf.gather(ids, starts[:, None] % span + offsets)
        return w[:, :-1], w[:, 1:]

    return tf.data.Dataset.random(seed=seed).batch(batch).map(windows).prefetch(4)


def val_dataset(ids: np.ndarray, seq_len: int, batch: int, max_tokens: int) -> tf.data.Dataset:
    n = min((len(ids) - 1) // seq_len, max(1, max_tokens // seq_len))
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1 : n * seq_len + 1].reshape(n, seq_len)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
