"""Independent references: float64 NumPy HarMax and float64 TensorFlow autodiff of the plain
sampled formula. Neither shares code with the package's math."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def harmax_numpy(x, w, y, eta, eps=1e-9, ignore_index=-100, reduction="mean"):
    """Paper's HarMax cross-entropy in float64: p_i = (d_i^2 + eps)^(-eta/2) / sum_j (...)."""
    x = np.asarray(x, np.float64).reshape(-1, w.shape[1])
    y = np.asarray(y).reshape(-1)
    w = np.asarray(w, np.float64)
    diff = x[:, None, :] - w[None, :, :]
    d2 = np.einsum("nvd,nvd->nv", diff, diff) + eps
    log_u = -(eta / 2) * np.log(d2)
    m = log_u.max(1, keepdims=True)
    log_p = log_u - m - np.log(np.exp(log_u - m).sum(1, keepdims=True))
    keep = y != ignore_index
    ys = np.where(keep, y, 0)
    losses = np.where(keep, -log_p[np.arange(len(y)), ys], 0.0)
    p = np.exp(log_p)
    # dL/dlog_u = p - onehot; dlog_u/dx = -eta (x - w_i) / d2_i; dlog_u/dw_i = +eta (x - w_i) / d2_i
    coef = (p - np.eye(w.shape[0])[ys]) * keep[:, None]
    gx = np.einsum("nv,nvd->nd", coef * (-eta / d2), diff)
    gw = np.einsum("nv,nvd->vd", coef * (eta / d2), diff)
    if reduction == "none":
        return losses, gx, gw
    if reduction == "sum":
        return losses.sum(), gx, gw
    n = max(keep.sum(), 1)
    return losses.sum() / n, gx / n, gw / n


def log_q_numpy(sampler: str, vocab_size: int, counts=None) -> np.ndarray:
    j = np.arange(vocab_size, dtype=np.float64)
    if sampler == "uniform":
        return np.full(vocab_size, -np.log(vocab_size))
    if sampler == "log_uniform":
        return np.log(np.log((j + 2) / (j + 1)) / np.log(vocab_size + 1))
    q = np.asarray(counts, np.float64)
    q = q / q.sum()
    return np.log(np.maximum(q, q[q > 0].min()))


def sampled_reference(
    x,
    w,
    y,
    eta,
    per_example_ids=None,
    shared_ids=None,
    shared_valid=None,
    log_q=None,
    correction="negatives",
    remove_hits=True,
    eps=1e-9,
    ignore_index=-100,
    reduction="mean",
):
    """float64 TF autodiff of the plain sampled loss over explicit candidates.

    Each token's candidates: its label, its per-example ids, the shared ids (columns with
    shared_valid False are dropped). logQ_j = log(q_j * draws_n), draws_n = k_pe / (1 - q_y) + K.
    Returns (loss, dL/dx, dL/dw) as float64 numpy."""
    x = tf.constant(np.asarray(x, np.float64).reshape(-1, w.shape[1]))
    w = tf.constant(np.asarray(w, np.float64))
    y = np.asarray(y).reshape(-1)
    keep_tok = y != ignore_index
    ys = np.where(keep_tok, y, 0)
    n = len(ys)
    cols, masks = [], []
    if per_example_ids is not None:
        cols.append(np.asarray(per_example_ids))
        masks.append(np.ones_like(cols[-1], bool))
    if shared_ids is not None:
        ids = np.asarray(shared_ids)
        valid = np.ones(len(ids), bool) if shared_valid is None else np.asarray(shared_valid)
        cols.append(np.tile(ids, (n, 1)))
        masks.append(np.tile(valid, (n, 1)))
    cand = np.concatenate(cols, 1)
    mask = np.concatenate(masks, 1)
    if remove_hits:
        mask &= cand != ys[:, None]
    if log_q is not None and correction != "none":
        k_pe = 0 if per_example_ids is None else np.asarray(per_example_ids).shape[1]
        k_sh = 0 if shared_ids is None else int(masks[-1][0].sum())
        draws = k_pe / (1 - np.exp(log_q[ys])) + k_sh
        lq_neg = log_q[cand] + np.log(draws)[:, None]
        lq_true = log_q[ys] + np.log(draws) if correction == "all" else np.zeros(n)
    else:
        lq_neg, lq_true = np.zeros(cand.shape), np.zeros(n)
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        d2_true = tf.reduce_sum(tf.square(x - tf.gather(w, ys)), -1)
        d2_neg = tf.reduce_sum(tf.square(x[:, None, :] - tf.gather(w, cand)), -1)
        z_true = -(eta / 2) * tf.math.log(d2_true + eps) - lq_true
        z_neg = -(eta / 2) * tf.math.log(d2_neg + eps) - lq_neg
        z_neg = tf.where(mask, z_neg, tf.constant(-np.inf, tf.float64))
        z = tf.concat([z_true[:, None], z_neg], 1)
        losses = tf.reduce_logsumexp(z, 1) - z_true
        losses = tf.where(keep_tok, losses, tf.zeros_like(losses))
        if reduction == "none":
            out = losses
            target = tf.reduce_sum(losses)
        elif reduction == "sum":
            out = target = tf.reduce_sum(losses)
        else:
            out = target = tf.reduce_sum(losses) / max(keep_tok.sum(), 1)
    gx, gw = tape.gradient(target, [x, w])
    return out.numpy(), gx.numpy(), tf.convert_to_tensor(gw).numpy()


def maybe_jit(fn, mode: str):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "xla"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def shared_data_path(name: str) -> str:
    path = os.path.abspath(os.path.join(SHARED_DATA, name))
    if not os.path.exists(path):
        pytest.skip(f"shared data {name!r} not found at {path} (CI always has ../shared/data)")
    return path
