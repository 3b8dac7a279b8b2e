"""The attention penalty of siamese_convgru eq. 9 (first term), the "doubly stochastic"
regulariser of Xu et al.:

    lambda * sum_i (1 - sum_t m_{t,i})^2

over the K^2 locations i of one sequence, with m_t the location softmax of eq. 3 (section
IV-B: it makes the model look at every region at some time). Each sequence's penalty is
computed on its own attention maps; the term is their mean over the batch (a library
choice: eq. 9 writes a single penalty beside the sum over pairs). lambda is the term's
weight (section V-B: 1).

Since sum_i m_{t,i} = 1 for every t, sum_i sum_t m_{t,i} = T and the penalty is at least
K^2 (1 - T/K^2)^2 (reached with sum_t m_{t,i} = T/K^2 for every i): 17.16 for T = 20,
K^2 = 49; 0 only when T = K^2.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfreid.losses import LossTerm, get_output


def attention_penalty(maps) -> tf.Tensor:
  """[B, T, K1, K2] location softmax -> [B] per-sequence penalty sum_i (1 - sum_t m)^2."""
  maps = tf.cast(maps, tf.float32)
  if maps.shape.rank != 4:
    raise ValueError(f"attention penalty expects maps [B, T, K1, K2], got {maps.shape}.")
  coverage = tf.reduce_sum(maps, axis=1)
  return tf.reduce_sum(tf.square(1.0 - coverage), axis=[1, 2])


class AttentionPenalty(LossTerm):
  def __init__(self, name: str, weight: float, output: str):
    super().__init__(name=name, weight=weight)
    self.output = output

  def __call__(self, outputs: dict, batch: dict) -> tf.Tensor:
    del batch
    return tf.reduce_mean(attention_penalty(get_output(outputs, self.output, self.name)))


@dataclasses.dataclass
class Config:
  """``losses.<name>`` of type attention_penalty; the weight is eq. 9's lambda."""
  type: str = "attention_penalty"
  weight: float = 1.0
  # Model output holding the [B, T, K1, K2] spatial attention.
  output: str = "attention_spatial"


def build(name: str, config: Config, context) -> AttentionPenalty:
  del context
  return AttentionPenalty(name, config.weight, config.output)
