"""Space-time non-local block, embedded-Gaussian version (nonlocal_i3d section 3.2, fig. 5).

Reference: Liao et al., "Video-based Person Re-identification via 3D Convolutional Networks
and Non-local Attention", eqs. 3-6 and section 4.2; after Wang et al., "Non-local Neural
Networks" (CVPR 2018).
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfreid")
class NonLocalBlock(keras.layers.Layer):
  """Embedded-Gaussian non-local block on video features [B, T, H, W, C].

  For every position i of the T*H*W positions (eqs. 3-6 of the paper):

    theta(x_i) = W_theta x_i,  phi(x_j) = W_phi x_j,  g(x_j) = W_g x_j   (1x1x1 convolutions
                                                       with C' = bottleneck_ratio * C channels)
    f(x_i, x_j) = exp(theta(x_i)^T phi(x_j))                                        (eq. 4)
    y_i = sum_j softmax_j(theta(x_i)^T phi(x_j)) g(x_j)                             (eqs. 3, 5)
    z_i = BN(W_z y_i) + x_i                                                         (eq. 6)

  The normalisation C(x) of eq. 3 is the sum of f over j, i.e. a softmax over the positions j
  of each row (fig. 5, "the softmax operation is performed on each row"; the sum over i printed
  in eq. 5's denominator is a typo of the paper). With ``subsample=True``, phi and g are
  max-pooled 2x2 in space before the product (Wang et al. section 4.1), which divides the
  number of positions j by 4; softmax still runs over all remaining T*H*W/4 positions.

  Initialisation (section 4.2): theta, phi, g and W_z use He initialisation [13]; W_z is
  followed by a BatchNorm whose scale gamma starts at zero [10], so the block starts as the
  identity and can be inserted into a pre-trained network without changing its output. No
  other layer of the block has a BatchNorm.

  The 1x1x1 convolutions are Dense layers on the channel axis (the same operation). The
  logits and the softmax are computed in float32 whatever the compute dtype.

  Args:
    bottleneck_ratio: C'/C, channels of theta, phi and g relative to the input (fig. 5:
      1024 -> 512, i.e. 0.5).
    subsample: max-pool phi and g by 2x2 in space.
    bn_momentum, bn_epsilon: of the BatchNorm after W_z.

  Example:
    >>> block = NonLocalBlock(bottleneck_ratio=0.5)
    >>> block(np.ones((2, 4, 8, 4, 16), np.float32)).shape
    TensorShape([2, 4, 8, 4, 16])
  """

  def __init__(self, bottleneck_ratio: float = 0.5, subsample: bool = True,
               bn_momentum: float = 0.9, bn_epsilon: float = 1e-5, **kwargs):
    super().__init__(**kwargs)
    if not 0.0 < bottleneck_ratio <= 1.0:
      raise ValueError(f"NonLocalBlock bottleneck_ratio must be in (0, 1], got "
                       f"{bottleneck_ratio}.")
    self.bottleneck_ratio = bottleneck_ratio
    self.subsample = subsample
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.w_z_bn = keras.layers.BatchNormalization(
        momentum=bn_momentum, epsilon=bn_epsilon, gamma_initializer="zeros",
        dtype=self.dtype_policy, name="w_z_bn")
    # theta, phi, g and W_z (Dense layers named so) depend on the input channels: build().

  def build(self, input_shape):
    if len(input_shape) != 5 or input_shape[-1] is None:
      raise ValueError("NonLocalBlock expects video features [B, T, H, W, C] with a known C, "
                       f"got input shape {input_shape}.")
    channels = int(input_shape[-1])
    inner = max(1, int(round(channels * self.bottleneck_ratio)))
    dense = lambda units, name: keras.layers.Dense(
        units, kernel_initializer="he_normal", dtype=self.dtype_policy, name=name)
    self.theta = dense(inner, "theta")
    self.phi = dense(inner, "phi")
    self.g = dense(inner, "g")
    self.w_z = dense(channels, "w_z")
    for layer in (self.theta, self.phi, self.g):
      layer.build(tuple(input_shape))
    self.w_z.build(tuple(input_shape[:-1]) + (inner,))
    self.w_z_bn.build(tuple(input_shape))
    self.built = True

  def _flatten_positions(self, x):
    """[B, T, H, W, C] -> [B, T*H*W, C]."""
    return ops.reshape(x, (ops.shape(x)[0], -1, ops.shape(x)[-1]))

  def _pool(self, x):
    """2x2 spatial max-pooling, stride 2, of every frame of [B, T, H, W, C].

    Odd H or W are padded at the end with -inf ("same" padding). Written as a reshape and a
    max: the same values as MaxPooling2D, and cheaper to compile and run under XLA on CPU.
    """
    shape = ops.shape(x)
    pad_h, pad_w = shape[2] % 2, shape[3] % 2
    x = ops.pad(x, [[0, 0], [0, 0], [0, pad_h], [0, pad_w], [0, 0]],
                constant_values=float("-inf"))
    x = ops.reshape(x, (shape[0], shape[1], (shape[2] + pad_h) // 2, 2,
                        (shape[3] + pad_w) // 2, 2, shape[4]))
    return ops.max(x, axis=(3, 5))

  def _attention(self, inputs):
    """(the attention [B, N, M] float32, g [B, M, C'])."""
    theta = self._flatten_positions(self.theta(inputs))            # [B, N, C']
    phi = self.phi(inputs)
    g = self.g(inputs)
    if self.subsample:
      phi, g = self._pool(phi), self._pool(g)
    phi = self._flatten_positions(phi)                              # [B, M, C']
    g = self._flatten_positions(g)                                  # [B, M, C']
    logits = ops.matmul(ops.cast(theta, "float32"),
                        ops.transpose(ops.cast(phi, "float32"), (0, 2, 1)))  # eq. 4 exponent
    return ops.softmax(logits, axis=-1), g                          # eq. 5, over j

  def attention_weights(self, inputs):
    """The weights of eq. 5 for `inputs` [B, T, H, W, C]: float32 [B, N, M], row i (query
    position i of the T x H x W grid, row-major) sums to 1 over the M key positions j, the
    T x ceil(H/2) x ceil(W/2) grid of :meth:`key_grid` when ``subsample``. What ``call``
    weights g with; for pictures and analysis."""
    return self._attention(inputs)[0]

  def key_grid(self, time: int, height: int, width: int) -> tuple[int, int, int]:
    """The (T, h, w) grid the M key positions j of :meth:`attention_weights` lie on."""
    if self.subsample:
      return time, (height + 1) // 2, (width + 1) // 2
    return time, height, width

  def call(self, inputs, training=None):
    shape = ops.shape(inputs)
    attention, g = self._attention(inputs)
    y = ops.matmul(ops.cast(attention, g.dtype), g)                 # [B, N, C']
    y = ops.reshape(y, (shape[0], shape[1], shape[2], shape[3], ops.shape(y)[-1]))
    z = self.w_z_bn(self.w_z(y), training=training)                 # eq. 6
    return ops.cast(inputs, z.dtype) + z

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update({"bottleneck_ratio": self.bottleneck_ratio, "subsample": self.subsample,
                   "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon})
    return config
