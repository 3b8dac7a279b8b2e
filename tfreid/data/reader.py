"""Reads a converted dataset: manifest, partitions, and where every tracklet's record is.

A converted dataset (tfreid/data/schema.py) is TFRecord shards of one `tf.train.Example`
per tracklet plus `manifest.json`. `load_partition` returns a `TrackletIndex`: the
metadata of every tracklet of one partition (pids, cameras, lengths, labels) and the
shard file and byte offset of its record, which the pipelines use for random access:
`RecordReader` reads a record at its offset, verifies both of its CRC-32Cs and checks it
is the tracklet the index expects (pipeline.py calls it from tf.data).

The index is built by scanning the shards whose group can hold the partition ("train" and
"all" for the train partition, "test" and "all" for the others): for each record the
framing is read and checked (length and its CRC-32C), and the small features are read from
the serialized proto while the frame, flow and name lists are skipped with seeks, so
indexing reads a few hundred bytes per tracklet. Scans are cached per process (keyed by
shard path, size and modification time).

Order: the tracklets of a `TrackletIndex` are in the order of
`manifest["splits"][split][partition]` (ascending tracklet id); that position is the
`index` a test batch carries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import struct
import threading
from typing import Any, Optional

import google_crc32c
import numpy as np
from absl import logging

from tfreid.data import image_check
from tfreid.data import schema

DatasetError = schema.DatasetError

# Roles a protocol maps to partitions.
ROLES = ("query", "gallery")
# Record features read at indexing time (small scalars) and those only checked for presence.
_SCALARS = (schema.TRACKLET_ID, schema.PID, schema.CAMID, schema.NUM_FRAMES, schema.HEIGHT,
            schema.WIDTH, schema.FRAME_FORMAT)
_PRESENCE = (schema.FLOW, schema.KEYPOINTS)


# ------------------------------------------------------------------------ CRC-32C


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord framing uses (hardware-accelerated google_crc32c)."""
  return google_crc32c.value(data if isinstance(data, bytes) else bytes(data))


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: rotate right by 15 and add 0xa282ead8."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------- shard scanning


@dataclasses.dataclass(frozen=True)
class RecordInfo:
  """Where a record is and the small features read from it."""
  offset: int          # byte offset of the record's framing in the shard
  length: int          # length of the serialized tf.train.Example
  tracklet_id: int
  pid: int
  camid: int
  num_frames: int
  height: int
  width: int
  frame_format: str
  has_flow: bool
  has_keypoints: bool


@dataclasses.dataclass(frozen=True)
class ShardScan:
  """The records of one shard, and what was wrong with it (None when nothing)."""
  path: str
  records: tuple[RecordInfo, ...]
  error: Optional[str]


class _Reader:
  """Bounded reads of a protobuf message inside an open file."""

  def __init__(self, f, end: int):
    self.f = f
    self.end = end

  def tell(self) -> int:
    return self.f.tell()

  def read(self, n: int) -> bytes:
    if self.f.tell() + n > self.end:
      raise ValueError("field runs past the end of its message")
    data = self.f.read(n)
    if len(data) != n:
      raise ValueError("unexpected end of file")
    return data

  def varint(self) -> int:
    result, shift = 0, 0
    while True:
      byte = self.read(1)[0]
      result |= (byte & 0x7F) << shift
      if not byte & 0x80:
        return result
      shift += 7
      if shift > 63:
        raise ValueError("varint too long")

  def skip(self, wire_type: int) -> None:
    if wire_type == 0:
      self.varint()
    elif wire_type == 1:
      self.read(8)
    elif wire_type == 2:
      n = self.varint()
      if self.f.tell() + n > self.end:
        raise ValueError("field runs past the end of its message")
      self.f.seek(n, os.SEEK_CUR)
    elif wire_type == 5:
      self.read(4)
    else:
      raise ValueError(f"unsupported wire type {wire_type}")


