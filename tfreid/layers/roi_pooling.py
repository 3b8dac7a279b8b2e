"""Max ROI pooling (Fast R-CNN, Girshick 2015) with static shapes, for XLA.

Each region of interest, a box (x1, y1, x2, y2) in image pixels, is mapped onto the feature
map by ``round(coordinate * spatial_scale)`` and divided into P x P bins; each bin holds the
maximum of the feature map over the cells it covers (Fast R-CNN's Caffe layer):

  roi_w = max(x2' - x1' + 1, 1),   bin_w = roi_w / P,
  bin j covers columns [floor(j bin_w) + x1', ceil((j + 1) bin_w) + x1') clipped to [0, W),

and the same for rows; a bin that covers no cell (a box outside the map) is 0. stal
(Chen et al., section III-B) pools its six body parts from the inception-4b map this way
(8 x 8 bins, scale 1/16).

Written as a separable masked maximum: first over the columns of each column bin, then over
the rows of each row bin. Every shape is static (P loops unrolled), there is no gather with
data-dependent sizes, so the layer compiles under XLA; the gradient goes to the maximum of
each bin, as in Fast R-CNN.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _bin_masks(start, end, size: int, pool_size: int, spatial_scale: float):
  """Per box [..., ] start/end pixel coordinates -> bool [..., P, size] cell masks."""
  lo = tf.floor(start * spatial_scale + 0.5)  # C's round() for non-negative coordinates
  hi = tf.floor(end * spatial_scale + 0.5)
  extent = tf.maximum(hi - lo + 1.0, 1.0)
  bin_size = extent / float(pool_size)
  p = tf.range(pool_size, dtype=tf.float32)
  first = tf.clip_by_value(tf.floor(p * bin_size[..., None]) + lo[..., None], 0.0, size)
  stop = tf.clip_by_value(tf.math.ceil((p + 1.0) * bin_size[..., None]) + lo[..., None],
                          0.0, size)
  cells = tf.range(size, dtype=tf.float32)
  return tf.logical_and(cells >= first[..., None], cells < stop[..., None])


def roi_max_pool(features, boxes, pool_size: int = 8, spatial_scale: float = 1.0 / 16):
  """Fast R-CNN max ROI pooling (module docstring).

  Args:
    features: [N, H, W, C] feature maps (static H, W, C).
    boxes: [N, R, 4] float boxes (x1, y1, x2, y2) in image pixels, R boxes per map.
    pool_size: P, the output bins per side.
    spatial_scale: feature-map cells per image pixel.

  Returns:
    [N, R, P, P, C] of the features' dtype.
  """
  features = tf.convert_to_tensor(features)
  if features.shape.rank != 4 or None in features.shape[1:]:
    raise ValueError(f"roi_max_pool expects feature maps [N, H, W, C] with static H, W, C, "
                     f"got {features.shape}.")
  boxes = tf.cast(boxes, tf.float32)
  if boxes.shape.rank != 3 or boxes.shape[-1] != 4:
    raise ValueError(f"roi_max_pool expects boxes [N, R, 4] (x1, y1, x2, y2), got "
                     f"{boxes.shape}.")
  _, height, width, _ = features.shape
  cols = _bin_masks(boxes[..., 0], boxes[..., 2], width, pool_size, spatial_scale)
  rows = _bin_masks(boxes[..., 1], boxes[..., 3], height, pool_size, spatial_scale)
  low = tf.constant(features.dtype.min, features.dtype)
  x = features[:, None]                                          # [N, 1, H, W, C]
  per_column_bin = []
  for j in range(pool_size):
    mask = cols[:, :, j][:, :, None, :, None]                    # [N, R, 1, W, 1]
    per_column_bin.append(tf.reduce_max(tf.where(mask, x, low), axis=3))  # [N, R, H, C]
  pooled_cols = tf.stack(per_column_bin, axis=3)                 # [N, R, H, P, C]
  per_row_bin = []
  for i in range(pool_size):
    mask = rows[:, :, i][:, :, :, None, None]                    # [N, R, H, 1, 1]
    per_row_bin.append(tf.reduce_max(tf.where(mask, pooled_cols, low), axis=2))  # [N,R,P,C]
  pooled = tf.stack(per_row_bin, axis=2)                         # [N, R, P, P, C]
  empty = tf.logical_or(tf.logical_not(tf.reduce_any(rows, -1))[:, :, :, None],
                        tf.logical_not(tf.reduce_any(cols, -1))[:, :, None, :])
  return tf.where(empty[..., None], tf.zeros_like(pooled), pooled)


@keras.saving.register_keras_serializable(package="tfreid")
class ROIMaxPooling(keras.layers.Layer):
  """:func:`roi_max_pool` as a layer: ``layer(features, boxes)``.

  Args:
    pool_size: P, output bins per side (stal: 8).
    spatial_scale: feature-map cells per image pixel (stal: 1/16, the stride of 4b).

  Example:
    >>> ROIMaxPooling(8, 1 / 16)(np.zeros((2, 14, 14, 4)), np.zeros((2, 6, 4))).shape
    TensorShape([2, 6, 8, 8, 4])

  Reference: Girshick, "Fast R-CNN", ICCV 2015, section 2.1.
  """

  def __init__(self, pool_size: int = 8, spatial_scale: float = 1.0 / 16, **kwargs):
    super().__init__(**kwargs)
    self.pool_size = pool_size
    self.spatial_scale = spatial_scale

  def call(self, features, boxes):
    return roi_max_pool(features, boxes, self.pool_size, self.spatial_scale)

  def compute_output_shape(self, features_shape, boxes_shape):
    return (features_shape[0], boxes_shape[1], self.pool_size, self.pool_size,
            features_shape[-1])

  def get_config(self):
    config = super().get_config()
    config.update(pool_size=self.pool_size, spatial_scale=self.spatial_scale)
    return config
