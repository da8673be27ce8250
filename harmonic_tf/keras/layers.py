"""``HarmonicLMHead``: a Keras layer that owns (or ties) the class centers."""

from __future__ import annotations

import math
import warnings

import keras
import tensorflow as tf

from harmonic_tf.keras import _compat
from harmonic_tf.ops import (
    DEFAULT_CHUNK_SIZE,
    Confidence,
    Nearest,
    harmonic_confidence,
    harmonic_logits,
    harmonic_loss,
    nearest_k,
)
from harmonic_tf.ops import inputs as checks

OUTPUTS = ("logits", "probabilities")
LEARNED = "learned"


@keras.saving.register_keras_serializable(package="harmonic_tf")
class HarmonicLMHead(keras.layers.Layer):
    """Harmonic output layer: ``[..., D]`` hidden states -> ``[..., V]`` harmonic logits.

    The centers are a ``[V, D]`` matrix, one row per class, either owned by this layer or tied
    to a ``keras.layers.Embedding`` / ``keras.layers.ReversibleEmbedding`` (its ``embeddings``
    matrix, so an LM shares its token embedding; with ``tie_weights=False`` its separate output
    matrix ``reverse_embeddings``, transposed). Serves any classifier: a CIFAR-10 model ends in
    ``HarmonicLMHead(10)``.

    The layer always returns what ``compute_output_shape`` says (logits or probabilities). To
    train without ``[tokens, V]`` logits, build the model as :class:`~harmonic_tf.HarmonicModel`
    (or :class:`~harmonic_tf.hub.HarmonicCausalLM`): that model hands hidden states and this
    layer's centers to :class:`~harmonic_tf.HarmonicLoss`.

    Args:
      units: number of classes ``V`` (alias: ``vocab_size``); taken from the embedding if tied.
      eta: harmonic exponent on the distance: a number, ``None`` (the default rule of the
        distance, :func:`harmonic_tf.default_eta`), or ``"learned"``: a trainable scalar weight ``log_eta``
        (positive by construction, starting at ``eta_init``), trained by every loss path.
      eta_init: the learned exponent's start (``None``: the default rule); only with
        ``eta="learned"``.
      eta_rate: the learned exponent's own rate: the weight holds ``log(eta) / eta_rate``, so
        an optimizer step on it moves ``log(eta)`` ``eta_rate`` times as far (exactly so for
        Adam and other optimizers whose step does not depend on the gradient's scale;
        ``eta_rate**2`` times for SGD). ``log(eta)`` moves about ``lr`` per Adam step at the
        default 1; only with ``eta="learned"``.
      eps: added to squared distances before the log.
      distance: ``"euclidean"`` or ``"cosine"`` (hidden states and centers compared as unit
        vectors, ``d^2 = 2 - 2 cos``), on every path: logits, the exact and sampled losses,
        :meth:`nearest` and :meth:`confidence`.
      tied_embedding: an ``Embedding``/``ReversibleEmbedding`` layer whose matrix is the
        centers, or its name (resolved among the layers feeding this head, as after a reload).
        Its initializer sets the centers' initial scale, which decides how soon a small model
        generalizes: on the paper's toy tasks ``RandomUniform(+-1/sqrt(D))`` (PyTorch's) groks
        5x sooner than Keras's default ``+-0.05`` (``docs/interpretability.md``).
      centers_initializer, centers_regularizer, centers_constraint: for owned centers.
      output_mode: ``"logits"`` or ``"probabilities"`` (softmax of the logits).
      frozen_when_saved: set by :meth:`get_config`: the centers were not trainable when the
        model was saved (a reload that makes them trainable again, as keras-hub's LoRA does,
        then warns when training moves them).

    Examples:
      >>> inputs = keras.Input([32])
      >>> head = HarmonicLMHead(10)
      >>> model = keras.Model(inputs, head(keras.layers.Dense(16)(inputs)))
      >>> print(model.output_shape, head.centers.shape)
      (None, 10) (10, 16)
    """

    def __init__(
        self,
        units: int | None = None,
        *,
        eta: float | str | None = None,
        eps: float = 1e-9,
        tied_embedding: keras.layers.Layer | str | None = None,
        centers_initializer="random_normal",
        centers_regularizer=None,
        centers_constraint=None,
        output_mode: str = "logits",
        vocab_size: int | None = None,
        eta_init: float | None = None,
        frozen_when_saved: bool = False,
        eta_rate: float = 1.0,
        distance: str = "euclidean",
        **kwargs,
    ):
        super().__init__(**kwargs)
        units = _check_head_args(units, vocab_size, eta, eta_init, eps, output_mode)
        checks.check_distance(distance)
        if eta_rate != 1.0 and eta != LEARNED:
            raise ValueError(f"`eta_rate` goes with eta={LEARNED!r}, got eta={eta!r}.")
        checks.check_positive("eta_rate", eta_rate)
        self._tied_name = None
        self._tied_layer = None
        if isinstance(tied_embedding, str):
            self._tied_name = tied_embedding
        elif tied_embedding is not None:
            units = _check_embedding(tied_embedding, units)
            self._tie(tied_embedding)
        if units is None and tied_embedding is None:
            raise ValueError("HarmonicLMHead needs `units` (or `vocab_size`) or `tied_embedding`.")
        self.units = units
        self.eta = eta
        self.eta_init = eta_init
        self.eta_rate = float(eta_rate)
        self.eps = eps
        self.distance = distance
        self.output_mode = output_mode
        self.centers_initializer = keras.initializers.get(centers_initializer)
        self.centers_regularizer = keras.regularizers.get(centers_regularizer)
        self.centers_constraint = keras.constraints.get(centers_constraint)
        self.frozen_when_saved = bool(frozen_when_saved)
        self._centers = None

    def _tie(self, layer) -> None:
        # Held outside Keras tracking: the embedding's variable belongs to the embedding layer.
        object.__setattr__(self, "_tied_layer", layer)
        self._tied_name = layer.name

    @property
    def vocab_size(self) -> int | None:
        return self.units

    @property
    def tied_embedding(self):
        return self._tied_layer

    @property
    def centers_variable(self):
        """The variable that holds the centers: this layer's own, the tied embedding's
        ``embeddings``, or its ``reverse_embeddings`` (``[D, V]``) for ``tie_weights=False``."""
        if self._reads_reverse_embeddings:
            return self._tied_layer.reverse_embeddings
        if self._tied_layer is not None:
            return self._tied_layer.embeddings
        if self._centers is None:
            raise ValueError(f"Layer {self.name!r} is not built yet: call it on hidden states.")
        return self._centers

    @property
    def centers(self):
        """The ``[V, D]`` centers: :attr:`centers_variable` itself, or its transpose for an
        untied ``ReversibleEmbedding`` (whose ``[D, V]`` output matrix gets a dense gradient);
        for an int8-quantized tied embedding (``model.quantize("int8")``), the table
        dequantized with its per-class scale, as the embedding's own lookup does."""
        variable = self.centers_variable
        reverse = self._reads_reverse_embeddings
        mode = getattr(self._tied_layer, "quantization_mode", None)
        if mode is None:
            return tf.transpose(variable) if reverse else variable
        if mode != "int8":
            raise ValueError(
                f"{self.name}: the tied embedding {self._tied_layer.name!r} is quantized as "
                f"{mode!r}; a harmonic head reads int8 tables only (dequantized: distances need "
                "the centers themselves, not a quantized product). Quantize with 'int8', or "
                "leave the embedding out of quantize() (its `filters` argument)."
            )
        layer = self._tied_layer
        if getattr(layer, "lora_enabled", False):
            raise ValueError(
                f"{self.name}: the tied embedding {layer.name!r} is int8-quantized with LoRA "
                "enabled on it; its table and LoRA factors cannot be read apart through public "
                "attributes. Enable LoRA on the backbone's other layers only."
            )
        table = tf.transpose(variable) if reverse else variable  # [V, D] int8
        scale = layer.reverse_embeddings_scale if reverse else layer.embeddings_scale  # [V]
        return tf.cast(table, tf.float32) / tf.cast(scale, tf.float32)[:, None]

    @property
    def centers_trainable(self) -> bool:
        """Whether training moves the centers: their variable, its owner and this head are
        all trainable."""
        owner = self._tied_layer or self
        return bool(self.centers_variable.trainable and owner.trainable and self.trainable)

    def check_centers_for_training(self, required: bool = True) -> None:
        """Before a training step: raises if the centers are frozen and ``required`` (training
        would silently leave them unchanged); warns if they were frozen when the model was
        saved and would move now (a reload drops keras-hub's LoRA freeze)."""
        if required and not self.centers_trainable:
            raise ValueError(
                f"The centers of {self.name!r} ({self.centers_variable.path}) are not "
                "trainable, so training with HarmonicLoss would silently leave them unchanged. "
                "Unfreeze the head (or the tied embedding), or pass "
                "require_trainable_centers=False to train against frozen centers on purpose."
            )
        if not required and self.frozen_when_saved and self.centers_trainable:
            warnings.warn(
                f"The centers of {self.name!r} were frozen when this model was saved and are "
                "trainable now (a reload drops keras-hub's LoRA freeze): training will move "
                "them. Freeze them again (`embedding.trainable = False`, or "
                "`backbone.enable_lora(rank)` after loading) if that is not meant.",
                stacklevel=4,
            )

    @property
    def _reads_reverse_embeddings(self) -> bool:
        """Tied to a ``ReversibleEmbedding(tie_weights=False)``: its separate output matrix."""
        return getattr(self._tied_layer, "tie_weights", True) is False

    def resolved_eta(self) -> float | tf.Tensor:
        """The exponent the losses use: a float, or ``exp(log_eta)`` for a learned one."""
        if self.eta == LEARNED:
            return tf.exp(self.eta_rate * tf.convert_to_tensor(self.log_eta))
        return checks.resolve_eta(self.eta, int(self.centers.shape[-1]), self.distance)

    def measure(self) -> dict:
        """How this head turns distances into logits, as the loss functions' keyword arguments:
        ``{"eta": ..., "eps": ..., "distance": ...}`` (what a loss or a score asks the head)."""
        return {"eta": self.resolved_eta(), "eps": self.eps, "distance": self.distance}

    def calibrate_eta(
        self,
        hidden_states,
        labels,
        weights=None,
        factors=None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> float:
        """Fixes the exponent at the one, among ``factors`` times the current one (default
        ``2**(k/4)``, ``k = -8..8``: a quarter to 4 times, steps of 19%), whose exact loss on
        ``hidden_states`` ``[..., D]`` and ``labels`` ``[...]`` (``-100`` ignored, optional
        per-token ``weights``) is lowest; returns it. The centers do not change. For centers
        that another head trained (a cross-entropy checkpoint's unembedding), this is the
        exponent at which they read that checkpoint's hidden states best. A learned exponent
        (``eta="learned"``) starts from it: its ``log_eta`` weight is set."""
        current = float(self.resolved_eta())
        factors = 2.0 ** (tf.range(-8, 9, dtype=tf.float64) / 4) if factors is None else factors
        candidates = [current * float(f) for f in factors]
        checks.check_positive("factors", min(candidates))
        losses = [
            float(
                harmonic_loss(
                    hidden_states,
                    self.centers,
                    labels,
                    eta=eta,
                    eps=self.eps,
                    weights=weights,
                    chunk_size=chunk_size,
                    distance=self.distance,
                )
            )
            for eta in candidates
        ]
        best = candidates[losses.index(min(losses))]
        if self.eta == LEARNED:
            self.log_eta.assign(math.log(best) / self.eta_rate)
        else:
            self.eta = best
        return best

    def nearest(self, hidden_states, k: int = 1, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Nearest:
        """The ``k`` nearest centers (classes) of each hidden state ``[..., D]`` and their
        distances, ``[N, k]`` each (:func:`harmonic_tf.nearest_k`): the classes a hidden
        state is closest to, which for an LM are tokens (prototypes)."""
        return nearest_k(hidden_states, self.centers, k, chunk_size, self.distance)

    def confidence(self, hidden_states, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Confidence:
        """Distance to the nearest center and its harmonic probability for each hidden state
        (:func:`harmonic_tf.harmonic_confidence`)."""
        return harmonic_confidence(
            hidden_states, self.centers, chunk_size=chunk_size, **self.measure()
        )

    def __call__(self, inputs, *args, **kwargs):
        if self._tied_name is not None and self._tied_layer is None:
            layer = _compat.find_upstream_layer(inputs, self._tied_name)
            if layer is None:
                raise ValueError(
                    f"{self.name}: tied embedding {self._tied_name!r} was not found among the "
                    "layers that feed this head. Pass the layer object as `tied_embedding=` "
                    "when building the model."
                )
            self._tie(layer)
        return super().__call__(inputs, *args, **kwargs)

    def next_sampling_step(self) -> tf.Tensor:
        """Increments and returns the sampling-step counter (int64 scalar) that seeds a seeded
        sampled loss; a weight of the layer, so checkpoints and ``.keras`` files keep it."""
        return self.sampling_step.assign_add(1)

    def build(self, input_shape):
        # Non-trainable, counted once across replicas (like an optimizer's iteration count).
        self.sampling_step = self.add_weight(
            name="sampling_step",
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(
                f"{self.name}: the last axis of the inputs must be known, got {input_shape}."
            )
        if self.eta == LEARNED:
            self.log_eta = self.add_weight(
                name="log_eta",
                shape=(),
                dtype="float32",
                initializer=keras.initializers.Constant(
                    math.log(self.eta_init or checks.default_eta(dim, self.distance))
                    / self.eta_rate
                ),
                autocast=False,
            )
        if self._tied_name is not None and self._tied_layer is None:
            return  # tied by name (a reload): resolved on the first call, never owns a matrix
        if self._tied_layer is not None:
            if not self._tied_layer.built:
                self._tied_layer.build((None,))
            if self._tied_layer.output_dim != dim:
                raise ValueError(
                    f"{self.name}: hidden size {dim} differs from the tied embedding's "
                    f"output_dim {self._tied_layer.output_dim}."
                )
        else:
            self._centers = self.add_weight(
                name="centers",
                shape=(self.units, dim),
                initializer=self.centers_initializer,
                regularizer=self.centers_regularizer,
                constraint=self.centers_constraint,
                autocast=False,
            )

    def call(self, inputs):
        centers = tf.cast(self.centers, tf.float32)
        logits = harmonic_logits(inputs, centers, **self.measure())
        return tf.nn.softmax(logits) if self.output_mode == "probabilities" else logits

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), "float32")

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            units=self.units,
            eta=self.eta,
            eta_init=self.eta_init,
            eta_rate=self.eta_rate,
            eps=self.eps,
            distance=self.distance,
            tied_embedding=self._tied_name,
            centers_initializer=keras.initializers.serialize(self.centers_initializer),
            centers_regularizer=keras.regularizers.serialize(self.centers_regularizer),
            centers_constraint=keras.constraints.serialize(self.centers_constraint),
            output_mode=self.output_mode,
            frozen_when_saved=self._frozen_now(),
        )
        return config

    def _frozen_now(self) -> bool:
        try:
            return not self.centers_trainable
        except (ValueError, AttributeError):  # not built, or tied by name and not resolved yet
            return self.frozen_when_saved


def _check_head_args(units, vocab_size, eta, eta_init, eps, output_mode) -> int | None:
    """Checks :class:`HarmonicLMHead`'s scalar arguments; returns ``units``."""
    if units is not None and vocab_size is not None and units != vocab_size:
        raise ValueError(f"`units` ({units}) and `vocab_size` ({vocab_size}) disagree.")
    units = units if units is not None else vocab_size
    if units is not None:
        checks.check_int("units", units, 2)
    if isinstance(eta, str) and eta != LEARNED:
        raise ValueError(f"`eta` must be a positive number, None or {LEARNED!r}, got {eta!r}.")
    if eta != LEARNED and eta is not None:
        checks.check_positive("eta", eta)
    if eta_init is not None:
        if eta != LEARNED:
            raise ValueError(f"`eta_init` goes with eta={LEARNED!r}, got eta={eta!r}.")
        checks.check_positive("eta_init", eta_init)
    checks.check_positive("eps", eps)
    checks.check_choice("output_mode", output_mode, OUTPUTS)
    return units


def _check_embedding(layer, units: int | None) -> int:
    """The class count of a tied embedding layer, checked against ``units``."""
    if not hasattr(layer, "input_dim") or not hasattr(layer, "output_dim"):
        raise TypeError(
            "`tied_embedding` must be a keras.layers.Embedding or ReversibleEmbedding, "
            f"got {layer!r}."
        )
    if units is not None and units != layer.input_dim:
        raise ValueError(
            f"`units` ({units}) must equal the tied embedding's input_dim ({layer.input_dim})."
        )
    return layer.input_dim
