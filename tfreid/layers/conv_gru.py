"""The convolutional GRU cell of siamese_convgru (Wu et al., "Where-and-When to Look"), eq. 5.

One step of layer l (``*`` a 2-D convolution, ``⊙`` the element-wise product, sigma the
logistic function, h_t^0 = x_t the attended feature cube):

    z_t = sigma(W_z * x_t + U_z * h_{t-1})                 update gate
    r_t = sigma(W_r * x_t + U_r * h_{t-1})                 reset gate
    c_t = tanh(W * x_t + U * (r_t ⊙ h_{t-1}))              candidate
    h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ c_t

This is the paper's gate convention, which is not Keras' ``GRU`` nor ``ConvLSTM``: the update
gate z weights the *candidate* (Keras' GRU uses ``z * h_{t-1} + (1 - z) * c``), and the reset
gate acts on h_{t-1} *before* the recurrent convolution U (Keras' ``reset_after=False``
convention; its default ``reset_after=True`` applies r after U). Input-to-hidden kernels W and
hidden-to-hidden kernels U are separate variables, each holding the three gates' kernels
side by side (z, r, candidate), so a layer has ``3 k1 k2 (C_x C_h + C_h^2)`` weights
(section III-E), plus ``3 C_h`` when ``use_bias`` is on. Eq. 5 has no biases, and the paper's
parameter set Theta lists none, so ``use_bias=False`` is the paper's configuration; biases
(zero-initialised, which equals eq. 5 at the start) are a library option.

With 1 x 1 kernels on a 1 x 1 map the cell is the fully connected GRU of eq. 2 (the FC-GRU
baselines of table III). Convolutions are zero-padded ("same"), so the state keeps the
input's spatial size (section III-C).
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _pair(value, name: str) -> tuple[int, int]:
  if isinstance(value, int):
    value = (value, value)
  value = tuple(int(v) for v in value)
  if len(value) != 2 or min(value) < 1:
    raise ValueError(f"ConvGRUCell {name} must be a positive int or a pair of them, got "
                     f"{value!r}.")
  return value


@keras.saving.register_keras_serializable(package="tfreid")
class ConvGRUCell(keras.layers.Layer):
  """One ConvGRU step, eq. 5 of siamese_convgru (module docstring).

  ``cell(inputs, state)`` takes the layer input x_t [B, H, W, C_x] and the previous state
  h_{t-1} [B, H, W, C_h] and returns h_t [B, H, W, C_h].

  Args:
    filters: C_h, the state's channels.
    kernel_size: k1 x k2 of the input-to-hidden kernels W_z, W_r, W.
    recurrent_kernel_size: k1 x k2 of the hidden-to-hidden kernels U_z, U_r, U (default:
      kernel_size).
    use_bias: add a bias to each gate (not in eq. 5; library option).
    init_range: 0 for Glorot-uniform kernels (library default); r > 0 draws every kernel
      from U[-r, r] (section V-B: U[-1, 1]).

  Example:
    >>> cell = ConvGRUCell(8, kernel_size=3)
    >>> cell(tf.zeros([2, 7, 7, 16]), tf.zeros([2, 7, 7, 8])).shape
    TensorShape([2, 7, 7, 8])

  Reference: Wu, Wang, Gao, Li, "Where-and-When to Look: Deep Siamese Attention Networks for
  Video-based Person Re-identification", eq. 5 and section III-E.
  """

  def __init__(self, filters: int, kernel_size=3, recurrent_kernel_size=None,
               use_bias: bool = False, init_range: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    if filters < 1:
      raise ValueError(f"ConvGRUCell filters must be >= 1, got {filters}.")
    if init_range < 0:
      raise ValueError(f"ConvGRUCell init_range must be >= 0, got {init_range}.")
    self.filters = int(filters)
    self.kernel_size = _pair(kernel_size, "kernel_size")
    self.recurrent_kernel_size = _pair(
        kernel_size if recurrent_kernel_size is None else recurrent_kernel_size,
        "recurrent_kernel_size")
    self.use_bias = bool(use_bias)
    self.init_range = float(init_range)

  def _initializer(self):
    if self.init_range > 0:
      return keras.initializers.RandomUniform(-self.init_range, self.init_range)
    return keras.initializers.GlorotUniform()

  def build(self, input_shape, state_shape=None):
    channels = input_shape[-1]
    if channels is None:
      raise ValueError(f"ConvGRUCell needs a known input channel count, got {input_shape}.")
    ch = self.filters
    # W = [W_z | W_r | W], U = [U_z | U_r | U] along the output channels.
    self.kernel = self.add_weight(shape=self.kernel_size + (channels, 3 * ch),
                                  initializer=self._initializer(), name="kernel")
    self.recurrent_kernel = self.add_weight(shape=self.recurrent_kernel_size + (ch, 3 * ch),
                                            initializer=self._initializer(),
                                            name="recurrent_kernel")
    self.bias = (self.add_weight(shape=(3 * ch,), initializer="zeros", name="bias")
                 if self.use_bias else None)
    self.built = True

  def call(self, inputs, state):
    dtype = self.compute_dtype
    x = tf.cast(inputs, dtype)
    h = tf.cast(state, dtype)
    ch = self.filters
    kernel = tf.cast(self.kernel, dtype)
    recurrent = tf.cast(self.recurrent_kernel, dtype)
    wx = tf.nn.conv2d(x, kernel, strides=1, padding="SAME")
    if self.bias is not None:
      wx = wx + tf.cast(self.bias, dtype)
    uh = tf.nn.conv2d(h, recurrent[..., :2 * ch], strides=1, padding="SAME")
    z = tf.sigmoid(wx[..., :ch] + uh[..., :ch])
    r = tf.sigmoid(wx[..., ch:2 * ch] + uh[..., ch:])
    candidate = tf.tanh(wx[..., 2 * ch:] + tf.nn.conv2d(r * h, recurrent[..., 2 * ch:],
                                                         strides=1, padding="SAME"))
    return (1.0 - z) * h + z * candidate

  def compute_output_shape(self, input_shape, state_shape=None):
    return tuple(input_shape[:-1]) + (self.filters,)

  def get_config(self):
    config = super().get_config()
    config.update({"filters": self.filters, "kernel_size": list(self.kernel_size),
                   "recurrent_kernel_size": list(self.recurrent_kernel_size),
                   "use_bias": self.use_bias, "init_range": self.init_range})
    return config


def conv_gru_parameter_count(kernel_size, input_channels: int, filters: int,
                             recurrent_kernel_size=None, use_bias: bool = False) -> int:
  """Weights of one ConvGRU layer: 3 k1 k2 (C_x C_h + C_h^2) (section III-E) when W and U
  share the kernel size; in general 3 (k1 k2 C_x C_h + r1 r2 C_h^2), plus 3 C_h biases."""
  k = _pair(kernel_size, "kernel_size")
  r = _pair(kernel_size if recurrent_kernel_size is None else recurrent_kernel_size,
            "recurrent_kernel_size")
  count = 3 * (k[0] * k[1] * input_channels * filters + r[0] * r[1] * filters * filters)
  return count + (3 * filters if use_bias else 0)
