"""Numerical robustness, property-based comparison with float64 references, determinism and
resumable training."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import harmonic_tf as ht

from conftest import PLAIN
from reference import harmax_numpy, log_q_numpy, sampled_reference

DTYPES = {"float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}


@st.composite
def problems(draw):
    n = draw(st.integers(1, 16))
    d = draw(st.integers(1, 8))
    v = draw(st.integers(2, 24))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0, 1e3]))
    dtype = draw(st.sampled_from(list(DTYPES)))
    eta = draw(st.sampled_from([None, 0.5, 2.0, 8.0, 64.0]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(v, d)) * scale
    x = rng.normal(size=(n, d)) * scale
    y = rng.integers(0, v, n)
    pattern = draw(st.sampled_from(["plain", "ignored", "at_center", "all_ignored"]))
    if pattern == "ignored":
        y[rng.random(n) < 0.3] = -100
    elif pattern == "at_center":
        x[0] = w[y[0]]  # distance exactly 0 to the true center
    elif pattern == "all_ignored":
        y[:] = -100
    # Round inputs to the dtype first, so the float64 reference sees exactly what we see.
    x = tf.cast(tf.constant(x, DTYPES[dtype]), tf.float64).numpy()
    w = tf.cast(tf.constant(w, DTYPES[dtype]), tf.float64).numpy()
    return x, w, y, dtype, eta, seed


def _well_conditioned(x, w, y, eta):
    """Distances to the *other* classes come from ``|x|^2 - 2 x.w + |w|^2`` (one matmul), whose
    float32 rounding is ~1e-7 * (|x|^2 + |w|^2) absolute; float32 can only give the float64
    answer where that moves no logit by more than ~1e-3. (The true class is exact.)"""
    eta = ht.default_eta(x.shape[1]) if eta is None else eta
    norms = (x**2).sum(1)[:, None] + (w**2).sum(1)[None, :]
    d2 = ((x[:, None, :] - w[None]) ** 2).sum(-1)
    logit_error = 0.5 * eta * 5e-7 * norms / (d2 + 1e-9)
    logit_error[np.arange(len(y)), np.where(y >= 0, y, 0)] = 0.0
    return logit_error.max() < 1e-3


def _ours(fn, x, w, y, dtype, *args, **kwargs):
    xt = tf.constant(x, DTYPES[dtype])
    wt = tf.constant(w, DTYPES[dtype])
    with tf.GradientTape() as tape:
        tape.watch([xt, wt])
        loss = fn(xt, wt, tf.constant(y), *args, **kwargs)
    gx, gw = tape.gradient(loss, [xt, wt])
    assert gx.dtype == xt.dtype
    return (
        float(loss),
        tf.cast(gx, tf.float64).numpy(),
        tf.cast(tf.convert_to_tensor(gw), tf.float64).numpy(),
    )


def _term_scale(x, w, eta) -> float:
    """The size of the terms a gradient sums, ``eta |x - w_j| / d_j^2``, at their largest:
    float32 computes a gradient only to about 1e-7 of that, however small the sum (a saturated
    token's true gradient of 1e-25 comes out as 1e-24)."""
    eta = ht.default_eta(x.shape[1]) if eta is None else eta
    d = np.sqrt(((x[:, None, :] - w[None]) ** 2).sum(-1))
    return float(eta / d[d > 0].min()) if np.any(d > 0) else 0.0


def _close(ours, ref, dtype, terms: float, rtol=2e-3):
    loss, gx, gw = ours
    ref_loss, ref_gx, ref_gw = ref
    # A float16 gradient past 65,504 is inf whatever computes it (CI's hypothesis run found
    # x, w ~ 5e-3 at eta 64: a true gradient of -69,037); only representable answers compare.
    largest = max(abs(ref_loss), np.abs(ref_gx).max(), np.abs(ref_gw).max())
    assume(largest < 0.5 * float(np.finfo(np.float16).max) or dtype != "float16")
    assert np.isfinite(loss) and np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=1e-3)
    # Gradients are compared relative to their own scale (float32 math, large logits), never to
    # 1: a zero gradient where the reference has a small one fails, and all-ignored labels must
    # give exactly zero. A sparse centers gradient of bfloat16 centers is cast row by row and
    # its duplicate rows are summed in bfloat16 by TensorFlow, outside the loss: a small entry
    # can carry the rounding of the large rows that cancel into it (2^-8 of the largest row).
    # The floor: float32's rounding of the summed terms, and in float16 8 of its smallest
    # steps (6e-8; below 6e-5 it is subnormal, and duplicate rows are summed in float16).
    scale = 2.0 * 2.0**-8 if dtype == "bfloat16" else 1e-3
    float16_steps = 8 * float(np.finfo(np.float16).smallest_subnormal)
    floor = 2e-7 * terms + (float16_steps if dtype == "float16" else 0.0)
    for a, b in ((gx, ref_gx), (gw, ref_gw)):
        np.testing.assert_allclose(a, b, rtol=rtol * 10, atol=scale * np.abs(b).max() + floor)


SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@SETTINGS
@given(problems(), st.sampled_from([None, 1, 5]))
def test_property_exact_matches_float64(problem, chunk_size):
    x, w, y, dtype, eta, _ = problem
    assume(_well_conditioned(x, w, y, eta))
    eta_value = ht.default_eta(x.shape[1]) if eta is None else eta
    ref = harmax_numpy(x, w, y, eta_value)
    _close(
        _ours(ht.harmonic_loss, x, w, y, dtype, eta=eta, chunk_size=chunk_size, dense_max_bytes=0),
        ref,
        dtype,
        _term_scale(x, w, eta),
    )


@SETTINGS
@given(
    problems(),
    st.sampled_from(["shared", "per_example"]),
    st.sampled_from(["negatives", "all", "none"]),
)
def test_property_sampled_matches_float64(problem, negatives, correction):
    x, w, y, dtype, eta, seed = problem
    assume(_well_conditioned(x, w, y, eta))
    v = w.shape[0]
    k = min(4, v - 1)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, v, k if negatives == "shared" else (len(y), k))
    eta_value = ht.default_eta(x.shape[1]) if eta is None else eta
    ours = _ours(
        ht.sampled_harmonic_loss,
        x,
        w,
        y,
        dtype,
        PLAIN.replace(k=k, negatives=negatives, log_q_correction=correction),
        eta=eta,
        sampled_ids=ids,
    )
    ref = sampled_reference(
        x,
        w,
        y,
        eta_value,
        per_example_ids=ids if negatives == "per_example" else None,
        shared_ids=ids if negatives == "shared" else None,
        log_q=log_q_numpy("uniform", v),
        correction=correction,
    )
    _close(ours, ref, dtype, _term_scale(x, w, eta))


@pytest.mark.parametrize("eta", [1.0, 28.0, 2048.0])
@pytest.mark.parametrize("scale", [1.0, 1e4])
@pytest.mark.parametrize("path", ["dense", "chunked", "shared", "per_example"])
@pytest.mark.parametrize("on_wrong_center", [False, True])
def test_extreme_eta_norms_and_zero_distance(eta, scale, path, on_wrong_center):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 6)) * scale
    x = rng.normal(size=(5, 6)) * scale
    y = np.array([0, 1, 2, 3, 4])
    x[0] = w[0]  # distance exactly 0 to the true class
    if on_wrong_center:
        x[1] = w[5]  # distance exactly 0 to a wrong class
    ids = np.array([5, 6, 7])
    if path in ("dense", "chunked"):
        ours = _ours(
            ht.harmonic_loss,
            x,
            w,
            y,
            "float32",
            eta=eta,
            chunk_size=5 if path == "chunked" else None,
            dense_max_bytes=0,
        )
        ref = harmax_numpy(x, w, y, eta)
    else:
        per = np.tile(ids, (5, 1)) if path == "per_example" else None
        ours = _ours(
            ht.sampled_harmonic_loss,
            x,
            w,
            y,
            "float32",
            PLAIN.replace(k=3, negatives=path, log_q_correction="none"),
            eta=eta,
            sampled_ids=per if per is not None else ids,
        )
        ref = sampled_reference(
            x,
            w,
            y,
            eta,
            per_example_ids=per,
            shared_ids=None if per is not None else ids,
            correction="none",
        )
    loss, gx, gw = ours
    assert np.isfinite(loss) and np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
    # Each token's dL/dx row is its own: every token float32 can represent agrees with float64,
    # relative to the rows' scale. Token 1 on a wrong center cannot: float64 gives that distance
    # as 0, so its logit is set by eps = 1e-9, and the float32 expansion resolves d^2 only to
    # ~1e-7 * |x|^2; it must be finite, and the rest must not be touched by it.
    rows = [0, 2, 3, 4] if on_wrong_center else list(range(5))
    err = np.linalg.norm(gx[rows] - ref[1][rows]) / max(np.linalg.norm(ref[1][rows]), 1e-30)
    assert err < 1e-3, err
    if on_wrong_center:
        return
    # With expanded distances at norm 1e4 the wrong-class distances carry ~1e-7 * |x|^2
    # absolute error, so the loss is compared relative to its scale.
    np.testing.assert_allclose(loss, ref[0], rtol=1e-3, atol=1e-3 * max(1.0, eta / 28))
    assert np.linalg.norm(gw - ref[2]) <= 1e-3 * np.linalg.norm(ref[2])


