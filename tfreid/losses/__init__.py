"""Losses: label-smoothed cross-entropy, triplet (batch-hard, batch-all), OIM, pair BCE, and
every loss a method brings.

A loss type is a module of this package (or any module, named by its dotted path) with a
``Config`` dataclass (``type``, ``weight`` and its own keys; an optional
``validate(prefix, experiment_config)``) and ``build(name, config, context) -> LossTerm``.
The experiment lists its terms by name in ``config.losses`` (`tfreid.config.LossesConfig`);
:func:`build_losses` builds the terms of positive weight. No list here names the types.

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

import dataclasses

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


@dataclasses.dataclass
class LossContext:
  """What a loss may need besides its config when it is built.

  Attributes:
    num_classes: training identities (e.g. OIM's lookup-table rows).
    output_shapes: the model's training outputs, name -> shape without the batch axis
      (e.g. the width of the feature OIM reads).
    model: the model; a term may call its distance functions
      (`tfreid.models.contract.distance_functions`) inside the compiled step.
    config: the ExperimentConfig.
  """
  num_classes: int
  output_shapes: dict
  model: object = None
  config: object = None


def build_losses(config, context: LossContext) -> list[LossTerm]:
  """Builds the terms of ``config.losses`` whose weight is > 0, in config order.

  Call under ``strategy.scope()``: a stateful term (OIM) creates its variables here.
  """
  import importlib  # pylint: disable=import-outside-toplevel
  terms: list[LossTerm] = []
  for name, term_config in config.losses.active():
    loss_type = term_config.type
    module = importlib.import_module(loss_type if "." in loss_type
                                     else f"tfreid.losses.{loss_type}")
    term = module.build(name, term_config, context)
    if term.name != name or term.weight != float(term_config.weight):
      raise ValueError(f"loss type {loss_type!r}: build() must return a term named {name!r} "
                       f"with weight {term_config.weight} (got {term.name!r}, {term.weight}).")
    terms.append(term)
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
    "LossTerm", "LossContext", "build_losses", "get_output", "get_labels",
    "CrossEntropyLoss", "label_smoothed_cross_entropy",
    "TripletLoss", "batch_hard_triplet_loss", "batch_all_triplet_loss", "batch_hard_mining",
    "pairwise_euclidean_distance",
    "OIMLoss", "oim_logits", "oim_update",
    "PairBCELoss", "pair_binary_cross_entropy",
]
