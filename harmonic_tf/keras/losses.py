"""``HarmonicLoss``: the Keras loss a :class:`~harmonic_tf.HarmonicModel` computes from hidden
states and its head's centers."""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from harmonic_tf.ops import ExactOptions, LossTerms, SampledOptions, loss_terms
from harmonic_tf.ops import inputs as checks

REDUCTIONS = ("sum_over_batch_size", "mean", "sum")
# HarmonicLoss's keyword arguments before ExactOptions: still accepted, with a warning.
LEGACY_EXACT = ("chunk_size", "evaluation_chunk_size", "dense_max_bytes")


def labels_from_keras(y_true, output_rank: int, num_classes: int | None = None) -> tf.Tensor:
    """Keras hands labels over as float32 (exact below 2**24): round them back to int32.
    A trailing axis of size 1 (``[B, 1]`` labels for ``[B, V]`` outputs of rank
    ``output_rank``) is squeezed."""
    y = tf.convert_to_tensor(y_true)
    if y.shape.rank == output_rank and y.shape[-1] == 1:
        y = tf.squeeze(y, -1)
    if num_classes is not None and num_classes >= 2**24 and y.dtype == tf.float32:
        raise ValueError(
            f"float32 labels cannot represent class ids >= 2**24 exactly (V = {num_classes}); "
            "feed int32 labels."
        )
    if y.dtype.is_floating:
        y = tf.cast(tf.round(y), tf.int32)
    return tf.cast(y, tf.int32)


def _exact_options(exact, legacy: dict) -> ExactOptions:
    """``HarmonicLoss``'s ``exact=`` (or its config), or the old keyword arguments."""
    unknown = sorted(set(legacy) - set(LEGACY_EXACT))
    if unknown:
        raise TypeError(f"HarmonicLoss got unexpected keyword arguments {unknown}.")
    if legacy:
        if exact is not None:
            raise ValueError(
                f"Pass {sorted(legacy)} inside `exact=ExactOptions(...)`, not beside it."
            )
        warnings.warn(
            f"HarmonicLoss({', '.join(f'{k}=...' for k in sorted(legacy))}) is deprecated: pass "
            "exact=ht.ExactOptions(...) with the same fields.",
            DeprecationWarning,
            stacklevel=3,
        )
        return ExactOptions(**legacy)
    if exact is None:
        return ExactOptions()
    if isinstance(exact, dict):
        return ExactOptions.from_config(exact)
    if not isinstance(exact, ExactOptions):
        raise TypeError(
            f"`exact` must be None, a harmonic_tf.ExactOptions or its config, got {exact!r}."
        )
    return exact


def _sampled_options(sampled) -> SampledOptions | None:
    if sampled is True:
        return SampledOptions()
    if sampled is None or sampled is False:
        return None
    if isinstance(sampled, dict):
        return SampledOptions.from_config(sampled)
    if isinstance(sampled, SampledOptions):
        return sampled
    hint = ""
    if isinstance(sampled, (keras.layers.Layer, str)):
        hint = (
            " HarmonicLoss no longer takes the head: build the model as "
            "ht.HarmonicModel(inputs, head(hidden)), which hands its head to the loss."
        )
    raise TypeError(
        "`sampled` must be None, True, a harmonic_tf.SampledOptions or its config, "
        f"got {sampled!r}.{hint}"
    )


