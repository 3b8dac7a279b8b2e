"""Mixed precision (bfloat16; float16 with loss scaling) and gradient clipping by value in
the training step, against a numpy gradient."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfreid.training import trainer as trainer_lib

from trainer_fixtures import (distributed_batches,  # pylint: disable=unused-import
                              fixture_float32_policy, fixture_tiny_data, tiny_config,
                              two_cpu_strategy)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_run_trains_with_float32_variables(policy, tiny_data, tmp_path,
                                                          float32_policy):
  del float32_policy
  config = tiny_config(tiny_data, "trainer.epochs=3", f"runtime.mixed_precision={policy}",
                       "runtime.jit_compile=false")
  trainer = trainer_lib.Trainer(config, str(tmp_path))
  before = [v.numpy() for v in trainer.model.trainable_variables]
  last = trainer.train()
  assert int(trainer.global_step.numpy()) == 6
  assert last and all(np.isfinite(v) for v in last.values()), last
  compute = policy.split("_")[1]
  convs = [layer for layer in trainer.model.backbone.layers if layer.name == "conv1_conv"]
  assert convs and convs[0].compute_dtype == compute
  assert all(v.dtype == "float32" for v in trainer.model.weights if v.dtype != "int64")
  after = [v.numpy() for v in trainer.model.trainable_variables]
  assert all(np.isfinite(a).all() for a in after)
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))
  updates = int(trainer.optimizer.iterations.numpy())
  if policy == "mixed_bfloat16":
    assert not isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert updates == 6
  else:
    # Dynamic loss scaling: each overflowing step is skipped and halves the scale (from
    # 2**15); the others update the weights.
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    skipped = round(np.log2(2.0 ** 15 / float(trainer.optimizer.dynamic_scale.numpy())))
    assert updates + skipped == 6 and updates > 0, (updates, skipped)


class LinearModel(keras.Model):
  """logits = mean colour of the clip @ W + b; simple enough for a numpy gradient."""

  def __init__(self, num_classes):
    super().__init__()
    self.classifier = keras.layers.Dense(num_classes, name="classifier")

  def call(self, inputs, training=False):
    x = keras.ops.mean(keras.ops.cast(inputs["clips"], "float32") / 255.0, axis=(1, 2, 3))
    return {"embedding": x, "logits": self.classifier(x)}


NUM_CLASSES = 6
CE_WEIGHT = 100.0
LR = 0.1
EPS = 0.1


def _linear_trainer(monkeypatch, tmp_path, policy, *overrides):
  monkeypatch.setattr(trainer_lib, "build_model", lambda c, n: LinearModel(n))
  config = tiny_config(
      "", "losses.triplet.weight=0", f"losses.cross_entropy.weight={CE_WEIGHT}",
      f"losses.cross_entropy.label_smoothing={EPS}", "optimizer.name=sgd",
      "optimizer.momentum=0", f"optimizer.learning_rate={LR}", "optimizer.weight_decay=0",
      "schedule.name=constant", f"runtime.mixed_precision={policy}",
      "runtime.jit_compile=true", *overrides)
  strategy = two_cpu_strategy()
  trainer = trainer_lib.Trainer(config, str(tmp_path), strategy=strategy,
                                num_classes=NUM_CLASSES, steps_per_epoch=10)
  return config, strategy, trainer


def _batch(config, labels, seed=0):
  rng = np.random.default_rng(seed)
  d = config.data
  labels = np.asarray(labels, np.int32)
  return {"clips": rng.integers(0, 256, (len(labels), d.seq_len, d.height, d.width, 3),
                                np.uint8),
          "labels": labels, "pids": labels, "camids": np.zeros(len(labels), np.int32)}


def train_step(trainer, strategy, config, batch):
  """One step of the trainer on `batch`, split across the strategy's replicas."""
  step = trainer._train_step  # pylint: disable=protected-access
  return step(next(distributed_batches(strategy, config, [batch])))


