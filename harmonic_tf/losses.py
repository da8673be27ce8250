"""``HarmonicLoss``: the Keras loss for a model ending in a :class:`HarmonicLMHead`."""

from __future__ import annotations

import keras
import tensorflow as tf

from harmonic_tf import _inputs, _trace
from harmonic_tf.exact import harmonic_loss
from harmonic_tf.options import SampledOptions
from harmonic_tf.sampled import sampled_harmonic_loss

REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "none", None)


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


def exact_loss_from_logits(logits, labels, ignore_index):
    """Per-token ``logsumexp(z) - z_y`` from full logits (evaluation path), 0 where ignored."""
    logits = tf.cast(logits, tf.float32)
    ignored = _inputs.ignored_mask(labels, ignore_index)
    safe = tf.where(ignored, tf.zeros_like(labels), labels)
    vocab = tf.shape(logits)[-1]
    invalid = tf.logical_and(tf.logical_not(ignored), tf.logical_or(safe < 0, safe >= vocab))
    if not _inputs.inside_xla():
        tf.debugging.assert_equal(
            tf.reduce_any(invalid), False, message=f"`labels` must be in [0, V) or {ignore_index}"
        )
    clipped = tf.clip_by_value(safe, 0, vocab - 1)
    true = tf.gather(logits, clipped, batch_dims=labels.shape.rank)
    # softplus(lse over the other classes - z_y): no cancellation when the loss is tiny.
    others = tf.where(
        tf.one_hot(clipped, vocab, on_value=True, off_value=False), -float("inf"), logits
    )
    losses = tf.math.softplus(tf.reduce_logsumexp(others, axis=-1) - true)
    losses = tf.where(invalid, float("nan"), losses)
    return tf.where(ignored, tf.zeros_like(losses), losses), ignored


def _in_keras_symbolic_build() -> bool:
    try:  # Keras 3's scope for tracing state-building calls (compute_output_spec)
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope
    except ImportError:
        return False
    return in_symbolic_scope()


def weighted(losses: tf.Tensor, sample_weight) -> tf.Tensor:
    """Per-token ``losses`` times Keras sample weights (``[B]`` per sequence, ``[B, S]`` per
    token, or ``[B, 1]``)."""
    if sample_weight is None:
        return losses
    shape = tf.shape(losses)
    return losses * tf.reshape(_inputs.flat_weights(sample_weight, shape, losses.shape.rank), shape)


def per_replica(total: tf.Tensor) -> tf.Tensor:
    """As Keras's own losses do: replicas' gradients are summed, and the reported loss is
    multiplied back by the replica count."""
    return total / tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="harmonic_tf")
