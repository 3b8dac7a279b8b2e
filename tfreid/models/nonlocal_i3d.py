"""nonlocal_i3d: ResNet3D-50 with non-local blocks for video ReID (Liao et al.).

"Video-based Person Re-identification via 3D Convolutional Networks and Non-local Attention",
fig. 2 and 3: a clip [B, T, H, W, 3] goes through ResNet3D-50 with temporally separable
inflated convolutions (section 3.1) and 5 embedded-Gaussian non-local blocks (section 3.2;
2 in res3, 3 in res4, section 4.2), then global average pooling over T, H, W, the bottleneck
(FC, BN, LeakyReLU 0.1, dropout 0.5, section 4.2) and the identity classifier
(:class:`tfreid.models.heads.BottleneckHead`). Trained with label-smoothed cross-entropy on
``logits`` (eq. 9) plus the batch-hard triplet loss on ``embedding`` (eq. 7).

Library choices the paper does not state (see experiments/nonlocal_i3d.py for all of them):
the bottleneck's 512 outputs (``embedding_dim``), last_stride 1 (a 16 x 8 res5 map for
256 x 128 clips), the caffe-style normalisation of the Keras ImageNet weights.

Size at the ``nonlocal_i3d`` experiment's configuration (625 MARS training identities):
``PAPER_CONFIG_PARAMS`` = 36,071,473 parameters, of which 62,336 are BatchNorm moving
statistics (36,009,137 trainable):

  ResNet-50 without top, convolutions without bias   23,561,152
  temporal k_t x 1 x 1 convolutions (16 blocks)        3,772,416
  non-local blocks (2 x 527,616 + 3 x 2,103,808)       7,366,656
  head: FC 1,048,576 + BN 2,048 + classifier 320,625   1,371,249

(``tests/test_models_nonlocal_i3d.py`` recomputes it from this breakdown.)
"""

from __future__ import annotations

import dataclasses
import weakref

import keras
import numpy as np
import tensorflow as tf

from tfreid.backbones import resnet3d, weights
from tfreid.config import ConfigError
from tfreid.layers.non_local import NonLocalBlock
from tfreid.layers.preprocessing import ClipNormalization
from tfreid.models.base import ConfigKeysMixin, head_kwargs
from tfreid.models.heads import BottleneckHead

PAPER_CONFIG_PARAMS = 36_071_473

# model -> the functional sub-model giving its non-local blocks' inputs (`nonlocal_attention`).
_BLOCK_INPUTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclasses.dataclass
class NonLocalI3DConfig:
  """``model.nonlocal_i3d``: what a run of this method needs beyond the shared sections."""
  # The run fine-tunes a trained model (section 4.4.2: iLIDS-VID and PRID-2011 from the
  # MARS model) and refuses to start without trainer.init_checkpoint. Set false to train
  # without it, on purpose.
  requires_init_checkpoint: bool = False


CONFIG_CLASS = NonLocalI3DConfig


