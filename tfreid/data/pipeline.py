"""tf.data pipelines: PK training batches of augmented clips, and test clips of a partition.

Training (`make_train_dataset`), following RandomIdentitySampler (torchreid /
Video-Person-ReID) and the PK batches of nonlocal_i3d section 3.3:
- an epoch is a shuffled list of the training identities, cut into groups of
  P = data.num_identities; `steps_per_epoch` = num_train_ids // P (the identities left
  over are not used in that epoch; every other identity is seen exactly once);
- each identity contributes K = data.num_instances tracklets, drawn without replacement,
  or with replacement when it has fewer than K (logged once);
- each tracklet contributes one clip (samplers.py, data.train_sampler), decoded and
  augmented with one draw per clip (augment.py).
When an epoch starts, all its draws are made at once from stateless seeds derived from
(seed, input pipeline, epoch): the identity order, each identity's K tracklets, each clip's
frames (`samplers.sample_train_clips`), augmentation parameters and their plan
(`augment.params_from_uniform`, `augment.plan_clips`). The same seed gives the same batches
whatever the parallelism, and each clip's decoding runs only the ops its plan needs.

Multiple replicas: with a `strategy`, `strategy.distribute_datasets_from_function` calls
`train_dataset_fn` once per input pipeline. Every replica gets whole identities: a
per-replica batch is P / num_replicas identities x K clips (consecutive per-replica
batches go to consecutive replicas, so a global step's P identities are all distinct and
batch-hard mining inside a replica sees all K clips of each of its identities). P must be
divisible by the number of replicas. With several input pipelines (multi-worker), pipeline
p reads the shard files p, p + n, ... (n pipelines) of the train partition, and samples
identities from the tracklets in them; when there are fewer shard files than pipelines,
every pipeline reads every shard and takes the identities p, p + n, ... of the sorted
identity list instead.

Training and test clips alike carry the polluted protocol's black box when
data.occlusion_box > 0 (stal's Table VII; augment.py item 7): each clip knows its frames'
(tracklet id, frame index), which fix each frame's box.

Test (`make_test_dataset`): every clip of every tracklet of a partition
(data.test_sampler, frames data.test_sample_stride apart), resized to (H, W), batched by
data.test_batch_size. A record is read once and its clips are produced one by one, so a
900-frame tracklet never sits in one batch; memory is bounded by a few records. Each element's `index` is the position of its
tracklet in the partition order (reader.py); `test_clips_per_tracklet` gives how many clips
each tracklet has, so a caller averages the clip features of each tracklet. The order of
the elements is the same on every run (clips of a few neighbouring tracklets interleave).

Speed (benchmarks/input_pipeline.py): training records are read a per-replica batch of
clips at a time, in one `tf.numpy_function` call of `reader.RecordReader` (positioned
reads of each record, hardware CRC-32C, only the clip's frames kept), one batch ahead of the
decoding; clips are decoded by `_parallel_calls()` (CPUs + 1) parallel calls with the
order kept, and tf.data autotuning is off (its bookkeeping cost more than it gained).
Reading a 40-frame record through a TFRecord dataset made for it cost about 0.4 ms of CPU,
as much as decoding two 256x128 frames; the reader takes about 0.1 ms per clip.

Records are read at their byte offset and their framing CRCs verified (reader.RecordReader).
A record that cannot be read (checksum mismatch, truncated or missing file, not a
tf.train.Example), or is not the tracklet the index expects (id, frame count, stream
lengths), fails the pipeline with an error naming the shard, the byte offset, the tracklet
and what is wrong; with data.skip_corrupt it is skipped instead (training: the identity's
K clips are dropped from that epoch, so later batches shift and a step may straddle two
epochs; test: the tracklet yields no clips), logged, and counted in `skipped_records()`.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from tfreid.data import augment
from tfreid.data import reader
from tfreid.data import samplers
from tfreid.data import schema
from tfreid.data import streams as streams_lib

DatasetError = schema.DatasetError
# Batches prefetched.
_PREFETCH = 2

_SKIPPED: list[tuple[str, int, int]] = []
_SKIPPED_LOGGED: set = set()
_SKIPPED_LOCK = threading.Lock()
_LOGGED: set = set()


def skipped_records() -> list[tuple[str, int, int]]:
  """(shard, byte offset, tracklet id) of every record skipped so far (data.skip_corrupt)."""
  with _SKIPPED_LOCK:
    return list(_SKIPPED)


def _note_skipped(path: str, offset: int, tracklet_id: int, reason: str) -> None:
  """Counts a skipped read; logs a record the first time (training draws it again)."""
  key = (path, offset, tracklet_id)
  with _SKIPPED_LOCK:
    first = key not in _SKIPPED_LOGGED
    _SKIPPED_LOGGED.add(key)
    _SKIPPED.append(key)
  if first:
    logging.warning("skipping the record of tracklet %d in shard %s at byte %d: %s "
                    "(data.skip_corrupt; logged once, counted in skipped_records()).",
                    tracklet_id, path, offset, reason)


def _plain(fn):
  """Marks a dataset function as plain TensorFlow (no AutoGraph conversion: faster to
  trace; all control flow in this module is explicit tf.cond or on static values)."""
  return tf.autograph.experimental.do_not_convert(fn)


class _Data:
  """A DataConfig together with the streams the model reads (`use_flow`, `use_keypoints`):
  the pipeline delivers exactly those (`tfreid.data.streams`)."""

  def __init__(self, data, streams):
    self._data = data
    self.streams = streams_lib.check_names(streams, "the pipeline's caller")
    self.use_flow = "flow" in self.streams
    self.use_keypoints = "keypoints" in self.streams

  def __getattr__(self, key):
    return getattr(self._data, key)


def _data_config(config, streams=None) -> _Data:
  """The data section of `config` (an ExperimentConfig or a DataConfig) with its streams:
  `streams` when given, else the model's declaration (ExperimentConfig), else RGB clips."""
  if isinstance(config, _Data):
    return config if streams is None else _Data(config._data, streams)  # pylint: disable=protected-access
  if hasattr(config, "data"):
    if streams is None:
      from tfreid.models import contract  # pylint: disable=import-outside-toplevel
      streams = contract.input_streams(config)
    return _Data(config.data, streams)
  return _Data(config, streams or ("clips",))


