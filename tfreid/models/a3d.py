"""a3d: recurrent 3-D attention on a two-stream (RGB + optical flow) ResNet-50 (Chen et al.,
"Learning Recurrent 3D Attention for Video-Based Person Re-identification", IEEE TIP 2020).

Network (section III, tables I-IV, fig. 2-3):

* F_img (table I): ResNet-50 conv1 + max-pool + res2 on the RGB frames -> [L, H/4, W/4, 256].
* F_flow (table II): the same layers, own weights, on the 2-channel flow frames (dx, dy).
* Eq. 1: g = F_g(F_img(X) + F_flow(F)): the two res2 maps are summed and one shared trunk
  F_g = res3, res4, res5 (table III; res5 with stride 1) gives g [B, L, H/16, W/16, 2048]
  (6 x 16 x 8 for a 6 x 256 x 128 clip).
* f_g = mean of g over L, H, W (2048-d global feature).
* Eqs. 2-5: the recurrent agent (:class:`tfreid.layers.recurrent_attention.RecurrentBinAttention`)
  takes T glimpses of L_a x H_a x W_a bins of g; f_l^t = h_t (256-d).
* Eq. 6: p_c = softmax(F_c([f_g, f_l^1..f_l^T])), F_c one FC; the retrieval embedding is the
  concatenation [f_g, h_1..h_T] (2048 + 256 T), averaged over a tracklet's clips (the default
  merge) and compared with the Euclidean distance (the default metric).

Inputs: ``{"clips": uint8 [B, L, H, W, 3], "flow": float32 [B, L, H, W, 2]}`` (flow in
pixels, as the converter's ``--optical_flow`` stores it and :mod:`tfreid.data.flow` computes
it). The flow stream sees ``flow * flow_input_scale`` (6.4 by default: +-20 px -> +-128, the
range of the caffe-normalised RGB input; library choice, the paper's FlowNet flow scale is
not given). With ``use_flow=False`` (table VII "w/o optical flow") the model reads clips only.

Outputs (float32): ``embedding`` [B, 2048 + 256 T], ``logits`` [B, N], ``global_feature``
[B, 2048], and with the recurrent agent ``a3d_log_prob`` [B, T] (log pi of a_1..a_T),
``a3d_value`` [B, T] (baseline), ``a3d_locations`` [B, T, 3] (corners of the pooled bins),
and at inference ``attention_bins`` [B, L, H, W]: the frames' luminance with the bins the
glimpses pooled drawn on them (TensorBoard ``attention/attention_bins``).

Sampling (eq. 5) in training uses stateless seeds made of (runtime.seed, the model's own
training-call counter, glimpse), and the noise of a sample depends on its position in the
global batch only (:func:`tfreid.layers.recurrent_attention.sample_global`): 1 and 2
replicas draw the same actions, and the counter is a checkpointed variable, so a resumed run
draws what a straight one would.

Parameters of the paper's configuration (N training identities, T = 4, table IV widths):

| part | parameters |
| --- | --- |
| F_img: conv1 (no bias; BatchNorm: gamma, beta, moving mean, variance) + res2 | 228,288 |
| F_flow: the same with a 2-channel conv1 (7 * 7 * 64 fewer) | 225,152 |
| F_g: res3 + res4 + res5 | 23,332,864 |
| fc1_feat 2048->128 | 262,272 |
| fc1_att 3->128 | 512 |
| fc2_feat, fc2_att 128->256 | 2 x 33,024 |
| fc_i2h 256->256 | 65,792 |
| fc_h2h 256->256, no bias | 65,536 |
| fc_att 256->3 | 771 |
| fc_v 256->1 (value baseline; the library's one-FC value network) | 257 |
| F_c 3072->N | 3,073 N |

Total 24,247,492 + 3,073 N (the agent: 461,188). The ResNet parts are ResNet-50's
convolutions and BatchNorms without convolution biases (folded into BatchNorm when
keras.applications weights load); F_img + F_g with a 3-channel stem is the 2-D ResNet-50
without top of :mod:`tfreid.backbones.resnet2d`.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from tfreid.backbones import resnet2d, resnet3d, weights
from tfreid.config import ConfigError
from tfreid.layers.preprocessing import ClipNormalization
from tfreid.layers import recurrent_attention as ra
from tfreid.losses import reinforce
from tfreid.models.base import ConfigKeysMixin

ATTENTION_MODES = ("recurrent", "none")


@dataclasses.dataclass
class A3DConfig:
  """model.a3d: the method's own section (values of table IV and section III-D)."""
  # recurrent (the agent) | none (table VII "w/o attention": f_g only)
  attention: str = "recurrent"
  # T, glimpses (table VIII: 1, 2, 4).
  num_glimpses: int = 4
  # L_a, H_a, W_a of the bins (table IV; figs. 5-6 vary it).
  bin_size: list[int] = dataclasses.field(default_factory=lambda: [4, 6, 3])
  # Sigma of eq. 5 (variance in action units, [-1, 1] per axis).
  policy_variance: float = 0.03
  # Width of o_t and h_t (table IV), and of fc1_feat / fc1_att.
  hidden_dim: int = 256
  feature_dim: int = 128
  # gaussian (eq. 5) | uniform (table VII "random attention")
  location_policy: str = "gaussian"
  # all | location_head: how far the REINFORCE gradient reaches (design note §5.5).
  policy_gradient_scope: str = "all"
  # The flow stream (table VII "w/o optical flow": false).
  use_flow: bool = True
  # The flow stream's input is flow (pixels) times this.
  flow_input_scale: float = 6.4

  def validate(self) -> None:
    if self.attention not in ATTENTION_MODES:
      raise ConfigError(f"model.a3d.attention={self.attention!r}; expected one of "
                        f"{ATTENTION_MODES}.")
    if self.num_glimpses < 1:
      raise ConfigError(f"model.a3d.num_glimpses must be >= 1, got {self.num_glimpses}.")
    if len(self.bin_size) != 3 or min(self.bin_size) < 1:
      raise ConfigError(f"model.a3d.bin_size must be 3 positive sizes [L_a, H_a, W_a], got "
                        f"{self.bin_size}.")
    if self.policy_variance <= 0:
      raise ConfigError(f"model.a3d.policy_variance must be > 0, got "
                        f"{self.policy_variance}.")
    if self.location_policy not in ra.LOCATION_POLICIES:
      raise ConfigError(f"model.a3d.location_policy={self.location_policy!r}; expected one "
                        f"of {ra.LOCATION_POLICIES}.")
    if self.policy_gradient_scope not in ra.GRADIENT_SCOPES:
      raise ConfigError(f"model.a3d.policy_gradient_scope={self.policy_gradient_scope!r}; "
                        f"expected one of {ra.GRADIENT_SCOPES}.")
    if self.hidden_dim < 1 or self.feature_dim < 1:
      raise ConfigError("model.a3d.hidden_dim and feature_dim must be >= 1.")


