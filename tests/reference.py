"""Independent float64 references: NumPy HarMax (loss and analytic gradients), TensorFlow
float64 autodiff of the plain exact and sampled formulas. None shares code with the package's
math; tests import them from here."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _unit(v, distance):
    """Float64 rows as ``distance`` measures them: unchanged, or divided by their norm."""
    return v / tf.norm(v, axis=-1, keepdims=True) if distance == "cosine" else v


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


def _candidates(ys, per_example_ids, shared_ids, in_batch_ids, log_q, correction, remove_hits):
    """Each token's candidate ids ``[n, c]``, which of them count, and the logQ of the
    candidates and of the label (``sampled_reference``'s arguments)."""
    n = len(ys)
    cols = []
    if per_example_ids is not None:
        cols.append(np.asarray(per_example_ids))
    if shared_ids is not None:
        cols.append(np.tile(np.asarray(shared_ids), (n, 1)))
    sampled = np.concatenate(cols, 1) if cols else np.zeros((n, 0), int)
    exact = np.tile(np.asarray([] if in_batch_ids is None else in_batch_ids, int), (n, 1))
    cand = np.concatenate([sampled, exact], 1)
    mask = np.ones(cand.shape, bool)
    mask[:, : sampled.shape[1]] = ~np.isin(sampled, exact[0])
    if remove_hits:
        mask &= cand != ys[:, None]
    lq_neg, lq_true = np.zeros(cand.shape), np.zeros(n)
    if log_q is not None and correction != "none":
        k_pe = 0 if per_example_ids is None else np.asarray(per_example_ids).shape[1]
        k_sh = 0 if shared_ids is None else len(shared_ids)
        draws = k_pe / (1 - np.exp(log_q[ys])) + k_sh
        lq_neg[:, : sampled.shape[1]] = log_q[sampled] + np.log(draws)[:, None]
        if correction == "all":
            lq_true = log_q[ys] + np.log(draws)
    return cand, mask, lq_neg, lq_true


def first_distinct_labels(y, capacity=None, ignore_index=-100) -> np.ndarray:
    """The in-batch block's ids: the first ``capacity`` (``None``: all) distinct labels of
    ``y`` other than ``ignore_index``, in the order they first appear."""
    valid = np.asarray(y).reshape(-1)
    valid = valid[valid != ignore_index]
    return valid[np.sort(np.unique(valid, return_index=True)[1])][:capacity]


def sampled_reference(
    x,
    w,
    y,
    eta,
    per_example_ids=None,
    shared_ids=None,
    in_batch_ids=None,
    log_q=None,
    correction="negatives",
    remove_hits=True,
    eps=1e-9,
    ignore_index=-100,
    reduction="mean",
    with_eta_grad=False,
    distance="euclidean",
):
    """float64 TF autodiff of the plain sampled loss over explicit candidates.

    Each token's candidates: its label, its per-example ids, the shared ids, and the in-batch
    ids (logQ 0; sampled ids equal to one of them are dropped).
    logQ_j = log(q_j * draws_n), draws_n = k_pe / (1 - q_y) + K.
    Returns (loss, dL/dx, dL/dw) as float64 numpy, and dL/deta with ``with_eta_grad``."""
    x = tf.constant(np.asarray(x, np.float64).reshape(-1, w.shape[1]))
    w = tf.constant(np.asarray(w, np.float64))
    y = np.asarray(y).reshape(-1)
    keep_tok = y != ignore_index
    ys = np.where(keep_tok, y, 0)
    cand, mask, lq_neg, lq_true = _candidates(
        ys, per_example_ids, shared_ids, in_batch_ids, log_q, correction, remove_hits
    )
    eta = tf.constant(eta, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([x, w, eta])
        xu, wu = _unit(x, distance), _unit(w, distance)
        d2_true = tf.reduce_sum(tf.square(xu - tf.gather(wu, ys)), -1)
        d2_neg = tf.reduce_sum(tf.square(xu[:, None, :] - tf.gather(wu, cand)), -1)
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
    gx, gw, g_eta = tape.gradient(target, [x, w, eta])
    out = out.numpy(), gx.numpy(), tf.convert_to_tensor(gw).numpy()
    return (*out, g_eta.numpy()) if with_eta_grad else out


def harmax_autodiff(x, w, y, eta, eps=1e-9, ignore_index=-100, distance="euclidean"):
    """float64 TF autodiff of the plain exact formula, mean over non-ignored tokens:
    ``(loss, dL/dx, dL/dw, dL/deta)``. Distances from the explicit difference ``x - w_i``
    (cosine: of the rows divided by their norms)."""
    x = tf.constant(np.asarray(x, np.float64).reshape(-1, np.shape(w)[1]))
    w = tf.constant(np.asarray(w, np.float64))
    y = np.asarray(y).reshape(-1)
    keep = y != ignore_index
    eta = tf.constant(eta, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([x, w, eta])
        xu, wu = _unit(x, distance), _unit(w, distance)
        d2 = tf.reduce_sum(tf.square(xu[:, None, :] - wu[None, :, :]), -1)
        z = -(eta / 2) * tf.math.log(d2 + eps)
        losses = tf.reduce_logsumexp(z, 1) - tf.gather(z, np.where(keep, y, 0), batch_dims=1)
        loss = tf.reduce_sum(tf.where(keep, losses, 0.0)) / max(keep.sum(), 1)
    grads = tape.gradient(loss, [x, w, eta])
    return (loss.numpy(), *(g.numpy() for g in grads))


def harmonic_logits_numpy(hidden, centers, eta, eps=1e-9, distance="euclidean"):
    """Float64 ``-(eta/2) log(||h - w||^2 + eps)`` for hidden states ``[..., D]`` and centers
    ``[V, D]`` (the plain difference, no expansion; cosine: of unit rows)."""
    h, w = np.asarray(hidden, np.float64), np.asarray(centers, np.float64)
    if distance == "cosine":
        h = h / np.linalg.norm(h, axis=-1, keepdims=True)
        w = w / np.linalg.norm(w, axis=-1, keepdims=True)
    d2 = np.sum(np.square(h[..., None, :] - w), axis=-1)
    return -0.5 * eta * np.log(d2 + eps)


def weighted_loss_numpy(logits, y, weight):
    """Keras's ``"sum_over_batch_size"`` of the softmax cross-entropy of float64 ``logits``:
    the weighted sum over all label positions divided by their count."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    lse = np.log(np.exp(z).sum(-1))
    per_token = lse - np.take_along_axis(z, y[..., None], -1)[..., 0]
    return (per_token * weight).sum() / y.size
