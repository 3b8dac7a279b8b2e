"""Triplet losses on a PK batch: batch-hard (nonlocal_i3d eq. 7) and batch-all (a3d eq. 14).

Batch-hard (nonlocal_i3d eq. 7, Hermans et al. [15]): for every anchor a of the batch, the
hardest positive is the *farthest* sample with the same label (the anchor itself excluded)
and the hardest negative the *nearest* sample with another label; the loss of the anchor is
[m + D(a, p*) - D(a, n*)]_+ with D the Euclidean distance. Anchors with no positive or no
negative in the local batch (e.g. an identity with a single clip on this replica) are left
out.

Reduction over the anchors (``losses.<name>.reduction``):

- ``mean`` (default): the average over the valid anchors, so the term does not grow with
  the batch; this is the reading of Hermans et al. and of the PyTorch ReID code bases, and a
  library choice for nonlocal_i3d.
- ``sum``: eq. 7 as printed, the sum over the P x K anchors of the global batch. Beside the
  cross-entropy of eq. 9, which is a mean (1 / (P x K)), eq. 10's unweighted sum then gives
  the triplet term P x K times the relative weight it has with ``mean`` (128 in the paper's
  32 x 4 batch, when every anchor is valid): ``sum`` equals ``mean`` with the term's weight
  multiplied by the number of valid anchors. Adam is invariant to the scale of the whole
  objective, not to the balance of its terms, so the two readings train differently.
  Under several replicas each replica mines in its own batch and returns its sum times the
  number of replicas, so that after the trainer's division by that number the objective is
  the sum over the global batch.

Batch-all (a3d eq. 14): L = 1/N sum_i [||f_i - f_i+||^2 - ||f_i - f_i-||^2 + m]_+ over the
N triplets (a, p, n) of the batch with y_p = y_a, p != a and y_n != y_a, with *squared*
Euclidean distances as printed in eq. 14. Following the 1/N of eq. 14 the mean is over all
valid triplets, including those already satisfying the margin (Hermans et al.'s "BA+"
variant would average over the triplets with a positive loss only).

Distances are computed from the Gram matrix, ||x||^2 + ||y||^2 - 2 x.y, clamped at 0. The
Euclidean distance uses a square root whose gradient is defined as 0 where the squared
distance is below 1e-12 (the derivative of sqrt is unbounded there), so identical features
(collapsed embeddings, or an anchor's distance to itself) never produce NaN gradients.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfreid.config import ConfigError

from tfreid.losses import LossTerm, get_labels, get_output

_MIN_SQUARED_DISTANCE = 1e-12


def pairwise_squared_distance(features) -> tf.Tensor:
  """[B, D] -> [B, B] squared Euclidean distances (float32, >= 0)."""
  x = tf.cast(features, tf.float32)
  squared_norm = tf.reduce_sum(tf.square(x), axis=1)
  gram = tf.matmul(x, x, transpose_b=True)
  squared = squared_norm[:, None] + squared_norm[None, :] - 2.0 * gram
  return tf.maximum(squared, 0.0)


def pairwise_euclidean_distance(features) -> tf.Tensor:
  """[B, D] -> [B, B] Euclidean distances with a finite gradient at distance 0."""
  squared = pairwise_squared_distance(features)
  positive = squared > _MIN_SQUARED_DISTANCE
  # Both branches of the outer `where` get a gradient, so the inner `where` keeps sqrt away
  # from 0 where the result is discarded.
  safe = tf.where(positive, squared, tf.ones_like(squared))
  return tf.where(positive, tf.sqrt(safe), tf.zeros_like(squared))


def _label_masks(labels):
  """Returns (positive_mask, negative_mask), bool [B, B]; positives exclude the diagonal."""
  labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
  same = tf.equal(labels[:, None], labels[None, :])
  not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
  return tf.logical_and(same, not_self), tf.logical_not(same)


def batch_hard_mining(distances, labels):
  """Selects each anchor's hardest positive and hardest negative (nonlocal_i3d eq. 7).

  Args:
    distances: [B, B] float32 pairwise distances.
    labels: int [B].

  Returns:
    A dict of [B] tensors: ``positive_distance`` (max distance to a same-label sample other
    than the anchor; -1 where there is none), ``negative_distance`` (min distance to an
    other-label sample; larger than every distance where there is none), ``positive_index``
    and ``negative_index`` (int32 batch indices of those samples) and ``valid`` (bool: the
    anchor has both).
  """
  positive_mask, negative_mask = _label_masks(labels)
  sentinel_low = tf.fill(tf.shape(distances), -1.0)
  sentinel_high = tf.fill(tf.shape(distances), 1.0) + tf.stop_gradient(
      tf.reduce_max(distances))
  positives = tf.where(positive_mask, distances, sentinel_low)
  negatives = tf.where(negative_mask, distances, sentinel_high)
  return {
      "positive_distance": tf.reduce_max(positives, axis=1),
      "negative_distance": tf.reduce_min(negatives, axis=1),
      "positive_index": tf.argmax(positives, axis=1, output_type=tf.int32),
      "negative_index": tf.argmin(negatives, axis=1, output_type=tf.int32),
      "valid": tf.logical_and(tf.reduce_any(positive_mask, axis=1),
                              tf.reduce_any(negative_mask, axis=1)),
  }


def _masked_mean(values, mask):
  mask = tf.cast(mask, tf.float32)
  total = tf.reduce_sum(tf.where(mask > 0, values, tf.zeros_like(values)))
  return total / tf.maximum(tf.reduce_sum(mask), 1.0)


def _num_replicas() -> int:
  context = tf.distribute.get_replica_context()
  if context is None:
    return tf.distribute.get_strategy().num_replicas_in_sync
  return context.num_replicas_in_sync


def _reduce(values, mask, reduction: str):
  """Mean over the valid entries, or (reduction="sum") their sum times the number of
  replicas: summed over the global batch once the trainer divides by it (module
  docstring)."""
  if reduction == "mean":
    return _masked_mean(values, mask)
  if reduction != "sum":
    raise ValueError(f"triplet reduction {reduction!r} is not supported; expected one of "
                     f"{TripletLoss.REDUCTIONS}.")
  total = tf.reduce_sum(tf.where(mask, values, tf.zeros_like(values)))
  return total * float(_num_replicas())


def batch_hard_loss_from_distances(distances, labels, margin: float = 0.3,
                                   reduction: str = "mean") -> tf.Tensor:
  """mean_a (or, reduction="sum", sum_a as eq. 7 prints) [m + max_p D(a, p) -
  min_n D(a, n)]_+ over the valid anchors of a [B, B] distance matrix (eq. 7's hinge on any
  distance)."""
  mined = batch_hard_mining(tf.cast(distances, tf.float32), labels)
  per_anchor = tf.nn.relu(margin + mined["positive_distance"] - mined["negative_distance"])
  return _reduce(per_anchor, mined["valid"], reduction)


def batch_all_loss_from_distances(distances, labels, margin: float = 0.3,
                                  reduction: str = "mean") -> tf.Tensor:
  """1/N sum (or, reduction="sum", the sum) [D(a, p) - D(a, n) + m]_+ over the N valid
  triplets of a [B, B] distance matrix (a3d eq. 14's average on any distance)."""
  distances = tf.cast(distances, tf.float32)
  positive_mask, negative_mask = _label_masks(labels)
  per_triplet = tf.nn.relu(distances[:, :, None] - distances[:, None, :] + margin)
  valid = tf.logical_and(positive_mask[:, :, None], negative_mask[:, None, :])
  return _reduce(per_triplet, valid, reduction)


def batch_hard_triplet_loss(features, labels, margin: float = 0.3,
                            reduction: str = "mean") -> tf.Tensor:
  """Batch-hard triplet loss (nonlocal_i3d eq. 7), averaged over the valid anchors (or
  summed, reduction="sum", as eq. 7 prints; module docstring).

  Args:
    features: [B, D] embeddings.
    labels: int [B] identities.
    margin: m of eq. 7 (the paper does not print it; the experiments use 0.3).
    reduction: "mean" or "sum" over the anchors.

  Returns:
    float32 scalar mean_a [m + max_p D(a, p) - min_n D(a, n)]_+ (Euclidean D), or the sum.
  """
  return batch_hard_loss_from_distances(pairwise_euclidean_distance(features), labels, margin,
                                        reduction)


def batch_all_triplet_loss(features, labels, margin: float = 0.3,
                           reduction: str = "mean") -> tf.Tensor:
  """Triplet loss over every valid triplet of the batch (a3d eq. 14, margin 0.3).

  Args:
    features: [B, D] embeddings.
    labels: int [B] identities.
    margin: m of eq. 14.
    reduction: "mean" (eq. 14's 1/N) or "sum" over the triplets.

  Returns:
    float32 scalar 1/N sum [||a - p||^2 - ||a - n||^2 + m]_+ over the N valid triplets (or
    the sum).
  """
  return batch_all_loss_from_distances(pairwise_squared_distance(features), labels, margin,
                                       reduction)


class TripletLoss(LossTerm):
  """Triplet loss: batch-hard (eq. 7) or batch-all (a3d eq. 14).

  With ``distance_fn`` None the loss reads ``outputs[feature]`` ([B, D]) and uses the
  Euclidean distance (batch-hard) or the squared one (batch-all, as eq. 14 prints). With a
  ``distance_fn`` (a model's own distance, `tfreid.models.contract.distance_functions`,
  e.g. stal's attention-weighted part distance) the [B, B] distances are
  ``distance_fn(outputs, outputs)`` and ``feature`` is not read.

  Args:
    margin: the triplet margin m.
    mining: "batch_hard" (hardest positive and negative per anchor) or "batch_all" (mean
      over all valid triplets).
    feature: model output the loss is computed on ([B, D]).
    weight: factor of the term in the total loss.
    distance_fn: None, or a function of (outputs, outputs) -> [B, B].
    name: the term's name.
    reduction: "mean" over the valid anchors (triplets for batch_all), or "sum" over the
      global batch (eq. 7 as printed; see the module docstring for the effect).
  """

  MINING = ("batch_hard", "batch_all")
  REDUCTIONS = ("mean", "sum")

  def __init__(self, margin: float = 0.3, mining: str = "batch_hard",
               feature: str = "embedding", weight: float = 1.0, distance_fn=None,
               name: str = "triplet", reduction: str = "mean"):
    super().__init__(name=name, weight=weight)
    if mining not in self.MINING:
      raise ValueError(f"triplet mining {mining!r} is not supported; expected one of "
                       f"{self.MINING}.")
    if reduction not in self.REDUCTIONS:
      raise ValueError(f"triplet reduction {reduction!r} is not supported; expected one of "
                       f"{self.REDUCTIONS}.")
    self.reduction = reduction
    self.margin = float(margin)
    self.mining = mining
    self.feature = feature
    self._distance_fn = distance_fn

  def __call__(self, outputs: dict, batch: dict) -> tf.Tensor:
    labels = get_labels(batch, self.name)
    if self._distance_fn is not None:
      distances = self._distance_fn(outputs, outputs)
      if self.mining == "batch_hard":
        return batch_hard_loss_from_distances(distances, labels, self.margin, self.reduction)
      return batch_all_loss_from_distances(distances, labels, self.margin, self.reduction)
    features = get_output(outputs, self.feature, self.name)
    if features.shape.rank != 2:
      raise ValueError(f"triplet loss expects outputs[{self.feature!r}] of shape [B, D], got "
                       f"{features.shape}.")
    if self.mining == "batch_hard":
      return batch_hard_triplet_loss(features, labels, self.margin, self.reduction)
    return batch_all_triplet_loss(features, labels, self.margin, self.reduction)


@dataclasses.dataclass
class Config:
  """``losses.<name>`` of type triplet."""
  type: str = "triplet"
  weight: float = 1.0
  margin: float = 0.3
  # batch_hard | batch_all
  mining: str = "batch_hard"
  # Model output the loss is computed on (with distance=euclidean).
  feature: str = "embedding"
  # euclidean (on `feature`), or the name of one of the model's distance functions
  # (tfreid.models.contract.distance_functions), computed on all its outputs.
  distance: str = "euclidean"
  # mean (over the valid anchors) | sum (over the global batch's anchors, eq. 7 as
  # printed: P x K times the relative weight of mean beside a mean cross-entropy).
  reduction: str = "mean"

  def validate(self, prefix: str, config=None) -> None:
    if self.mining not in TripletLoss.MINING:
      raise ConfigError(f"{prefix}.mining={self.mining!r} is not valid; expected one of "
                        f"{', '.join(map(repr, TripletLoss.MINING))}.")
    if self.reduction not in TripletLoss.REDUCTIONS:
      raise ConfigError(f"{prefix}.reduction={self.reduction!r} is not valid; expected one "
                        f"of {', '.join(map(repr, TripletLoss.REDUCTIONS))} (mean over the "
                        "anchors, or their sum as nonlocal_i3d eq. 7 prints).")
    if self.margin < 0:
      raise ConfigError(f"{prefix}.margin must be >= 0, got {self.margin}.")
    if config is not None and config.data.num_instances < 2:
      raise ConfigError(f"{prefix} needs positives in the batch: data.num_instances (K) "
                        f"must be >= 2, got {config.data.num_instances}.")


def build(name: str, config: Config, context) -> TripletLoss:
  distance_fn = None
  if config.distance != "euclidean":
    from tfreid.models import contract  # pylint: disable=import-outside-toplevel
    functions = contract.distance_functions(context.model)
    if config.distance not in functions:
      raise ValueError(f"losses.{name}.distance={config.distance!r}: the model has no such "
                       f"distance; expected euclidean or one of {sorted(functions)}.")
    distance_fn = functions[config.distance]
  return TripletLoss(config.margin, config.mining, config.feature, config.weight,
                     distance_fn=distance_fn, name=name, reduction=config.reduction)