# ----------------------------------------------------------------- index and checks


def _load(data, partition: str, split: Optional[int] = None,
          protocol: Optional[str] = None) -> reader.TrackletIndex:
  index = reader.load_partition(data.data_dir, partition,
                                data.split if split is None else split, protocol,
                                skip_corrupt=data.skip_corrupt)
  reader.check_streams(index, data.use_flow, data.use_keypoints)
  return index


def _clip_spec(data, index: reader.TrackletIndex, training: bool) -> augment.ClipSpec:
  h0, w0 = index.dominant_size()
  formats = tuple(f for f, present in (("jpeg", not index.is_png.all()),
                                       ("png", index.is_png.any())) if present)
  flow_scale = float(index.manifest.get("flow", {}).get("scale", 1.0)) if data.use_flow else 1.0
  return augment.ClipSpec.from_config(
      data, training, static_size=(h0, w0) if h0 > 0 and w0 > 0 else None, formats=formats,
      flow_scale=flow_scale)


def num_train_identities(index: reader.TrackletIndex) -> int:
  return len(np.unique(index.labels))


def steps_per_epoch(config, index: Optional[reader.TrackletIndex] = None) -> int:
  """Global steps of one epoch: num_train_ids // P (every identity once per epoch)."""
  data = _data_config(config)
  index = index if index is not None else _load(data, "train")
  steps = num_train_identities(index) // data.num_identities
  if steps == 0:
    raise DatasetError(
        f"the train partition of {index.data_dir} has {num_train_identities(index)} "
        f"identities, fewer than P = data.num_identities = {data.num_identities}: no full "
        "batch can be made. Lower data.num_identities.")
  return steps


