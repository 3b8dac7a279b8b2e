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
``a3d_value`` [B, T] (baseline), ``a3d_locations`` [B, T, 3] (corners of the pooled bins).
With ``num_episodes`` M > 1 (eq. 12's M episodes per clip, training only) the agent runs M
times on the same g with its own actions: ``a3d_log_prob`` and ``a3d_value`` are then
[B, M, T] and ``a3d_episode_logits`` [B, M, N] gives each episode's reward; ``embedding`` and
``logits`` (the supervised losses) are the first episode's. The bins are drawn on the frames
by :meth:`A3D.attention_overlays` (TensorBoard ``attention/a3d_bins``).

Table VII's "QAN*" and "separate attention*" rows (``attention=qan`` / ``separate``) replace
the agent by :mod:`tfreid.layers.quality_pooling` on the same g: the embedding is the
quality-weighted mean of the frames' features (of their spatial means, or of their spatial
softmax attention pooling), outputs ``attention_quality`` [B, L] and, for ``separate``,
``attention_spatial`` [B, L, h, w].

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

Total 24,247,492 + 3,073 N (the agent: 461,188). Table VII's QAN* has F_c 2048 -> N and one
quality FC 2048 -> 1 (2,049) in place of the agent; separate attention* adds the 1 x 1
spatial convolution 2048 -> 1 (2,049). The ResNet parts are ResNet-50's
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
from tfreid.layers import quality_pooling
from tfreid.layers import recurrent_attention as ra
from tfreid.losses import reinforce
from tfreid.models.base import ConfigKeysMixin

# recurrent: the agent; none: table VII "w/o attention"; qan and separate: table VII "QAN*"
# and "separate attention*" (tfreid.layers.quality_pooling).
ATTENTION_MODES = ("recurrent", "none", "qan", "separate")


