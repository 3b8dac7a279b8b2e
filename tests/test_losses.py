"""Tests of the cross-entropy, triplet and pair BCE losses and build_losses, against numpy."""

import numpy as np
import pytest
import tensorflow as tf

from tfreid import config as cfg
from tfreid import losses


def np_log_softmax(z):
  z = z - z.max(axis=1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_distances(x):
  return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def np_batch_hard(x, y, margin):
  d = np_distances(x.astype(np.float64))
  total, count = 0.0, 0
  for a in range(len(y)):
    pos = [d[a, p] for p in range(len(y)) if y[p] == y[a] and p != a]
    neg = [d[a, n] for n in range(len(y)) if y[n] != y[a]]
    if pos and neg:
      total += max(0.0, margin + max(pos) - min(neg))
      count += 1
  return total / max(count, 1)


def np_batch_all(x, y, margin):
  d2 = np_distances(x.astype(np.float64)) ** 2
  values = []
  for a in range(len(y)):
    for p in range(len(y)):
      for n in range(len(y)):
        if y[p] == y[a] and p != a and y[n] != y[a]:
          values.append(max(0.0, d2[a, p] - d2[a, n] + margin))
  return float(np.mean(values))


def pk_batch(rng, p=3, k=3, dim=5):
  labels = np.repeat(np.arange(p), k).astype(np.int32)
  rng.shuffle(labels)
  return rng.normal(size=(p * k, dim)).astype(np.float32), labels


# ----------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothed_cross_entropy_matches_numpy(eps):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
  labels = np.array([0, 4, 2, 2, 1, 3], np.int32)
  term = losses.CrossEntropyLoss(label_smoothing=eps)
  got = float(term({"logits": tf.constant(logits)}, {"labels": tf.constant(labels)}))
  # Szegedy et al.'s smoothed target: (1 - eps) one_hot + eps / N.
  target = (1 - eps) * np.eye(5)[labels] + eps / 5
  expected = -(target * np_log_softmax(logits.astype(np.float64))).sum(1).mean()
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  if eps > 0:  # eq. 9 as printed (smoothing the prediction) is a different number.
    q = np.exp(np_log_softmax(logits.astype(np.float64)))[np.arange(6), labels]
    printed = -np.log((1 - eps) * q + eps / 5).mean()
    assert abs(got - printed) > 1e-3


def test_cross_entropy_float16_logits_give_float32_loss():
  logits = tf.constant([[1.0, 2.0, 0.5]], tf.float16)
  loss = losses.CrossEntropyLoss(0.1)({"logits": logits}, {"labels": tf.constant([1])})
  assert loss.dtype == tf.float32 and loss.shape == ()


# ----------------------------------------------------------------------------- triplet


def test_pairwise_euclidean_distance_matches_numpy():
  x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
  got = losses.pairwise_euclidean_distance(tf.constant(x)).numpy()
  np.testing.assert_allclose(got, np_distances(x), atol=1e-5)


def test_batch_hard_chooses_the_hardest_positive_and_negative():
  # 1-D features on a line, so the choices can be checked by hand.
  x = np.array([[0.0], [1.0], [5.0], [2.0], [9.0], [4.5]], np.float32)
  y = np.array([0, 0, 0, 1, 1, 2], np.int32)
  mined = losses.batch_hard_mining(losses.pairwise_euclidean_distance(tf.constant(x)),
                                   tf.constant(y))
  pos = mined["positive_index"].numpy()
  neg = mined["negative_index"].numpy()
  # Anchor 0 (x=0): positives at 1 and 5 -> farthest is index 2; nearest negative x=2 -> 3.
  assert (pos[0], neg[0]) == (2, 3)
  # Anchor 2 (x=5): positives at 0 and 1 -> index 0; negatives 2, 9, 4.5 -> index 5.
  assert (pos[2], neg[2]) == (0, 5)
  # Anchor 4 (x=9): its only positive is index 3; nearest negative is x=5 -> index 2.
  assert (pos[4], neg[4]) == (3, 2)
  # Anchor 5 is alone with its label: no positive, so it is not a valid anchor.
  np.testing.assert_array_equal(mined["valid"].numpy(), [1, 1, 1, 1, 1, 0])
  d = np_distances(x)
  for a in range(5):
    same = [p for p in range(6) if y[p] == y[a] and p != a]
    other = [n for n in range(6) if y[n] != y[a]]
    assert pos[a] == same[int(np.argmax(d[a, same]))]
    assert neg[a] == other[int(np.argmin(d[a, other]))]
    np.testing.assert_allclose(mined["positive_distance"][a], d[a, pos[a]], atol=1e-5)
    np.testing.assert_allclose(mined["negative_distance"][a], d[a, neg[a]], atol=1e-5)
  loss = losses.TripletLoss(margin=0.3)({"embedding": tf.constant(x)}, {"labels": y})
  np.testing.assert_allclose(float(loss), np_batch_hard(x, y, 0.3), rtol=1e-5)


@pytest.mark.parametrize("mining,reference", [("batch_hard", np_batch_hard),
                                              ("batch_all", np_batch_all)])
def test_triplet_loss_matches_numpy(mining, reference):
  x, y = pk_batch(np.random.default_rng(2))
  term = losses.TripletLoss(margin=0.5, mining=mining, feature="part_features")
  got = float(term({"part_features": tf.constant(x * 0.4)}, {"labels": tf.constant(y)}))
  expected = reference(x * 0.4, y, 0.5)
  assert expected > 0
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def np_batch_hard_sum(x, y, margin):
  """Eq. 7 as printed: the sum over the anchors (numpy, independent of np_batch_hard)."""
  d = np_distances(x.astype(np.float64))
  total = 0.0
  for a in range(len(y)):
    pos = d[a][(y == y[a]) & (np.arange(len(y)) != a)]
    neg = d[a][y != y[a]]
    if len(pos) and len(neg):
      total += max(0.0, margin + pos.max() - neg.min())
  return total


def np_batch_all_sum(x, y, margin):
  d2 = np_distances(x.astype(np.float64)) ** 2
  same = y[:, None] == y[None, :]
  positive = same & ~np.eye(len(y), dtype=bool)
  hinge = np.maximum(d2[:, :, None] - d2[:, None, :] + margin, 0.0)
  return float(hinge[positive[:, :, None] & ~same[:, None, :]].sum())


@pytest.mark.parametrize("mining,reference", [("batch_hard", np_batch_hard_sum),
                                              ("batch_all", np_batch_all_sum)])
def test_triplet_sum_reduction_matches_numpy(mining, reference):
  x, y = pk_batch(np.random.default_rng(5), p=4, k=3)
  batch = {"labels": tf.constant(y)}
  summed = losses.TripletLoss(0.5, mining, reduction="sum")(
      {"embedding": tf.constant(x * 0.4)}, batch)
  mean = losses.TripletLoss(0.5, mining, reduction="mean")(
      {"embedding": tf.constant(x * 0.4)}, batch)
  expected = reference(x * 0.4, y, 0.5)
  assert expected > 1.0
  np.testing.assert_allclose(float(summed), expected, rtol=1e-5)
  if mining == "batch_hard":
    # Every anchor of a 4 x 3 batch is valid: sum = P x K x mean.
    np.testing.assert_allclose(float(summed), 12 * float(mean), rtol=1e-5)


def test_triplet_sum_over_two_replicas_is_the_sum_over_the_global_batch():
  """Each replica mines in its own half; after the trainer's division by the replica count
  the objective is the sum of eq. 7 over both halves."""
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  assert strategy.num_replicas_in_sync == 2
  rng = np.random.default_rng(7)
  halves = [pk_batch(rng, p=2, k=3) for _ in range(2)]
  term = losses.TripletLoss(0.5, "batch_hard", reduction="sum")

  def replica_fn():
    i = tf.distribute.get_replica_context().replica_id_in_sync_group
    x = tf.gather(tf.constant(np.stack([h[0] for h in halves])), i)
    y = tf.gather(tf.constant(np.stack([h[1] for h in halves])), i)
    return term({"embedding": x}, {"labels": y}) / 2.0  # the trainer's scaling

  per_replica = strategy.run(replica_fn)
  got = float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))
  expected = sum(np_batch_hard_sum(x, y, 0.5) for x, y in halves)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_triplet_reduction_is_checked():
  from tfreid.losses import triplet
  with pytest.raises(cfg.ConfigError, match="reduction='total' is not valid.*'mean', 'sum'"):
    triplet.Config(reduction="total").validate("losses.triplet")
  with pytest.raises(ValueError, match="reduction"):
    losses.TripletLoss(reduction="max")


