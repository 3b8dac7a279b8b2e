"""Checkpoints: the last N, the best by mAP, resume, and fine-tuning initialisation.

`tf.train.CheckpointManager` writes each checkpoint's data before it rewrites the small
`checkpoint` state file (itself written to a temporary file and renamed), so an interrupted
save leaves the previous checkpoint as the newest valid one: `kill -9` at any moment, then the
same command resumes from it.
"""

import collections
import json
import os
import re

from absl import logging
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2
import yaml

BEST_DIR = "best"
BEST_FILE = "best_metrics.json"
# Scratch checkpoints of the non-chief workers (removed after each save).
WORKER_DIR = "worker_tmp"
# How each --checkpoint choice was selected (metrics.json `checkpoint_selection`). Periodic
# evaluation runs on the test partition, so `best` is selected on the test set: its numbers
# are optimistic, and the final checkpoint is the one to report and to fine-tune from.
SELECTION_LATEST = "latest: the newest checkpoint (the final one of a finished run)"
SELECTION_BEST = ("best: selected by test-set mAP during training (model selection on the "
                  "test set; report the final checkpoint)")
SELECTION_GIVEN = "given: the step or path passed"


def _in_best_dir(path: str) -> bool:
  """`DIR/best` or a checkpoint in it (`DIR/best/ckpt-N`)."""
  path = path.rstrip("/")
  return BEST_DIR in (os.path.basename(path), os.path.basename(os.path.dirname(path)))


def checkpoint_selection(checkpoint: str) -> str:
  """The `checkpoint_selection` label of a `--checkpoint` value ("", latest, best, step,
  path)."""
  if checkpoint in ("", "latest"):
    return SELECTION_LATEST
  if checkpoint == "best" or _in_best_dir(checkpoint):
    return SELECTION_BEST
  return SELECTION_GIVEN


class ResumeError(ValueError):
  """The run directory's checkpoints do not fit the model being trained."""


class CheckpointKeeper:
  """The newest `keep` checkpoints in `model_dir`, plus the best by mAP in `model_dir/best`.

  Under MultiWorkerMirroredStrategy every worker takes part in each save (saving reads
  mirrored variables through collective ops), but only the chief writes to `model_dir`; the
  other workers write to a scratch directory under `model_dir/worker_tmp/` that is removed
  after each save, so a shared `model_dir` holds exactly the chief's checkpoints. Every
  worker resumes from the newest checkpoint in `model_dir`.
  """

  def __init__(self, checkpoint: tf.train.Checkpoint, model_dir: str, keep: int,
               step_counter: tf.Variable, chief: bool = True, task: str = "worker"):
    self.checkpoint = checkpoint
    self.model_dir = model_dir
    self.chief = chief
    self.write_dir = model_dir if chief else os.path.join(model_dir, WORKER_DIR, task)
    self.manager = tf.train.CheckpointManager(checkpoint, self.write_dir,
                                              max_to_keep=keep if chief else 1,
                                              step_counter=step_counter)
    self.best_manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(self.write_dir, BEST_DIR), max_to_keep=1,
        step_counter=step_counter)
    best = self.best_metrics()
    self._best_map = float(best["mAP"]) if best else float("-inf")
    if chief:
      for directory, manager in ((self.write_dir, self.manager),
                                 (os.path.join(self.write_dir, BEST_DIR), self.best_manager)):
        removed = remove_interrupted_saves(directory, manager.checkpoints)
        if removed:
          logging.info("Removed %d files of an interrupted save in %s: %s", len(removed),
                       directory, ", ".join(removed[:4]))

  @property
  def latest(self) -> str | None:
    """The newest checkpoint in model_dir (the chief's)."""
    if self.chief:
      return self.manager.latest_checkpoint
    return tf.train.latest_checkpoint(self.model_dir)

  def restore_latest(self) -> str | None:
    """Restores the newest checkpoint in model_dir; returns its path or None."""
    path = tf.train.latest_checkpoint(self.model_dir)
    if path:
      try:
        self.checkpoint.restore(path).expect_partial()
      except (ValueError, AssertionError) as e:
        raise ResumeError(
            f"{self.model_dir} holds checkpoints of another model ({path}: "
            f"{str(e).splitlines()[0][:200]}). A run directory resumes only the configuration "
            f"that wrote it: resume it with --config_file={os.path.join(self.model_dir, 'config.yaml')}"
            ", or train this configuration into another --model_dir.") from None
      logging.info("Resumed from %s", path)
    return path

  def save(self, step: int) -> str:
    """Saves the training state as checkpoint `step`; returns the chief's path for it."""
    path = self.manager.save(checkpoint_number=step)
    if not self.chief:
      tf.io.gfile.rmtree(self.write_dir)
      path = os.path.join(self.model_dir, os.path.basename(path))
    return path

  def best_metrics(self) -> dict | None:
    """The metrics of the best checkpoint in model_dir/best, or None before the first one."""
    path = os.path.join(self.model_dir, BEST_DIR, BEST_FILE)
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)

  def maybe_save_best(self, step: int, metrics: dict) -> bool:
    """Saves the current state as the best checkpoint when its mAP beats the best so far.

    The decision uses the best mAP read when this keeper was made (or saved since), never
    the file another worker may be rewriting, so every worker decides alike.
    """
    if metrics["mAP"] <= self._best_map:
      return False
    self._best_map = float(metrics["mAP"])
    path = self.best_manager.save(checkpoint_number=step)
    if not self.chief:
      tf.io.gfile.rmtree(self.write_dir)
      return True
    record = dict(metrics, checkpoint=path, step=int(step), selection=SELECTION_BEST)
    target = os.path.join(self.model_dir, BEST_DIR, BEST_FILE)
    tmp = target + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
      json.dump(record, f, indent=1)
    tf.io.gfile.rename(tmp, target, overwrite=True)
    return True


