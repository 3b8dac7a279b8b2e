"""The SavedModel export module: a `tf.Module` around a trained model, with its signatures.

Signatures (all take uint8 RGB pixels 0..255; the model normalises them itself). Every
stream the model declares (`tfreid.models.input_streams`, `tfreid.data.streams`) is an input
of the clip and tracklet signatures, beside the frames:

- ``serving_default``: ``clips`` uint8 [B, T, H, W, 3], T = data.seq_len, any frame size
  H x W (and ``flow`` float32 [B, T, H, W, 2], ``keypoints`` float32 [B, T, 14, 3] when
  the model reads them) -> ``{"embedding": float32 [B, D]}``, one embedding per clip.
- ``embed_tracklet``: ``frames`` uint8 [N, H, W, 3], N >= 1 frames of one tracklet, any
  frame size (and ``flow`` [N, H, W, 2], ``keypoints`` [N, 14, 3] of the same frames) ->
  the tracklet representation ``[1, ...]`` (``embedding`` float32 [1, D]; models with a
  learned metric add every other key their ``pairwise_distance`` reads). The tracklet is
  cut into test clips by the evaluation's sampler (data.test_sampler and
  data.test_sample_stride, `tfreid.data.samplers.test_clips`: for ``dense`` at stride 1, the
  ceil(N / T) non-overlapping clips, the last one padded cyclically), the clips go through the model in batches of
  export.tracklet_batch_size inside a `tf.while_loop` (one batch in memory at a time), and
  their statistics are summed and finished by the model's merge
  (`tfreid.models.contract.finish_tracklet`), exactly as
  `tfreid.training.evaluation.extract_features` does.
- Flow is in source-frame pixels (dx, dy); resized with the frames, its vectors are scaled
  by (W / w, H / h). Keypoints are (x, y, visibility) in source-frame pixels, the centre of
  pixel k at k; resized with the frames, x -> (x + 1/2) W / w - 1/2 (likewise y), as the
  pipeline maps them (`tfreid.data.augment.transform_keypoints`). A frame whose 14 x 3
  values are all zero has no keypoints and stays all zero.
- ``distance`` (only for models with ``pairwise_distance``, STYLE.md convention 2):
  ``query_<key>`` [Q, ...] and ``gallery_<key>`` [G, ...] for every per-tracklet output key
  of ``embed_tracklet`` (stack the outputs of several tracklets along the first axis) ->
  ``{"distance": float32 [Q, G]}``.

Frames of another size than the model's data.height x data.width are resized inside with
the test pipeline's rule (`tfreid.data.augment.sample_maps` with no augmentation: nearest
neighbour with pixel centres at half-integers, uint8 throughout), so a frame fed here gives
the same model input as the same frame read by `tfreid.data.pipeline.make_test_dataset`.

Input checks: the signature's declared input spec is enforced by TensorFlow's Python
binding for numpy inputs only; TF Serving (and a loaded signature called with tensors)
feeds tensors straight into the graph, which does not check shapes. Every signature
therefore also asserts rank, fixed sizes and channel count at run time (`tf.debugging`
assertions, the rank computed so that graph optimisation cannot fold it into the declared
one) with a message that names the expected spec. `validate_inputs` makes
the same checks in Python for local callers, before any TensorFlow call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import numpy as np
import tensorflow as tf

from tfreid.data import augment
from tfreid.data import samplers
from tfreid.data import streams as streams_lib
from tfreid.models import contract

SERVING_DEFAULT = "serving_default"
EMBED_TRACKLET = "embed_tracklet"
DISTANCE = "distance"

# Symbolic names of the free axes of each signature input, for messages and the model card.
_AXIS_NAMES = {"clips": ("B", "T", "H", "W", "C"), "frames": ("N", "H", "W", "C")}
_INPUT_HELP = {
    "clips": "B clips of T frames each, any frame size H x W, RGB uint8 0..255",
    "frames": "the N >= 1 frames of one tracklet, any frame size H x W, RGB uint8 0..255",
    "flow": "optical flow (dx, dy) in source-frame pixels of each frame, the same frames and "
            "size as the RGB input",
    "keypoints": "14 joints (x, y, visibility) per frame in source-frame pixels, all zero "
                 "for a frame without keypoints",
}


class ExportError(ValueError):
  """The model or configuration cannot be exported as asked."""


@dataclasses.dataclass
class _ShapeOnly:
  """The frame size and clip length `tfreid.data.streams.dummy_inputs` reads."""
  height: int
  width: int
  seq_len: int


def _axis_names(name: str, rank: Optional[int] = None) -> tuple[str, ...]:
  if name in _AXIS_NAMES:
    return _AXIS_NAMES[name]
  if name in ("flow", "keypoints"):
    # Per clip (serving_default) or per tracklet frame (embed_tracklet), by rank.
    lead = ("B", "T") if rank == (5 if name == "flow" else 4) else ("N",)
    return lead + (("H", "W", "C") if name == "flow" else ("J", "K"))
  if name.startswith("query_"):
    return ("Q",)
  if name.startswith("gallery_"):
    return ("G",)
  return ()


def describe_spec(spec: tf.TensorSpec, axis_names=None) -> str:
  """'uint8 [B, 4, H, W, 3]': dtype and shape with free axes named (or '?').

  `axis_names` names the axes (default: by the spec's name, e.g. clips: B, T, H, W, C).
  """
  names = axis_names if axis_names is not None else _axis_names(spec.name or "",
                                                                 spec.shape.rank)
  dims = []
  for i, dim in enumerate(spec.shape.as_list()):
    dims.append(str(dim) if dim is not None else (names[i] if i < len(names) else "?"))
  return f"{spec.dtype.name} [{', '.join(dims)}]"


def resize_frames(frames: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """uint8 [..., h, w, C] -> [..., height, width, C] by the test pipeline's resize.

  The test pipeline (`tfreid.data.pipeline.make_test_dataset`) reads frame row
  ``floor((i + 1/2) * h / height)`` for output row i, likewise for columns
  (`tfreid.data.augment.sample_maps` with `augment.identity_params()`); this is that
  computation for every frame of `frames` at once. Frames already of the target size are
  returned unchanged (the maps are then the identity).
  """
  rank = frames.shape.rank
  shape = tf.shape(frames)
  window = tf.stack([0, 0, shape[rank - 3], shape[rank - 2]])
  spec = augment.ClipSpec(height=height, width=width, seq_len=1)
  rows, cols = augment.sample_maps(window, augment.identity_params(), spec, relative=False)
  resized = tf.gather(tf.gather(frames, rows, axis=rank - 3), cols, axis=rank - 2)
  out_shape = frames.shape[:rank - 3].concatenate([height, width]).concatenate(
      frames.shape[rank - 1:])
  return tf.ensure_shape(resized, out_shape)


def resize_keypoints(keypoints: tf.Tensor, h, w, height: int, width: int) -> tf.Tensor:
  """Keypoints [..., 14, 3] in h x w source pixels -> in height x width model pixels.

  The pipeline's mapping with no augmentation (`tfreid.data.augment.transform_keypoints`
  with the whole frame as window): x -> (x + 1/2) * width / w - 1/2, likewise y; the
  visibility is kept, and a frame whose values are all zero (no keypoints) stays zero.
  """
  keypoints = tf.cast(keypoints, tf.float32)
  sx = width / tf.cast(w, tf.float32)
  sy = height / tf.cast(h, tf.float32)
  x = (keypoints[..., 0] + 0.5) * sx - 0.5
  y = (keypoints[..., 1] + 0.5) * sy - 0.5
  present = tf.reduce_any(tf.not_equal(keypoints, 0.0), axis=[-2, -1], keepdims=True)
  out = tf.stack([x, y, keypoints[..., 2]], -1)
  return tf.where(present, out, tf.zeros_like(out))


def _assert_same_frames(inputs: dict, signature: str, axes: int) -> None:
  """Every stream has the frames of `clips` (the first `axes - 2` axes for flow: batch, T or
  N; and H, W for flow): a run-time check, as for the specs."""
  clips = tf.shape(inputs["clips"])
  lead = axes - 3  # 2 (B, T) for clips, 1 (N) for a tracklet's frames
  for name in ("flow", "keypoints"):
    if name not in inputs:
      continue
    shape = tf.shape(inputs[name])
    same = clips[:lead + (2 if name == "flow" else 0)]
    tf.debugging.assert_equal(
        shape[:lead + (2 if name == "flow" else 0)], same,
        message=f"signature {signature!r}: input {name!r} must cover the same frames as the "
                f"RGB input (the same leading axes{' and frame size' if name == 'flow' else ''}).")


def _assert_input(x: tf.Tensor, signature: str, spec: tf.TensorSpec,
                  min_leading: int = 0) -> tf.Tensor:
  """`x` after run-time checks of rank, fixed sizes and channels against `spec`."""
  expected = describe_spec(spec)
  what = f"signature {signature!r}: input {spec.name!r} must be {expected} " \
         f"({_INPUT_HELP.get(spec.name, 'see the model card')})"
  dims = spec.shape.as_list()
  shape = tf.shape(x)
  # The rank as a data-dependent count (the entries of the run-time shape that are >= 0,
  # i.e. all of them): tf.rank(x) and the like are folded into the declared rank by
  # TensorFlow and its graph optimiser, and TF Serving does not enforce the declared spec
  # on the tensors it feeds.
  rank = tf.shape(tf.where(shape >= 0), out_type=tf.int32)[0]
  rank_check = tf.debugging.assert_equal(
      rank, len(dims), message=f"{what}; got a tensor of another rank.")
  with tf.control_dependencies([rank_check]):
    checks = []
    for axis, dim in enumerate(dims):
      if dim is not None:
        name = _axis_names(spec.name, len(dims))[axis:axis + 1] or ("?",)
        checks.append(tf.debugging.assert_equal(
            shape[axis], dim, message=f"{what}; got another size on axis {axis} "
            f"({name[0]})."))
    if min_leading:
      checks.append(tf.debugging.assert_greater_equal(
          shape[0], min_leading, message=f"{what}; got an empty axis 0 (it needs at "
          f"least {min_leading})."))
  with tf.control_dependencies(checks):
    return tf.identity(x)


def _tf_variable(variable) -> tf.Variable:
  """The `tf.Variable` holding a Keras 3 variable's value (or `variable` itself)."""
  inner = variable if isinstance(variable, tf.Variable) else getattr(variable, "value", None)
  if not isinstance(inner, tf.Variable):
    raise ExportError(f"model variable {getattr(variable, 'path', variable)!r} is not backed "
                      "by a tf.Variable: export needs the TensorFlow backend of Keras "
                      "(KERAS_BACKEND=tensorflow).")
  return inner


