"""diversity_attention: diversity regularised spatiotemporal attention (Li, Bak, Carr, Wang,
"Diversity Regularized Spatiotemporal Attention for Video-based Person Re-identification",
CVPR 2018), fig. 2.

A clip of N frames (restricted random sampling, section 3.1: `data.train_sampler=
restricted_random`, `data.test_sampler=chunk_first`) goes frame by frame through a 2-D
ResNet-50, conv1 to res5c (last stride 2: an 8 x 4 grid of D = 2048 features for a 256 x 128
frame, section 3.2). Then, per frame:

  K spatial attention models, eqs. (1)-(3)  (`tfreid.layers.spatial_attention`)
      -> receptive fields s_{n,k} [L] and gated features x_{n,k} [D];
per part, across the frames:
  the enhancement E, eq. (4) = supplementary (S1)-(S4)  (`TemporalEnhancement`)
      -> x^_{n,k};
  temporal attention, eqs. (11)-(13)  (`PartTemporalAttention`; or average / max pooling,
      table 1) -> x_k [D], eq. (14);
and for the clip:
  x = [x_1, ..., x_K], eq. (15) (K * D = 12,288 dims), a fully connected layer to 128 dims
  and L2 normalisation (section 4.2) -> ``embedding``, trained with OIM (section 3.5,
  `losses.oim`) plus the diversity term Q of eq. (9) on the receptive fields
  (`tfreid.losses.diversity`).

``num_parts=0`` is table 1's "Baseline": the frame's res5 grid average-pooled, the frames
pooled over time, the same FC 128 + L2 head.

Outputs (float32): ``embedding`` [B, E] (unit norm), ``features`` [B, K * D] (eq. 15),
``attention_spatial`` [B, N, K, h, w] (the receptive fields, what the diversity term reads
and TensorBoard draws), ``attention_temporal`` [B, K, N] (temporal weights per part, with
``temporal=attention``), and ``logits`` [B, num_classes] with ``classifier=true`` (an
identity classifier on the embedding for a softmax loss; the paper trains with OIM only).

Size at the paper's configuration (experiment ``diversity_attention``: K = 6, d = 256,
N = 6, D = 2048, embedding 128, no classifier): ``PAPER_CONFIG_PARAMS`` = 32,491,638
parameters, of which 53,120 are BatchNorm moving statistics:

  ResNet-50 without top, convolutions without bias   23,561,152
  spatial attention, eq. (1): W 2048 x 1536 + b 1536
    + w' 6 x 256 + b' 6                                3,148,806
  enhancement (S2) W 36 + b 6, (S4) FCN 2048 x 2048
    + 2048                                             4,196,394
  temporal attention, eq. (11): w 6 x 2048 + b 6          12,294
  embedding FC 12,288 x 128 + 128                      1,572,992

(``tests/test_diversity_attention_model.py`` recomputes it from this breakdown.)
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from tfreid.backbones import resnet2d, resnet3d, weights
from tfreid.config import ConfigError
from tfreid.layers.preprocessing import ClipNormalization
from tfreid.layers.spatial_attention import MultiSpatialAttention
from tfreid.layers.temporal_attention import (TEMPORAL_MODES, PartTemporalAttention,
                                              TemporalEnhancement)
from tfreid.models.base import ConfigKeysMixin

PAPER_CONFIG_PARAMS = 32_491_638


@dataclasses.dataclass
class DiversityAttentionConfig:
  """``model.diversity_attention``: the method's own section (section 3, 4.2)."""
  # K, the spatial attention models (paper: 6, table 2 tries 1, 2, 4, 6, 8); 0: table 1's
  # Baseline (average-pooled frames, no attention).
  num_parts: int = 6
  # d, the hidden width of each attention model (eq. 1; paper: 256).
  hidden_dim: int = 256
  # attention (eqs. 11-13) | average | max: how each part is pooled over the frames.
  temporal: str = "attention"
  # The enhancement E of eq. (4) (supplementary S1-S4); the paper never ablates it.
  enhancement: bool = True
  # sigma of (S2), in frames of the clip (library choice: 1).
  enhancement_sigma: float = 1.0
  # Factor on Phi of (S1) (1: the paper's unscaled inner product).
  enhancement_scale: float = 1.0
  # Width of the final FC layer (section 4.2: 128), L2-normalised.
  embedding_dim: int = 128
  # An identity classifier on the embedding (`logits`, for a softmax loss); the paper: none.
  classifier: bool = False
  # Stop unless trainer.init_checkpoint names the previous stage's run (the staged variants:
  # a frozen backbone must come from a trained run).
  requires_init_checkpoint: bool = False

  def validate(self) -> None:
    key = "model.diversity_attention"
    if self.num_parts < 0:
      raise ConfigError(f"{key}.num_parts must be >= 0 (0: the baseline without attention), "
                        f"got {self.num_parts}.")
    for name in ("hidden_dim", "embedding_dim"):
      if getattr(self, name) < 1:
        raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(self, name)}.")
    if self.temporal not in TEMPORAL_MODES:
      raise ConfigError(f"{key}.temporal={self.temporal!r} is not valid; expected one of "
                        f"{', '.join(map(repr, TEMPORAL_MODES))}.")
    if not self.enhancement_sigma > 0 or not self.enhancement_scale > 0:
      raise ConfigError(f"{key}.enhancement_sigma and enhancement_scale must be > 0, got "
                        f"{self.enhancement_sigma} and {self.enhancement_scale}.")


