"""Bad input fails loudly, naming the argument; out-of-range labels never pass silently."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import harmonic_tf as ht

X = tf.random.normal([6, 4])
W = tf.random.normal([10, 4])
Y = tf.constant([0, 1, 2, 3, 4, 5])


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(hidden_states=tf.random.normal([6])), ValueError, "hidden_states"),
        (dict(hidden_states=tf.random.normal([6, 5])), ValueError, "class_centers"),
        (dict(class_centers=tf.random.normal([10, 4, 1])), ValueError, "class_centers"),
        (dict(labels=tf.constant([0, 1, 2])), ValueError, "labels"),
        (dict(labels=tf.constant([0.0, 1, 2, 3, 4, 5])), TypeError, "labels"),
        (dict(hidden_states=tf.zeros([6, 4], tf.int32)), TypeError, "hidden_states"),
        (dict(eta=0.0), ValueError, "eta"),
        (dict(eta=-1.0), ValueError, "eta"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
    ],
)
def test_exact_loss_argument_errors(kwargs, error, pattern):
    args = dict(hidden_states=X, class_centers=W, labels=Y) | kwargs
    with pytest.raises(error, match=pattern):
        ht.harmonic_loss(**args)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (
            dict(options=ht.SampledOptions(k=10, negatives="per_example")),
            ValueError,
            r"`k` must be >= 1 and <= 9",
        ),
        (dict(options=ht.SampledOptions(sampler=ht.UniformSampler(11))), ValueError, "sampler"),
        (dict(options=dict(k=3)), TypeError, "options"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(sampled_ids=tf.constant([[1, 2]])), ValueError, "sampled_ids"),
        (dict(sampled_ids=tf.constant([1.0, 2.0, 3.0])), TypeError, "sampled_ids"),
        (dict(seed=tf.constant([1.0, 2.0])), ValueError, "seed"),
        (dict(eta=0.0), ValueError, "eta"),
    ],
)
def test_sampled_loss_argument_errors(kwargs, error, pattern):
    args = dict(options=ht.SampledOptions(k=3)) | kwargs
    with pytest.raises(error, match=pattern):
        ht.sampled_harmonic_loss(X, W, Y, **args)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(k=0, in_batch_negatives=0), ValueError, "`k`"),
        (dict(k=0, negatives="per_example"), ValueError, "`k`"),
        (dict(k=-1), ValueError, "`k`"),
        (dict(negatives="some"), ValueError, "negatives"),
        (dict(sampler="zipf"), ValueError, "sampler"),
        (dict(sampler=object()), ValueError, "sampler"),
        (dict(center_gradient="sparse"), ValueError, "center_gradient"),
        (dict(log_q_correction="true"), ValueError, "log_q_correction"),
        (dict(in_batch_negatives=-1), ValueError, "in_batch_negatives"),
        (dict(in_batch_negatives=2.5), TypeError, "in_batch_negatives"),
        (dict(in_batch_negatives=True), TypeError, "in_batch_negatives"),
        (dict(center_rows=0), ValueError, "center_rows"),
        (dict(center_rows=1.5), TypeError, "center_rows"),
        # No knob that is silently ignored: center rows only with center_gradient="rows".
        (dict(center_gradient="dense", center_rows=64), ValueError, "center_rows"),
        (dict(remove_accidental_hits=1), TypeError, "remove_accidental_hits"),
    ],
)
def test_sampled_options_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        ht.SampledOptions(**kwargs)


@pytest.mark.parametrize(
    "counts, pattern",
    [([1.0], "counts"), ([1.0, -1.0, 2.0], "counts"), ([[1.0, 2.0]], "counts"), ([0, 0], "zero")],
)
def test_unigram_counts_errors(counts, pattern):
    with pytest.raises(ValueError, match=pattern):
        ht.UnigramSampler(counts)


def test_unigram_counts_of_wrong_length():
    with pytest.raises(ValueError, match="sampler"):
        ht.sampled_harmonic_loss(X, W, Y, ht.SampledOptions(k=3, sampler=np.ones(9)))


BAD_LABELS = tf.constant([0, 1, 2, 3, 10, 5])


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda y: ht.harmonic_loss(X, W, y),
        lambda y: ht.harmonic_loss(X, W, y, chunk_size=3),
        lambda y: ht.sampled_harmonic_loss(X, W, y, ht.SampledOptions(k=3)),
        lambda y: ht.sampled_harmonic_loss(X, W, y, ht.SampledOptions.prototype(3)),
    ],
)
def test_out_of_range_labels(loss_fn):
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"labels. must be in \[0, V\) = \[0, 10\)"
    ):
        loss_fn(BAD_LABELS)
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels"):
        tf.function(loss_fn)(BAD_LABELS)
    # XLA drops asserts: the loss turns NaN instead of a clamped garbage row.
    step = tf.function(loss_fn, jit_compile=True)
    assert np.isnan(float(step(BAD_LABELS)))
    assert np.isfinite(float(step(tf.constant([0, 1, 2, 3, -100, 5]))))


def test_out_of_range_labels_poison_gradients_under_xla():
    w = tf.Variable(W)

    @tf.function(jit_compile=True)
    def grads(y):
        with tf.GradientTape() as tape:
            options = ht.SampledOptions(k=3, center_gradient="dense")
            loss = ht.sampled_harmonic_loss(X, w, y, options)
        return tape.gradient(loss, w)

    assert np.isnan(grads(BAD_LABELS).numpy()).any()
    assert np.isfinite(grads(Y).numpy()).all()


def test_out_of_range_sampled_ids():
    with pytest.raises(tf.errors.InvalidArgumentError, match="sampled_ids"):
        ht.sampled_harmonic_loss(
            X, W, Y, ht.SampledOptions(k=3), sampled_ids=tf.constant([1, 2, 10])
        )
    f = tf.function(
        lambda ids: ht.sampled_harmonic_loss(X, W, Y, ht.SampledOptions(k=3), sampled_ids=ids),
        jit_compile=True,
    )
    assert np.isnan(float(f(tf.constant([1, 2, 10]))))
    assert np.isfinite(float(f(tf.constant([1, 2, 9]))))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(sampled={"k": -1}), "`k`"),
        (dict(sampled={"center_gradient": "sparse"}), "center_gradient"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(reduction="avg"), "reduction"),
    ],
)
def test_keras_loss_rejects_bad_arguments_at_construction(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ht.HarmonicLoss(**kwargs)
    with pytest.raises(TypeError, match="sampled"):
        ht.HarmonicLoss(sampled=256)


def test_keras_loss_takes_no_head_and_head_needs_units():
    with pytest.raises(TypeError, match="`sampled` must be"):
        ht.HarmonicLoss(object())
    with pytest.raises(TypeError, match="no longer takes the head"):
        ht.HarmonicLoss("head")
    with pytest.raises(ValueError, match="evaluation_chunk_size"):
        ht.ExactOptions(evaluation_chunk_size=0)
    with pytest.raises(TypeError, match="`exact` must be"):
        ht.HarmonicLoss(exact=4096)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['chunk'\\]"):
        ht.HarmonicLoss(chunk=4096)
    with pytest.raises(ValueError, match="needs a `chunk_size`"):
        ht.ExactOptions(chunk_size=None, path="fused")
    with pytest.raises(ValueError, match="units"):
        ht.HarmonicLMHead()
    with pytest.raises(ValueError, match="output_mode"):
        ht.HarmonicLMHead(10, output_mode="argmax")


@pytest.mark.parametrize(
    "shape, error, pattern",
    [
        ((0, 1000, 64), ValueError, "`num_tokens` must be >= 1"),
        ((64, 0, 64), ValueError, "`vocab_size` must be >= 1"),
        ((64, 1000, 2.5), TypeError, "`dim` must be an int"),
    ],
)
def test_cost_model_names_a_bad_shape(shape, error, pattern):
    with pytest.raises(error, match=pattern):
        ht.SampledOptions().faster_than_exact(*shape)
    with pytest.raises(error, match=pattern):
        ht.HarmonicLoss(sampled=True).training_estimator(*shape)


def test_keras_loss_config_round_trip():
    options = ht.SampledOptions(k=4, sampler=ht.UnigramSampler(np.arange(1, 11)))
    exact = ht.ExactOptions(evaluation_chunk_size=64, path="two_pass")
    loss = ht.HarmonicLoss(sampled=options, exact=exact, seed=3)
    clone = ht.HarmonicLoss.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    assert clone.sampled.k == 4 and clone.seed == 3 and clone.exact == exact
    np.testing.assert_array_equal(clone.sampled.sampler.counts, np.arange(1, 11))
    assert clone.needs_sampling_step and not ht.HarmonicLoss(sampled=options).needs_sampling_step
    assert not ht.HarmonicLoss(seed=3).needs_sampling_step  # exact: no negatives to seed


def test_keras_loss_old_exact_arguments_still_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"exact=ht.ExactOptions"):
        old = ht.HarmonicLoss(chunk_size=512, evaluation_chunk_size=64, dense_max_bytes=0)
    assert old.exact == ht.ExactOptions(512, dense_max_bytes=0, evaluation_chunk_size=64)
    with pytest.raises(ValueError, match="not beside it"):
        ht.HarmonicLoss(exact=ht.ExactOptions(), chunk_size=512)
    # A config saved before ExactOptions (its fields at the top level) loads without a warning.
    saved = {"name": "harmonic_loss", "reduction": "sum_over_batch_size", "sampled": None}
    saved.update(chunk_size=None, evaluation_chunk_size=128, dense_max_bytes=7, seed=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = ht.HarmonicLoss.from_config(saved)
    assert loaded.exact == ht.ExactOptions(None, 7, evaluation_chunk_size=128)


def test_exact_options_config_round_trip():
    options = ht.ExactOptions(chunk_size=None, dense_max_bytes=0, path="dense")
    assert ht.ExactOptions.from_config(options.get_config()) == options
    assert options.replace(chunk_size=8).chunk_size == 8


@pytest.mark.parametrize(
    "options",
    [
        ht.SampledOptions(),
        ht.SampledOptions.tf_sampled_softmax(64),
        ht.SampledOptions.prototype(),
        ht.SampledOptions(k=0, in_batch_negatives="all", center_gradient="dense"),
    ],
)
def test_sampled_options_config_round_trip(options):
    clone = ht.SampledOptions.from_config(options.get_config())
    assert clone.get_config() == options.get_config()
    assert clone.replace() == clone


@pytest.mark.parametrize("training", [True, False])
def test_keras_loss_sample_weight_of_unknown_rank_is_named(training):
    # tf.data can hand over sample weights with no static rank: a clear error, not a TypeError
    # from deep inside the loss.
    inputs = keras.Input([6])
    head = ht.HarmonicLMHead(5, name="h")
    model = ht.HarmonicModel(inputs, head(keras.layers.Dense(4)(inputs)))
    model.compile(loss=ht.HarmonicLoss())
    x, y = tf.ones([8, 6]), tf.zeros([8])

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def call(sw):
        return model.compute_loss(x, y, sample_weight=sw, training=training)

    with pytest.raises(ValueError, match="`weights` must have a known rank"):
        call.get_concrete_function()


def test_keras_loss_sampled_true_means_the_defaults():
    loss = ht.HarmonicLoss(sampled=True)
    assert loss.sampled == ht.SampledOptions()
    assert ht.HarmonicLoss.from_config(loss.get_config()).sampled == loss.sampled
    assert ht.HarmonicLoss(sampled=False).sampled is None


def test_loss_from_logits_checks_labels_as_the_losses_do():
    # The one label check (inputs.checked_labels): ignored rows 0, an invalid one raises
    # eagerly and is NaN under XLA, valid ones are float64's log-sum-exp minus the true logit.
    z = np.random.default_rng(0).normal(size=(2, 3, 5))
    y = np.array([[1, -100, 4], [0, 2, 3]])
    got = ht.loss_from_logits(tf.constant(z, tf.float32), y).numpy()
    want = (
        np.log(np.exp(z).sum(-1)) - np.take_along_axis(z, np.maximum(y, 0)[..., None], -1)[..., 0]
    )
    np.testing.assert_allclose(got, np.where(y == -100, 0.0, want), rtol=1e-5)
    bad = np.array([[1, 5, 4], [0, 2, 3]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels. must be in \[0, V\) or"):
        ht.loss_from_logits(tf.constant(z, tf.float32), bad)
    xla = tf.function(ht.loss_from_logits, jit_compile=True)(tf.constant(z, tf.float32), bad)
    assert np.isnan(xla.numpy()[0, 1]) and np.all(np.isfinite(np.delete(xla.numpy(), 1)))
