"""stal: spatial-temporal attention-aware learning (Chen et al., "Spatial-Temporal
Attention-Aware Learning for Video-Based Person Re-Identification", IEEE TIP 2019).

Per frame x^t of a clip [B, T, H, W, 3] with its 14 keypoints [B, T, 14, 3] (Fig. 2b):

- the low-level CNN, BN-Inception conv1 .. inception-4b (Table I; the text names GoogLeNet,
  but Table I's widths and strides are BN-Inception's), gives X^t [h, w, 576], stride 16;
- the global branch: inception-4c on X^t, the residual attention mask M read from X^t
  (:class:`ResidualAttentionMask`) applied as 4c + M * 4c, then 4d, 4e, 5a, 5b and the
  average pool: g^t in R^1024; g = mean_t g^t (the temporal pooling layer of Fig. 2) is the
  ``embedding``; identity ``logits`` = W^g dropout(g) (eq. 5);
- the local branch: six body-part boxes from the keypoints (eq. 7, :func:`part_boxes`),
  max ROI pooling of X^t into 8 x 8 bins (:func:`roi_max_pool`), and per part its own
  network 4c_part -> 4d_part -> 4e_part -> fc_part: f^{r,t} in R^1024 (eq. 1);
  ``part_logits`` = W^r f^{r,t} (eq. 6, W^r shared over t);
- STAN (:class:`SpatialTemporalAttention`): the score map s^{r,t} [B, T, R]
  (``attention_scores``);
- eq. 9 aggregates each part over the frames (``parts`` [B, R, D]) and ``part_weight`` =
  sum_t s^{r,t} [B, R] is abar^r up to the scale eq. 8 divides out.

Distances (`distance_functions`, `pairwise_distance`): d_g = ||g_i - g_j||_2, d_l = psi of
eq. 8 on ``parts`` and ``part_weight``, and at test d = d_l + 0.3 d_g (section IV-C).
Tracklets are aggregated over all their frames (eq. 9): `tracklet_statistics` returns sums
of s f, of s, of f and of g^t, and `finish_tracklet` divides.

Test-time switches (section ``model.stal``): ``temporal_attention`` / ``spatial_attention``
off feed ones into eqs. 9 / 8 (Fig. 5's baseline, TAN, SAN are one trained model tested
both ways); ``test_distance`` fused | global | local (Fig. 6's GB, LB); ``test_parts``
(Fig. 7: one part, psi of a single part is its Euclidean distance);
``global_distance_weight`` (Fig. 8).

Size at the paper's configuration (``stal`` experiment, 625 MARS training identities):
``PAPER_CONFIG_PARAMS`` = 145,328,445 parameters (BatchNorm moving statistics included;
every BN-Inception convolution has a bias, as the Caffe model):

  low-level CNN (stem 125,696 + inception 3a..4b 2,149,632)         2,275,328
  global branch: 4c 898,912 + residual attention 849,920
                 + 4d..5b 7,025,600                                 8,774,432
  identity classifier W^g (1024 x 625 + 625)                          640,625
  six part networks, each 4c 898,912 + 4d 1,111,200 + 4e 1,442,816
                 + fc_part (16,384 x 1024 + 1024) 16,778,240       6 x 20,231,168
  six part classifiers W^r (eq. 6)                                  6 x 640,625
  STAN: conv 7x7 576->256, two 3x3 256->256, FC 256->6              8,407,302

The part networks' fc_part (6 x 16.8 M) hold most of it: Table I's 1024 x 4 x 4 -> 1024.
(``tests/test_stal_model.py`` recomputes it from BN-Inception's table.)

ResNet-50 trunk (Table V's "STAL + ResNet50", variant ``resnet50``, model.backbone.name=
resnet2d). The paper gives the row only; how the network is cut is the library's reading,
kept parallel to Table I: the low-level CNN is res1..res4 (stride 16, so the ROI pooling
scale stays 1/16; X^t is 1024 x 14 x 14); the global branch is X + M * X (the residual
attention mask M read from X, as above; the ResNet has no stride-1 stage after res4 to play
4c's part) -> res5 (last stride 2) -> average pool (2048) -> a linear layer to 1024 (Fig.
9's embedding size); each part network is a copy of res5 (its first block halves the 8 x 8
bins to 4 x 4, as 4e does) -> flatten -> fc_part 2048 x 4 x 4 -> 1024. STAN and the
classifiers are unchanged. ``RESNET50_CONFIG_PARAMS`` = 336,392,093 (convolutions without
bias, as keras.applications' ResNet-50 once its biases are folded into BatchNorm):

  low-level CNN (stem 9,664 + res2 218,624 + res3 1,226,752 + res4 7,118,848) 8,573,888
  global branch: residual attention 965,056 + res5 14,987,264
                 + projection 2048 -> 1024 (2,098,176)                   18,050,496
  identity classifier W^g (1024 x 625 + 625)                                640,625
  six part networks, each res5 14,987,264 + fc_part (32,768 x 1024 + 1024)
                 33,555,456                                            6 x 48,542,720
  six part classifiers W^r                                               6 x 640,625
  STAN: conv 7x7 1024->256, two 3x3 256->256, FC 256->6                  14,027,014
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from tfreid import visualize
from tfreid.backbones import bn_inception
from tfreid.backbones import resnet2d
from tfreid.backbones import resnet3d
from tfreid.backbones import weights as resnet_weights
from tfreid.config import ConfigError
from tfreid.layers.preprocessing import ClipNormalization
from tfreid.layers.roi_pooling import roi_max_pool
from tfreid.layers.stal_attention import (NUM_PARTS, PART_NAMES, ResidualAttentionMask,
                                          SpatialTemporalAttention, attention_part_distance,
                                          box_masks, part_boxes, temporal_aggregation,
                                          weighted_or_mean)
from tfreid.losses.triplet import pairwise_euclidean_distance
from tfreid.models.base import ConfigKeysMixin

PAPER_CONFIG_PARAMS = 145_328_445
RESNET50_CONFIG_PARAMS = 336_392_093
TEST_DISTANCES = ("fused", "global", "local")
# The network the branches are cut from: model.backbone.name -> Stal(trunk=...).
TRUNKS = ("bn_inception", "resnet50")
BACKBONE_TRUNKS = {"bn_inception": "bn_inception", "resnet2d": "resnet50"}


def _endpoint(output, key: str):
  """A piece's output: BN-Inception pieces return the map, resnet2d pieces a dict."""
  return output[key] if isinstance(output, dict) else output


