"""The method contract: what a method declares, and the defaults every part of tfreid uses.

A method is one module, ``tfreid/models/<name>.py`` (or any module, named by its dotted
path in ``model.name``), plus an experiment file and, if it brings any, loss modules in
``tfreid/losses/``. The trainer, evaluation, export and the config core call the functions
below and never name a method.

The module:
  ``build(config, num_classes) -> keras.Model``     required.
  ``CONFIG_CLASS``                                  the dataclass of the section
                                                    ``model.<name>`` (typed, nearest-key
                                                    errors, rejected unknown keys).
  ``validate_config(config)``                       the method's own checks (its section,
                                                    backbones it takes, combinations).
  ``streams(config) -> tuple``                      the input streams it reads
                                                    (`tfreid.data.streams`): default
                                                    ``("clips",)``.
  ``TEST_TIME_KEYS``                                keys of its section that change no
                                                    weight (test-time switches), which
                                                    ``tfreid.evaluate --override`` may set
                                                    [none].

The model (every method optional; the default in brackets):
  ``call(inputs, training)``                        a dict of the declared streams -> a dict
                                                    of float outputs with ``embedding``
                                                    [B, D] (and what its losses read).
  ``tracklet_statistics(outputs[, frame_weight])``  per-clip values that are *summed* over
                                                    a tracklet's clips [``embedding``, and
                                                    with a learned metric its
                                                    ``distance_inputs`` or every output but
                                                    ``logits``]; with the keyword
                                                    ``frame_weight`` [B, T] (0 for a
                                                    repeated padding frame) it counts
                                                    every frame once.
  ``finish_tracklet(sums, count) -> dict``          the tracklet representation from those
                                                    sums (float32 tensors [N, ...]) and the
                                                    clip count (float32 [N]) [the mean].
  ``pairwise_distance(query, gallery) -> [Q, G]``   a learned metric on finished tracklet
                                                    representations (dicts) [none:
                                                    Euclidean on ``embedding``].
  ``distance_inputs``                               the representation keys the metric reads
                                                    [every key].
  ``distance_functions() -> {name: fn}``            distances a loss may use on training
                                                    outputs (``losses.<n>.distance``)
                                                    [``{"learned": pairwise_distance}``].
  ``summary_scalars(outputs, batch) -> dict``       scalars to log while training
                                                    (``metrics/<name>``) [none].
  ``attention_overlays(inputs, outputs) -> dict``   its attention drawn on its frames,
                                                    images [N, H, W, 3] in [0, 1]
                                                    (`tfreid.visualize`) [heat maps and
                                                    weight bars of ``attention*`` outputs].
  Keras ``add_loss`` terms are part of the objective (the term ``add_loss``).

Freezing is configuration (``trainer.freeze``: glob patterns over layer paths), see
:func:`freeze_layers`.

Sub-layers are attributes of the model (or of its layers): a layer held only in a plain
Python list or dict is not part of a TensorFlow checkpoint under Keras 3, so its weights would
be neither saved nor restored. The trainer and the restore path refuse such a model
(:func:`check_checkpointable`).
"""

from __future__ import annotations

import fnmatch
import inspect

import numpy as np
import tensorflow as tf

from tfreid.data import streams as streams_lib

DEFAULT_STREAMS = ("clips",)


def method_module(config):
  """The module of `config.model.name`."""
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  return cfg.import_plugin("tfreid.models", config.model.name, "model")


def input_streams(config) -> tuple[str, ...]:
  """The streams the model of `config` reads, checked against `tfreid.data.streams`."""
  module = method_module(config)
  declared = module.streams(config) if hasattr(module, "streams") else DEFAULT_STREAMS
  return streams_lib.check_names(declared, f"model {config.model.name!r}")


def test_time_keys(config) -> tuple[str, ...]:
  """The full keys (``model.<section>.<key>``) of the method's test-time switches."""
  module = method_module(config)
  section = config.model.section_key
  return tuple(f"model.{section}.{key}" for key in getattr(module, "TEST_TIME_KEYS", ()))


def has_learned_metric(model) -> bool:
  return callable(getattr(model, "pairwise_distance", None))


def takes_frame_weight(model) -> bool:
  """Whether the model's `tracklet_statistics` takes the `frame_weight` keyword."""
  method = getattr(model, "tracklet_statistics", None)
  if method is None:
    return False
  try:
    return "frame_weight" in inspect.signature(method).parameters
  except (TypeError, ValueError):
    return False


def tracklet_statistics(model, outputs: dict, frame_weight=None) -> dict:
  """Per-clip values summed over a tracklet's clips (float32).

  frame_weight: float32 [B, T], 1 for a frame's first appearance among its tracklet's test
  clips and 0 for a repeat (a tracklet's last clip is padded with repeats); passed to a
  model whose `tracklet_statistics` takes it, so that sums over frames count each frame
  once."""
  if hasattr(model, "tracklet_statistics"):
    if frame_weight is not None and takes_frame_weight(model):
      stats = model.tracklet_statistics(outputs, frame_weight=frame_weight)
    else:
      stats = model.tracklet_statistics(outputs)
  else:
    keys = ["embedding"]
    if has_learned_metric(model):
      # What the metric reads: its declared inputs, or every output but the class scores.
      wanted = getattr(model, "distance_inputs", ()) or [k for k in outputs if k != "logits"]
      keys += [k for k in wanted if k not in keys]
    stats = {k: outputs[k] for k in keys}
  return {k: tf.cast(v, tf.float32) for k, v in stats.items()}


def uses_default_merge(model) -> bool:
  return not hasattr(model, "finish_tracklet")


