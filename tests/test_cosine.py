"""``distance="cosine"`` on every path against float64 autodiff of the plain formula on unit
vectors; zero and NaN rows; the analysis functions; no ``[N, V]`` or normalised ``[V, D]``
buffer where the Euclidean path has none."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import harmonic_tf as ht

from conftest import f32_buffer_sizes, maybe_jit
from reference import harmax_autodiff, harmonic_logits_numpy

N, D, V, ETA = 24, 6, 41, 6.0
MODES = ["eager", "graph", "xla"]


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)) + 0.5  # a common offset: directions, not positions, count
    w = rng.normal(size=(V, D)) * rng.uniform(0.2, 3.0, size=(V, 1))  # norms that must not count
    y = rng.integers(0, V, N)
    y[[3, 11]] = -100
    return x, w, y


def _grads(fn, x, w, mode):
    def run(xt, wt):
        with tf.GradientTape() as tape:
            tape.watch([xt, wt])
            loss = fn(xt, wt)
        return loss, *tape.gradient(loss, [xt, wt])

    return maybe_jit(run, mode)(tf.constant(x, tf.float32), tf.constant(w, tf.float32))


def _assert_close(got, want, rtol=2e-4):
    """Relative to the whole array's scale: a zero, a factor of 1.1 or a missing term fails."""
    got = tf.convert_to_tensor(got).numpy()
    assert np.linalg.norm(got - want) <= rtol * np.linalg.norm(want), (got, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["dense", "two_pass", "fused"])
def test_exact_paths_match_float64(path, mode):
    x, w, y = _problem()
    ref, ref_gx, ref_gw, _ = harmax_autodiff(x, w, y, ETA, distance="cosine")

    def loss(xt, wt):
        return ht.harmonic_loss(
            xt, wt, tf.constant(y), eta=ETA, chunk_size=8, path=path, distance="cosine"
        )

    got, gx, gw = _grads(loss, x, w, mode)
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)
    _assert_close(gx, ref_gx)
    _assert_close(gw, ref_gw)


@pytest.mark.parametrize("path", ["dense", "two_pass", "fused"])
def test_learned_exponent_gradient_matches_float64(path):
    x, w, y = _problem(1)
    eta = tf.Variable(ETA)
    with tf.GradientTape() as tape:
        loss = ht.harmonic_loss(
            tf.constant(x, tf.float32), tf.constant(w, tf.float32), y, eta=eta, chunk_size=8,
            path=path, distance="cosine",
        )  # fmt: skip
    ref_eta = harmax_autodiff(x, w, y, ETA, distance="cosine")[3]
    np.testing.assert_allclose(float(tape.gradient(loss, eta)), ref_eta, rtol=1e-4)


def test_per_token_losses_and_logits_match_float64():
    x, w, y = _problem(2)
    y = np.maximum(y, 0)
    z = ht.harmonic_logits(x.reshape(4, 6, D).astype("float32"), w, eta=ETA, distance="cosine")
    z_ref = harmonic_logits_numpy(x.reshape(4, 6, D), w, ETA, distance="cosine")
    np.testing.assert_allclose(z.numpy(), z_ref, rtol=1e-5, atol=1e-5)
    per_token = ht.harmonic_loss(
        x, w, y, eta=ETA, reduction="none", chunk_size=8, path="two_pass", distance="cosine"
    )
    lse = np.log(np.exp(z_ref.reshape(N, V)).sum(-1))
    np.testing.assert_allclose(per_token, lse - z_ref.reshape(N, V)[np.arange(N), y], rtol=1e-5)


def test_a_centers_scale_and_a_hidden_states_norm_do_not_count():
    x, w, y = _problem(3)
    base = ht.harmonic_loss(x, w, y, eta=ETA, distance="cosine")
    scaled = ht.harmonic_loss(
        x * np.linspace(0.1, 10, N)[:, None], w * 7.0, y, eta=ETA, distance="cosine"
    )
    np.testing.assert_allclose(float(scaled), float(base), rtol=1e-5)
    euclidean = ht.harmonic_loss(x, w * 7.0, y, eta=ETA)
    assert abs(float(euclidean) - float(base)) > 0.1  # the check can fail


