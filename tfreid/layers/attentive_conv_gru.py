"""siamese_convgru's recurrent part: spatial soft attention (eqs. 3-4), the stacked ConvGRUs
(eq. 5), their initial state (eq. 7) and temporal attention pooling (eq. 6).

Wu et al., "Where-and-When to Look", sections III-B to III-D and IV-A. Per sequence, from the
CNN feature cubes X_t [K1, K2, D] of its T frames (fig. 2):

    mu       = (1/T) sum_t (1/K^2) sum_i X_{t,i}                         eq. 7 (argument)
    h_0^l    = f_init^l(mu), broadcast over layer l's grid                eq. 7
    m_t      = softmax_i(W_i^T h_{t-1}^L)                                 eq. 3
    x_t(i)   = m_{t,i} X_{t,i}                                            eq. 4
    h_t^l    = ConvGRU^l(h_t^{l-1}, h_{t-1}^l), l = 1..L, h_t^0 = x_t     eq. 5
    h_bar    = sum_t alpha_t h_t^L,  alpha_t > 0, sum_t alpha_t = 1       eq. 6

Readings where the paper is unclear (the library's choices, each said where it is made):

- eq. 3 conditions the location softmax on "the previous hidden state"; fig. 2(b) has the
  GRU stack "predict the next location probabilities", so it is the top layer's state
  h_{t-1}^L, flattened, mapped linearly (eq. 3 is linear; the text's "multi-layer
  perceptron" is not) with no bias (eq. 3 has none). The printed denominator lacks the exp.
- eq. 4 scales each feature slice by its weight and keeps the K x K x D cube (fig. 3); the
  weights are not rescaled by K^2.
- eq. 5 is printed "l = L, ..., 1": the layers are computed bottom-up, l = 1..L, each taking
  the layer below's new state. Between layers a 2 x 2 max-pooling of stride 2 ("same"
  padding: 7 -> 4 -> 2) makes the spatial sizes compatible (section V-B).
- eq. 7: f_init is "a multi-layer perceptron"; here one affine map and tanh per layer,
  h_0^l = tanh(W^l mu + b^l), broadcast over the layer's grid (mu has no spatial layout).
- eq. 6 is garbled in print (a ratio of two sums); the text defines alpha as positive
  weights summing to 1, produced by "a soft-attention based temporal pooling": here
  alpha = softmax_t(w^T flatten(h_t^L) + b). `mean` (alpha = 1/T, the "average pooled" of
  section V-B) and `max` (table IV) are the alternatives.
- Dropout 0.7 "on the hidden-unit activations" (section V-B) acts on each layer's output as
  it passes up to the next layer (the recurrent path is left alone, which would otherwise
  forget the state) and, in the model, on h_bar before the similarity. Masks are drawn once
  per sequence and time step, before the time loop.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfreid.layers.conv_gru import ConvGRUCell

SPATIAL_ATTENTION_MODES = ("learned", "uniform")
TEMPORAL_POOLING_MODES = ("attention", "mean", "max")


def pooled_size(size: int, pool: bool) -> int:
  """Spatial size after the 2 x 2, stride-2 "same" max-pooling between layers."""
  return -(-size // 2) if pool else size


def spatial_soft_attention(logits):
  """Eq. 3: the location softmax m_t over the K1 * K2 locations, from logits [B, K1*K2]."""
  return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)


def attend(cube, weights):
  """Eq. 4: x_t(i) = m_{t,i} X_{t,i}. cube [B, K1, K2, D], weights [B, K1*K2] -> the
  attention-weighted cube [B, K1, K2, D]."""
  shape = tf.shape(cube)
  m = tf.reshape(tf.cast(weights, cube.dtype), [shape[0], shape[1], shape[2], 1])
  return m * cube


def temporal_attention_weights(scores):
  """Eq. 6's alpha: softmax over time of per-frame scores [B, T] (alpha_t > 0, sum 1)."""
  return tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1)


