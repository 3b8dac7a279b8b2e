"""Per-frame body keypoints (`--keypoints=FILE`) joined onto the converted tracklets.

The file is JSON lines, one object per frame:

    {"frame": "bbox_train/0001/0001C1T0001F001.jpg", "keypoints": [[x, y, v], ... 14 ...]}

`frame` is the frame's path relative to `--input_dir`, `/`-separated; `keypoints` are the
14 joints in `tfreid.data.schema.JOINT_NAMES` order (MPII without pelvis and thorax), x and y
in pixels of the stored frame, v the visibility or detector confidence. A pose estimator run
over the dataset writes this file; STAL (papers/stal_spatial_temporal_attention.md) groups
the joints into body parts.

Frames without a line are stored with `keypoints_present = 0` and zero joints: nothing is
fabricated. Lines naming frames that are not part of the converted dataset are counted in
`manifest["keypoints"]["unmatched_lines"]`. A malformed line or a frame listed twice is an
error naming the line.

To keep memory independent of the dataset size, the lines are written into two disk-backed
arrays indexed by the frame's position in the conversion order (`[num_frames, 14, 3]`
float32 and `[num_frames]` uint8); the shard workers read their tracklet's rows from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
from typing import Iterable

import numpy as np

from tfreid.data import schema


@dataclasses.dataclass(frozen=True)
class KeypointArrays:
  """Where the joined keypoints are, and what the join found."""
  keypoints_path: str
  present_path: str
  source: str
  sha256: str
  lines: int
  unmatched_lines: int
  unmatched_examples: tuple[str, ...]


def normalize_frame_path(path: str) -> str:
  """`./a\\b/c.jpg` -> `a/b/c.jpg`: the form frame paths take in the index and the file."""
  path = path.replace("\\", "/")
  path = posixpath.normpath(path)
  while path.startswith("./"):
    path = path[2:]
  return path


def _parse_line(line: str, where: str) -> tuple[str, np.ndarray]:
  """One JSON line -> (normalised frame path, float32 [14, 3])."""
  expect = (f'expected {{"frame": "<path relative to input_dir>", "keypoints": '
            f"[[x, y, v] x {schema.NUM_JOINTS}]}} with the joints in the order "
            f"{', '.join(schema.JOINT_NAMES)}.")
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: not valid JSON ({e.msg}); {expect}") from None
  if not isinstance(obj, dict) or not isinstance(obj.get("frame"), str) or "keypoints" not in obj:
    raise ValueError(f"{where}: missing 'frame' or 'keypoints'; {expect}")
  joints = obj["keypoints"]
  ok = (isinstance(joints, list) and len(joints) == schema.NUM_JOINTS
        and all(isinstance(j, list) and len(j) == 3 for j in joints))
  if ok:
    try:
      kp = np.asarray(joints, np.float64)
    except (TypeError, ValueError):
      ok = False
  if not ok or not np.all(np.isfinite(kp)):
    raise ValueError(f"{where}: 'keypoints' of {obj['frame']!r} must be {schema.NUM_JOINTS} "
                     f"finite [x, y, v] triples; {expect}")
  return normalize_frame_path(obj["frame"]), kp.astype(np.float32)


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def join_keypoints(keypoints_file: str, frame_paths: Iterable[str], num_frames: int,
                   work_dir: str) -> KeypointArrays:
  """Joins the JSON-lines file onto the frames (in conversion order) into disk arrays.

  Args:
    keypoints_file: the `--keypoints` file.
    frame_paths: every frame path of the dataset, `/`-separated relative to input_dir, in
      conversion order (tracklet id order, then frame order); position = row.
    num_frames: the number of paths.
    work_dir: where the two arrays are written (removed by the caller when done).
  """
  if not os.path.isfile(keypoints_file):
    raise FileNotFoundError(f"--keypoints file {keypoints_file!r} does not exist; it should be "
                            "JSON lines as described in data_pipelines/keypoints.py.")
  row_of = {}
  for row, path in enumerate(frame_paths):
    row_of[path] = row
  os.makedirs(work_dir, exist_ok=True)
  kp_path = os.path.join(work_dir, "keypoints.npy")
  present_path = os.path.join(work_dir, "present.npy")
  rows = max(num_frames, 1)
  kp = np.lib.format.open_memmap(kp_path, mode="w+", dtype=np.float32,
                                 shape=(rows, schema.NUM_JOINTS, 3))
  present = np.lib.format.open_memmap(present_path, mode="w+", dtype=np.uint8, shape=(rows,))
  lines = unmatched = 0
  examples = []
  with open(keypoints_file, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      lines += 1
      where = f"{keypoints_file} line {number}"
      path, joints = _parse_line(line, where)
      row = row_of.get(path)
      if row is None:
        unmatched += 1
        if len(examples) < 5:
          examples.append(path)
        continue
      if present[row]:
        raise ValueError(f"{where}: frame {path!r} has keypoints on an earlier line too; keep "
                         "one line per frame.")
      kp[row] = joints
      present[row] = 1
  kp.flush()
  present.flush()
  del kp, present, row_of
  return KeypointArrays(kp_path, present_path, os.path.basename(keypoints_file),
                        file_sha256(keypoints_file), lines, unmatched, tuple(examples))


class KeypointReader:
  """Reads a tracklet's rows from the arrays written by `join_keypoints` (memory-mapped)."""

  def __init__(self, arrays: KeypointArrays):
    self._kp = np.load(arrays.keypoints_path, mmap_mode="r")
    self._present = np.load(arrays.present_path, mmap_mode="r")

  def rows(self, start: int, positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n, 14, 3], int64 [n]) of frames `start + p` for p in positions."""
    idx = np.asarray(positions, np.int64) + start
    return (np.array(self._kp[idx], np.float32), np.array(self._present[idx], np.int64))


def keypoints_manifest(arrays: KeypointArrays, frames_with_keypoints: int, frames: int) -> dict:
  """The manifest["keypoints"] entry (schema.MANIFEST_DOC)."""
  return {"source": arrays.source, "frames_with_keypoints": int(frames_with_keypoints),
          "frames": int(frames), "lines": arrays.lines,
          "unmatched_lines": arrays.unmatched_lines,
          "unmatched_examples": list(arrays.unmatched_examples),
          "joints": list(schema.JOINT_NAMES)}


# ------------------------------------------------------------------ COCO-17 import

COCO17_NAMES = ("nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder",
                "l_elbow", "r_elbow", "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee",
                "r_knee", "l_ankle", "r_ankle")
# tfreid joint <- COCO-17 joint, for the 12 limb joints both skeletons have.
COCO17_DIRECT = {"r_ankle": "r_ankle", "r_knee": "r_knee", "r_hip": "r_hip", "l_hip": "l_hip",
                 "l_knee": "l_knee", "l_ankle": "l_ankle", "r_wrist": "r_wrist",
                 "r_elbow": "r_elbow", "r_shoulder": "r_shoulder",
                 "l_shoulder": "l_shoulder", "l_elbow": "l_elbow", "l_wrist": "l_wrist"}
COCO17_FACE = ("nose", "l_eye", "r_eye", "l_ear", "r_ear")

COCO17_DOC = """\
COCO-17 keypoints (what MMPose, Ultralytics YOLO-pose and OpenPose's COCO mode write), as
one JSON document: {"images": [{"id": ID, "file_name": "<frame path relative to
input_dir>"}, ...], "annotations": [{"image_id": ID, "keypoints": [x1, y1, v1, ... 17
joints], "score": S}, ...]} (the COCO annotation layout; "score" optional). Mapped to
tfreid's 14 joints by `coco17_to_joints`: the 12 limb joints are copied; the neck is the
midpoint of the two shoulders (visibility: the smaller of the two; absent unless both are
there); the head top, which COCO lacks, is the highest face point (nose, eyes, ears: the
smallest y among those present, with their mean x) raised by half the distance from it to
the neck, with the smallest face visibility (absent without a face point and a neck).
Joints with v = 0 stay zeros. Per frame the detection with the highest score is kept
(person crops hold one person); a frame without a detection gets no line, so the
converter stores it as "no keypoints" and nothing is invented."""


def coco17_to_joints(coco) -> np.ndarray:
  """COCO-17 keypoints [17, 3] (x, y, v) -> tfreid's 14 joints [14, 3] (COCO17_DOC)."""
  coco = np.asarray(coco, np.float32).reshape(-1, 3)
  if coco.shape != (17, 3):
    raise ValueError(f"COCO-17 keypoints must hold 17 (x, y, v) triples, got "
                     f"{coco.size} numbers.")
  src = {name: coco[i] for i, name in enumerate(COCO17_NAMES)}
  out = np.zeros((schema.NUM_JOINTS, 3), np.float32)
  index = {name: i for i, name in enumerate(schema.JOINT_NAMES)}
  for ours, theirs in COCO17_DIRECT.items():
    if src[theirs][2] > 0:
      out[index[ours]] = src[theirs]
  left, right = src["l_shoulder"], src["r_shoulder"]
  if left[2] > 0 and right[2] > 0:
    out[index["neck"]] = [(left[0] + right[0]) / 2, (left[1] + right[1]) / 2,
                          min(left[2], right[2])]
  face = np.array([src[n] for n in COCO17_FACE if src[n][2] > 0], np.float32)
  neck = out[index["neck"]]
  if len(face) and neck[2] > 0:
    top_y = face[:, 1].min()
    rise = max(0.0, float(neck[1] - top_y)) / 2
    out[index["head_top"]] = [face[:, 0].mean(), top_y - rise, face[:, 2].min()]
  return out


