"""Checkpoints: the last N, the best by mAP, resume, and fine-tuning initialisation.

`tf.train.CheckpointManager` writes each checkpoint's data before it rewrites the small
`checkpoint` state file (itself written to a temporary file and renamed), so an interrupted
save leaves the previous checkpoint as the newest valid one: `kill -9` at any moment, then the
same command resumes from it.
"""

import collections
import json
import os

from absl import logging
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

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


OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _object_paths(model) -> dict[int, tuple[str, ...]]:
  """id(variable) -> attribute path from a checkpoint root holding the model as "model"."""
  # Keras 3 variables are trackable children themselves (not tf.Variable instances):
  # match them by identity with model.variables.
  wanted = {id(v) for v in model.variables}
  root = tf.train.Checkpoint(model=model)
  view = tf.train.TrackableView(root)
  paths, seen, queue = {}, set(), collections.deque([((), root)])
  while queue:
    path, obj = queue.popleft()
    if id(obj) in seen:
      continue
    seen.add(id(obj))
    if id(obj) in wanted:
      paths[id(obj)] = path
      continue
    for name, child in view.children(obj).items():
      queue.append((path + (name,), child))
  return paths


def checkpoint_variable_keys(model, path: str) -> list[tuple[object, str | None]]:
  """(model variable, its tensor key in the checkpoint at `path`, or None when it has none).

  Variables are found by following their attribute path (model/backbone/...) in the
  checkpoint's own object graph, which is how a restore finds them: a training checkpoint
  stores each tensor under its shortest path from the root, which for the trainable
  variables is the optimizer's, not the model's. Variables not reachable from the model's
  attributes (e.g. dropout RNG states) are left out.
  """
  reader = tf.train.load_checkpoint(path)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
  stored = reader.get_variable_to_shape_map()

  def key_at(object_path):
    node = graph.nodes[0]
    for name in object_path:
      children = {child.local_name: child.node_id for child in node.children}
      if name not in children:
        return None
      node = graph.nodes[children[name]]
    keys = [a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"]
    return keys[0] if keys and keys[0] in stored else None

  paths = _object_paths(model)
  return [(v, key_at(paths[id(v)])) for v in model.variables if id(v) in paths]


def restore_model_weights(model, path: str) -> None:
  """Restores only the model's weights from a training checkpoint (fine-tuning, evaluation).

  The classifier of a checkpoint trained on another dataset has another shape; its
  variables are skipped with a log line, everything else must match.
  """
  reader = tf.train.load_checkpoint(path)
  shapes = reader.get_variable_to_shape_map()
  restored = skipped = 0
  for variable, key in checkpoint_variable_keys(model, path):
    if key is None:
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