def test_batch_all_averages_over_every_valid_triplet():
  # Two well separated identities: all triplets but the ones of anchor 0 are satisfied.
  x = np.array([[0.0], [0.1], [3.0], [3.1], [0.2]], np.float32)
  y = np.array([0, 0, 1, 1, 1], np.int32)
  got = float(losses.batch_all_triplet_loss(tf.constant(x), tf.constant(y), margin=0.5))
  np.testing.assert_allclose(got, np_batch_all(x, y, 0.5), rtol=1e-5)
  d2 = np_distances(x.astype(np.float64)) ** 2
  triplets = [(a, p, n) for a in range(5) for p in range(5) for n in range(5)
              if y[p] == y[a] and p != a and y[n] != y[a]]
  positive = [max(0.0, d2[a, p] - d2[a, n] + 0.5) for a, p, n in triplets]
  assert 0 < sum(v > 0 for v in positive) < len(triplets)
  np.testing.assert_allclose(got, sum(positive) / len(triplets), rtol=1e-5)


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_triplet_gradient_is_finite_at_zero_distance(mining):
  x = tf.Variable(np.ones((4, 3), np.float32))  # every distance is 0
  y = tf.constant([0, 0, 1, 1])
  with tf.GradientTape() as tape:
    loss = losses.TripletLoss(margin=0.3, mining=mining)({"embedding": x}, {"labels": y})
  grad = tape.gradient(loss, x)
  np.testing.assert_allclose(float(loss), 0.3, rtol=1e-6)
  assert np.all(np.isfinite(grad.numpy()))


