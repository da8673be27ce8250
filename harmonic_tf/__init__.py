"""harmonic-tf: exact, memory-efficient and sampled harmonic loss for TensorFlow and Keras.

Two halves: :mod:`harmonic_tf.ops`, the math in pure TensorFlow, and :mod:`harmonic_tf.keras`,
the Keras layer, loss, metrics and models built on it. Every public name is here.
"""

from harmonic_tf.keras import (
    HarmonicAccuracy,
    HarmonicLMHead,
    HarmonicLoss,
    HarmonicModel,
    HarmonicPerplexity,
    HarmonicTraining,
)
from harmonic_tf.ops import (
    Confidence,
    LogUniformSampler,
    LossTerms,
    SampledOptions,
    Sampler,
    UniformSampler,
    UnigramSampler,
    default_eta,
    explained_variance,
    harmonic_confidence,
    harmonic_logits,
    harmonic_loss,
    harmonic_loss_approx,
    label_counts,
    loss_from_logits,
    loss_terms,
    nearest_centers,
    nearest_k,
    principal_components,
    sampled_harmonic_loss,
)

__version__ = "0.2.0"

__all__ = [
    "Confidence",
    "HarmonicAccuracy",
    "HarmonicPerplexity",
    "HarmonicLMHead",
    "HarmonicLoss",
    "HarmonicModel",
    "HarmonicTraining",
    "LogUniformSampler",
    "LossTerms",
    "SampledOptions",
    "Sampler",
    "UniformSampler",
    "UnigramSampler",
    "default_eta",
    "explained_variance",
    "harmonic_confidence",
    "harmonic_logits",
    "harmonic_loss",
    "harmonic_loss_approx",
    "label_counts",
    "loss_from_logits",
    "loss_terms",
    "nearest_centers",
    "nearest_k",
    "principal_components",
    "sampled_harmonic_loss",
]