def test_clips_per_tracklet(config, index: reader.TrackletIndex) -> np.ndarray:
  """Number of test clips of each tracklet of `index` (data.test_sampler, test clip length)."""
  data = _data_config(config)
  return np.asarray(samplers.num_test_clips(data.test_sampler, index.num_frames,
                                            data.test_seq_len or data.seq_len,
                                            data.test_sample_stride), np.int64)


# ------------------------------------------------------------------ record reading


class _Tables:
  """Per-tracklet constants of an index, as tensors looked up by row."""

  def __init__(self, index: reader.TrackletIndex):
    self.num_frames = tf.constant(index.num_frames, tf.int64)
    self.tracklet_id = tf.constant(index.tracklet_ids, tf.int64)
    self.pid = tf.constant(index.pids, tf.int32)
    self.camid = tf.constant(index.camids, tf.int32)
    self.label = tf.constant(index.labels, tf.int32)
    self.is_png = tf.constant(index.is_png, tf.bool)


# Stream -> (dtype, shape after the frame axis).
_STREAMS = {"frames": (tf.string, []), "flow": (tf.string, []),
            "keypoints": (tf.float32, [schema.NUM_JOINTS, 3]), "present": (tf.int64, [])}


def _stream_keys(data) -> list[str]:
  """The per-frame streams the config asks for, in a fixed order."""
  return (["frames"] + (["flow"] if data.use_flow else [])
          + (["keypoints", "present"] if data.use_keypoints else []))


def _record_reader(index: reader.TrackletIndex, data) -> reader.RecordReader:
  return reader.RecordReader(index, use_flow=data.use_flow, use_keypoints=data.use_keypoints,
                             skip_corrupt=data.skip_corrupt, on_skip=_note_skipped)


def _fetched(outputs, keys, frame_shape: tf.TensorShape, valid_shape) -> dict:
  """`tf.numpy_function` outputs (streams in `keys` order, then valid) as a dict with
  static shapes."""
  out = {}
  for key, value in zip(keys, outputs):
    value.set_shape(frame_shape.concatenate(_STREAMS[key][1]))
    out[key] = value
  outputs[-1].set_shape(valid_shape)
  out["valid"] = outputs[-1]
  return out


def _read_clips(records: reader.RecordReader, data, rows, frame_index) -> dict:
  """Streams of G clips, one call: clip i is the frames frame_index[i] ([G, T]) of the
  record of rows[i] ([G]); `valid` [G] (False only with data.skip_corrupt)."""
  keys = _stream_keys(data)

  def fetch(rows, frame_index):
    arrays, valid = records.clips(rows, frame_index)
    return [np.stack([getattr(a, key) for a in arrays]) for key in keys] + [valid]

  outputs = tf.numpy_function(fetch, [rows, frame_index],
                              [_STREAMS[key][0] for key in keys] + [tf.bool], stateful=True,
                              name="read_clips")
  return _fetched(outputs, keys, frame_index.shape, frame_index.shape[:1])


def _read_tracklet(records: reader.RecordReader, data, row) -> dict:
  """Every frame's streams of the record of `row`, and `valid` (a scalar)."""
  keys = _stream_keys(data)

  def fetch(row):
    arrays, valid = records.tracklet(row)
    return [getattr(arrays, key) for key in keys] + [np.bool_(valid)]

  outputs = tf.numpy_function(fetch, [row], [_STREAMS[key][0] for key in keys] + [tf.bool],
                              stateful=True, name="read_tracklet")
  return _fetched(outputs, keys, tf.TensorShape([None]), [])


# ------------------------------------------------------------------------ decoding


def _meta(tables: _Tables, rows) -> dict:
  """What a clip carries about its tracklet (rows: scalar or [N])."""
  return {"is_png": tf.gather(tables.is_png, rows), "labels": tf.gather(tables.label, rows),
          "pids": tf.gather(tables.pid, rows), "camids": tf.gather(tables.camid, rows),
          "tracklet_id": tf.gather(tables.tracklet_id, rows)}


