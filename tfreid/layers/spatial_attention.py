"""K independent spatial attention models over a grid of cell features (diversity_attention
section 3.2, eqs. 1-3; Li et al., "Diversity Regularized Spatiotemporal Attention for
Video-based Person Re-identification", CVPR 2018).

For a frame's L cell features f_l in R^D (the 8 x 4 res5 grid of a 256 x 128 frame), each
attention model k scores every cell with its own two-layer perceptron (eq. 1),

    e_{k,l} = w'_k^T max(W_k f_l + b_k, 0) + b'_k,      W_k in R^{d x D}, w'_k, b_k in R^d,

turns the scores into a probability mass over the cells, its receptive field (eq. 2),

    s_{k,l} = exp(e_{k,l}) / sum_j exp(e_{k,j}),

and pools the cells with it (eq. 3): x_k = sum_l s_{k,l} f_l.

The K first layers are one D -> K*d matrix (the W_k stacked: column block k is W_k^T) and
the K second layers a [K, d] matrix applied block by block, so head k reads only its own
hidden units: K independent models, as the subscript k of eq. (1) says, computed as one
1x1 convolution and one einsum. Every head is initialised with its own random draw (the
paper does not say how; library choice): identical heads would stay identical, since the
diversity term has a vanishing gradient where all maps are equal and the re-identification
loss gives every head the same gradient.
"""

from __future__ import annotations

import math

import keras
from keras import ops


def spatial_attention_logits(features, hidden_kernel, hidden_bias, score_kernel, score_bias):
  """Eq. (1): the responses e [..., K, L] (float32) of the K heads to the cells.

  The first layer runs in the dtype of `features` and `hidden_kernel`; the second layer in
  float32.

  Args:
    features: f [..., L, D].
    hidden_kernel: [D, K*d], the W_k^T side by side (head k: columns k*d .. (k+1)*d - 1).
    hidden_bias: [K*d], the b_k.
    score_kernel: [K, d], the w'_k.
    score_bias: [K], the b'_k.
  """
  num_parts, hidden = score_kernel.shape
  h = ops.relu(ops.matmul(features, hidden_kernel) + hidden_bias)          # [..., L, K*d]
  h = ops.cast(h, "float32")
  h = ops.reshape(h, tuple(ops.shape(h)[:-1]) + (num_parts, hidden))      # [..., L, K, d]
  e = ops.einsum("...lkd,kd->...kl", h, ops.cast(score_kernel, "float32"))
  return e + ops.expand_dims(ops.cast(score_bias, "float32"), -1)


def receptive_fields(logits):
  """Eq. (2): s = softmax of the responses over the L cells ([..., K, L] -> [..., K, L]),
  computed in float32."""
  return ops.softmax(ops.cast(logits, "float32"), axis=-1)


def attend(attention, features):
  """Eq. (3): x_k = sum_l s_{k,l} f_l; [..., K, L] and [..., L, D] -> [..., K, D]."""
  return ops.einsum("...kl,...ld->...kd", attention, ops.cast(features, attention.dtype))


@keras.saving.register_keras_serializable(package="tfreid")
class MultiSpatialAttention(keras.layers.Layer):
  """K spatial attention models (eqs. 1-3).

  ``layer(features)`` with cell features [..., L, D] returns ``(attention, attended)``:
  the receptive fields s [..., K, L] (float32, each row sums to 1) and the spatially
  gated features x [..., K, D] (float32). The hidden layer runs in the compute dtype
  (bfloat16 under ``mixed_bfloat16``); the responses, the softmax and the pooling run in
  float32, so the maps the diversity term reads (and its square root) keep full precision.

  Initialisation (library choice; the paper gives none): W_k He-normal (a ReLU follows),
  w'_k normal with standard deviation 1/sqrt(d) (fan-in of one head), biases zero. Each
  head's weights are drawn independently.

  Args:
    num_parts: K, the number of attention models (paper: 6).
    hidden_dim: d, the width of each head's hidden layer (paper: 256).

  Reference: Li et al., CVPR 2018, section 3.2.
  """

  def __init__(self, num_parts: int = 6, hidden_dim: int = 256, **kwargs):
    super().__init__(**kwargs)
    if num_parts < 1 or hidden_dim < 1:
      raise ValueError(f"MultiSpatialAttention needs num_parts >= 1 and hidden_dim >= 1, got "
                       f"{num_parts} and {hidden_dim}.")
    self.num_parts = num_parts
    self.hidden_dim = hidden_dim

  def build(self, input_shape):
    channels = input_shape[-1]
    if channels is None:
      raise ValueError(f"MultiSpatialAttention needs a known feature axis, got {input_shape}.")
    k, d = self.num_parts, self.hidden_dim
    self.hidden_kernel = self.add_weight(
        shape=(channels, k * d), name="hidden_kernel",
        initializer=keras.initializers.HeNormal())
    self.hidden_bias = self.add_weight(shape=(k * d,), name="hidden_bias", initializer="zeros")
    self.score_kernel = self.add_weight(
        shape=(k, d), name="score_kernel",
        initializer=keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(d)))
    self.score_bias = self.add_weight(shape=(k,), name="score_bias", initializer="zeros")
    self.built = True

  def call(self, features):
    features = ops.cast(features, self.compute_dtype)
    logits = spatial_attention_logits(
        features, ops.cast(self.hidden_kernel, self.compute_dtype),
        ops.cast(self.hidden_bias, self.compute_dtype), self.score_kernel, self.score_bias)
    attention = receptive_fields(logits)
    return attention, attend(attention, features)

  def compute_output_shape(self, input_shape):
    lead = tuple(input_shape[:-2])
    return (lead + (self.num_parts, input_shape[-2]),
            lead + (self.num_parts, input_shape[-1]))

  def get_config(self):
    config = super().get_config()
    config.update(num_parts=self.num_parts, hidden_dim=self.hidden_dim)
    return config
