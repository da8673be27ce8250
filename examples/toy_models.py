"""The paper's toy MLP and transformer, many seeds in one model: every weight carries a leading
seed axis ``[S, ...]`` and every matmul is batched over it, so 20 seeds train in one compiled
step at the cost of about five single runs. A seed's draws (initial weights, dropout) come
from its own seed, never from its place in the stack, so a seed trains the same alone or
stacked (tested).

Initial weights follow PyTorch's defaults as the released code gets them (``FACTS.md`` 1d):
Linear weights and biases uniform(+-1/sqrt(fan_in)) (so the MLPs' tied table is +-0.25),
``nn.Embedding`` normal(0, 1/sqrt(D)), positions normal(0, 1), attention in-projection
Xavier-uniform with zero biases, LayerNorm (1, 0).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

import harmonic_tf as ht

EMBED, HIDDEN, HEADS, LAYERS = 16, 100, 2, 2


class Config(NamedTuple):
    model: str  # "mlp" | "transformer"
    head: str  # "standard" | "harmonic"
    vocab_size: int
    inputs: int  # tokens per example
    eta: float = 2.0  # the released exponent 1 on squared distances
    eps: float = 1e-4  # added to squared distances (DistLayer's eps)
    table_scale: float = 1.0  # multiplies the initial embedding / centers (ablation)
    dropout: float = 0.1  # transformer only (PyTorch's TransformerEncoderLayer default)
    mlp_penalty: bool = False  # the table penalty on the MLPs too (the released code: inert)
    distance: str = "euclidean"  # the harmonic head's distance ("cosine": an ablation)


def _uniform(seed: int, index: int, shape, bound: float) -> np.ndarray:
    return np.random.default_rng([seed, index]).uniform(-bound, bound, shape)


def _normal(seed: int, index: int, shape, std: float) -> np.ndarray:
    return np.random.default_rng([seed, index]).normal(0.0, std, shape)


def _linear(seed, index, fan_in, fan_out) -> dict:
    bound = 1.0 / np.sqrt(fan_in)
    return {
        "w": _uniform(seed, index, (fan_in, fan_out), bound),
        "b": _uniform(seed, index + 1, (fan_out,), bound),
    }


def _mlp_weights(cfg: Config, seed: int) -> dict:
    v, d = cfg.vocab_size, EMBED
    weights = {
        "table": cfg.table_scale * _uniform(seed, 0, (v, d), 1.0 / np.sqrt(d)),
        **{f"in_{k}": a for k, a in _linear(seed, 1, cfg.inputs * d, HIDDEN).items()},
        **{f"out_{k}": a for k, a in _linear(seed, 3, HIDDEN, d).items()},
    }
    if cfg.head == "standard":  # the tied Linear's own bias
        weights["bias"] = _uniform(seed, 5, (v,), 1.0 / np.sqrt(d))
    return weights


def _encoder_layer(seed: int, index: int) -> dict:
    d, ff = EMBED, 4 * EMBED
    xavier = np.sqrt(6.0 / (d + 3 * d))
    return {
        "qkv_w": _uniform(seed, index, (d, 3 * d), xavier),
        "qkv_b": np.zeros(3 * d),
        "proj_w": _uniform(seed, index + 1, (d, d), 1.0 / np.sqrt(d)),
        "proj_b": np.zeros(d),
        **{f"ff1_{k}": a for k, a in _linear(seed, index + 2, d, ff).items()},
        **{f"ff2_{k}": a for k, a in _linear(seed, index + 4, ff, d).items()},
        "ln1_g": np.ones(d),
        "ln1_b": np.zeros(d),
        "ln2_g": np.ones(d),
        "ln2_b": np.zeros(d),
    }


def _transformer_weights(cfg: Config, seed: int) -> dict:
    v, d = cfg.vocab_size, EMBED
    weights = {
        "table": cfg.table_scale * _normal(seed, 0, (v, d), 1.0 / np.sqrt(d)),
        "positions": _normal(seed, 1, (cfg.inputs, d), 1.0),
    }
    for layer in range(LAYERS):
        for k, a in _encoder_layer(seed, 10 * (layer + 1)).items():
            weights[f"l{layer}_{k}"] = a
    if cfg.head == "harmonic":  # an untied DistLayer(d, V): Linear's init
        weights["centers"] = cfg.table_scale * _uniform(seed, 2, (v, d), 1.0 / np.sqrt(d))
    return weights


def initial_weights(cfg: Config, seeds: list[int]) -> dict[str, np.ndarray]:
    """``{name: [S, ...] float32}``: each seed's PyTorch-default initial weights, stacked."""
    make = _mlp_weights if cfg.model == "mlp" else _transformer_weights
    per_seed = [make(cfg, s) for s in seeds]
    return {k: np.stack([w[k] for w in per_seed]).astype("float32") for k in per_seed[0]}