def temporal_pool(states, alpha):
  """Eq. 6: h_bar = sum_t alpha_t h_t. states [B, T, F], alpha [B, T] -> [B, F]."""
  return tf.einsum("bt,btf->bf", tf.cast(alpha, tf.float32), tf.cast(states, tf.float32))


@keras.saving.register_keras_serializable(package="tfreid")
class TemporalAttentionPooling(keras.layers.Layer):
  """Eq. 6: pools the top ConvGRU states [B, T, k1, k2, C] into h_bar [B, k1 k2 C].

  ``mode``: ``attention`` (alpha = softmax_t(w^T flatten(h_t) + b); w, b learned), ``mean``
  (alpha = 1/T) or ``max`` (element-wise maximum over time, table IV). Returns
  ``(h_bar, alpha)``, alpha [B, T] (None with ``max``).
  """

  def __init__(self, mode: str = "attention", **kwargs):
    super().__init__(**kwargs)
    if mode not in TEMPORAL_POOLING_MODES:
      raise ValueError(f"TemporalAttentionPooling mode={mode!r}; expected one of "
                       f"{TEMPORAL_POOLING_MODES}.")
    self.mode = mode

  def build(self, input_shape):
    features = int(np.prod(input_shape[2:]))
    if self.mode == "attention":
      self.score_kernel = self.add_weight(shape=(features, 1), initializer="zeros",
                                          name="score_kernel")
      self.score_bias = self.add_weight(shape=(), initializer="zeros", name="score_bias")
    self.built = True

  def call(self, states):
    shape = tf.shape(states)
    flat = tf.reshape(tf.cast(states, tf.float32), [shape[0], shape[1], -1])
    if self.mode == "max":
      return tf.reduce_max(flat, axis=1), None
    if self.mode == "mean":
      alpha = tf.ones(tf.shape(flat)[:2], tf.float32) / tf.cast(shape[1], tf.float32)
    else:
      scores = tf.einsum("btf,fo->bto", flat, tf.cast(self.score_kernel, tf.float32))[..., 0]
      alpha = temporal_attention_weights(scores + tf.cast(self.score_bias, tf.float32))
    return temporal_pool(flat, alpha), alpha

  def get_config(self):
    config = super().get_config()
    config["mode"] = self.mode
    return config


