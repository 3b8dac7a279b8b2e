"""Typed experiment configuration.

An experiment is an :class:`ExperimentConfig` returned by ``get_config(variant)`` of a
module in ``experiments/``. Overlays apply in order: the experiment's ``get_config``, each
YAML ``--config_file``, each ``--override key.path=value`` (values parsed with
``yaml.safe_load``). Unknown keys and wrong types are errors naming the key, the valid keys
and the nearest one. The final config is written as YAML beside the checkpoints; passing it
back with ``--config_file`` reproduces the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import os
import re
import pkgutil
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
  """A configuration value, key or combination is invalid."""


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class AugmentationConfig:
  """Clip-consistent augmentation: one random draw per clip, applied to every frame."""
  # Random crop of a `height x width` window from frames enlarged by this fraction
  # (nonlocal_i3d section 4.2: 1/8). 0 disables.
  crop_enlarge: float = 0.125
  flip: bool = True
  # Probability of random erasing of one rectangle per clip (a3d). 0 disables.
  random_erasing: float = 0.0
  # Maximum random translation as a fraction of height/width (siamese_convgru: 0.05).
  translate: float = 0.0
  # Colour jitter strength (brightness/contrast/saturation), 0 disables.
  color_jitter: float = 0.0


@dataclasses.dataclass
class DataConfig:
  """Where the converted dataset is and how clips are sampled from it."""
  # Directory written by `python -m data_pipelines.convert` (holds manifest.json).
  data_dir: str = ""
  # Split index for the 10-split datasets (iLIDS-VID, PRID-2011); 0 otherwise.
  split: int = 0
  height: int = 256
  width: int = 128
  # Frames per clip (T).
  seq_len: int = 8
  # Frames per test clip (evaluation, embed_tracklet); 0: seq_len (siamese_convgru tests on
  # 128-frame clips while training on 16).
  test_seq_len: int = 0
  # consecutive | restricted_random | random | evenly
  train_sampler: str = "consecutive"
  # Frame step inside a consecutive clip.
  sample_stride: int = 1
  # Which K tracklets of an identity a PK batch takes: random | cross_camera (one per
  # camera as far as the identity has cameras; siamese_convgru's cross-camera pairs).
  tracklet_sampler: str = "random"
  # dense (every non-overlapping clip of a tracklet) | chunk_first (first frame of each of
  # seq_len chunks, diversity_attention test mode)
  test_sampler: str = "dense"
  # Frame step inside a dense test clip (evaluation and the exported embed_tracklet): 1 cuts
  # consecutive frames; s > 1 cuts clips of frames s apart, as `consecutive` training clips
  # with sample_stride=s are (tfreid/data/samplers.py). Set it with sample_stride so that
  # the network is tested on the time scale it was trained on.
  test_sample_stride: int = 1
  # PK batches: P identities x K tracklets per global batch.
  num_identities: int = 32
  num_instances: int = 4
  # Clips per batch when extracting test features.
  test_batch_size: int = 32
  # The input streams (optical flow, keypoints) are not set here: the pipeline delivers
  # exactly the streams the model declares (`tfreid.models.input_streams`).
  # Skip (and count) corrupt records instead of failing.
  skip_corrupt: bool = False
  # A "polluted" dataset (stal, Table VII and Fig. 13: a random 25 x 25 black box in every
  # frame of iLIDS-VID, training and test sets alike). The side of the box in the stored
  # frame's pixels (clipped to the frame); 0: off. Each frame's box is a fixed property of
  # that frame, the same in every epoch, in training and test clips and in every split: its
  # top-left corner is uniform over the positions where the box fits, drawn from a hash of
  # (occlusion_seed, tracklet id, frame index) (the paper does not say how it placed them;
  # this placement is the library's). The box is drawn last, after the crop, resize, flip
  # and any erasing or jitter, as zeros in the output pixels that sample it. Keypoints and
  # flow are left as converted. Export and serving do not draw it: they take the client's
  # frames as they come (the box simulates occlusion in a benchmark, not in deployment), so
  # an exported model's features on clean frames differ from evaluation's on polluted ones.
  occlusion_box: int = 0
  occlusion_seed: int = 0
  augmentation: AugmentationConfig = dataclasses.field(default_factory=AugmentationConfig)

  @property
  def global_batch_size(self) -> int:
    return self.num_identities * self.num_instances

  @property
  def test_clip_len(self) -> int:
    """Frames per test clip: test_seq_len, or seq_len when it is 0."""
    return self.test_seq_len or self.seq_len

  def validate(self) -> None:
    _one_of("data.train_sampler", self.train_sampler,
            ("consecutive", "restricted_random", "random", "evenly"))
    _one_of("data.test_sampler", self.test_sampler, ("dense", "chunk_first"))
    _one_of("data.tracklet_sampler", self.tracklet_sampler, ("random", "cross_camera"))
    for key in ("height", "width", "seq_len", "sample_stride", "num_identities",
                "num_instances", "test_batch_size"):
      _positive(f"data.{key}", getattr(self, key))
    if self.split < 0:
      raise ConfigError(f"data.split must be >= 0, got {self.split}.")
    if self.test_seq_len < 0:
      raise ConfigError(f"data.test_seq_len must be >= 0 (0: data.seq_len), got "
                        f"{self.test_seq_len}.")
    if self.occlusion_box < 0 or self.occlusion_seed < 0:
      raise ConfigError(f"data.occlusion_box (side of the black box in source pixels, 0: "
                        f"off) and data.occlusion_seed must be >= 0, got "
                        f"{self.occlusion_box} and {self.occlusion_seed}.")
    _positive("data.test_sample_stride", self.test_sample_stride)
    if self.test_sample_stride > 1 and self.test_sampler != "dense":
      raise ConfigError(f"data.test_sample_stride={self.test_sample_stride} needs "
                        f"data.test_sampler=dense (got {self.test_sampler!r}, which takes no "
                        "stride); set data.test_sample_stride=1.")
    aug = self.augmentation
    for key in ("crop_enlarge", "random_erasing", "translate", "color_jitter"):
      value = getattr(aug, key)
      if not 0.0 <= value <= 1.0:
        raise ConfigError(f"data.augmentation.{key} must be in [0, 1], got {value}.")


# ---------------------------------------------------------------------------- model


@dataclasses.dataclass
class NonLocalConfig:
  """Embedded-Gaussian non-local blocks (nonlocal_i3d eqs. 3-6, section 4.2)."""
  # Number of blocks per residual stage res2..res5; the paper puts 2 in res3 and 3 in res4,
  # on every other block, right before the last block of the stage.
  blocks_per_stage: list[int] = dataclasses.field(default_factory=lambda: [0, 2, 3, 0])
  # Channels of theta/phi/g as a fraction of the input channels (the paper's 1024 -> 512).
  bottleneck_ratio: float = 0.5
  # 2x2 spatial max-pooling of phi and g.
  subsample: bool = True
  # before: the paper's text (section 4.2: right before the last residual block of a stage,
  # then every other block back: before blocks 2, 4 of res3 and 2, 4, 6 of res4);
  # after: the code released with the non-local paper, one block later (after blocks 2, 4
  # of res3 and 2, 4, 6 of res4). tfreid/backbones/resnet3d.py.
  placement: str = "before"


@dataclasses.dataclass
class BackboneConfig:
  # resnet3d (I3D ResNet3D, temporally separable convs) | resnet2d (per frame)
  name: str = "resnet3d"
  # Residual blocks per stage res2..res5 (ResNet-50: 3, 4, 6, 3).
  block_counts: list[int] = dataclasses.field(default_factory=lambda: [3, 4, 6, 3])
  # Bottleneck width of res2 (64 for ResNet-50); smaller for the synthetic variants.
  base_width: int = 64
  # Spatial stride of the last stage (1 keeps a 16x8 map for 256x128 inputs).
  last_stride: int = 1
  # Temporal kernel size of the separable 1-D temporal convolutions (nonlocal_i3d fig. 3d).
  temporal_kernel: int = 3
  # How the backbone is initialised (nonlocal_i3d table 3): none | imagenet (inflate 2-D
  # ResNet-50 ImageNet weights, keras.applications or `weights_path`) | reid (inflate a 2-D
  # ResNet-50 trained on ReID data, from `weights_path`) | kinetics (3-D weights pre-trained
  # on Kinetics, from `weights_path`).
  init: str = "imagenet"
  weights_path: str = ""
  nonlocal_blocks: NonLocalConfig = dataclasses.field(default_factory=NonLocalConfig)

  def validate(self) -> None:
    # Which backbones a method takes is the method's to check (its validate_config).
    _one_of("model.backbone.init", self.init, ("none", "imagenet", "reid", "kinetics"))
    if len(self.block_counts) != 4 or min(self.block_counts) < 1:
      raise ConfigError("model.backbone.block_counts must list 4 positive block counts "
                        f"(res2..res5), got {self.block_counts}.")
    if len(self.nonlocal_blocks.blocks_per_stage) != 4:
      raise ConfigError("model.backbone.nonlocal_blocks.blocks_per_stage must have 4 "
                        f"entries (res2..res5), got {self.nonlocal_blocks.blocks_per_stage}.")
    for count, blocks in zip(self.nonlocal_blocks.blocks_per_stage, self.block_counts):
      if count < 0 or count > (blocks + 1) // 2:
        raise ConfigError(
            "model.backbone.nonlocal_blocks.blocks_per_stage: non-local blocks go on every "
            f"other residual block, so a stage of {blocks} blocks takes at most "
            f"{(blocks + 1) // 2}; got {self.nonlocal_blocks.blocks_per_stage}.")
    _one_of("model.backbone.nonlocal_blocks.placement", self.nonlocal_blocks.placement,
            ("before", "after"))
    if self.name == "resnet2d" and any(self.nonlocal_blocks.blocks_per_stage):
      raise ConfigError("model.backbone.nonlocal_blocks need the resnet3d backbone; set "
                        "model.backbone.nonlocal_blocks.blocks_per_stage=[0,0,0,0] for resnet2d.")
    if self.init in ("reid", "kinetics") and not self.weights_path:
      raise ConfigError(f"model.backbone.init={self.init} loads weights from a local file: "
                        "set model.backbone.weights_path.")
    _one_of("model.backbone.last_stride", self.last_stride, (1, 2))
    _positive("model.backbone.base_width", self.base_width)
    if self.temporal_kernel < 1 or self.temporal_kernel % 2 == 0:
      raise ConfigError("model.backbone.temporal_kernel must be odd and >= 1, got "
                        f"{self.temporal_kernel}.")


@dataclasses.dataclass
class HeadConfig:
  """Global average pooling -> bottleneck (FC, BN, LeakyReLU, dropout) -> classifier."""
  embedding_dim: int = 512
  leaky_relu_alpha: float = 0.1
  dropout: float = 0.5


@dataclasses.dataclass
class ModelConfig:
  """The model: `name` is a module of tfreid/models/ (or a dotted module path); the shared
  backbone and head sections; and the method's own typed section `model.<name>`, whose
  dataclass is the `CONFIG_CLASS` of that module (created on first use, validated by the
  method). For a dotted module path the section is named by its last component
  (`model.name=my_pkg.my_method` -> `model.my_method`)."""
  # Module in tfreid/models/ that builds the model, or a dotted module path.
  name: str = "nonlocal_i3d"
  backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
  head: HeadConfig = dataclasses.field(default_factory=HeadConfig)

  def __post_init__(self):
    self._sections = {}

  def section(self, name: str | None = None):
    """The method section `model.<name>` (default: the current model's); None when the
    method has no section of its own."""
    name = name or self.name
    if name not in self._sections:
      cls = method_config_class(name)
      if cls is None:
        return None
      self._sections[name] = cls()
    return self._sections[name]

  @property
  def section_key(self) -> str:
    """The key of the current method's section: model.name's last dotted component."""
    return self.name.rsplit(".", 1)[-1]

  def _extra_section(self, key: str):
    """The section `key` names when it is the current model's (apply_dict hook)."""
    return self.section() if key == self.section_key else None

  def _extra_keys(self) -> list[str]:
    return [self.section_key] if method_config_class(self.name) is not None else []

  def __getattr__(self, key):
    # Only reached for attributes that do not exist: `model.<name>` of the current model.
    name = self.__dict__.get("name")
    if key.startswith("_") or name is None or key != name.rsplit(".", 1)[-1]:
      raise AttributeError(f"ModelConfig has no attribute {key!r} (a method section is "
                           "model.<model.name>).")
    section = self.section()
    if section is None:
      raise AttributeError(f"model {key!r} has no config section of its own (its module "
                           "defines no CONFIG_CLASS).")
    return section

  def validate(self) -> None:
    available = list_models()
    if self.name not in available and "." not in self.name:
      raise ConfigError(f"model.name={self.name!r} is not a model in tfreid/models/. "
                        f"Available: {', '.join(available)}.{_nearest(self.name, available)}")
    self.backbone.validate()
    _positive("model.head.embedding_dim", self.head.embedding_dim)
    if not 0.0 <= self.head.dropout < 1.0:
      raise ConfigError(f"model.head.dropout must be in [0, 1), got {self.head.dropout}.")


# --------------------------------------------------------------------------- losses


class LossesConfig:
  """Named loss terms: ``losses.<name>`` is the config of one term of the objective.

  Each term has a ``type``: a module of tfreid/losses/ (``cross_entropy``, ``triplet``,
  ``oim``, ``pair_bce`` ...) or a dotted module path, whose ``Config`` dataclass types the
  entry (``weight`` plus the loss's own keys) and whose ``build(name, config, context)``
  makes the term. The type defaults to the term's name, so ``losses.triplet.margin=0.5``
  needs no type while a second triplet term is ``losses.local_triplet.type=triplet``. The
  name is the term's name in logs, TensorBoard (``loss/<name>``) and checkpoints. A term of
  weight 0 is kept in the config but not built; ``losses.<name>=null`` removes it.
  """

  def __init__(self, **terms):
    object.__setattr__(self, "_terms", {})
    for name, term in terms.items():
      setattr(self, name, term)

  def __getattr__(self, key):
    if key.startswith("_"):
      raise AttributeError(key)
    terms = self.__dict__["_terms"]
    if key not in terms:
      raise AttributeError(f"no loss term {key!r}; terms: {', '.join(terms) or 'none'}.")
    return terms[key]

  def __setattr__(self, key, value):
    if not dataclasses.is_dataclass(value) or not hasattr(value, "weight"):
      raise ConfigError(f"losses.{key} must be a loss Config dataclass (with a weight), got "
                        f"{value!r}.")
    self._terms[key] = value

  def __delattr__(self, key):
    self._terms.pop(key, None)

  def __deepcopy__(self, memo):
    import copy  # pylint: disable=import-outside-toplevel
    return LossesConfig(**{k: copy.deepcopy(v, memo) for k, v in self._terms.items()})

  def __eq__(self, other):
    return isinstance(other, LossesConfig) and to_dict(self) == to_dict(other)

  def __repr__(self):
    return f"LossesConfig({', '.join(f'{k}={v!r}' for k, v in self._terms.items())})"

  def items(self):
    return list(self._terms.items())

  def active(self):
    """(name, config) of the terms with weight > 0, in config order."""
    return [(k, v) for k, v in self._terms.items() if v.weight > 0]

  def _apply(self, updates: dict, prefix: str) -> None:
    for name, content in updates.items():
      path = f"{prefix}{name}"
      if content is None:
        self._terms.pop(name, None)
        continue
      if dataclasses.is_dataclass(content):
        setattr(self, name, content)
        continue
      if not isinstance(content, dict):
        raise ConfigError(f"{path} expects a mapping of loss settings, got {content!r}.")
      content = dict(content)
      current = self._terms.get(name)
      loss_type = content.pop("type", None) or (current.type if current is not None
                                                else name)
      if not isinstance(loss_type, str):
        raise ConfigError(f"{path}.type expects a loss type name, got {loss_type!r}.")
      if current is None or current.type != loss_type:
        cls = loss_config_class(loss_type, path, list(self._terms))
        current = cls()
        current.type = loss_type
        self._terms[name] = current
      apply_dict(current, content, prefix=f"{path}.")

  def _to_dict(self) -> dict:
    out = {}
    for name, term in self._terms.items():
      entry = to_dict(term)
      out[name] = {"type": entry.pop("type", name), **entry}
    return out

  def validate(self, config=None) -> None:
    for name, term in self._terms.items():
      _finite(f"losses.{name}.weight", term.weight)
      if term.weight < 0:
        raise ConfigError(f"losses.{name}.weight must be >= 0, got {term.weight}.")
    if not self.active():
      raise ConfigError("every loss weight is 0: set the weight of at least one of "
                        f"losses.{', losses.'.join(self._terms) or '<name>'} above 0.")
    for name, term in self._terms.items():
      if term.weight > 0 and hasattr(term, "validate"):
        term.validate(f"losses.{name}", config)


def _default_losses() -> "LossesConfig":
  losses = LossesConfig()
  losses._apply({"cross_entropy": {}, "triplet": {}}, "losses.")  # pylint: disable=protected-access
  return losses


# ------------------------------------------------------------------------ optimizer


@dataclasses.dataclass
class OptimizerConfig:
  # adam | adamw | sgd | rmsprop
  name: str = "adam"
  learning_rate: float = 3e-4
  # L2 weight decay. With weight_decay_mode=l2 it is added to the loss as
  # weight_decay/2 * sum(w^2) over kernels (as the papers and PyTorch's `weight_decay` do:
  # the gradient gains weight_decay * w); with decoupled it is AdamW's decoupled decay.
  weight_decay: float = 5e-4
  weight_decay_mode: str = "l2"
  momentum: float = 0.9
  nesterov: bool = False
  beta_1: float = 0.9
  beta_2: float = 0.999
  epsilon: float = 1e-8
  rho: float = 0.9
  # Gradient clipping: by global norm, and element-wise to [-clip_value, clip_value]
  # (siamese_convgru clips to [-5, 5]). 0 disables.
  clip_global_norm: float = 0.0
  clip_value: float = 0.0

  def validate(self) -> None:
    _one_of("optimizer.name", self.name, ("adam", "adamw", "sgd", "rmsprop"))
    _one_of("optimizer.weight_decay_mode", self.weight_decay_mode, ("l2", "decoupled"))
    _positive("optimizer.learning_rate", self.learning_rate)
    if self.weight_decay < 0 or self.clip_global_norm < 0 or self.clip_value < 0:
      raise ConfigError("optimizer.weight_decay, clip_global_norm and clip_value must be >= 0.")
    if self.weight_decay_mode == "decoupled" and self.name != "adamw":
      raise ConfigError("optimizer.weight_decay_mode=decoupled is AdamW's decay: set "
                        "optimizer.name=adamw, or weight_decay_mode=l2.")


@dataclasses.dataclass
class ScheduleConfig:
  """Learning-rate schedule over epochs (converted to steps by the trainer)."""
  # constant | step | exponential
  name: str = "constant"
  # Linear warm-up from warmup_factor * lr over the first warmup_epochs.
  warmup_epochs: int = 0
  warmup_factor: float = 0.01
  # step: multiply by step_factor every step_epochs (a3d: halve every 60 epochs).
  step_epochs: int = 60
  step_factor: float = 0.5
  # exponential: constant until decay_start_epoch, then
  # lr * decay_rate ** ((epoch - decay_start_epoch) / decay_epochs)
  # (nonlocal_i3d section 4.2: rate 0.001 from epoch 150 over the last 150 epochs).
  decay_start_epoch: int = 150
  decay_epochs: int = 150
  decay_rate: float = 0.001

  def validate(self) -> None:
    _one_of("schedule.name", self.name, ("constant", "step", "exponential"))
    if self.warmup_epochs < 0:
      raise ConfigError(f"schedule.warmup_epochs must be >= 0, got {self.warmup_epochs}.")
    _positive("schedule.step_epochs", self.step_epochs)
    _positive("schedule.decay_epochs", self.decay_epochs)


# ------------------------------------------------------------------ trainer, eval ...


@dataclasses.dataclass
class TrainerConfig:
  epochs: int = 300
  # 0: one epoch visits every training identity once (num_train_ids // P steps).
  steps_per_epoch: int = 0
  log_every_steps: int = 10
  checkpoint_every_steps: int = 500
  keep_checkpoints: int = 3
  # Evaluate on the test set (and keep the checkpoint of best test mAP in model_dir/best,
  # selected on the test set: not for reported numbers) every N epochs; 0: never.
  eval_every_epochs: int = 0
  # Fine-tune from another run's checkpoint (e.g. a MARS model for iLIDS-VID/PRID-2011): a
  # checkpoint path (DIR/ckpt-N), a run's directory (its newest checkpoint: the final one of a
  # finished run) or DIR/best (test-selected; a warning is logged).
  # Every variable but the classifier is restored; used only when model_dir has no
  # checkpoint of its own (resuming wins), and pretrained backbone weights are then skipped.
  init_checkpoint: str = ""
  # Write sample input clips and attention maps to TensorBoard every N steps (0: never).
  image_summary_every_steps: int = 500
  # Layers to freeze (staged training): glob patterns over Keras layer paths, e.g.
  # "resnet2d" (a functional backbone: every layer in it). A frozen layer's variables are
  # not trained and a frozen BatchNorm runs
  # in inference mode (its moving statistics do not change).
  freeze: list[str] = dataclasses.field(default_factory=list)

  def validate(self) -> None:
    _positive("trainer.epochs", self.epochs)
    _positive("trainer.log_every_steps", self.log_every_steps)
    _positive("trainer.checkpoint_every_steps", self.checkpoint_every_steps)
    _positive("trainer.keep_checkpoints", self.keep_checkpoints)
    if self.steps_per_epoch < 0 or self.eval_every_epochs < 0:
      raise ConfigError("trainer.steps_per_epoch and trainer.eval_every_epochs must be >= 0.")


@dataclasses.dataclass
class EvalConfig:
  # torchreid | mars_matlab (MARS); closed-set datasets use their own single protocol.
  protocol: str = "torchreid"
  # model (the model's own metric: its pairwise_distance when it has one, else Euclidean)
  # | euclidean | sqeuclidean | cosine | learned (the model's pairwise_distance, required)
  distance: str = "model"
  rerank: bool = False
  max_rank: int = 50
  # Rank-list images written for this many queries.
  num_rank_lists: int = 8
  # Frames per query / gallery tracklet (0: every frame, through data.test_sampler). L > 0:
  # L frames drawn at random per tracklet, complemented by repeats when it has fewer
  # (stal's fig. 11 protocol, `tfreid.data.samplers.random_length_indices`), seeded by
  # length_seed and the tracklet's position.
  query_seq_len: int = 0
  gallery_seq_len: int = 0
  length_seed: int = 0
  # Test-time augmentation. Conditions: both mirror states when tta_flip, times tta_shifts
  # translations on the diagonal, evenly spaced over [-tta_translate, +tta_translate] of
  # the frame height and width (one shift: none; zeros are filled in). A pair's distance is
  # the mean over the conditions, the same condition applied to both tracklets. Tracklets
  # of tta_max_length frames or more keep their plain clips in every condition (0: every
  # tracklet is augmented). Off by default; evaluation only (the SavedModel embeds plain
  # clips).
  tta_flip: bool = False
  tta_shifts: int = 0
  tta_translate: float = 0.0
  tta_max_length: int = 0

  def validate(self) -> None:
    _one_of("eval.protocol", self.protocol, ("torchreid", "mars_matlab"))
    if self.tta_shifts < 0 or self.tta_max_length < 0:
      raise ConfigError(f"eval.tta_shifts and eval.tta_max_length must be >= 0, got "
                        f"{self.tta_shifts} and {self.tta_max_length}.")
    if not 0.0 <= self.tta_translate < 0.5:
      raise ConfigError(f"eval.tta_translate is a fraction of the frame in [0, 0.5), got "
                        f"{self.tta_translate}.")
    if (self.tta_shifts >= 2) != (self.tta_translate > 0):
      raise ConfigError(
          f"eval.tta_shifts={self.tta_shifts} with eval.tta_translate={self.tta_translate}: "
          "translated test conditions need both, e.g. --override=eval.tta_shifts=8 "
          "--override=eval.tta_translate=0.05 (or set both to 0).")
    _one_of("eval.distance", self.distance,
            ("model", "euclidean", "sqeuclidean", "cosine", "learned"))
    _positive("eval.max_rank", self.max_rank)
    for key in ("query_seq_len", "gallery_seq_len"):
      if getattr(self, key) < 0:
        raise ConfigError(f"eval.{key} must be >= 0 (0: every frame of the tracklet), got "
                          f"{getattr(self, key)}.")

  def partition_seq_len(self, partition: str) -> int:
    """Frames drawn per tracklet of a test partition (0: every frame)."""
    return {"query": self.query_seq_len, "gallery": self.gallery_seq_len}.get(partition, 0)

  @property
  def tta_on(self) -> bool:
    """Whether test-time augmentation is on (more conditions than the plain clips)."""
    return self.tta_flip or self.tta_shifts >= 2

  def tta_conditions(self) -> list[tuple[bool, float]]:
    """The test-time augmentation conditions (flip, shift as a fraction of the frame,
    applied to y and x alike), in order; [(False, 0.0)] when test-time augmentation is
    off."""
    flips = (False, True) if self.tta_flip else (False,)
    n = max(self.tta_shifts, 1)
    shifts = [0.0] if n == 1 else [
        -self.tta_translate + 2.0 * self.tta_translate * k / (n - 1) for k in range(n)]
    return [(flip, shift) for shift in shifts for flip in flips]


@dataclasses.dataclass
class RuntimeConfig:
  # mirrored (all local GPUs, or one CPU) | multi_worker (from TF_CONFIG) | default
  strategy: str = "mirrored"
  # XLA-compile the per-replica forward and backward pass.
  jit_compile: bool = True
  # float32 | mixed_bfloat16 | mixed_float16
  mixed_precision: str = "float32"
  seed: int = 0

  def validate(self) -> None:
    _one_of("runtime.strategy", self.strategy, ("mirrored", "multi_worker", "default"))
    _one_of("runtime.mixed_precision", self.mixed_precision,
            ("float32", "mixed_bfloat16", "mixed_float16"))


@dataclasses.dataclass
class ExportConfig:
  # Version sub-directory written under --export_dir (TF Serving layout); 0: next free.
  version: int = 0
  # Clips per batch inside the embed_tracklet signature.
  tracklet_batch_size: int = 16


@dataclasses.dataclass
class ExperimentConfig:
  # "name:variant" of the experiment this config came from.
  experiment: str = ""
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  losses: LossesConfig = dataclasses.field(default_factory=_default_losses)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
  trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
  export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

  def validate(self) -> "ExperimentConfig":
    for part in (self.data, self.model, self.optimizer, self.schedule, self.trainer,
                 self.eval, self.runtime):
      part.validate()
    self.losses.validate(self)
    # The method validates its own section and what it needs of the shared ones.
    validate_method(self)
    return self


# ------------------------------------------------------------------ validation helpers


def _nearest(value: Any, options) -> str:
  match = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
  return f" Did you mean {match[0]!r}?" if match else ""


def _one_of(key: str, value: Any, options) -> None:
  if value not in options:
    raise ConfigError(f"{key}={value!r} is not valid; expected one of "
                      f"{', '.join(map(repr, options))}.{_nearest(value, options)}")


def _positive(key: str, value) -> None:
  if value <= 0:
    raise ConfigError(f"{key} must be > 0, got {value}.")


def _finite(key: str, value) -> None:
  if not math.isfinite(value):
    raise ConfigError(f"{key} must be a finite number, got {value}.")


def list_models() -> list[str]:
  """Modules of tfreid/models/ that build a model (expose `build`); shared parts such as
  heads.py are not models."""
  import tfreid.models as models_pkg  # pylint: disable=import-outside-toplevel
  names = [m.name for m in pkgutil.iter_modules(models_pkg.__path__)
           if not m.name.startswith("_")]
  return sorted(n for n in names
                if hasattr(importlib.import_module(f"tfreid.models.{n}"), "build"))


def import_plugin(package: str, name: str, what: str, available=None):
  """The module `package.name`, or `name` itself when it is a dotted module path (a method,
  loss or experiment defined outside tfreid). Raises ConfigError naming what was looked up."""
  module_name = name if "." in name else f"{package}.{name}"
  try:
    return importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name != module_name and not module_name.startswith(f"{e.name}."):
      raise  # the module exists but one of its own imports is missing
    hint = ""
    if available is not None:
      hint = f" Available: {', '.join(available)}.{_nearest(name, available)}"
    raise ConfigError(f"{what} {name!r}: no module {module_name!r}.{hint}") from None


def method_config_class(name: str):
  """The dataclass of the method section `model.<name>` (its module's CONFIG_CLASS), or
  None when the method has no section."""
  if not name:
    return None
  module = import_plugin("tfreid.models", name, "model")
  return getattr(module, "CONFIG_CLASS", None)


def loss_config_class(loss_type: str, path: str = "losses", names=()):
  """The `Config` dataclass of a loss type (a module of tfreid/losses/ with Config and
  build, or a dotted module path)."""
  import tfreid.losses as losses_pkg  # pylint: disable=import-outside-toplevel
  types = sorted(m.name for m in pkgutil.iter_modules(losses_pkg.__path__)
                 if not m.name.startswith("_"))
  if "." not in loss_type and loss_type not in types:
    raise ConfigError(
        f"{path}: {loss_type!r} is not a loss type. Loss types (modules of tfreid/losses/): "
        f"{', '.join(types)}.{_nearest(loss_type, types)} A new term needs its type: "
        f"{path}.type=<loss type>; existing terms: {', '.join(names) or 'none'}.")
  module = import_plugin("tfreid.losses", loss_type, f"{path}: loss type", types)
  if not hasattr(module, "Config") or not hasattr(module, "build"):
    raise ConfigError(f"{path}: loss type {loss_type!r} ({module.__name__}) must define a "
                      "Config dataclass and build(name, config, context).")
  return module.Config


def validate_method(config) -> None:
  """The method's own checks: its section's validate() and its module's
  validate_config(config) (backbones it takes, streams, combinations)."""
  module = import_plugin("tfreid.models", config.model.name, "model", list_models())
  section = config.model.section()
  if section is not None and hasattr(section, "validate"):
    section.validate()
  if hasattr(module, "validate_config"):
    module.validate_config(config)


# ------------------------------------------------------------------ overlays and YAML


def to_dict(config) -> dict:
  """A config as plain nested dicts and lists (method sections and loss terms included)."""
  if hasattr(config, "_to_dict"):
    return config._to_dict()  # pylint: disable=protected-access
  out = {}
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if dataclasses.is_dataclass(value) or hasattr(value, "_to_dict"):
      value = to_dict(value)
    elif isinstance(value, (list, tuple)):
      value = [to_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
    out[field.name] = value
  for key in getattr(config, "_extra_keys", lambda: [])():
    out[key] = to_dict(config._extra_section(key))  # pylint: disable=protected-access
  return out


def to_yaml(config) -> str:
  return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None)


# A decimal number in any common notation: 3, -0.5, .5, 1e-4, 3E+2, 1.5e-3.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _check_type(key: str, value: Any, annotation) -> Any:
  """Returns `value` converted to `annotation`, or raises ConfigError naming `key`."""
  origin = typing.get_origin(annotation)
  if annotation is float:
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
      # YAML 1.1 reads 1e-4 (no dot in the mantissa) as a string; it is a number here.
      value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"{key} expects a float, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(value):
      raise ConfigError(f"{key} must be a finite number, got {value}: NaN or infinity would "
                        "silently switch a term off or diverge training.")
    return float(value)
  if annotation is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f"{key} expects an int, got {value!r} ({type(value).__name__}).")
    return value
  if annotation is bool:
    if not isinstance(value, bool):
      raise ConfigError(f"{key} expects true or false, got {value!r}.")
    return value
  if annotation is str:
    if value is None:
      return ""
    if not isinstance(value, str):
      raise ConfigError(f"{key} expects a string, got {value!r} ({type(value).__name__}).")
    return value
  if origin is list:
    (item_type,) = typing.get_args(annotation)
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{key} expects a list, got {value!r}.")
    return [_check_type(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
  raise ConfigError(f"{key}: unsupported field type {annotation!r}.")


def _field_types(cls) -> dict[str, Any]:
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# Keys of earlier config.yaml files that no longer exist, and what replaced them. A file
# holding one still loads (the key is skipped with a warning); an override naming one is an
# error that says what changed.
RETIRED_KEYS = {
    "data.use_flow": "the input streams are declared by the model (its module's streams()); "
                     "the pipeline delivers optical flow when the model reads it",
    "data.use_keypoints": "the input streams are declared by the model (its module's "
                          "streams()); the pipeline delivers keypoints when the model reads "
                          "them",
}


def apply_dict(config, updates: dict, prefix: str = "", legacy: bool = False) -> None:
  """Overlays a nested dict onto a dataclass config, in place, with type checks.

  `legacy` (config files): keys in RETIRED_KEYS are skipped with a warning instead of
  refused.
  """
  if not isinstance(updates, dict):
    raise ConfigError(f"{prefix[:-1] if prefix else 'config'} expects a mapping, got "
                      f"{updates!r}.")
  if hasattr(config, "_apply"):
    config._apply(updates, prefix)  # pylint: disable=protected-access
    return
  types = _field_types(type(config))
  # `name` first: it decides which method section the other keys may name.
  for key in sorted(updates, key=lambda k: k != "name"):
    value = updates[key]
    path = f"{prefix}{key}"
    if key not in types:
      section = getattr(config, "_extra_section", lambda k: None)(key)
      if section is not None:
        apply_dict(section, value, prefix=f"{path}.", legacy=legacy)
        continue
      if path in RETIRED_KEYS:
        if legacy:
          from absl import logging  # pylint: disable=import-outside-toplevel
          logging.warning("config key %s is no longer used (%s); ignored.", path,
                          RETIRED_KEYS[path])
          continue
        raise ConfigError(f"config key {path!r} no longer exists: {RETIRED_KEYS[path]}.")
      valid = list(types) + list(getattr(config, "_extra_keys", lambda: [])())
      raise ConfigError(f"unknown config key {path!r}. Valid keys"
                        f"{' under ' + prefix[:-1] if prefix else ''}: "
                        f"{', '.join(valid)}.{_nearest(key, valid)}")
    annotation = types[key]
    current = getattr(config, key)
    if dataclasses.is_dataclass(annotation) or hasattr(current, "_apply"):
      apply_dict(current, value, prefix=f"{path}.", legacy=legacy)
    else:
      setattr(config, key, _check_type(path, value, annotation))


def apply_override(config, override: str) -> None:
  """Applies one `key.path=value` override; the value is parsed with yaml.safe_load."""
  if "=" not in override:
    raise ConfigError(f"override {override!r} must look like key.path=value, e.g. "
                      "trainer.epochs=10.")
  path, raw = override.split("=", 1)
  keys = path.strip().split(".")
  try:
    value = yaml.safe_load(raw) if raw.strip() else ""
  except yaml.YAMLError as e:
    raise ConfigError(f"override {override!r}: the value {raw!r} is not valid YAML "
                      f"({str(e).splitlines()[0]}). Quote strings, write lists as [1, 2].") from None
  nested: Any = value
  for key in reversed(keys):
    nested = {key: nested}
  apply_dict(config, nested)


def load_yaml_file(path: str) -> dict:
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist.")
  try:
    with open(path) as f:
      content = yaml.safe_load(f)
  except yaml.YAMLError as e:
    where = getattr(e, "problem_mark", None)
    at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
    raise ConfigError(f"config file {path!r} is not valid YAML{at}: "
                      f"{getattr(e, 'problem', None) or e}. Fix the file (or pass the run's "
                      "own config.yaml) and run again.") from None
  if content is None:
    return {}
  if not isinstance(content, dict):
    raise ConfigError(f"config file {path!r} must hold a mapping of config keys.")
  return content


# ------------------------------------------------------------------------ experiments


def list_experiments() -> list[str]:
  import experiments as experiments_pkg  # pylint: disable=import-outside-toplevel
  return sorted(m.name for m in pkgutil.iter_modules(experiments_pkg.__path__)
                if not m.name.startswith("_"))


def experiment_variants(name: str) -> tuple[str, ...]:
  module = _experiment_module(name)
  return tuple(module.VARIANTS)


def _experiment_module(name: str):
  """experiments/<name>.py, or the module `name` when it is a dotted module path (an
  experiment defined outside the repository)."""
  if "." in name:
    return import_plugin("experiments", name, "experiment")
  available = list_experiments()
  if name not in available:
    raise ConfigError(f"unknown experiment {name!r}. Available experiments: "
                      f"{', '.join(available)}.{_nearest(name, available)}")
  return importlib.import_module(f"experiments.{name}")


def get_experiment(spec: str) -> ExperimentConfig:
  """Returns the config of `NAME` or `NAME:VARIANT` (the paper's configuration is '')."""
  name, _, variant = spec.partition(":")
  module = _experiment_module(name)
  variants = tuple(module.VARIANTS)
  if variant not in variants:
    shown = [v or "(none: the paper's configuration)" for v in variants]
    raise ConfigError(f"unknown variant {variant!r} of experiment {name!r}. Variants: "
                      f"{', '.join(shown)}.{_nearest(variant, [v for v in variants if v])}")
  config = module.get_config(variant)
  config.experiment = f"{name}:{variant}" if variant else name
  return config


def build_config(experiment: str, config_files=(), overrides=(), data_dir: str = ""
                 ) -> ExperimentConfig:
  """get_config, then each YAML file, then each override; validated."""
  config = get_experiment(experiment)
  for path in config_files:
    content = load_yaml_file(path)
    content.pop("experiment", None)
    apply_dict(config, content, legacy=True)
  for override in overrides:
    apply_override(config, override)
  if data_dir:
    config.data.data_dir = data_dir
  return config.validate()


def save_config(config: ExperimentConfig, path: str) -> None:
  """Writes the config as YAML atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(to_yaml(config))
  os.replace(tmp, path)


def load_config(path: str) -> ExperimentConfig:
  """Reads a config.yaml written by save_config (experiment taken from the file)."""
  content = load_yaml_file(path)
  experiment = content.pop("experiment", "")
  if not experiment:
    raise ConfigError(f"{path} has no 'experiment' key; it was not written by tfreid.train.")
  config = get_experiment(experiment)
  apply_dict(config, content, legacy=True)
  return config.validate()