@dataclasses.dataclass
class StalConfig:
  """model.stal: the method's section (module docstring; experiments/stal.py)."""
  # Divides every BN-Inception and attention width (1: the paper's network).
  width_divisor: int = 1
  # Global feature g (Fig. 9): the pooled 5b width (1024 / width_divisor) uses g^t as is;
  # another value adds a linear layer after the pooling (library choice).
  global_embedding_dim: int = 1024
  # Local feature f^{r,t}: the width of fc_part (Fig. 9; 1024 in the paper).
  local_embedding_dim: int = 1024
  # The residual attention branch of the global feature (Fig. 6 "without RAN": false).
  residual_attention: bool = True
  # Dropout before W^g (library choice: BN-Inception's 0.4 before its classifier).
  dropout: float = 0.4
  # ROI pooling bins per side (section IV-A: 8 x 8).
  pool_size: int = 8
  # STAN convolution channels (library choice; the paper prints the layer types only).
  attention_channels: int = 256
  # A joint counts in eq. 7 when its visibility exceeds this.
  min_joint_visibility: float = 0.0
  # Test-time switches (Fig. 5-8).
  temporal_attention: bool = True
  spatial_attention: bool = True
  test_distance: str = "fused"
  test_parts: list[int] = dataclasses.field(default_factory=list)
  global_distance_weight: float = 0.3

  def validate(self) -> None:
    if self.width_divisor < 1 or self.global_embedding_dim < 1 or self.local_embedding_dim < 1:
      raise ConfigError("model.stal.width_divisor, global_embedding_dim and "
                        "local_embedding_dim must be >= 1.")
    if self.pool_size < 2 or self.pool_size % 2:
      raise ConfigError(f"model.stal.pool_size must be even and >= 2 (4e_part halves it), "
                        f"got {self.pool_size}.")
    if self.test_distance not in TEST_DISTANCES:
      raise ConfigError(f"model.stal.test_distance={self.test_distance!r}; expected one of "
                        f"{TEST_DISTANCES}.")
    bad = [r for r in self.test_parts if not 0 <= r < NUM_PARTS]
    if bad or len(set(self.test_parts)) != len(self.test_parts):
      raise ConfigError(f"model.stal.test_parts={self.test_parts}: distinct part indices in "
                        f"0..{NUM_PARTS - 1} ({', '.join(PART_NAMES)}); [] for all.")
    if self.global_distance_weight < 0 or not 0 <= self.dropout < 1:
      raise ConfigError("model.stal.global_distance_weight must be >= 0 and dropout in "
                        "[0, 1).")


