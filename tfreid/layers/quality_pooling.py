"""The attention baselines of a3d's table VII: "QAN*" and "separate attention*" (Chen et al.,
"Learning Recurrent 3D Attention for Video-Based Person Re-identification", section IV-C).

The paper compares its agent with two attention models "implemented using our base model with
the same hyperparameters": (1) "the QAN [35] method with our representation model" and (2)
"the separate attention method which learns spatial attention on each frame first, and then
learns the temporal aggregation attention using QAN". It gives no layer of either, so both
are the library's reading of that sentence on the two-stream feature volume g
[B, L, H, W, C]:

* :class:`QualityPooling` (QAN*): each frame's feature is its spatial mean g_l; its quality
  is mu_l = sigmoid(fc_q(g_l)) (one FC to a scalar, QAN's quality score squashed to (0, 1));
  the clip's feature is the quality-weighted mean sum_l mu_l g_l / sum_l mu_l (QAN's set
  aggregation).
* :class:`SpatialSoftmaxPooling` + QualityPooling (separate attention*): each frame's
  spatial attention is a softmax over its H x W cells of a 1 x 1 convolution of g
  (C -> 1), and the frame's feature is the attention-weighted sum of its cells; the frames
  are then aggregated by QualityPooling.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfreid")
class QualityPooling(keras.layers.Layer):
  """QAN-style temporal aggregation (module docstring): [B, L, C] -> ([B, C], [B, L]).

  ``layer(frame_features)`` returns ``(pooled, quality)``: pooled = sum_l mu_l f_l /
  sum_l mu_l with mu_l = sigmoid(fc_q(f_l)) in float32 (computed as
  softmax_l(log sigmoid(fc_q(f_l))), equal and safe when every mu_l underflows).
  """

  def __init__(self, **kwargs):
    kwargs["dtype"] = "float32"
    super().__init__(**kwargs)
    self.score = keras.layers.Dense(1, dtype="float32", name="quality_score")

  def build(self, input_shape):
    self.score.build((None, input_shape[-1]))
    self.built = True

  def call(self, frame_features):
    x = tf.cast(frame_features, tf.float32)
    score = self.score(x)[..., 0]                                     # [B, L]
    quality = tf.sigmoid(score)
    # mu_l / sum_l mu_l as softmax(log sigmoid(score)): the same weights, and no 0 / 0 when
    # every quality underflows (library choice).
    weights = tf.nn.softmax(tf.math.log_sigmoid(score), axis=1)
    return tf.einsum("bl,blc->bc", weights, x), quality


@keras.saving.register_keras_serializable(package="tfreid")
class SpatialSoftmaxPooling(keras.layers.Layer):
  """Per-frame spatial attention (module docstring): [B, L, H, W, C] -> ([B, L, C],
  [B, L, H, W]). The attention of a frame is softmax over its H x W cells of a 1 x 1
  convolution (C -> 1) of g; its feature is sum_hw a_hw g_hw."""

  def __init__(self, **kwargs):
    kwargs["dtype"] = "float32"
    super().__init__(**kwargs)
    self.logit = keras.layers.Dense(1, dtype="float32", name="spatial_logit")

  def build(self, input_shape):
    self.logit.build((None, input_shape[-1]))
    self.built = True

  def call(self, features):
    x = tf.cast(features, tf.float32)
    b, l, h, w, c = (tf.shape(x)[i] for i in range(5))
    logits = tf.reshape(self.logit(x)[..., 0], [b, l, h * w])
    weights = tf.reshape(tf.nn.softmax(logits, axis=-1), [b, l, h, w])
    pooled = tf.einsum("blhw,blhwc->blc", weights, x)
    del c
    return pooled, weights
