"""Streaming, parallel, atomic and resumable writing of tracklet TFRecord shards.

The dataset modules (mars.py, ilidsvid.py, ...) turn a raw dataset folder into a
`DatasetIndex`: the tracklets (frame paths, pid, camera, shard group) and the splits, no
pixels. `write_shards` turns an index into shards:

1. Plan. Tracklets are taken in tracklet-id order and cut into shards of about
   `shard_size_mb` of source frame bytes (the sizes on disk; records hold the frames
   byte-for-byte, so a shard is about that big; flow PNGs add to it). Groups never share a
   shard: "train" shards hold only train tracklets, "test" shards the rest, "all" shards
   either (10-split datasets). The plan depends on the input and the options only.
2. Encode. Each tracklet is read, every frame validated by decoding it to gray (EXIF
   orientation ignored as TensorFlow's decoders do): a JPEG frame strictly, with
   `simplejpeg` (libjpeg-turbo; a libjpeg warning such as "Corrupt JPEG data: ..." is an
   error, where OpenCV and TensorFlow decode the frame anyway), other formats with
   `cv2.imdecode`; and by the structural checks of `tfreid.data.image_check` (JPEG markers,
   segment lengths, restart-marker order, end-of-image marker; PNG chunk CRCs), and its
   size recorded (`decode_frame`); a missing, unreadable, empty, undecodable or damaged
   frame, or a JPEG frame libjpeg warns about, is skipped and listed; a tracklet left
   without frames is dropped and listed. JPEG frames are kept byte-for-byte and PNG frames
   as they are; any other image format (folder datasets), or a tracklet that mixes JPEG with
   other formats, is stored as lossless PNG of the decoded pixels (counted). Optional flow
   (optical_flow.py) and keypoints (keypoints.py) are attached. With `num_workers > 1` a
   pool of processes does this reading and checking (and the flow), while this process
   turns each result into a record with `tfreid.data.schema.encode_tracklet` and writes the
   records in plan order, with at most a few tracklets in flight: memory does not grow with
   the dataset, the workers never import TensorFlow, and the bytes written do not depend on
   the number of workers (OpenCV runs one thread per process).
3. Write. A shard is written to `<file>.tmp`, flushed, synced and renamed, so a shard file
   is always complete. After each shard, `.convert_state.json` records its record count,
   byte size and what it found. A re-run with the same input and options verifies finished
   shards (`verify_shard`: size, every record's CRCs, offsets and tracklet ids, every
   frame's structure, that the shard's frames passed the checks of this version,
   `FRAME_CHECKS`) and writes the others, and again any finished shard that fails
   (one line says which and why); a re-run with different input or options refuses
   unless asked to overwrite.

Besides the shards, per-tracklet facts (kept frames, size, byte offset of the record in its
shard) come back in `ConversionResult` for the manifest and `tracklets.csv`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import struct
import sys
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from data_pipelines import keypoints as keypoints_lib
from data_pipelines import optical_flow as flow_lib
from tfreid.data import image_check
from tfreid.data import schema

STATE_NAME = ".convert_state.json"
STATE_VERSION = 1
# The frame checks every frame of a shard passed (recorded in its state entry): decoded
# (JPEG strictly) and `image_check`. A finished shard recorded without them was written
# before JPEG frames were decoded strictly and may hold a frame libjpeg warns about:
# `verify_shard` fails it, and the re-run converts it again.
FRAME_CHECKS = "decode+jpeg_strict+image_check"
GROUPS = ("train", "test", "all")


class ConversionError(ValueError):
  """The raw dataset or the output directory is not what the converter expects."""


# ------------------------------------------------------------------------------ index


@dataclasses.dataclass(frozen=True)
class TrackletSpec:
  """One tracklet of the raw dataset: where its frames are and who it shows.

  Attributes:
    tracklet_id: 0-based id, unique in the converted dataset; the index lists tracklets in
      increasing id order.
    pid: original person id (MARS: -1 junk, 0 distractor).
    camid: 0-based camera id.
    group: shard group, "train", "test" or "all".
    frames: frame paths relative to the dataset root, `/`-separated, in temporal order.
    frame_numbers: frame number of each frame in its source video or tracklet.
    name: how errors and the manifest name the tracklet.
    label: training label in split 0 (index of pid in splits[0]["train_pids"]) or -1.
  """
  tracklet_id: int
  pid: int
  camid: int
  group: str
  frames: tuple[str, ...]
  frame_numbers: tuple[int, ...]
  name: str
  label: int = -1


@dataclasses.dataclass
class DatasetIndex:
  """A raw dataset as the converter sees it (no pixels).

  Attributes:
    dataset: mars | ilidsvid | prid2011 | dukev | folder.
    root: the input directory; frame paths are relative to it.
    tracklets: the tracklets to store, in increasing tracklet_id order.
    splits: per split, partition name -> tracklet ids, plus "train_pids".
    protocols: {name: {"query": partition, "gallery": partition}}, default first.
    split_source: how the splits were made.
    dropped_tracklets: tracklets of the raw dataset that are not stored, with the reason.
    extra: dataset-specific manifest entries.
  """
  dataset: str
  root: str
  tracklets: list[TrackletSpec]
  splits: list[dict[str, Any]]
  protocols: dict[str, dict[str, str]]
  split_source: str
  dropped_tracklets: list[dict[str, str]] = dataclasses.field(default_factory=list)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def make_split(partitions: dict[str, Sequence[int]], pid_of: Callable[[int], int]
               ) -> dict[str, Any]:
  """A split dict: each partition's sorted tracklet ids, plus the sorted train pids."""
  split = {name: sorted(int(t) for t in ids) for name, ids in partitions.items()}
  split["train_pids"] = sorted({int(pid_of(t)) for t in split.get("train", [])})
  return split