def centers(cfg: Config, w: dict) -> tf.Tensor:
    """``[S, V, D]``: the harmonic head's centers (the MLP's tied table, the transformer's own)."""
    return w["table"] if cfg.model == "mlp" else w["centers"]


def _dense(x, w, b):
    """``[S, ..., I] @ [S, I, O] + [S, O]``: one batched matmul over the seed axis."""
    flat = tf.reshape(x, [x.shape[0], -1, x.shape[-1]])
    y = tf.matmul(flat, w) + b[:, None]
    return tf.reshape(y, x.shape[:-1] + [w.shape[-1]])


def mlp_hidden(cfg: Config, w: dict, tokens: tf.Tensor) -> tf.Tensor:
    """``tokens [S, B, T] -> [S, B, D]``: concatenated embeddings -> 100 -> SiLU -> D."""
    e = tf.gather(w["table"], tokens, batch_dims=1)
    e = tf.reshape(e, [tokens.shape[0], -1, cfg.inputs * EMBED])
    return _dense(tf.nn.silu(_dense(e, w["in_w"], w["in_b"])), w["out_w"], w["out_b"])


def _mix(x: tf.Tensor) -> tf.Tensor:
    """MurmurHash3's 32-bit finalizer: a bijection on uint32 that scatters nearby inputs."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16)) * tf.constant(
        0x85EBCA6B, tf.uint32
    )
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 13)) * tf.constant(
        0xC2B2AE35, tf.uint32
    )
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


class Dropout:
    """PyTorch-style dropout on ``[S, ...]`` tensors. Each seed's mask is a counter-based hash of
    (its seed, a per-call ``key``, the site, the element), so it does not depend on the stack,
    and all seeds' masks come from one elementwise op (a stateless RNG call per seed was half
    of a transformer step)."""

    def __init__(self, seeds: list[int], key: tf.Tensor, rate: float):
        self.seeds = tf.constant(seeds, tf.uint32)
        self.key, self.rate, self.site = tf.cast(key, tf.uint32), rate, 0

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        if self.rate == 0.0:
            return x
        self.site += 1
        stream = _mix(_mix(_mix(self.seeds) ^ self.key) + tf.constant(self.site, tf.uint32))
        count = int(np.prod(x.shape[1:]))
        element = tf.cast(tf.range(count), tf.uint32) * tf.constant(0x9E3779B1, tf.uint32)
        bits = _mix(element[None, :] ^ stream[:, None])
        u = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / 2**24)
        return tf.where(tf.reshape(u, x.shape) >= self.rate, x / (1.0 - self.rate), 0.0)


def _layer_norm(x, g, b):
    mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
    shape = [g.shape[0]] + [1] * (x.shape.rank - 2) + [-1]
    return (x - mean) * tf.math.rsqrt(var + 1e-5) * tf.reshape(g, shape) + tf.reshape(b, shape)


def _attention(x, w, p, dropout):
    """Two-head self-attention. With 2-3 tokens the products are broadcasts and sums, not
    batched matmuls (XLA:CPU ran thousands of 3 x 8 matmuls one by one)."""
    s, b, t, d = x.shape
    q, k, v = tf.split(_dense(x, w[p + "qkv_w"], w[p + "qkv_b"]), 3, axis=-1)
    q, k, v = (tf.reshape(a, [s, b, t, HEADS, d // HEADS]) for a in (q, k, v))
    scores = tf.reduce_sum(q[:, :, :, None] * k[:, :, None], axis=-1) / np.sqrt(d // HEADS)
    weights = dropout(tf.nn.softmax(scores, axis=3))  # [S, B, query, key, head]
    ctx = tf.reduce_sum(weights[..., None] * v[:, :, None], axis=3)
    return _dense(tf.reshape(ctx, [s, b, t, d]), w[p + "proj_w"], w[p + "proj_b"])


def _encoder(x, w, p, dropout):
    """``nn.TransformerEncoderLayer``: post-LayerNorm, ReLU feed-forward of width 4 D."""
    x = _layer_norm(x + dropout(_attention(x, w, p, dropout)), w[p + "ln1_g"], w[p + "ln1_b"])
    ff = _dense(
        dropout(tf.nn.relu(_dense(x, w[p + "ff1_w"], w[p + "ff1_b"]))),
        w[p + "ff2_w"],
        w[p + "ff2_b"],
    )
    return _layer_norm(x + dropout(ff), w[p + "ln2_g"], w[p + "ln2_b"])


def transformer_hidden(cfg: Config, w: dict, tokens: tf.Tensor, dropout: Dropout) -> tf.Tensor:
    """``tokens [S, B, T] -> [S, B, D]``: embeddings plus learned positions, two encoder layers
    each wrapped in an extra residual, the last position read (no final LayerNorm)."""
    x = tf.gather(w["table"], tokens, batch_dims=1) + w["positions"][:, None]
    for layer in range(LAYERS):
        x = _encoder(x, w, f"l{layer}_", dropout) + x
    return x[:, :, -1]


def hidden(cfg: Config, w: dict, tokens: tf.Tensor, dropout: Dropout) -> tf.Tensor:
    if cfg.model == "mlp":
        return mlp_hidden(cfg, w, tokens)
    return transformer_hidden(cfg, w, tokens, dropout)


def logits(cfg: Config, w: dict, h: tf.Tensor) -> tf.Tensor:
    """``[S, B, V]``: the harmonic head's ``-(eta/2) log(d^2 + eps)``, or the tied dot product
    (plus the tied Linear's bias in the MLP)."""
    if cfg.head == "harmonic":
        c = centers(cfg, w)
        return tf.stack(
            [
                ht.harmonic_logits(h[i], c[i], cfg.eta, cfg.eps, cfg.distance)
                for i in range(h.shape[0])
            ]
        )
    z = tf.matmul(h, w["table"], transpose_b=True)
    return z + w["bias"][:, None] if "bias" in w else z


def seed_losses(cfg: Config, w: dict, h: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """``[S]``: each seed's mean loss over its batch (labels < 0 are padding)."""
    if cfg.head == "harmonic":  # the package's exact loss, one seed at a time
        c = centers(cfg, w)
        return tf.stack(
            [
                ht.harmonic_loss(
                    h[i],
                    c[i],
                    labels[i],
                    cfg.eta,
                    cfg.eps,
                    ignore_index=-100,
                    distance=cfg.distance,
                )  # fmt: skip
                for i in range(h.shape[0])
            ]
        )
    valid = tf.cast(labels >= 0, tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(labels, 0), logits(cfg, w, h))
    return tf.reduce_sum(ce * valid, axis=1) / tf.reduce_sum(valid, axis=1)


def table_penalty(cfg: Config, w: dict) -> tf.Tensor:
    """``[S]``: the released ``0.01 * mean_columns(sqrt(mean_rows(E^2)))``. Zero for the MLPs:
    there the released code computes it on ``embedding.data`` (no gradient), so it never acts."""
    if cfg.model == "mlp" and not cfg.mlp_penalty:
        return tf.zeros([w["table"].shape[0]])
    return 0.01 * tf.reduce_mean(tf.sqrt(tf.reduce_mean(tf.square(w["table"]), axis=1)), axis=1)