def _feature_value(data: bytes):
  """The first value of a serialized tf.train.Feature (int, or str for bytes)."""
  from tensorflow.core.example import feature_pb2  # pylint: disable=import-outside-toplevel
  feature = feature_pb2.Feature.FromString(data)
  kind = feature.WhichOneof("kind")
  values = getattr(feature, kind).value if kind else []
  if not values:
    raise ValueError("empty feature")
  value = values[0]
  return value.decode() if isinstance(value, bytes) else int(value)


def _read_example_fields(f, start: int, length: int) -> dict[str, Any]:
  """Small features of the tf.train.Example at [start, start + length) of `f`."""
  f.seek(start)
  outer = _Reader(f, start + length)
  found: dict[str, Any] = {}
  while outer.tell() < outer.end:
    tag = outer.varint()
    if tag != (1 << 3 | 2):  # Example.features
      outer.skip(tag & 7)
      continue
    size = outer.varint()
    features_end = outer.tell() + size
    features = _Reader(f, features_end)
    while features.tell() < features_end:
      tag = features.varint()
      if tag != (1 << 3 | 2):  # Features.feature (map entry)
        features.skip(tag & 7)
        continue
      size = features.varint()
      entry_end = features.tell() + size
      entry = _Reader(f, entry_end)
      key, value = None, None
      while entry.tell() < entry_end:
        tag = entry.varint()
        field, wire_type = tag >> 3, tag & 7
        if field == 1 and wire_type == 2:
          key = entry.read(entry.varint()).decode()
        elif field == 2 and wire_type == 2:
          size = entry.varint()
          if key is None and size <= 256 or key in _SCALARS:
            value = entry.read(size)
          else:
            f.seek(size, os.SEEK_CUR)
            value = b""
        else:
          entry.skip(wire_type)
      if key in _SCALARS and value is not None:
        found[key] = _feature_value(value)
      elif key in _PRESENCE:
        found[key] = True
      f.seek(entry_end)
    f.seek(features_end)
  return found


def _scan_shard_uncached(path: str) -> ShardScan:
  records: list[RecordInfo] = []
  size = os.path.getsize(path)
  with open(path, "rb", buffering=1 << 16) as f:
    pos = 0
    while pos < size:
      where = f"record {len(records)} at byte {pos}"
      f.seek(pos)
      header = f.read(12)
      if len(header) < 12:
        return ShardScan(path, tuple(records), f"{where}: truncated framing")
      length, length_crc = struct.unpack("<QI", header)
      if masked_crc32c(header[:8]) != length_crc:
        return ShardScan(path, tuple(records), f"{where}: corrupt length (CRC mismatch)")
      if pos + 12 + length + 4 > size:
        return ShardScan(path, tuple(records), f"{where}: truncated record ({length} bytes "
                         f"announced, file has {size - pos - 16})")
      try:
        fields = _read_example_fields(f, pos + 12, length)
        missing = [k for k in _SCALARS if k not in fields]
        if missing:
          raise ValueError(f"features {missing} are missing")
      except (ValueError, IndexError) as e:
        return ShardScan(path, tuple(records), f"{where}: not a tracklet record ({e})")
      records.append(RecordInfo(
          offset=pos, length=length, tracklet_id=fields[schema.TRACKLET_ID],
          pid=fields[schema.PID], camid=fields[schema.CAMID],
          num_frames=fields[schema.NUM_FRAMES], height=fields[schema.HEIGHT],
          width=fields[schema.WIDTH], frame_format=fields[schema.FRAME_FORMAT],
          has_flow=schema.FLOW in fields, has_keypoints=schema.KEYPOINTS in fields))
      pos += 12 + length + 4
  return ShardScan(path, tuple(records), None)


_SCAN_CACHE: dict[tuple, ShardScan] = {}
_SCAN_LOCK = threading.Lock()


def scan_shard(path: str) -> ShardScan:
  """The records of a TFRecord shard (cached while the file is unchanged)."""
  stat = os.stat(path)
  key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
  with _SCAN_LOCK:
    if key in _SCAN_CACHE:
      return _SCAN_CACHE[key]
  scan = _scan_shard_uncached(path)
  with _SCAN_LOCK:
    _SCAN_CACHE[key] = scan
  return scan


# ------------------------------------------------------------------ partitions