@dataclasses.dataclass
class A3DConfig:
  """model.a3d: the method's own section (values of table IV and section III-D)."""
  # recurrent (the agent) | none (table VII "w/o attention": f_g only) | qan (table VII
  # "QAN*") | separate (table VII "separate attention*").
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
  # agent | all | location_head: how far the REINFORCE gradient reaches. agent: eq. 9's
  # theta, the agent's layers (F_o, F_h, F_a), not g (recurrent_attention module docstring).
  policy_gradient_scope: str = "agent"
  # The flow stream (table VII "w/o optical flow": false).
  use_flow: bool = True
  # The flow stream's input is flow (pixels) times this.
  flow_input_scale: float = 6.4
  # M of eq. 12: episodes sampled per training clip (the agent re-run on the same g).
  num_episodes: int = 1

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
    if self.num_episodes < 1:
      raise ConfigError(f"model.a3d.num_episodes must be >= 1, got {self.num_episodes}.")
    if self.num_episodes > 1 and (self.attention != "recurrent"
                                  or self.location_policy != "gaussian"):
      raise ConfigError(f"model.a3d.num_episodes={self.num_episodes} samples several "
                        "episodes of the Gaussian location policy (eq. 12); it needs "
                        "attention=recurrent and location_policy=gaussian. Set "
                        "model.a3d.num_episodes=1.")


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
    location_policy, policy_gradient_scope, use_flow, flow_input_scale, num_episodes: see
      :class:`A3DConfig`.
    seed: runtime.seed, the first part of the sampling seeds.
    normalization: :class:`ClipNormalization` mode of the RGB frames.
  """

  CONFIG_KEYS = ("num_classes", "block_counts", "base_width", "attention", "num_glimpses",
                 "bin_size", "policy_variance", "hidden_dim", "feature_dim",
                 "location_policy", "policy_gradient_scope", "use_flow", "flow_input_scale",
                 "num_episodes", "seed", "normalization")

  def __init__(self, num_classes: int, block_counts=(3, 4, 6, 3), base_width: int = 64,
               attention: str = "recurrent", num_glimpses: int = 4, bin_size=(4, 6, 3),
               policy_variance: float = 0.03, hidden_dim: int = 256, feature_dim: int = 128,
               location_policy: str = "gaussian", policy_gradient_scope: str = "agent",
               use_flow: bool = True, flow_input_scale: float = 6.4, num_episodes: int = 1,
               seed: int = 0, normalization: str = "caffe", **kwargs):
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
    self.num_episodes = int(num_episodes)
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
    self.spatial_attention = None
    self.quality = None
    width = channels
    if attention in ("qan", "separate"):
      self.quality = quality_pooling.QualityPooling(name="quality")
      self.quality.build((None, None, channels))
      if attention == "separate":
        self.spatial_attention = quality_pooling.SpatialSoftmaxPooling(
            name="spatial_attention")
        self.spatial_attention.build((None, None, None, None, channels))
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
    if self.quality is not None:
      # Table VII "QAN*" / "separate attention*": the attention-aggregated feature replaces
      # f_g (tfreid.layers.quality_pooling).
      if self.spatial_attention is not None:
        frames, spatial = self.spatial_attention(g)
        outputs["attention_spatial"] = spatial
      else:
        frames = tf.reduce_mean(tf.cast(g, tf.float32), axis=[2, 3])
      embedding, quality = self.quality(frames)
      outputs["attention_quality"] = quality
    elif self.agent is not None:
      seed = self._seed(training)
      episodes = self.num_episodes if training else 1
      runs = [self.agent(g, training=training, seed=episode_seed(seed, m))
              for m in range(episodes)]
      embeddings = [self._embedding(global_feature, run["local"]) for run in runs]
      embedding = embeddings[0]
      agent = runs[0]
      outputs.update(a3d_log_prob=agent["log_prob"], a3d_value=agent["value"],
                     a3d_locations=tf.cast(agent["index"], tf.float32))
      if episodes > 1:
        # Eq. 12 with M episodes: every episode's log-probabilities, baselines and logits
        # (its reward); the supervised losses read episode 1's embedding and logits.
        stack = lambda key: tf.stack([run[key] for run in runs], axis=1)
        outputs.update(a3d_log_prob=stack("log_prob"), a3d_value=stack("value"),
                       a3d_episode_logits=tf.stack(
                           [tf.cast(self.classifier(e), tf.float32) for e in embeddings],
                           axis=1))
    else:
      embedding = global_feature
    outputs["embedding"] = embedding
    outputs["logits"] = tf.cast(self.classifier(embedding), tf.float32)   # eq. 6
    return outputs

  def _embedding(self, global_feature, local):
    """[f_g, f_l^1..f_l^T] (eq. 6's input and the retrieval embedding)."""
    return tf.concat([global_feature,
                      tf.reshape(local, [-1, self.num_glimpses * self.hidden_dim])], axis=-1)

  # ------------------------------------------------------------------ contract

  def summary_scalars(self, outputs, batch):
    """TensorBoard ``metrics/a3d_reward``: the mean reward R of eq. 7-8 (the batch's
    classification accuracy, over every episode); ``metrics/a3d_value_error``: the value
    baseline's squared error (b_t - R)^2 of eq. 13, averaged over glimpses."""
    if self.agent is None or "labels" not in batch:
      return {}
    labels = tf.reshape(batch["labels"], [-1])
    if "a3d_episode_logits" in outputs:
      reward = reinforce.classification_return(
          outputs["a3d_episode_logits"], labels[:, None], 1)            # [B, M]
      error = tf.square(outputs["a3d_value"] - reward[..., None])      # [B, M, T]
      return {"a3d_reward": tf.reduce_mean(reward, axis=1),
              "a3d_value_error": tf.reduce_mean(error, axis=[1, 2])}
    reward = reinforce.classification_return(outputs["logits"], labels, 1)
    return {"a3d_reward": reward,
            "a3d_value_error": tf.reduce_mean(
                tf.square(outputs["a3d_value"] - reward[:, None]), axis=1)}

  def attention_overlays(self, inputs, outputs):
    """The glimpses' 3-D bins drawn on the frames (`tfreid.visualize` hook: TensorBoard
    ``attention/a3d_bins``, ``python -m tfreid.visualize``). Per clip, the frames (top
    row) and the same frames with glimpse t's bin as a box in colour t
    (`visualize.PART_COLORS`) on every frame its temporal extent covers (frame l lies in
    feature step l * L_g // L; a later glimpse's box covers an earlier one at the same
    bin); fig. 8 of the paper draws the same cuboids. The QAN* and
    separate attention* variants draw their frame qualities as bars and their spatial
    attention as heat maps (the default drawing)."""
    from tfreid import visualize  # pylint: disable=import-outside-toplevel
    if self.agent is None:
      return visualize.default_overlays(inputs, outputs)
    clips = inputs["clips"]
    boxes = bin_boxes(outputs["a3d_locations"], self.feature_grid_of(clips), self.bin_size,
                      int(clips.shape[1]))                                # [B, L, T, 4]
    pictures = []
    for b in range(min(2, int(clips.shape[0]))):
      frames = clips[b]
      pictures.append(visualize.clip_strip(
          [frames, visualize.draw_boxes(frames, boxes[b], thickness=1)]))
    return {"a3d_bins": tf.stack(pictures)}

  def feature_grid_of(self, clips) -> tuple[int, int, int]:
    """(L_g, H_g, W_g) of g for `clips` [B, L, H, W, 3]."""
    return feature_grid(int(clips.shape[2]), int(clips.shape[3]), int(clips.shape[1]))


def episode_seed(seed, episode: int):
  """The sampling seed of episode `episode` of a step (eq. 12's M episodes): the step's seed
  for the first, a stateless fold of it for the others; None stays None (inference)."""
  if seed is None or episode == 0:
    return seed
  return tf.random.experimental.stateless_fold_in(seed, 1_000_000 + episode)


def bin_boxes(locations, grid, bin_size, num_frames: int) -> tf.Tensor:
  """Boxes of the glimpses' bins on the frames, [B, L, T, 4] (y0, x0, y1, x1) as fractions
  of the frame: glimpse t's bin on frame l when the bin's temporal extent covers the frame's
  feature step l * L_g // L, else an empty box outside the frame (nothing drawn).

  Args:
    locations: [B, T, 3] corners (l, h, w) of the bins (``a3d_locations``).
    grid: (L_g, H_g, W_g).
    bin_size: (L_a, H_a, W_a).
    num_frames: L, the clip's frames.
  """
  lg, hg, wg = grid
  corner = tf.cast(locations, tf.float32)                                 # [B, T, 3]
  box = tf.stack([corner[..., 1] / hg, corner[..., 2] / wg,
                  (corner[..., 1] + bin_size[1]) / hg,
                  (corner[..., 2] + bin_size[2]) / wg], axis=-1)         # [B, T, 4]
  step = tf.constant([l * lg // num_frames for l in range(num_frames)], tf.float32)
  start = corner[..., 0][:, None, :]                                      # [B, 1, T]
  covered = (step[None, :, None] >= start) & (step[None, :, None] < start + bin_size[0])
  outside = tf.constant([-2.0, -2.0, -2.0, -2.0])
  return tf.where(covered[..., None], box[:, None], outside)


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
          "num_episodes": section.num_episodes, "seed": config.runtime.seed}


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