def two_camera_index(dataset: str, root: str, specs: list, tid_of: dict,
                     splits_named: Sequence, split_source: str,
                     dropped: list) -> "DatasetIndex":
  """The finalized index of a two-camera closed-set dataset (iLIDS-VID, PRID-2011).

  Per split (REFERENCE_FACTS.md, 10-split protocol): train = both cameras' tracklets of the
  split's train persons; query = camera A (camid 0) tracklets of its test persons; gallery =
  camera B (camid 1) tracklets of the same persons. One protocol, "torchreid".

  Args:
    specs: every stored tracklet, ids 0..N-1.
    tid_of: (person name, camid) -> tracklet id.
    splits_named: per split, (train person names, test person names).
  """
  splits = []
  for train, test in splits_named:
    parts = {"train": [tid_of[(p, c)] for p in train for c in (0, 1)],
             "query": [tid_of[(p, 0)] for p in test],
             "gallery": [tid_of[(p, 1)] for p in test]}
    splits.append(make_split(parts, lambda t: specs[t].pid))
  return finalize_index(DatasetIndex(
      dataset=dataset, root=root, tracklets=specs, splits=splits,
      protocols={"torchreid": {"query": "query", "gallery": "gallery"}},
      split_source=split_source, dropped_tracklets=dropped))


def finalize_index(index: DatasetIndex) -> DatasetIndex:
  """Checks ids and sets each train tracklet's label from split 0 (schema `label`)."""
  for position, spec in enumerate(index.tracklets):
    if spec.tracklet_id != position:
      raise AssertionError(f"tracklet ids must be 0..N-1 in order; position {position} has "
                           f"id {spec.tracklet_id}.")
    if spec.group not in GROUPS:
      raise AssertionError(f"unknown shard group {spec.group!r} of {spec.name}.")
    if len(spec.frames) != len(spec.frame_numbers):
      raise AssertionError(f"{spec.name}: {len(spec.frames)} frames but "
                           f"{len(spec.frame_numbers)} frame numbers.")
  if not index.splits:
    raise AssertionError("a dataset index needs at least one split.")
  split0 = index.splits[0]
  label_of = {pid: i for i, pid in enumerate(split0["train_pids"])}
  train = set(split0.get("train", []))
  index.tracklets = [
      dataclasses.replace(s, label=label_of[s.pid] if s.tracklet_id in train else -1)
      for s in index.tracklets]
  return index


def missing(path: str, what: str, layout: str) -> ConversionError:
  """The error for a metadata file or folder that is not where the layout says."""
  return ConversionError(f"{what} not found: {path} does not exist. Expected layout:\n"
                         f"{layout.strip(chr(10))}\nPoint --input_dir at the folder that holds "
                         "it.")


def require(path: str, what: str, layout: str, *, is_dir: bool = False) -> str:
  """Returns `path` when it exists (a folder when `is_dir`), else raises `missing`."""
  if not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
    raise missing(path, what, layout)
  return path


def natural_key(name: str) -> tuple:
  """Sort key that compares digit runs as numbers: frame_2 < frame_10."""
  return tuple((0, int(t), t) if t.isdigit() else (1, 0, t)
               for t in re.split(r"(\d+)", name) if t)


def list_dirs(path: str) -> list[str]:
  """Sorted names of the sub-folders of `path` (hidden ones ignored)."""
  return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def list_files(path: str, extensions: Sequence[str]) -> list[str]:
  """Sorted names of the files of `path` whose lower-cased extension is in `extensions`."""
  return sorted(e.name for e in os.scandir(path)
                if e.is_file() and os.path.splitext(e.name)[1].lower() in extensions)


# ---------------------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class EncodeOptions:
  """What goes into each record besides the frames."""
  optical_flow: bool = False
  flow_method: str = "dis"
  dis_preset: str = "fast"
  flow_scale: float = flow_lib.DEFAULT_FLOW_SCALE
  keypoints: Optional[keypoints_lib.KeypointArrays] = None

  def fingerprint(self) -> dict[str, Any]:
    out = {"optical_flow": self.optical_flow}
    if self.optical_flow:
      out.update(flow_method=self.flow_method, flow_scale=self.flow_scale)
      if self.flow_method == "dis":
        out["dis_preset"] = self.dis_preset
    out["keypoints_sha256"] = self.keypoints.sha256 if self.keypoints else None
    return out


# ---------------------------------------------------------------------- frame checking

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sniff_format(data: bytes) -> str:
  """"jpeg", "png" or "other", from the first bytes."""
  if data.startswith(_JPEG_MAGIC):
    return "jpeg"
  if data.startswith(_PNG_MAGIC):
    return "png"
  return "other"


