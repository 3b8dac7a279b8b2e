"""siamese_convgru: deep Siamese attention networks (Wu, Wang, Gao, Li, "Where-and-When to
Look: Deep Siamese Attention Networks for Video-based Person Re-identification").

One tower, shared by both sequences of a pair (fig. 1): every frame goes through the CNN
(GoogLeNet's inception_5b, a 7 x 7 x 1024 feature cube X_t at 224 x 224, section III-A;
VGG-16's last convolution for the ``_V`` rows), spatial soft attention conditioned on the
recurrent state picks where to look (eqs. 3-4), three stacked ConvGRU layers of 128, 256, 256
channels with 2 x 2 max-pooling between them carry it over time (eq. 5, section V-B), their
initial state comes from the mean feature (eq. 7) and temporal attention pooling picks when
(eq. 6), giving h_bar (2 x 2 x 256 = 1024). The similarity of two sequences is

    s(a, b) = sigma(v^T (h_bar^a ⊙ h_bar^b) + c)                         eq. 8

(diag(h^a h^b^T) = h^a ⊙ h^b; v and c are learned), trained with the pair cross-entropy plus
the attention penalty of eq. 9 (losses ``balanced_pair_bce`` and ``attention_penalty``).
Nothing in a tower depends on the other sequence until eq. 8, so the test cost is one pass
per tracklet plus one Q x G bilinear product (``pairwise_distance``).

Outputs of ``model({"clips": uint8 [B, T, H, W, 3]})`` (float32):
  ``embedding``          [B, F]      h_bar (before dropout), the tracklet feature.
  ``pair_logits``        [B, B]      v^T (h^a ⊙ h^b) + c for every pair of the batch (with
                                     dropout on h_bar in training), what the pair loss reads.
  ``attention_spatial``  [B, T, K1, K2]  m_t of eq. 3 for every frame.
  ``attention_temporal`` [B, T]      alpha of eq. 6 (absent with max pooling).
Tracklets: clip embeddings are averaged (the default merge); because the logit is bilinear,
the logit of two averaged embeddings is the mean of the clip-pair logits. The distance is
1 - s = sigma(-logit) (``pairwise_distance``; ``distance_inputs = ("embedding",)``).

Size at the paper's configuration (experiment ``siamese_convgru``; GoogLeNet, 224 x 224,
kernels 3/5/5, channels 128/256/256, no gate biases): ``PAPER_CONFIG_PARAMS`` = 27,866,290,
all trainable:

  GoogLeNet to inception_5b (convolutions with bias)               5,973,552
  ConvGRU 1: 3 * 3*3 * (1024*128 + 128^2)      (section III-E)     3,981,312
  ConvGRU 2: 3 * 5*5 * (128*256 + 256^2)                           7,372,800
  ConvGRU 3: 3 * 5*5 * (256*256 + 256^2)                           9,830,400
  f_init (eq. 7): 1024 * (128 + 256 + 256) + (128 + 256 + 256)       656,000
  attention W_i (eq. 3): (2*2*256) * 7*7                              50,176
  temporal scores (eq. 6): 2*2*256 + 1                                 1,025
  similarity v, c (eq. 8): 2*2*256 + 1                                 1,025

(``tests/test_siamese_convgru_model.py`` recomputes it from this breakdown and checks the
built model; :func:`parameter_breakdown` gives the same parts for any configuration.)
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from tfreid.backbones import googlenet, vgg16
from tfreid.config import ConfigError
from tfreid.layers.attentive_conv_gru import (SPATIAL_ATTENTION_MODES, TEMPORAL_POOLING_MODES,
                                              AttentiveConvGRUStack, TemporalAttentionPooling,
                                              pooled_size)
from tfreid.layers.conv_gru import conv_gru_parameter_count
from tfreid.layers.preprocessing import ClipNormalization

PAPER_CONFIG_PARAMS = 27_866_290

BACKBONES = ("googlenet", "vgg16")
FEATURES = ("conv", "fc")


@dataclasses.dataclass
class SiameseConvGRUConfig:
  """model.siamese_convgru: the recurrent part and the similarity (the CNN is
  model.backbone: name googlenet | vgg16, init none | imagenet, weights_path)."""
  # conv: the last convolutional feature cube (K x K x D); fc: the FC-GRU baselines of
  # table III (GoogLeNet pool5 / VGG-16 fc7 as a 1 x 1 map, every kernel 1 x 1).
  feature: str = "conv"
  # Channel multiplier of the CNN (1.0: the real network; smaller for synthetic runs).
  backbone_width: float = 1.0
  # C_l of the ConvGRU layers (section V-B: 128, 256, 256).
  channels: list[int] = dataclasses.field(default_factory=lambda: [128, 256, 256])
  # Kernel size of each layer's input-to-hidden and hidden-to-hidden convolutions (table II
  # "Ours(5x5, 5x5)": 3 x 3 into layer 1, 5 x 5 for layers 2 and 3).
  kernel_sizes: list[int] = dataclasses.field(default_factory=lambda: [3, 5, 5])
  # 2 x 2 max-pooling of stride 2 between layers (section V-B).
  pool: bool = True
  # learned (eq. 3) | uniform (m = 1/K^2: table III's attention-free row)
  spatial_attention: str = "learned"
  # attention (eq. 6) | mean | max (table IV)
  temporal_pooling: str = "attention"
  # Drop rate on hidden activations passed upward and on h_bar (section V-B: 0.7).
  dropout: float = 0.7
  # Gate biases (eq. 5 has none).
  gru_bias: bool = False
  # r > 0: ConvGRU kernels drawn from U[-r, r] (section V-B: U[-1, 1]); 0: Glorot-uniform
  # (library option; see SiameseConvGRU for why it is not the default).
  gru_init_range: float = 1.0
  # Initial value of every entry of v (eq. 8); library choice, see SiameseConvGRU.
  similarity_init: float = 0.03125

  def validate(self) -> None:
    key = "model.siamese_convgru"
    if self.feature not in FEATURES:
      raise ConfigError(f"{key}.feature={self.feature!r}; expected one of {FEATURES}.")
    if self.spatial_attention not in SPATIAL_ATTENTION_MODES:
      raise ConfigError(f"{key}.spatial_attention={self.spatial_attention!r}; expected one "
                        f"of {SPATIAL_ATTENTION_MODES}.")
    if self.temporal_pooling not in TEMPORAL_POOLING_MODES:
      raise ConfigError(f"{key}.temporal_pooling={self.temporal_pooling!r}; expected one of "
                        f"{TEMPORAL_POOLING_MODES}.")
    if not self.channels or min(self.channels) < 1:
      raise ConfigError(f"{key}.channels must list positive channel counts, got "
                        f"{self.channels}.")
    if len(self.kernel_sizes) != len(self.channels) or min(self.kernel_sizes) < 1:
      raise ConfigError(f"{key}.kernel_sizes needs one positive size per layer of "
                        f"{key}.channels ({len(self.channels)}), got {self.kernel_sizes}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f"{key}.dropout must be in [0, 1), got {self.dropout}.")
    if self.backbone_width <= 0 or self.gru_init_range < 0:
      raise ConfigError(f"{key}.backbone_width must be > 0 and gru_init_range >= 0.")


CONFIG_CLASS = SiameseConvGRUConfig


def similarity_logits(a, b, v, c):
  """Eq. 8 before the sigmoid, for every pair: [A, F], [B, F] -> [A, B] with entry (i, j)
  v^T (a_i ⊙ b_j) + c, computed as one product (a ⊙ v) b^T."""
  a = tf.cast(a, tf.float32)
  b = tf.cast(b, tf.float32)
  return tf.matmul(a * tf.cast(v, tf.float32)[None, :], b, transpose_b=True) + tf.cast(
      c, tf.float32)


@keras.saving.register_keras_serializable(package="tfreid")
class SiameseConvGRU(keras.Model):
  """The tower and the similarity of siamese_convgru (module docstring).

  Args:
    backbone: googlenet | vgg16.
    feature: conv | fc (see :class:`SiameseConvGRUConfig`).
    backbone_width: channel multiplier of the CNN.
    channels, kernel_sizes, pool, spatial_attention, dropout: see
      :class:`tfreid.layers.attentive_conv_gru.AttentiveConvGRUStack`.
    temporal_pooling: see :class:`TemporalAttentionPooling`.
    gru_bias, gru_init_range: see :class:`tfreid.layers.conv_gru.ConvGRUCell`. The kernels
      start from the paper's U[-1, 1] (section V-B); ``gru_init_range=0`` gives
      Glorot-uniform (a library option, used by ``siamese_convgru:synthetic``, where
      U[-1, 1] saturates the gates of the narrow layers and h_bar loses the identity
      information of the CNN features; experiments/siamese_convgru.py). Eq. 3's W_i starts at
      0 (uniform attention, where eq. 9's penalty has no gradient; with a random W_i the
      penalty drove h_bar to 0, the saddle of eq. 8's bilinear logit, and the pair loss stayed
      at log 2: ``tests/test_siamese_convgru_learning.py``).
    similarity_init: initial entries of v. Library choice: the paper does not say how v
      and c start. v = 1/32 (1/sqrt(1024)) makes the initial logit a scaled inner product
      of the two features, of order 1 rather than of order F, so the sigmoid starts
      unsaturated; c starts at 0.
    height, width: frame size the model is built for (the cube's K1 x K2 is fixed by it).
  """

  distance_inputs = ("embedding",)

  def __init__(self, backbone: str = "googlenet", feature: str = "conv",
               backbone_width: float = 1.0, channels=(128, 256, 256), kernel_sizes=(3, 5, 5),
               pool: bool = True, spatial_attention: str = "learned",
               temporal_pooling: str = "attention", dropout: float = 0.7,
               gru_bias: bool = False, gru_init_range: float = 1.0,
               similarity_init: float = 0.03125, height: int = 224, width: int = 224,
               **kwargs):
    kwargs.setdefault("name", "siamese_convgru")
    super().__init__(**kwargs)
    if backbone not in BACKBONES:
      raise ValueError(f"siamese_convgru backbone={backbone!r}; expected one of {BACKBONES}.")
    if feature not in FEATURES:
      raise ValueError(f"siamese_convgru feature={feature!r}; expected one of {FEATURES}.")
    self.backbone_name = backbone
    self.feature = feature
    self.backbone_width = backbone_width
    self.channels = tuple(channels)
    # The FC-GRU rows use 1 x 1 kernels throughout (section V-C).
    self.kernel_sizes = (1,) * len(self.channels) if feature == "fc" else tuple(kernel_sizes)
    self.pool = pool
    self.spatial_attention = spatial_attention
    self.temporal_pooling = temporal_pooling
    self.dropout = dropout
    self.gru_bias = gru_bias
    self.gru_init_range = gru_init_range
    self.similarity_init = similarity_init
    self.height, self.width = height, width
    self.normalize = ClipNormalization("caffe", name="normalize")
    if backbone == "googlenet":
      self.endpoint = "pool5" if feature == "fc" else "inception_5b"
      self.cnn = googlenet.googlenet(backbone_width, self.endpoint, name="googlenet")
      depth = googlenet.output_channels(backbone_width)
      stride = 32
    else:
      self.endpoint = "fc2" if feature == "fc" else "block5_pool"
      self.cnn = vgg16.vgg16(backbone_width, self.endpoint, name="vgg16")
      depth = vgg16.output_channels(backbone_width, self.endpoint)
      stride = 32
    if feature == "fc":
      self.grid = (1, 1)
    else:
      self.grid = (-(-height // stride), -(-width // stride))
    self.depth = depth
    self.stack = AttentiveConvGRUStack(self.channels, self.kernel_sizes, pool=pool,
                                       spatial_attention=spatial_attention, dropout=dropout,
                                       use_bias=gru_bias, init_range=gru_init_range,
                                       name="conv_gru_stack")
    self.temporal = TemporalAttentionPooling(temporal_pooling, name="temporal_pooling")
    self.feature_dropout = keras.layers.Dropout(dropout, name="feature_dropout")
    self.normalize.build((None, None, None, 3))
    self.stack.build((None, None) + self.grid + (depth,))
    top = self.stack.grids[-1]
    self.temporal.build((None, None) + top + (self.channels[-1],))
    self.embedding_dim = top[0] * top[1] * self.channels[-1]
    # Eq. 8's v and c.
    self.similarity_v = self.add_weight(
        shape=(self.embedding_dim,), initializer=keras.initializers.Constant(similarity_init),
        name="similarity_v")
    self.similarity_c = self.add_weight(shape=(), initializer="zeros", name="similarity_c")
    self.built = True

  def feature_cubes(self, clips, training=None):
    """CNN features of every frame: [B, T, K1, K2, D] (fc: [B, T, 1, 1, D])."""
    shape = tf.shape(clips)
    frames = tf.reshape(clips, tf.concat([[-1], shape[2:]], 0))
    maps = self.cnn(self.normalize(frames), training=training)[self.endpoint]
    if self.feature == "fc":
      maps = maps[:, None, None, :]
    if tuple(maps.shape[1:3]) != self.grid:
      raise ValueError(f"siamese_convgru was built for {self.height}x{self.width} frames "
                       f"(a {self.grid} feature grid) but got frames giving "
                       f"{tuple(maps.shape[1:3])}; set data.height and data.width.")
    return tf.reshape(maps, tf.concat([shape[:2], tf.shape(maps)[1:]], 0))

  def frame_states(self, inputs, training=None):
    """The top ConvGRU layer's hidden state of every frame, flattened: [B, T, D] float32,
    D = embedding_dim (the h_t that eq. 10's Fisher vectors pool; tfreid.fisher_vector).
    Not a model output, so evaluation and export are unchanged."""
    states = self._recurrent(inputs, training)["states"]
    shape = tf.shape(states)
    return tf.cast(tf.reshape(states, [shape[0], shape[1], self.embedding_dim]), tf.float32)

  def _recurrent(self, inputs, training):
    """The ConvGRU stack's outputs (``states``, ``attention``) on the clips' feature cubes."""
    clips = inputs["clips"] if isinstance(inputs, dict) else inputs
    if clips.shape.rank != 5:
      raise ValueError(f"siamese_convgru expects clips [B, T, H, W, 3], got {clips.shape}.")
    return self.stack(self.feature_cubes(clips, training=training), training=training)

  def call(self, inputs, training=None):
    recurrent = self._recurrent(inputs, training)
    h_bar, alpha = self.temporal(recurrent["states"])
    dropped = self.feature_dropout(h_bar, training=training)
    outputs = {
        "embedding": tf.cast(h_bar, tf.float32),
        "pair_logits": similarity_logits(dropped, dropped, self.similarity_v,
                                         self.similarity_c),
        "attention_spatial": tf.cast(recurrent["attention"], tf.float32),
    }
    if alpha is not None:
      outputs["attention_temporal"] = tf.cast(alpha, tf.float32)
    return outputs

  def attention_overlays(self, inputs, outputs):
    """Where and when the model looked, drawn on the clip's frames (`tfreid.visualize`
    hook: TensorBoard `attention/where_and_when`, `python -m tfreid.visualize`). Per clip,
    one picture: the frames (top row), then the spatial attention m_t of eq. 3 of every
    frame as a heat map over it (each map scaled to its own minimum and maximum: a nearly
    uniform map still shows where it is highest), with the temporal weight alpha_t of eq. 6
    as a bar under the frame (scaled to the clip's largest weight; no bar with max or mean
    pooling, where no frame is weighted). One picture rather than the default two: the
    paper's point is the pair, which frame matters and where in it.
    """
    from tfreid import visualize  # pylint: disable=import-outside-toplevel
    spatial = outputs.get("attention_spatial")
    if spatial is None:
      return {}
    temporal = outputs.get("attention_temporal")
    clips = inputs["clips"]
    pictures = []
    for b in range(int(clips.shape[0])):
      frames = clips[b]
      maps = visualize.heatmap_overlay(frames, tf.cast(spatial[b], tf.float32))
      if temporal is not None:
        maps = visualize.weight_bars(maps, tf.cast(temporal[b], tf.float32))
      pictures.append(visualize.clip_strip([frames, maps]))
    return {"where_and_when": tf.stack(pictures)}

  def summary_scalars(self, outputs, batch):
    """Scalars logged while training (`metrics/<name>`):

    - ``spatial_attention_peak``: the largest m_{t,i} of a frame (eq. 3), averaged; 1/K^2
      is uniform attention, 1 a single location;
    - ``temporal_attention_peak``: the largest alpha_t of a clip (eq. 6), averaged (with
      attention pooling);
    - ``embedding_spread``: the standard deviation of h_bar over the batch, averaged over
      its entries: how much the sequences' features differ. Near 0 the pair logits of eq. 8
      are all alike and the pair loss stays at log 2 (the collapse the zero-initialised W_i
      initialisation avoids, see the class docstring).
    """
    del batch
    spatial = tf.cast(outputs["attention_spatial"], tf.float32)
    scalars = {
        "spatial_attention_peak": tf.reduce_mean(tf.reduce_max(spatial, axis=[2, 3])),
        "embedding_spread": tf.reduce_mean(
            tf.math.reduce_std(tf.cast(outputs["embedding"], tf.float32), axis=0)),
    }
    if "attention_temporal" in outputs:
      scalars["temporal_attention_peak"] = tf.reduce_mean(
          tf.reduce_max(tf.cast(outputs["attention_temporal"], tf.float32), axis=1))
    return scalars

  # ------------------------------------------------------------------ method contract

  def similarity(self, a, b):
    """Eq. 8: s = sigma(v^T (a ⊙ b) + c) for every pair of rows, [A, F] x [B, F] -> [A, B]."""
    return tf.sigmoid(similarity_logits(a, b, self.similarity_v, self.similarity_c))

  def pairwise_distance(self, query, gallery):
    """1 - s(q, g) = sigma(-logit), [Q, G] (symmetric: d(q, g) = d(g, q))."""
    logits = similarity_logits(query["embedding"], gallery["embedding"], self.similarity_v,
                               self.similarity_c)
    return tf.sigmoid(-logits)

  def get_config(self):
    config = super().get_config()
    config.update({
        "backbone": self.backbone_name, "feature": self.feature,
        "backbone_width": self.backbone_width, "channels": list(self.channels),
        "kernel_sizes": list(self.kernel_sizes), "pool": self.pool,
        "spatial_attention": self.spatial_attention,
        "temporal_pooling": self.temporal_pooling, "dropout": self.dropout,
        "gru_bias": self.gru_bias, "gru_init_range": self.gru_init_range,
        "similarity_init": self.similarity_init, "height": self.height, "width": self.width})
    return config


def parameter_breakdown(backbone: str = "googlenet", feature: str = "conv",
                        backbone_width: float = 1.0, channels=(128, 256, 256),
                        kernel_sizes=(3, 5, 5), pool: bool = True, height: int = 224,
                        width: int = 224, spatial_attention: str = "learned",
                        temporal_pooling: str = "attention", gru_bias: bool = False) -> dict:
  """The model's parameters part by part, from the formulas (no model is built):

    CNN            GoogLeNet 5,973,552 (to inception_5b) / VGG-16 14,714,688 (block5_pool)
    ConvGRU l      3 k_l^2 (C_{l-1} C_l + C_l^2) (section III-E), C_0 = D
    f_init l       D C_l + C_l (eq. 7)
    attention      k_L1 k_L2 C_L K1 K2 (eq. 3's W_i)
    temporal       k_L1 k_L2 C_L + 1 (eq. 6's scores)
    similarity     F + 1 (eq. 8's v and c), F = k_L1 k_L2 C_L
  """
  if backbone == "googlenet":
    cnn = googlenet.googlenet(backbone_width, "pool5" if feature == "fc" else "inception_5b")
    depth = googlenet.output_channels(backbone_width)
  else:
    cnn = vgg16.vgg16(backbone_width, "fc2" if feature == "fc" else "block5_pool")
    depth = vgg16.output_channels(backbone_width, "fc2" if feature == "fc" else "block5_pool")
  parts = {"cnn": int(cnn.count_params())}
  grid = (1, 1) if feature == "fc" else (-(-height // 32), -(-width // 32))
  kernels = (1,) * len(channels) if feature == "fc" else tuple(kernel_sizes)
  size, c_in = grid, depth
  for i, (c, k) in enumerate(zip(channels, kernels)):
    if i > 0:
      size = (pooled_size(size[0], pool), pooled_size(size[1], pool))
    parts[f"conv_gru_{i + 1}"] = conv_gru_parameter_count(k, c_in, c, use_bias=gru_bias)
    parts[f"init_state_{i + 1}"] = depth * c + c
    c_in = c
  features = size[0] * size[1] * channels[-1]
  parts["attention"] = features * grid[0] * grid[1] if spatial_attention == "learned" else 0
  parts["temporal"] = features + 1 if temporal_pooling == "attention" else 0
  parts["similarity"] = features + 1
  return parts


def model_kwargs(config) -> dict:
  """:class:`SiameseConvGRU` arguments from an ExperimentConfig."""
  section = config.model.siamese_convgru
  return {"backbone": config.model.backbone.name, "feature": section.feature,
          "backbone_width": section.backbone_width, "channels": tuple(section.channels),
          "kernel_sizes": tuple(section.kernel_sizes), "pool": section.pool,
          "spatial_attention": section.spatial_attention,
          "temporal_pooling": section.temporal_pooling, "dropout": section.dropout,
          "gru_bias": section.gru_bias, "gru_init_range": section.gru_init_range,
          "similarity_init": section.similarity_init, "height": config.data.height,
          "width": config.data.width}


def validate_config(config) -> None:
  """The backbones and initialisations this method takes (method contract)."""
  backbone = config.model.backbone
  if backbone.name not in BACKBONES:
    raise ConfigError(f"model.name=siamese_convgru needs model.backbone.name in {BACKBONES}, "
                      f"got {backbone.name!r}.")
  if backbone.init not in ("none", "imagenet"):
    raise ConfigError(f"model.backbone.init={backbone.init!r}: siamese_convgru starts from "
                      "ImageNet weights (init=imagenet) or from scratch (init=none).")
  if backbone.name == "googlenet" and backbone.init == "imagenet" and not backbone.weights_path:
    raise ConfigError("GoogLeNet ImageNet weights are not in keras.applications: set "
                      "model.backbone.weights_path to a .npz or caffe-tensorflow .npy file "
                      "(format: tfreid/backbones/googlenet.py), or model.backbone.init=none.")
  section = config.model.siamese_convgru
  if (backbone.name == "vgg16" and section.feature == "fc"
      and (config.data.height, config.data.width) != (224, 224)):
    raise ConfigError("VGG-16 fc7 features (model.siamese_convgru.feature=fc) need "
                      "224x224 frames: set data.height=224 and data.width=224.")


def initialize_backbone(model: SiameseConvGRU, init: str, weights_path: str = "") -> str:
  """Loads ImageNet weights into the CNN (model.backbone.init=imagenet): GoogLeNet from
  `weights_path`; VGG-16 from `weights_path` or keras.applications."""
  if init == "none":
    return "CNN initialised from scratch"
  if model.backbone_name == "googlenet":
    loaded = googlenet.load_googlenet_weights(model.cnn, weights_path)
    return f"GoogLeNet loaded from {weights_path} ({len(loaded)} layers)"
  source = weights_path or vgg16.imagenet_vgg16(include_top=model.feature == "fc")
  loaded = vgg16.load_vgg16_weights(model.cnn, source)
  return f"VGG-16 loaded from {weights_path or 'keras.applications'} ({len(loaded)} layers)"


def build(config, num_classes: int) -> SiameseConvGRU:
  """Builds the model of `config` (num_classes is unused: the model has no classifier)."""
  del num_classes
  validate_config(config)
  model = SiameseConvGRU(**model_kwargs(config))
  initialize_backbone(model, config.model.backbone.init, config.model.backbone.weights_path)
  return model


__all__ = ["SiameseConvGRU", "SiameseConvGRUConfig", "build", "parameter_breakdown",
           "similarity_logits"]
