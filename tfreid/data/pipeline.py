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

Test (`make_test_dataset`): every clip of every tracklet of a partition
(data.test_sampler), resized to (H, W), batched by data.test_batch_size. A record is read
once and its clips are produced one by one, so a 900-frame tracklet never sits in one
batch; memory is bounded by a few records. Each element's `index` is the position of its
tracklet in the partition order (reader.py); `test_clips_per_tracklet` gives how many clips
each tracklet has, so a caller averages the clip features of each tracklet. The order of
the elements is the same on every run (clips of a few neighbouring tracklets interleave).

Speed (benchmarks/input_pipeline.py): records are read in order by the decoding map's
input thread, clips are decoded by `_parallel_calls()` (CPUs + 1) parallel calls with the
order kept, and tf.data autotuning is off (its bookkeeping cost more than it gained).

Records are read one at a time at their byte offset (TFRecordDatasetV2 `byte_offsets`),
which still verifies the record's CRCs, and parsed outside that per-record dataset. A record
that cannot be read (checksum mismatch, truncated or missing file), or is not the tracklet
the index expects (id, frame count, stream lengths), fails the pipeline with an error naming
the shard, the byte offset and the tracklet; with data.skip_corrupt it is skipped instead
(training: the identity's K clips are dropped from that epoch, so later batches shift and a
step may straddle two epochs; test: the tracklet yields no clips), logged, and counted in
`skipped_records()`. (A record whose checksums hold but whose
bytes are not a tf.train.Example at all, which only a broken writer produces, fails with
TensorFlow's parse error.)
"""

from __future__ import annotations

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

DatasetError = schema.DatasetError
# Batches prefetched.
_PREFETCH = 2

_SKIPPED: list[tuple[str, int, int]] = []
_SKIPPED_LOCK = threading.Lock()
_LOGGED: set = set()


def skipped_records() -> list[tuple[str, int, int]]:
  """(shard, byte offset, tracklet id) of every record skipped so far (data.skip_corrupt)."""
  with _SKIPPED_LOCK:
    return list(_SKIPPED)


def _note_skipped(path, offset, tracklet_id):
  path = path.decode() if isinstance(path, bytes) else str(path)
  with _SKIPPED_LOCK:
    _SKIPPED.append((path, int(offset), int(tracklet_id)))
  logging.warning("skipping corrupt or unreadable record of tracklet %d in shard %s at byte "
                  "%d (data.skip_corrupt).", int(tracklet_id), path, int(offset))
  return np.int64(0)


def _plain(fn):
  """Marks a dataset function as plain TensorFlow (no AutoGraph conversion: faster to
  trace; all control flow in this module is explicit tf.cond or on static values)."""
  return tf.autograph.experimental.do_not_convert(fn)


def _data_config(config):
  return config.data if hasattr(config, "data") else config


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
  """Number of test clips of each tracklet of `index` (data.test_sampler, data.seq_len)."""
  data = _data_config(config)
  return np.asarray(samplers.num_test_clips(data.test_sampler, index.num_frames,
                                            data.seq_len), np.int64)


# ------------------------------------------------------------------ record reading


class _Tables:
  """Per-tracklet constants of an index, as tensors looked up by row."""

  def __init__(self, index: reader.TrackletIndex):
    paths = np.array(index.shard_files, dtype=object)[index.shard_index]
    self.path = tf.constant(list(paths) if len(paths) else [], tf.string)
    self.offset = tf.constant(index.offsets, tf.int64)
    self.tracklet_id = tf.constant(index.tracklet_ids, tf.int64)
    self.num_frames = tf.constant(index.num_frames, tf.int64)
    self.pid = tf.constant(index.pids, tf.int32)
    self.camid = tf.constant(index.camids, tf.int32)
    self.label = tf.constant(index.labels, tf.int32)
    self.is_png = tf.constant(index.is_png, tf.bool)


def _record_dataset(path, offset) -> tf.data.Dataset:
  """The records of the shard `path` from byte `offset` on (the caller takes the first;
  reading it verifies its checksums, and fails when they do not match)."""
  variant = tf.raw_ops.TFRecordDatasetV2(
      filenames=path, compression_type="", buffer_size=0, byte_offsets=offset)
  return tf.data.experimental.from_variant(variant, tf.TensorSpec([], tf.string))


def _features(data) -> dict:
  # Scalars get defaults so that an empty (unreadable) record parses as an invalid one.
  # Lists as RaggedFeature: their values come back as a flat tensor (no sparse indices).
  features = {
      schema.FRAMES: tf.io.RaggedFeature(tf.string),
      schema.TRACKLET_ID: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
      schema.NUM_FRAMES: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
  }
  if data.use_flow:
    features[schema.FLOW] = tf.io.RaggedFeature(tf.string)
  if data.use_keypoints:
    features[schema.KEYPOINTS] = tf.io.RaggedFeature(tf.float32)
    features[schema.KEYPOINTS_PRESENT] = tf.io.RaggedFeature(tf.int64)
  return features


def _parse(record, data, tracklet_id, num_frames):
  """Per-frame arrays of a record (b"" when unreadable) and whether it is the expected
  tracklet with consistent streams."""
  p = tf.io.parse_single_example(record, _features(data))
  frames = p[schema.FRAMES]
  n = tf.cast(num_frames, tf.int32)
  valid = ((p[schema.TRACKLET_ID] == tracklet_id) & (p[schema.NUM_FRAMES] == num_frames)
           & (tf.size(frames) == n))
  out = {"frames": frames}
  if data.use_flow:
    out["flow"] = p[schema.FLOW]
    valid &= tf.size(out["flow"]) == n
  if data.use_keypoints:
    out["keypoints"] = p[schema.KEYPOINTS]
    out["present"] = p[schema.KEYPOINTS_PRESENT]
    valid &= ((tf.size(out["keypoints"]) == n * schema.NUM_JOINTS * 3)
              & (tf.size(out["present"]) == n))
  out["valid"] = valid
  return out


def _gather_frames(arrays, frame_index, data) -> dict:
  """The frames `frame_index` ([T]) of a valid record's per-frame arrays."""
  out = {k: tf.gather(v, frame_index) for k, v in arrays.items()
         if k not in ("valid", "keypoints")}
  if data.use_keypoints:
    joints = tf.reshape(arrays["keypoints"], [-1, schema.NUM_JOINTS, 3])
    out["keypoints"] = tf.gather(joints, frame_index)
  return out


def _pick(arrays, frame_index, data):
  """The frames `frame_index` ([T]) of parsed arrays (empty ones when not valid)."""

  def gather():
    out = _gather_frames(arrays, frame_index, data)
    out["valid"] = tf.constant(True)
    return out

  empty = _empty_clip(data)
  return tf.cond(arrays["valid"], gather, lambda: empty)


def _empty_clip(data) -> dict:
  t = data.seq_len
  out = {"frames": tf.fill([t], ""), "valid": tf.constant(False)}
  if data.use_flow:
    out["flow"] = tf.fill([t], "")
  if data.use_keypoints:
    out["keypoints"] = tf.zeros([t, schema.NUM_JOINTS, 3])
    out["present"] = tf.zeros([t], tf.int64)
  return out


def _read_raw(tables: _Tables, row, carry) -> tf.data.Dataset:
  """One element (record, carry): the serialized record of `row`, or b"" when it cannot be
  read (bad checksum, truncated or missing file), with `carry` passed along. Parsing
  happens outside this per-record dataset, which keeps the per-record cost to the read."""
  raw = _record_dataset(tf.gather(tables.path, row), tf.gather(tables.offset, row))
  raw = raw.take(1).ignore_errors().concatenate(tf.data.Dataset.from_tensors(tf.constant(b"")))
  # The zip ends with its one-element second dataset: the record, or else the b"".
  return tf.data.Dataset.zip(raw, tf.data.Dataset.from_tensors(carry))


# ------------------------------------------------------------------------ decoding


def _meta(tables: _Tables, rows) -> dict:
  """What a clip carries about its tracklet (rows: scalar or [N])."""
  return {"path": tf.gather(tables.path, rows), "offset": tf.gather(tables.offset, rows),
          "tracklet_id": tf.gather(tables.tracklet_id, rows),
          "num_frames": tf.gather(tables.num_frames, rows),
          "is_png": tf.gather(tables.is_png, rows), "labels": tf.gather(tables.label, rows),
          "pids": tf.gather(tables.pid, rows), "camids": tf.gather(tables.camid, rows)}


def _decode(arrays, frame_index, meta, params, plan, first, data, spec: augment.ClipSpec):
  """Decoded, augmented clip (+flow, keypoints) of one record's arrays; checks `valid`.

  `frame_index`: the clip's frames ([T]) in `arrays`, or None when `arrays` holds exactly
  the clip's frames. `meta`: `_meta` of its tracklet. `plan`: the clip's
  augment.ClipPlan, or None to compute it here.
  """
  valid = arrays["valid"]
  if not data.skip_corrupt:
    check = tf.debugging.Assert(valid, [
        "Corrupt or unreadable record in shard", meta["path"], "at byte offset",
        meta["offset"], "(tracklet id", meta["tracklet_id"],
        "): it fails its checksum, does not parse, or is not the tracklet the shard scan "
        "found there. Re-run the converter for this dataset, or set data.skip_corrupt=true "
        "to skip such records."], summarize=8)
    # Everything below waits for the check, so a bad record fails with this message.
    with tf.control_dependencies([check]):
      arrays = {key: tf.identity(v) for key, v in arrays.items()}
      valid = arrays["valid"]
  t, h, w = spec.seq_len, spec.height, spec.width

  def real():
    clip_arrays = arrays if frame_index is None else _gather_frames(arrays, frame_index, data)
    clip, windows = augment.rgb_clip(clip_arrays["frames"], meta["is_png"], params, spec,
                                     plan)
    out = {"clips": clip}
    if data.use_flow:
      out["flow"] = augment.flow_clip(clip_arrays["flow"], params, spec)
    if data.use_keypoints:
      out["keypoints"] = augment.transform_keypoints(
          clip_arrays["keypoints"], clip_arrays["present"], windows, params, spec)
    return out

  def dummy():
    deps = []
    if data.skip_corrupt:  # counted once per record (its first clip)
      deps.append(tf.cond(
          first,
          lambda: tf.numpy_function(_note_skipped, [meta["path"], meta["offset"],
                                                    meta["tracklet_id"]], tf.int64,
                                    stateful=True),
          lambda: tf.constant(0, tf.int64)))
    with tf.control_dependencies(deps):
      out = {"clips": tf.zeros([t, h, w, 3], tf.uint8)}
      if data.use_flow:
        out["flow"] = tf.zeros([t, h, w, 2])
      if data.use_keypoints:
        out["keypoints"] = tf.zeros([t, schema.NUM_JOINTS, 3])
    return out

  # Without skip_corrupt a clip that gets past the check is valid: no branch needed.
  out = tf.cond(valid, real, dummy) if data.skip_corrupt else real()
  out.update(labels=meta["labels"], pids=meta["pids"], camids=meta["camids"], valid=valid)
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


def _read_records(elements: tf.data.Dataset, read) -> tf.data.Dataset:
  """`read` (element -> dataset of one record) over `elements`, in order.

  The records are read one after the other by the decoding map's input thread: from the
  page cache a record costs a small fraction of a clip's decoding, and on a few cores a
  parallel interleave costs more in thread hand-offs than it saves.
  """
  return elements.flat_map(_plain(read))


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
                   input_context: tf.distribute.InputContext) -> tf.data.Dataset:
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

  def read(element):
    """The clip's record (b"" when unreadable), with the clip's draws."""
    return _read_raw(tables, element["row"], element)

  def clip(record, element):
    meta = element["meta"]
    arrays = _parse(record, data, meta["tracklet_id"], meta["num_frames"])
    plan = augment.ClipPlan.from_dict(element["plan"]) if "plan" in element else None
    out = _decode(arrays, element["frame_index"], meta, element["params"], plan,
                  tf.constant(True), data, spec)
    if not data.skip_corrupt:
      out.pop("valid")  # always true past _decode's check
    return out

  ds = tf.data.Dataset.counter().flat_map(_plain(epoch))
  ds = _read_records(ds, read)
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