class ReidExportModule(tf.Module):
  """Serving module of a video ReID model (Model Garden's export_base pattern).

  ``serve``, ``embed_tracklet`` and (models with ``pairwise_distance``) ``distance`` are
  `tf.function`s with fixed input signatures (`input_specs`); `get_signatures` maps the
  signature names to them for `tf.saved_model.save`. After loading, the signatures are in
  ``loaded.signatures`` and the same functions are attributes of the loaded object
  (``loaded.embed_tracklet(frames)``).

  The module tracks the model's variables (``model_variables``, the `tf.Variable` behind
  each Keras variable), not the Keras model object: the SavedModel then holds the
  signatures and the weights only, saving does not trace the Keras model's own default
  signature, and the graph's restore op writes the very variables the signatures read.
  (Tracking the Keras variables themselves writes a second copy of each variable that only
  TensorFlow's Python loader reconciles: the C++ loader of TF Serving then runs the
  signatures on variables that were never restored.)

  Args:
    model: a tfreid model (models/__init__.py contract): ``model({"clips": uint8
      [B, T, H, W, 3]}, training=False)`` returns a dict with ``embedding``.
    height, width: the model's frame size (data.height, data.width).
    seq_len: frames per clip T (data.seq_len).
    test_sampler: data.test_sampler, how embed_tracklet cuts a tracklet into clips.
    test_stride: data.test_sample_stride, the frame step inside those clips.
    tracklet_batch_size: clips per model call inside embed_tracklet
      (export.tracklet_batch_size).

  Example:
    >>> module = ReidExportModule(model, height=256, width=128, seq_len=8)
    >>> tf.saved_model.save(module, "out/1", signatures=module.get_signatures())
  """

  def __init__(self, model, height: int, width: int, seq_len: int,
               test_sampler: str = "dense", tracklet_batch_size: int = 16,
               streams=("clips",), metric: Optional[str] = None,
               name: Optional[str] = "reid_export", test_stride: int = 1):
    super().__init__(name=name)
    if test_sampler not in samplers.TEST_SAMPLERS:
      raise ExportError(f"test_sampler={test_sampler!r} is not a test sampler; expected one "
                        f"of {', '.join(samplers.TEST_SAMPLERS)}.")
    for key, value in (("height", height), ("width", width), ("seq_len", seq_len),
                       ("tracklet_batch_size", tracklet_batch_size),
                       ("test_stride", test_stride)):
      if int(value) < 1:
        raise ExportError(f"{key} must be >= 1, got {value}.")
    # Not tracked (object.__setattr__): only the variables below go into the SavedModel.
    object.__setattr__(self, "_model", model)
    self.height = int(height)
    self.width = int(width)
    self.seq_len = int(seq_len)
    self.test_sampler = test_sampler
    if int(test_stride) > 1 and test_sampler != "dense":
      raise ExportError(f"test_stride={test_stride} needs test_sampler='dense', got "
                        f"{test_sampler!r}.")
    self.test_stride = int(test_stride)
    self.tracklet_batch_size = int(tracklet_batch_size)
    self.streams = streams_lib.check_names(streams, "the exported model")
    # metric: "learned" exports the `distance` signature; None: whenever the model has a
    # pairwise_distance (callers with a config pass contract.resolve_metric's answer).
    if metric is None:
      metric = "learned" if contract.has_learned_metric(model) else "euclidean"
    if metric == "learned" and not contract.has_learned_metric(model):
      raise ExportError("metric='learned' but the model has no pairwise_distance.")
    self.metric = metric
    self.has_distance = metric == "learned"
    # One eager call builds the model and records its outputs (names, shapes).
    dummy = _ShapeOnly(self.height, self.width, self.seq_len)
    probe = model(streams_lib.dummy_inputs(self.streams, dummy), training=False)
    if not isinstance(probe, Mapping) or "embedding" not in probe:
      raise ExportError("the model must return a dict with 'embedding' (models/__init__.py "
                        f"contract); it returned {type(probe).__name__} "
                        f"{sorted(probe) if isinstance(probe, Mapping) else ''}.")
    self.model_variables = [_tf_variable(v) for v in model.variables]  # all built now
    # Per-clip statistics the tracklet merge sums, and the tracklet representation it
    # finishes (the embedding, plus what a learned metric reads).
    statistics = contract.tracklet_statistics(model, probe)
    self.statistic_shapes = {k: tuple(v.shape[1:]) for k, v in statistics.items()}
    finished = contract.finish_tracklet(
        model, {k: tf.cast(v, tf.float64) for k, v in statistics.items()}, tf.ones([1]))
    keys = ["embedding"]
    if self.has_distance:
      keys += [k for k in contract.distance_input_keys(model, finished) if k not in keys]
    self.tracklet_keys = tuple(sorted(keys))
    self.distance_keys = (contract.distance_input_keys(model, finished)
                          if self.has_distance else ())
    self.tracklet_shapes = {k: tuple(finished[k].shape[1:]) for k in self.tracklet_keys}
    specs = self.input_specs()
    self.serve = tf.function(self._serve, input_signature=list(specs[SERVING_DEFAULT].values()))
    self.embed_tracklet = tf.function(self._embed_tracklet,
                                      input_signature=list(specs[EMBED_TRACKLET].values()))
    if self.has_distance:
      query = {k: specs[DISTANCE][f"query_{k}"] for k in self.distance_keys}
      gallery = {k: specs[DISTANCE][f"gallery_{k}"] for k in self.distance_keys}
      self.distance = tf.function(self._distance, input_signature=[query, gallery])

  @property
  def model(self):
    """The Keras model being exported."""
    return self._model

  # --------------------------------------------------------------------- input specs

  def input_specs(self) -> dict[str, dict[str, tf.TensorSpec]]:
    """Input TensorSpecs of every signature, by signature name then input name (in the
    order of the signature's positional arguments)."""
    clip, frame = {}, {}
    for name in self.streams:
      stream = streams_lib.STREAMS[name]
      clip[name] = tf.TensorSpec([None, self.seq_len] + list(stream.frame_shape),
                                 stream.dtype, name=name)
      frame_name = "frames" if name == "clips" else name
      frame[frame_name] = tf.TensorSpec([None] + list(stream.frame_shape), stream.dtype,
                                        name=frame_name)
    specs = {SERVING_DEFAULT: clip, EMBED_TRACKLET: frame}
    if self.has_distance:
      specs[DISTANCE] = {
          f"{side}_{key}": tf.TensorSpec((None,) + self.tracklet_shapes[key], tf.float32,
                                         name=f"{side}_{key}")
          for side in ("query", "gallery") for key in self.distance_keys}
    return specs

  def output_specs(self) -> dict[str, dict[str, tf.TensorSpec]]:
    """Output TensorSpecs of every signature."""
    specs = {
        SERVING_DEFAULT: {"embedding": tf.TensorSpec(
            (None,) + self.tracklet_shapes["embedding"], tf.float32, name="embedding")},
        EMBED_TRACKLET: {k: tf.TensorSpec((1,) + self.tracklet_shapes[k], tf.float32, name=k)
                         for k in self.tracklet_keys},
    }
    if self.has_distance:
      specs[DISTANCE] = {"distance": tf.TensorSpec([None, None], tf.float32, name="distance")}
    return specs

  # ------------------------------------------------------------------------ compute

  def _model_inputs(self, inputs: dict) -> dict[str, tf.Tensor]:
    """Clip streams [B, T, ...] of any frame size -> the model's inputs at its size."""
    clips = inputs["clips"]
    shape = tf.shape(clips)
    h, w = shape[2], shape[3]
    out = {"clips": resize_frames(clips, self.height, self.width)}
    if "flow" in inputs:
      gain = tf.stack([self.width / tf.cast(w, tf.float32),
                       self.height / tf.cast(h, tf.float32)])
      out["flow"] = resize_frames(tf.cast(inputs["flow"], tf.float32), self.height,
                                  self.width) * gain
    if "keypoints" in inputs:
      out["keypoints"] = resize_keypoints(inputs["keypoints"], h, w, self.height, self.width)
    return out

  def _serve(self, *tensors):
    """Clip streams [B, T, ...] -> {"embedding": float32 [B, D]}."""
    specs = self.input_specs()[SERVING_DEFAULT]
    inputs = {name: _assert_input(x, SERVING_DEFAULT, spec)
              for (name, spec), x in zip(specs.items(), tensors)}
    _assert_same_frames(inputs, SERVING_DEFAULT, axes=4)
    outputs = self._model(self._model_inputs(inputs), training=False)
    return {"embedding": tf.cast(outputs["embedding"], tf.float32)}

  def _embed_tracklet(self, *tensors):
    """The N frames of one tracklet (and their other streams) -> its representation
    [1, ...]."""
    specs = self.input_specs()[EMBED_TRACKLET]
    inputs = {("clips" if name == "frames" else name):
              _assert_input(x, EMBED_TRACKLET, spec, min_leading=1)
              for (name, spec), x in zip(specs.items(), tensors)}
    _assert_same_frames(inputs, EMBED_TRACKLET, axes=3)
    clip_index = samplers.test_clips(self.test_sampler, tf.shape(inputs["clips"])[0],
                                     self.seq_len, self.test_stride)
    frame_weight = samplers.first_occurrences(clip_index)
    num_clips = tf.shape(clip_index)[0]
    step = self.tracklet_batch_size

    def batch_sum(start):
      rows = clip_index[start:start + step]
      clips = {k: tf.gather(v, rows) for k, v in inputs.items()}  # [b, T, ...]
      outputs = self._model(self._model_inputs(clips), training=False)
      statistics = contract.tracklet_statistics(self._model, outputs,
                                                frame_weight[start:start + step])
      # Summed in float64, as extract_features does, then finished once.
      return {k: tf.reduce_sum(tf.cast(v, tf.float64), 0, keepdims=True)
              for k, v in statistics.items()}

    def body(start, sums):
      new = batch_sum(start)
      return start + step, {k: sums[k] + new[k] for k in sums}

    zeros = {k: tf.zeros((1,) + shape, tf.float64) for k, shape in self.statistic_shapes.items()}
    # parallel_iterations=1: one batch of clips goes through the model at a time.
    _, sums = tf.while_loop(lambda start, _: start < num_clips, body, (tf.constant(0), zeros),
                            parallel_iterations=1)
    finished = contract.finish_tracklet(self._model, sums, tf.reshape(num_clips, [1]))
    return {k: finished[k] for k in self.tracklet_keys}

  def _distance(self, query, gallery):
    """The model's pairwise_distance of per-tracklet outputs -> {"distance": [Q, G]}."""
    specs = self.input_specs()[DISTANCE]
    query = {k: _assert_input(v, DISTANCE, specs[f"query_{k}"]) for k, v in query.items()}
    gallery = {k: _assert_input(v, DISTANCE, specs[f"gallery_{k}"])
               for k, v in gallery.items()}
    return {"distance": tf.cast(self._model.pairwise_distance(query, gallery), tf.float32)}

  # --------------------------------------------------------------------- signatures

  def get_signatures(self) -> dict[str, Any]:
    """Signature name -> `tf.function` (fixed input signature), for
    `tf.saved_model.save(module, path, signatures=module.get_signatures())`.

    The functions themselves (not concrete functions traced beforehand): the save traces
    each once, in its save context, for the signature and the module attribute alike.
    """
    signatures = {SERVING_DEFAULT: self.serve, EMBED_TRACKLET: self.embed_tracklet}
    if self.has_distance:
      signatures[DISTANCE] = self.distance
    return signatures


