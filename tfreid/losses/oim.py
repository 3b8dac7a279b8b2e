"""Online instance matching (OIM) loss (diversity_attention section 3.5; Xiao et al. [44]).

A lookup table V [N, D] keeps one L2-normalised feature per training identity. For an
L2-normalised feature x with label y (diversity_attention section 4.2: the feature sent to
OIM is L2-normalised; this module normalises it, which is a no-op if the model already did):

    p_k = exp(s v_k.x) / sum_j exp(s v_j.x),        L = -mean log p_y,

with s = 1/T the scale factor (the inverse softmax temperature; ``losses.oim.scale``). The
table receives no gradient: dL/dx = s (p - onehot(y))^T V with V as it was in the forward
pass. After the gradient step each sample updates its identity's row by the momentum rule of
the reference OIM,

    v_y <- m v_y + (1 - m) x,     v_y <- v_y / (||v_y|| + 1e-12),

applied sample after sample in batch order (so an identity with K clips in the batch is
updated K times in a row). The table starts at zero, so an identity's row is its first
feature after its first update.

Distribution: ``update`` runs in replica context; it all-gathers the features and labels of
every replica (replica 0's samples first), so each replica computes the same update from the
global batch, exactly what a single device seeing the concatenated global batch computes. The
table is created under the strategy's scope as a mirrored variable with
``synchronization=ON_WRITE`` (every write reaches every copy) and
``aggregation=ONLY_FIRST_REPLICA`` (the value replica 0 assigns is broadcast to all copies;
all replicas compute the same value, so nothing is lost and the copies stay bit-identical).
It is not trainable: the optimizer never sees it.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfreid.config import ConfigError

from tfreid.losses import LossTerm, get_labels, get_output

_NORM_EPSILON = 1e-12


def _l2_normalize(x):
  return x / (tf.norm(x, axis=-1, keepdims=True) + _NORM_EPSILON)


def oim_logits(features, table, scale: float = 30.0) -> tf.Tensor:
  """s * normalize(x) V^T: [B, D], [N, D] -> [B, N] float32; no gradient to the table."""
  x = _l2_normalize(tf.cast(features, tf.float32))
  v = tf.stop_gradient(tf.cast(table, tf.float32))
  return scale * tf.matmul(x, v, transpose_b=True)


def oim_update(table, features, labels, momentum: float = 0.5) -> tf.Tensor:
  """Returns the table after the sequential momentum update of every sample (see module).

  Samples are applied in batch order. Rows of different identities are independent, so the
  update runs in rounds: round r applies, for every identity at once, its (r+1)-th sample of
  the batch; there are as many rounds as the largest number of samples of one identity.

  Args:
    table: [N, D] current lookup table.
    features: [B, D] features (L2-normalised here).
    labels: int [B] identities in [0, N).
    momentum: m of the update rule.

  Returns:
    float32 [N, D] updated table.
  """
  table = tf.cast(table, tf.float32)
  x = _l2_normalize(tf.cast(features, tf.float32))
  labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
  identities, slot = tf.unique(labels)
  rows = tf.gather(table, identities)
  one_hot = tf.one_hot(slot, tf.shape(identities)[0], dtype=tf.float32)  # [B, U]
  same = tf.matmul(one_hot, one_hot, transpose_b=True)  # [B, B]
  earlier = tf.linalg.band_part(tf.ones_like(same), -1, 0) - tf.eye(tf.shape(same)[0])
  occurrence = tf.cast(tf.reduce_sum(same * earlier, axis=1), tf.int32)  # [B]
  num_rounds = tf.reduce_max(occurrence) + 1
  m = tf.constant(momentum, tf.float32)

  def apply_round(r, rows):
    pick = one_hot * tf.cast(tf.equal(occurrence, r), tf.float32)[:, None]  # [B, U]
    sample = tf.matmul(pick, x, transpose_a=True)  # [U, D]: this round's sample per identity
    has_sample = tf.reduce_sum(pick, axis=0) > 0
    updated = _l2_normalize(m * rows + (1.0 - m) * sample)
    return r + 1, tf.where(has_sample[:, None], updated, rows)

  _, rows = tf.while_loop(lambda r, _: r < num_rounds, apply_round, (tf.constant(0), rows))
  return tf.tensor_scatter_nd_update(table, identities[:, None], rows)


class OIMLoss(LossTerm):
  """OIM loss with a momentum-updated lookup table (diversity_attention section 3.5).

  Construct it under ``strategy.scope()`` so the table is a mirrored variable. The trainer
  calls ``term(outputs, batch)`` in the (XLA-compiled) forward pass and
  ``term.update(outputs, batch)`` in replica context after the gradient step.

  Args:
    num_classes: N, training identities (rows of the table).
    embedding_dim: D, dimension of ``outputs[feature]``.
    scale: s = 1/T, the inverse temperature multiplying the cosine similarities.
    momentum: m of the table update.
    feature: model output the loss is computed on ([B, D]).
    weight: factor of the term in the total loss.
  """

  stateful = True

  def __init__(self, num_classes: int, embedding_dim: int, scale: float = 30.0,
               momentum: float = 0.5, feature: str = "embedding", weight: float = 1.0,
               name: str = "oim"):
    super().__init__(name=name, weight=weight)
    if num_classes < 1 or embedding_dim < 1:
      raise ValueError("OIM needs num_classes >= 1 and embedding_dim >= 1, got "
                       f"{num_classes} and {embedding_dim}.")
    if not 0.0 <= momentum <= 1.0:
      raise ValueError(f"OIM momentum must be in [0, 1], got {momentum}.")
    self.num_classes = int(num_classes)
    self.embedding_dim = int(embedding_dim)
    self.scale = float(scale)
    self.momentum = float(momentum)
    self.feature = feature
    with self.name_scope:
      self.table = tf.Variable(
          tf.zeros([self.num_classes, self.embedding_dim], tf.float32),
          trainable=False, name="lookup_table",
          synchronization=tf.VariableSynchronization.ON_WRITE,
          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

  def _features(self, outputs):
    features = get_output(outputs, self.feature, self.name)
    if features.shape.rank != 2 or features.shape[-1] != self.embedding_dim:
      raise ValueError(f"OIM expects outputs[{self.feature!r}] of shape [B, "
                       f"{self.embedding_dim}], got {features.shape}. Build the loss with "
                       "the model's embedding dimension.")
    return features

  def __call__(self, outputs: dict, batch: dict) -> tf.Tensor:
    logits = oim_logits(self._features(outputs), self.table, self.scale)
    labels = get_labels(batch, self.name)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))

  def update(self, outputs: dict, batch: dict) -> None:
    """Momentum update of the table with the features of every replica's batch."""
    features = self._features(outputs)
    labels = get_labels(batch, self.name)
    context = tf.distribute.get_replica_context()
    if context is None:
      raise RuntimeError("OIMLoss.update must run in replica context: call it inside "
                         "strategy.run(...), not in the cross-replica context.")
    if context.num_replicas_in_sync > 1:
      features = context.all_gather(features, axis=0)
      labels = context.all_gather(labels, axis=0)
    self.table.assign(oim_update(self.table, features, labels, self.momentum))


@dataclasses.dataclass
class Config:
  """``losses.<name>`` of type oim. The table width follows the model output `feature`."""
  type: str = "oim"
  weight: float = 1.0
  scale: float = 30.0
  momentum: float = 0.5
  feature: str = "embedding"

  def validate(self, prefix: str, config=None) -> None:
    if not 0.0 <= self.momentum <= 1.0:
      raise ConfigError(f"{prefix}.momentum must be in [0, 1], got {self.momentum}.")
    if not self.scale > 0:
      raise ConfigError(f"{prefix}.scale must be > 0, got {self.scale}.")


def build(name: str, config: Config, context) -> OIMLoss:
  shape = context.output_shapes.get(config.feature)
  if shape is None or len(shape) != 1:
    raise ValueError(f"losses.{name} (oim) reads model output {config.feature!r} of shape "
                     f"[B, D]; the model's outputs are "
                     f"{ {k: list(v) for k, v in context.output_shapes.items()} }.")
  return OIMLoss(context.num_classes, int(shape[0]), config.scale, config.momentum,
                 config.feature, config.weight, name=name)