def test_seeded_runs_are_bit_identical():
    x = tf.random.stateless_normal([64, 16], seed=[1, 2])
    w = tf.random.stateless_normal([300, 16], seed=[3, 4])
    y = tf.random.stateless_uniform([64], [5, 6], 0, 300, tf.int32)

    @tf.function(jit_compile=True)
    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            # Sparse centers gradient (values, indices) for the bit-identity check.
            options = ht.SampledOptions(
                k=32, in_batch_negatives=8, center_gradient="indexed_slices"
            )
            loss = ht.sampled_harmonic_loss(x, w, y, options, seed=9)
        gx, gw = tape.gradient(loss, [x, w])
        return loss, gx, gw.values, gw.indices

    a, b = step(x, w), step(x, w)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u.numpy(), v.numpy())


def test_exact_loss_agrees_across_eager_graph_xla():
    x = tf.random.stateless_normal([64, 16], seed=[1, 2])
    w = tf.random.stateless_normal([300, 16], seed=[3, 4])
    y = tf.random.stateless_uniform([64], [5, 6], 0, 300, tf.int32)
    for chunk in (None, 64):
        f = lambda c=chunk: ht.harmonic_loss(x, w, y, chunk_size=c, dense_max_bytes=0)  # noqa: E731
        values = [float(f()), float(tf.function(f)()), float(tf.function(f, jit_compile=True)())]
        np.testing.assert_allclose(values, values[0], rtol=1e-5)


def _resumable_model(k):
    keras.utils.set_random_seed(0)
    inp = keras.Input([8])
    head = ht.HarmonicLMHead(40, name="head")
    model = ht.HarmonicModel(inp, head(keras.layers.Dense(12)(keras.layers.Dense(16, "relu")(inp))))
    model.compile(
        keras.optimizers.Adam(1e-2),
        loss=ht.HarmonicLoss(sampled=k and ht.SampledOptions(k=k), seed=5, exact_fallback=False),
        jit_compile=True,
    )
    return model


@pytest.mark.parametrize("k", [None, 6])
@pytest.mark.parametrize("how", ["keras_file", "tf_checkpoint"])
def test_interrupted_training_resumes_the_same_trajectory(tmp_path, k, how):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(8, 40)), 1)

    def epochs(model, n):
        out = []
        for _ in range(n):
            model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
            out.append(model.evaluate(x, y, verbose=0))
        return out

    straight = epochs(_resumable_model(k), 4)
    first = _resumable_model(k)
    part1 = epochs(first, 2)
    if how == "keras_file":
        first.save(tmp_path / "ckpt.keras")  # weights, optimizer state, compiled loss
        resumed = keras.models.load_model(tmp_path / "ckpt.keras")
    else:
        ckpt = tf.train.Checkpoint(model=first, optimizer=first.optimizer)
        path = ckpt.save(str(tmp_path / "ckpt"))
        resumed = _resumable_model(k)
        resumed.optimizer.build(resumed.trainable_variables)
        tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).restore(
            path
        ).assert_consumed()
    part2 = epochs(resumed, 2)
    np.testing.assert_allclose(part1 + part2, straight, rtol=1e-6)
    assert straight[-1] < straight[0]