CONFIG_CLASS = A3DConfig


def streams(config):
  """clips and flow; clips only without the flow stream (table VII "w/o optical flow")."""
  return ("clips", "flow") if config.model.a3d.use_flow else ("clips",)


def feature_grid(height: int, width: int, seq_len: int) -> tuple[int, int, int]:
  """(L_g, H_g, W_g) of g for frames of height x width: stride 16 (res5 stride 1)."""
  return seq_len, -(-height // 16), -(-width // 16)


def validate_config(config) -> None:
  """The backbone a3d takes and a bin that fits in g (training and test clips)."""
  section = config.model.a3d
  section.validate()
  if config.model.backbone.name != "resnet2d":
    raise ConfigError(f"model.name=a3d needs model.backbone.name=resnet2d (two 2-D stems "
                      f"and a 2-D trunk), got {config.model.backbone.name!r}.")
  if config.model.backbone.last_stride != 1:
    raise ConfigError("model.name=a3d needs model.backbone.last_stride=1 (table III: res5 "
                      "keeps the 16 x 8 map).")
  if section.attention == "recurrent":
    data = config.data
    for seq_len, what in ((data.seq_len, "data.seq_len"),
                          (data.test_clip_len, "data.test_seq_len")):
      grid = feature_grid(data.height, data.width, seq_len)
      if any(b > g for b, g in zip(section.bin_size, grid)):
        raise ConfigError(f"model.a3d.bin_size={section.bin_size} does not fit in the feature "
                          f"volume {list(grid)} (L_g, H_g, W_g) of {what}={seq_len} frames of "
                          f"{data.height}x{data.width}; lower the bin size.")


@keras.saving.register_keras_serializable(package="tfreid")
class A3D(ConfigKeysMixin, keras.Model):
  """Two-stream ResNet-50 with the recurrent 3-D attention agent (module docstring).

  Args:
    num_classes: training identities.
    block_counts, base_width: of the ResNet (paper: 3-4-6-3, 64).
    attention, num_glimpses, bin_size, policy_variance, hidden_dim, feature_dim,
    location_policy, policy_gradient_scope, use_flow, flow_input_scale: see
      :class:`A3DConfig`.
    seed: runtime.seed, the first part of the sampling seeds.
    normalization: :class:`ClipNormalization` mode of the RGB frames.
  """

  CONFIG_KEYS = ("num_classes", "block_counts", "base_width", "attention", "num_glimpses",
                 "bin_size", "policy_variance", "hidden_dim", "feature_dim",
                 "location_policy", "policy_gradient_scope", "use_flow", "flow_input_scale",
                 "seed", "normalization")

  def __init__(self, num_classes: int, block_counts=(3, 4, 6, 3), base_width: int = 64,
               attention: str = "recurrent", num_glimpses: int = 4, bin_size=(4, 6, 3),
               policy_variance: float = 0.03, hidden_dim: int = 256, feature_dim: int = 128,
               location_policy: str = "gaussian", policy_gradient_scope: str = "all",
               use_flow: bool = True, flow_input_scale: float = 6.4, seed: int = 0,
               normalization: str = "caffe", **kwargs):
    kwargs.setdefault("name", "a3d")
    super().__init__(**kwargs)
    if attention not in ATTENTION_MODES:
      raise ValueError(f"A3D attention={attention!r}; expected one of {ATTENTION_MODES}.")
    self.num_classes = num_classes
    self.block_counts = tuple(block_counts)
    self.base_width = base_width
    self.attention = attention
    self.num_glimpses = num_glimpses
    self.bin_size = tuple(bin_size)
    self.policy_variance = policy_variance
    self.hidden_dim = hidden_dim
    self.feature_dim = feature_dim
    self.location_policy = location_policy
    self.policy_gradient_scope = policy_gradient_scope
    self.use_flow = use_flow
    self.flow_input_scale = flow_input_scale
    self.seed = seed
    self.normalization = normalization
    common = {"block_counts": self.block_counts, "base_width": base_width, "last_stride": 1}
    self.normalize = ClipNormalization(normalization, name="normalize")
    self.rgb_stream = resnet2d.resnet2d(last_stage="res2", name="rgb_stream", **common)
    self.flow_stream = (resnet2d.resnet2d(input_channels=2, last_stage="res2",
                                          name="flow_stream", **common) if use_flow else None)
    self.trunk = resnet2d.resnet2d(first_stage="res3", name="trunk", **common)
    channels = resnet3d.output_channels(base_width)
    self.agent = None
    width = channels
    if attention == "recurrent":
      self.agent = ra.RecurrentBinAttention(
          self.bin_size, num_glimpses, hidden_dim, feature_dim, policy_variance,
          location_policy, policy_gradient_scope, name="agent")
      self.agent.build((None, None, None, None, channels))
      width += num_glimpses * hidden_dim
      # Training calls so far: the second part of the sampling seed. On-read, one copy per
      # replica (each replica counts its own calls; they agree), checkpointed with the model.
      self.sample_step = tf.Variable(
          0, dtype=tf.int64, trainable=False, name="sample_step",
          synchronization=tf.VariableSynchronization.ON_READ,
          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.classifier = keras.layers.Dense(num_classes, name="classifier")
    self.normalize.build((None, None, None, 3))
    self.classifier.build((None, width))
    self.embedding_dim = width

  # ------------------------------------------------------------------ eq. 1

  def two_stream_features(self, clips, flow=None, training=None):
    """Eq. 1: g = F_g(F_img(X) + F_flow(F)) as [B, L, h, w, C] (float, compute dtype)."""
    def frames(rgb_and_flow):
      rgb = self.rgb_stream(self.normalize(rgb_and_flow[..., :3]), training=training)["res2"]
      if self.flow_stream is not None:
        motion = tf.cast(rgb_and_flow[..., 3:], tf.float32) * self.flow_input_scale
        rgb = rgb + self.flow_stream(tf.cast(motion, rgb.dtype), training=training)["res2"]
      return self.trunk(rgb, training=training)["res5"]
    x = tf.cast(clips, tf.float32)
    if self.flow_stream is not None:
      if flow is None:
        raise ValueError("A3D with the flow stream needs inputs['flow'] (float32 "
                         "[B, L, H, W, 2], pixels); convert the dataset with --optical_flow.")
      x = tf.concat([x, tf.cast(flow, tf.float32)], axis=-1)
    return resnet3d.per_frame(frames, x)

  def _seed(self, training):
    if self.agent is None:
      return None
    if training and self.location_policy == "gaussian" or self.location_policy == "uniform":
      step = self.sample_step.assign_add(1) if training else tf.constant(-1, tf.int64)
      return tf.stack([tf.constant(self.seed, tf.int64), step])
    return None

  def call(self, inputs, training=None):
    if not isinstance(inputs, dict):
      inputs = {"clips": inputs}
    clips = inputs["clips"]
    g = self.two_stream_features(clips, inputs.get("flow"), training=training)
    global_feature = tf.reduce_mean(tf.cast(g, tf.float32), axis=[1, 2, 3])
    outputs = {"global_feature": global_feature}
    parts = [global_feature]
    if self.agent is not None:
      agent = self.agent(g, training=training, seed=self._seed(training))
      local = agent["local"]                         # [B, T, hidden]
      parts.append(tf.reshape(local, [-1, self.num_glimpses * self.hidden_dim]))
      outputs.update(a3d_log_prob=agent["log_prob"], a3d_value=agent["value"],
                     a3d_locations=tf.cast(agent["index"], tf.float32))
      if not training:
        outputs["attention_bins"] = draw_bins(clips, agent["index"], tuple(g.shape[1:4]),
                                              self.bin_size)
    embedding = tf.concat(parts, axis=-1)
    outputs["embedding"] = embedding
    outputs["logits"] = tf.cast(self.classifier(embedding), tf.float32)   # eq. 6
    return outputs

  # ------------------------------------------------------------------ contract

  def summary_scalars(self, outputs, batch):
    """Mean reward (eq. 7) and the value baseline's squared error (eq. 13)."""
    if self.agent is None or "labels" not in batch:
      return {}
    reward = reinforce.classification_return(outputs["logits"],
                                             tf.reshape(batch["labels"], [-1]), 1)
    return {"a3d_reward": reward,
            "a3d_value_error": tf.reduce_mean(
                tf.square(outputs["a3d_value"] - reward[:, None]), axis=1)}


def draw_bins(clips, index, grid, bin_size) -> tf.Tensor:
  """The glimpses' bins drawn on the frames: [B, L, H, W] in [0, 1], 0.4 x luminance +
  0.6 x the fraction of the T glimpses whose bin covers the pixel (feature cells are
  H/H_g x W/W_g pixels)."""
  clips = tf.cast(clips, tf.float32)
  h, w = clips.shape[2], clips.shape[3]
  lg, hg, wg = grid
  luminance = tf.reduce_mean(clips, axis=-1) / 255.0                      # [B, L, H, W]
  cells = [tf.range(n) for n in (lg, hg, wg)]
  inside = []
  for axis, n in enumerate((lg, hg, wg)):
    start = index[..., axis][:, :, None]                                  # [B, T, 1]
    pos = tf.cast(cells[axis], tf.int32)[None, None]
    inside.append(tf.cast((pos >= start) & (pos < start + bin_size[axis]), tf.float32))
  cover = tf.einsum("btl,bth,btw->blhw", *inside) / float(index.shape[1])  # [B, L, hg, wg]
  rows = tf.cast(tf.range(h) * hg // h, tf.int32)
  cols = tf.cast(tf.range(w) * wg // w, tf.int32)
  cover = tf.gather(tf.gather(cover, rows, axis=2), cols, axis=3)
  frame_cells = tf.cast(tf.range(clips.shape[1]) * lg // clips.shape[1], tf.int32)
  cover = tf.gather(cover, frame_cells, axis=1)
  return 0.4 * luminance + 0.6 * cover


def model_kwargs(config) -> dict:
  """:class:`A3D` arguments (but num_classes) from an ExperimentConfig."""
  section = config.model.a3d
  backbone = config.model.backbone
  return {"block_counts": tuple(backbone.block_counts), "base_width": backbone.base_width,
          "attention": section.attention, "num_glimpses": section.num_glimpses,
          "bin_size": tuple(section.bin_size), "policy_variance": section.policy_variance,
          "hidden_dim": section.hidden_dim, "feature_dim": section.feature_dim,
          "location_policy": section.location_policy,
          "policy_gradient_scope": section.policy_gradient_scope,
          "use_flow": section.use_flow, "flow_input_scale": section.flow_input_scale,
          "seed": config.runtime.seed}


def initialize_streams(model: A3D, init: str, weights_path: str = "") -> list[str]:
  """Loads 2-D ResNet-50 weights (ImageNet, section III-D) into the RGB stem+res2, the flow
  stem+res2 (conv1 by the cross-modality rule, `weights.cross_modality_kernel`) and the
  res3..res5 trunk. Returns one description per part."""
  parts = [model.rgb_stream, model.trunk] + ([model.flow_stream] if model.flow_stream else [])
  if init == "none":
    return [weights.initialize_backbone(p, "none") for p in parts]
  if init not in ("imagenet", "reid"):
    raise ConfigError(f"model.backbone.init={init!r}: a3d loads 2-D ResNet-50 weights "
                      "(imagenet or reid) or none.")
  if weights_path:
    table, source = weights.read_weights_file(weights_path), weights_path
  elif init == "imagenet":
    table, source = weights.imagenet_resnet50_weights(), "keras.applications ImageNet"
  else:
    raise ConfigError("model.backbone.init=reid needs model.backbone.weights_path.")
  return [f"{p.name}: {len(weights.load_2d_weights(p, table, source))} layers from {source}"
          for p in parts]


def build(config, num_classes: int) -> A3D:
  validate_config(config)
  model = A3D(num_classes, **model_kwargs(config))
  initialize_streams(model, config.model.backbone.init, config.model.backbone.weights_path)
  return model