def numpy_gradient(batch, kernel, bias):
  """Gradient of CE_WEIGHT * label-smoothed cross-entropy of the linear model, float64."""
  x = batch["clips"].astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
  logits = x @ kernel + bias
  q = np.exp(logits - logits.max(axis=1, keepdims=True))
  q /= q.sum(axis=1, keepdims=True)
  target = np.full_like(q, EPS / NUM_CLASSES)
  target[np.arange(len(q)), batch["labels"]] += 1 - EPS
  d_logits = CE_WEIGHT * (q - target) / len(q)
  return x.T @ d_logits, d_logits.sum(axis=0)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_clip_by_value_bounds_the_global_gradient(policy, monkeypatch, tmp_path,
                                                  float32_policy):
  """With 2 replicas the update is -lr * clip(g, -5, 5) of the global-batch gradient g
  (siamese_convgru section V-B); under mixed_float16 it is clipped unscaled."""
  del float32_policy
  config, strategy, trainer = _linear_trainer(monkeypatch, tmp_path, policy,
                                              "optimizer.clip_value=5")
  batch = _batch(config, [0, 0, 1, 1, 2, 2, 3, 3])
  if policy == "mixed_float16":
    # Keras starts at 2**15, at which this loss overflows float16 and the step is skipped;
    # 64 keeps it finite and still far from 1, so an unscaled clip would show.
    trainer.optimizer.dynamic_scale.assign(64.0)
  kernel0, bias0 = (v.numpy() for v in trainer.model.classifier.weights)
  grads = numpy_gradient(batch, kernel0.astype(np.float64), bias0.astype(np.float64))
  clipped = [np.clip(g, -5, 5) for g in grads]
  flat = np.concatenate([g.ravel() for g in grads])
  assert (np.abs(flat) > 5.5).any() and (np.abs(flat) < 4.5).any(), flat  # both kinds
  train_step(trainer, strategy, config, batch)
  atol = 1e-5 if policy == "float32" else 3e-3
  for v, start, g in zip(trainer.model.classifier.weights, (kernel0, bias0), clipped):
    for copy in strategy.experimental_local_results(v.value):
      np.testing.assert_allclose(copy.numpy(), start - LR * g, rtol=0, atol=atol)


@pytest.mark.parametrize("clip_value", [0, 5])
def test_float16_overflow_on_one_replica_skips_the_step_on_both(clip_value, monkeypatch,
                                                                tmp_path, float32_policy):
  """The loss-scale optimizer decides on the global gradient: an overflow in replica 1's
  gradient skips the update everywhere and halves the loss scale, also when gradients are
  clipped by value (clipping must not turn inf into a finite update)."""
  del float32_policy
  real_build = trainer_lib.build_losses

  class HugeOnLabel3:
    """1e30 * mean(logits) on a replica whose batch holds label 3, else 0."""
    name, weight = "huge", 1.0

    def __call__(self, outputs, batch):
      on = tf.reduce_any(tf.equal(batch["labels"], 3))
      return tf.where(on, 1e30, 0.0) * tf.reduce_mean(outputs["logits"])

  monkeypatch.setattr(trainer_lib, "build_losses",
                      lambda c, context: real_build(c, context) + [HugeOnLabel3()])
  # Cross-entropy of weight 1 alone does not overflow float16 at Keras' initial 2**15.
  config, strategy, trainer = _linear_trainer(monkeypatch, tmp_path, "mixed_float16",
                                              "losses.cross_entropy.weight=1",
                                              f"optimizer.clip_value={clip_value}")
  before = [v.numpy() for v in trainer.model.classifier.weights]
  scale = float(trainer.optimizer.dynamic_scale.numpy())
  # Replica 0 gets labels 0 and 1 (finite gradient), replica 1 labels 2 and 3 (overflow).
  batch = _batch(config, [0, 0, 1, 1, 2, 2, 3, 3])
  train_step(trainer, strategy, config, batch)
  for v, start in zip(trainer.model.classifier.weights, before):
    for copy in strategy.experimental_local_results(v.value):
      np.testing.assert_array_equal(copy.numpy(), start)
  assert float(trainer.optimizer.dynamic_scale.numpy()) == scale / 2
  assert int(trainer.optimizer.iterations.numpy()) == 0
  # The same step without label 3 is finite and updates the weights.
  batch = _batch(config, [0, 0, 1, 1, 2, 2, 4, 4])
  train_step(trainer, strategy, config, batch)
  assert int(trainer.optimizer.iterations.numpy()) == 1
  for v, start in zip(trainer.model.classifier.weights, before):
    for copy in strategy.experimental_local_results(v.value):
      assert np.isfinite(copy.numpy()).all() and not np.array_equal(copy.numpy(), start)
