"""Tests of the OIM loss: forward and gradient, table update, mirrored 2-replica update."""

import numpy as np
import pytest
import tensorflow as tf

from tfreid import losses


def np_normalize(x):
  return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)


def np_oim_update(table, features, labels, momentum):
  """The reference rule, one sample after the other in batch order."""
  table = table.astype(np.float64).copy()
  for x, y in zip(np_normalize(features.astype(np.float64)), labels):
    table[y] = momentum * table[y] + (1 - momentum) * x
    table[y] = table[y] / (np.linalg.norm(table[y]) + 1e-12)
  return table


def random_table(rng, n, d):
  return np_normalize(rng.normal(size=(n, d))).astype(np.float32)


def two_replica_strategy():
  cpus = tf.config.list_logical_devices("CPU")
  assert len(cpus) >= 2, "tests/conftest.py should create two logical CPU devices"
  return tf.distribute.MirroredStrategy([d.name for d in cpus[:2]])


def test_oim_loss_and_gradient_match_numpy():
  rng = np.random.default_rng(0)
  n, d, scale = 5, 4, 10.0
  table = random_table(rng, n, d)
  x = rng.normal(size=(3, d)).astype(np.float32)
  y = np.array([4, 0, 4], np.int32)
  term = losses.OIMLoss(num_classes=n, embedding_dim=d, scale=scale, momentum=0.5)
  term.table.assign(table)
  xv = tf.Variable(x)
  with tf.GradientTape(persistent=True) as tape:
    loss = term({"embedding": xv}, {"labels": tf.constant(y)})
  # Numpy: cosine logits scaled by s, softmax cross-entropy, mean over the batch.
  norm = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
  xh = x / norm
  z = scale * xh @ table.T
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  expected = -np.log(p[np.arange(3), y]).mean()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  # dL/dx = (I - xh xh^T) / ||x|| . s (p - onehot) V / B; the table gets no gradient.
  g_hat = scale * (p - np.eye(n)[y]) @ table / 3
  expected_grad = (g_hat - (g_hat * xh).sum(1, keepdims=True) * xh) / norm
  np.testing.assert_allclose(tape.gradient(loss, xv).numpy(), expected_grad, atol=1e-5)
  assert tape.gradient(loss, term.table) is None
  assert not term.table.trainable


