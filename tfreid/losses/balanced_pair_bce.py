"""Pair cross-entropy on balanced positive / negative pairs of a PK batch (siamese_convgru
eq. 9, second term).

siamese_convgru section V-B trains on "positive and negative sequence pairs" drawn online,
10 pairs per mini-batch; following RCN (McLaughlin et al.), whose setting it takes, positives
and negatives alternate, 1:1. From a PK batch of P identities x K >= 2 clips, laid out as the
pipeline delivers it (the K clips of an identity consecutive; with
``data.tracklet_sampler=cross_camera`` they come from different cameras when the identity has
them), this term takes 2P pairs:

- P positives: the first and second clip of each identity, (p, 0) - (p, 1);
- P negatives: the first clip of identity p with the second clip of identity sigma(p), where
  sigma pairs the identities two by two (0 <-> 1, 2 <-> 3, ...; with P odd the last three
  form a cycle 2 -> 3 -> 4 -> 2 relative to them), a derangement with no fixed point.

Pairing within couples (rather than a cyclic shift over all P) keeps every pair inside a
group of consecutive identities, so a batch split over replicas by whole identity couples
takes exactly the pairs one device would: 2 replicas equal 1. P = 5, K = 2 gives the paper's
10 pairs, 5 positive and 5 negative.

The loss is -[sum_Sim log s + sum_Dis log(1 - s)] (eq. 9) divided by the 2P pairs (the mean,
a library choice so the term does not grow with the batch), with s = sigmoid of the model's
``pair_logits`` [B, B] (eq. 8) and the targets from the labels (same identity or not).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfreid.config import ConfigError
from tfreid.losses import LossTerm, get_labels, get_output


def identity_partner(num_identities: int) -> np.ndarray:
  """sigma of the module docstring: [P] int, sigma(p) != p."""
  if num_identities < 2:
    raise ValueError(f"balanced pairs need at least 2 identities per replica batch for a "
                     f"negative pair, got {num_identities}.")
  partner = np.arange(num_identities) ^ 1
  if num_identities % 2:
    a, b, c = num_identities - 3, num_identities - 2, num_identities - 1
    partner[a], partner[b], partner[c] = b, c, a
  return partner


def balanced_pairs(batch_size: int, num_instances: int) -> tuple[np.ndarray, np.ndarray]:
  """(first, second) clip indices [2P] of the P positive then P negative pairs of a batch of
  `batch_size` = P x K clips (module docstring)."""
  if num_instances < 2:
    raise ValueError(f"balanced pairs need K >= 2 clips per identity, got K = {num_instances}.")
  if batch_size % num_instances:
    raise ValueError(f"a PK batch of {batch_size} clips is not a multiple of K = "
                     f"{num_instances}.")
  p = batch_size // num_instances
  ids = np.arange(p)
  first = np.concatenate([ids * num_instances, ids * num_instances])
  second = np.concatenate([ids * num_instances + 1,
                           identity_partner(p) * num_instances + 1])
  return first.astype(np.int32), second.astype(np.int32)


def balanced_pair_cross_entropy(pair_logits, labels, num_instances: int) -> tf.Tensor:
  """Mean sigmoid cross-entropy over the balanced pairs of a [B, B] logit matrix."""
  logits = tf.cast(pair_logits, tf.float32)
  labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
  batch = logits.shape[0]
  if batch is None:
    raise ValueError("balanced pair BCE needs a static batch size (the pipeline's batches "
                     "are static).")
  first, second = balanced_pairs(int(batch), num_instances)
  pair_logit = tf.gather_nd(logits, np.stack([first, second], -1))
  targets = tf.cast(tf.equal(tf.gather(labels, first), tf.gather(labels, second)), tf.float32)
  return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets,
                                                                logits=pair_logit))


class BalancedPairBCELoss(LossTerm):
  """Eq. 9's pair cross-entropy on the balanced pairs of the batch."""

  def __init__(self, name: str, weight: float, num_instances: int, logits_key: str):
    super().__init__(name=name, weight=weight)
    self.num_instances = num_instances
    self.logits_key = logits_key

  def __call__(self, outputs: dict, batch: dict) -> tf.Tensor:
    logits = get_output(outputs, self.logits_key, self.name)
    if logits.shape.rank != 2 or logits.shape[0] != logits.shape[1]:
      raise ValueError(f"loss {self.name!r} expects outputs[{self.logits_key!r}] of shape "
                       f"[B, B] (the logit of every pair of clips), got {logits.shape}.")
    return balanced_pair_cross_entropy(logits, get_labels(batch, self.name),
                                       self.num_instances)


@dataclasses.dataclass
class Config:
  """``losses.<name>`` of type balanced_pair_bce."""
  type: str = "balanced_pair_bce"
  weight: float = 1.0
  # Model output holding the [B, B] pair logits.
  logits: str = "pair_logits"

  def validate(self, prefix: str, experiment_config) -> None:
    data = experiment_config.data
    if data.num_instances < 2:
      raise ConfigError(f"{prefix} takes a positive pair from each identity: set "
                        f"data.num_instances >= 2 (got {data.num_instances}).")
    if data.num_identities < 2:
      raise ConfigError(f"{prefix} needs data.num_identities >= 2 for negative pairs.")


def build(name: str, config: Config, context) -> BalancedPairBCELoss:
  return BalancedPairBCELoss(name, config.weight, context.config.data.num_instances,
                             config.logits)
