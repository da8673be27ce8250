"""The math half: harmonic loss in pure TensorFlow (no Keras import).

Public functions take hidden states ``[N, D]`` or ``[B, S, D]``, class centers ``[V, D]`` and
int labels; every loss path runs the one custom-gradient kernel in :mod:`._kernel`.
"""

from harmonic_tf.ops import inputs
from harmonic_tf.ops.analysis import (
    Confidence,
    Nearest,
    explained_variance,
    harmonic_confidence,
    nearest_centers,
    nearest_k,
    principal_components,
)
from harmonic_tf.ops.approx import harmonic_loss_approx
from harmonic_tf.ops.distances import harmonic_logits
from harmonic_tf.ops.exact import (
    DEFAULT_CHUNK_SIZE,
    DENSE_MAX_BYTES,
    exact_matmul_flops,
    harmonic_loss,
    loss_from_logits,
)
from harmonic_tf.ops.inputs import default_eta
from harmonic_tf.ops.options import ExactOptions, SampledOptions
from harmonic_tf.ops.sampled import sampled_harmonic_loss
from harmonic_tf.ops.sampling import (
    LogUniformSampler,
    Sampler,
    UniformSampler,
    UnigramSampler,
    label_counts,
)
from harmonic_tf.ops.terms import LossTerms, label_weights, loss_terms

__all__ = [
    "Confidence",
    "DEFAULT_CHUNK_SIZE",
    "DENSE_MAX_BYTES",
    "ExactOptions",
    "Nearest",
    "LogUniformSampler",
    "LossTerms",
    "SampledOptions",
    "Sampler",
    "UniformSampler",
    "UnigramSampler",
    "default_eta",
    "exact_matmul_flops",
    "explained_variance",
    "harmonic_confidence",
    "harmonic_logits",
    "harmonic_loss",
    "harmonic_loss_approx",
    "inputs",
    "label_counts",
    "label_weights",
    "loss_from_logits",
    "loss_terms",
    "nearest_centers",
    "nearest_k",
    "principal_components",
    "sampled_harmonic_loss",
]
