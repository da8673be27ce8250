"""Numerics at sharp exponents: a large common offset of hidden states and centers, LayerNorm-scale
inputs, a hidden state sitting on a center, half precision; every path, eagerly and under XLA.

Inputs lie on a 1/64 grid, so ``x + 1e4`` is exact in float32: the offset problem and the plain
one are the same problem, and the float64 reference of one is the reference of both."""

import numpy as np
import pytest
import tensorflow as tf

import harmonic_tf as ht

from conftest import PLAIN, maybe_jit
from reference import first_distinct_labels, harmax_autodiff, log_q_numpy, sampled_reference

N, D, V = 48, 16, 61
ETA = 4.0 * D  # the sharpest exponent the package documents
OFFSET = 1e4


def _grid(rng, shape, scale):
    return np.round(rng.normal(size=shape) * scale * 64) / 64


def _problem(scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    w = _grid(rng, (V, D), scale)
    y = rng.integers(0, V, N)
    # Hidden states scattered around their centers so that at eta = 4D the losses are O(1):
    # nearer, every loss underflows and only relative-to-tiny rounding would be compared.
    x = np.round((w[y] + rng.normal(size=(N, D)) * 2.5 * scale) * 64) / 64
    y[::11] = -100
    return x, w, y


PATHS = ["logits", "dense", "two_pass", "fused", "shared", "per_example", "in_batch", "rows"]
EXACT = ("logits", "dense", "two_pass", "fused")
SAMPLED = {
    "shared": PLAIN.replace(k=8),
    "per_example": PLAIN.replace(k=8, negatives="per_example"),
    "in_batch": PLAIN.replace(k=8, in_batch_negatives=16),
    "rows": PLAIN.replace(k=8, in_batch_negatives=16, center_gradient="rows", center_rows=8),
}


def _ids(path):
    """The sampled paths' pinned draws: the float64 reference takes the same candidates."""
    shape = (N, 8) if path == "per_example" else 8
    return np.random.default_rng(5).integers(0, V, shape)


def _path_loss(path, x, w, y, eta):
    if path == "logits":
        z = ht.harmonic_logits(x, w, eta=eta)
        keep = y != -100
        losses = tf.reduce_logsumexp(z, 1) - tf.gather(z, tf.where(keep, y, 0), batch_dims=1)
        return tf.reduce_sum(tf.where(keep, losses, 0.0)) / tf.reduce_sum(tf.cast(keep, tf.float32))
    if path == "dense":
        return ht.harmonic_loss(x, w, y, eta=eta)
    if path in ("fused", "two_pass"):
        return ht.harmonic_loss(x, w, y, eta=eta, chunk_size=16, path=path)
    options = SAMPLED[path]
    return ht.sampled_harmonic_loss(x, w, y, options, eta=eta, sampled_ids=_ids(path), seed=3)


def _reference(path, x, w, y, eta=ETA):
    """float64 ``(loss, dx, dw, deta)`` of the path's plain formula (the sampled ones over the
    same candidates); ``dw`` is ``None`` for the center rows' random estimate."""
    if path in EXACT:
        return harmax_autodiff(x, w, y, eta)
    first = first_distinct_labels(y, 16)
    per_example = path == "per_example"
    ref = sampled_reference(
        x, w, y, eta, per_example_ids=_ids(path) if per_example else None,
        shared_ids=None if per_example else _ids(path), log_q=log_q_numpy("uniform", V),
        in_batch_ids=first if SAMPLED[path].in_batch_negatives else None, with_eta_grad=True,
    )  # fmt: skip
    return ref[0], ref[1], None if path == "rows" else ref[2], ref[3]


def _run(path, x, w, y, mode, eta=ETA):
    def step(xt, wt, eta_t):
        with tf.GradientTape() as tape:
            tape.watch([xt, wt, eta_t])
            loss = _path_loss(path, xt, wt, tf.constant(y), eta_t)
        gx, gw, g_eta = tape.gradient(loss, [xt, wt, eta_t])
        return loss, gx, tf.convert_to_tensor(gw), g_eta

    args = (tf.constant(x, tf.float32), tf.constant(w, tf.float32), tf.constant(eta, tf.float32))
    return [t.numpy().astype(np.float64) for t in maybe_jit(step, mode)(*args)]


def _rel(a, b):
    return np.linalg.norm(np.ravel(a - b)) / max(np.linalg.norm(np.ravel(b)), 1e-30)


@pytest.mark.parametrize("mode", ["eager", "xla"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("scale", [1.0, 0.25], ids=["layernorm_scale", "small"])
def test_common_offset_matches_float64_and_the_plain_run(path, mode, scale):
    x, w, y = _problem(scale)
    plain = _run(path, x, w, y, mode)
    shifted = _run(path, x + OFFSET, w + OFFSET, y, mode)
    assert all(np.all(np.isfinite(t)) for t in shifted)
    for name, a, b in zip(["loss", "dx", "dw", "deta"], shifted, plain, strict=True):
        assert _rel(a, b) < 1e-3, f"{name}: relative error {_rel(a, b):.2e} with a 1e4 offset"
    # And float64 (the center rows' dL/dw, a random estimate, only against the unshifted run).
    ref = _reference(path, x, w, y)
    for name, a, b in zip(["loss", "dx", "dw", "deta"], shifted, ref, strict=True):
        assert b is None or _rel(a, b) < 1e-3, f"{name}: {_rel(a, b):.2e} vs float64"


@pytest.mark.parametrize("mode", ["eager", "xla"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("where", ["own", "wrong"])
def test_hidden_state_on_a_center_at_sharp_eta(where, path, mode, dtype):
    # d -> 0 is where (eta/2) / (d^2 + eps) is largest: gradients must stay finite.
    x, w, y = _problem(seed=2)
    x = x.copy()
    if where == "own":
        x[1] = w[y[1]]  # on its own center: the explicit difference gives d = 0 exactly
        x[3] = w[y[3]] + 2.0**-10  # a hair away from it
    else:
        # On a wrong center. The expansion resolves that d^2 only down to float32 rounding of
        # |x|^2 (~1e-6 here), far above eps = 1e-9, so the loss is finite but not float64's.
        x[2] = w[(y[2] + 1) % V]

    def step(xt, wt):
        with tf.GradientTape() as tape:
            tape.watch([xt, wt])
            loss = _path_loss(path, xt, wt, tf.constant(y), ETA)
        return loss, *tape.gradient(loss, [xt, wt])

    xt, wt = tf.constant(x, dtype), tf.constant(w, dtype)
    loss, gx, gw = maybe_jit(step, mode)(xt, wt)
    gw = tf.convert_to_tensor(gw)
    assert gx.dtype == xt.dtype and gw.dtype == wt.dtype
    for t in (loss, gx, gw):
        assert np.all(np.isfinite(tf.cast(t, tf.float32).numpy()))
    # float64 of the inputs as rounded to `dtype`; gradients come back rounded to it.
    rounded = [tf.cast(t, tf.float64).numpy() for t in (xt, wt)]
    ref = _reference(path, *rounded, y)
    tol = {"float32": 1e-3, "float16": 2e-3, "bfloat16": 1e-2}[dtype]
    # Each token's dL/dx row is its own; the token on a wrong center has no float32 answer.
    rows = np.arange(N) != (2 if where == "wrong" else -1)
    gx = tf.cast(gx, tf.float64).numpy()
    assert _rel(gx[rows], ref[1][rows]) < tol, _rel(gx[rows], ref[1][rows])
    if where == "own":
        assert _rel(float(loss), ref[0]) < tol
        # The token on its own center is already right: it gets (almost) no gradient.
        assert np.abs(gx[1]).max() < 1e-6 * np.abs(gx).max()


def test_offset_without_the_reference_point_would_be_wrong():
    # The check above can fail: the same expansion measured from the origin is far off.
    from harmonic_tf.ops.distances import expanded_sq_distances

    x, w, y = _problem()
    xo, wo = tf.constant(x + OFFSET, tf.float32), tf.constant(w + OFFSET, tf.float32)
    d2_origin = expanded_sq_distances(xo, wo).numpy()
    d2_true = ((x[:, None, :] - w[None, :, :]) ** 2).sum(-1)
    assert _rel(d2_origin, d2_true) > 1e-2
    loss = float(ht.harmonic_loss(xo, wo, y, eta=ETA))
    assert _rel(loss, harmax_autodiff(x, w, y, ETA)[0]) < 1e-3
