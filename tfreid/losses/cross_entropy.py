"""Softmax cross-entropy with label smoothing (nonlocal_i3d eqs. 8-9).

nonlocal_i3d eq. 9 is printed as

    L' = -1/(P K) sum_{i,a} p_{i,a} log((1 - eps) q_{i,a} + eps / N),

which smooths the *predicted* probability of the true class. The text around it describes
something else: the label-smoothing regularisation of Szegedy et al. (its reference [35]),
"a mixture of the original ground-truth distribution and the uniform distribution u = 1/N",
i.e. a smoothed *target* distribution

    p'(k) = (1 - eps) [k = y] + eps / N,    L' = -sum_k p'(k) log q(k)
          = (1 - eps) (-log q_y) + eps * mean_k(-log q_k).

The two differ: the printed form is bounded by -log(eps/N) and its gradient vanishes as
q_y -> 0; the target-smoothing form is the one [35] proposes, the one the paper's text
describes, and the one of the public PyTorch ReID code the paper says it builds on
(section 4.2). This module implements the target-smoothing form; with eps = 0 both reduce to
eq. 8.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfreid.config import ConfigError

from tfreid.losses import LossTerm, get_labels, get_output


def label_smoothed_cross_entropy(logits, labels, label_smoothing: float = 0.1) -> tf.Tensor:
  """Mean over the batch of the label-smoothed softmax cross-entropy (Szegedy et al.).

  Args:
    logits: [B, N] class scores (any float dtype; computed in float32).
    labels: int [B] true classes in [0, N).
    label_smoothing: eps; the target is (1 - eps) one_hot(y) + eps / N.

  Returns:
    float32 scalar, -1/B sum_b sum_k p'_b(k) log softmax(logits_b)_k.
  """
  logits = tf.cast(logits, tf.float32)
  labels = tf.cast(labels, tf.int32)
  log_q = tf.nn.log_softmax(logits, axis=-1)
  nll_true = -tf.gather(log_q, labels, axis=1, batch_dims=1)
  nll_uniform = -tf.reduce_mean(log_q, axis=-1)
  eps = tf.constant(label_smoothing, tf.float32)
  return tf.reduce_mean((1.0 - eps) * nll_true + eps * nll_uniform)


class CrossEntropyLoss(LossTerm):
  """Label-smoothed softmax cross-entropy on ``outputs["logits"]`` (nonlocal_i3d eq. 9).

  Args:
    label_smoothing: eps of eq. 9, in [0, 1). The paper does not print its value; the
      nonlocal_i3d experiments use 0.1 (Szegedy et al.'s value), a library choice.
    weight: factor of the term in the total loss (eq. 10 sums the terms with weight 1).
    logits_key: the model output holding the class scores [B, N].
  """

  def __init__(self, label_smoothing: float = 0.1, weight: float = 1.0,
               logits_key: str = "logits", name: str = "cross_entropy"):
    super().__init__(name=name, weight=weight)
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
    self.label_smoothing = float(label_smoothing)
    self.logits_key = logits_key

  def __call__(self, outputs: dict, batch: dict) -> tf.Tensor:
    logits = get_output(outputs, self.logits_key, self.name)
    labels = get_labels(batch, self.name)
    return label_smoothed_cross_entropy(logits, labels, self.label_smoothing)


@dataclasses.dataclass
class Config:
  """``losses.<name>`` of type cross_entropy."""
  type: str = "cross_entropy"
  weight: float = 1.0
  # eps of eq. 9.
  label_smoothing: float = 0.1
  # Model output holding the class scores [B, N].
  logits: str = "logits"

  def validate(self, prefix: str, config=None) -> None:
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ConfigError(f"{prefix}.label_smoothing must be in [0, 1), got "
                        f"{self.label_smoothing}.")


def build(name: str, config: Config, context) -> CrossEntropyLoss:
  del context
  return CrossEntropyLoss(config.label_smoothing, config.weight, config.logits, name=name)