def partition_names(manifest: dict[str, Any], split: int = 0) -> list[str]:
  """The partitions of a split (train, query, gallery, gallery_all, ...)."""
  return [k for k in manifest["splits"][split] if k != "train_pids"]


def resolve_partition(manifest: dict[str, Any], partition: str,
                      protocol: Optional[str] = None, split: int = 0) -> tuple[str, str]:
  """(partition name, protocol name) for a partition or a protocol role.

  `partition` is "query" or "gallery" (resolved through the protocol: MARS's mars_matlab
  protocol maps gallery to gallery_all) or any partition name of the split. `protocol`
  None is the manifest's first (default) protocol.
  """
  protocols = manifest.get("protocols") or {}
  if protocol is None or protocol == "":
    protocol = next(iter(protocols), "")
  elif protocol not in protocols:
    raise DatasetError(f"protocol {protocol!r} is not in this dataset's manifest; it has "
                       f"{', '.join(protocols) or 'none'}. Pass one of those (eval.protocol).")
  num_splits = len(manifest.get("splits", []))
  if not 0 <= split < num_splits:
    raise DatasetError(f"split {split} does not exist: the manifest has {num_splits} "
                       f"split(s) (0..{num_splits - 1}). Set data.split accordingly.")
  names = partition_names(manifest, split)
  name = partition
  if partition in ROLES and protocol:
    name = protocols[protocol].get(partition, partition)
  if name not in names:
    raise DatasetError(f"partition {partition!r} is not in split {split} of the manifest; "
                       f"it has {', '.join(names)} (and the roles query/gallery of its "
                       "protocols).")
  return name, protocol


@dataclasses.dataclass
class TrackletIndex:
  """Metadata and record locations of one partition, in partition order.

  Arrays (numpy, one entry per tracklet, in the order of
  `manifest["splits"][split][partition]`): `tracklet_ids`, `pids`, `camids`, `labels`
  (index of the pid in the split's train_pids for the train partition, -1 otherwise),
  `num_frames`, `heights`, `widths` (of the first frame), `is_png`, `shard_index` (into
  `shard_files`), `offsets`, `lengths` (record framing offset and proto length).
  """
  data_dir: str
  manifest: dict[str, Any]
  partition: str
  split: int
  protocol: str
  tracklet_ids: np.ndarray
  pids: np.ndarray
  camids: np.ndarray
  labels: np.ndarray
  num_frames: np.ndarray
  heights: np.ndarray
  widths: np.ndarray
  is_png: np.ndarray
  has_flow: np.ndarray
  has_keypoints: np.ndarray
  shard_files: tuple[str, ...]
  shard_index: np.ndarray
  offsets: np.ndarray
  lengths: np.ndarray
  num_classes: int
  skipped: tuple[str, ...] = ()

  def __len__(self) -> int:
    return len(self.tracklet_ids)

  @property
  def manifest_path(self) -> str:
    return os.path.join(self.data_dir, schema.MANIFEST_NAME)

  def subset(self, mask) -> "TrackletIndex":
    """The tracklets where `mask` is true (order kept)."""
    mask = np.asarray(mask, bool)
    arrays = {f.name: getattr(self, f.name)[mask] for f in dataclasses.fields(self)
              if isinstance(getattr(self, f.name), np.ndarray)}
    return dataclasses.replace(self, **arrays)

  def dominant_size(self) -> tuple[int, int]:
    """The most common (height, width) of the tracklets (0, 0 when unknown)."""
    if not len(self):
      return 0, 0
    sizes, counts = np.unique(np.stack([self.heights, self.widths], 1), axis=0,
                              return_counts=True)
    h, w = sizes[np.argmax(counts)]
    return int(h), int(w)


def _groups_for(partition: str) -> tuple[str, ...]:
  return ("train", "all") if partition == "train" else ("test", "all")