_CHECKPOINT_FILE = re.compile(r"^(ckpt-\d+)(_temp.*|\.index|\.data-\d+-of-\d+)$")


def remove_interrupted_saves(directory: str, kept) -> list[str]:
  """Removes what a save killed half-way leaves in `directory`: TensorFlow's temporary
  `ckpt-N_temp*` files and folders, and `ckpt-N` data or index files of a checkpoint the
  state file does not list (written, but the save was cut before it was recorded). Only
  files named like checkpoints are touched; returns their names."""
  if not os.path.isdir(directory):
    return []
  listed = {os.path.basename(p) for p in kept}
  removed = []
  for name in sorted(os.listdir(directory)):
    match = _CHECKPOINT_FILE.match(name)
    if not match or (match.group(1) in listed and not match.group(2).startswith("_temp")):
      continue
    path = os.path.join(directory, name)
    if os.path.isdir(path):
      tf.io.gfile.rmtree(path)
    else:
      os.remove(path)
    removed.append(name)
  return removed


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


def resolve_init_checkpoint(init_checkpoint: str) -> str:
  """The checkpoint `trainer.init_checkpoint` names: a run's model_dir (its newest
  checkpoint), `DIR/best` (the best one, selected on the test set: a warning is logged), or a
  checkpoint path such as `DIR/ckpt-1200`."""
  if _in_best_dir(init_checkpoint):
    logging.warning("trainer.init_checkpoint=%s is the checkpoint selected by test-set mAP: "
                    "the fine-tuned model then depends on the test set of its source. Pass the "
                    "run directory (its final checkpoint) instead.", init_checkpoint)
  if tf.io.gfile.isdir(init_checkpoint):
    if tf.train.latest_checkpoint(init_checkpoint) is None:
      raise FileNotFoundError(
          f"trainer.init_checkpoint={init_checkpoint!r} is a directory without checkpoints; "
          "expected the model_dir of a finished run or a checkpoint path like DIR/ckpt-1200.")
    return tf.train.latest_checkpoint(init_checkpoint)
  try:
    return resolve_checkpoint(os.path.dirname(init_checkpoint), init_checkpoint)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"trainer.init_checkpoint={init_checkpoint!r}: {e} Expected the "
                            "model_dir of a finished run or a checkpoint path like "
                            "DIR/ckpt-1200.") from e


OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _object_paths(children: dict, variables) -> dict[int, tuple[str, ...]]:
  """id(variable) -> attribute path from a checkpoint root holding `children` (e.g.
  {"model": model})."""
  # Keras 3 variables are trackable children themselves (not tf.Variable instances):
  # match them by identity with model.variables.
  wanted = {id(v) for v in variables}
  root = tf.train.Checkpoint(**children)
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
  return _variable_keys(path, {"model": model}, model.variables)