def coco17_to_jsonl(coco_path: str, output_path: str) -> dict:
  """Writes the `--keypoints` JSON-lines file of a COCO-17 document (COCO17_DOC); returns
  counts: frames written, images without a detection, detections dropped."""
  with open(coco_path, encoding="utf-8") as f:
    doc = json.load(f)
  if not isinstance(doc, dict) or "images" not in doc or "annotations" not in doc:
    raise ValueError(f"{coco_path}: not a COCO keypoint document.\n{COCO17_DOC}")
  names = {}
  for image in doc["images"]:
    if "id" not in image or "file_name" not in image:
      raise ValueError(f"{coco_path}: an image entry lacks 'id' or 'file_name': {image}")
    names[image["id"]] = normalize_frame_path(image["file_name"])
  best = {}
  dropped = 0
  for ann in doc["annotations"]:
    if ann.get("image_id") not in names:
      raise ValueError(f"{coco_path}: annotation for unknown image_id "
                       f"{ann.get('image_id')!r}.")
    score = float(ann.get("score", 1.0))
    previous = best.get(ann["image_id"])
    if previous is not None:
      dropped += 1
      if previous[0] >= score:
        continue
    best[ann["image_id"]] = (score, coco17_to_joints(ann["keypoints"]))
  with open(output_path, "w", encoding="utf-8") as f:
    for image_id in sorted(best, key=lambda i: names[i]):
      joints = best[image_id][1]
      f.write(json.dumps({"frame": names[image_id],
                          "keypoints": [[round(float(v), 3) for v in j] for j in joints]})
              + "\n")
  return {"frames": len(best), "without_detection": len(names) - len(best),
          "dropped_detections": dropped}