@keras.saving.register_keras_serializable(package="harmonic_tf")
class HarmonicLoss(keras.losses.Loss):
    """Harmonic loss for ``model.compile(loss=...)`` on a model that routes hidden states.

    A :class:`~harmonic_tf.HarmonicModel` (or :class:`~harmonic_tf.hub.HarmonicCausalLM`)
    hands this loss the hidden states its :class:`HarmonicLMHead` reads, and the head: in
    training it runs :func:`harmonic_loss` (exact, optionally chunked) or
    :func:`sampled_harmonic_loss` on the head's centers; in ``evaluate`` always the **exact**
    loss, chunked by ``evaluation_chunk_size`` (no ``[tokens, V]`` logits at any ``V``),
    comparable across estimators and with cross-entropy. On a plain ``keras.Model``, whose loss
    sees only logits, it raises before the first step: there
    ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)`` of the harmonic logits
    *is* the exact harmonic loss.

    Shapes: labels ``[B]`` or ``[B, S]`` class ids (Keras passes them as float32; they are
    rounded back). Reduction ``"sum_over_batch_size"`` (= ``"mean"``) is the (sample-weighted)
    sum over the count of non-ignored tokens; ``"sum"`` the sum.

    Args:
      sampled: ``None`` for the exact loss; a :class:`SampledOptions` (``True`` for the
        measured defaults, or its config dict) for the sampled loss in training.
      exact: an :class:`ExactOptions` (or its config dict): the exact loss's chunking, in
        training and in ``evaluate``; default ``ExactOptions()``.
      seed: ``None`` draws fresh negatives each step; an int gives a reproducible sequence.
      ignore_index: label value of tokens that contribute nothing.
      require_trainable_centers: raise if the centers would not be trained (a frozen head or
        tied embedding); set ``False`` to train against frozen centers on purpose.
      exact_fallback: with ``sampled``, a training step whose token count is known when traced
        runs the exact loss where the sampled one would be slower
        (:meth:`SampledOptions.faster_than_exact`: its candidates cover most of ``V``); the
        exact loss has no sampling noise either. ``False``: always the sampled estimate.
      **legacy: ``chunk_size``, ``evaluation_chunk_size``, ``dense_max_bytes`` (before 0.3:
        now fields of ``exact``), accepted with a ``DeprecationWarning``.

    The model calls :meth:`terms` (the batch's :class:`~harmonic_tf.ops.LossTerms`) and
    :meth:`reduce`; a custom training loop can do the same.

    Examples:
      >>> inputs = keras.Input([16])
      >>> model = HarmonicModel(inputs, HarmonicLMHead(10)(keras.layers.Dense(8)(inputs)))
      >>> model.compile("adam", loss=HarmonicLoss(sampled=SampledOptions(k=4)))
      >>> x, y = np.ones([32, 16], "float32"), np.arange(32) % 10
      >>> history = model.fit(x, y, epochs=2, verbose=0)
      >>> print(len(history.history["loss"]), model.predict(x, verbose=0).shape)
      2 (32, 10)
      >>> print(model.loss.training_estimator(32, 10, 8))  # 10 classes: exact is faster
      None
      >>> print(model.loss.training_estimator(4096, 50257, 8).k)  # a vocabulary: sampled
      4
    """

    def __init__(
        self,
        sampled: SampledOptions | bool | dict | None = None,
        exact: ExactOptions | dict | None = None,
        *,
        seed: int | None = None,
        ignore_index: int | None = -100,
        require_trainable_centers: bool = True,
        exact_fallback: bool = True,
        reduction: str = "sum_over_batch_size",
        name: str = "harmonic_loss",
        dtype=None,
        **legacy,
    ):
        exact = _exact_options(exact, legacy)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        checks.check_choice("reduction", reduction, REDUCTIONS)
        if seed is not None:
            checks.check_int("seed", seed, 0)
        self.sampled = _sampled_options(sampled)
        self.exact = exact
        self.seed = seed
        self.ignore_index = ignore_index
        self.require_trainable_centers = require_trainable_centers
        if not isinstance(exact_fallback, bool):
            raise TypeError(f"`exact_fallback` must be a bool, got {exact_fallback!r}.")
        self.exact_fallback = exact_fallback

    @property
    def needs_sampling_step(self) -> bool:
        """Whether :meth:`terms` in training takes a ``step`` (the model's sampling counter):
        a seeded sampled loss draws its negatives from ``[seed, step]``."""
        return self.sampled is not None and self.seed is not None

    @property
    def evaluation_chunk_size(self) -> int:
        """The vocabulary chunk of the exact loss in evaluation: what the model's metrics and
        ``score`` chunk by too, so they never hold more than evaluation's loss does."""
        return self.exact.evaluation_chunk_size

    def call(self, y_true, y_pred):
        raise ValueError(
            "HarmonicLoss is computed from hidden states, which only the model can hand over: "
            "compile it on an ht.HarmonicModel (a functional model ending in a HarmonicLMHead: "
            "ht.HarmonicModel(inputs, head(hidden))) or an ht.hub.HarmonicCausalLM. On a plain "
            "keras.Model, keras.losses.SparseCategoricalCrossentropy(from_logits=True) of the "
            "harmonic logits is the exact harmonic loss."
        )

    def terms(self, head, hidden, labels, sample_weight=None, training=True, step=None):
        """The batch's :class:`~harmonic_tf.ops.LossTerms` for hidden states ``[..., D]`` read
        by ``head`` (a :class:`HarmonicLMHead`) and int ``labels`` ``[...]``: the training
        estimator, or, with ``training=False``, the exact chunked loss with its per-token
        values. ``step``: the sampling step that seeds a seeded sampled loss (see
        :attr:`needs_sampling_step`)."""
        if training:
            head.check_centers_for_training(self.require_trainable_centers)
        exact = self.exact
        chunk = exact.chunk_size if training else exact.evaluation_chunk_size
        sampled = None
        if training:
            sampled = self.training_estimator(hidden.shape[:-1].num_elements(), *head.centers.shape)
        return loss_terms(
            hidden, head.centers, labels, **head.measure(), ignore_index=self.ignore_index,
            weights=sample_weight, sampled=sampled, seed=self.seed_for(step),
            chunk_size=chunk, dense_max_bytes=exact.dense_max_bytes,
            path=exact.path if training else "auto", per_token=not training,
        )  # fmt: skip

    def training_estimator(
        self, num_tokens: int | None, vocab_size: int, dim: int
    ) -> SampledOptions | None:
        """What a training step over ``num_tokens`` tokens (``None``: not known when traced)
        and ``[vocab_size, dim]`` centers runs: the ``sampled`` estimator, or ``None`` for the
        exact loss (no ``sampled``, or :attr:`exact_fallback` where it is the faster one)."""
        sampled = self.sampled
        if sampled is None or not self.exact_fallback or num_tokens is None:
            return sampled
        return sampled if sampled.faster_than_exact(num_tokens, vocab_size, dim) else None

    def reduce(self, terms: LossTerms) -> tf.Tensor:
        """The loss from :meth:`terms`: the total over the count of non-ignored tokens (unless
        ``reduction="sum"``), divided by the replica count as Keras's own losses are (replicas'
        gradients are summed)."""
        total = terms.total
        if self.reduction != "sum":
            total = tf.math.divide_no_nan(total, terms.num_tokens)
        return total / tf.distribute.get_strategy().num_replicas_in_sync

    def seed_for(self, step) -> tf.Tensor | None:
        """``[seed, step]`` for the sampling step (a counter the model keeps as a weight, so
        the sequence of negatives is reproducible and survives checkpoints); ``None`` without
        a seed. Replicas fold in their id: they must draw different negatives."""
        if self.seed is None or step is None:
            return None
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            seed = tf.random.experimental.stateless_fold_in(
                seed, ctx.replica_id_in_sync_group, alg="philox"
            )
        return seed

    @classmethod
    def from_config(cls, config: dict) -> HarmonicLoss:
        # Files saved before ExactOptions hold its fields at the top level.
        legacy = {k: config.pop(k) for k in LEGACY_EXACT if k in config}
        if legacy:
            config["exact"] = ExactOptions(**legacy).get_config()
        return cls(**config)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "reduction": self.reduction,
            "sampled": None if self.sampled is None else self.sampled.get_config(),
            "exact": self.exact.get_config(),
            "seed": self.seed,
            "ignore_index": self.ignore_index,
            "require_trainable_centers": self.require_trainable_centers,
            "exact_fallback": self.exact_fallback,
        }
