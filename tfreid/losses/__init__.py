"""Losses: label-smoothed cross-entropy, triplet (batch-hard, batch-all), OIM, pair BCE.

Every loss is a :class:`LossTerm`: ``term(outputs, batch)`` returns the MEAN loss over the
local (per-replica) batch as a float32 scalar, whatever the compute dtype of the model
(mixed precision outputs are cast to float32 first). ``outputs`` is the model's output dict
(``embedding``, ``logits``, ``pair_logits`` ...), ``batch`` the input dict (``labels`` int32
[B]). The trainer divides each term by ``num_replicas_in_sync`` and multiplies it by
``term.weight``. Terms contain no data-dependent Python control flow, so they run inside
``tf.function(jit_compile=True)``.

A stateful term (``term.stateful`` is True: OIM) holds its variables (tf.Module, so a
``tf.train.Checkpoint`` that tracks the list of terms saves them) and has
``term.update(outputs, batch)``, which the trainer calls in replica context, outside the
XLA-compiled function, after the gradient step. Build the terms under
``strategy.scope()`` so those variables are mirrored.
"""

from __future__ import annotations

import tensorflow as tf


class LossTerm(tf.Module):
  """One weighted term of the training objective.

  Attributes:
    name: short name used in logs and summaries ("cross_entropy", "triplet", ...).
    weight: factor the trainer multiplies the term by.
    stateful: True when the term keeps state updated by :meth:`update` after each step.
  """

  stateful = False

  def __init__(self, name: str, weight: float = 1.0):
    super().__init__(name=name)
    self.weight = float(weight)

  def __call__(self, outputs: dict, batch: dict) -> tf.Tensor:
    """Returns the mean loss over the local batch, a float32 scalar."""
    raise NotImplementedError

  def update(self, outputs: dict, batch: dict) -> None:
    """Updates the term's state after a gradient step (no-op for stateless terms)."""
    del outputs, batch


def get_output(outputs: dict, key: str, loss_name: str) -> tf.Tensor:
  """Returns ``outputs[key]`` as float32, or raises a KeyError naming the loss and keys."""
  if key not in outputs:
    raise KeyError(f"loss {loss_name!r} needs the model output {key!r}, but the model "
                   f"returned only {sorted(outputs)}. Make the model return {key!r} in "
                   "training mode, or point the loss at another output in the config.")
  return tf.cast(outputs[key], tf.float32)


def get_labels(batch: dict, loss_name: str) -> tf.Tensor:
  """Returns ``batch["labels"]`` as int32 [B]."""
  if "labels" not in batch:
    raise KeyError(f"loss {loss_name!r} needs batch['labels'] (int32 [B] training labels), "
                   f"but the batch has only {sorted(batch)}.")
  return tf.cast(tf.reshape(batch["labels"], [-1]), tf.int32)


def build_losses(config, num_classes: int, embedding_dim: int) -> list[LossTerm]:
  """Builds the loss terms of ``config.losses`` whose weight is > 0.

  Args:
    config: an ``ExperimentConfig``.
    num_classes: number of training identities (size of the OIM lookup table).
    embedding_dim: dimension of the feature OIM is computed on.

  Returns:
    The terms in the order cross_entropy, triplet, oim, pair_bce. Call under
    ``strategy.scope()``: OIM creates its lookup table at construction.
  """
  losses = config.losses
  terms: list[LossTerm] = []
  if losses.cross_entropy.weight > 0:
    terms.append(CrossEntropyLoss(label_smoothing=losses.cross_entropy.label_smoothing,
                                  weight=losses.cross_entropy.weight))
  if losses.triplet.weight > 0:
    terms.append(TripletLoss(margin=losses.triplet.margin, mining=losses.triplet.mining,
                             feature=losses.triplet.feature, weight=losses.triplet.weight))
  if losses.oim.weight > 0:
    terms.append(OIMLoss(num_classes=num_classes, embedding_dim=embedding_dim,
                         scale=losses.oim.scale, momentum=losses.oim.momentum,
                         feature=losses.oim.feature, weight=losses.oim.weight))
  if losses.pair_bce.weight > 0:
    terms.append(PairBCELoss(weight=losses.pair_bce.weight))
  return terms


# The loss modules import LossTerm from this package, so they are imported after it.
# pylint: disable=wrong-import-position
from tfreid.losses.cross_entropy import CrossEntropyLoss, label_smoothed_cross_entropy
from tfreid.losses.oim import OIMLoss, oim_logits, oim_update
from tfreid.losses.pair_bce import PairBCELoss, pair_binary_cross_entropy
from tfreid.losses.triplet import (TripletLoss, batch_all_triplet_loss,
                                   batch_hard_mining, batch_hard_triplet_loss,
                                   pairwise_euclidean_distance)

__all__ = [
    "LossTerm", "build_losses", "get_output", "get_labels",
    "CrossEntropyLoss", "label_smoothed_cross_entropy",
    "TripletLoss", "batch_hard_triplet_loss", "batch_all_triplet_loss", "batch_hard_mining",
    "pairwise_euclidean_distance",
    "OIMLoss", "oim_logits", "oim_update",
    "PairBCELoss", "pair_binary_cross_entropy",
]
