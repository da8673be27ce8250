"""A drop-in twin of the reference PyTorch prototype ``harmonic_loss_approx`` (the sampled
harmonic loss this package ports): same arguments and defaults."""

from __future__ import annotations

import tensorflow as tf

from harmonic_tf.ops.options import SampledOptions
from harmonic_tf.ops.sampled import sampled_harmonic_loss


def harmonic_loss_approx(
    hidden_states: tf.Tensor,
    class_centers: tf.Tensor,
    labels: tf.Tensor,
    eta: float = 2.0,
    eps: float = 1e-9,
    k: int = 100,
    reduction: str = "mean",
) -> tf.Tensor:
    """Sampled harmonic loss exactly as the PyTorch prototype computes it.

    ``k`` uniform negatives per token, none equal to its label, no logQ correction, every label
    must be a class id (no ignore index). Shapes: ``[N, D]`` or ``[B, S, D]`` hidden states,
    ``[V, D]`` centers, ``[N]`` / ``[B, S]`` labels. For LM training prefer
    :func:`sampled_harmonic_loss` (shared negatives with logQ correction: faster and less biased).

    Examples:
      >>> x = tf.random.stateless_normal([4, 8], seed=[0, 1])
      >>> w = tf.random.stateless_normal([10, 8], seed=[0, 2])
      >>> loss = harmonic_loss_approx(x, w, tf.constant([1, 2, 3, 4]), eta=16.0, k=4)
      >>> print(loss.shape, loss.dtype.name)
      () float32
    """
    return sampled_harmonic_loss(
        hidden_states,
        class_centers,
        labels,
        SampledOptions.prototype(k),
        eta=eta,
        eps=eps,
        reduction=reduction,
        ignore_index=None,
    )