def decode_gray(data: bytes):
  """Decodes encoded image bytes to uint8 gray [H, W], or None when they do not decode."""
  import cv2  # pylint: disable=import-outside-toplevel
  if not data:
    return None
  try:
    img = cv2.imdecode(np.frombuffer(data, np.uint8),
                       cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
  except cv2.error:
    return None
  if img is None or img.ndim != 2 or img.size == 0:
    return None
  if img.dtype != np.uint8:
    img = cv2.convertScaleAbs(img, alpha=255.0 / 65535.0)
  return img


def decode_jpeg_gray_strict(data: bytes):
  """Decodes JPEG bytes to uint8 gray [H, W] with `simplejpeg` in strict mode.

  libjpeg(-turbo) only warns about some damage to the compressed data and decodes the
  image anyway, for example "Corrupt JPEG data: 48 extraneous bytes before marker 0xd9"
  when a flipped bit changes the Huffman codes so that the blocks of the image end before
  its compressed data does; OpenCV and TensorFlow return that image. Strict mode turns
  every libjpeg warning into an error.

  The gray image is libjpeg's own (the luminance channel, accurate integer IDCT, EXIF
  orientation ignored): the same pixels as OpenCV's `IMREAD_GRAYSCALE`.

  Returns:
    (gray, None) when the frame decodes without a warning, else (None, libjpeg's message).
  """
  import simplejpeg  # pylint: disable=import-outside-toplevel
  try:
    img = simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True)
  except ValueError as e:
    return None, str(e).strip() or "decoding failed"
  return img.reshape(img.shape[:2]), None


def check_jpeg_decoder() -> None:
  """Fails before any work when the strict JPEG decoder (`decode_jpeg_gray_strict`) is
  missing."""
  try:
    import simplejpeg  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise ConversionError(
        f"the converter decodes JPEG frames strictly with simplejpeg, which does not import "
        f"({e}). Install it: pip install simplejpeg==1.9.0 (pinned in requirements.txt)."
    ) from e


def decode_frame(data: bytes, fmt: str):
  """Decodes a source frame to uint8 gray [H, W] and says what is wrong with it.

  A JPEG frame is decoded strictly (`decode_jpeg_gray_strict`: a libjpeg warning is an
  error); other formats by OpenCV (`decode_gray`). Then the structure is checked
  (`tfreid.data.image_check`). When a JPEG frame fails the strict decoding, the reason
  given is the most specific of: it does not decode at all (OpenCV refuses it), the
  structural damage found, or libjpeg's message.

  Args:
    data: the file's bytes (not empty).
    fmt: `sniff_format(data)`.

  Returns:
    (gray, None) for a good frame, (None, reason) for a frame to skip.
  """
  undecodable = "does not decode (truncated or corrupt image)"
  if fmt == "jpeg":
    gray, warning = decode_jpeg_gray_strict(data)
    if gray is None and decode_gray(data) is None:
      return None, undecodable
  else:
    gray, warning = decode_gray(data), None
    if gray is None:
      return None, undecodable
  problem = image_check.frame_problem(data, fmt) if fmt != "other" else None
  if problem is not None:
    return None, f"damaged {fmt.upper()} file: {problem}"
  if warning is not None:
    return None, f"libjpeg: {warning}"
  return gray, None


