"""The Keras half: a layer, a loss, metrics and models on Keras's public hooks; the math comes
from :mod:`harmonic_tf.ops` through :func:`harmonic_tf.ops.loss_terms`. Every private Keras use
is in :mod:`._compat`. keras-hub models: :mod:`harmonic_tf.keras.hub` (the ``[hub]`` extra)."""

from harmonic_tf.keras.callbacks import ExponentAnneal
from harmonic_tf.keras.layers import HarmonicLMHead
from harmonic_tf.keras.losses import HarmonicLoss
from harmonic_tf.keras.metrics import HarmonicAccuracy, HarmonicPerplexity
from harmonic_tf.keras.models import HarmonicModel, HarmonicTraining

__all__ = [
    "ExponentAnneal",
    "HarmonicAccuracy",
    "HarmonicLMHead",
    "HarmonicLoss",
    "HarmonicModel",
    "HarmonicPerplexity",
    "HarmonicTraining",
]
