"""Restore a trained run for export: config.yaml, the model, its checkpoint.

The same steps as `tfreid.evaluate` (load ``DIR/config.yaml`` with
`tfreid.config.load_config`, set the run's mixed-precision policy, `build_model`, restore
the checkpoint chosen by `tfreid.training.checkpoints.resolve_checkpoint`), with two
differences that matter on a serving machine:

- the dataset need not be there: the number of training identities (the classifier's size,
  needed to rebuild the model before restoring) is read from the checkpoint itself (the
  variables whose last axis follows the number of classes, found through the checkpoint's
  object graph), so a training directory copied to another machine exports as it is;
- the backbone is built with ``model.backbone.init=none``: the checkpoint overwrites every
  weight, so no pretrained weight file is needed;
- every model variable must be restored (`assert_existing_objects_matched`): a checkpoint
  of another configuration is an error, not a silently half-initialised export.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Optional

import tensorflow as tf

from tfreid import config as cfg
from tfreid.models import build_model
from tfreid.serving.export_module import ExportError
from tfreid.training import checkpoints

GLOBAL_STEP_KEY = "global_step/.ATTRIBUTES/VARIABLE_VALUE"


@dataclasses.dataclass
class RestoredRun:
  """A model restored from a training directory."""
  config: cfg.ExperimentConfig
  model: object
  checkpoint_path: str
  # The checkpoint's global step (None when the checkpoint has no global_step).
  step: Optional[int]
  num_classes: int


def _build(config: cfg.ExperimentConfig, num_classes: int):
  # Building initialises the backbone per model.backbone.init; the restore overwrites it, so
  # no pretrained weight file is read.
  config = copy.deepcopy(config)
  config.model.backbone.init = "none"
  model = build_model(config, num_classes)
  d = config.data
  model({"clips": tf.zeros([1, d.seq_len, d.height, d.width, 3], tf.uint8)}, training=False)
  return model


def checkpoint_variable_shapes(model, path: str) -> list[tuple[object, Optional[list[int]]]]:
  """(model variable, its shape in the checkpoint at `path`, or None when it has none).

  Variables are found by following their attribute path (model/backbone/...) in the
  checkpoint's own object graph, which is how a restore finds them: a training checkpoint
  stores each tensor under its shortest path from the root, which for the trainable
  variables is the optimizer's, not the model's. Variables not reachable from the model's
  attributes (e.g. dropout RNG states) are left out.
  """
  shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
  return [(v, None if key is None else list(shapes[key]))
          for v, key in checkpoints.checkpoint_variable_keys(model, path)]


def num_classes_from_checkpoint(config: cfg.ExperimentConfig, path: str) -> int:
  """Training identities of a checkpoint, read from its classifier's shape.

  Builds the model for 2 classes and compares every variable with the checkpoint: the
  variables that differ must differ only on their last axis (2 in the model), all by the
  same size, which is the number of classes.
  """
  model = _build(config, 2)
  sizes, missing = set(), []
  for variable, theirs in checkpoint_variable_shapes(model, path):
    if theirs is None:
      missing.append(variable.path)
      continue
    ours = list(variable.shape)
    if ours == theirs:
      continue
    if len(ours) != len(theirs) or ours[:-1] != theirs[:-1] or ours[-1] != 2:
      raise ExportError(f"checkpoint {path} does not match the run's config.yaml: variable "
                        f"{variable.path} has shape {theirs} in the checkpoint and {ours} in "
                        "the model built from the config.")
    sizes.add(theirs[-1])
  if missing:
    raise ExportError(f"checkpoint {path} lacks {len(missing)} model variables (e.g. "
                      f"{missing[0]}): it was not written for the model of this config.yaml.")
  if len(sizes) > 1:
    raise ExportError(f"checkpoint {path}: the classifier variables disagree on the number of "
                      f"classes ({sorted(sizes)}).")
  return sizes.pop() if sizes else 2


def load_run(model_dir: str, checkpoint: str = "latest") -> RestoredRun:
  """Restores the model of a training directory.

  Args:
    model_dir: a directory written by ``python -m tfreid.train`` (config.yaml,
      checkpoints).
    checkpoint: "latest", "best", a step number or a checkpoint path
      (`tfreid.training.checkpoints.resolve_checkpoint`).

  Raises:
    FileNotFoundError: no config.yaml, or no such checkpoint.
    ExportError: the checkpoint does not fit the model of the config.
    tfreid.config.ConfigError: an invalid config.yaml.
  """
  config_path = os.path.join(model_dir, "config.yaml")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} does not exist: {model_dir!r} is not a training "
                            "directory written by `python -m tfreid.train`.")
  config = cfg.load_config(config_path)
  path = checkpoints.resolve_checkpoint(model_dir, checkpoint)
  # The model is built under the run's precision policy, as evaluation builds it.
  from tfreid.training import trainer  # pylint: disable=import-outside-toplevel
  trainer.set_mixed_precision(config.runtime)
  num_classes = num_classes_from_checkpoint(config, path)
  model = _build(config, num_classes)
  status = tf.train.Checkpoint(model=model).restore(path)
  try:
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise ExportError(f"checkpoint {path} does not restore every variable of the model built "
                      f"from {config_path}: {str(e)[:300]}") from e
  status.expect_partial()  # optimizer slots, data iterators ... are not exported.
  step = None
  ckpt_reader = tf.train.load_checkpoint(path)
  if ckpt_reader.has_tensor(GLOBAL_STEP_KEY):
    step = int(ckpt_reader.get_tensor(GLOBAL_STEP_KEY))
  return RestoredRun(config=config, model=model, checkpoint_path=path, step=step,
                     num_classes=num_classes)