def _decode(arrays, meta, params, plan, data, spec: augment.ClipSpec, frame_index=None):
  """Decoded, augmented clip (+flow, keypoints) of a clip's streams (`_read_clips`).

  `meta`: `_meta` of its tracklet. `plan`: the clip's augment.ClipPlan, or None to compute
  it here. `frame_index` [T]: the clip's frames in their tracklet (the polluted protocol's
  box of each frame, data.occlusion_box). An invalid clip (an unreadable record, skipped with data.skip_corrupt) becomes
  zeros, which the caller filters out by `valid`.
  """
  t, h, w = spec.seq_len, spec.height, spec.width

  def real():
    keys = None
    if spec.occlusion_box > 0:
      index = tf.cast(frame_index, tf.int64)
      keys = tf.stack([tf.fill(tf.shape(index), meta["tracklet_id"]), index], 1)
    clip, windows = augment.rgb_clip(arrays["frames"], meta["is_png"], params, spec, plan,
                                     keys)
    out = {"clips": clip}
    if data.use_flow:
      out["flow"] = augment.flow_clip(arrays["flow"], params, spec)
    if data.use_keypoints:
      out["keypoints"] = augment.transform_keypoints(arrays["keypoints"], arrays["present"],
                                                     windows, params, spec)
    return out

  def dummy():
    out = {"clips": tf.zeros([t, h, w, 3], tf.uint8)}
    if data.use_flow:
      out["flow"] = tf.zeros([t, h, w, 2])
    if data.use_keypoints:
      out["keypoints"] = tf.zeros([t, schema.NUM_JOINTS, 3])
    return out

  # Without skip_corrupt every clip is valid (the reader raises otherwise): no branch.
  out = tf.cond(arrays["valid"], real, dummy) if data.skip_corrupt else real()
  out.update(labels=meta["labels"], pids=meta["pids"], camids=meta["camids"])
  if data.skip_corrupt:
    out["valid"] = arrays["valid"]
  return out


def _options() -> tf.data.Options:
  """Deterministic order; parallelism set from the CPU count (`_parallel_calls`) rather
  than autotuned: autotuning's per-element bookkeeping and extra threads cost more than
  they gain here (benchmarks/input_pipeline.py)."""
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = False
  return options


def _parallel_calls() -> int:
  """Clips decoded in parallel: one per available CPU, plus one."""
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    cpus = os.cpu_count() or 1
  return max(cpus, 1) + 1


# ------------------------------------------------------------------------ training


def _identity_table(labels: np.ndarray):
  """(identities, CSR start, count, rows) of the rows grouped by label."""
  order = np.argsort(labels, kind="stable")
  identities, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
  return identities, starts, counts, order


def _pipeline_rows(index: reader.TrackletIndex, pipeline_id: int, num_pipelines: int
                   ) -> np.ndarray:
  """Rows of the train index that input pipeline `pipeline_id` samples from."""
  rows = np.arange(len(index))
  if num_pipelines <= 1:
    return rows
  if len(index.shard_files) >= num_pipelines:
    return rows[index.shard_index % num_pipelines == pipeline_id]
  identities = np.unique(index.labels)
  mine = identities[pipeline_id::num_pipelines]
  return rows[np.isin(index.labels, mine)]