@keras.saving.register_keras_serializable(package="tfreid")
class AttentiveConvGRUStack(keras.layers.Layer):
  """Eqs. 3, 4, 5 and 7: spatial soft attention driving L stacked ConvGRU layers.

  ``stack(cubes, training)`` takes feature cubes [B, T, K1, K2, D] (static K1, K2, D) and
  returns ``{"states": [B, T, k1, k2, C_L], "attention": [B, T, K1, K2]}``: the top layer's
  state at every step and the location softmax m_t of every step.

  Args:
    channels: C_l of each layer (paper: 128, 256, 256).
    kernel_sizes: input-to-hidden kernel size of each layer (int or pair).
    recurrent_kernel_sizes: hidden-to-hidden kernel size of each layer (default: the same).
    pool: 2 x 2 max-pooling, stride 2, between layers (section V-B).
    spatial_attention: ``learned`` (eq. 3) or ``uniform`` (m = 1/K^2, table III's
      attention-free row).
    dropout: drop rate on each layer's output passed up to the next layer (section V-B: 0.7).
    use_bias, init_range: see :class:`ConvGRUCell`.
    seed: seed of the dropout masks.
  """

  def __init__(self, channels=(128, 256, 256), kernel_sizes=(3, 5, 5),
               recurrent_kernel_sizes=None, pool: bool = True,
               spatial_attention: str = "learned", dropout: float = 0.7,
               use_bias: bool = False, init_range: float = 0.0, seed=None, **kwargs):
    super().__init__(**kwargs)
    self.channels = tuple(int(c) for c in channels)
    self.kernel_sizes = tuple(kernel_sizes)
    self.recurrent_kernel_sizes = (tuple(recurrent_kernel_sizes) if recurrent_kernel_sizes
                                   else self.kernel_sizes)
    if not self.channels or len(self.kernel_sizes) != len(self.channels) or len(
        self.recurrent_kernel_sizes) != len(self.channels):
      raise ValueError(f"AttentiveConvGRUStack needs one kernel size per layer: channels "
                       f"{self.channels}, kernel_sizes {self.kernel_sizes}, "
                       f"recurrent_kernel_sizes {self.recurrent_kernel_sizes}.")
    if spatial_attention not in SPATIAL_ATTENTION_MODES:
      raise ValueError(f"spatial_attention={spatial_attention!r}; expected one of "
                       f"{SPATIAL_ATTENTION_MODES}.")
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"AttentiveConvGRUStack dropout must be in [0, 1), got {dropout}.")
    self.pool = bool(pool)
    self.spatial_attention = spatial_attention
    self.dropout = float(dropout)
    self.use_bias = bool(use_bias)
    self.init_range = float(init_range)
    self.seed = seed
    # One attribute per sublayer (not a list): a checkpoint of the model alone (export,
    # evaluation) finds them by attribute path.
    for i, (c, k, r) in enumerate(zip(self.channels, self.kernel_sizes,
                                      self.recurrent_kernel_sizes)):
      setattr(self, f"conv_gru_{i + 1}", ConvGRUCell(c, k, r, use_bias=use_bias,
                                                     init_range=init_range,
                                                     name=f"conv_gru_{i + 1}"))
      # Eq. 7's f_init, one affine map per layer (module docstring).
      setattr(self, f"init_state_{i + 1}",
              keras.layers.Dense(c, activation="tanh", name=f"init_state_{i + 1}"))
    self.seed_generator = keras.random.SeedGenerator(seed)

  @property
  def cells(self) -> list:
    """The ConvGRU layers, bottom to top."""
    return [getattr(self, f"conv_gru_{i + 1}") for i in range(len(self.channels))]

  @property
  def init_maps(self) -> list:
    """Eq. 7's f_init of each layer."""
    return [getattr(self, f"init_state_{i + 1}") for i in range(len(self.channels))]

  def build(self, input_shape):
    if len(input_shape) != 5 or None in tuple(input_shape[2:]):
      raise ValueError("AttentiveConvGRUStack expects feature cubes [B, T, K1, K2, D] with "
                       f"known K1, K2, D, got {input_shape}.")
    k1, k2, depth = (int(v) for v in input_shape[2:])
    self.grid = (k1, k2)
    self.grids = []
    size, channels_in = (k1, k2), depth
    for i, cell in enumerate(self.cells):
      if i > 0:
        size = (pooled_size(size[0], self.pool), pooled_size(size[1], self.pool))
      self.grids.append(size)
      cell.build((None,) + size + (channels_in,))
      channels_in = cell.filters
    for init_map in self.init_maps:
      init_map.build((None, depth))
    top = self.grids[-1]
    if self.spatial_attention == "learned":
      # Eq. 3's W_i, one column per location i. Zero-initialised (library choice; the paper
      # gives no initialisation for W_i, section V-B's U[-1, 1] is for the ConvGRUs): m_t
      # starts uniform, where eq. 9's penalty is at its minimum and its gradient is 0 (for
      # any T and K^2: at uniform m it is the same for every location, and the softmax's
      # Jacobian removes a constant), so the penalty acts once the pair loss moves the
      # attention. With a random W_i the penalty's pull towards uniform attention reaches the
      # tower through h_{t-1} (the input of eq. 3) and, under RMSProp, drives h_bar to 0,
      # the saddle of eq. 8's bilinear logit (measured: tests/test_siamese_convgru_learning.py).
      self.attention_kernel = self.add_weight(
          shape=(top[0] * top[1] * self.channels[-1], k1 * k2),
          initializer="zeros", name="attention_kernel")
    self.built = True

  def compute_attention(self, top_state):
    """Eq. 3 from h_{t-1}^L [B, k1, k2, C_L] -> m_t [B, K1*K2]."""
    k1, k2 = self.grid
    batch = tf.shape(top_state)[0]
    if self.spatial_attention == "uniform":
      return tf.fill([batch, k1 * k2], 1.0 / (k1 * k2))
    flat = tf.reshape(tf.cast(top_state, tf.float32), [batch, -1])
    return spatial_soft_attention(tf.matmul(flat, tf.cast(self.attention_kernel, tf.float32)))

  def initial_states(self, cubes):
    """Eq. 7: h_0^l = f_init^l(mean over T and locations of X), broadcast over the grid."""
    mu = tf.reduce_mean(tf.cast(cubes, tf.float32), axis=[1, 2, 3])
    states = []
    for init_map, size in zip(self.init_maps, self.grids):
      h = tf.cast(init_map(tf.cast(mu, init_map.compute_dtype)), self.compute_dtype)
      states.append(tf.tile(h[:, None, None, :], [1, size[0], size[1], 1]))
    return states

  def _dropout_masks(self, cubes, training):
    """Keep masks (scaled by 1 / keep) of every layer output passed upward, [B, T, g, C] per
    layer but the top, drawn before the loop; ones when not training."""
    shape = tf.shape(cubes)
    masks = []
    for size, c in zip(self.grids[:-1], self.channels[:-1]):
      mask_shape = tf.stack([shape[0], shape[1], size[0], size[1], c])
      if training and self.dropout > 0:
        keep = 1.0 - self.dropout
        u = keras.random.uniform(mask_shape, seed=self.seed_generator)
        masks.append(tf.cast(u < keep, self.compute_dtype) / keep)
      else:
        masks.append(tf.ones(mask_shape, self.compute_dtype))
    return masks

  def call(self, cubes, training=None):
    cubes = tf.cast(cubes, self.compute_dtype)
    states = self.initial_states(cubes)
    masks = self._dropout_masks(cubes, training)
    time_major = lambda v: tf.transpose(v, [1, 0] + list(range(2, len(v.shape))))
    batch_major = time_major

    def step(carry, elems):
      hidden, _ = carry
      cube, step_masks = elems
      m = self.compute_attention(hidden[-1])                       # eq. 3
      x = attend(cube, m)                                           # eq. 4
      new_hidden = []
      for i, cell in enumerate(self.cells):                         # eq. 5, l = 1..L
        if i > 0:
          x = x * step_masks[i - 1]
          if self.pool:
            x = tf.nn.max_pool2d(x, 2, 2, padding="SAME")
        h = cell.call(x, hidden[i])
        new_hidden.append(h)
        x = h
      return new_hidden, m

    k1, k2 = self.grid
    first_m = tf.zeros([tf.shape(cubes)[0], k1 * k2], tf.float32)
    hidden_seq, attention_seq = tf.scan(
        step, (time_major(cubes), [time_major(m) for m in masks]),
        initializer=(states, first_m))
    top = batch_major(hidden_seq[-1])
    attention = batch_major(attention_seq)
    attention = tf.reshape(attention, tf.concat([tf.shape(attention)[:2], [k1, k2]], 0))
    return {"states": top, "attention": attention}

  def get_config(self):
    config = super().get_config()
    config.update({"channels": list(self.channels), "kernel_sizes": list(self.kernel_sizes),
                   "recurrent_kernel_sizes": list(self.recurrent_kernel_sizes),
                   "pool": self.pool, "spatial_attention": self.spatial_attention,
                   "dropout": self.dropout, "use_bias": self.use_bias,
                   "init_range": self.init_range, "seed": self.seed})
    return config