def _variable_keys(path: str, children: dict, variables) -> list[tuple[object, str | None]]:
  """`checkpoint_variable_keys` for the variables of any root children (the model, the
  loss terms)."""
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

  paths = _object_paths(children, variables)
  return [(v, key_at(paths[id(v)])) for v in variables if id(v) in paths]


def restore_model_weights(model, path: str) -> tuple[int, int]:
  """Restores only the model's weights from a training checkpoint (fine-tuning, evaluation).

  The classifier of a checkpoint trained on another dataset has another shape; its
  variables are skipped with a log line, everything else must match. The optimizer state,
  step counter and loss-term state of the checkpoint are not read. Returns (restored,
  skipped) variable counts.
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
  return restored, skipped


def _source_run_data(path: str) -> tuple[str, object] | None:
  """(data.data_dir, data.split) of the run that wrote the checkpoint at `path` (its
  config.yaml, in the checkpoint's directory or, for `DIR/best/ckpt-N`, in DIR), or None
  when there is no readable config.yaml."""
  directory = os.path.dirname(path)
  if os.path.basename(directory.rstrip("/")) == BEST_DIR:
    directory = os.path.dirname(directory.rstrip("/"))
  config_path = os.path.join(directory, "config.yaml")
  try:
    with tf.io.gfile.GFile(config_path) as f:
      data = (yaml.safe_load(f) or {}).get("data", {})
    return str(data["data_dir"]), data.get("split", 0)
  except (tf.errors.NotFoundError, OSError, yaml.YAMLError, KeyError, TypeError,
          AttributeError):
    return None


def _same_directory(a: str, b: str) -> bool:
  return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def restore_loss_state(terms: dict, path: str, data_dir: str, split=0) -> list[str]:
  """Restores the state of the stateful loss terms (OIM's lookup table) from the training
  checkpoint at `path` (`trainer.init_checkpoint`), so a staged schedule carries it from one
  stage to the next.

  The state is indexed by training label, so it is restored only when it belongs to the same
  training identities:
  - the run that wrote the checkpoint (its config.yaml beside the checkpoint) trained on the
    same `data_dir` and `split`; otherwise (fine-tuning on another dataset or split) nothing
    is restored and a warning says so; without a readable config.yaml the shapes decide;
  - a variable restores only when the checkpoint holds it under the same term name with the
    same shape; one of another shape (another number of identities, another embedding
    width) keeps its initial value (OIM: zeros), with a warning naming both shapes.
  The terms' variables are not part of the model, so `restore_model_weights` never reads
  them. Returns the paths of the variables restored.

  Args:
    terms: term name -> loss term (a tf.Module), as the trainer's checkpoint tracks them.
    path: the checkpoint.
    data_dir, split: the training data of the run being initialised.
  """
  terms = {name: term for name, term in terms.items()
           if getattr(term, "stateful", False) and term.variables}
  if not terms:
    return []
  source = _source_run_data(path)
  if source is not None and not (_same_directory(source[0], data_dir)
                                 and str(source[1]) == str(split)):
    logging.warning(
        "Not restoring the loss-term state (%s) from %s: it was trained on data_dir=%s "
        "split=%s, this run trains on data_dir=%s split=%s, so its rows belong to other "
        "identities. The state starts from its initial value (OIM: a zero lookup table).",
        ", ".join(sorted(terms)), path, source[0], source[1], data_dir, split)
    return []
  reader = tf.train.load_checkpoint(path)
  shapes = reader.get_variable_to_shape_map()
  restored = []
  for name, term in sorted(terms.items()):
    for variable, key in _variable_keys(path, {name: term}, term.variables):
      label = variable.name.split(":")[0]
      if key is None:
        logging.warning("Loss term %r: %s is not in %s; it starts from its initial value.",
                        name, label, path)
        continue
      if list(shapes[key]) != list(variable.shape):
        logging.warning(
            "Loss term %r: not restoring %s from %s: checkpoint shape %s, this run's shape "
            "%s (another number of training identities or another feature width); it starts "
            "from its initial value.", name, label, path, list(shapes[key]),
            list(variable.shape))
        continue
      variable.assign(reader.get_tensor(key))
      restored.append(label)
  if restored:
    logging.info("Restored loss-term state from %s: %s", path, ", ".join(restored))
  return restored
