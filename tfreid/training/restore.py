"""The one restore path: a model rebuilt from a run's config and restored from a checkpoint,
for evaluation, export, the split driver and cross-dataset testing.

- The model is built under the run's precision policy with ``model.backbone.init=none``
  (the checkpoint overwrites every weight, so no pretrained weight file is read) and called
  once on a zero batch of its declared input streams.
- The classifier's size (the run's training identities) comes from the training dataset's
  manifest when it is readable, else from the checkpoint itself: the variables whose last
  axis follows the number of classes, found through the checkpoint's object graph, so a
  training directory copied to another machine restores as it is.
- Every model variable must be restored (`assert_existing_objects_matched`): a checkpoint
  of another configuration is an error naming the first variable that differs, not a
  silently half-initialised model.

Fine-tuning from another run (`trainer.init_checkpoint`) is a partial restore into a model
the trainer builds: `tfreid.training.checkpoints.restore_model_weights`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Optional

from absl import logging
import tensorflow as tf

from tfreid import config as cfg
from tfreid.data import schema
from tfreid import models
from tfreid.models import contract
from tfreid.training import checkpoints

GLOBAL_STEP_KEY = "global_step/.ATTRIBUTES/VARIABLE_VALUE"


class RestoreError(ValueError):
  """The checkpoint does not fit the model of the run's config."""


@dataclasses.dataclass
class RestoredRun:
  """A model restored from a training directory."""
  config: cfg.ExperimentConfig
  model: object
  checkpoint_path: str
  # The checkpoint's global step (None when the checkpoint has no global_step).
  step: Optional[int]
  num_classes: int


def build_for_restore(config: cfg.ExperimentConfig, num_classes: int):
  """The model of `config` with `num_classes` classes, built (all variables exist) under
  the run's precision policy, its backbone not initialised from any weight file."""
  from tfreid.training import trainer  # pylint: disable=import-outside-toplevel
  config = copy.deepcopy(config)
  config.model.backbone.init = "none"
  trainer.set_mixed_precision(config.runtime)
  model = models.build_model(config, num_classes)
  model(trainer.dummy_inputs(config), training=False)
  contract.check_checkpointable(model)
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
  model = build_for_restore(config, 2)
  sizes, missing = set(), []
  for variable, theirs in checkpoint_variable_shapes(model, path):
    if theirs is None:
      missing.append(variable.path)
      continue
    ours = list(variable.shape)
    if ours == theirs:
      continue
    if len(ours) != len(theirs) or ours[:-1] != theirs[:-1] or ours[-1] != 2:
      raise RestoreError(f"checkpoint {path} does not match the run's config.yaml: variable "
                         f"{variable.path} has shape {theirs} in the checkpoint and {ours} in "
                         "the model built from the config.")
    sizes.add(theirs[-1])
  if missing:
    raise RestoreError(f"checkpoint {path} lacks {len(missing)} model variables (e.g. "
                       f"{missing[0]}): it was not written for the model of this config.yaml.")
  if len(sizes) > 1:
    raise RestoreError(f"checkpoint {path}: the classifier variables disagree on the number "
                       f"of classes ({sorted(sizes)}).")
  return sizes.pop() if sizes else 2


def num_training_identities(config: cfg.ExperimentConfig, checkpoint_path: str) -> int:
  """Classes of the run's classifier: the training split's identities in its manifest, or
  (training dataset absent) the checkpoint's classifier shape."""
  try:
    manifest = schema.read_manifest(config.data.data_dir)
    return len(manifest["splits"][config.data.split]["train_pids"])
  except (schema.DatasetError, IndexError, KeyError, OSError) as e:
    logging.info("Training dataset %r not readable (%s): reading the number of training "
                 "identities from the checkpoint.", config.data.data_dir, e)
    return num_classes_from_checkpoint(config, checkpoint_path)


def restore_model(config: cfg.ExperimentConfig, checkpoint_path: str, num_classes: int):
  """Builds the model of `config` and restores every one of its variables from
  `checkpoint_path`. Returns (model, the checkpoint's global step or None)."""
  model = build_for_restore(config, num_classes)
  where = (f"checkpoint {checkpoint_path} does not fit the model built from the run's "
           f"config.yaml with {num_classes} training identities")
  try:
    status = tf.train.Checkpoint(model=model).restore(checkpoint_path)
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    raise RestoreError(f"{where}: {str(e)[:300]} Use a checkpoint of this run with the "
                       "config.yaml it was trained with.") from e
  status.expect_partial()  # optimizer slots, loss state and RNG states are not needed here.
  reader = tf.train.load_checkpoint(checkpoint_path)
  step = int(reader.get_tensor(GLOBAL_STEP_KEY)) if reader.has_tensor(GLOBAL_STEP_KEY) else None
  return model, step


def load_run(model_dir: str, checkpoint: str = "latest") -> RestoredRun:
  """Restores the model of a training directory.

  Args:
    model_dir: a directory written by ``python -m tfreid.train`` (config.yaml,
      checkpoints).
    checkpoint: "latest", "best", a step number or a checkpoint path
      (`tfreid.training.checkpoints.resolve_checkpoint`).

  Raises:
    FileNotFoundError: no config.yaml, or no such checkpoint.
    RestoreError: the checkpoint does not fit the model of the config.
    tfreid.config.ConfigError: an invalid config.yaml.
  """
  config_path = os.path.join(model_dir, "config.yaml")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} does not exist: {model_dir!r} is not a training "
                            "directory written by `python -m tfreid.train`.")
  config = cfg.load_config(config_path)
  path = checkpoints.resolve_checkpoint(model_dir, checkpoint)
  # From the checkpoint: the run restores without its dataset, and a checkpoint of another
  # configuration is reported variable by variable.
  num_classes = num_classes_from_checkpoint(config, path)
  model, step = restore_model(config, path, num_classes)
  return RestoredRun(config=config, model=model, checkpoint_path=path, step=step,
                     num_classes=num_classes)
