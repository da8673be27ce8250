"""harmonic-tf: exact, memory-efficient and sampled harmonic loss for TensorFlow and Keras."""

from harmonic_tf._inputs import default_eta
from harmonic_tf.approx import harmonic_loss_approx
from harmonic_tf.distances import harmonic_logits
from harmonic_tf.exact import harmonic_loss
from harmonic_tf.layers import HarmonicLMHead
from harmonic_tf.losses import HarmonicLoss
from harmonic_tf.metrics import HarmonicAccuracy, HarmonicPerplexity
from harmonic_tf.models import HarmonicModel, HarmonicTraining
from harmonic_tf.options import SampledOptions
from harmonic_tf.sampled import sampled_harmonic_loss
from harmonic_tf.sampling import (
    LogUniformSampler,
    Sampler,
    UniformSampler,
    UnigramSampler,
    label_counts,
)

__version__ = "0.1.0"

__all__ = [
    "HarmonicAccuracy",
    "HarmonicPerplexity",
    "HarmonicLMHead",
    "HarmonicLoss",
    "HarmonicModel",
    "HarmonicTraining",
    "LogUniformSampler",
    "SampledOptions",
    "Sampler",
    "UniformSampler",
    "UnigramSampler",
    "default_eta",
    "harmonic_logits",
    "harmonic_loss",
    "harmonic_loss_approx",
    "label_counts",
    "sampled_harmonic_loss",
]