CONFIG_CLASS = StalConfig
# Switches that change no weight (figs. 5-8): `python -m tfreid.evaluate --override` may set
# them on a trained run.
TEST_TIME_KEYS = ("temporal_attention", "spatial_attention", "test_distance", "test_parts",
                  "global_distance_weight")


def streams(config):
  del config
  return ("clips", "keypoints")


def validate_config(config) -> None:
  backbone = config.model.backbone
  if backbone.name not in BACKBONE_TRUNKS:
    raise ConfigError(f"model.name=stal needs model.backbone.name=bn_inception (Table I) or "
                      f"resnet2d (Table V's ResNet-50 row), got {backbone.name!r}.")
  if backbone.init not in ("none", "imagenet"):
    raise ConfigError(f"model.stal: model.backbone.init must be none or imagenet (weights "
                      f"from model.backbone.weights_path), got {backbone.init!r}.")
  for key in ("height", "width"):
    size = getattr(config.data, key)
    if size % 32:
      raise ConfigError(f"model.name=stal needs data.{key} divisible by 32 (BN-Inception "
                        f"strides), got {size}.")


@keras.saving.register_keras_serializable(package="tfreid")
class Stal(ConfigKeysMixin, keras.Model):
  """The stal model (module docstring).

  ``model({"clips": uint8 [B, T, H, W, 3], "keypoints": float32 [B, T, 14, 3]})`` returns
  float32 ``embedding`` [B, Dg] (g), ``logits`` [B, N], ``frame_embedding`` [B, T, Dg]
  (g^t), ``part_features`` [B, T, R, Dl] (f^{r,t}), ``part_logits`` [B, T, R, N],
  ``attention_scores`` [B, T, R] (s^{r,t}), ``parts`` [B, R, Dl] (eq. 9), ``part_weight``
  [B, R] (sum_t s^{r,t}), ``part_boxes`` [B, T, R, 4] (eq. 7, pixels) and
  ``attention_boxes`` [B, T, H/4, W/4] (each part's box painted with its score, for
  TensorBoard).

  ``trunk``: "bn_inception" (Table I) or "resnet50" (Table V's ResNet-50 row, module
  docstring), with ``resnet_block_counts``, ``resnet_base_width`` and
  ``resnet_last_stride`` (of the global res5) from model.backbone.
  """

  CONFIG_KEYS = ("num_classes", "width_divisor", "global_embedding_dim", "local_embedding_dim",
                 "residual_attention", "dropout", "pool_size", "attention_channels",
                 "min_joint_visibility", "temporal_attention", "spatial_attention",
                 "test_distance", "test_parts", "global_distance_weight", "trunk",
                 "resnet_block_counts", "resnet_base_width", "resnet_last_stride")
  distance_inputs = ("embedding", "parts", "part_weight")

  def __init__(self, num_classes: int, width_divisor: int = 1,
               global_embedding_dim: int = 1024, local_embedding_dim: int = 1024,
               residual_attention: bool = True, dropout: float = 0.4, pool_size: int = 8,
               attention_channels: int = 256, min_joint_visibility: float = 0.0,
               temporal_attention: bool = True, spatial_attention: bool = True,
               test_distance: str = "fused", test_parts=(), global_distance_weight: float = 0.3,
               trunk: str = "bn_inception", resnet_block_counts=(3, 4, 6, 3),
               resnet_base_width: int = 64, resnet_last_stride: int = 2, **kwargs):
    kwargs.setdefault("name", "stal")
    super().__init__(**kwargs)
    self.num_classes = num_classes
    self.width_divisor = width_divisor
    self.global_embedding_dim = global_embedding_dim
    self.local_embedding_dim = local_embedding_dim
    self.residual_attention = residual_attention
    self.dropout = dropout
    self.pool_size = pool_size
    self.attention_channels = attention_channels
    self.min_joint_visibility = min_joint_visibility
    self.temporal_attention = temporal_attention
    self.spatial_attention = spatial_attention
    self.test_distance = test_distance
    self.test_parts = tuple(test_parts)
    self.global_distance_weight = global_distance_weight
    if trunk not in TRUNKS:
      raise ValueError(f"stal trunk={trunk!r}; expected one of {TRUNKS}.")
    self.trunk = trunk
    self.resnet_block_counts = tuple(resnet_block_counts)
    self.resnet_base_width = resnet_base_width
    self.resnet_last_stride = resnet_last_stride
    d = width_divisor

    self.normalize = ClipNormalization("caffe", name="normalize")
    if trunk == "bn_inception":
      low_channels = bn_inception.module_channels("4b", d)
      pooled_channels = bn_inception.module_channels("5b", d)
      trunk_channels = bn_inception.module_channels("4c", d)
      self.low_level = bn_inception.low_level("4b", d, name="low_level")
      self.trunk_4c = bn_inception.modules("4c", "4c", d, name="global_4c")
      self.high_level = bn_inception.modules("4d", "5b", d, name="global_4d_5b")
    else:
      # Table V's STAL + ResNet50 (module docstring): res1..res4 | res5 (global) | res5 copies.
      low_channels = resnet3d.stage_output_channels("res4", resnet_base_width)
      pooled_channels = resnet3d.stage_output_channels("res5", resnet_base_width)
      trunk_channels = low_channels
      common = {"block_counts": self.resnet_block_counts, "base_width": resnet_base_width}
      self.low_level = resnet2d.resnet2d(last_stage="res4", name="low_level", **common)
      self.trunk_4c = None
      self.high_level = resnet2d.resnet2d(first_stage="res5", last_stride=resnet_last_stride,
                                          name="global_res5", **common)
    self.ran = (ResidualAttentionMask(trunk_channels, d, name="ran")
                if residual_attention else None)
    self.global_projection = (keras.layers.Dense(global_embedding_dim, name="global_fc")
                              if global_embedding_dim != pooled_channels else None)
    self.classifier_dropout = keras.layers.Dropout(dropout, name="dropout")
    self.classifier = keras.layers.Dense(num_classes, name="classifier")
    # One attribute per part network and classifier: checkpoints track attributes, not
    # lists of layers (`part_nets`, `part_classifiers` are views).
    for name in PART_NAMES:
      setattr(self, f"part_{name}", self._part_network(name, low_channels))
      setattr(self, f"classifier_{name}",
              keras.layers.Dense(num_classes, name=f"classifier_{name}"))
    self.stan = SpatialTemporalAttention(NUM_PARTS, bn_inception._width(attention_channels, d),  # pylint: disable=protected-access
                                         name="stan")
    # Every variable exists after construction (count_params, weight loading, optimizer).
    feature = (None, None, None, low_channels)
    self.normalize.build((None, None, None, None, 3))
    if trunk == "bn_inception":
      self.low_level.build((None, None, None, 3))
      self.trunk_4c.build(feature)
      self.high_level.build((None, None, None, trunk_channels))
    if self.ran is not None:
      self.ran.build(feature)
    global_dim = pooled_channels
    if self.global_projection is not None:
      self.global_projection.build((None, pooled_channels))
      global_dim = global_embedding_dim
    self.classifier.build((None, global_dim))
    for net, head in zip(self.part_nets, self.part_classifiers):
      if trunk == "bn_inception":
        net.build((None, pool_size, pool_size, low_channels))
      head.build((None, local_embedding_dim))
    self.stan.build((None, None, None, None, low_channels))
    self.built = True

  def _part_network(self, name: str, channels: int) -> keras.Model:
    """One part network (eq. 1's F for part `name`) on its ROI-pooled [P, P, C] map:
    4c_part, 4d_part, 4e_part and fc_part (Table I), or, on the ResNet-50 trunk, a copy of
    res5 (first block stride 2, as 4e halves the bins) and fc_part."""
    if self.trunk == "bn_inception":
      return keras.Sequential(
          [bn_inception.modules("4c", "4e", self.width_divisor, name="inception"),
           keras.layers.Flatten(name="flatten"),
           keras.layers.Dense(self.local_embedding_dim, name="fc_part")], name=f"part_{name}")
    res5 = resnet2d.resnet2d(block_counts=self.resnet_block_counts,
                             base_width=self.resnet_base_width, last_stride=2,
                             first_stage="res5", name="res5")
    regions = keras.Input((self.pool_size, self.pool_size, channels), name="regions")
    y = keras.layers.Flatten(name="flatten")(res5(regions)["res5"])
    y = keras.layers.Dense(self.local_embedding_dim, name="fc_part")(y)
    return keras.Model(regions, y, name=f"part_{name}")

  def pretrained_parts(self) -> list:
    """The pieces that take ImageNet weights of the trunk (`build`): the low-level CNN, the
    global branch and the part networks' inception or res5 copies."""
    if self.trunk == "bn_inception":
      return [self.low_level, self.trunk_4c, self.high_level] + self.part_nets
    return [self.low_level, self.high_level] + [n.get_layer("res5") for n in self.part_nets]

  @property
  def part_nets(self) -> list:
    """The six part networks (4c_part, 4d_part, 4e_part, fc_part), in PART_NAMES order."""
    return [getattr(self, f"part_{name}") for name in PART_NAMES]

  @property
  def part_classifiers(self) -> list:
    """W^r of eq. 6, in PART_NAMES order."""
    return [getattr(self, f"classifier_{name}") for name in PART_NAMES]

  # ------------------------------------------------------------------- forward

  def call(self, inputs, training=None):
    if not isinstance(inputs, dict) or "keypoints" not in inputs:
      raise ValueError("stal reads {'clips': uint8 [B, T, H, W, 3], 'keypoints': float32 "
                       "[B, T, 14, 3]}; convert the dataset with --keypoints=FILE.")
    clips = inputs["clips"]
    keypoints = tf.cast(inputs["keypoints"], tf.float32)
    if clips.shape.rank != 5 or None in clips.shape[2:]:
      raise ValueError(f"stal expects clips [B, T, H, W, 3] with a static frame size, got "
                       f"{clips.shape}.")
    height, width = int(clips.shape[2]), int(clips.shape[3])
    shape = tf.shape(clips)
    batch, frames = shape[0], shape[1]
    x = tf.reshape(self.normalize(clips), [-1, height, width, 3])
    low = _endpoint(self.low_level(x, training=training), "res4")  # X^t [BT, h, w, C]
    h, w, c = low.shape[1], low.shape[2], low.shape[3]

    # Global branch: 4c + M * 4c, then 4d .. 5b (ResNet-50 trunk: X + M * X, then res5).
    trunk = low if self.trunk_4c is None else self.trunk_4c(low, training=training)
    if self.ran is not None:
      trunk = trunk + self.ran(low, training=training) * trunk
    high = _endpoint(self.high_level(trunk, training=training), "res5")
    pooled = tf.reduce_mean(high, axis=[1, 2])
    if self.global_projection is not None:
      pooled = self.global_projection(pooled)
    frame_embedding = tf.reshape(tf.cast(pooled, tf.float32), [batch, frames, -1])
    embedding = tf.reduce_mean(frame_embedding, axis=1)
    logits = self.classifier(self.classifier_dropout(embedding, training=training))

    # Local branch: eq. 7 boxes, ROI pooling, part networks (eq. 1).
    boxes = part_boxes(keypoints, height, width, self.min_joint_visibility)  # [B, T, R, 4]
    regions = roi_max_pool(low, tf.reshape(boxes, [-1, NUM_PARTS, 4]), self.pool_size,
                           1.0 / 16)                              # [BT, R, P, P, C]
    features, part_logits = [], []
    for r in range(NUM_PARTS):
      f = tf.cast(self.part_nets[r](regions[:, r], training=training), tf.float32)
      features.append(tf.reshape(f, [batch, frames, -1]))
      part_logits.append(self.part_classifiers[r](features[-1]))
    part_features = tf.stack(features, axis=2)                    # [B, T, R, Dl]
    part_logits = tf.cast(tf.stack(part_logits, axis=2), tf.float32)

    # STAN and eq. 9.
    scores = self.stan(tf.reshape(low, [batch, frames, h, w, c]))  # [B, T, R]
    scores = tf.cast(scores, tf.float32)
    parts = temporal_aggregation(part_features, scores)
    part_weight = tf.reduce_sum(scores, axis=1)

    # Each part's box painted with its score (TensorBoard), at a quarter of the frame size.
    small = box_masks(boxes / 4.0, height // 4, width // 4)       # [B, T, R, h4, w4]
    drawn = tf.reduce_max(small * scores[..., None, None], axis=2)
    return {"embedding": embedding, "logits": tf.cast(logits, tf.float32),
            "frame_embedding": frame_embedding, "part_features": part_features,
            "part_logits": part_logits, "attention_scores": scores, "parts": parts,
            "part_weight": part_weight, "part_boxes": boxes, "attention_boxes": drawn}

  # ------------------------------------------------------------ method contract

  def tracklet_statistics(self, outputs, frame_weight=None):
    """Sums over a clip's frames; summed again over a tracklet's clips, then
    `finish_tracklet` divides: eq. 9 and abar over every frame of the tracklet.

    frame_weight [B, T] (evaluation and export): 0 for a frame repeated to pad a
    tracklet's last clip, so every frame of the tracklet counts once."""
    s = outputs["attention_scores"]
    f = outputs["part_features"]
    frame_embedding = outputs["frame_embedding"]
    if frame_weight is None:
      frame_weight = tf.ones(tf.shape(s)[:2], s.dtype)
    w = tf.cast(frame_weight, s.dtype)
    return {"global_sum": tf.reduce_sum(w[..., None] * frame_embedding, 1),
            "frames": tf.reduce_sum(w, 1, keepdims=True),
            "weighted_parts": tf.reduce_sum((w[..., None] * s)[..., None] * f, 1),
            "part_weight": tf.reduce_sum(w[..., None] * s, 1),
            "part_sum": tf.reduce_sum(w[..., None, None] * f, 1)}

  def finish_tracklet(self, sums, count):
    """Eq. 9 over all frames (or the mean, temporal_attention off); part weights sum_t s
    (ones, spatial_attention off); g the mean of g^t over all frames."""
    del count
    frames = sums["frames"]
    if self.temporal_attention:
      parts = weighted_or_mean(sums["weighted_parts"], sums["part_weight"],
                               sums["part_sum"] / frames[..., None])
    else:
      parts = sums["part_sum"] / frames[..., None]
    weight = sums["part_weight"] if self.spatial_attention else tf.ones_like(
        sums["part_weight"])
    return {"embedding": sums["global_sum"] / frames, "parts": parts, "part_weight": weight}

  def global_distance(self, a, b):
    """d_g(i, j) = ||g_i - g_j||_2 (section III-A)."""
    both = tf.concat([tf.cast(a["embedding"], tf.float32),
                      tf.cast(b["embedding"], tf.float32)], 0)
    n = tf.shape(a["embedding"])[0]
    return pairwise_euclidean_distance(both)[:n, n:]

  def local_distance(self, a, b):
    """d_l(i, j) = psi (eq. 8) of the eq. 9 part features and their scores."""
    return attention_part_distance(a["parts"], a["part_weight"], b["parts"], b["part_weight"])

  def pairwise_distance(self, query, gallery):
    """The test distance: d_l + w d_g (section IV-C, w = 0.3), or one of them
    (``test_distance``), on the parts of ``test_parts``."""
    if self.test_parts:
      keep = list(self.test_parts)
      pick = lambda rep: {"parts": tf.gather(rep["parts"], keep, axis=1),
                          "part_weight": tf.gather(rep["part_weight"], keep, axis=1)}
      local = self.local_distance(pick(query), pick(gallery))
    else:
      local = self.local_distance(query, gallery)
    if self.test_distance == "local":
      return local
    glob = self.global_distance(query, gallery)
    if self.test_distance == "global":
      return glob
    return local + self.global_distance_weight * glob

  def distance_functions(self):
    return {"global": self.global_distance, "local": self.local_distance,
            "learned": self.pairwise_distance}

  def attention_overlays(self, inputs, outputs):
    """TensorBoard and `python -m tfreid.visualize` (`tfreid.visualize`): per clip, its
    frames with the six part boxes of eq. 7 (colours `visualize.PART_COLORS`, in
    PART_NAMES order) and under each frame six bars, the T x R scores s^{r,t} of STAN in
    the same colours (scaled to the clip's largest score); below, each frame with every
    part's box painted by its score (``attention_boxes``) as a heat map."""
    clips = inputs["clips"]
    height, width = int(clips.shape[2]), int(clips.shape[3])
    boxes = tf.cast(outputs["part_boxes"], tf.float32)              # [B, T, R, 4] x1 y1 x2 y2
    scale = tf.constant([height - 1.0, width - 1.0, height - 1.0, width - 1.0])
    fractions = tf.gather(boxes, [1, 0, 3, 2], axis=-1) / tf.maximum(scale, 1.0)
    colors = visualize.PART_COLORS[:NUM_PARTS]
    pictures = []
    for b in range(int(clips.shape[0])):
      boxed = visualize.draw_boxes(clips[b], fractions[b], colors)
      rows = [visualize.weight_bars(boxed, outputs["attention_scores"][b], colors=colors),
              visualize.heatmap_overlay(clips[b], outputs["attention_boxes"][b])]
      pictures.append(visualize.clip_strip(rows))
    return {"parts": tf.stack(pictures)}

  def summary_scalars(self, outputs, batch):
    del batch
    s = outputs["attention_scores"]
    spread = tf.reduce_max(s, axis=[1, 2]) - tf.reduce_min(s, axis=[1, 2])
    return {"attention_mean": tf.reduce_mean(s, axis=[1, 2]), "attention_spread": spread}


def model_kwargs(config) -> dict:
  section = config.model.stal
  return {"width_divisor": section.width_divisor,
          "global_embedding_dim": section.global_embedding_dim,
          "local_embedding_dim": section.local_embedding_dim,
          "residual_attention": section.residual_attention, "dropout": section.dropout,
          "pool_size": section.pool_size, "attention_channels": section.attention_channels,
          "min_joint_visibility": section.min_joint_visibility,
          "temporal_attention": section.temporal_attention,
          "spatial_attention": section.spatial_attention,
          "test_distance": section.test_distance, "test_parts": list(section.test_parts),
          "global_distance_weight": section.global_distance_weight,
          "trunk": BACKBONE_TRUNKS[config.model.backbone.name],
          "resnet_block_counts": tuple(config.model.backbone.block_counts),
          "resnet_base_width": config.model.backbone.base_width,
          "resnet_last_stride": config.model.backbone.last_stride}


def build(config, num_classes: int) -> Stal:
  """The model of `config`. model.backbone.init=imagenet loads ImageNet weights into the
  low-level CNN, the global branch and every part network's copies: BN-Inception from
  model.backbone.weights_path (`bn_inception.WEIGHTS_FORMAT`); ResNet-50 (resnet2d) from
  model.backbone.weights_path (a Keras ResNet-50 weights file) or, when it is empty,
  keras.applications."""
  validate_config(config)
  model = Stal(num_classes, **model_kwargs(config))
  backbone = config.model.backbone
  if backbone.init != "imagenet":
    return model
  if model.trunk == "resnet50":
    if backbone.weights_path:
      table, source = resnet_weights.read_weights_file(backbone.weights_path), \
          backbone.weights_path
    else:
      table, source = resnet_weights.imagenet_resnet50_weights(), "keras.applications"
    for piece in model.pretrained_parts():
      resnet_weights.load_2d_weights(piece, table, source)
    return model
  if not backbone.weights_path:
    raise ConfigError("model.backbone.init=imagenet for stal reads BN-Inception weights "
                      "from model.backbone.weights_path (none can be downloaded), which "
                      "is empty. Give a file in this format, or set "
                      "model.backbone.init=none:\n" + bn_inception.WEIGHTS_FORMAT)
  bn_inception.load_caffe_weights(model.pretrained_parts(), backbone.weights_path)
  return model
