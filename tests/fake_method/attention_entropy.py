"""A loss type the test-only method brings: the mean entropy of its attention maps
(`losses.<name>.type=fake_method.attention_entropy`)."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfreid.losses import LossTerm, get_output


@dataclasses.dataclass
class Config:
  type: str = "fake_method.attention_entropy"
  weight: float = 1.0
  output: str = "attention"


class AttentionEntropy(LossTerm):
  def __init__(self, name, weight, output):
    super().__init__(name=name, weight=weight)
    self.output = output

  def __call__(self, outputs, batch):
    maps = get_output(outputs, self.output, self.name)
    flat = tf.reshape(maps, [-1, maps.shape[-2] * maps.shape[-1]])
    return tf.reduce_mean(-tf.reduce_sum(flat * tf.math.log(flat + 1e-12), -1))


def build(name, config, context):
  del context
  return AttentionEntropy(name, config.weight, config.output)
