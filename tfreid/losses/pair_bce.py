"""Binary cross-entropy over all pairs of a PK batch (siamese_convgru eq. 9).

siamese_convgru eq. 9 minimises

    -[ sum_{(a,b) in Sim} log s(X^a, X^b) + sum_{(a,b) in Dis} log(1 - s(X^a, X^b)) ]

with Sim the pairs of the same person and Dis the pairs of different persons, and
s = sigmoid(v^T diag(h^a (h^b)^T) + c) (eq. 8). The paper draws pairs; on a PK batch this
module uses every ordered pair (a, b) with a != b as a pair, and averages instead of summing
(the sum divided by the B (B - 1) pairs) so the term does not grow with the batch. Same and
different pairs are not re-weighted, as in eq. 9. The attention penalty of eq. 9 (the lambda
term) is a separate loss of the model.

What the model must return: ``outputs["pair_logits"]``, float [B, B], where entry (a, b) is
the logit of s(X^a, X^b) for clips a and b of the batch, i.e. v^T (h^a * h^b) + c of eq. 8
before the sigmoid. The diagonal is ignored.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfreid.losses import LossTerm, get_labels, get_output


def pair_binary_cross_entropy(pair_logits, labels) -> tf.Tensor:
  """Mean sigmoid cross-entropy over the off-diagonal pairs of a [B, B] logit matrix.

  Args:
    pair_logits: [B, B] logits of "a and b show the same person".
    labels: int [B] identities; the target of (a, b) is labels[a] == labels[b].

  Returns:
    float32 scalar.
  """
  logits = tf.cast(pair_logits, tf.float32)
  labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
  targets = tf.cast(tf.equal(labels[:, None], labels[None, :]), tf.float32)
  per_pair = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
  off_diagonal = 1.0 - tf.eye(tf.shape(labels)[0], dtype=tf.float32)
  return tf.reduce_sum(per_pair * off_diagonal) / tf.maximum(tf.reduce_sum(off_diagonal), 1.0)


class PairBCELoss(LossTerm):
  """Pair binary cross-entropy on ``outputs["pair_logits"]`` (siamese_convgru eq. 9).

  Args:
    weight: factor of the term in the total loss.
    logits_key: the model output holding the [B, B] pair logits.
  """

  def __init__(self, weight: float = 1.0, logits_key: str = "pair_logits",
               name: str = "pair_bce"):
    super().__init__(name=name, weight=weight)
    self.logits_key = logits_key

  def __call__(self, outputs: dict, batch: dict) -> tf.Tensor:
    logits = get_output(outputs, self.logits_key, self.name)
    labels = get_labels(batch, self.name)
    if logits.shape.rank != 2 or (logits.shape[0] is not None
                                  and logits.shape[0] != logits.shape[1]):
      raise ValueError(f"pair BCE expects outputs[{self.logits_key!r}] of shape [B, B] (the "
                       f"logit of every pair of clips in the batch), got {logits.shape}.")
    return pair_binary_cross_entropy(logits, labels)


@dataclasses.dataclass
class Config:
  """``losses.<name>`` of type pair_bce."""
  type: str = "pair_bce"
  weight: float = 1.0
  # Model output holding the [B, B] pair logits.
  logits: str = "pair_logits"


def build(name: str, config: Config, context) -> PairBCELoss:
  del context
  return PairBCELoss(config.weight, config.logits, name=name)