def _train_dataset(index: reader.TrackletIndex, data, seed: int,
                   input_context: tf.distribute.InputContext,
                   start_step: int = 0) -> tf.data.Dataset:
  """Per-replica PK batches of one input pipeline (module docstring)."""
  replicas = input_context.num_replicas_in_sync
  pipelines = input_context.num_input_pipelines
  pipeline_id = input_context.input_pipeline_id
  p_total, k = data.num_identities, data.num_instances
  if p_total % replicas:
    raise DatasetError(
        f"data.num_identities (P = {p_total}) must be divisible by the number of replicas "
        f"({replicas}) so that each replica gets whole identities (P / replicas identities x "
        f"K clips). Set data.num_identities to a multiple of {replicas}.")
  p_replica = p_total // replicas
  replicas_here = max(replicas // pipelines, 1)
  rows = _pipeline_rows(index, pipeline_id, pipelines)
  if pipelines > 1 and len(index.shard_files) < pipelines:
    logging.info("input pipeline %d/%d: %d shard files for %d pipelines, sharding by "
                 "identity instead of by file.", pipeline_id, pipelines,
                 len(index.shard_files), pipelines)
  identities, starts, counts, order = _identity_table(index.labels[rows])
  id_rows = rows[order]
  group = p_replica * replicas_here
  ids_per_epoch = (len(identities) // group) * group
  if ids_per_epoch == 0:
    raise DatasetError(
        f"input pipeline {pipeline_id} of {pipelines} has {len(identities)} training "
        f"identities in {index.data_dir}, fewer than the {group} one step needs "
        f"(P = {p_total}). Lower data.num_identities.")
  short = int(np.sum(counts < k))
  key = (index.data_dir, index.split, k)
  if short and key not in _LOGGED:
    _LOGGED.add(key)
    logging.info("%d of %d training identities have fewer than K = %d tracklets; their K "
                 "tracklets are drawn with replacement.", short, len(identities), k)

  tables = _Tables(index)
  spec = _clip_spec(data, index, training=True)
  id_rows_t = tf.constant(id_rows, tf.int32)
  starts_t = tf.constant(starts, tf.int32)
  counts_t = tf.constant(counts, tf.int32)
  base = tf.constant([seed, pipeline_id], tf.int64)
  num_ids = len(identities)
  width = int(max(counts.max(), k))
  num_clips = ids_per_epoch * k

  def epoch(e):
    """Every clip of epoch e, drawn at once: rows, frames, augmentation and its plan."""
    seed_e = tf.random.experimental.stateless_fold_in(base, e)
    fold = lambda i: tf.random.experimental.stateless_fold_in(seed_e, i)
    perm = tf.random.experimental.stateless_shuffle(tf.range(num_ids, dtype=tf.int32),
                                                    seed_e)[:ids_per_epoch]
    count = tf.gather(counts_t, perm)[:, None]
    # K of an identity's tracklets: the K smallest of uniform keys (without replacement),
    # or K uniform draws (with replacement) when it has fewer than K.
    keys = tf.random.stateless_uniform([ids_per_epoch, width], fold(1))
    keys = tf.where(tf.range(width) < count, keys, 2.0)
    if data.tracklet_sampler == "cross_camera":
      slots = tf.gather(starts_t, perm)[:, None] + tf.minimum(tf.range(width), count - 1)
      cameras = tf.gather(tables.camid, tf.gather(id_rows_t, slots))
      keys = samplers.cross_camera_keys(keys, cameras, tf.range(width) < count)
    without = tf.math.top_k(-keys, k=k).indices
    draws = tf.random.stateless_uniform([ids_per_epoch, k], fold(2))
    with_replacement = tf.minimum(
        tf.cast(tf.floor(draws * tf.cast(count, tf.float32)), tf.int32), count - 1)
    choice = tf.where(count >= k, without, with_replacement)
    rows = tf.reshape(tf.gather(id_rows_t, tf.gather(starts_t, perm)[:, None] + choice), [-1])
    frame_index = samplers.sample_train_clips(
        data.train_sampler, tf.gather(tables.num_frames, rows), data.seq_len,
        data.sample_stride, fold(3))
    draws = tf.random.stateless_uniform([num_clips, augment.NUM_DRAWS], fold(4))
    clips = {"row": rows, "frame_index": frame_index, "meta": _meta(tables, rows)}
    clips.update(plan_epoch(draws))
    return tf.data.Dataset.from_tensor_slices(clips)

  @tf.function(jit_compile=True, autograph=False)
  def plan_epoch(draws):
    """Parameters (and plans) of all clips of an epoch from their draws (small tensors:
    XLA computes them in a few fused loops instead of a hundred ops)."""
    params = augment.params_from_uniform(draws, spec)
    out = {"params": params}
    if spec.static_size is not None:
      out["plan"] = augment.plan_clips(params, spec).as_dict()
    return out

  records = _record_reader(index, data)

  def read(group):
    """The streams of a group of clips, read in one call (reader.RecordReader)."""
    group = dict(group)
    group["arrays"] = _read_clips(records, data, group.pop("row"), group["frame_index"])
    return group

  def clip(element):
    plan = augment.ClipPlan.from_dict(element["plan"]) if "plan" in element else None
    return _decode(element["arrays"], element["meta"], element["params"], plan, data, spec,
                   element["frame_index"])

  # A global step takes one per-replica batch from this pipeline for each of its replicas;
  # an epoch holds ids_per_epoch / p_replica of them. A stream that starts at a later step
  # starts at that step's epoch and skips the batches before it (only their small plans are
  # computed, no record is read).
  batches_per_epoch = ids_per_epoch // p_replica
  first_batch = start_step * replicas_here
  start_epoch, skip = divmod(first_batch, batches_per_epoch)
  ds = tf.data.Dataset.counter(start=start_epoch).flat_map(_plain(epoch))
  # Records are read a per-replica batch at a time, ahead of the decoding.
  ds = ds.batch(p_replica * k, drop_remainder=True).skip(skip)
  ds = ds.map(_plain(read)).prefetch(1).unbatch()
  ds = ds.map(_plain(clip), num_parallel_calls=_parallel_calls(), deterministic=True)
  if data.skip_corrupt:
    ds = ds.batch(k, drop_remainder=True)
    ds = ds.filter(_plain(lambda g: tf.reduce_all(g["valid"])))
    ds = ds.batch(p_replica, drop_remainder=True)
    ds = ds.map(_plain(lambda b: {key: tf.reshape(v, tf.concat([[-1], tf.shape(v)[2:]], 0))
                                  for key, v in b.items() if key != "valid"}))
  else:
    ds = ds.batch(p_replica * k, drop_remainder=True)
  return ds.with_options(_options()).prefetch(_PREFETCH)


def _drop_valid(batch):
  batch = dict(batch)
  batch.pop("valid")
  return batch


def train_dataset_fn(config, seed: int = 0, index: Optional[reader.TrackletIndex] = None,
                     streams=None, start_step: int = 0):
  """The dataset function for `strategy.distribute_datasets_from_function`."""
  data = _data_config(config, streams)
  index = index if index is not None else _load(data, "train")

  def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    return _train_dataset(index, data, seed, input_context, start_step)

  return dataset_fn


def make_train_dataset(config, strategy: Optional[tf.distribute.Strategy] = None,
                       seed: Optional[int] = None, streams=None, start_step: int = 0):
  """Infinite training batches (data/__init__.py contract).

  Args:
    config: an ExperimentConfig (its `data`, the model's streams, and `runtime.seed` when
      `seed` is None) or a DataConfig.
    strategy: None for a `tf.data.Dataset` of global batches (P x K clips); otherwise a
      `tf.distribute` dataset of per-replica batches (P / replicas x K clips each).
    seed: batches are a deterministic function of the seed and of their position in the
      stream: epoch e of seed s is drawn from the key (s, pipeline, e), so different seeds
      share no epoch.
    streams: the streams to deliver (default: the model's declaration for an
      ExperimentConfig, RGB clips for a DataConfig).
    start_step: the global step the stream starts at (a resumed run): the batches are those
      a stream started at step 0 would give from that step on.
  """
  data = _data_config(config, streams)
  if seed is None:
    seed = int(getattr(getattr(config, "runtime", None), "seed", 0))
  index = _load(data, "train")
  steps_per_epoch(data, index)
  dataset_fn = train_dataset_fn(data, seed, index, start_step=start_step)
  if strategy is None:
    return dataset_fn(tf.distribute.InputContext(1, 0, 1))
  replicas = strategy.num_replicas_in_sync
  if data.num_identities % replicas:
    raise DatasetError(
        f"data.num_identities (P = {data.num_identities}) must be divisible by the number "
        f"of replicas ({replicas}) so that each replica gets whole identities. Set "
        f"data.num_identities to a multiple of {replicas}.")
  return strategy.distribute_datasets_from_function(dataset_fn)


# ---------------------------------------------------------------------------- test


def make_test_dataset(config, partition: str, split: Optional[int] = None,
                      protocol: Optional[str] = None,
                      index: Optional[reader.TrackletIndex] = None,
                      streams=None, num_frames: int = 0,
                      length_seed: int = 0,
                      condition: Optional[tuple[bool, float]] = None) -> tf.data.Dataset:
  """Batches of every test clip of a partition (module docstring).

  Args:
    config: ExperimentConfig or DataConfig.
    partition: "query", "gallery" (through `protocol`), or a partition name.
    split: default data.split.
    protocol: a manifest protocol; None for the manifest's first.
    index: the partition's TrackletIndex when the caller already has it.
    num_frames: 0: every frame of a tracklet (data.test_sampler); L > 0: L frames drawn at
      random per tracklet (`samplers.random_length_indices`, eval.query_seq_len /
      gallery_seq_len), seeded by (length_seed, the tracklet's position).
    condition: a test-time augmentation condition (flip, shift) (`eval.tta_conditions`):
      every clip mirrored when flip, and translated by round(shift * H) rows and
      round(shift * W) columns (zeros filled in), as training's flip and translation draw
      them; every stream follows (flow's horizontal component negated, keypoints moved and
      their left/right joints swapped). None: plain clips.

  Elements: the batch contract of data/__init__.py plus `index` int32 [B] (the tracklet's
  position) and `frame_weight` float32 [B, T] (1 for a frame's first appearance among its
  tracklet's test clips, 0 for a repeat: `samplers.first_occurrences`).
  """
  data = _data_config(config, streams)
  if index is None:
    index = _load(data, partition, split, protocol)
  else:
    reader.check_streams(index, data.use_flow, data.use_keypoints)
  tables = _Tables(index)
  spec = _clip_spec(data, index, training=False)
  sampler, t = data.test_sampler, data.test_seq_len or data.seq_len

  records = _record_reader(index, data)

  def read(position):
    row = tf.cast(position, tf.int32)
    return _read_tracklet(records, data, row), row

  def split_clips(arrays, row):
    meta = _meta(tables, row)
    if num_frames:
      clip_index = samplers.random_length_indices(
          tf.gather(tables.num_frames, row), num_frames, t, tf.stack([length_seed, row]))
      weights = samplers.random_length_weights(num_frames, t)
    else:
      clip_index = samplers.test_clips(sampler, tf.gather(tables.num_frames, row), t,
                                       data.test_sample_stride)
      weights = samplers.first_occurrences(clip_index)

    def one(frame_index, frame_weight):
      clip = {key: tf.gather(v, frame_index) for key, v in arrays.items() if key != "valid"}
      clip["valid"] = arrays["valid"]
      return {"arrays": clip, "row": row, "meta": meta, "frame_index": frame_index,
              "frame_weight": frame_weight}

    return tf.data.Dataset.from_tensor_slices((clip_index, weights)).map(_plain(one))

  ds = tf.data.Dataset.range(len(index)).map(_plain(read), num_parallel_calls=2,
                                             deterministic=True)
  ds = ds.flat_map(_plain(split_clips))

  # One set of parameters (and plan) for all the clips: none, or the condition's.
  params = augment.identity_params()
  if condition is not None:
    flip, shift = condition
    # The spec says which kernels can occur (the static path compiles only those).
    spec = dataclasses.replace(spec, flip=bool(flip), translate=abs(float(shift)))
    params["flip"] = tf.constant(bool(flip))
    params["shift"] = tf.constant([round(shift * spec.height), round(shift * spec.width)],
                                  tf.int32)
  plan = augment.plan_clips(params, spec) if spec.static_size is not None else None

  def decode(el):
    out = _decode(el["arrays"], el["meta"], params, plan, data, spec, el["frame_index"])
    out["index"] = el["row"]
    out["frame_weight"] = el["frame_weight"]
    return out

  ds = ds.map(_plain(decode), num_parallel_calls=_parallel_calls(), deterministic=True)
  if data.skip_corrupt:
    ds = ds.filter(_plain(lambda el: el["valid"]))
  ds = ds.batch(data.test_batch_size)
  if data.skip_corrupt:
    ds = ds.map(_plain(_drop_valid))
  return ds.with_options(_options()).prefetch(_PREFETCH)
