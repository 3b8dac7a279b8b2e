"""stal's pieces (Chen et al., "Spatial-Temporal Attention-Aware Learning for Video-Based
Person Re-Identification"): body-part boxes (eq. 7), the spatial-temporal attention network
(STAN, section III-C), the attention-weighted temporal aggregation (eq. 9), the
attention-weighted part distance psi (eq. 8) and the residual attention mask of the global
branch (Table I, ran_* layers).

Joints are tfreid's 14 (`tfreid.data.schema.JOINT_NAMES`). The paper's J1..J14 follow the
order of its pose estimator (head top, neck, right shoulder, elbow, wrist, left shoulder,
elbow, wrist, right hip, knee, ankle, left hip, knee, ankle; inferred from its part lists,
which it fits). The paper names P5 = [J12, J13, J14] "right leg" and P6 = [J9, J10, J11]
"left leg", although in that order J12..J14 are the left leg: here the legs are named by
their joints (part 4 is the right leg, part 5 the left leg), which changes no distance.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfreid.data import schema

_J = {name: i for i, name in enumerate(schema.JOINT_NAMES)}
# The six parts of section III-B, as indices of schema.JOINT_NAMES.
BODY_PARTS = (
    ("head", (_J["head_top"], _J["neck"], _J["r_shoulder"], _J["l_shoulder"])),
    ("torso", (_J["neck"], _J["r_shoulder"], _J["l_shoulder"], _J["r_hip"], _J["l_hip"])),
    ("right_arm", (_J["r_shoulder"], _J["r_elbow"], _J["r_wrist"])),
    ("left_arm", (_J["l_shoulder"], _J["l_elbow"], _J["l_wrist"])),
    ("right_leg", (_J["r_hip"], _J["r_knee"], _J["r_ankle"])),
    ("left_leg", (_J["l_hip"], _J["l_knee"], _J["l_ankle"])),
)
PART_NAMES = tuple(name for name, _ in BODY_PARTS)
NUM_PARTS = len(BODY_PARTS)


def part_membership(parts=BODY_PARTS):
  """bool [R, 14]: joint j belongs to part r."""
  rows = []
  for _, joints in parts:
    rows.append([j in joints for j in range(schema.NUM_JOINTS)])
  return tf.constant(rows, tf.bool)


def part_boxes(keypoints, height: int, width: int, min_visibility: float = 0.0,
               parts=BODY_PARTS):
  """Eq. 7: p^r = (min_{J in P_r} x(J), max x(J), min y(J), max y(J)), per frame.

  A joint counts when its visibility is > `min_visibility` (frames without keypoints are
  all zeros, so none of their joints count). A part with no counting joint gets the whole
  frame, and every box is clipped to the frame (library choices: the paper's estimator
  always returns every joint, and says nothing of boxes outside the frame).

  Args:
    keypoints: [..., 14, 3] (x, y, visibility) in the frame's pixels.
    height, width: the frame size.
    min_visibility: the visibility a joint must exceed.

  Returns:
    float32 [..., R, 4] boxes (x1, y1, x2, y2) in pixels.
  """
  keypoints = tf.cast(keypoints, tf.float32)
  if keypoints.shape[-2:] != (schema.NUM_JOINTS, 3):
    raise ValueError(f"part_boxes expects keypoints [..., {schema.NUM_JOINTS}, 3], got "
                     f"{keypoints.shape}.")
  x, y, v = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]
  member = part_membership(parts)                                 # [R, 14]
  valid = tf.logical_and((v > min_visibility)[..., None, :], member)  # [..., R, 14]
  big = tf.constant(3.0e38, tf.float32)
  def extreme(coord, reduce, fill):
    c = tf.broadcast_to(coord[..., None, :], tf.shape(valid))
    return reduce(tf.where(valid, c, fill), axis=-1)
  x1, x2 = extreme(x, tf.reduce_min, big), extreme(x, tf.reduce_max, -big)
  y1, y2 = extreme(y, tf.reduce_min, big), extreme(y, tf.reduce_max, -big)
  has_joint = tf.reduce_any(valid, axis=-1)
  whole = tf.constant([0.0, 0.0, width - 1.0, height - 1.0])
  boxes = tf.stack([x1, y1, x2, y2], axis=-1)
  boxes = tf.where(has_joint[..., None], boxes, whole)
  low = tf.zeros(4)
  high = tf.constant([width - 1.0, height - 1.0, width - 1.0, height - 1.0])
  return tf.clip_by_value(boxes, low, high)


def box_masks(boxes, height: int, width: int):
  """float32 [..., R, height, width]: 1 inside each box (pixel centres, inclusive)."""
  ys = tf.range(height, dtype=tf.float32)[:, None]
  xs = tf.range(width, dtype=tf.float32)[None, :]
  b = tf.cast(boxes, tf.float32)[..., None, None, :]
  inside = ((xs >= b[..., 0]) & (xs <= b[..., 2]) & (ys >= b[..., 1]) & (ys <= b[..., 3]))
  return tf.cast(inside, tf.float32)


def temporal_aggregation(part_features, scores):
  """Eq. 9: f^r = sum_t a^{r,t} f^{r,t} / sum_t a^{r,t}.

  Args:
    part_features: [B, T, R, D] f^{r,t}.
    scores: [B, T, R] attention scores a^{r,t} (> 0; any common scale, eq. 9 is invariant).

  Returns:
    [B, R, D]. A part whose scores are all 0 (the sigmoid underflows below about -88) has
    no eq. 9 average; it gets the plain mean over frames (library choice: the limit of eq. 9
    as its scores become equal), not 0/0.
  """
  scores = tf.cast(scores, part_features.dtype)
  weighted = tf.reduce_sum(scores[..., None] * part_features, axis=1)
  return weighted_or_mean(weighted, tf.reduce_sum(scores, axis=1),
                          tf.reduce_mean(part_features, axis=1))


def weighted_or_mean(weighted_sum, weight_sum, mean):
  """weighted_sum / weight_sum ([..., R, D] / [..., R]) where the weights sum to more than 0,
  `mean` where they sum to 0 (eq. 9's 0/0)."""
  positive = weight_sum > 0
  safe = tf.where(positive, weight_sum, tf.ones_like(weight_sum))
  return tf.where(positive[..., None], weighted_sum / safe[..., None], mean)


def _safe_norm(squared):
  positive = squared > 1e-12
  safe = tf.where(positive, squared, tf.ones_like(squared))
  return tf.where(positive, tf.sqrt(safe), tf.zeros_like(squared))


def pairwise_part_distances(parts_a, parts_b):
  """[A, R, D], [B, R, D] -> [A, B, R]: ||f_a^r - f_b^r||_2, with a finite gradient at 0."""
  a = tf.cast(parts_a, tf.float32)
  b = tf.cast(parts_b, tf.float32)
  sq_a = tf.reduce_sum(tf.square(a), -1)                         # [A, R]
  sq_b = tf.reduce_sum(tf.square(b), -1)                         # [B, R]
  gram = tf.einsum("ard,brd->abr", a, b)
  squared = tf.maximum(sq_a[:, None, :] + sq_b[None, :, :] - 2.0 * gram, 0.0)
  return _safe_norm(squared)


def attention_part_distance(parts_a, weight_a, parts_b, weight_b):
  """Eq. 8: psi = sum_r abar_a^r abar_b^r / (||abar_a|| ||abar_b||) ||f_a^r - f_b^r||_2.

  abar^r is the mean over frames of a^{r,t}; here `weight` may be any positive multiple of
  it (the sum over frames, as tracklet statistics keep it), because psi divides by the
  norms. The norm of abar is the L1 norm (the library's reading: the gradient printed as
  eq. 12, (1 - a_n^r) / ||abar||, is that of an L1-normalised score; the paper does not
  name the norm).

  Args:
    parts_a: [A, R, D] temporally aggregated part features (eq. 9); weight_a: [A, R].
    parts_b: [B, R, D]; weight_b: [B, R].

  Returns:
    float32 [A, B].
  """
  na = _l1_normalized(weight_a)
  nb = _l1_normalized(weight_b)
  distances = pairwise_part_distances(parts_a, parts_b)          # [A, B, R]
  return tf.einsum("ar,br,abr->ab", na, nb, distances)


def _l1_normalized(weight):
  """abar / ||abar||_1 per row; a row of zeros (every score underflowed) weighs the parts
  equally, as the `spatial_attention` switch off does (library choice, not 0/0)."""
  w = tf.cast(weight, tf.float32)
  norm = tf.reduce_sum(tf.abs(w), -1, keepdims=True)
  positive = norm > 0
  uniform = tf.ones_like(w) / tf.cast(tf.shape(w)[-1], tf.float32)
  return tf.where(positive, w / tf.where(positive, norm, tf.ones_like(norm)), uniform)


@keras.saving.register_keras_serializable(package="tfreid")
class SpatialTemporalAttention(keras.layers.Layer):
  """STAN (section III-C, Fig. 2b): per frame, a 7x7 convolution, two 3x3 convolutions, a
  max pooling over the map, a fully connected layer and a sigmoid give one score per body
  part; stacked over frames they form the T x R score map s^{r,t} in (0, 1).

  The paper prints the layer types only. Library choices: the input is the low-level map
  X^t (a 7x7/2 convolution on the 14 x 14 map of 4b leaves 7 x 7, which the 7 x 7 max
  pooling reduces to one cell; here the pooling is global so any frame size works); 256
  channels with ReLU; the fully connected layer outputs R per frame (the paper's T x R
  output, applied to each frame independently, which lets the test length differ from
  training's, as its Fig. 11 does). The paper's L1 normalisation of the map is left to the
  consumers: eqs. 8 and 9 are invariant to the scale of the scores, and over a whole
  tracklet the raw scores are summed (`tracklet_statistics`).

  ``layer(x)`` with x [B, T, h, w, C] returns the scores [B, T, R].
  """

  def __init__(self, num_parts: int = NUM_PARTS, channels: int = 256, **kwargs):
    super().__init__(**kwargs)
    self.num_parts = num_parts
    self.channels = channels
    self.conv1 = keras.layers.Conv2D(channels, 7, strides=2, padding="same",
                                     activation="relu", name="conv7x7")
    self.conv2 = keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                                     name="conv3x3_1")
    self.conv3 = keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                                     name="conv3x3_2")
    self.fc = keras.layers.Dense(num_parts, name="fc")

  def build(self, input_shape):
    frame = (None,) + tuple(input_shape[2:])
    self.conv1.build(frame)
    frame = self.conv1.compute_output_shape(frame)
    self.conv2.build(frame)
    self.conv3.build(frame)
    self.fc.build((None, self.channels))
    self.built = True

  def call(self, x):
    shape = tf.shape(x)
    frames = tf.reshape(x, tf.concat([[-1], shape[2:]], 0))
    frames.set_shape([None] + list(x.shape[2:]))
    y = self.conv3(self.conv2(self.conv1(frames)))
    y = tf.reduce_max(y, axis=[1, 2])
    scores = tf.sigmoid(tf.cast(self.fc(y), tf.float32))
    return tf.reshape(scores, [shape[0], shape[1], self.num_parts])

  def get_config(self):
    config = super().get_config()
    config.update(num_parts=self.num_parts, channels=self.channels)
    return config


