"""``HarmonicLoss``: the Keras loss a :class:`~harmonic_tf.HarmonicModel` computes from hidden
states and its head's centers."""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from harmonic_tf.ops import DENSE_MAX_BYTES, LossTerms, SampledOptions, loss_terms
from harmonic_tf.ops import inputs as checks

REDUCTIONS = ("sum_over_batch_size", "mean", "sum")
# Vocabulary chunk of the exact loss in `evaluate`: [tokens, 4096] float32 blocks at most.
EVALUATION_CHUNK = 4096
# Vocabulary chunk of the exact training loss when the [tokens, V] block is over the budget.
TRAINING_CHUNK = 4096


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
      chunk_size: for the exact training loss: the vocabulary chunk once the ``[tokens, V]``
        float32 block is over ``dense_max_bytes`` (``None``: dense logits at any size).
      evaluation_chunk_size: vocabulary chunk of the exact loss in ``evaluate``.
      seed: ``None`` draws fresh negatives each step; an int gives a reproducible sequence.
      ignore_index: label value of tokens that contribute nothing.
      require_trainable_centers: raise if the centers would not be trained (a frozen head or
        tied embedding); set ``False`` to train against frozen centers on purpose.
      dense_max_bytes: the exact training loss keeps ``[tokens, V]`` logits up to this size
        (measured faster than chunks), see :func:`harmonic_loss`'s ``path="auto"``.

    The model calls :meth:`terms` (the batch's :class:`~harmonic_tf.ops.LossTerms`) and
    :meth:`reduce`; a custom training loop can do the same.

    Examples:
      >>> inputs = keras.Input([16])
      >>> model = HarmonicModel(inputs, HarmonicLMHead(10)(keras.layers.Dense(8)(inputs)))
      >>> model.compile("adam", loss=HarmonicLoss(sampled=SampledOptions(k=4)))
      >>> x, y = np.ones([32, 16], "float32"), np.arange(32) % 10
      >>> history = model.fit(x, y, epochs=2, verbose=0)  # sampled loss
      >>> print(len(history.history["loss"]), model.predict(x, verbose=0).shape)
      2 (32, 10)
    """

    def __init__(
        self,
        sampled: SampledOptions | bool | dict | None = None,
        chunk_size: int | None = TRAINING_CHUNK,
        evaluation_chunk_size: int = EVALUATION_CHUNK,
        seed: int | None = None,
        ignore_index: int | None = -100,
        require_trainable_centers: bool = True,
        dense_max_bytes: int = DENSE_MAX_BYTES,
        reduction: str = "sum_over_batch_size",
        name: str = "harmonic_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        checks.check_choice("reduction", reduction, REDUCTIONS)
        if chunk_size is not None:
            checks.check_int("chunk_size", chunk_size, 1)
        checks.check_int("evaluation_chunk_size", evaluation_chunk_size, 1)
        checks.check_int("dense_max_bytes", dense_max_bytes, 0)
        if seed is not None:
            checks.check_int("seed", seed, 0)
        self.sampled = _sampled_options(sampled)
        self.chunk_size = chunk_size
        self.evaluation_chunk_size = evaluation_chunk_size
        self.seed = seed
        self.ignore_index = ignore_index
        self.require_trainable_centers = require_trainable_centers
        self.dense_max_bytes = dense_max_bytes

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
        values. ``step``: the sampling step that seeds a seeded sampled loss."""
        if training and self.require_trainable_centers and not head.centers_trainable:
            raise ValueError(
                f"The centers of {head.name!r} ({head.centers_variable.path}) are not "
                "trainable, so training with HarmonicLoss would silently leave them unchanged. "
                "Unfreeze the head (or the tied embedding), or pass "
                "require_trainable_centers=False to train against frozen centers on purpose."
            )
        if training and not self.require_trainable_centers and head.frozen_when_saved:
            if head.centers_trainable:
                warnings.warn(
                    f"The centers of {head.name!r} were frozen when this model was saved and "
                    "are trainable now (a reload drops keras-hub's LoRA freeze): training "
                    "will move them. Freeze them again (`embedding.trainable = False`, or "
                    "`backbone.enable_lora(rank)` after loading) if that is not meant.",
                    stacklevel=2,
                )
        chunk = self.chunk_size if training else self.evaluation_chunk_size
        return loss_terms(
            hidden, head.centers, labels, eta=head.resolved_eta(), eps=head.eps,
            ignore_index=self.ignore_index, weights=sample_weight,
            sampled=self.sampled if training else None, seed=self.seed_for(step),
            chunk_size=chunk, dense_max_bytes=self.dense_max_bytes, per_token=not training,
        )  # fmt: skip

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

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "reduction": self.reduction,
            "sampled": None if self.sampled is None else self.sampled.get_config(),
            "chunk_size": self.chunk_size,
            "evaluation_chunk_size": self.evaluation_chunk_size,
            "seed": self.seed,
            "ignore_index": self.ignore_index,
            "require_trainable_centers": self.require_trainable_centers,
            "dense_max_bytes": self.dense_max_bytes,
        }
