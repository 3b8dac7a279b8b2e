"""The tracklet TFRecord schema and the manifest, shared by converters and the pipeline.

One `tf.train.Example` per tracklet:

| feature | type | meaning |
| --- | --- | --- |
| `frames` | bytes list | encoded frames in temporal order; JPEG sources kept byte-for-byte, PNG sources kept as PNG (lossless) |
| `frame_format` | bytes | `jpeg` or `png` |
| `frame_names` | bytes list | frame paths relative to the dataset root (`/`-separated) |
| `frame_numbers` | int64 list | frame number of each frame in its source video/tracklet |
| `pid` | int64 | original person id (MARS: -1 junk, 0 distractor) |
| `label` | int64 | training label of split 0 (train pids relabelled 0..N-1 in sorted pid order), -1 outside train |
| `camid` | int64 | 0-based camera id |
| `tracklet_id` | int64 | unique 0-based id of the tracklet within the converted dataset |
| `num_frames` | int64 | number of frames |
| `height`, `width` | int64 | frame size in pixels |
| `flow` (optional) | bytes list | per frame, a PNG of uint8 [H, W, 3]: channels 0, 1 = quantised (dx, dy), channel 2 = 0; `q = clip(round(f * flow_scale) + 128, 0, 255)`, `f = (q - 128) / flow_scale` with `flow_scale` in the manifest |
| `keypoints` (optional) | float list | per frame 14 joints (MPII order) x (x, y, visibility), flattened [num_frames * 42], pixel coordinates of the stored frame |
| `keypoints_present` (optional) | int64 list | per frame 1 when the keypoints file had that frame, else 0 (its joints are zeros) |

The manifest (`manifest.json`) beside the shards; see `MANIFEST_DOC`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
NUM_JOINTS = 14
# The 14 joints are MPII's 16 without pelvis and thorax, in MPII order. STAL (fig. 3)
# groups them into head, torso, arms and legs by name.
JOINT_NAMES = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "neck", "head_top",
               "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist")
# Index of each joint's mirror image (left <-> right), for horizontal flips.
FLIP_PERMUTATION = (5, 4, 3, 2, 1, 0, 6, 7, 13, 12, 11, 10, 9, 8)

MANIFEST_DOC = """
manifest.json keys:
  schema_version   int, SCHEMA_VERSION
  dataset          mars | ilidsvid | prid2011 | dukev | folder
  num_splits       1, or 10 for iLIDS-VID / PRID-2011
  frame_format     jpeg | png
  partitions       {train, query, gallery}: {tracklets, identities, frames} of split 0 and
                   the default protocol
  protocols        {name: {"query": partition, "gallery": partition}}; the first is the
                   default. MARS: torchreid (query/gallery) and mars_matlab
                   (query/gallery_all: every test tracklet, junk included).
  splits           list of num_splits dicts: partition name -> sorted tracklet ids, plus
                   "train_pids": sorted original pids of the split's train partition (the
                   label of a train tracklet is the index of its pid in that list)
  shards           list of {"file", "num_records", "group"}: group "train" holds only train
                   tracklets, "test" only the others, "all" either (split datasets)
  flow             {"scale": float, "method": str} when converted with --optical_flow
  keypoints        {"source": file name, "frames_with_keypoints": int, "frames": int}
                   when converted with --keypoints
  skipped_frames   list of {"path", "reason"}
  dropped_tracklets list of {"tracklet", "reason"}
  split_source     how the splits were made (e.g. "ls_set in train-test people
                   splits/train_test_splits_ilidsvid.mat")
"""

# Feature keys.
FRAMES = "frames"
FRAME_FORMAT = "frame_format"
FRAME_NAMES = "frame_names"
FRAME_NUMBERS = "frame_numbers"
PID = "pid"
LABEL = "label"
CAMID = "camid"
TRACKLET_ID = "tracklet_id"
NUM_FRAMES = "num_frames"
HEIGHT = "height"
WIDTH = "width"
FLOW = "flow"
KEYPOINTS = "keypoints"
KEYPOINTS_PRESENT = "keypoints_present"


class DatasetError(ValueError):
  """A converted dataset directory is missing, incomplete or inconsistent."""


def convert_hint() -> str:
  return ("Convert a dataset with `python -m data_pipelines.convert --dataset={mars,ilidsvid,"
          "prid2011,dukev,folder} --input_dir=SRC --output_dir=DST`, or make the built-in "
          "synthetic one (no download needed) with `python -m data_pipelines.synthetic "
          "--output_dir=/tmp/synth_raw && python -m data_pipelines.convert --dataset=mars "
          "--input_dir=/tmp/synth_raw --output_dir=/tmp/synth`; `make quickstart` does all "
          "of it for NAME:synthetic.")


def file_in_folder(folder: str, name: Any, what: str) -> str:
  """`folder/name` for a file name read from a data file (a manifest's shard), refusing a
  name that would leave the folder (absolute, a parent reference, a separator)."""
  if (not isinstance(name, str) or not name or os.path.isabs(name) or "/" in name
      or "\\" in name or name in (".", "..") or os.sep in name):
    raise DatasetError(f"{what} {name!r} is not a plain file name inside {folder}: names "
                       "read from a dataset's files never lead outside its folder. The "
                       "manifest is damaged or was edited by hand: re-run the converter.")
  return os.path.join(folder, name)


def path_component(name: Any, default: str = "dataset") -> str:
  """A name read from a data file made safe to use as one path component: letters, digits,
  '-', '_' and '.' kept, anything else '_', no leading dot (so never '..')."""
  cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name or "")).lstrip(".")
  return cleaned or default


def read_manifest(data_dir: str) -> dict[str, Any]:
  """Reads DST/manifest.json, with an error that says how to make one."""
  if not data_dir:
    raise DatasetError("no data directory given (--data_dir or data.data_dir). "
                       + convert_hint())
  path = os.path.join(data_dir, MANIFEST_NAME)
  if not os.path.exists(path):
    raise DatasetError(f"{data_dir!r} has no {MANIFEST_NAME}: it is not a converted tfreid "
                       "dataset. " + convert_hint())
  with open(path) as f:
    manifest = json.load(f)
  version = manifest.get("schema_version")
  if version != SCHEMA_VERSION:
    raise DatasetError(f"{path} has schema_version {version!r}; this tfreid reads "
                       f"{SCHEMA_VERSION}. Re-run the converter.")
  return manifest


def write_manifest(data_dir: str, manifest: dict[str, Any]) -> None:
  """Writes manifest.json atomically (temp file + rename)."""
  path = os.path.join(data_dir, MANIFEST_NAME)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=False)
  os.replace(tmp, path)


def encode_tracklet(*, frames, frame_format: str, pid: int, camid: int, tracklet_id: int,
                    label: int = -1, frame_names=None, frame_numbers=None, height: int = 0,
                    width: int = 0, flow=None, keypoints=None, keypoints_present=None
                    ) -> bytes:
  """Serialises one tracklet as a tf.train.Example (see the module docstring).

  Args:
    frames: encoded frames (bytes), in temporal order.
    frame_format: "jpeg" or "png".
    flow: optional list of per-frame PNG bytes (quantised flow, see module docstring).
    keypoints: optional float array-like [num_frames, 14, 3].
    keypoints_present: optional int array-like [num_frames] (1 = known).
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

  def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

  frames = list(frames)
  n = len(frames)
  if n == 0:
    raise ValueError(f"tracklet {tracklet_id} has no frames.")
  if frame_format not in ("jpeg", "png"):
    raise ValueError(f"frame_format must be 'jpeg' or 'png', got {frame_format!r}.")
  names = [s.encode() if isinstance(s, str) else s for s in (frame_names or [b""] * n)]
  numbers = list(frame_numbers) if frame_numbers is not None else list(range(n))
  if len(names) != n or len(numbers) != n:
    raise ValueError(f"tracklet {tracklet_id}: {n} frames but {len(names)} names and "
                     f"{len(numbers)} frame numbers.")
  feature = {
      FRAMES: _bytes(frames),
      FRAME_FORMAT: _bytes([frame_format.encode()]),
      FRAME_NAMES: _bytes(names),
      FRAME_NUMBERS: _ints(numbers),
      PID: _ints([pid]),
      LABEL: _ints([label]),
      CAMID: _ints([camid]),
      TRACKLET_ID: _ints([tracklet_id]),
      NUM_FRAMES: _ints([n]),
      HEIGHT: _ints([height]),
      WIDTH: _ints([width]),
  }
  if flow is not None:
    flow = list(flow)
    if len(flow) != n:
      raise ValueError(f"tracklet {tracklet_id}: {n} frames but {len(flow)} flow frames.")
    feature[FLOW] = _bytes(flow)
  if keypoints is not None:
    kp = np.asarray(keypoints, np.float32)
    if kp.shape != (n, NUM_JOINTS, 3):
      raise ValueError(f"tracklet {tracklet_id}: keypoints must be [{n}, {NUM_JOINTS}, 3], "
                       f"got {list(kp.shape)}.")
    present = (np.ones(n, np.int64) if keypoints_present is None
               else np.asarray(keypoints_present, np.int64))
    feature[KEYPOINTS] = tf.train.Feature(float_list=tf.train.FloatList(value=kp.ravel()))
    feature[KEYPOINTS_PRESENT] = _ints(present)
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  # deterministic=True orders the feature map by key; otherwise the order (and so the
  # bytes) depends on the process's string hash seed.
  return example.SerializeToString(deterministic=True)