def test_batch_hard_gradient_matches_finite_differences():
  x0, y = pk_batch(np.random.default_rng(3), p=2, k=2, dim=3)
  x = tf.Variable(x0.astype(np.float64))
  with tf.GradientTape() as tape:
    loss = losses.batch_hard_triplet_loss(x, y, margin=1.0)
  grad = tape.gradient(loss, x).numpy()
  numeric = np.zeros_like(x0, np.float64)
  for i in range(x0.shape[0]):
    for j in range(x0.shape[1]):
      step = np.zeros_like(numeric)
      step[i, j] = 1e-5
      numeric[i, j] = (np_batch_hard(x0 + step, y, 1.0)
                       - np_batch_hard(x0 - step, y, 1.0)) / 2e-5
  np.testing.assert_allclose(grad, numeric, atol=1e-3)


def test_triplet_errors_name_the_problem():
  with pytest.raises(ValueError, match="batch_hard"):
    losses.TripletLoss(mining="hardest")
  with pytest.raises(KeyError, match="embedding"):
    losses.TripletLoss()({"logits": tf.zeros([2, 3])}, {"labels": tf.constant([0, 1])})


# ---------------------------------------------------------------------------- pair BCE


def test_pair_bce_matches_numpy():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(6, 6)).astype(np.float32) * 2
  y = np.array([0, 1, 0, 2, 1, 0], np.int32)
  got = float(losses.PairBCELoss()({"pair_logits": tf.constant(logits)}, {"labels": y}))
  values = []
  for a in range(6):
    for b in range(6):
      if a != b:
        s = 1 / (1 + np.exp(-float(logits[a, b])))
        values.append(-np.log(s) if y[a] == y[b] else -np.log(1 - s))
  np.testing.assert_allclose(got, np.mean(values), rtol=1e-5)


def test_pair_bce_rejects_non_square_logits():
  with pytest.raises(ValueError, match=r"\[B, B\]"):
    losses.PairBCELoss()({"pair_logits": tf.zeros([3, 4])}, {"labels": tf.constant([0, 1, 2])})


# ----------------------------------------------------------------- XLA and build_losses


def test_every_loss_runs_under_xla_and_matches_eager():
  rng = np.random.default_rng(5)
  x, y = pk_batch(rng, p=2, k=3, dim=4)
  outputs = {"embedding": tf.constant(x, tf.float16),
             "logits": tf.constant(rng.normal(size=(6, 7)), tf.float16),
             "pair_logits": tf.constant(rng.normal(size=(6, 6)), tf.float32)}
  batch = {"labels": tf.constant(y)}
  terms = [losses.CrossEntropyLoss(0.1), losses.TripletLoss(0.3, "batch_hard"),
           losses.TripletLoss(0.3, "batch_all"), losses.PairBCELoss()]
  for term in terms:
    compiled = tf.function(term.__call__, jit_compile=True)
    got = compiled(outputs, batch)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), term(outputs, batch).numpy(), rtol=1e-5)


