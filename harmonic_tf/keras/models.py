"""Models that hand hidden states to :class:`~harmonic_tf.HarmonicLoss`.

The model, not the head or the loss, knows where the hidden states are: ``model(x)`` always
returns what ``model.output_shape`` says (the head's logits or probabilities), while training,
``evaluate`` and ``compute_loss`` under a compiled ``HarmonicLoss`` run the model up to the
head and give the loss the hidden states and the head, so no ``[tokens, V]`` logits are built.
Compiled with any other loss, the model trains on its logits like any Keras model.
"""

from __future__ import annotations

import dataclasses
import warnings

import keras
import tensorflow as tf

from harmonic_tf.keras import _compat
from harmonic_tf.keras.layers import HarmonicLMHead
from harmonic_tf.keras.losses import HarmonicLoss, labels_from_keras
from harmonic_tf.keras.metrics import HarmonicMetric, HarmonicStep


@dataclasses.dataclass(frozen=True)
class _Route:
    """The head and the model up to it; a plain object, so Keras neither tracks nor saves it
    (the layers are the model's own)."""

    head: HarmonicLMHead
    hidden_model: keras.Model | None = None


class HarmonicTraining:
    """Mixin for a ``keras.Model`` whose output is ``harmonic_head(hidden_states(x))``.

    Overrides the hooks Keras provides for this (``compile``, ``train_step``, ``test_step``,
    ``compute_loss``, ``metrics``) so that a compiled :class:`HarmonicLoss` gets hidden states;
    :class:`HarmonicModel` and :class:`harmonic_tf.keras.hub.HarmonicCausalLM` are built on it.
    Subclasses provide the ``harmonic_head`` property and ``hidden_states(x, training)``.
    """

    @property
    def harmonic_head(self) -> HarmonicLMHead:
        route = getattr(self, "_harmonic_route", None)
        if route is None:
            raise NotImplementedError(
                f"{type(self).__name__} must define the `harmonic_head` property and "
                "`hidden_states(x, training)`, or be built functionally with a HarmonicLMHead "
                "output."
            )
        return route.head

    def hidden_states(self, x, training: bool = False) -> tf.Tensor:
        """The ``[..., D]`` hidden states the head reads for inputs ``x``."""
        route = getattr(self, "_harmonic_route", None)
        if route is None or route.hidden_model is None:
            raise NotImplementedError(
                f"{type(self).__name__} must define `hidden_states(x, training)`."
            )
        return route.hidden_model(x, training=training)

    def _route_to(self, head: HarmonicLMHead, hidden_model: keras.Model | None = None) -> None:
        if not isinstance(head, HarmonicLMHead):
            raise TypeError(f"The harmonic head must be a HarmonicLMHead, got {head!r}.")
        object.__setattr__(self, "_harmonic_route", _Route(head, hidden_model))

    def calibrate_eta(self, x, y, sample_weight=None, factors=None) -> float:
        """The head's :meth:`~HarmonicLMHead.calibrate_eta` on the hidden states of one batch
        ``x`` (labels ``y``, ``-100`` ignored; optional ``sample_weight``), then the compiled
        steps are rebuilt (they hold the exponent). Call it after building a harmonic model on
        a cross-entropy checkpoint and before fine-tuning: the exponent at which its centers
        read that checkpoint best (docs/keras-hub.md, "From a cross-entropy checkpoint")."""
        head = self.harmonic_head
        hidden = self.hidden_states(x, training=False)
        labels = labels_from_keras(y, hidden.shape.rank, head.units)
        weights = None if sample_weight is None else tf.convert_to_tensor(sample_weight)
        eta = head.calibrate_eta(hidden, labels, weights, factors)
        for name in ("train_function", "test_function", "predict_function", "generate_function"):
            if getattr(self, name, None) is not None:
                setattr(self, name, None)
        return eta

    @property
    def harmonic_loss(self) -> HarmonicLoss | None:
        """The compiled :class:`HarmonicLoss`, or ``None`` (another loss, or not compiled)."""
        loss = getattr(self, "loss", None)
        return loss if isinstance(loss, HarmonicLoss) else None

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, weighted_metrics=None, **kw):
        """``keras.Model.compile``. With a :class:`HarmonicLoss`, :class:`HarmonicAccuracy` and
        :class:`HarmonicPerplexity` are computed from hidden states (chunked); any other metric
        reads the head's output, which the step then builds (``[tokens, V]``)."""
        if not isinstance(loss, HarmonicLoss):
            object.__setattr__(self, "_harmonic_metrics", ())
            return super().compile(
                optimizer=optimizer, loss=loss, metrics=metrics, weighted_metrics=weighted_metrics,
                **kw,
            )  # fmt: skip
        if kw.get("loss_weights") is not None:
            raise ValueError("`loss_weights` has no meaning for a single HarmonicLoss.")
        stock, harmonic = _split_metrics(metrics, loss, weighted=False)
        stock_weighted, harmonic_weighted = _split_metrics(weighted_metrics, loss, weighted=True)
        super().compile(
            optimizer=optimizer, loss=None, metrics=stock, weighted_metrics=stock_weighted, **kw
        )  # loss=None: computed by this model from hidden states, never by Keras on the output
        self.loss = loss
        object.__setattr__(self, "_harmonic_metrics", tuple(harmonic + harmonic_weighted))
        _compat.set_compile_config(
            self, loss=loss, metrics=metrics, weighted_metrics=weighted_metrics
        )

    def compile_from_config(self, config):
        # Keras skips models that override `compile`; this one restores its own settings.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        if self.harmonic_loss is None:  # re-compiled with another loss, even by a base class
            return super().metrics
        return super().metrics + [metric for metric, _ in self._harmonic_metrics]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras's hook; under a :class:`HarmonicLoss` the loss of the hidden states of ``x``
        (``y_pred`` is not used), e.g. in a ``GradientTape`` loop."""
        if self.harmonic_loss is None:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        return self._harmonic_step(x, y, sample_weight, training)[0]

    def train_step(self, data):
        if self.harmonic_loss is None:
            return super().train_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            loss, step = self._harmonic_step(x, y, sample_weight, training=True)
            self._track_loss(loss, x)
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)
        if self.trainable_weights:
            weights = self.trainable_weights
            self.optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))
        else:
            warnings.warn("The model does not have any trainable weights.", stacklevel=2)
        return self._harmonic_logs(step, y, sample_weight)

    def test_step(self, data):
        if self.harmonic_loss is None:
            return super().test_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        loss, step = self._harmonic_step(x, y, sample_weight, training=False)
        self._track_loss(loss, x)
        return self._harmonic_logs(step, y, sample_weight)

    def _harmonic_step(self, x, y, sample_weight, training: bool):
        """``(loss, HarmonicStep)``: the reduced loss (per replica, with the model's
        regularization losses) and what the harmonic metrics read."""
        head, loss_fn = self.harmonic_head, self.harmonic_loss
        hidden = self.hidden_states(x, training=training)
        if not head.built:  # a subclassed model's first step: no call has built it yet
            head.build(hidden.shape)
        labels = labels_from_keras(y, hidden.shape.rank, head.units)
        seeded = training and loss_fn.needs_sampling_step
        sampling_step = head.next_sampling_step() if seeded else None
        terms = loss_fn.terms(head, hidden, labels, sample_weight, training, sampling_step)
        loss = loss_fn.reduce(terms)
        for extra in self.losses:  # regularizers and add_loss, as Keras's compute_loss adds them
            loss += tf.reduce_sum(tf.cast(extra, loss.dtype))
        chunk = loss_fn.evaluation_chunk_size  # the metrics chunk as evaluate's loss does
        return loss, HarmonicStep(
            terms, hidden, labels, sample_weight, training, head.centers, chunk
        )

    def _track_loss(self, loss, x) -> None:
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        batch = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
        _compat.track_loss(self, loss * replicas, batch)

    def _harmonic_logs(self, step: HarmonicStep, y, sample_weight) -> dict:
        """Updates the metrics and returns their results; a harmonic metric the step cannot
        give exactly (accuracy in training, perplexity under the sampled loss) is left out of
        the logs rather than shown stale or NaN."""
        stock = _compat.compiled_metrics(self)
        if stock is not None:  # stock metrics read the model's output
            stock.update_state(y, self.harmonic_head(step.hidden), sample_weight)
        unshown = {
            id(metric)
            for metric, weighted in self._harmonic_metrics
            if not metric.update_from_step(step, weighted)
        }
        logs = {}
        for metric in self.metrics:
            if id(metric) in unshown:
                continue
            result = metric.result()
            logs.update(result if isinstance(result, dict) else {metric.name: result})
        return logs


def _split_metrics(metrics, loss: HarmonicLoss, weighted: bool):
    """``(stock metrics or None, [(harmonic metric, weighted)])`` from a ``compile`` list."""
    if metrics is None or isinstance(metrics, dict):
        return metrics, []
    if not isinstance(metrics, (list, tuple)):
        metrics = [metrics]
    stock, harmonic = [], []
    for metric in metrics:
        if isinstance(metric, HarmonicMetric):
            if metric.ignore_index != loss.ignore_index:
                raise ValueError(
                    f"Metric {metric.name!r} has ignore_index={metric.ignore_index} but the "
                    f"HarmonicLoss has ignore_index={loss.ignore_index}; they must skip the same "
                    "tokens."
                )
            harmonic.append((metric, weighted))
        else:
            stock.append(metric)
    return stock or None, harmonic


@keras.saving.register_keras_serializable(package="harmonic_tf")
class HarmonicModel(HarmonicTraining, keras.Model):
    """A ``keras.Model`` whose output is a :class:`HarmonicLMHead`, trained from hidden states.

    Build it like a functional model: ``HarmonicModel(inputs, head(hidden))``. ``model(x)`` and
    ``predict`` return the head's output; with ``compile(loss=HarmonicLoss(...))``, ``fit``
    runs the model up to the head and the exact (chunked) or sampled loss on its hidden states,
    and ``evaluate`` the exact chunked loss; with any other loss it trains on the output like a
    plain ``keras.Model``. A subclassed model uses the mixin instead,
    ``class MyModel(ht.HarmonicTraining, keras.Model)`` (Keras turns ``HarmonicModel`` itself
    into a ``Functional`` subclass once it is built functionally), defines ``harmonic_head`` (a
    property) and ``hidden_states(x, training)``, and returns ``harmonic_head(hidden_states(x))``
    from ``call``.

    Examples:
      >>> inputs = keras.Input([16])
      >>> head = HarmonicLMHead(10)
      >>> model = HarmonicModel(inputs, head(keras.layers.Dense(8)(inputs)))
      >>> model.compile("adam", loss=HarmonicLoss(), metrics=[HarmonicAccuracy()])
      >>> print(model.output_shape, model.harmonic_head is head)
      (None, 10) True
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not args and "outputs" not in kwargs:
            raise TypeError(
                "HarmonicModel is built functionally: HarmonicModel(inputs, head(hidden)). For a "
                "subclassed model use the mixin: class MyModel(ht.HarmonicTraining, keras.Model)."
            )
        if len(keras.tree.flatten(self.outputs)) != 1:
            raise ValueError(f"HarmonicModel needs one output, got {len(self.outputs)}.")
        head, hidden = _compat.output_layer(self)
        if not isinstance(head, HarmonicLMHead):
            raise ValueError(
                "HarmonicModel's output must be a HarmonicLMHead's output, got the output of "
                f"{head.name!r} ({type(head).__name__})."
            )
        self._route_to(head, keras.Model(self.input, hidden, name=f"{self.name}_hidden_states"))