@pytest.mark.parametrize(
    "options",
    [
        ht.SampledOptions(k=8),
        ht.SampledOptions(k=8, center_gradient="indexed_slices"),
        ht.SampledOptions.prototype(k=8),
    ],
    ids=["rows", "indexed_slices", "prototype"],
)
def test_zero_rows_are_uniform_and_nan_rows_stay_nan(options):
    # A zero row stays at the origin, at distance 1 from every unit vector: a zero hidden state
    # gets uniform probabilities (loss log V), a zero center d^2 = 1 from every hidden state;
    # neither gets a gradient through its undefined direction. A NaN row is NaN, never hidden.
    x, w, y = _problem(4)
    y = np.maximum(y, 0)
    x[0] = 0.0
    uniform = ht.harmonic_loss(x, w, y, eta=ETA, reduction="none", distance="cosine")
    np.testing.assert_allclose(float(uniform[0]), np.log(V), rtol=1e-6)
    zero_center = (y[0] + 1) % V
    w[zero_center] = 0.0  # and from the zero hidden state: d^2 = 0
    xt, wt = tf.constant(x, tf.float32), tf.constant(w, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([xt, wt])
        exact = ht.harmonic_loss(xt, wt, y, eta=ETA, reduction="none", distance="cosine")
        sampled = ht.sampled_harmonic_loss(xt, wt, y, options, eta=ETA, seed=1, distance="cosine")
    gx, gw = tape.gradient([tf.reduce_sum(exact), sampled], [xt, wt])
    gw = tf.convert_to_tensor(gw).numpy()
    assert np.all(gx.numpy()[0] == 0.0) and np.all(gw[zero_center] == 0.0)
    z = ht.harmonic_logits(x[1:], w, eta=ETA, distance="cosine").numpy()
    np.testing.assert_allclose(z[:, zero_center], -0.5 * ETA * np.log(1 + 1e-9), atol=1e-5)
    assert np.all(np.isfinite(gx.numpy())) and np.all(np.isfinite(gw)) and np.isfinite(sampled)
    x[7, 2] = np.nan
    nan = ht.harmonic_loss(x, w, y, eta=ETA, reduction="none", distance="cosine").numpy()
    euclidean = ht.harmonic_loss(x, w, y, eta=ETA, reduction="none").numpy()
    # The batch's reference point is NaN too: as loud as the Euclidean loss, row for row.
    np.testing.assert_array_equal(np.isnan(nan), np.isnan(euclidean))
    assert np.isnan(nan[7])


def test_sampled_rows_estimate_is_unbiased_for_the_exact_cosine_gradient():
    # The dense center-rows gradient (the default) averaged over draws is the exact one.
    x, w, y = _problem(5)
    n_valid = int(np.sum(y != -100))
    exact_gw = harmax_autodiff(x, w, y, ETA, distance="cosine")[2] * n_valid
    args = [tf.constant(x, tf.float32), tf.constant(w, tf.float32), tf.constant(y)]
    options = ht.SampledOptions(k=6, in_batch_negatives=5, center_rows=6)

    @tf.function(jit_compile=True)
    def grad(seed):
        with tf.GradientTape() as tape:
            tape.watch(args[1])
            loss = ht.sampled_harmonic_loss(
                *args, options, eta=ETA, reduction="sum", seed=seed, distance="cosine"
            )
        return tape.gradient(loss, args[1])

    gw = np.stack([grad(tf.constant([s, 4])).numpy() for s in range(1500)])
    z = (gw.mean(0) - exact_gw) / (gw.std(0) / np.sqrt(len(gw)) + 1e-6)
    assert np.abs(z).max() < 5, np.abs(z).max()


def test_sampled_denominator_is_unbiased():
    x, w, y = _problem(6)
    y = np.maximum(y, 0)
    z = harmonic_logits_numpy(x, w, ETA, distance="cosine")
    exact = np.exp(z - z[np.arange(N), y][:, None]).sum(1) - 1.0

    @tf.function
    def draw(seed):
        options = ht.SampledOptions(k=6, sampler=np.arange(V, 0, -1) ** 1.5, in_batch_negatives=4)
        losses = ht.sampled_harmonic_loss(
            x, w, y, options, eta=ETA, reduction="none", seed=seed, distance="cosine"
        )
        return tf.math.expm1(tf.cast(losses, tf.float64))

    draws = np.stack([draw(tf.constant([s, 1])).numpy() for s in range(2000)])
    mean, sem = draws.mean(0), draws.std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(mean - exact) < 5 * sem + 1e-4 * exact), (mean, exact)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_inputs(dtype):
    x, w, y = _problem(7)
    xt, wt = tf.constant(x, dtype), tf.constant(w, dtype)
    as_rounded = [tf.cast(t, tf.float64).numpy() for t in (xt, wt)]
    ref, ref_gx, ref_gw, _ = harmax_autodiff(*as_rounded, y, ETA, distance="cosine")
    with tf.GradientTape() as tape:
        tape.watch([xt, wt])
        loss = ht.harmonic_loss(xt, wt, y, eta=ETA, chunk_size=8, path="fused", distance="cosine")
    gx, gw = tape.gradient(loss, [xt, wt])
    assert loss.dtype == tf.float32 and gx.dtype == dtype and gw.dtype == dtype
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    tol = 8e-3 if dtype == tf.bfloat16 else 1e-3  # gradients rounded to `dtype`
    _assert_close(tf.cast(gx, tf.float64), ref_gx, tol)
    _assert_close(tf.cast(gw, tf.float64), ref_gw, tol)


