"""Per-part temporal layers of diversity_attention (Li et al., CVPR 2018): the feature
enhancement E of the supplementary material (eqs. S1-S4, main-paper eq. 4) and the
per-part temporal attention of section 3.4 (eqs. 11-13), with the average and max temporal
pooling of table 1's ablations.

Both take the spatially gated features of a clip, x [B, N, K, D] (frame n, part k).
"""

from __future__ import annotations

import keras
from keras import ops

TEMPORAL_MODES = ("attention", "average", "max")


# ------------------------------------------------------------------ enhancement (S1-S4)


def feature_similarity(features, scale: float = 1.0):
  """Eq. (S1): Phi_k = X_k^T X_k for every part; x [B, N, K, D] -> [B, K, N, N] (float32).

  `scale` multiplies Phi (1: the paper's unscaled inner product; see
  :class:`TemporalEnhancement`)."""
  x = ops.cast(features, "float32")
  return scale * ops.einsum("bikd,bjkd->bkij", x, x)


def temporal_similarity(weight, bias, num_frames: int, sigma: float):
  """Eq. (S2): Psi = W * exp(-|i - j| / sigma) + b, [N, N] (float32).

  W [N, N] multiplies element-wise; b [N] is added to every row (Psi_ij gains b_j), since a
  per-row constant would cancel in the row softmax of eq. (S3)."""
  index = ops.arange(num_frames, dtype="float32")
  distance = ops.abs(index[:, None] - index[None, :])
  return (ops.cast(weight, "float32") * ops.exp(-distance / sigma)
          + ops.cast(bias, "float32")[None, :])


def frame_contributions(phi, psi):
  """Eq. (S3): C_k = row-softmax(Phi_k + Psi); [B, K, N, N] (row i: the weights of the frames
  that feed frame i, summing to 1)."""
  return ops.softmax(phi + psi, axis=-1)


def pool_frames(contributions, features):
  """The X_k C_k^T of eq. (S4): frame i of part k becomes sum_j C_k[i, j] x_{j,k};
  [B, K, N, N] and [B, N, K, D] -> [B, N, K, D] (float32).

  The supplement prints X_k C_k, but says that row i of C_k holds the contributions of all
  frames to frame i; with X_k = [x_1 .. x_N] (D x N), column i of X_k C_k^T is that
  weighted sum, column i of X_k C_k would weigh by column i instead."""
  return ops.einsum("bkij,bjkd->bikd", contributions, ops.cast(features, "float32"))