@keras.saving.register_keras_serializable(package="tfreid")
class ResidualAttentionMask(keras.layers.Layer):
  """The residual attention branch of Table I (ran_conv1 1x1 64, ran_pool1 3x3/2, ran_conv2
  3x3 192, deconv 4x4/2 192, conv3 1x1 out): a mask M = sigmoid(...) in (0, 1) with the
  input's spatial size. The global branch applies it as T + M * T to the trunk T
  (inception-4c), Wang et al.'s attention residual learning.

  Library choices (the paper gives the layers only): the mask reads the low-level map X
  (the input of 4c, in parallel with it); ran_conv1 and ran_conv2 are Conv -> BN -> ReLU,
  the deconvolution is followed by a ReLU, conv3 by the sigmoid.
  """

  def __init__(self, out_channels: int, width_divisor: int = 1, **kwargs):
    super().__init__(**kwargs)
    self.out_channels = out_channels
    self.width_divisor = width_divisor
    w = lambda c: max(1, c // width_divisor)
    self.conv1 = keras.layers.Conv2D(w(64), 1, name="ran_conv1")
    self.bn1 = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="ran_bn1")
    self.pool = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="ran_pool1")
    self.conv2 = keras.layers.Conv2D(w(192), 3, padding="same", name="ran_conv2")
    self.bn2 = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="ran_bn2")
    self.deconv = keras.layers.Conv2DTranspose(w(192), 4, strides=2, padding="same",
                                               activation="relu", name="deconv")
    self.conv3 = keras.layers.Conv2D(out_channels, 1, name="conv3")

  def build(self, input_shape):
    shape = (None,) + tuple(input_shape[1:])
    self.conv1.build(shape)
    shape = self.conv1.compute_output_shape(shape)
    self.bn1.build(shape)
    shape = self.pool.compute_output_shape(shape)
    self.conv2.build(shape)
    shape = self.conv2.compute_output_shape(shape)
    self.bn2.build(shape)
    self.deconv.build(shape)
    shape = self.deconv.compute_output_shape(shape)
    self.conv3.build(shape)
    self.built = True

  def call(self, x, training=None):
    y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
    y = self.pool(y)
    y = keras.ops.relu(self.bn2(self.conv2(y), training=training))
    y = self.deconv(y)
    y = self.conv3(y)
    # The deconvolution restores even sizes; an odd map is cropped back to the input's.
    y = y[:, :x.shape[1], :x.shape[2]]
    return keras.ops.sigmoid(y)

  def get_config(self):
    config = super().get_config()
    config.update(out_channels=self.out_channels, width_divisor=self.width_divisor)
    return config
