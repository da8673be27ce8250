"""A learned exponent: ``dL/deta`` of every path against float64 autodiff and finite differences,
eagerly, in graph mode and under XLA; ``HarmonicLMHead(eta="learned")`` in Keras workflows."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import harmonic_tf as ht

from conftest import PLAIN, maybe_jit
from reference import harmax_autodiff, harmax_numpy, log_q_numpy, sampled_reference

MODES = ["eager", "graph", "xla"]
EXACT_PATHS = ["dense", "two_pass", "fused"]


def _problem(seed=0, n=40, d=8, v=53):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(v, d)).astype(np.float32)
    y = rng.integers(0, v, n)
    y[::9] = -100
    return x, w, y


def _exact(path):
    def loss(x, w, y, eta):
        if path == "dense":
            return ht.harmonic_loss(x, w, y, eta=eta)
        return ht.harmonic_loss(x, w, y, eta=eta, chunk_size=16, path=path)

    return loss


def _grads(fn, x, w, y, eta, mode):
    def run(xt, wt, eta_t):
        with tf.GradientTape() as tape:
            tape.watch([xt, wt, eta_t])
            loss = fn(xt, wt, tf.constant(y), eta_t)
        gx, gw, g_eta = tape.gradient(loss, [xt, wt, eta_t])
        return loss, gx, tf.convert_to_tensor(gw), g_eta

    out = maybe_jit(run, mode)(tf.constant(x), tf.constant(w), tf.constant(eta, tf.float32))
    return [t.numpy() for t in out]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", EXACT_PATHS)
@pytest.mark.parametrize("eta", [3.0, 16.0, 64.0])
def test_exact_eta_gradient_matches_autodiff(path, mode, eta):
    x, w, y = _problem()
    loss, gx, gw, g_eta = _grads(_exact(path), x, w, y, eta, mode)
    ref = harmax_autodiff(x, w, y, eta)
    np.testing.assert_allclose(loss, ref[0], rtol=1e-5)
    np.testing.assert_allclose(gx, ref[1], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(gw, ref[2], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(g_eta, ref[3], rtol=1e-4, atol=1e-6)


def test_eta_gradient_matches_finite_differences_of_numpy_harmax():
    # Independent of TensorFlow autodiff: central differences of the float64 NumPy HarMax.
    x, w, y = _problem(seed=3, n=12, v=9)
    eta, h = 7.0, 1e-5
    numeric = (harmax_numpy(x, w, y, eta + h)[0] - harmax_numpy(x, w, y, eta - h)[0]) / (2 * h)
    for path in EXACT_PATHS:
        g_eta = _grads(_exact(path), x, w, y, eta, "eager")[3]
        np.testing.assert_allclose(g_eta, numeric, rtol=1e-4, err_msg=path)


SAMPLED_CASES = ["shared", "per_example", "in_batch", "center_rows"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", SAMPLED_CASES)
def test_sampled_eta_gradient_matches_autodiff(case, mode):
    x, w, y = _problem(seed=1)
    n, v = len(y), w.shape[0]
    rng = np.random.default_rng(7)
    per_example = case == "per_example"
    ids = rng.integers(0, v, (n, 6) if per_example else 12)
    options = PLAIN.replace(k=ids.shape[-1], negatives="per_example" if per_example else "shared")
    in_batch = None
    if case == "in_batch":
        options = options.replace(in_batch_negatives="all")
        in_batch = list(dict.fromkeys(int(t) for t in y if t != -100))
    if case == "center_rows":  # moves the centers' gradient, not eta's
        options = options.replace(center_gradient="rows", center_rows=16)

    def fn(xt, wt, yt, eta_t):
        return ht.sampled_harmonic_loss(xt, wt, yt, options, eta=eta_t, sampled_ids=ids, seed=5)

    eta = 12.0
    loss, gx, _, g_eta = _grads(fn, x, w, y, eta, mode)
    ref = sampled_reference(
        x,
        w,
        y,
        eta,
        per_example_ids=ids if per_example else None,
        shared_ids=None if per_example else ids,
        in_batch_ids=in_batch,
        log_q=log_q_numpy("uniform", v),
        with_eta_grad=True,
    )
    np.testing.assert_allclose(loss, ref[0], rtol=1e-5)
    np.testing.assert_allclose(gx, ref[1], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(g_eta, ref[3], rtol=1e-4, atol=1e-6)


def test_eta_as_variable_and_keras_variable():
    x, w, y = _problem()
    for eta in (tf.Variable(9.0), keras.Variable(9.0)):
        with tf.GradientTape() as tape:
            loss = ht.harmonic_loss(x, w, y, eta=eta)
        assert tape.gradient(loss, eta) is not None
        np.testing.assert_allclose(float(loss), float(ht.harmonic_loss(x, w, y, eta=9.0)))
    logits = ht.harmonic_logits(x, w, eta=tf.constant(9.0))
    np.testing.assert_allclose(logits, ht.harmonic_logits(x, w, eta=9.0))


@pytest.mark.parametrize(
    "eta, error",
    [
        (tf.constant([1.0, 2.0]), ValueError),
        (tf.constant(3), ValueError),
        ("sharp", TypeError),
        (True, TypeError),
    ],
)
def test_bad_eta_is_named(eta, error):
    x, w, y = _problem()
    with pytest.raises(error, match="eta"):
        ht.harmonic_loss(x, w, y, eta=eta)


def test_non_positive_eta_tensor_fails_eagerly():
    x, w, y = _problem()
    with pytest.raises(tf.errors.InvalidArgumentError, match="eta"):
        ht.harmonic_loss(x, w, y, eta=tf.constant(-1.0))


def _classifier(head_kwargs, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input([6])
    head = ht.HarmonicLMHead(5, eta="learned", name="head", **head_kwargs)
    model = ht.HarmonicModel(inputs, head(keras.layers.Dense(8, name="body")(inputs)))
    return model, head


def _blobs(n=256, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    x = rng.normal(size=(n, 6)).astype(np.float32) + 3.0 * np.eye(5, 6)[y]
    return x, y.astype(np.int32)


@pytest.mark.parametrize(
    "loss_kwargs",
    [
        {},
        {"exact": ht.ExactOptions(chunk_size=2, dense_max_bytes=0)},
        {"sampled": PLAIN.replace(k=2)},
        {"sampled": ht.SampledOptions(k=2, center_rows=8)},
    ],
    ids=["exact", "chunked", "sampled", "sampled_center_rows"],
)
def test_learned_eta_trains_through_fit_and_reloads(loss_kwargs, tmp_path):
    model, head = _classifier({})
    assert head.log_eta.trainable
    start = float(head.resolved_eta())
    np.testing.assert_allclose(start, ht.default_eta(8), rtol=1e-6)
    model.compile(
        keras.optimizers.Adam(0.05), loss=ht.HarmonicLoss(**loss_kwargs), jit_compile=True
    )
    x, y = _blobs()
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    learned = float(head.resolved_eta())
    assert learned != pytest.approx(start, rel=1e-3)  # eta moved
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    loaded_head = loaded.get_layer("head")
    assert loaded_head.get_config()["eta"] == "learned"
    np.testing.assert_allclose(float(loaded_head.resolved_eta()), learned, rtol=1e-6)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    loaded.fit(x, y, batch_size=64, epochs=1, verbose=0)  # training continues: eta moves on
    assert float(loaded_head.resolved_eta()) != pytest.approx(learned, rel=1e-4)


def test_learned_eta_gradient_is_chain_rule_through_log_eta():
    model, head = _classifier({})
    x, y = _blobs(32)
    model.compile(loss=ht.HarmonicLoss())
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x, y, training=True)
    g_log_eta = tape.gradient(loss, head.log_eta)
    hidden = model.get_layer("body")(x)
    eta = float(head.resolved_eta())
    ref = harmax_autodiff(hidden.numpy(), head.centers.numpy(), y, eta)
    # float32 against float64 at the default (sharp) exponent 2D = 16.
    np.testing.assert_allclose(float(g_log_eta), ref[3] * eta, rtol=1e-3)


def test_learned_eta_checkpoint_round_trip(tmp_path):
    model, head = _classifier({})
    head.log_eta.assign(np.log(3.0))
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    other, other_head = _classifier({}, seed=1)
    tf.train.Checkpoint(model=other).restore(path).assert_existing_objects_matched()
    np.testing.assert_allclose(float(other_head.resolved_eta()), 3.0, rtol=1e-6)


def test_head_rejects_unknown_eta_string():
    with pytest.raises(ValueError, match="learned"):
        ht.HarmonicLMHead(5, eta="learn")


@pytest.mark.parametrize("rate", [1.0, 20.0])
def test_eta_rate_multiplies_the_learned_exponents_adam_step(rate, tmp_path):
    model, head = _classifier({"eta_init": 3.0, "eta_rate": rate})
    np.testing.assert_allclose(float(head.resolved_eta()), 3.0, rtol=1e-6)
    lr = 1e-3
    model.compile(keras.optimizers.Adam(lr), loss=ht.HarmonicLoss())
    x, y = _blobs(64)
    model.train_on_batch(x, y)
    # Adam's first step moves the weight by lr (times the gradient's sign): log(eta) by rate * lr.
    moved = abs(np.log(float(head.resolved_eta())) - np.log(3.0))
    np.testing.assert_allclose(moved, rate * lr, rtol=1e-3)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded_head = keras.models.load_model(path).get_layer("head")
    assert loaded_head.eta_rate == rate
    np.testing.assert_allclose(float(loaded_head.resolved_eta()), float(head.resolved_eta()))


def test_eta_rate_needs_a_learned_exponent():
    with pytest.raises(ValueError, match="eta_rate"):
        ht.HarmonicLMHead(5, eta=4.0, eta_rate=10.0)
    with pytest.raises(ValueError, match="eta_rate"):
        ht.HarmonicLMHead(5, eta="learned", eta_rate=0.0)