def load_partition(data_dir: str, partition: str = "train", split: int = 0,
                   protocol: Optional[str] = None, skip_corrupt: bool = False
                   ) -> TrackletIndex:
  """The `TrackletIndex` of a partition of a converted dataset.

  Args:
    data_dir: directory holding manifest.json and the shards.
    partition: "train", "query", "gallery" (roles resolved through `protocol`) or any
      partition name of the split (e.g. "gallery_all").
    split: index into manifest["splits"] (10-split datasets), 0 otherwise.
    protocol: a key of manifest["protocols"]; None for the first (default) one.
    skip_corrupt: a shard whose framing is broken keeps the records before the damage
      and the partition loses the tracklets after it (logged, listed in `skipped`)
      instead of failing.

  Raises:
    DatasetError: no manifest, unknown partition/protocol/split, empty partition, a
      corrupt shard (naming it), or tracklets of the partition missing from the shards.
  """
  manifest = schema.read_manifest(data_dir)
  name, protocol = resolve_partition(manifest, partition, protocol, split)
  manifest_path = os.path.join(data_dir, schema.MANIFEST_NAME)
  ids = [int(t) for t in manifest["splits"][split][name]]
  if not ids:
    raise DatasetError(f"partition {name!r} (split {split}) of {manifest_path} is empty: "
                       "it lists no tracklets. Check the conversion (its "
                       "dropped_tracklets and skipped_frames) or choose another partition.")
  groups = _groups_for(name)
  shards = [s for s in manifest.get("shards", []) if s.get("group") in groups]
  if not shards:
    raise DatasetError(f"{manifest_path} lists no shard of group {' or '.join(groups)}, "
                       f"which partition {name!r} needs. Re-run the converter.")
  wanted = set(ids)
  found: dict[int, tuple[int, RecordInfo]] = {}
  skipped: list[str] = []
  shard_files = []
  for shard in shards:
    path = schema.file_in_folder(data_dir, shard.get("file"), f"shard of {manifest_path}")
    if not os.path.exists(path):
      message = f"shard {path} listed in {manifest_path} does not exist"
      if not skip_corrupt:
        raise DatasetError(message + ". Re-run the converter (it resumes) or restore it.")
      logging.warning("%s; skipping it (data.skip_corrupt).", message)
      skipped.append(message)
      continue
    scan = scan_shard(path)
    if scan.error is None and shard.get("num_records") not in (None, len(scan.records)):
      scan = ShardScan(path, scan.records, f"holds {len(scan.records)} records, the manifest "
                       f"says {shard['num_records']}")
    if scan.error is not None:
      message = f"corrupt shard {path}: {scan.error}"
      if not skip_corrupt:
        raise DatasetError(message + ". Re-run the converter for this dataset, or set "
                           "data.skip_corrupt=true to skip the damaged records.")
      logging.warning("%s; keeping the %d records before it (data.skip_corrupt).", message,
                      len(scan.records))
      skipped.append(message)
    shard_files.append(path)
    for record in scan.records:
      if record.tracklet_id in wanted:
        found[record.tracklet_id] = (len(shard_files) - 1, record)
  absent = [t for t in ids if t not in found]
  if absent:
    message = (f"{len(absent)} tracklet(s) of partition {name!r} (split {split}), e.g. ids "
               f"{absent[:5]}, are in no shard of group {'/'.join(groups)} listed in "
               f"{manifest_path}")
    if not skip_corrupt:
      raise DatasetError(message + ". The shards and the manifest disagree: re-run the "
                         "converter.")
    logging.warning("%s; leaving them out (data.skip_corrupt).", message)
    skipped.append(message)
    ids = [t for t in ids if t in found]
    if not ids:
      raise DatasetError(f"partition {name!r} (split {split}) of {manifest_path} is empty "
                         "after leaving out the unreadable tracklets.")
  train_pids = [int(p) for p in manifest["splits"][split].get("train_pids", [])]
  label_of = {pid: i for i, pid in enumerate(train_pids)}
  records = [found[t][1] for t in ids]
  pids = np.array([r.pid for r in records], np.int64)
  if name == "train":
    unknown = sorted({int(p) for p in pids if int(p) not in label_of})
    if unknown:
      raise DatasetError(f"train tracklets of split {split} have pids {unknown[:5]} that "
                         f"are not in the split's train_pids ({manifest_path}); re-run the "
                         "converter.")
    labels = np.array([label_of[int(p)] for p in pids], np.int64)
  else:
    labels = np.full(len(ids), -1, np.int64)
  return TrackletIndex(
      data_dir=data_dir, manifest=manifest, partition=name, split=split, protocol=protocol,
      tracklet_ids=np.array(ids, np.int64), pids=pids,
      camids=np.array([r.camid for r in records], np.int64), labels=labels,
      num_frames=np.array([r.num_frames for r in records], np.int64),
      heights=np.array([r.height for r in records], np.int64),
      widths=np.array([r.width for r in records], np.int64),
      is_png=np.array([r.frame_format == "png" for r in records], bool),
      has_flow=np.array([r.has_flow for r in records], bool),
      has_keypoints=np.array([r.has_keypoints for r in records], bool),
      shard_files=tuple(shard_files),
      shard_index=np.array([found[t][0] for t in ids], np.int64),
      offsets=np.array([r.offset for r in records], np.int64),
      lengths=np.array([r.length for r in records], np.int64),
      num_classes=len(train_pids), skipped=tuple(skipped))


