"""NonLocalBlock: identity at initialisation, eqs. 4-6 against numpy, its eq. 5 weights,
equivariance, config."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfreid.layers.non_local import NonLocalBlock

SHAPE = (2, 3, 5, 3, 8)  # B, T, H, W (odd, to exercise the "same" pooling), C


@pytest.fixture(autouse=True)
def _seeded():
  keras.utils.set_random_seed(0)  # layer initialisers draw from it


def _randomize(block, rng):
  """Random non-zero values for every variable (BN variance positive)."""
  for var in block.weights:
    value = rng.normal(0.0, 0.3, var.shape)
    if "variance" in var.path:
      value = rng.uniform(0.5, 2.0, var.shape)
    var.assign(value.astype("float32"))


def _numpy_non_local(x, block):
  """Eqs. 4-6 with explicit sums over positions, in float64."""
  theta_w, theta_b = (np.float64(v) for v in block.theta.get_weights())
  phi_w, phi_b = (np.float64(v) for v in block.phi.get_weights())
  g_w, g_b = (np.float64(v) for v in block.g.get_weights())
  wz_w, wz_b = (np.float64(v) for v in block.w_z.get_weights())
  gamma, beta, mean, var = (np.float64(v) for v in block.w_z_bn.get_weights())
  x = np.float64(x)
  b, t, h, w, c = x.shape
  theta, phi, g = x @ theta_w + theta_b, x @ phi_w + phi_b, x @ g_w + g_b
  if block.subsample:  # 2x2 max-pool, stride 2, windows clipped at the border
    def pool(a):
      out = np.empty((b, t, (h + 1) // 2, (w + 1) // 2, a.shape[-1]))
      for i in range(out.shape[2]):
        for j in range(out.shape[3]):
          out[:, :, i, j] = a[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(2, 3))
      return out
    phi, g = pool(phi), pool(g)
  theta = theta.reshape(b, t * h * w, -1)
  phi, g = phi.reshape(b, -1, phi.shape[-1]), g.reshape(b, -1, g.shape[-1])
  z = np.empty_like(x).reshape(b, t * h * w, c)
  for n in range(b):
    for i in range(t * h * w):
      f = np.exp(np.array([theta[n, i] @ phi[n, j] for j in range(phi.shape[1])]))  # eq. 4
      y = sum(f[j] / f.sum() * g[n, j] for j in range(phi.shape[1]))               # eq. 5
      wz = y @ wz_w + wz_b
      z[n, i] = gamma * (wz - mean) / np.sqrt(var + block.bn_epsilon) + beta       # eq. 6
  return z.reshape(x.shape) + x


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("subsample", [False, True])
def test_identity_at_initialisation(subsample, training):
  x = np.random.default_rng(0).normal(size=SHAPE).astype("float32")
  block = NonLocalBlock(0.5, subsample)
  np.testing.assert_array_equal(block(x, training=training).numpy(), x)
  assert np.all(block.w_z_bn.gamma.numpy() == 0.0)
  assert block.theta.kernel.shape == (8, 4) and block.w_z.kernel.shape == (4, 8)


@pytest.mark.parametrize("subsample", [False, True])
def test_matches_numpy_equations(subsample):
  rng = np.random.default_rng(1)
  x = rng.normal(size=SHAPE).astype("float32")
  block = NonLocalBlock(0.5, subsample)
  block.build(SHAPE)
  _randomize(block, rng)
  expected = _numpy_non_local(x, block)
  got = block(x, training=False).numpy()
  assert np.abs(expected - x).max() > 0.1  # the block is far from the identity here
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  compiled = tf.function(lambda v: block(v, training=False), jit_compile=True)
  np.testing.assert_allclose(compiled(x).numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("subsample", [False, True])
def test_attention_weights_are_eq_5_over_the_key_grid(subsample):
  """attention_weights: row i is softmax_j(theta(x_i)^T phi(x_j)) over the keys of
  key_grid (2x2 max-pooled phi when subsampling), computed here in float64."""
  rng = np.random.default_rng(6)
  x = rng.normal(size=SHAPE).astype("float32")
  block = NonLocalBlock(0.5, subsample)
  block.build(SHAPE)
  _randomize(block, rng)
  b, t, h, w, _ = SHAPE
  grid = block.key_grid(t, h, w)
  assert grid == ((3, 3, 2) if subsample else (3, 5, 3))
  theta_w, theta_b = (np.float64(v) for v in block.theta.get_weights())
  phi_w, phi_b = (np.float64(v) for v in block.phi.get_weights())
  theta = (np.float64(x) @ theta_w + theta_b).reshape(b, t * h * w, -1)
  phi = np.float64(x) @ phi_w + phi_b
  if subsample:
    padded = np.full((b, t, 6, 4, phi.shape[-1]), -np.inf)
    padded[:, :, :h, :w] = phi
    phi = padded.reshape(b, t, 3, 2, 2, 2, -1).max(axis=(3, 5))
  phi = phi.reshape(b, int(np.prod(grid)), -1)
  logits = np.einsum("bic,bjc->bij", theta, phi)
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  got = block.attention_weights(x).numpy()
  assert got.shape == (b, t * h * w, int(np.prod(grid))) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
  assert expected.max() > 5.0 / expected.shape[-1]  # far from uniform: a real check


def test_permutation_equivariance_without_subsampling():
  rng = np.random.default_rng(2)
  x = rng.normal(size=SHAPE).astype("float32")
  block = NonLocalBlock(0.5, subsample=False)
  block.build(SHAPE)
  _randomize(block, rng)
  b, t, h, w, c = SHAPE
  perm = rng.permutation(t * h * w)
  permute = lambda a: a.reshape(b, t * h * w, c)[:, perm].reshape(SHAPE)
  out = block(x, training=False).numpy()
  out_of_permuted = block(permute(x), training=False).numpy()
  np.testing.assert_allclose(out_of_permuted, permute(out), rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_variable_once_gamma_is_nonzero():
  rng = np.random.default_rng(3)
  x = tf.constant(rng.normal(size=SHAPE).astype("float32"))
  block = NonLocalBlock(0.5, name="nl")
  block.build(SHAPE)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(block(x, training=True) ** 2)
  grads = dict(zip([v.path for v in block.trainable_variables],
                   tape.gradient(loss, block.trainable_variables)))
  # At initialisation (gamma = 0) only the BN after W_z learns: the block is the identity.
  assert np.abs(grads["nl/w_z_bn/gamma"]).max() > 0
  assert np.abs(grads["nl/theta/kernel"]).max() == 0
  block.w_z_bn.gamma.assign(np.full(8, 0.5, "float32"))
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(block(x, training=True) ** 2)
  for var, grad in zip(block.trainable_variables, tape.gradient(loss, block.trainable_variables)):
    assert grad is not None and np.abs(grad.numpy()).max() > 0, var.path


def test_config_round_trip_and_errors():
  rng = np.random.default_rng(4)
  x = rng.normal(size=SHAPE).astype("float32")
  block = NonLocalBlock(bottleneck_ratio=0.25, subsample=False, bn_momentum=0.8,
                        bn_epsilon=1e-3, name="nl")
  block.build(SHAPE)
  _randomize(block, rng)
  config = block.get_config()
  for key, value in {"bottleneck_ratio": 0.25, "subsample": False, "bn_momentum": 0.8,
                     "bn_epsilon": 1e-3}.items():
    assert config[key] == value
  clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(block))
  assert isinstance(clone, NonLocalBlock) and clone.get_config() == config
  assert clone.built  # the serialized build config rebuilds it
  clone.set_weights(block.get_weights())
  np.testing.assert_allclose(clone(x).numpy(), block(x).numpy(), rtol=1e-6)
  assert clone.theta.kernel.shape == (8, 2)
  with pytest.raises(ValueError, match=r"\[B, T, H, W, C\]"):
    NonLocalBlock()(np.zeros((2, 4, 4, 8), "float32"))
  with pytest.raises(ValueError, match="bottleneck_ratio"):
    NonLocalBlock(bottleneck_ratio=0.0)


def test_mixed_bfloat16_keeps_float32_softmax():
  x = np.random.default_rng(5).normal(size=SHAPE).astype("float32")
  block = NonLocalBlock(dtype="mixed_bfloat16")
  out = block(x)
  assert out.dtype == tf.bfloat16
  assert block.theta.kernel.dtype == "float32"
  np.testing.assert_allclose(out.numpy().astype("float32"), x, atol=0.02, rtol=0.01)
