"""temporal_pooling: 2-D ResNet-50 per frame + temporal average pooling (the baseline).

nonlocal_i3d table 2 "Baseline" and fig. 1(A): a 2-D ResNet-50 (ImageNet init) extracts a
feature map of every frame, the maps are averaged over time and space, and the same
bottleneck head as nonlocal_i3d (:class:`tfreid.models.heads.BottleneckHead`) gives the
embedding and the identity logits. Same losses and recipe as nonlocal_i3d (section 4.2).

The paper's baseline is trained on image ReID (section 4.3.1); this model trains on whatever
clips the pipeline gives it: T-frame clips (experiment ``temporal_pooling``, where the losses
see features averaged over the clip) or single frames (``temporal_pooling:image``,
data.seq_len=1, the paper's description), and is tested on T-frame clips either way.

Averaging over T, H and W at once equals averaging per-frame pooled features over time.
Initialised from the same 2-D weights, this model and NonLocalI3D (whose temporal convolutions
and non-local blocks start as the identity) compute the same features at the start.
"""

from __future__ import annotations

import keras

from tfreid.backbones import resnet2d, resnet3d, weights
from tfreid.config import ConfigError
from tfreid.layers.preprocessing import ClipNormalization
from tfreid.models.base import ConfigKeysMixin, head_kwargs
from tfreid.models.heads import BottleneckHead


@keras.saving.register_keras_serializable(package="tfreid")
class TemporalPooling(ConfigKeysMixin, keras.Model):
  """Per-frame 2-D ResNet, temporal average pooling, bottleneck head.

  ``model({"clips": uint8 [B, T, H, W, 3]}, training=...)`` folds time into the batch
  ([B*T, H, W, 3]), runs the 2-D backbone, unfolds the res5 maps to [B, T, h, w, C] and
  returns float32 ``features`` [B, C], ``embedding`` [B, embedding_dim] and ``logits``
  [B, num_classes].

  Args:
    num_classes: training identities.
    block_counts, base_width, last_stride: see :func:`tfreid.backbones.resnet2d.resnet2d`.
    embedding_dim, leaky_relu_alpha, dropout: see :class:`BottleneckHead`.
    normalization: :class:`ClipNormalization` mode.
  """

  CONFIG_KEYS = ("num_classes", "block_counts", "base_width", "last_stride", "embedding_dim",
                 "leaky_relu_alpha", "dropout", "normalization")

  def __init__(self, num_classes: int, block_counts=(3, 4, 6, 3), base_width: int = 64,
               last_stride: int = 1, embedding_dim: int = 512, leaky_relu_alpha: float = 0.1,
               dropout: float = 0.5, normalization: str = "caffe", **kwargs):
    kwargs.setdefault("name", "temporal_pooling")
    super().__init__(**kwargs)
    self.num_classes = num_classes
    self.block_counts = tuple(block_counts)
    self.base_width = base_width
    self.last_stride = last_stride
    self.embedding_dim = embedding_dim
    self.leaky_relu_alpha = leaky_relu_alpha
    self.dropout = dropout
    self.normalization = normalization
    self.normalize = ClipNormalization(normalization, name="normalize")
    self.backbone = resnet2d.resnet2d(block_counts=self.block_counts, base_width=base_width,
                                      last_stride=last_stride, name="resnet2d")
    self.head = BottleneckHead(num_classes, embedding_dim, leaky_relu_alpha, dropout,
                               name="head")
    self.normalize.build((None, None, None, 3))
    self.head.build((None, resnet3d.output_channels(base_width)))
    self.built = True

  def call(self, inputs, training=None):
    clips = inputs["clips"] if isinstance(inputs, dict) else inputs
    maps = resnet3d.per_frame(
        lambda frames: self.backbone(self.normalize(frames), training=training)["res5"], clips)
    return self.head(maps, training=training)


def model_kwargs(config) -> dict:
  """:class:`TemporalPooling` arguments (but num_classes) from an ExperimentConfig."""
  return {**resnet2d.resnet2d_kwargs(config.model.backbone), **head_kwargs(config.model.head)}


def validate_config(config) -> None:
  """The backbone this method takes (method contract, `tfreid.models.contract`)."""
  backbone = config.model.backbone
  if backbone.name != "resnet2d":
    raise ConfigError(f"model.name=temporal_pooling needs model.backbone.name=resnet2d, got "
                      f"{backbone.name!r} (the 3-D model is model.name=nonlocal_i3d).")


def build(config, num_classes: int) -> TemporalPooling:
  """Builds the baseline of `config`; the backbone is initialised per model.backbone.init.

  Reads model.backbone block_counts, base_width, last_stride, init and weights_path, and
  model.head; temporal_kernel and nonlocal_blocks concern the 3-D backbone only (config
  validation requires no non-local blocks with resnet2d).
  """
  validate_config(config)
  backbone = config.model.backbone
  model = TemporalPooling(num_classes, **model_kwargs(config))
  weights.initialize_backbone(model.backbone, backbone.init, backbone.weights_path, video=False)
  return model
