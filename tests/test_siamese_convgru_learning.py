"""siamese_convgru learns through the trainer: the pair cross-entropy of eq. 9 fits one fixed
batch of 10 pairs, with the attention penalty on.

Regression (the bug behind ``siamese_convgru:synthetic`` retrieving at chance): eq. 3's W_i
started from Glorot-uniform values, so the attention m_t started away from uniform and eq. 9's
penalty (minimal at uniform attention) had a gradient from the first step. It reaches the
tower through h_{t-1}, the input of eq. 3; the pair loss's gradient on the tower is
v ⊙ h_bar^b (eq. 8 is bilinear), small while h_bar is small, and RMSProp moves every weight
by about the rate whatever the size of its gradient, so the penalty's direction won: h_bar went
to 0, the saddle of eq. 8 where the pair loss's gradient vanishes, and the pair loss stayed at
log 2. W_i now starts at 0: m_t starts uniform, where the penalty's gradient is 0.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfreid import config as cfg
from tfreid.losses.attention_penalty import attention_penalty
from tfreid.models.siamese_convgru import SiameseConvGRU
from tfreid.training import trainer as trainer_lib

import data_fixtures
from trainer_fixtures import first_cpu_strategy

# GoogLeNet at 1/8 width from scratch (the synthetic variant's CNN) on 64 x 32 frames: a
# 2 x 1 cube, 4-frame clips, 5 identities x 2 clips: the paper's 10 pairs.
TINY = ["data.height=64", "data.width=32", "data.seq_len=4", "data.test_seq_len=4",
        "data.num_identities=5", "data.num_instances=2", "runtime.jit_compile=false",
        "trainer.epochs=1", "trainer.steps_per_epoch=100", "trainer.log_every_steps=1000",
        "trainer.checkpoint_every_steps=1000", "trainer.image_summary_every_steps=0"]
STEPS = 30


def test_attention_starts_uniform_and_the_penalty_has_no_gradient_at_initialisation():
  keras.utils.set_random_seed(3)
  model = SiameseConvGRU(backbone_width=0.125, channels=(4, 6, 6), kernel_sizes=(3, 5, 5),
                         dropout=0.0, gru_init_range=0.0, height=96, width=64)
  np.testing.assert_array_equal(model.stack.attention_kernel.numpy(), 0.0)
  clips = np.random.default_rng(4).integers(0, 256, (3, 5, 96, 64, 3), np.uint8)
  with tf.GradientTape(persistent=True) as tape:
    outputs = model({"clips": clips}, training=True)
    penalty = tf.reduce_mean(attention_penalty(outputs["attention_spatial"]))
    logit_sum = tf.reduce_sum(outputs["pair_logits"])
  # A 3 x 2 cube (K^2 = 6), T = 5: uniform m_t = 1/6, penalty K^2 (1 - T/K^2)^2 = 1/6.
  np.testing.assert_allclose(outputs["attention_spatial"].numpy(), 1.0 / 6.0, rtol=1e-6)
  np.testing.assert_allclose(float(penalty), 6.0 * (1.0 - 5.0 / 6.0) ** 2, rtol=1e-5)
  variables = model.trainable_variables
  for variable, grad in zip(variables, tape.gradient(penalty, variables)):
    assert grad is None or float(tf.reduce_max(tf.abs(grad))) < 1e-7, variable.path
  # The pair logits do move the attention (W_i gets a gradient from them).
  grad = tape.gradient(logit_sum, model.stack.attention_kernel)
  assert float(tf.reduce_max(tf.abs(grad))) > 1e-6


@pytest.fixture(scope="module", name="data")
def fixture_data(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("sc_learn") / "data")
  data_fixtures.write_tiny_dataset(path, num_ids=5, tracklets_per_id=2, num_frames=(6, 12),
                                   height=80, width=40, cameras=2, num_test_ids=2, seed=5,
                                   content="person")
  return path


def _fit_one_batch(data, model_dir, random_attention_kernel=False):
  """Pair BCE and h_bar spread over STEPS steps on one fixed batch of 10 pairs."""
  config = cfg.build_config("siamese_convgru:synthetic", data_dir=str(data), overrides=TINY)
  keras.utils.set_random_seed(0)
  trainer = trainer_lib.Trainer(config, str(model_dir), strategy=first_cpu_strategy())
  if random_attention_kernel:
    kernel = trainer.model.stack.attention_kernel
    kernel.assign(keras.initializers.GlorotUniform(seed=1)(kernel.shape))
  batch = next(iter(trainer._train_dataset(0)))  # pylint: disable=protected-access
  labels = batch["labels"].numpy().reshape(5, 2)
  assert (labels[:, 0] == labels[:, 1]).all() and len(set(labels[:, 0])) == 5
  losses, spread = [], []
  for _ in range(STEPS):
    _, terms = trainer._train_step(batch)  # pylint: disable=protected-access
    assert set(terms) >= {"pair_bce", "attention_penalty"}
    losses.append(float(terms["pair_bce"]))
    spread.append(float(terms["metrics/embedding_spread"]))
  return np.array(losses), np.array(spread)


def test_pair_loss_fits_one_batch_of_ten_pairs_with_the_attention_penalty(data, tmp_path):
  losses, spread = _fit_one_batch(data, tmp_path / "model")
  assert np.isfinite(losses).all()
  # Measured: log 2 at the start, 0.19 - 0.29 over steps 21-30; h_bar spread 0.006 -> 0.44.
  assert losses[-10:].mean() < 0.45, losses
  assert spread[-10:].min() > 0.1, spread


def test_random_attention_kernel_collapses_h_bar_and_leaves_the_pair_loss_at_log_2(
    data, tmp_path):
  """The failure the zero W_i avoids, kept visible: the same run from a Glorot-uniform W_i."""
  losses, spread = _fit_one_batch(data, tmp_path / "model", random_attention_kernel=True)
  assert spread[-10:].max() < 5e-3, spread
  np.testing.assert_allclose(losses[-10:], math.log(2.0), atol=2e-3)