def to_png(data: bytes) -> bytes:
  """Re-encodes a decodable image as lossless PNG (colour kept, orientation ignored)."""
  import cv2  # pylint: disable=import-outside-toplevel
  img = cv2.imdecode(np.frombuffer(data, np.uint8),
                     cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
  ok, buf = cv2.imencode(".png", img)
  if not ok:
    raise RuntimeError("cv2.imencode could not write a PNG.")
  return buf.tobytes()


# --------------------------------------------------------------------------- encoding


@dataclasses.dataclass
class TrackletResult:
  """One tracklet read and checked: what goes into its record, and facts for the manifest.

  `frames` is empty when the tracklet is dropped (`dropped_reason` says why).
  """
  tracklet_id: int
  frames: list[bytes] = dataclasses.field(default_factory=list)
  positions: list[int] = dataclasses.field(default_factory=list)
  flow: Optional[list[bytes]] = None
  keypoints: Optional[np.ndarray] = None
  keypoints_present: Optional[np.ndarray] = None
  num_frames: int = 0
  height: int = 0
  width: int = 0
  frame_format: str = ""
  mixed_sizes: bool = False
  transcoded: int = 0
  keypoint_frames: int = 0
  flow_clipped: int = 0
  flow_values: int = 0
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  dropped_reason: str = ""


_CACHE: dict[str, Any] = {}


def _flow_computer(options: EncodeOptions):
  key = ("flow", options.flow_method, options.dis_preset)
  if key not in _CACHE:
    _CACHE[key] = flow_lib.FlowComputer(options.flow_method, options.dis_preset)
  return _CACHE[key]


def _keypoint_reader(arrays: keypoints_lib.KeypointArrays):
  key = ("kp", arrays.keypoints_path, arrays.sha256)
  if key not in _CACHE:
    _CACHE[key] = keypoints_lib.KeypointReader(arrays)
  return _CACHE[key]


def read_tracklet(root: str, spec: TrackletSpec, frame_offset: int, options: EncodeOptions
                  ) -> TrackletResult:
  """Reads and validates one tracklet's frames, with flow and keypoints (module docstring,
  step 2). Runs in the worker processes; `make_record` serialises the result.

  Args:
    root: dataset root; `spec.frames` are relative to it.
    spec: the tracklet.
    frame_offset: position of the tracklet's first frame in the conversion order (row of
      the keypoint arrays).
    options: flow and keypoint options.
  """
  result = TrackletResult(spec.tracklet_id)
  datas, formats, grays, positions = [], [], [], []
  for i, rel in enumerate(spec.frames):
    path = os.path.join(root, *rel.split("/"))
    try:
      with open(path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      result.skipped.append((rel, "missing file"))
      continue
    except OSError as e:
      result.skipped.append((rel, f"unreadable ({e.strerror or e})"))
      continue
    if not data:
      result.skipped.append((rel, "empty file"))
      continue
    fmt = sniff_format(data)
    gray, reason = decode_frame(data, fmt)
    if gray is None:
      result.skipped.append((rel, reason))
      continue
    datas.append(data)
    formats.append(fmt)
    grays.append(gray)
    positions.append(i)
  if not spec.frames:
    result.dropped_reason = "no frames"
    return result
  if not datas:
    result.dropped_reason = f"all {len(spec.frames)} frames skipped (see skipped_frames)"
    return result
  fmt = "jpeg" if all(f == "jpeg" for f in formats) else "png"
  if fmt == "png":
    for j, f in enumerate(formats):
      if f != "png":
        datas[j] = to_png(datas[j])
        result.transcoded += 1
  shapes = {g.shape for g in grays}
  result.height, result.width = grays[0].shape
  result.mixed_sizes = len(shapes) > 1
  result.num_frames = len(datas)
  result.frame_format = fmt
  if options.optical_flow:
    result.flow, result.flow_clipped, result.flow_values = flow_lib.tracklet_flow(
        grays, _flow_computer(options), options.flow_scale)
  del grays
  if options.keypoints is not None:
    result.keypoints, result.keypoints_present = _keypoint_reader(options.keypoints).rows(
        frame_offset, positions)
    result.keypoint_frames = int(result.keypoints_present.sum())
  result.frames, result.positions = datas, positions
  return result


def make_record(spec: TrackletSpec, res: TrackletResult) -> bytes:
  """The tracklet's tf.train.Example bytes, by `tfreid.data.schema.encode_tracklet`."""
  return schema.encode_tracklet(
      frames=res.frames, frame_format=res.frame_format, pid=spec.pid, camid=spec.camid,
      tracklet_id=spec.tracklet_id, label=spec.label,
      frame_names=[spec.frames[i] for i in res.positions],
      frame_numbers=[spec.frame_numbers[i] for i in res.positions],
      height=res.height, width=res.width, flow=res.flow, keypoints=res.keypoints,
      keypoints_present=res.keypoints_present)


def _init_worker(root: str, options: EncodeOptions) -> None:
  import cv2  # pylint: disable=import-outside-toplevel
  cv2.setNumThreads(1)
  _CACHE["root"] = root
  _CACHE["options"] = options


def _read_task(task: tuple[TrackletSpec, int]) -> TrackletResult:
  spec, offset = task
  return read_tracklet(_CACHE["root"], spec, offset, _CACHE["options"])


# ----------------------------------------------------------------------- tfrecord files


def count_records(path: str) -> int:
  """Number of records of a TFRecord file, read from the framing (lengths) only.

  Raises:
    ValueError: the file ends inside a record (a truncated shard).
  """
  size = os.path.getsize(path)
  count = pos = 0
  with open(path, "rb") as f:
    while pos < size:
      header = f.read(12)
      if len(header) < 12:
        raise ValueError(f"{path} is truncated at byte {pos} (incomplete record header).")
      (length,) = struct.unpack("<Q", header[:8])
      pos += 12 + length + 4
      if pos > size:
        raise ValueError(f"{path} is truncated: a record of {length} bytes runs past the end.")
      f.seek(pos)
      count += 1
  return count


def read_record(path: str, offset: int) -> bytes:
  """The record that starts at byte `offset` of a TFRecord file (see tracklets.csv)."""
  with open(path, "rb") as f:
    f.seek(offset)
    header = f.read(12)
    if len(header) < 12:
      raise ValueError(f"{path} has no record at byte {offset}.")
    (length,) = struct.unpack("<Q", header[:8])
    data = f.read(length)
    if len(data) != length:
      raise ValueError(f"{path}: the record at byte {offset} is truncated.")
  return data


def iter_records(path: str) -> Iterator[bytes]:
  """The records of a TFRecord file, in order (plain Python, no TensorFlow)."""
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f"{path} ends inside a record header.")
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      f.read(4)
      if len(data) != length:
        raise ValueError(f"{path} ends inside a record.")
      yield data


# ------------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  """One shard: its file name, group and tracklets (positions in the index)."""
  file: str
  group: str
  tracklets: tuple[int, ...]
  num_frames: int
  source_bytes: int


def source_bytes(root: str, spec: TrackletSpec) -> int:
  """Sum of the tracklet's frame file sizes (missing files count 0)."""
  total = 0
  for rel in spec.frames:
    try:
      total += os.stat(os.path.join(root, *rel.split("/"))).st_size
    except OSError:
      pass
  return total


def plan_shards(index: DatasetIndex, sizes: Sequence[int], shard_size_mb: float
                ) -> list[ShardPlan]:
  """Cuts the tracklets (id order) into shards of about `shard_size_mb`, per group."""
  if shard_size_mb <= 0:
    raise ValueError(f"shard_size_mb must be > 0, got {shard_size_mb}.")
  budget = shard_size_mb * 1024 * 1024
  per_group: dict[str, list[list[int]]] = collections.OrderedDict()
  for group in GROUPS:
    current, current_bytes = [], 0
    shards = []
    for pos, spec in enumerate(index.tracklets):
      if spec.group != group:
        continue
      if current and current_bytes + sizes[pos] > budget:
        shards.append(current)
        current, current_bytes = [], 0
      current.append(pos)
      current_bytes += sizes[pos]
    if current:
      shards.append(current)
    if shards:
      per_group[group] = shards
  plan = []
  for group, shards in per_group.items():
    for i, members in enumerate(shards):
      plan.append(ShardPlan(
          file=f"{index.dataset}-{group}-{i:05d}-of-{len(shards):05d}.tfrecord", group=group,
          tracklets=tuple(members),
          num_frames=sum(len(index.tracklets[p].frames) for p in members),
          source_bytes=sum(sizes[p] for p in members)))
  return plan


def plan_fingerprint(index: DatasetIndex, plan: Sequence[ShardPlan], options: EncodeOptions
                     ) -> str:
  """sha256 of everything that determines the shards' bytes."""
  h = hashlib.sha256()
  h.update(json.dumps({"state_version": STATE_VERSION, "schema": schema.SCHEMA_VERSION,
                       "dataset": index.dataset, "options": options.fingerprint()},
                      sort_keys=True).encode())
  for shard in plan:
    h.update(f"\nshard {shard.file} {shard.group} {shard.source_bytes}".encode())
    for pos in shard.tracklets:
      s = index.tracklets[pos]
      h.update(f"\n{s.tracklet_id} {s.pid} {s.camid} {s.label} ".encode())
      h.update("\0".join(s.frames).encode())
      h.update(np.asarray(s.frame_numbers, np.int64).tobytes())
  return h.hexdigest()


# ----------------------------------------------------------------------------- progress


class Progress:
  """A progress bar with rate and ETA on stderr (one line every 10 s when not a terminal)."""

  def __init__(self, total: int, done: int = 0, unit: str = "frames", enabled: bool = True,
               stream=None, label: str = "converting"):
    self.total, self.done, self.unit, self.label = total, done, unit, label
    self.enabled = enabled
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.start = time.monotonic()
    self.start_done = done
    self.last = 0.0
    self.interval = 0.2 if self.tty else 10.0

  def line(self) -> str:
    elapsed = max(time.monotonic() - self.start, 1e-9)
    rate = (self.done - self.start_done) / elapsed
    frac = self.done / self.total if self.total else 1.0
    eta = (self.total - self.done) / rate if rate > 0 else float("nan")
    bar = "#" * int(round(frac * 24))
    eta_s = (time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "--:--:--")
    return (f"{self.label} {frac * 100:5.1f}% |{bar:<24}| {self.done:,}/{self.total:,} "
            f"{self.unit}  {rate:,.0f} {self.unit}/s  ETA {eta_s}")

  def update(self, n: int) -> None:
    self.done += n
    now = time.monotonic()
    if self.enabled and now - self.last >= self.interval:
      self.last = now
      self._emit()

  def _emit(self, end: str = "") -> None:
    if self.tty:
      self.stream.write("\r" + self.line() + end)
    else:
      self.stream.write(self.line() + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self.enabled:
      self._emit("\n")


# ------------------------------------------------------------------------------ state


def _state_path(output_dir: str) -> str:
  return os.path.join(output_dir, STATE_NAME)


def load_state(output_dir: str) -> Optional[dict[str, Any]]:
  path = _state_path(output_dir)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      state = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return state if state.get("version") == STATE_VERSION else None


def save_state(output_dir: str, state: dict[str, Any]) -> None:
  path = _state_path(output_dir)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(state, f, separators=(",", ":"))
  os.replace(tmp, path)


def verify_shard(output_dir: str, entry: dict[str, Any]) -> Optional[str]:
  """What is wrong with a finished shard on disk, or None when it is what was written.

  Checked against its state entry: the byte size; every record's framing and both of its
  masked CRC-32Cs (as TFRecord readers check them); that the records start at the byte
  offsets recorded for its tracklets (tracklets.csv) and hold those tracklet ids, in
  order and none missing; and every frame with `tfreid.data.image_check` (a shard written
  before those checks may hold a damaged source frame). Frames are not decoded: a shard
  whose entry does not record `FRAME_CHECKS` (written before JPEG frames were decoded
  strictly) fails, as its frames may include one that libjpeg warns about.
  """
  from tfreid.data import reader  # pylint: disable=import-outside-toplevel
  if entry.get("frame_checks") != FRAME_CHECKS:
    return ("it was written before JPEG frames were decoded strictly (a frame libjpeg warns "
            "about may be in it)")
  path = os.path.join(output_dir, entry["file"])
  try:
    size = os.path.getsize(path)
  except OSError:
    return "it is missing"
  if size != entry["bytes"]:
    return f"it has {size} bytes where {entry['bytes']} were written"
  expected = entry["tracklets"]  # [tid, frames, height, width, format, mixed, offset, kp]
  pos = 0
  with open(path, "rb") as f:
    for i, (tid, _, _, _, fmt, _, offset, _) in enumerate(expected):
      where = f"record {i} (tracklet {tid}) at byte {pos}"
      if pos != offset:
        return f"{where}: the conversion wrote it at byte {offset}"
      header = f.read(12)
      if len(header) < 12:
        return f"{where}: the file ends inside it"
      length, length_crc = struct.unpack("<QI", header)
      if reader.masked_crc32c(header[:8]) != length_crc:
        return f"{where}: its length fails its checksum"
      if pos + 16 + length > size:
        return f"{where}: it runs past the end of the file"
      payload = f.read(length)
      if reader.masked_crc32c(payload) != struct.unpack("<I", f.read(4))[0]:
        return f"{where}: its data fails its checksum"
      try:
        found_id, frames = _id_and_frames(payload)
      except (ValueError, IndexError):
        return f"{where}: it is not a tf.train.Example"
      if found_id != [tid]:
        return f"{where}: it holds tracklet {found_id}"
      for t, frame in enumerate(frames):
        problem = image_check.frame_problem(frame, fmt)
        if problem is not None:
          return f"{where}: frame {t} is a damaged {fmt.upper()} image ({problem})"
      pos += 16 + length
  if pos != size:
    return f"it holds more than the {len(expected)} records written"
  return None


def _fields(buf: bytes, start: int, end: int):
  """(field number, wire type, value) of the protobuf message in buf[start:end]; the value
  of a length-delimited field is its (start, end)."""
  pos = start
  while pos < end:
    tag, pos = _varint(buf, pos)
    wire_type = tag & 7
    if wire_type == 0:
      value, pos = _varint(buf, pos)
    elif wire_type == 2:
      size, pos = _varint(buf, pos)
      value = (pos, pos + size)
      pos += size
    elif wire_type in (1, 5):
      value, pos = None, pos + (8 if wire_type == 1 else 4)
    else:
      raise ValueError(f"wire type {wire_type}")
    if pos > end:
      raise ValueError("a field runs past the end of its message")
    yield tag >> 3, wire_type, value


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    byte = buf[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    if byte < 0x80:
      return result, pos
    shift += 7
    if shift > 63:
      raise ValueError("varint too long")


def _id_and_frames(payload: bytes) -> tuple[list[int], list[bytes]]:
  """The tracklet id(s) and frames of a serialized tf.train.Example (schema.py keys),
  without TensorFlow (a resume that has nothing to write does not import it)."""
  ids: list[int] = []
  frames: list[bytes] = []
  for field, wire_type, features in _fields(payload, 0, len(payload)):
    if field != 1 or wire_type != 2:  # Example.features
      continue
    for field, wire_type, entry in _fields(payload, *features):
      if field != 1 or wire_type != 2:  # Features.feature map entry
        continue
      key = value = None
      for field, wire_type, part in _fields(payload, *entry):
        if field == 1 and wire_type == 2:
          key = payload[part[0]:part[1]]
        elif field == 2 and wire_type == 2:
          value = part
      if value is None:
        continue
      if key == schema.TRACKLET_ID.encode():
        for field, wire_type, part in _fields(payload, *value):
          if field == 3 and wire_type == 2:  # Feature.int64_list
            for _, kind, number in _fields(payload, *part):
              if kind == 2:  # packed
                pos = number[0]
                while pos < number[1]:
                  got, pos = _varint(payload, pos)
                  ids.append(got)
              elif kind == 0:
                ids.append(number)
      elif key == schema.FRAMES.encode():
        for field, wire_type, part in _fields(payload, *value):
          if field == 1 and wire_type == 2:  # Feature.bytes_list
            frames.extend(payload[a:b] for f, k, (a, b) in _fields(payload, *part)
                          if f == 1 and k == 2)
  return ids, frames


def shard_is_complete(output_dir: str, entry: dict[str, Any]) -> bool:
  """A finished shard is on disk as it was written (`verify_shard`)."""
  return verify_shard(output_dir, entry) is None


def remove_outputs(output_dir: str, state: Optional[dict[str, Any]]) -> None:
  """Deletes what an earlier conversion wrote here (its shards, manifest, index, state)."""
  names = set()
  if state:
    names.update(state.get("plan", []))
  manifest_path = os.path.join(output_dir, schema.MANIFEST_NAME)
  if os.path.exists(manifest_path):
    try:
      with open(manifest_path) as f:
        names.update(s["file"] for s in json.load(f).get("shards", []))
    except (OSError, ValueError, KeyError, TypeError):
      pass
  names.update([schema.MANIFEST_NAME, "tracklets.csv", STATE_NAME])
  for name in names:
    if os.path.basename(name) != name:
      continue
    try:
      os.remove(os.path.join(output_dir, name))
    except FileNotFoundError:
      pass


# ------------------------------------------------------------------------------ write


@dataclasses.dataclass
class ConversionResult:
  """What `write_shards` did: the shards and, per stored tracklet, what it holds.

  Attributes:
    shards: [{"file", "num_records", "group", "bytes"}] in plan order.
    tracklets: tracklet_id -> {"num_frames", "height", "width", "frame_format",
      "mixed_sizes", "shard", "offset", "keypoint_frames"} for every written tracklet.
    skipped_frames: [{"path", "reason"}].
    dropped_tracklets: [{"tracklet", "reason"}] (tracklets left without frames).
    transcoded_frames, flow_clipped, flow_values: totals.
    resumed_shards: shards found complete and not rewritten.
    written_shards: shards written by this call.
  """
  shards: list[dict[str, Any]]
  tracklets: dict[int, dict[str, Any]]
  skipped_frames: list[dict[str, str]]
  dropped_tracklets: list[dict[str, str]]
  transcoded_frames: int
  flow_clipped: int
  flow_values: int
  resumed_shards: list[str]
  written_shards: list[str]


def _shard_entry(shard: ShardPlan, index: DatasetIndex, results: list[TrackletResult],
                 offsets: list[int], num_bytes: int) -> dict[str, Any]:
  """The state entry of a finished shard (all the manifest needs from it)."""
  tracklets, skipped, dropped = [], [], []
  transcoded = clipped = values = 0
  for res, off in zip(results, offsets):
    spec = index.tracklets[res.tracklet_id]
    skipped.extend({"path": p, "reason": r} for p, r in res.skipped)
    if res.dropped_reason:
      dropped.append({"tracklet": spec.name, "reason": res.dropped_reason})
      continue
    tracklets.append([res.tracklet_id, res.num_frames, res.height, res.width,
                      res.frame_format, int(res.mixed_sizes), off, res.keypoint_frames])
    transcoded += res.transcoded
    clipped += res.flow_clipped
    values += res.flow_values
  return {"file": shard.file, "group": shard.group, "frame_checks": FRAME_CHECKS,
          "num_records": len(tracklets), "bytes": num_bytes, "tracklets": tracklets,
          "skipped_frames": skipped, "dropped_tracklets": dropped,
          "transcoded_frames": transcoded, "flow_clipped": clipped, "flow_values": values}


class _ShardWriter:
  """Writes one shard to `<file>.tmp` and renames it when complete."""

  def __init__(self, output_dir: str, shard: ShardPlan):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    self.shard = shard
    self.path = os.path.join(output_dir, shard.file)
    self.tmp = self.path + ".tmp"
    self.writer = tf.io.TFRecordWriter(self.tmp)
    self.offset = 0
    self.results: list[TrackletResult] = []
    self.offsets: list[int] = []

  def add(self, spec: TrackletSpec, res: TrackletResult) -> None:
    self.results.append(res)
    self.offsets.append(self.offset)
    if res.frames:
      record = make_record(spec, res)
      self.writer.write(record)
      self.offset += 16 + len(record)
    # Written: keep only the facts.
    res.frames, res.flow, res.keypoints, res.keypoints_present = [], None, None, None

  @property
  def full(self) -> bool:
    return len(self.results) == len(self.shard.tracklets)

  def finish(self) -> int:
    self.writer.close()
    with open(self.tmp, "rb+") as f:
      os.fsync(f.fileno())
    size = os.path.getsize(self.tmp)
    if size != self.offset:
      raise RuntimeError(f"{self.tmp}: wrote {size} bytes, expected {self.offset}.")
    os.replace(self.tmp, self.path)
    return size

  def abort(self) -> None:
    try:
      self.writer.close()
    except Exception:  # pylint: disable=broad-except
      pass
    try:
      os.remove(self.tmp)
    except FileNotFoundError:
      pass


def write_shards(index: DatasetIndex, output_dir: str, *, options: EncodeOptions,
                 shard_size_mb: float = 256, num_workers: int = 1, overwrite: bool = False,
                 progress: bool = True, sizes: Optional[Sequence[int]] = None,
                 log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)
                 ) -> ConversionResult:
  """Plans, encodes and writes the shards of `index` into `output_dir` (module docstring).

  Args:
    index: the dataset index (finalised: labels set).
    output_dir: where shards, state and (later) the manifest go; created if needed.
    options: flow/keypoint options (keypoints already joined, see keypoints.py).
    shard_size_mb: target shard size in MiB of source frame bytes.
    num_workers: encoding processes; 1 encodes in this process. Output does not depend on it.
    overwrite: replace an earlier conversion of different input or options in output_dir.
    progress: draw the progress bar on stderr.
    sizes: per tracklet source bytes (computed with `source_bytes` when None).
    log: where one-line notes go.

  Raises:
    ConversionError: output_dir holds a conversion of other input/options and not overwrite.
  """
  check_jpeg_decoder()
  os.makedirs(output_dir, exist_ok=True)
  if sizes is None:
    sizes = [source_bytes(index.root, s) for s in index.tracklets]
  plan = plan_shards(index, sizes, shard_size_mb)
  fingerprint = plan_fingerprint(index, plan, options)
  state = load_state(output_dir)
  manifest_exists = os.path.exists(os.path.join(output_dir, schema.MANIFEST_NAME))
  if (state and state.get("fingerprint") != fingerprint) or (not state and manifest_exists):
    if not overwrite:
      raise ConversionError(
          f"{output_dir} already holds a conversion of other input or options (its "
          f"{STATE_NAME} or {schema.MANIFEST_NAME} does not match this run). Choose another "
          "--output_dir, or pass --overwrite to replace it.")
    log(f"replacing the earlier conversion in {output_dir}")
    remove_outputs(output_dir, state)
    state = None
  plan_files = [s.file for s in plan]
  in_plan = set(plan_files)
  for name in os.listdir(output_dir):
    if re.fullmatch(r".+\.tfrecord\.tmp", name):
      os.remove(os.path.join(output_dir, name))  # a shard interrupted mid-write
  done = {}
  if state:
    for name, entry in state.get("shards", {}).items():
      if name not in in_plan:
        continue
      problem = verify_shard(output_dir, entry)
      if problem is None:
        done[name] = entry
      else:
        log(f"re-converting {name}: {problem}")
  state = {"version": STATE_VERSION, "fingerprint": fingerprint, "plan": plan_files,
           "shards": done}
  save_state(output_dir, state)
  resumed = [f for f in plan_files if f in done]
  if resumed:
    log(f"resuming: {len(resumed)} of {len(plan)} shards already complete")

  offsets, total = [], 0
  for spec in index.tracklets:
    offsets.append(total)
    total += len(spec.frames)
  pending = [s for s in plan if s.file not in done]
  bar = Progress(total=sum(s.num_frames for s in plan),
                 done=sum(s.num_frames for s in plan if s.file in done), enabled=progress)
  tasks = ((index.tracklets[p], offsets[p]) for s in pending for p in s.tracklets)
  written = []
  writer = None
  import cv2  # pylint: disable=import-outside-toplevel
  cv2_threads = cv2.getNumThreads()
  pool = None
  try:
    if num_workers > 1 and pending:
      ctx = multiprocessing.get_context("spawn")
      pool = ctx.Pool(num_workers, initializer=_init_worker, initargs=(index.root, options))
      results = _ordered_window(pool, tasks, window=2 * num_workers + 2)
    else:
      cv2.setNumThreads(1)
      results = (read_tracklet(index.root, spec, off, options) for spec, off in tasks)
    shard_iter = iter(pending)
    for res in results:
      if writer is None:
        writer = _ShardWriter(output_dir, next(shard_iter))
      spec = index.tracklets[res.tracklet_id]
      bar.update(len(spec.frames))
      writer.add(spec, res)
      if writer.full:
        num_bytes = writer.finish()
        entry = _shard_entry(writer.shard, index, writer.results, writer.offsets, num_bytes)
        state["shards"][writer.shard.file] = entry
        save_state(output_dir, state)
        written.append(writer.shard.file)
        writer = None
  except BaseException:
    if writer is not None:
      writer.abort()
    raise
  finally:
    if pool is not None:
      pool.terminate()
      pool.join()
    cv2.setNumThreads(cv2_threads)
    bar.close()
  return _collect(index, plan, state, resumed, written)


def _ordered_window(pool, tasks, window: int) -> Iterator[TrackletResult]:
  """Results of `tasks` in order, with at most `window` tasks submitted and not yet consumed."""
  queue = collections.deque()
  for task in tasks:
    queue.append(pool.apply_async(_read_task, (task,)))
    if len(queue) >= window:
      yield queue.popleft().get()
  while queue:
    yield queue.popleft().get()


def _collect(index: DatasetIndex, plan: Sequence[ShardPlan], state: dict[str, Any],
             resumed: list[str], written: list[str]) -> ConversionResult:
  shards, tracklets, skipped, dropped = [], {}, [], []
  transcoded = clipped = values = 0
  for shard in plan:
    entry = state["shards"][shard.file]
    shards.append({"file": shard.file, "num_records": entry["num_records"],
                   "group": shard.group, "bytes": entry["bytes"]})
    for tid, n, h, w, fmt, mixed, off, kpf in entry["tracklets"]:
      tracklets[tid] = {"num_frames": n, "height": h, "width": w, "frame_format": fmt,
                        "mixed_sizes": bool(mixed), "shard": shard.file, "offset": off,
                        "keypoint_frames": kpf}
    skipped.extend(entry["skipped_frames"])
    dropped.extend(entry["dropped_tracklets"])
    transcoded += entry["transcoded_frames"]
    clipped += entry["flow_clipped"]
    values += entry["flow_values"]
  return ConversionResult(shards, tracklets, skipped, dropped, transcoded, clipped, values,
                          resumed, written)
