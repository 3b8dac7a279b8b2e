"""Tests of learning-rate schedules, optimizers, L2 regularisation and gradient clipping."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfreid import config as cfg
from tfreid.training import optimizers

STEPS = 10  # steps per epoch in these tests


def make_config(**schedule):
  c = cfg.ExperimentConfig()
  c.optimizer.learning_rate = 2e-4
  c.schedule = cfg.ScheduleConfig(**schedule)
  return c


def lr_at(schedule, epoch):
  return float(schedule(int(round(epoch * STEPS))))


def test_constant_schedule():
  s = optimizers.build_schedule(make_config(name="constant"), STEPS)
  for epoch in (0, 1.3, 500):
    np.testing.assert_allclose(lr_at(s, epoch), 2e-4, rtol=1e-6)


def test_step_schedule_halves_every_60_epochs():
  s = optimizers.build_schedule(make_config(name="step", step_epochs=60, step_factor=0.5), STEPS)
  for epoch in (0, 10, 59.9, 60, 119.9, 120, 250):
    expected = 2e-4 * 0.5 ** np.floor(epoch / 60)
    np.testing.assert_allclose(lr_at(s, epoch), expected, rtol=1e-6)
  assert lr_at(s, 59.9) == pytest.approx(2e-4) and lr_at(s, 60) == pytest.approx(1e-4)


def test_exponential_schedule_from_decay_start():
  c = make_config(name="exponential", decay_start_epoch=150, decay_epochs=150, decay_rate=0.001)
  c.optimizer.learning_rate = 3e-4
  s = optimizers.build_schedule(c, STEPS)
  for epoch in (0, 100, 150, 151.5, 225, 300):
    expected = 3e-4 * 0.001 ** (max(epoch - 150, 0) / 150)
    np.testing.assert_allclose(lr_at(s, epoch), expected, rtol=1e-5)
  np.testing.assert_allclose(lr_at(s, 300), 3e-7, rtol=1e-5)


def test_linear_warmup_multiplies_the_schedule():
  c = make_config(name="step", step_epochs=4, step_factor=0.1, warmup_epochs=10,
                  warmup_factor=0.1)
  s = optimizers.build_schedule(c, STEPS)
  for epoch in (0, 2.5, 5, 9.9, 10, 12):
    warm = 0.1 + 0.9 * min(epoch / 10, 1.0)
    expected = 2e-4 * 0.1 ** np.floor(epoch / 4) * warm
    np.testing.assert_allclose(lr_at(s, epoch), expected, rtol=1e-5)
  np.testing.assert_allclose(lr_at(s, 0), 2e-5, rtol=1e-6)


def test_schedule_serialises():
  s = optimizers.build_schedule(make_config(name="exponential", warmup_epochs=3), STEPS)
  config = s.get_config()
  assert config["decay"] == "exponential" and config["warmup_epochs"] == 3
  restored = optimizers.EpochLearningRateSchedule.from_config(config)
  again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
  for step in (0, 17, 1600, 2900):
    assert float(restored(step)) == float(s(step)) == float(again(step))
  opt = optimizers.build_optimizer(make_config(name="step"), STEPS)
  opt_again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
  assert float(opt_again.learning_rate) == pytest.approx(2e-4)
  opt_again.iterations.assign(600)  # epoch 60: halved
  assert float(opt_again.learning_rate) == pytest.approx(1e-4)


def test_schedule_rejects_bad_arguments():
  with pytest.raises(ValueError, match="steps_per_epoch"):
    optimizers.build_schedule(make_config(), 0)
  with pytest.raises(ValueError, match="cosine"):
    optimizers.EpochLearningRateSchedule(1e-3, 10, decay="cosine")


# --------------------------------------------------------------------------- optimizers


def optimizer_config(name, **kwargs):
  c = cfg.ExperimentConfig()
  c.optimizer = cfg.OptimizerConfig(name=name, **kwargs)
  return c


def test_build_optimizer_hyper_parameters():
  adam = optimizers.build_optimizer(
      optimizer_config("adam", beta_1=0.8, beta_2=0.99, epsilon=1e-6), STEPS)
  assert isinstance(adam, keras.optimizers.Adam)
  assert (adam.beta_1, adam.beta_2, adam.epsilon) == (0.8, 0.99, 1e-6)
  assert adam.weight_decay is None  # l2 mode: the decay is in the loss
  sgd = optimizers.build_optimizer(optimizer_config("sgd", momentum=0.7, nesterov=True), STEPS)
  assert isinstance(sgd, keras.optimizers.SGD)
  assert (sgd.momentum, sgd.nesterov) == (0.7, True)
  rms = optimizers.build_optimizer(
      optimizer_config("rmsprop", rho=0.95, momentum=0.0, epsilon=1e-7), STEPS)
  assert isinstance(rms, keras.optimizers.RMSprop)
  assert (rms.rho, rms.momentum, rms.epsilon) == (0.95, 0.0, 1e-7)
  adamw = optimizers.build_optimizer(
      optimizer_config("adamw", weight_decay=0.01, weight_decay_mode="decoupled"), STEPS)
  assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == 0.01
  assert "EpochLearningRateSchedule" in str(adam.get_config()["learning_rate"])


def test_l2_weight_decay_coefficient():
  assert optimizers.l2_weight_decay(optimizer_config("adam", weight_decay=5e-4)) == 5e-4
  assert optimizers.l2_weight_decay(
      optimizer_config("adamw", weight_decay=5e-4, weight_decay_mode="decoupled")) == 0.0
  adamw_l2 = optimizers.build_optimizer(optimizer_config("adamw", weight_decay=5e-4), STEPS)
  assert adamw_l2.weight_decay == 0.0  # l2 mode: no second, decoupled decay


def test_adamw_decoupled_decay_matches_formula_and_skips_biases():
  lr, wd, eps = 0.1, 0.05, 1e-8
  c = optimizer_config("adamw", learning_rate=lr, weight_decay=wd,
                       weight_decay_mode="decoupled", epsilon=eps)
  opt = optimizers.build_optimizer(c, STEPS)
  kernel0 = np.array([[1.0, -2.0, 0.5], [0.3, 0.0, 4.0]], np.float32)
  bias0 = np.array([1.0, 2.0, -1.0], np.float32)
  kernel, bias = tf.Variable(kernel0), tf.Variable(bias0)
  g_kernel = np.array([[0.5, -1.0, 0.0], [2.0, 0.1, -0.3]], np.float32)
  opt.apply([tf.constant(g_kernel), tf.zeros_like(bias)], [kernel, bias])
  # Step 1 of Adam: m_hat = g, v_hat = g^2, so the Adam step is lr * g / (|g| + eps); the
  # decoupled decay subtracts lr * wd * w, for kernels only.
  expected = kernel0 - lr * wd * kernel0 - lr * g_kernel / (np.abs(g_kernel) + eps)
  np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bias.numpy(), bias0, rtol=0, atol=0)


def test_loss_scale_optimizer_for_mixed_float16_only():
  c = optimizer_config("adam")
  c.runtime.mixed_precision = "mixed_float16"
  wrapped = optimizers.build_optimizer(c, STEPS)
  assert isinstance(wrapped, keras.optimizers.LossScaleOptimizer)
  assert isinstance(wrapped.inner_optimizer, keras.optimizers.Adam)
  for policy in ("float32", "mixed_bfloat16"):
    c.runtime.mixed_precision = policy
    assert not isinstance(optimizers.build_optimizer(c, STEPS),
                          keras.optimizers.LossScaleOptimizer)
  plain = keras.optimizers.SGD()
  wrapped = optimizers.maybe_wrap_loss_scale(plain, keras.DTypePolicy("mixed_float16"))
  assert isinstance(wrapped, keras.optimizers.LossScaleOptimizer)
  assert optimizers.maybe_wrap_loss_scale(wrapped, "mixed_float16") is wrapped


# ---------------------------------------------------------------- L2 and gradient clipping


def test_l2_regularization_value_and_gradient():
  rng = np.random.default_rng(0)
  conv = tf.Variable(rng.normal(size=(3, 3, 2, 4)).astype(np.float32))
  dense = keras.Variable(rng.normal(size=(4, 5)).astype(np.float32))
  bias = tf.Variable(rng.normal(size=(5,)).astype(np.float32))
  gamma = tf.Variable(np.ones((4,), np.float32))
  wd = 5e-4
  with tf.GradientTape() as tape:
    value = optimizers.l2_regularization([conv, dense, bias, gamma], wd)
  expected = wd / 2 * sum(float((np.asarray(v) ** 2).sum()) for v in (conv.numpy(),
                                                                      dense.numpy()))
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)
  grads = tape.gradient(value, [conv, dense.value, bias, gamma])
  np.testing.assert_allclose(grads[0].numpy(), wd * conv.numpy(), rtol=1e-5)
  np.testing.assert_allclose(grads[1].numpy(), wd * dense.numpy(), rtol=1e-5)
  assert grads[2] is None and grads[3] is None
  assert float(optimizers.l2_regularization([bias], wd)) == 0.0


def test_clip_gradients_by_value_then_global_norm():
  g1 = np.array([[3.0, -7.0], [0.5, 6.0]], np.float32)
  g2 = np.array([-1.0, 9.0], np.float32)
  sparse = tf.IndexedSlices(tf.constant([[8.0, -0.5]]), tf.constant([1]), tf.constant([3, 2]))
  out = optimizers.clip_gradients([tf.constant(g1), None, tf.constant(g2), sparse],
                                  clip_global_norm=4.0, clip_value=5.0)
  assert out[1] is None and isinstance(out[3], tf.IndexedSlices)
  v1, v2, v3 = np.clip(g1, -5, 5), np.clip(g2, -5, 5), np.array([[5.0, -0.5]])
  norm = np.sqrt((v1 ** 2).sum() + (v2 ** 2).sum() + (v3 ** 2).sum())
  np.testing.assert_allclose(out[0].numpy(), v1 * 4.0 / norm, rtol=1e-5)
  np.testing.assert_allclose(out[2].numpy(), v2 * 4.0 / norm, rtol=1e-5)
  np.testing.assert_allclose(out[3].values.numpy(), v3 * 4.0 / norm, rtol=1e-5)
  np.testing.assert_array_equal(out[3].indices.numpy(), [1])
  # Value clipping alone (siamese_convgru: [-5, 5]); 0 disables both.
  only_value = optimizers.clip_gradients([tf.constant(g1)], clip_value=5.0)
  np.testing.assert_array_equal(only_value[0].numpy(), np.clip(g1, -5, 5))
  untouched = optimizers.clip_gradients([tf.constant(g1)])
  np.testing.assert_array_equal(untouched[0].numpy(), g1)
  # The norm bound is not applied when the gradient is already within it.
  small = optimizers.clip_gradients([tf.constant(g2 / 100)], clip_global_norm=4.0)
  np.testing.assert_allclose(small[0].numpy(), g2 / 100, rtol=1e-6)


def test_clip_by_value_keeps_inf_and_nan_for_loss_scaling():
  """An overflow must stay visible to the LossScaleOptimizer after clipping."""
  g = np.array([np.inf, -np.inf, np.nan, 7.0, -0.5], np.float32)
  sparse = tf.IndexedSlices(tf.constant([[np.inf, 9.0]]), tf.constant([0]), tf.constant([2, 2]))
  dense, sliced = optimizers.clip_gradients([tf.constant(g), sparse], clip_value=5.0)
  np.testing.assert_array_equal(dense.numpy(), [np.inf, -np.inf, np.nan, 5.0, -0.5])
  np.testing.assert_array_equal(sliced.values.numpy(), [[np.inf, 5.0]])