def finish_tracklet(model, sums: dict, count) -> dict:
  """Tracklet representations from summed statistics.

  sums: name -> float64 [N, ...] (numpy or tensors); count: [N] clips per tracklet. The
  default (the mean) divides in float64; a model's own `finish_tracklet` receives float32
  tensors. Returns float32 values of the same kind (numpy in, numpy out).
  """
  as_numpy = all(isinstance(v, np.ndarray) for v in sums.values())
  if uses_default_merge(model):
    out = {}
    for key, value in sums.items():
      if as_numpy:
        c = np.asarray(count, np.float64).reshape((-1,) + (1,) * (value.ndim - 1))
        out[key] = (value / c).astype(np.float32)
      else:
        value = tf.cast(value, tf.float64)
        c = tf.reshape(tf.cast(count, tf.float64), [-1] + [1] * (value.shape.rank - 1))
        out[key] = tf.cast(value / c, tf.float32)
    return out
  result = model.finish_tracklet({k: tf.cast(v, tf.float32) for k, v in sums.items()},
                                 tf.cast(count, tf.float32))
  result = {k: tf.cast(v, tf.float32) for k, v in result.items()}
  return {k: v.numpy() for k, v in result.items()} if as_numpy else result


def distance_input_keys(model, representation_keys) -> tuple[str, ...]:
  """The representation keys a learned metric reads (all of them by default)."""
  keys = tuple(getattr(model, "distance_inputs", ()) or sorted(representation_keys))
  missing = [k for k in keys if k not in representation_keys]
  if missing:
    raise ValueError(f"the model's distance reads {missing}, which its tracklet "
                     f"representation ({sorted(representation_keys)}) lacks.")
  return keys


def resolve_metric(config, model) -> str:
  """The evaluation metric: "learned" (the model's pairwise_distance) or euclidean,
  sqeuclidean, cosine, from `eval.distance` ("model": the model's own metric)."""
  wanted = config.eval.distance
  if wanted in ("model", "learned"):
    if has_learned_metric(model):
      return "learned"
    if wanted == "learned":
      raise ValueError(f"eval.distance=learned but model {config.model.name!r} has no "
                       "pairwise_distance; use model, euclidean, sqeuclidean or cosine.")
    return "euclidean"
  return wanted


def distance_functions(model) -> dict:
  """Named distances of (outputs_a, outputs_b) -> [A, B] a loss may use."""
  if hasattr(model, "distance_functions"):
    return dict(model.distance_functions())
  return {"learned": model.pairwise_distance} if has_learned_metric(model) else {}


def summary_scalars(model, outputs: dict, batch: dict) -> dict:
  if not hasattr(model, "summary_scalars"):
    return {}
  return {k: tf.cast(tf.reduce_mean(v), tf.float32)
          for k, v in model.summary_scalars(outputs, batch).items()}


def seed_generator_states(model) -> dict:
  """The state variables of the model's random-number generators (dropout masks ...) by a
  stable name; Keras does not checkpoint them, the trainer does."""
  states = {}
  for i, layer in enumerate(model._flatten_layers()):  # pylint: disable=protected-access
    for j, generator in enumerate(getattr(layer, "_seed_generators", [])):
      states[f"{i}_{j}"] = generator.state
  return states


class UnsavedVariablesError(ValueError):
  """The model has variables a checkpoint of it would not hold."""


def unsaved_variables(model) -> list[str]:
  """Paths of the model's variables that `tf.train.Checkpoint(model=model)` does not reach
  from the model's attributes (layers held in plain lists or dicts), random-number
  generator states left out (the trainer checkpoints those itself)."""
  root = tf.train.Checkpoint(model=model)  # the view holds only a weak reference to it
  reached = {id(obj) for obj in tf.train.TrackableView(root).descendants()}
  generators = {id(state) for state in seed_generator_states(model).values()}
  return [v.path for v in model.variables if id(v) not in reached and id(v) not in generators]


def check_checkpointable(model) -> None:
  """Raises UnsavedVariablesError naming the variables a checkpoint would miss."""
  missing = unsaved_variables(model)
  if missing:
    raise UnsavedVariablesError(
        f"{len(missing)} variables of the model would be missing from its checkpoints (e.g. "
        f"{', '.join(missing[:3])}): their layers are held in a plain Python list or dict, "
        "which Keras 3 does not add to a TensorFlow checkpoint. Hold each sub-layer as an "
        "attribute (self.part_0 = ..., or setattr(self, f'part_{i}', layer)) as "
        "docs/adding_a_method.md shows.")


def freeze_layers(model, patterns) -> list[str]:
  """Sets ``trainable=False`` on every layer whose path matches a glob pattern; returns the
  frozen layers' paths. A frozen BatchNorm runs in inference mode (Keras 3), so its moving
  statistics stay as they are. A pattern matching no layer is an error naming some paths."""
  if not patterns:
    return []
  layers = [(layer.path, layer) for layer in model._flatten_layers(include_self=False)  # pylint: disable=protected-access
            if getattr(layer, "path", None)]
  frozen = []
  for pattern in patterns:
    hits = [(path, layer) for path, layer in layers if fnmatch.fnmatchcase(path, pattern)]
    if not hits:
      shown = ", ".join(sorted({p.rsplit("/", 1)[0] + "/*" for p, _ in layers})[:12])
      raise ValueError(f"trainer.freeze pattern {pattern!r} matches no layer of the model; "
                       f"layer paths look like: {shown}.")
    for path, layer in hits:
      layer.trainable = False
      frozen.append(path)
  return sorted(set(frozen))