def test_oim_update_is_sequential_momentum_and_normalisation():
  rng = np.random.default_rng(1)
  n, d, m = 6, 3, 0.3
  table = random_table(rng, n, d)
  table[5] = 0.0  # an identity never seen yet
  x = rng.normal(size=(7, d)).astype(np.float32) * 3
  y = np.array([2, 0, 2, 5, 2, 0, 1], np.int32)  # identity 2 three times, not contiguous
  term = losses.OIMLoss(num_classes=n, embedding_dim=d, momentum=m)
  term.table.assign(table)
  term.update({"embedding": tf.constant(x)}, {"labels": tf.constant(y)})
  got = term.table.numpy()
  np.testing.assert_allclose(got, np_oim_update(table, x, y, m), atol=1e-6)
  # Untouched rows unchanged, updated rows unit-norm, a zero row becomes its feature.
  np.testing.assert_array_equal(got[[3, 4]], table[[3, 4]])
  np.testing.assert_allclose(np.linalg.norm(got[[0, 1, 2, 5]], axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(got[5], np_normalize(x[3]), atol=1e-6)
  # One sample, by hand: v <- normalise(m v + (1 - m) x / ||x||).
  by_hand = m * table[1] + (1 - m) * x[6] / np.linalg.norm(x[6])
  np.testing.assert_allclose(got[1], by_hand / np.linalg.norm(by_hand), atol=1e-6)


def test_oim_forward_runs_under_xla():
  rng = np.random.default_rng(2)
  term = losses.OIMLoss(num_classes=4, embedding_dim=3, scale=30.0)
  term.table.assign(random_table(rng, 4, 3))
  outputs = {"embedding": tf.constant(rng.normal(size=(4, 3)), tf.float16)}
  batch = {"labels": tf.constant([0, 1, 3, 3])}
  got = tf.function(term.__call__, jit_compile=True)(outputs, batch)
  assert got.dtype == tf.float32
  np.testing.assert_allclose(got.numpy(), term(outputs, batch).numpy(), rtol=1e-4)


def test_two_replica_update_equals_single_device_update_on_global_batch():
  rng = np.random.default_rng(3)
  n, d, m = 5, 4, 0.5
  table = random_table(rng, n, d)
  x = rng.normal(size=(8, d)).astype(np.float32)
  y = np.array([1, 3, 1, 0, 3, 1, 4, 3], np.int32)  # identities split across replicas

  strategy = two_replica_strategy()
  with strategy.scope():
    term = losses.OIMLoss(num_classes=n, embedding_dim=d, scale=10.0, momentum=m)
  assert term.table.synchronization == tf.VariableSynchronization.ON_WRITE
  assert term.table.aggregation == tf.VariableAggregation.ONLY_FIRST_REPLICA
  assert len(strategy.experimental_local_results(term.table)) == 2
  term.table.assign(table)

  def local(values):
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: values[4 * ctx.replica_id_in_sync_group:4 * (ctx.replica_id_in_sync_group
                                                                  + 1)])

  outputs = {"embedding": local(x)}
  batch = {"labels": local(y)}
  def forward(outputs, batch):
    # One XLA function per replica: a traced function captures one replica's variables.
    return tf.function(term.__call__, jit_compile=True)(outputs, batch)

  @tf.function
  def step(outputs, batch):
    loss = strategy.run(forward, args=(outputs, batch))
    strategy.run(term.update, args=(outputs, batch))
    return loss

  per_replica_loss = strategy.experimental_local_results(step(outputs, batch))

  # Each replica's forward pass used the table as it was before the update.
  single = losses.OIMLoss(num_classes=n, embedding_dim=d, scale=10.0, momentum=m)
  single.table.assign(table)
  for r in range(2):
    part = slice(4 * r, 4 * r + 4)
    expected = single({"embedding": tf.constant(x[part])}, {"labels": tf.constant(y[part])})
    np.testing.assert_allclose(per_replica_loss[r].numpy(), expected.numpy(), rtol=1e-5)

  single.update({"embedding": tf.constant(x)}, {"labels": tf.constant(y)})
  reference = np_oim_update(table, x, y, m)
  for copy in strategy.experimental_local_results(term.table):
    np.testing.assert_allclose(copy.numpy(), single.table.numpy(), atol=1e-6)
    np.testing.assert_allclose(copy.numpy(), reference, atol=1e-6)


def test_update_outside_replica_context_is_an_error():
  strategy = two_replica_strategy()
  with strategy.scope():
    term = losses.OIMLoss(num_classes=3, embedding_dim=2)
    with pytest.raises(RuntimeError, match="strategy.run"):
      term.update({"embedding": tf.ones([2, 2])}, {"labels": tf.constant([0, 1])})


def test_table_is_checkpointed(tmp_path):
  rng = np.random.default_rng(4)
  term = losses.OIMLoss(num_classes=3, embedding_dim=2)
  table = random_table(rng, 3, 2)
  term.table.assign(table)
  path = tf.train.Checkpoint(losses=[term]).write(str(tmp_path / "ckpt"))
  restored = losses.OIMLoss(num_classes=3, embedding_dim=2)
  tf.train.Checkpoint(losses=[restored]).read(path).assert_consumed()
  np.testing.assert_array_equal(restored.table.numpy(), table)


def test_wrong_feature_dimension_is_an_error():
  term = losses.OIMLoss(num_classes=3, embedding_dim=4)
  with pytest.raises(ValueError, match=r"\[B, 4\]"):
    term({"embedding": tf.ones([2, 5])}, {"labels": tf.constant([0, 1])})


def test_oim_hand_computed_cases():
  """V = I_2. Scale 1, z = e_1, y = 0: L = log(1 + e^-1). Scale 30, z = (0.6, 0.8), y = 0:
  logits (18, 24), L = log(1 + e^6). Update with momentum 0.5: v_0 = normalise((0.8, 0.4))
  = (2, 1) / sqrt(5)."""
  for scale, z, want in ((1.0, [1.0, 0.0], 0.31326169), (30.0, [0.6, 0.8], 6.00247569)):
    term = losses.OIMLoss(num_classes=2, embedding_dim=2, scale=scale, momentum=0.5)
    term.table.assign(np.eye(2, dtype=np.float32))
    outputs, batch = {"embedding": tf.constant([z])}, {"labels": tf.constant([0])}
    assert float(term(outputs, batch)) == pytest.approx(want, rel=1e-6)
  term.update(outputs, batch)
  np.testing.assert_allclose(term.table.numpy(), [[2 / 5 ** 0.5, 1 / 5 ** 0.5], [0.0, 1.0]],
                             atol=1e-6)
