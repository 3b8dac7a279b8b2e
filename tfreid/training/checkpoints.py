"""Checkpoints: the last N, the best by mAP, resume, and fine-tuning initialisation.

`tf.train.CheckpointManager` writes each checkpoint's data before it rewrites the small
`checkpoint` state file (itself written to a temporary file and renamed), so an interrupted
save leaves the previous checkpoint as the newest valid one: `kill -9` at any moment, then the
same command resumes from it.
"""

import json
import os

from absl import logging
import tensorflow as tf

BEST_DIR = "best"
BEST_FILE = "best_metrics.json"


class CheckpointKeeper:
  """The newest `keep` checkpoints in `model_dir`, plus the best by mAP in `model_dir/best`."""

  def __init__(self, checkpoint: tf.train.Checkpoint, model_dir: str, keep: int,
               step_counter: tf.Variable):
    self.checkpoint = checkpoint
    self.model_dir = model_dir
    self.manager = tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=keep,
                                              step_counter=step_counter)
    self.best_manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(model_dir, BEST_DIR), max_to_keep=1, step_counter=step_counter)

  @property
  def latest(self) -> str | None:
    return self.manager.latest_checkpoint

  def restore_latest(self) -> str | None:
    """Restores the newest checkpoint in model_dir; returns its path or None."""
    path = self.manager.latest_checkpoint
    if path:
      self.checkpoint.restore(path).expect_partial()
      logging.info("Resumed from %s", path)
    return path

  def save(self, step: int) -> str:
    return self.manager.save(checkpoint_number=step)

  def best_metrics(self) -> dict | None:
    path = os.path.join(self.model_dir, BEST_DIR, BEST_FILE)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def maybe_save_best(self, step: int, metrics: dict) -> bool:
    """Saves the current state as the best checkpoint when its mAP beats the best so far."""
    best = self.best_metrics()
    if best is not None and metrics["mAP"] <= best["mAP"]:
      return False
    path = self.best_manager.save(checkpoint_number=step)
    record = dict(metrics, checkpoint=path, step=int(step))
    target = os.path.join(self.model_dir, BEST_DIR, BEST_FILE)
    tmp = target + ".tmp"
    with open(tmp, "w") as f:
      json.dump(record, f, indent=1)
    os.replace(tmp, target)
    return True


def resolve_checkpoint(model_dir: str, checkpoint: str = "") -> str:
  """Returns the checkpoint path for `--checkpoint` ("", "latest", "best", a path or a step)."""
  if checkpoint in ("", "latest"):
    path = tf.train.latest_checkpoint(model_dir)
    if not path:
      raise FileNotFoundError(f"no checkpoint in {model_dir!r}: train first with "
                              f"`python -m tfreid.train --model_dir={model_dir} ...`.")
    return path
  if checkpoint == "best":
    path = tf.train.latest_checkpoint(os.path.join(model_dir, BEST_DIR))
    if not path:
      raise FileNotFoundError(f"no best checkpoint in {model_dir}/{BEST_DIR}: it is written "
                              "by periodic evaluation (trainer.eval_every_epochs > 0).")
    return path
  if checkpoint.isdigit():
    path = os.path.join(model_dir, f"ckpt-{checkpoint}")
  else:
    path = checkpoint
  if not tf.io.gfile.exists(path + ".index"):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist (no {path}.index).")
  return path


def restore_model_weights(model, path: str) -> None:
  """Restores only the model's weights from a training checkpoint (fine-tuning, evaluation).

  The classifier of a checkpoint trained on another dataset has another shape; its
  variables are skipped with a log line, everything else must match.
  """
  reader = tf.train.load_checkpoint(path)
  shapes = reader.get_variable_to_shape_map()
  restored = skipped = 0
  names = _model_variable_keys(model, path)
  for variable, key in names:
    if key is None or key not in shapes:
      skipped += 1
      continue
    if list(shapes[key]) != list(variable.shape):
      logging.info("Not restoring %s: checkpoint shape %s, model shape %s", variable.path,
                   shapes[key], list(variable.shape))
      skipped += 1
      continue
    variable.assign(reader.get_tensor(key))
    restored += 1
  if restored == 0:
    raise ValueError(f"no model variable of {path} matches the model: was it trained with "
                     "another model configuration?")
  logging.info("Restored %d model variables from %s (%d skipped)", restored, path, skipped)


def _model_variable_keys(model, path):
  """Pairs each model variable with its key in a checkpoint written by the trainer."""
  # The trainer checkpoints the model under the name "model"; tf.train.Checkpoint names
  # variables by their object-graph path, which a fresh Checkpoint of the same model
  # reproduces. Map them by saving the object graph of a model-only checkpoint.
  probe = tf.train.Checkpoint(model=model)
  graph_view = tf.train.TrackableView(probe)
  keys = {}
  for child_path, trackable in _walk(graph_view, probe, ()):
    if isinstance(trackable, tf.Variable):
      keys[id(trackable)] = "/".join(child_path) + "/.ATTRIBUTES/VARIABLE_VALUE"
  return [(v, keys.get(id(v))) for v in model.variables]


def _walk(view, obj, prefix, seen=None):
  seen = seen if seen is not None else set()
  if id(obj) in seen:
    return
  seen.add(id(obj))
  yield prefix, obj
  for child in view.children(obj).items():
    name, trackable = child
    yield from _walk(view, trackable, prefix + (name,), seen)