CONFIG_CLASS = DiversityAttentionConfig


@keras.saving.register_keras_serializable(package="tfreid")
class DiversityAttention(ConfigKeysMixin, keras.Model):
  """ResNet-50 per frame, K spatial attentions, enhancement, per-part temporal attention,
  FC + L2 (module docstring).

  ``model({"clips": uint8 [B, N, H, W, 3]}, training=...)`` returns the dict of the module
  docstring.

  Args:
    num_classes: training identities (used only with ``classifier``).
    num_frames: N, the frames of every clip (the enhancement's W is N x N).
    block_counts, base_width, last_stride: see :func:`tfreid.backbones.resnet2d.resnet2d`.
    num_parts, hidden_dim, temporal, enhancement, enhancement_sigma, enhancement_scale,
      embedding_dim, classifier: see :class:`DiversityAttentionConfig`.
    normalization: :class:`ClipNormalization` mode ("caffe" for Keras ResNet-50 weights).
  """

  CONFIG_KEYS = ("num_classes", "num_frames", "block_counts", "base_width", "last_stride",
                 "num_parts", "hidden_dim", "temporal", "enhancement", "enhancement_sigma",
                 "enhancement_scale", "embedding_dim", "classifier", "normalization")

  def __init__(self, num_classes: int, num_frames: int = 6, block_counts=(3, 4, 6, 3),
               base_width: int = 64, last_stride: int = 2, num_parts: int = 6,
               hidden_dim: int = 256, temporal: str = "attention", enhancement: bool = True,
               enhancement_sigma: float = 1.0, enhancement_scale: float = 1.0,
               embedding_dim: int = 128, classifier: bool = False,
               normalization: str = "caffe", **kwargs):
    kwargs.setdefault("name", "diversity_attention")
    super().__init__(**kwargs)
    if temporal not in TEMPORAL_MODES:
      raise ValueError(f"temporal={temporal!r}; expected one of {', '.join(TEMPORAL_MODES)}.")
    self.num_classes = num_classes
    self.num_frames = num_frames
    self.block_counts = tuple(block_counts)
    self.base_width = base_width
    self.last_stride = last_stride
    self.num_parts = num_parts
    self.hidden_dim = hidden_dim
    self.temporal = temporal
    self.enhancement = enhancement
    self.enhancement_sigma = enhancement_sigma
    self.enhancement_scale = enhancement_scale
    self.embedding_dim = embedding_dim
    self.classifier = classifier
    self.normalization = normalization
    channels = resnet3d.output_channels(base_width)
    parts = max(num_parts, 1)

    self.normalize = ClipNormalization(normalization, name="normalize")
    self.backbone = resnet2d.resnet2d(block_counts=self.block_counts, base_width=base_width,
                                      last_stride=last_stride, name="resnet2d")
    self.normalize.build((None, None, None, 3))
    if num_parts > 0:
      self.spatial_attention = MultiSpatialAttention(num_parts, hidden_dim,
                                                     name="spatial_attention")
      self.spatial_attention.build((None, None, channels))
      if enhancement:
        self.enhance = TemporalEnhancement(num_frames, enhancement_sigma, enhancement_scale,
                                           name="enhancement")
        self.enhance.build((None, num_frames, parts, channels))
    self.temporal_attention = PartTemporalAttention(temporal, name="temporal_attention")
    self.temporal_attention.build((None, num_frames, parts, channels))
    self.embed = keras.layers.Dense(embedding_dim, name="embed")
    self.embed.build((None, parts * channels))
    if classifier:
      self.identity_classifier = keras.layers.Dense(
          num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
          name="classifier")
      self.identity_classifier.build((None, embedding_dim))
    self.built = True

  def call(self, inputs, training=None):
    clips = inputs["clips"] if isinstance(inputs, dict) else inputs
    if (self.num_parts > 0 and self.enhancement and clips.shape[1] is not None
        and clips.shape[1] != self.num_frames):
      raise ValueError(f"{self.name} takes clips of {self.num_frames} frames (the N chunks "
                       f"of restricted random sampling; the enhancement's W is N x N), got "
                       f"{clips.shape[1]}.")
    maps = resnet3d.per_frame(
        lambda frames: self.backbone(self.normalize(frames), training=training)["res5"],
        clips)                                                     # [B, N, h, w, D]
    _, n, h, w, d = maps.shape
    outputs = {}
    if self.num_parts > 0:
      cells = ops.reshape(maps, (-1, n, h * w, d))                 # f_{n,l}
      attention, parts = self.spatial_attention(cells)             # eqs. 1-3
      outputs["attention_spatial"] = ops.reshape(attention, (-1, n, self.num_parts, h, w))
      if self.enhancement:
        parts, _ = self.enhance(parts)                             # eq. 4 (S1-S4)
    else:
      parts = ops.mean(ops.cast(maps, "float32"), axis=(2, 3))[:, :, None, :]  # [B, N, 1, D]
    pooled, temporal = self.temporal_attention(parts)              # eqs. 11-13
    if temporal is not None:
      outputs["attention_temporal"] = temporal
    features = ops.reshape(pooled, (-1, pooled.shape[1] * d))      # eq. 15
    projected = ops.cast(self.embed(ops.cast(features, self.compute_dtype)), "float32")
    embedding = l2_normalize(projected)
    outputs["embedding"] = embedding
    outputs["features"] = features
    if self.classifier:
      outputs["logits"] = ops.cast(
          self.identity_classifier(ops.cast(embedding, self.compute_dtype)), "float32")
    return outputs

  def attention_overlays(self, inputs, outputs):
    """What the model attends to, drawn on the clip's frames (`tfreid.visualize` hook:
    TensorBoard `attention/<name>`, `python -m tfreid.visualize`). Per clip:

    - ``attention_spatial``: the frames (top row), then one row per part k: the receptive
      field s_{n,k} of eq. (2) of every frame n as a heat map over it and, with temporal
      attention, part k's weight t_{n,k} of eq. (12) as a bar in the part's colour
      (`visualize.PART_COLORS`) under each frame, scaled to the part's largest weight in
      the clip (each part's weights sum to 1 over the frames);
    - ``attention_temporal``: the frames with the K temporal weights as K bars under each,
      scaled to the clip's largest weight.

    A hook rather than the default drawing: ``attention_temporal`` is [B, K, N] (a row per
    part), which the default reads as [B, N, K] whenever K = N (the paper's K = N = 6), and
    the default draws the spatial maps without the temporal weight of their part. The
    baseline (num_parts=0) has no attention: nothing is drawn.
    """
    from tfreid import visualize  # pylint: disable=import-outside-toplevel
    spatial = outputs.get("attention_spatial")
    if spatial is None:
      return {}
    temporal = outputs.get("attention_temporal")
    clips = inputs["clips"]
    colors = visualize.PART_COLORS
    spatial_pictures, temporal_pictures = [], []
    for b in range(int(clips.shape[0])):
      frames = clips[b]
      heads = ops.transpose(ops.cast(spatial[b], "float32"), (1, 0, 2, 3))  # [K, N, h, w]
      rows = [frames]
      for k in range(int(heads.shape[0])):
        row = visualize.heatmap_overlay(frames, heads[k])
        if temporal is not None:
          row = visualize.weight_bars(row, temporal[b, k], colors=colors[k % len(colors)][None])
        rows.append(row)
      spatial_pictures.append(visualize.clip_strip(rows))
      if temporal is not None:
        temporal_pictures.append(visualize.clip_strip(
            [visualize.weight_bars(frames, ops.transpose(temporal[b]))]))
    drawn = {"attention_spatial": ops.stack(spatial_pictures)}
    if temporal_pictures:
      drawn["attention_temporal"] = ops.stack(temporal_pictures)
    return drawn

  def summary_scalars(self, outputs, batch):
    """TensorBoard `metrics/*`: how peaked the receptive fields (the largest cell weight,
    1/L when uniform, 1 on one cell) and the temporal weights are, averaged."""
    del batch
    scalars = {}
    if "attention_spatial" in outputs:
      maps = outputs["attention_spatial"]
      scalars["spatial_attention_peak"] = ops.max(ops.reshape(
          maps, tuple(maps.shape[:3]) + (-1,)), axis=-1)
    if "attention_temporal" in outputs:
      scalars["temporal_attention_peak"] = ops.max(outputs["attention_temporal"], axis=-1)
    return scalars