def test_build_losses_keeps_terms_with_positive_weight():
  from tfreid.losses import cross_entropy, oim, pair_bce, triplet
  c = cfg.ExperimentConfig()
  c.losses.cross_entropy = cross_entropy.Config(weight=1.0, label_smoothing=0.2)
  c.losses.triplet = triplet.Config(weight=0.5, margin=0.4, mining="batch_all",
                                    feature="feat")
  context = losses.LossContext(num_classes=10, output_shapes={"embedding": (8,)})
  terms = losses.build_losses(c, context)
  assert [t.name for t in terms] == ["cross_entropy", "triplet"]
  assert [t.weight for t in terms] == [1.0, 0.5]
  assert terms[0].label_smoothing == 0.2
  assert (terms[1].margin, terms[1].mining, terms[1].feature) == (0.4, "batch_all", "feat")
  assert not any(t.stateful for t in terms)

  c.losses.cross_entropy.weight = 0.0
  c.losses.oim = oim.Config(weight=2.0, scale=10.0, momentum=0.3, feature="embedding")
  c.losses.pair_bce = pair_bce.Config(weight=1.0)
  terms = losses.build_losses(c, context)
  assert [t.name for t in terms] == ["triplet", "oim", "pair_bce"]
  oim_term = terms[1]
  assert oim_term.stateful and oim_term.weight == 2.0
  assert (oim_term.scale, oim_term.momentum) == (10.0, 0.3)
  # The table's width follows the model output OIM reads.
  assert oim_term.table.shape == (10, 8)


def test_two_terms_of_one_type_have_their_own_names_and_settings():
  c = cfg.build_config("nonlocal_i3d:synthetic", overrides=[
      "losses.local_triplet.type=triplet", "losses.local_triplet.margin=0.6",
      "losses.local_triplet.feature=parts", "losses.local_triplet.weight=0.5"])
  context = losses.LossContext(num_classes=4, output_shapes={"embedding": (8,)})
  terms = losses.build_losses(c, context)
  assert [t.name for t in terms] == ["cross_entropy", "triplet", "local_triplet"]
  assert (terms[1].margin, terms[1].feature) == (0.3, "embedding")
  assert (terms[2].margin, terms[2].feature, terms[2].weight) == (0.6, "parts", 0.5)
  # The YAML round trip keeps each term with its type.
  dumped = cfg.to_dict(c)["losses"]
  assert dumped["local_triplet"]["type"] == "triplet"
  assert dumped["local_triplet"]["margin"] == 0.6


def test_unknown_loss_type_and_key_errors_name_them():
  with pytest.raises(cfg.ConfigError, match="'tripplet' is not a loss type.*triplet"):
    cfg.build_config("nonlocal_i3d", overrides=["losses.x.type=tripplet"])
  with pytest.raises(cfg.ConfigError, match="losses.triplet.margn.*Did you mean 'margin'"):
    cfg.build_config("nonlocal_i3d", overrides=["losses.triplet.margn=1"])
  with pytest.raises(cfg.ConfigError, match="losses.triplet needs positives.*got 1"):
    cfg.build_config("nonlocal_i3d", overrides=["data.num_instances=1"])


def test_triplet_on_a_model_distance_uses_it():
  """A triplet term with distance=<name> reads the model's distance function instead of
  `feature` (stal's local triplet on its part distance)."""
  from tfreid.losses import triplet

  class Model:
    def distance_functions(self):
      return {"l1": lambda a, b: tf.reduce_sum(
          tf.abs(a["parts"][:, None] - b["parts"][None]), axis=-1)}

  c = cfg.ExperimentConfig()
  c.losses = cfg.LossesConfig(local=triplet.Config(margin=0.5, distance="l1"))
  term = losses.build_losses(c, losses.LossContext(2, {}, model=Model()))[0]
  rng = np.random.default_rng(0)
  parts = rng.normal(size=(6, 3)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 2, 2])
  got = term({"parts": tf.constant(parts)}, {"labels": tf.constant(labels)}).numpy()
  d = np.abs(parts[:, None] - parts[None]).sum(-1)
  expected = np.mean([max(0.0, 0.5 + max(d[a, p] for p in range(6)
                                         if labels[p] == labels[a] and p != a)
                          - min(d[a, n] for n in range(6) if labels[n] != labels[a]))
                      for a in range(6)])
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  with pytest.raises(ValueError, match="no such distance.*'l1'"):
    c.losses = cfg.LossesConfig(local=triplet.Config(distance="l2"))
    losses.build_losses(c, losses.LossContext(2, {}, model=Model()))