def check_streams(index: TrackletIndex, use_flow: bool, use_keypoints: bool) -> None:
  """Raises when the model reads a stream the dataset was converted without; the message
  gives the converter command that adds it."""
  where = index.manifest_path
  command = (f"python -m data_pipelines.convert --dataset={index.manifest.get('dataset', 'NAME')}"
             f" --input_dir={index.manifest.get('source', 'RAW_DATASET_FOLDER')} "
             f"--output_dir=NEW_DIR")
  if use_flow and ("flow" not in index.manifest or not index.has_flow.all()):
    raise DatasetError(
        f"the model reads optical flow (its declared input streams) but the dataset in "
        f"{index.data_dir} has no flow ({where} has no 'flow' entry or some records lack "
        f"it). Convert it again with optical flow: {command} --optical_flow (keep any "
        "other flags of the first conversion), then pass --data_dir=NEW_DIR.")
  if use_keypoints and ("keypoints" not in index.manifest or not index.has_keypoints.all()):
    raise DatasetError(
        f"the model reads body keypoints (its declared input streams) but the dataset in "
        f"{index.data_dir} has none ({where} has no 'keypoints' entry or some records lack "
        f"them). Convert it again with per-frame joints: {command} --keypoints=FILE (keep "
        "any other flags of the first conversion), then pass --data_dir=NEW_DIR.")


# ---------------------------------------------------------------- record reading


class UnreadableRecord(Exception):
  """A record that cannot be used; the message says why."""


@dataclasses.dataclass
class TrackletArrays:
  """The per-frame streams of one tracklet's record (or of some of its frames).

  frames, flow: object arrays of encoded images ([N]); keypoints float32 [N, 14, 3];
  present int64 [N]. Streams the reader was not asked for are None.
  """
  frames: np.ndarray
  flow: Optional[np.ndarray] = None
  keypoints: Optional[np.ndarray] = None
  present: Optional[np.ndarray] = None