@keras.saving.register_keras_serializable(package="tfreid")
class TemporalEnhancement(keras.layers.Layer):
  """E of eq. (4): X^_k = FCN(X_k C_k^T) + X_k (supplementary eqs. S1-S4).

  ``layer(x)`` with x [B, N, K, D] returns ``(enhanced, contributions)``: x^ [B, N, K, D]
  (float32) and C [B, K, N, N].

  Library choices (the supplement does not give them):
  - FCN is one fully connected D -> D layer with bias, shared by the K parts, initialised to
    zero, so E starts as the identity and training starts from the model without it.
  - W starts at ones and b at zero, so Psi starts as the proximity kernel exp(-|i-j|/sigma).
  - sigma = 1 chunk (the unit of |i - j|).
  - Phi is the unscaled inner product, as printed (`scale` = 1). With ReLU features of
    D = 2048 its entries are large and the row softmax is nearly one-hot; `scale` (e.g.
    1/D) softens it. Phi, Psi and C are computed in float32.

  Args:
    num_frames: N; W and b have N x N and N entries, so clips must have N frames.
    sigma: the temporal scale of eq. (S2), in frames of the clip.
    scale: factor on Phi (1: the paper).
  """

  def __init__(self, num_frames: int, sigma: float = 1.0, scale: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    if num_frames < 1 or not sigma > 0:
      raise ValueError(f"TemporalEnhancement needs num_frames >= 1 and sigma > 0, got "
                       f"{num_frames} and {sigma}.")
    self.num_frames = num_frames
    self.sigma = sigma
    self.scale = scale

  def build(self, input_shape):
    if len(input_shape) != 4 or input_shape[-1] is None:
      raise ValueError(f"TemporalEnhancement takes x [B, N, K, D], got shape {input_shape}.")
    if input_shape[1] is not None and input_shape[1] != self.num_frames:
      raise ValueError(f"TemporalEnhancement was built for clips of {self.num_frames} frames "
                       f"(its W is N x N), got {input_shape[1]}.")
    channels = input_shape[-1]
    self.fcn = keras.layers.Dense(channels, kernel_initializer="zeros",
                                  dtype=self.dtype_policy, name="fcn")
    self.fcn.build((None, channels))
    n = self.num_frames
    self.weight = self.add_weight(shape=(n, n), name="weight", initializer="ones")
    self.bias = self.add_weight(shape=(n,), name="bias", initializer="zeros")
    self.built = True

  def call(self, features):
    if features.shape[1] is not None and features.shape[1] != self.num_frames:
      raise ValueError(f"TemporalEnhancement was built for clips of {self.num_frames} frames "
                       f"(its W is N x N), got {features.shape[1]} frames; use clips of "
                       f"data.seq_len = {self.num_frames} frames.")
    phi = feature_similarity(features, self.scale)
    psi = temporal_similarity(self.weight, self.bias, self.num_frames, self.sigma)
    contributions = frame_contributions(phi, psi)
    pooled = pool_frames(contributions, features)
    enhanced = ops.cast(self.fcn(ops.cast(pooled, self.compute_dtype)), "float32")
    return enhanced + ops.cast(features, "float32"), contributions

  def compute_output_shape(self, input_shape):
    b, n, k, _ = input_shape
    return tuple(input_shape), (b, k, n, n)

  def get_config(self):
    config = super().get_config()
    config.update(num_frames=self.num_frames, sigma=self.sigma, scale=self.scale)
    return config


# ------------------------------------------------------------- temporal attention (11-13)


def temporal_attention_logits(features, kernel, bias):
  """Eq. (11): e_{n,k} = w_{t,k}^T x^_{n,k} + b_{t,k}; [B, N, K, D], [K, D], [K] ->
  [B, N, K] (float32)."""
  x = ops.cast(features, "float32")
  return ops.einsum("bnkd,kd->bnk", x, ops.cast(kernel, "float32")) + ops.cast(bias, "float32")


def temporal_weights(logits):
  """Eq. (12): t_{n,k} = exp(e_{n,k}) / sum_j exp(e_{j,k}), a softmax over the N frames of
  each part; [B, N, K] -> [B, N, K].

  The printed eq. (12) is e_{n,k} / sum_j e_{j,k} without the exponential, which can be
  negative or divide by a sum near zero; section 3.4 says t is "the softmax of a linear
  response function", which is what this computes."""
  return ops.softmax(ops.cast(logits, "float32"), axis=1)


def temporal_pool(weights, features):
  """Eq. (13): x_k = sum_n t_{n,k} x^_{n,k}; [B, N, K] and [B, N, K, D] -> [B, K, D]."""
  return ops.einsum("bnk,bnkd->bkd", weights, ops.cast(features, "float32"))


@keras.saving.register_keras_serializable(package="tfreid")
class PartTemporalAttention(keras.layers.Layer):
  """Per-part temporal aggregation (section 3.4; table 1's temporal ablations).

  ``layer(x)`` with x^ [B, N, K, D] returns ``(pooled, weights)``: x_k [B, K, D] (float32)
  and, for ``mode="attention"``, the temporal weights t [B, K, N] (one row per part, summing
  to 1 over the frames); None for the other modes.

  Modes:
    attention: eqs. (11)-(13), a linear response per part (its own w_{t,k}, b_{t,k}) and a
      softmax over the frames.
    average: x_k = mean_n x^_{n,k} ("SpaAtn+Q", and the spatial-attention training stage).
    max: x_k = max_n x^_{n,k} per dimension ("SpaAtn+Q+MaxPool").

  Initialisation (library choice): w_{t,k} zero and b_{t,k} zero, so attention starts as
  the average pooling the previous training stage used.

  Args:
    mode: attention | average | max.
  """

  def __init__(self, mode: str = "attention", **kwargs):
    super().__init__(**kwargs)
    if mode not in TEMPORAL_MODES:
      raise ValueError(f"PartTemporalAttention mode={mode!r}; expected one of "
                       f"{', '.join(TEMPORAL_MODES)}.")
    self.mode = mode

  def build(self, input_shape):
    if len(input_shape) != 4 or input_shape[-1] is None or input_shape[2] is None:
      raise ValueError(f"PartTemporalAttention takes x [B, N, K, D] with known K and D, got "
                       f"{input_shape}.")
    if self.mode == "attention":
      parts, channels = input_shape[2], input_shape[3]
      self.kernel = self.add_weight(shape=(parts, channels), name="kernel",
                                    initializer="zeros")
      self.bias = self.add_weight(shape=(parts,), name="bias", initializer="zeros")
    self.built = True

  def call(self, features):
    x = ops.cast(features, "float32")
    if self.mode == "average":
      return ops.mean(x, axis=1), None
    if self.mode == "max":
      return ops.max(x, axis=1), None
    weights = temporal_weights(temporal_attention_logits(x, self.kernel, self.bias))
    return temporal_pool(weights, x), ops.transpose(weights, (0, 2, 1))

  def get_config(self):
    config = super().get_config()
    config.update(mode=self.mode)
    return config