def l2_normalize(x, epsilon: float = 1e-12):
  """x / max(||x||, epsilon) over the last axis (section 4.2's L2-normalised embedding)."""
  norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
  return x / ops.maximum(norm, epsilon)


def model_kwargs(config) -> dict:
  """:class:`DiversityAttention` arguments (but num_classes) from an ExperimentConfig."""
  section = dataclasses.asdict(config.model.diversity_attention)
  del section["requires_init_checkpoint"]  # a training check, not a model argument
  return {**resnet2d.resnet2d_kwargs(config.model.backbone),
          "num_frames": config.data.seq_len, **section}


def validate_config(config) -> None:
  """What the method needs of the shared sections (method contract)."""
  backbone = config.model.backbone
  if backbone.name != "resnet2d":
    raise ConfigError(f"model.name=diversity_attention needs model.backbone.name=resnet2d "
                      f"(a 2-D ResNet-50 per frame, section 3.2), got {backbone.name!r}.")
  if backbone.last_stride != 2:
    raise ConfigError("model.name=diversity_attention needs model.backbone.last_stride=2: "
                      "the paper's conv1..res5c gives an 8 x 4 grid for 256 x 128 frames "
                      "(section 3.2); last_stride=1 would give 16 x 8.")
  section = config.model.diversity_attention
  if section.num_parts > 0 and section.enhancement and config.data.test_seq_len not in (
      0, config.data.seq_len):
    raise ConfigError(
        f"data.test_seq_len={config.data.test_seq_len} differs from data.seq_len="
        f"{config.data.seq_len}, but the enhancement's W (supplementary eq. S2) is N x N "
        "for N = data.seq_len: set data.test_seq_len=0, or "
        "model.diversity_attention.enhancement=false.")


def build(config, num_classes: int) -> DiversityAttention:
  """The model of `config`, its backbone initialised per model.backbone.init."""
  validate_config(config)
  if (config.model.diversity_attention.requires_init_checkpoint
      and not config.trainer.init_checkpoint):
    # Checked when the model is built (training), not in validate_config: every variant's
    # config must validate on its own (e.g. to be listed and inspected).
    raise ConfigError(
        f"experiment {config.experiment or 'diversity_attention'} continues a previous "
        "training stage (section 4.2): pass its run with --override=trainer.init_checkpoint="
        "DIR (experiments/diversity_attention.py lists the chain), or train it from the "
        "backbone's own initialisation with "
        "--override=model.diversity_attention.requires_init_checkpoint=false.")
  backbone = config.model.backbone
  model = DiversityAttention(num_classes, **model_kwargs(config))
  weights.initialize_backbone(model.backbone, backbone.init, backbone.weights_path, video=False)
  return model
