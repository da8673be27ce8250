"""Exact loss and logits against the float64 NumPy HarMax, dense and chunked, eager/graph/XLA."""

import numpy as np
import pytest
import tensorflow as tf

import harmonic_tf as ht

from conftest import maybe_jit
from reference import harmax_numpy

MODES = ["eager", "graph", "xla"]


def _problem(rng, n=24, d=8, v=37, scale=1.0, ignore_some=True):
    x = rng.normal(size=(n, d)) * scale
    w = rng.normal(size=(v, d)) * scale
    y = rng.integers(0, v, n)
    if ignore_some:
        y[::7] = -100
    return x, w, y


def _loss_and_grads(fn, x, w, y, mode, **kwargs):
    def run(xt, wt, yt):
        with tf.GradientTape() as tape:
            tape.watch([xt, wt])
            loss = fn(xt, wt, yt, **kwargs)
            target = tf.reduce_sum(loss)
        gx, gw = tape.gradient(target, [xt, wt])
        return loss, gx, tf.convert_to_tensor(gw)

    out = maybe_jit(run, mode)(
        tf.constant(x, tf.float32), tf.constant(w, tf.float32), tf.constant(y, tf.int32)
    )
    return [t.numpy() for t in out]


def test_numpy_reference_gradient_matches_finite_differences(rng):
    # The reference's analytic gradient is itself checked, so it can be trusted below.
    x, w, y = _problem(rng, n=3, d=4, v=5, ignore_some=False)
    _, gx, gw = harmax_numpy(x, w, y, eta=3.0)
    h = 1e-6
    for arr, grad in ((x, gx), (w, gw)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            orig = arr[idx]
            arr[idx] = orig + h
            up = harmax_numpy(x, w, y, eta=3.0)[0]
            arr[idx] = orig - h
            down = harmax_numpy(x, w, y, eta=3.0)[0]
            arr[idx] = orig
            num[idx] = (up - down) / (2 * h)
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk_size", [None, 1, 5, 16, 37, 64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_exact_loss_matches_numpy_harmax(rng, mode, chunk_size, reduction):
    x, w, y = _problem(rng)
    eta = 3.5
    ref, ref_gx, ref_gw = harmax_numpy(x, w, y, eta, reduction=reduction)
    loss, gx, gw = _loss_and_grads(
        ht.harmonic_loss,
        x,
        w,
        y,
        mode,
        eta=eta,
        reduction=reduction,
        chunk_size=chunk_size,
        dense_max_bytes=0,
    )
    np.testing.assert_allclose(loss, ref, rtol=2e-5, atol=1e-6)
    if reduction == "none":
        # Gradient of sum(losses) == the "sum" reference.
        _, ref_gx, ref_gw = harmax_numpy(x, w, y, eta, reduction="sum")
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(gw, ref_gw, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("mode", MODES)
def test_exact_3d_inputs_and_default_eta(rng, mode):
    x, w, y = _problem(rng, n=24, d=9)
    ref, ref_gx, ref_gw = harmax_numpy(x, w, y, eta=ht.default_eta(9), reduction="none")
    loss, gx, gw = _loss_and_grads(
        ht.harmonic_loss,
        x.reshape(4, 6, 9),
        w,
        y.reshape(4, 6),
        mode,
        reduction="none",
        chunk_size=8,
        dense_max_bytes=0,
    )
    assert loss.shape == (4, 6)
    np.testing.assert_allclose(loss.reshape(-1), ref, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(gx.reshape(24, 9), ref_gx * 1, rtol=1e-4, atol=2e-6)
    _, _, ref_gw_sum = harmax_numpy(x, w, y, eta=ht.default_eta(9), reduction="sum")
    np.testing.assert_allclose(gw, ref_gw_sum, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("path", ["two_pass", "fused"])
def test_chunked_paths_equal_dense_to_float32_rounding(rng, path):
    x, w, y = _problem(rng, n=64, d=16, v=301)
    # A mild exponent: at sharp ones float32 summation order alone moves gradients by ~1e-4
    # relative (their accuracy against float64 is tested in test_numerics.py).
    a = _loss_and_grads(ht.harmonic_loss, x, w, y, "xla", chunk_size=None, eta=4.0)
    b = _loss_and_grads(ht.harmonic_loss, x, w, y, "xla", chunk_size=64, eta=4.0, path=path)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_harmonic_logits_match_numpy(rng, mode):
    x = rng.normal(size=(2, 3, 5))
    w = rng.normal(size=(7, 5))
    z = maybe_jit(lambda a, b: ht.harmonic_logits(a, b, eta=4.0), mode)(
        tf.constant(x, tf.float32), tf.constant(w, tf.float32)
    ).numpy()
    d2 = ((x[..., None, :] - w) ** 2).sum(-1)
    np.testing.assert_allclose(z, -2.0 * np.log(d2 + 1e-9), rtol=1e-5, atol=1e-5)
    assert z.shape == (2, 3, 7) and z.dtype == np.float32


def test_softmax_of_logits_is_paper_harmax():
    x = tf.constant([[0.0, 0.0]])
    w = tf.constant([[1.0, 0.0], [3.0, 0.0]])
    p = tf.nn.softmax(ht.harmonic_logits(x, w, eta=2.0)).numpy()
    np.testing.assert_allclose(p, [[0.9, 0.1]], rtol=1e-6)  # d^-2: 1 and 1/9, normalised


def test_true_distance_is_exact_when_hidden_equals_center():
    # Expanded |x|^2 - 2xw + |w|^2 cancels to rounding noise at large norms; the true class
    # uses the explicit difference, so the loss is exactly that of d_y = 0.
    w = tf.constant([[1000.0, 1000.0, 1000.0], [1010.0, 1000.0, 1000.0]])
    x = w[:1]
    loss = ht.harmonic_loss(x, w, tf.constant([0]), eta=2.0, reduction="none")
    expected = np.log1p((1e-9) / (100 + 1e-9))  # p_y = (1/eps) / (1/eps + 1/100)
    np.testing.assert_allclose(loss.numpy(), [expected], atol=1e-7)


def test_all_ignored_mean_is_zero():
    x = tf.random.normal([4, 3])
    w = tf.random.normal([5, 3])
    loss = ht.harmonic_loss(x, w, tf.fill([4], -100))
    assert float(loss) == 0.0


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_inputs_give_matching_dtypes(rng, dtype):
    x, w, y = _problem(rng, ignore_some=False)
    xt, wt = tf.constant(x, dtype), tf.constant(w, dtype)
    # The reference of the inputs as rounded to half precision: what is left is the loss's own
    # error and the gradients' rounding to `dtype` (2**-8 relative for bfloat16, 2**-11 float16).
    ref, ref_gx, ref_gw = harmax_numpy(
        tf.cast(xt, tf.float64).numpy(), tf.cast(wt, tf.float64).numpy(), y, 3.0
    )
    with tf.GradientTape() as tape:
        tape.watch([xt, wt])
        loss = ht.harmonic_loss(xt, wt, tf.constant(y), eta=3.0, chunk_size=8, dense_max_bytes=0)
    gx, gw = tape.gradient(loss, [xt, wt])
    assert loss.dtype == tf.float32 and gx.dtype == dtype and gw.dtype == dtype
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)  # computed in float32
    tol = 8e-3 if dtype == tf.bfloat16 else 1e-3  # a factor of 1.1 or a zero fails
    for got, want in ((gx, ref_gx), (gw, ref_gw)):
        got = tf.cast(got, tf.float64).numpy()
        assert np.linalg.norm(got - want) <= tol * np.linalg.norm(want)


@pytest.mark.parametrize("mode", MODES)
def test_two_pass_and_fused_chunked_paths_agree(rng, mode):
    # Same numbers and gradients from the fused path (reduced losses, gradients in the forward
    # pass), the two-pass path (running log-sum-exp + recompute) and a tape-less call.
    x, w, y = _problem(rng, n=40, d=8, v=97)
    xt, wt, yt = (tf.constant(x, tf.float32), tf.constant(w, tf.float32), tf.constant(y))

    def both(xt, wt):
        no_tape = ht.harmonic_loss(xt, wt, yt, eta=3.0, chunk_size=8, dense_max_bytes=0)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([xt, wt])
            fused = ht.harmonic_loss(xt, wt, yt, eta=3.0, chunk_size=8, path="fused")
            two_pass = ht.harmonic_loss(xt, wt, yt, eta=3.0, chunk_size=8, path="two_pass")
        return (
            no_tape,
            fused,
            two_pass,
            tape.gradient(fused, [xt, wt]),
            tape.gradient(two_pass, [xt, wt]),
        )

    no_tape, fused, two_pass, g_fused, g_two = maybe_jit(both, mode)(xt, wt)
    ref, ref_gx, ref_gw = harmax_numpy(x, w, y, 3.0)
    np.testing.assert_allclose(float(fused), ref, rtol=2e-5)
    np.testing.assert_allclose(g_fused[0], ref_gx, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(tf.convert_to_tensor(g_fused[1]), ref_gw, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(float(no_tape), float(fused), rtol=1e-6)
    np.testing.assert_allclose(float(two_pass), float(fused), rtol=1e-6)
    for a, b in zip(g_fused, g_two, strict=True):
        np.testing.assert_allclose(
            tf.convert_to_tensor(a), tf.convert_to_tensor(b), rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize("mode", ["eager", "xla"])
@pytest.mark.parametrize("path", ["fused", "two_pass"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weights_match_weighted_numpy_harmax(rng, path, reduction, mode):
    # weights: per token, or one per sequence; "mean" divides by the non-ignored count.
    x, w, y = _problem(rng, n=24, d=8, v=37)
    per_seq = rng.uniform(0.0, 2.0, size=4)
    per_token = np.repeat(per_seq, 6)
    losses, _, _ = harmax_numpy(x, w, y, 3.0, reduction="none")
    expected = losses * per_token
    if reduction != "none":
        expected = expected.sum() / (np.sum(y != -100) if reduction == "mean" else 1)
    if path == "fused" and reduction == "none":
        with pytest.raises(ValueError, match="path='fused'"):
            ht.harmonic_loss(x, w, y, eta=3.0, chunk_size=8, path=path, reduction=reduction)
        return
    xs, ys = x.reshape(4, 6, 8).astype(np.float32), y.reshape(4, 6)
    for weights in (per_token.reshape(4, 6), per_seq, per_seq[:, None]):

        def loss(weights=weights):
            return ht.harmonic_loss(
                xs,
                w.astype(np.float32),
                ys,
                eta=3.0,
                chunk_size=8,
                path=path,
                reduction=reduction,
                weights=weights,
            )

        ours = maybe_jit(loss, mode)()
        np.testing.assert_allclose(np.ravel(ours), np.ravel(expected), rtol=2e-5, atol=1e-6)


def test_weights_of_unknown_rank_are_refused():
    x, w, y = np.zeros([4, 3], np.float32), np.ones([5, 3], np.float32), np.array([0, 1, 2, 3])
    f = tf.function(
        lambda sw: ht.harmonic_loss(x, w, y, eta=2.0, weights=sw),
        input_signature=[tf.TensorSpec(None, tf.float32)],
    )
    with pytest.raises(ValueError, match="`weights` must have a known rank"):
        f.get_concrete_function()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk_size", [None, 7, 16, 37, 64])
def test_nearest_centers_match_float64_argmin(rng, mode, chunk_size):
    """The chunked argmax of ``evaluate``'s accuracy: V=37 with chunks of 7 and 16 leaves an
    overlapping last chunk; a common offset checks the reference-point shift; duplicated
    centers check that ties go to the lower id, as ``argmax`` does."""
    from harmonic_tf.ops import nearest_centers

    x, w, _ = _problem(rng, n=40, v=37, ignore_some=False)
    w[20] = w[3]  # a tie: id 3 must win
    x[:5] = w[3] + 1e-3 * rng.normal(size=(5, x.shape[1]))
    offset = 50.0
    d2 = (((x[:, None, :] - w[None, :, :]) ** 2).sum(-1)).astype(np.float64)
    expected = np.argmin(d2, axis=1)
    got = maybe_jit(lambda a, b: nearest_centers(a, b, chunk_size), mode)(
        tf.constant(x + offset, tf.float32), tf.constant(w + offset, tf.float32)
    )
    np.testing.assert_array_equal(got.numpy(), expected)
    assert np.all(expected[:5] == 3)


def test_auto_path_goes_dense_under_the_budget_and_chunked_above():
    from harmonic_tf.ops.exact import MIN_FUSED_ROWS, choose_path

    n, v = 2048, 50_257  # the V = 50,257 training step: 412 MB of float32 logits
    assert choose_path("auto", n, v, 4096, "mean", ht.ops.DENSE_MAX_BYTES) == "dense"
    assert choose_path("auto", n, v, 4096, "mean", 4 * n * v - 1) == "fused"
    assert choose_path("auto", n, v, 4096, "none", 0) == "two_pass"  # per-token: no fused
    assert choose_path("auto", None, v, 4096, "mean", 2**40) == "two_pass"  # unknown N
    short = (MIN_FUSED_ROWS - 1) * v // n  # chunks of fewer than MIN_FUSED_ROWS tokens
    assert choose_path("auto", n, v, short, "mean", 0) == "two_pass"
    assert choose_path("dense", n, v, 4096, "mean", 0) == "dense"
    assert choose_path("auto", n, v, None, "mean", 0) == "dense"  # no chunk: dense as asked


@pytest.mark.parametrize("path", ["auto", "dense", "fused", "two_pass"])
def test_every_path_gives_the_float64_loss_and_gradients(rng, path):
    x, w, y = _problem(rng, n=40, d=8, v=97)
    ref, ref_gx, ref_gw = harmax_numpy(x, w, y, 3.0)
    budget = {"auto": 2**20}.get(path, 0)  # auto: [40, 97] fits, so dense
    loss, gx, gw = _loss_and_grads(
        ht.harmonic_loss, x, w, y, "eager", eta=3.0, chunk_size=8, path=path,
        dense_max_bytes=budget,
    )  # fmt: skip
    np.testing.assert_allclose(loss, ref, rtol=2e-5)
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(gw, ref_gw, rtol=1e-4, atol=2e-6)