@keras.saving.register_keras_serializable(package="tfreid")
class NonLocalI3D(ConfigKeysMixin, keras.Model):
  """ResNet3D-50 + non-local blocks + bottleneck head.

  ``model({"clips": uint8 [B, T, H, W, 3]}, training=...)`` returns float32
  ``features`` [B, 2048] (pooled res5), ``embedding`` [B, embedding_dim] (the retrieval
  feature, see :class:`BottleneckHead`) and ``logits`` [B, num_classes].

  Frames are normalised inside the model (:class:`ClipNormalization`, in the convention of the
  Keras ResNet-50 ImageNet weights the backbone is inflated from).

  Args:
    num_classes: training identities.
    block_counts, base_width, last_stride, temporal_kernel, nonlocal_blocks, nonlocal_ratio,
      nonlocal_subsample, nonlocal_placement: see :func:`tfreid.backbones.resnet3d.resnet3d`.
    embedding_dim, leaky_relu_alpha, dropout: see :class:`BottleneckHead`.
    normalization: :class:`ClipNormalization` mode.
  """

  CONFIG_KEYS = ("num_classes", "block_counts", "base_width", "last_stride", "temporal_kernel",
                 "nonlocal_blocks", "nonlocal_ratio", "nonlocal_subsample", "embedding_dim",
                 "leaky_relu_alpha", "dropout", "normalization", "nonlocal_placement")

  def __init__(self, num_classes: int, block_counts=(3, 4, 6, 3), base_width: int = 64,
               last_stride: int = 1, temporal_kernel: int = 3, nonlocal_blocks=(0, 2, 3, 0),
               nonlocal_ratio: float = 0.5, nonlocal_subsample: bool = True,
               embedding_dim: int = 512, leaky_relu_alpha: float = 0.1, dropout: float = 0.5,
               normalization: str = "caffe", nonlocal_placement: str = "before", **kwargs):
    kwargs.setdefault("name", "nonlocal_i3d")
    super().__init__(**kwargs)
    self.num_classes = num_classes
    self.block_counts = tuple(block_counts)
    self.base_width = base_width
    self.last_stride = last_stride
    self.temporal_kernel = temporal_kernel
    self.nonlocal_blocks = tuple(nonlocal_blocks)
    self.nonlocal_ratio = nonlocal_ratio
    self.nonlocal_subsample = nonlocal_subsample
    self.nonlocal_placement = nonlocal_placement
    self.embedding_dim = embedding_dim
    self.leaky_relu_alpha = leaky_relu_alpha
    self.dropout = dropout
    self.normalization = normalization
    self.normalize = ClipNormalization(normalization, name="normalize")
    self.backbone = resnet3d.resnet3d(
        block_counts=self.block_counts, base_width=base_width, last_stride=last_stride,
        temporal_kernel=temporal_kernel, nonlocal_blocks=self.nonlocal_blocks,
        nonlocal_ratio=nonlocal_ratio, nonlocal_subsample=nonlocal_subsample,
        nonlocal_placement=nonlocal_placement, name="resnet3d")
    self.head = BottleneckHead(num_classes, embedding_dim, leaky_relu_alpha, dropout,
                               name="head")
    # Every variable exists after construction (count_params, weight loading, optimizer).
    self.normalize.build((None, None, None, None, 3))
    self.head.build((None, resnet3d.output_channels(base_width)))
    self.built = True

  def call(self, inputs, training=None):
    clips = inputs["clips"] if isinstance(inputs, dict) else inputs
    feature_map = self.backbone(self.normalize(clips), training=training)["res5"]
    return self.head(feature_map, training=training)

  def nonlocal_attention(self, clips) -> dict:
    """Each non-local block's eq. 5 weights for `clips` uint8 [B, T, H, W, 3], in inference
    mode: {block name: (weights float32 [B, N, M], the (T', h, w) grid of the N query
    positions, the grid of the M key positions)}, in the order the blocks run (see
    :meth:`NonLocalBlock.attention_weights`)."""
    blocks = [layer for layer in self.backbone.layers if isinstance(layer, NonLocalBlock)]
    if not blocks:
      return {}
    if self not in _BLOCK_INPUTS:
      # The backbone is functional: one sub-model gives every block's input in one pass.
      # Kept outside the model, which would otherwise track it as one of its layers.
      _BLOCK_INPUTS[self] = keras.Model(self.backbone.inputs,
                                        [block.input for block in blocks])
    features = _BLOCK_INPUTS[self](self.normalize(clips), training=False)
    features = features if isinstance(features, (list, tuple)) else [features]
    result = {}
    for block, x in zip(blocks, features):
      query_grid = tuple(int(d) for d in x.shape[1:4])
      result[block.name] = (block.attention_weights(x), query_grid,
                            block.key_grid(*query_grid))
    return result

  def attention_overlays(self, inputs, outputs):
    """Where the non-local blocks gather from (`tfreid.visualize` hook: TensorBoard
    ``attention/nonlocal``, ``python -m tfreid.visualize``). Per clip, top to bottom:

    * the frames;
    * one row per block, in the order they run: the attention each key position j
      receives, the mean over all query positions i of the eq. 5 weight
      f(x_i, x_j) / C(x), as a heat map over its frame;
    * for the last block, the eq. 5 weights of one query position, the centre cell of the
      middle frame (its cell boxed), over every frame: where that position looks for
      related content, what paper fig. 6 draws with arrows.

    Every row is scaled over the whole clip, so frames a block draws little from (an
    occluder, a bad crop) stay dark."""
    from tfreid import visualize  # pylint: disable=import-outside-toplevel
    del outputs
    clips = inputs["clips"][:2]
    attention = self.nonlocal_attention(clips)
    if not attention:
      return {}
    frames_per_clip = int(clips.shape[1])
    last_weights, (qt, qh, qw), last_keys = list(attention.values())[-1]
    query = ((qt // 2) * qh + qh // 2) * qw + qw // 2
    query_frame = (qt // 2) * frames_per_clip // qt
    query_box = np.array([[[(qh // 2) / qh, (qw // 2) / qw,
                            (qh // 2 + 1) / qh, (qw // 2 + 1) / qw]]], np.float32)
    pictures = []
    for b in range(int(clips.shape[0])):
      rows = [clips[b]]
      for weights, _, key_grid in attention.values():
        received = tf.reshape(tf.reduce_mean(weights[b], axis=0), key_grid)  # [T', h, w]
        rows.append(visualize.heatmap_overlay(clips[b], received, together=True))
      looked_at = visualize.heatmap_overlay(
          clips[b], tf.reshape(last_weights[b, query], last_keys), together=True)
      boxed = visualize.draw_boxes(looked_at[query_frame:query_frame + 1], query_box,
                                   colors=np.ones((1, 3), np.float32))
      rows.append(tf.concat([looked_at[:query_frame], boxed,
                             looked_at[query_frame + 1:]], axis=0))
      pictures.append(visualize.clip_strip(rows))
    return {"nonlocal": tf.stack(pictures)}


def model_kwargs(config) -> dict:
  """:class:`NonLocalI3D` arguments (but num_classes) from an ExperimentConfig."""
  return {**resnet3d.resnet3d_kwargs(config.model.backbone), **head_kwargs(config.model.head)}


def validate_config(config) -> None:
  """The backbone this method takes and, for the fine-tuning variants, the checkpoint they
  fine-tune (method contract, `tfreid.models.contract`)."""
  backbone = config.model.backbone
  if backbone.name != "resnet3d":
    raise ConfigError(f"model.name=nonlocal_i3d needs model.backbone.name=resnet3d, got "
                      f"{backbone.name!r} (the 2-D baseline is model.name=temporal_pooling).")
  section = config.model.section("nonlocal_i3d")
  if section.requires_init_checkpoint and not config.trainer.init_checkpoint:
    name = config.experiment or "this experiment"
    raise ConfigError(
        f"{name} fine-tunes a model trained on MARS (paper section 4.4.2) but "
        "trainer.init_checkpoint is not set, so it would train from "
        f"model.backbone.init={backbone.init} instead. Pass the MARS run: "
        "--override=trainer.init_checkpoint=runs/nl (its final checkpoint) or a checkpoint "
        "path such as runs/nl/ckpt-N; every variable but the classifier is restored. To "
        "train without it on purpose: --override=model.nonlocal_i3d.requires_init_checkpoint="
        "false (with --override=model.backbone.init=imagenet for ImageNet-inflated weights).")


def build(config, num_classes: int) -> NonLocalI3D:
  """Builds the model of `config` and initialises its backbone per model.backbone.init."""
  validate_config(config)
  backbone = config.model.backbone
  model = NonLocalI3D(num_classes, **model_kwargs(config))
  weights.initialize_backbone(model.backbone, backbone.init, backbone.weights_path, video=True)
  return model