class RecordReader:
  """Random access to the records of a TrackletIndex, checked; safe to call from threads.

  `tracklet(row)` reads the record of the index's row `row` with positioned reads of its
  framing (length, length CRC, payload, payload CRC) at its byte offset, verifies both
  masked CRC-32Cs as TFRecord readers do, parses the tf.train.Example and checks that it is
  the tracklet the index expects: same tracklet id and frame count, and every requested
  stream with one entry per frame (`flow`, `keypoints` with 14 x 3 values per frame,
  `keypoints_present`). Only the requested streams are converted to arrays. Every frame
  read is checked to be a whole JPEG or PNG file (image_check.py: markers, segment
  lengths, end-of-image marker; PNG chunk CRCs) the first time this reader reads it: a
  source frame damaged before conversion (a truncated JPEG) passes the record's CRCs.

  A record that fails any of this raises a DatasetError naming the shard, the byte offset,
  the tracklet and what is wrong (for a damaged frame: its number and source file name), or, with `skip_corrupt`, is reported to `on_skip(path,
  offset, tracklet_id)` and returned as placeholders (empty encoded frames, zero streams)
  with `valid` False.

  The pipelines (pipeline.py) call this through `tf.numpy_function`, for many clips per
  call: positioned reads, two hardware CRCs and a protobuf parse cost about 0.1 ms for a
  40-frame record, a quarter of what a TFRecord dataset made per record costs in tf.data
  (benchmarks/input_pipeline.py).
  """

  def __init__(self, index: TrackletIndex, use_flow: bool = False,
               use_keypoints: bool = False, skip_corrupt: bool = False, on_skip=None):
    self.paths = [index.shard_files[i] for i in index.shard_index]
    self.offsets = np.asarray(index.offsets, np.int64)
    self.lengths = np.asarray(index.lengths, np.int64)
    self.tracklet_ids = np.asarray(index.tracklet_ids, np.int64)
    self.num_frames = np.asarray(index.num_frames, np.int64)
    self.is_png = np.asarray(index.is_png, bool)
    # Frames already checked (image_check), one flag per frame of the index: a frame is
    # checked the first time it is read (its record's CRCs are verified on every read).
    self._frame_start = np.concatenate([[0], np.cumsum(self.num_frames)]).astype(np.int64)
    self._checked = np.zeros([int(self._frame_start[-1])], bool)
    self.use_flow = use_flow
    self.use_keypoints = use_keypoints
    self.skip_corrupt = skip_corrupt
    self.on_skip = on_skip

  def __len__(self) -> int:
    return len(self.paths)

  # -- reading

  def _payload(self, row: int, files: dict) -> bytes:
    path, offset, length = self.paths[row], int(self.offsets[row]), int(self.lengths[row])
    fd = files.get(path)
    if fd is None:
      try:
        fd = files[path] = os.open(path, os.O_RDONLY)
      except OSError as e:
        raise UnreadableRecord(f"the shard cannot be opened ({e.strerror})") from None
    try:
      # Three reads, so that no part is sliced out of a bigger buffer (a copy).
      header = os.pread(fd, 12, offset)
      payload = os.pread(fd, length, offset + 12) if len(header) == 12 else b""
      footer = os.pread(fd, 4, offset + 12 + length) if len(payload) == length else b""
    except OSError as e:
      raise UnreadableRecord(f"the shard cannot be read ({e.strerror})") from None
    got = len(header) + len(payload) + len(footer)
    if got < 12 + length + 4:
      raise UnreadableRecord(f"the shard ends {12 + length + 4 - got} bytes before the end "
                             "of the record (truncated)")
    stored_length, length_crc = struct.unpack("<QI", header)
    if masked_crc32c(header[:8]) != length_crc:
      raise UnreadableRecord("its length fails its checksum")
    if stored_length != length:
      raise UnreadableRecord(f"its length is {stored_length} bytes where the shard scan "
                             f"found {length} (the shard changed after indexing)")
    if masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
      raise UnreadableRecord("its data fails its checksum")
    return payload

  def _parse(self, row: int, payload: bytes, frame_index=None) -> TrackletArrays:
    from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
    from google.protobuf import message  # pylint: disable=import-outside-toplevel
    try:
      feature = example_pb2.Example.FromString(payload).features.feature
    except message.DecodeError:
      raise UnreadableRecord("its data is not a tf.train.Example") from None
    expected_id, n = int(self.tracklet_ids[row]), int(self.num_frames[row])

    def values(key, kind):
      if key not in feature:
        raise UnreadableRecord(f"it has no {key!r} feature")
      return getattr(feature[key], kind).value

    found_id = list(values(schema.TRACKLET_ID, "int64_list"))
    found_n = list(values(schema.NUM_FRAMES, "int64_list"))
    if found_id != [expected_id] or found_n != [n]:
      raise UnreadableRecord(f"it is tracklet {found_id} of {found_n} frames where the index "
                             f"expects tracklet {expected_id} of {n} frames")

    def per_frame(key, kind, per=1):
      got = values(key, kind)
      if len(got) != n * per:
        raise UnreadableRecord(f"its {key!r} feature has {len(got)} values for {n} frames"
                               + (f" ({per} per frame)" if per > 1 else ""))
      return got

    # Only the frames asked for become Python objects.
    pick = list if frame_index is None else (lambda seq: [seq[i] for i in frame_index])
    frames = pick(per_frame(schema.FRAMES, "bytes_list"))
    self._check_frames(row, frames, range(n) if frame_index is None else frame_index,
                       feature)
    out = TrackletArrays(np.array(frames, object))
    if self.use_flow:
      out.flow = np.array(pick(per_frame(schema.FLOW, "bytes_list")), object)
    if self.use_keypoints:
      joints = per_frame(schema.KEYPOINTS, "float_list", schema.NUM_JOINTS * 3)
      joints = np.asarray(joints, np.float32).reshape(n, schema.NUM_JOINTS, 3)
      present = np.asarray(per_frame(schema.KEYPOINTS_PRESENT, "int64_list"), np.int64)
      out.keypoints, out.present = ((joints, present) if frame_index is None else
                                    (joints[frame_index], present[frame_index]))
    return out

  def _check_frames(self, row: int, frames, positions, feature) -> None:
    """Raises UnreadableRecord for the first frame of `frames` (at `positions` of the
    record of `row`) that is not a whole image file (image_check.py)."""
    checked, start = self._checked, int(self._frame_start[row])
    fmt = "png" if self.is_png[row] else "jpeg"
    for data, t in zip(frames, positions):
      if checked[start + t]:
        continue
      problem = image_check.frame_problem(data, fmt)
      if problem is not None:
        names = feature[schema.FRAME_NAMES].bytes_list.value \
            if schema.FRAME_NAMES in feature else []
        name = f" ({names[t].decode('utf-8', 'replace')})" if t < len(names) else ""
        raise UnreadableRecord(f"frame {t}{name} is a damaged {fmt.upper()} image: "
                               f"{problem}")
      checked[start + t] = True

  def _placeholder(self, n: int) -> TrackletArrays:
    out = TrackletArrays(np.full([n], b"", object))
    if self.use_flow:
      out.flow = np.full([n], b"", object)
    if self.use_keypoints:
      out.keypoints = np.zeros([n, schema.NUM_JOINTS, 3], np.float32)
      out.present = np.zeros([n], np.int64)
    return out

  def _read(self, row: int, files: dict, frame_index=None) -> tuple[TrackletArrays, bool]:
    try:
      return self._parse(row, self._payload(row, files), frame_index), True
    except UnreadableRecord as e:
      path, offset, tid = self.paths[row], int(self.offsets[row]), int(self.tracklet_ids[row])
      if not self.skip_corrupt:
        raise DatasetError(
            f"Corrupt or unreadable record in shard {path} at byte offset {offset} "
            f"(tracklet id {tid}): {e}. Re-run the converter for this dataset, or set "
            "data.skip_corrupt=true to skip such records.") from None
      if self.on_skip is not None:
        self.on_skip(path, offset, tid, str(e))
      n = int(self.num_frames[row]) if frame_index is None else len(frame_index)
      return self._placeholder(n), False

  def tracklet(self, row: int) -> tuple[TrackletArrays, bool]:
    """(every frame of the record of `row`, valid)."""
    with _open_shards() as files:
      return self._read(int(row), files)

  def clips(self, rows, frame_index) -> tuple[list[TrackletArrays], np.ndarray]:
    """(the frames frame_index[i] of the record of rows[i], for each i; valid [len(rows)]).

    Each shard is opened once per call."""
    out, valid = [], np.zeros([len(rows)], bool)
    with _open_shards() as files:
      for i, row in enumerate(rows):
        arrays, valid[i] = self._read(int(row), files, [int(t) for t in frame_index[i]])
        out.append(arrays)
    return out, valid


@contextlib.contextmanager
def _open_shards():
  """A dict for RecordReader._payload to keep the shards it opens (path -> descriptor),
  closed on exit."""
  files: dict = {}
  try:
    yield files
  finally:
    for fd in files.values():
      os.close(fd)