def train_dataset_fn(config, seed: int = 0, index: Optional[reader.TrackletIndex] = None):
  """The dataset function for `strategy.distribute_datasets_from_function`."""
  data = _data_config(config)
  index = index if index is not None else _load(data, "train")

  def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    return _train_dataset(index, data, seed, input_context)

  return dataset_fn


def make_train_dataset(config, strategy: Optional[tf.distribute.Strategy] = None,
                       seed: Optional[int] = None):
  """Infinite training batches (data/__init__.py contract).

  Args:
    config: an ExperimentConfig (its `data`, and `runtime.seed` when `seed` is None) or a
      DataConfig.
    strategy: None for a `tf.data.Dataset` of global batches (P x K clips); otherwise a
      `tf.distribute` dataset of per-replica batches (P / replicas x K clips each).
    seed: batches are a deterministic function of the seed.
  """
  data = _data_config(config)
  if seed is None:
    seed = int(getattr(getattr(config, "runtime", None), "seed", 0))
  index = _load(data, "train")
  steps_per_epoch(data, index)
  dataset_fn = train_dataset_fn(data, seed, index)
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
                      index: Optional[reader.TrackletIndex] = None) -> tf.data.Dataset:
  """Batches of every test clip of a partition (module docstring).

  Args:
    config: ExperimentConfig or DataConfig.
    partition: "query", "gallery" (through `protocol`), or a partition name.
    split: default data.split.
    protocol: a manifest protocol; None for the manifest's first.
    index: the partition's TrackletIndex when the caller already has it.

  Elements: the batch contract of data/__init__.py plus `index` int32 [B].
  """
  data = _data_config(config)
  if index is None:
    index = _load(data, partition, split, protocol)
  else:
    reader.check_streams(index, data.use_flow, data.use_keypoints)
  tables = _Tables(index)
  spec = _clip_spec(data, index, training=False)
  sampler, t = data.test_sampler, data.seq_len

  def read(position):
    row = tf.cast(position, tf.int32)
    return _read_raw(tables, row, row)

  def parse(record, row):
    meta = _meta(tables, row)
    return _parse(record, data, meta["tracklet_id"], meta["num_frames"]), row, meta

  def split_clips(arrays, row, meta):
    clip_index = samplers.test_clips(sampler, meta["num_frames"], t)

    def one(clip_number, frame_index):
      element = dict(_pick(arrays, frame_index, data))
      element.update(row=row, first=clip_number == 0, meta=meta)
      return element

    return tf.data.Dataset.from_tensor_slices(
        (tf.range(tf.shape(clip_index)[0]), clip_index)).map(_plain(one))

  ds = _read_records(tf.data.Dataset.range(len(index)), read)
  ds = ds.map(_plain(parse), num_parallel_calls=2, deterministic=True)
  ds = ds.flat_map(_plain(split_clips))

  # Test clips are not augmented: one set of parameters (and plan) for all of them.
  params = augment.identity_params()
  plan = augment.plan_clips(params, spec) if spec.static_size is not None else None

  def decode(el):
    arrays = {key: v for key, v in el.items() if key not in ("row", "first", "meta")}
    out = _decode(arrays, None, el["meta"], params, plan, el["first"], data, spec)
    out["index"] = el["row"]
    return out

  ds = ds.map(_plain(decode), num_parallel_calls=_parallel_calls(), deterministic=True)
  if data.skip_corrupt:
    ds = ds.filter(_plain(lambda el: el["valid"]))
  ds = ds.batch(data.test_batch_size)
  ds = ds.map(_plain(_drop_valid))
  return ds.with_options(_options()).prefetch(_PREFETCH)