class HarmonicLoss(keras.losses.Loss):
    """Harmonic loss for ``model.compile(loss=...)``: exact, or sampled in training.

    Bound to a :class:`HarmonicLMHead` (the layer, or its name after a reload). In training the
    head hands over hidden states and this loss runs :func:`harmonic_loss` (exact, optionally
    chunked) or :func:`sampled_harmonic_loss` on the head's centers; in ``evaluate`` the head
    returns full logits and this loss is always the **exact** harmonic loss, comparable across
    estimators and with cross-entropy.

    Shapes: ``y_true`` ``[B]`` or ``[B, S]`` class ids (Keras passes them as float32; they are
    rounded back), ``y_pred`` the head's output. Reduction ``"sum_over_batch_size"`` (= ``"mean"``)
    is the (sample-weighted) sum over the count of non-ignored tokens.

    Args:
      head: the ``HarmonicLMHead`` layer (or its name). ``None``: the only head in the model.
      sampled: ``None`` for the exact loss; a :class:`SampledOptions` (or ``True`` for the
        measured defaults) for the sampled loss in training.
      chunk_size: for the exact training loss: vocabulary chunk (``None``: dense logits).
      seed: ``None`` draws fresh negatives each step; an int gives a reproducible sequence.
      ignore_index: label value of tokens that contribute nothing.
      require_trainable_centers: raise if the centers would not be trained (frozen head, or a
        head the model never called); set ``False`` to train against frozen centers on purpose.

    Example:
    >>> inputs = keras.Input([16])
    >>> head = HarmonicLMHead(10)
    >>> model = keras.Model(inputs, head(keras.layers.Dense(8)(inputs)))
    >>> model.compile("adam", loss=HarmonicLoss(head, sampled=SampledOptions(k=4)))
    >>> x, y = np.ones([32, 16], "float32"), np.arange(32) % 10
    >>> history = model.fit(x, y, epochs=2, verbose=0)  # sampled loss
    >>> print(len(history.history["loss"]), model.predict(x, verbose=0).shape)
    2 (32, 10)
    """

    def __init__(
        self,
        head=None,
        sampled: SampledOptions | bool | dict | None = None,
        chunk_size: int | None = None,
        seed: int | None = None,
        ignore_index: int | None = -100,
        require_trainable_centers: bool = True,
        reduction: str | None = "sum_over_batch_size",
        name: str = "harmonic_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        _inputs.check_choice("reduction", reduction, REDUCTIONS)
        if chunk_size is not None:
            _inputs.check_int("chunk_size", chunk_size, 1)
        if sampled is True:
            sampled = SampledOptions()
        elif sampled is False:
            sampled = None
        elif isinstance(sampled, dict):
            sampled = SampledOptions.from_config(sampled)
        if sampled is not None and not isinstance(sampled, SampledOptions):
            raise TypeError(
                f"`sampled` must be None, True or a harmonic_tf.SampledOptions, got {sampled!r}."
            )
        self.sampled = sampled
        self.chunk_size = chunk_size
        self.seed = seed
        self.ignore_index = ignore_index
        self.require_trainable_centers = require_trainable_centers
        self._head = None
        self.head_name = head
        if head is None:
            raise ValueError("HarmonicLoss needs `head`: the HarmonicLMHead layer, or its name.")
        if not isinstance(head, str):
            self.bind(head)

    def bind(self, head) -> HarmonicLoss:
        """Uses ``head``'s centers; the head switches to handing over hidden states in training."""
        from harmonic_tf.layers import HarmonicLMHead

        if not isinstance(head, HarmonicLMHead):
            raise TypeError(f"`head` must be a HarmonicLMHead (or its name), got {head!r}.")
        head.training_output = "hidden_states"
        self._head = head
        self.head_name = head.name
        return self

    def _resolve_head(self):
        """The bound head as called in this step: after a reload only its name is known."""
        head, kind = _trace.lookup(self.head_name)
        if head is None:
            raise ValueError(
                f"HarmonicLoss: the head {self.head_name!r} was not called in this step. The "
                "loss must be used with the model whose output is that HarmonicLMHead."
            )
        if head.training_output != "hidden_states":
            raise ValueError(
                f"HarmonicLoss: head {head.name!r} returns logits in training; bind the loss to "
                "the layer object (HarmonicLoss(head, ...)) so the head hands over hidden states."
            )
        self._head = head
        return head, kind

    def _check_trainable(self, head) -> None:
        centers = head.centers
        owner = head.tied_embedding or head
        if self.require_trainable_centers and not (
            centers.trainable and owner.trainable and head.trainable
        ):
            raise ValueError(
                f"The centers of {head.name!r} ({centers.path}) are not trainable, so training "
                "with HarmonicLoss would silently leave them unchanged. Unfreeze the head (or the "
                "tied embedding), or pass require_trainable_centers=False to train against "
                "frozen centers on purpose."
            )

    def next_seed(self, head):
        """``[seed, step]`` with the head's sampling-step counter: the sequence of negatives is
        reproducible and, since the counter is a weight of the model, survives checkpoints."""
        if self.seed is None:
            return None
        step = head.next_sampling_step()
        seed = tf.stack([tf.constant(self.seed, tf.int64), step])
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            # Replicas must draw different negatives from one seed.
            seed = tf.random.experimental.stateless_fold_in(
                seed, ctx.replica_id_in_sync_group, alg="philox"
            )
        return seed

    def __call__(self, y_true, y_pred, sample_weight=None):
        if _in_keras_symbolic_build():
            # Keras traces the loss alone in a scratch graph to build its state; only the
            # output spec matters there, and the head ran in another scratch graph.
            return tf.zeros([], tf.float32)
        with tf.name_scope(self.name):
            head, kind = self._resolve_head()
            labels = labels_from_keras(y_true, y_pred.shape.rank, head.units)
            if kind == "hidden_states":
                self._check_trainable(head)
                return self._training_loss(head, labels, y_pred, sample_weight)
            logits = y_pred
            if head.output_mode == "probabilities":
                logits = tf.math.log(tf.maximum(tf.cast(y_pred, tf.float32), 1e-38))
            losses, ignored = exact_loss_from_logits(logits, labels, self.ignore_index)
            return self._reduce(losses, ignored, sample_weight)

    def _training_loss(self, head, labels, hidden, sample_weight):
        """The exact (optionally chunked, fused) or sampled loss on the head's centers."""
        reduction = {"none": "none", None: "none", "sum": "sum"}.get(self.reduction, "mean")
        common = dict(
            eta=head.resolved_eta(),
            eps=head.eps,
            reduction=reduction,
            ignore_index=self.ignore_index,
            weights=sample_weight,
        )
        if self.sampled is None:
            loss = harmonic_loss(hidden, head.centers, labels, chunk_size=self.chunk_size, **common)
        else:
            seed = self.next_seed(head)
            loss = sampled_harmonic_loss(
                hidden, head.centers, labels, self.sampled, seed=seed, **common
            )
        return loss if reduction == "none" else per_replica(loss)

    def _reduce(self, losses, ignored, sample_weight):
        losses = weighted(tf.cast(losses, tf.float32), sample_weight)
        if self.reduction in ("none", None):
            return losses
        total = tf.reduce_sum(losses)
        if self.reduction != "sum":
            count = tf.reduce_sum(tf.cast(tf.logical_not(ignored), tf.float32))
            total = tf.math.divide_no_nan(total, count)
        return per_replica(total)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "reduction": self.reduction,
            "head": self.head_name,
            "sampled": None if self.sampled is None else self.sampled.get_config(),
            "chunk_size": self.chunk_size,
            "seed": self.seed,
            "ignore_index": self.ignore_index,
            "require_trainable_centers": self.require_trainable_centers,
        }