# ------------------------------------------------------------------- Python checks


def _signature_specs(signature) -> dict[str, tf.TensorSpec]:
  if isinstance(signature, Mapping):
    return dict(signature)
  structured = getattr(signature, "structured_input_signature", None)
  if structured is None:
    raise TypeError("validate_inputs expects a signature (e.g. loaded.signatures"
                    "['serving_default']) or a dict of input name -> tf.TensorSpec, got "
                    f"{type(signature).__name__}.")
  return dict(structured[1])


def validate_inputs(signature, inputs: Mapping[str, Any],
                    signature_name: str = "") -> dict[str, np.ndarray]:
  """Checks inputs against a signature's spec in Python; returns them as numpy arrays.

  Args:
    signature: a loaded signature (``loaded.signatures["serving_default"]``) or a dict of
      input name -> `tf.TensorSpec` (e.g. ``ReidExportModule.input_specs()[name]``).
    inputs: input name -> array-like.
    signature_name: used in messages.

  Returns:
    input name -> numpy array of the spec's dtype (the arrays given, not copied when they
    already have it), ready for ``signature(**arrays)``.

  Raises:
    ValueError: a missing or unknown input, a wrong rank, a wrong size on a fixed axis
      (T, channels) or an empty input, naming the expected spec.
    TypeError: a wrong dtype (e.g. float frames where uint8 pixels are expected).
  """
  specs = _signature_specs(signature)
  label = f"signature {signature_name!r}" if signature_name else "the signature"
  missing = sorted(set(specs) - set(inputs))
  unknown = sorted(set(inputs) - set(specs))
  if missing or unknown:
    expected = ", ".join(f"{k}: {describe_spec(s)}" for k, s in sorted(specs.items()))
    raise ValueError(f"{label} takes inputs {{{expected}}}; missing {missing}, unknown "
                     f"{unknown}.")
  arrays = {}
  for key, spec in specs.items():
    value = inputs[key]
    array = value.numpy() if isinstance(value, tf.Tensor) else np.asarray(value)
    expected = describe_spec(spec)
    help_text = _INPUT_HELP.get(key, "")
    where = f"{label}: input {key!r} must be {expected}" + (f" ({help_text})" if help_text
                                                               else "")
    if array.dtype != spec.dtype.as_numpy_dtype:
      hint = (" Pass the raw 0..255 pixels as np.uint8 (the model normalises them itself)."
              if spec.dtype == tf.uint8 else f" Convert with np.asarray(x, np.{spec.dtype.name}).")
      raise TypeError(f"{where}; got dtype {array.dtype}.{hint}")
    dims = spec.shape.as_list()
    if array.ndim != len(dims):
      raise ValueError(f"{where}; got rank {array.ndim} (shape {list(array.shape)}).")
    for axis, dim in enumerate(dims):
      if dim is not None and array.shape[axis] != dim:
        raise ValueError(f"{where}; got shape {list(array.shape)} (axis {axis} must be "
                         f"{dim}).")
    if array.size == 0:
      raise ValueError(f"{where}; got an empty array of shape {list(array.shape)}.")
    arrays[key] = array
  return arrays