def test_nearest_and_confidence_use_cosine_distances():
    x, w, _ = _problem(8)
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    wu = w / np.linalg.norm(w, axis=1, keepdims=True)
    d = np.linalg.norm(xu[:, None] - wu[None], axis=-1)
    near = ht.nearest_k(x, w, k=3, chunk_size=8, distance="cosine")
    np.testing.assert_array_equal(near.ids.numpy(), np.argsort(d, 1)[:, :3])
    np.testing.assert_allclose(near.distances.numpy(), np.sort(d, 1)[:, :3], rtol=1e-5)
    conf = ht.harmonic_confidence(x, w, chunk_size=8, distance="cosine")
    p = np.exp(harmonic_logits_numpy(x, w, ht.default_eta(D, "cosine"), distance="cosine"))
    np.testing.assert_allclose(conf.probability, p.max(1) / p.sum(1), rtol=1e-5)
    ids = ht.nearest_centers(x, w, chunk_size=8, distance="cosine")
    np.testing.assert_array_equal(ids.numpy(), d.argmin(1))


def test_default_exponent_and_bad_distance():
    assert ht.default_eta(64, "cosine") == ht.default_eta(4096, "cosine")  # not a rule of D
    x, w, y = _problem()
    default = ht.harmonic_loss(x, w, y, distance="cosine")
    given = ht.harmonic_loss(x, w, y, eta=ht.default_eta(D, "cosine"), distance="cosine")
    assert float(default) == float(given)
    with pytest.raises(ValueError, match="`distance` must be one of"):
        ht.harmonic_loss(x, w, y, distance="cos")
    with pytest.raises(ValueError, match="`distance` must be one of"):
        ht.HarmonicLMHead(10, distance="L2")


@pytest.mark.parametrize("path", ["two_pass", "fused"])
def test_chunked_step_hlo_has_no_tokens_by_vocab_buffer(path):
    n, vocab, dim = 512, 8192, 16

    @tf.function(jit_compile=True)
    def step(x, w, y):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = ht.harmonic_loss(
                x, w, y, chunk_size=512, path=path, dense_max_bytes=0, distance="cosine"
            )
        return loss, tape.gradient(loss, [x, w])

    args = (tf.random.normal([n, dim]), tf.random.normal([vocab, dim]), tf.zeros([n], tf.int32))
    sizes = f32_buffer_sizes(step.experimental_get_compiler_ir(*args)(stage="optimized_hlo"))
    assert n * vocab not in sizes and n * 512 in sizes


def test_sparse_sampled_step_normalises_only_gathered_rows():
    # With sparse center gradients no [V, D] tensor is computed: only the parameter is that big.
    n, vocab, dim = 256, 6000, 16
    options = ht.SampledOptions(k=64, center_gradient="indexed_slices")

    @tf.function(jit_compile=True)
    def step(x, w, y):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = ht.sampled_harmonic_loss(x, w, y, options, seed=0, distance="cosine")
        gx, gw = tape.gradient(loss, [x, w])
        return loss, gx, gw.values, gw.indices

    args = (tf.random.normal([n, dim]), tf.random.normal([vocab, dim]), tf.zeros([n], tf.int32))
    hlo = step.experimental_get_compiler_ir(*args)(stage="optimized_hlo")
    # Instructions whose result is a [V, D] float32 tensor: the parameter only (also as the
    # argument of the fused gathers).
    made = re.findall(rf"^\s*(?:ROOT )?%\S+ = f32\[{vocab},{dim}\]\S* (\w+)\(", hlo, re.M)
    assert made and set(made) == {"parameter"}, made
    assert n * vocab not in f32_buffer_sizes(hlo)


def test_keras_head_fits_saves_and_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input([12])
    head = ht.HarmonicLMHead(7, distance="cosine")
    model = ht.HarmonicModel(inputs, head(keras.layers.Dense(D)(inputs)))
    model.compile(
        "adam",
        loss=ht.HarmonicLoss(sampled=ht.SampledOptions(k=3), exact_fallback=False),
        jit_compile=True,
    )
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 12)).astype("float32"), rng.integers(0, 7, 64)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    hidden = keras.Model(inputs, model.layers[-2].output)(x).numpy()
    centers = head.centers.numpy()
    ref = harmonic_logits_numpy(hidden, centers, ht.default_eta(D, "cosine"), distance="cosine")
    np.testing.assert_allclose(model.predict(x, verbose=0), ref, rtol=1e-4, atol=1e-4)
    lse = np.log(np.exp(ref).sum(-1))
    loss = model.evaluate(x, y, batch_size=64, verbose=0)
    np.testing.assert_allclose(loss, np.mean(lse - ref[np.arange(64), y]), rtol=1e-5)
    model.save(tmp_path / "cos.keras")
    again = keras.saving.load_model(tmp_path / "cos.keras")
    assert again.harmonic_head.distance == "cosine"
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_exponent_anneal_ends_at_the_cosine_default():
    head = ht.HarmonicLMHead(5, eta="learned", eta_init=64.0, distance="cosine")
    head.build((None, 4))
    anneal = ht.ExponentAnneal(head, steps=1)
    for batch in range(2):
        anneal.on_train_batch_begin(batch)
    np.testing.assert_allclose(float(head.resolved_eta()), ht.default_eta(4, "cosine"), rtol=1e-6)
