"""stal's consistency constraint (Chen et al., eq. 6): every part feature of every frame
must predict the identity of its video.

  C_cons = sum_i sum_{r,t} -log softmax(W^r f_i^{r,t})_{y_i}

with one classifier W^r per part, shared over frames. Eq. 6 prints the softmax probability
without the -log (as eq. 5 does), which would be maximised rather than minimised: the
cross-entropy is meant. Reduction (library choice, that of Caffe's softmax loss, which
averages over its batch): the mean over the clips i and frames t, summed over the R parts,
so the term does not grow with the batch and splits exactly across replicas.

``losses.<name>.type=part_consistency`` reads ``outputs[logits]`` [B, T, R, N].
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfreid.config import ConfigError
from tfreid.losses import LossTerm, get_labels, get_output


def part_consistency_loss(part_logits, labels) -> tf.Tensor:
  """Eq. 6 (module docstring): part_logits [B, T, R, N], labels int [B] -> scalar."""
  logits = tf.cast(part_logits, tf.float32)
  if logits.shape.rank != 4:
    raise ValueError(f"part_consistency expects part logits [B, T, R, N], got "
                     f"{logits.shape}.")
  shape = tf.shape(logits)
  y = tf.broadcast_to(tf.reshape(tf.cast(labels, tf.int32), [-1, 1, 1]), shape[:3])
  ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)  # [B, T, R]
  return tf.reduce_sum(tf.reduce_mean(ce, axis=[0, 1]))


class PartConsistencyLoss(LossTerm):
  """Eq. 6 on ``outputs[logits]``."""

  def __init__(self, name: str, weight: float = 1.0, logits: str = "part_logits"):
    super().__init__(name=name, weight=weight)
    self.logits = logits

  def __call__(self, outputs, batch):
    return part_consistency_loss(get_output(outputs, self.logits, self.name),
                                 get_labels(batch, self.name))


@dataclasses.dataclass
class Config:
  """``losses.<name>`` of type part_consistency."""
  type: str = "part_consistency"
  weight: float = 1.0
  # Model output holding the per-frame, per-part class scores [B, T, R, N].
  logits: str = "part_logits"

  def validate(self, prefix: str, config=None) -> None:
    del config
    if not self.logits:
      raise ConfigError(f"{prefix}.logits must name a model output [B, T, R, N].")


def build(name, config, context):
  del context
  return PartConsistencyLoss(name, config.weight, config.logits)
