"""Tiny fake copies of the raw dataset layouts, for the converter tests (no tests here).

Each writer takes a plain description (pid, camera, number of frames per tracklet) and lays
it out as the real dataset does, with tiny frames written by cv2, `.mat` files written by
scipy.io.savemat with the real variable names and integer dtypes, and CRLF name lists.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import scipy.io

H, W = 32, 16


def frame_bytes(seed: int, ext: str = ".jpg", size: tuple[int, int] = (H, W)) -> bytes:
  """A small smooth random image, encoded."""
  rng = np.random.default_rng(seed)
  img = cv2.resize((rng.random((4, 2, 3)) * 255).astype(np.uint8), (size[1], size[0]),
                   interpolation=cv2.INTER_LINEAR)
  ok, buf = cv2.imencode(ext, img)
  assert ok
  return buf.tobytes()


def write_file(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def mars_name(pid: int, cam: int, track: int, frame: int) -> str:
  pid_s = "00-1" if pid == -1 else f"{pid:04d}"
  return f"{pid_s}C{cam}T{track:04d}F{frame:03d}.jpg"


# Train rows (pid, camera 1-based, frames) and test rows, with 1-based query rows.
MARS_TRAIN = [(5, 1, 3), (5, 2, 2), (2, 1, 4), (9, 3, 2)]
MARS_TEST = [(3, 1, 3), (3, 2, 2), (3, 1, 2), (4, 2, 3), (4, 5, 2), (0, 1, 2), (-1, 2, 2),
             (7, 4, 2)]
MARS_QUERY = [1, 4, 8]


def write_mars(root: str, train=None, test=None, query=None, seed: int = 0) -> dict:
  """Writes a MARS layout; returns {"train"/"test": [[relative frame paths] per row]}."""
  train = MARS_TRAIN if train is None else train
  test = MARS_TEST if test is None else test
  query = MARS_QUERY if query is None else query
  out = {}
  counter = {}
  k = seed * 100000
  for sub, rows, var in (("train", train, "track_train_info"),
                         ("test", test, "track_test_info")):
    names, info, paths = [], [], []
    for pid, cam, n in rows:
      track = counter[(pid, cam)] = counter.get((pid, cam), 0) + 1
      start = len(names) + 1
      row_paths = []
      for f in range(1, n + 1):
        name = mars_name(pid, cam, track, f)
        names.append(name)
        rel = f"bbox_{sub}/{name[:4]}/{name}"
        write_file(os.path.join(root, *rel.split("/")), frame_bytes(k))
        k += 1
        row_paths.append(rel)
      info.append([start, len(names), pid, cam])
      paths.append(row_paths)
    os.makedirs(os.path.join(root, "info"), exist_ok=True)
    with open(os.path.join(root, "info", f"{sub}_name.txt"), "w", newline="") as f:
      f.write("".join(n + "\r\n" for n in names))
    scipy.io.savemat(os.path.join(root, "info", f"tracks_{sub}_info.mat"),
                     {var: np.asarray(info, np.int32).reshape(-1, 4)})
    out[sub] = paths
  scipy.io.savemat(os.path.join(root, "info", "query_IDX.mat"),
                   {"query_IDX": np.asarray([query], np.int32)})
  return out


def write_ilidsvid(root: str, num_persons: int = 6, frames=(3, 2), num_splits: int = 10,
                   seed: int = 0, person_numbers=None) -> np.ndarray:
  """Writes an iLIDS-VID layout with PNG frames; returns ls_set (1-based, [splits, N])."""
  numbers = person_numbers or list(range(1, num_persons + 1))
  k = 0
  for p in numbers:
    for cam in (1, 2):
      for f in range(frames[cam - 1] + (p % 2)):
        rel = f"i-LIDS-VID/sequences/cam{cam}/person{p:03d}/cam{cam}_person{p:03d}_{f + 10:05d}.png"
        write_file(os.path.join(root, *rel.split("/")), frame_bytes(1000 + k, ".png"))
        k += 1
  rng = np.random.default_rng(seed)
  ls_set = np.stack([rng.permutation(len(numbers)) + 1 for _ in range(num_splits)])
  os.makedirs(os.path.join(root, "train-test people splits"), exist_ok=True)
  scipy.io.savemat(os.path.join(root, "train-test people splits",
                                "train_test_splits_ilidsvid.mat"),
                   {"ls_set": ls_set.astype(np.int32)})
  return ls_set


def write_prid(root: str, counts: dict, splits=None, empty_files: bool = False) -> None:
  """counts: {"cam_a": {person number: frames}, "cam_b": {...}}; optional splits json."""
  k = 0
  for cam, persons in counts.items():
    for p, n in persons.items():
      for f in range(1, n + 1):
        rel = f"prid_2011/multi_shot/{cam}/person_{p:04d}/{f:04d}.png"
        write_file(os.path.join(root, *rel.split("/")),
                   b"" if empty_files else frame_bytes(2000 + k, ".png"))
        k += 1
  if splits is not None:
    with open(os.path.join(root, "splits_prid2011.json"), "w") as f:
      json.dump(splits, f)


# (partition, pid, camera 1-based, frames)
DUKE = [("train", 1, 1, 3), ("train", 1, 2, 2), ("train", 8, 3, 2), ("query", 4, 1, 2),
        ("query", 6, 2, 2), ("gallery", 4, 1, 2), ("gallery", 4, 5, 3), ("gallery", 6, 8, 2),
        ("gallery", 11, 2, 2)]


def write_dukev(root: str, rows=None) -> list[list[str]]:
  """Writes a DukeMTMC-VideoReID layout; returns the relative frame paths per row."""
  rows = DUKE if rows is None else rows
  paths, counter = [], {}
  for i, (part, pid, cam, n) in enumerate(rows):
    track = counter[(part, pid)] = counter.get((part, pid), 0) + 1
    row_paths = []
    for f in range(1, n + 1):
      rel = f"{part}/{pid:04d}/{track:04d}/{pid:04d}C{cam}F{f:04d}X{1000 + 7 * f:05d}.jpg"
      write_file(os.path.join(root, *rel.split("/")), frame_bytes(3000 + 50 * i + f))
      row_paths.append(rel)
    paths.append(row_paths)
  return paths


def write_folder(root: str) -> list[tuple[str, int, int, list[str]]]:
  """A folder-tree dataset; returns (partition, pid, raw camera, [frame paths]) per tracklet.

  Cameras come from the tracklet folder name (c3_...) or, for one tracklet, from the frame
  names only; frames are named so that name order differs from natural order (f2 < f10).
  """
  spec = [("train", 7, 3, "c3_seq1", ["f1.jpg", "f2.jpg", "f10.jpg"]),
          ("train", 7, 6, "walk", ["cam6_f1.jpg", "cam6_f2.jpg"]),
          ("train", 2, 1, "c1_a", ["1.png", "2.png"]),
          ("query", 4, 1, "c1_q", ["a1.jpg", "a2.jpg"]),
          ("gallery", 4, 6, "c6_g", ["a1.jpg", "a2.jpg"]),
          ("gallery", 0, 3, "c3_d", ["a1.jpg"]),
          ("gallery", -1, 3, "c3_junk", ["a1.jpg"])]
  out = []
  for i, (part, pid, cam, track, names) in enumerate(spec):
    paths = []
    for j, name in enumerate(names):
      rel = f"{part}/{pid:04d}/{track}/{name}" if pid >= 0 else f"{part}/-1/{track}/{name}"
      write_file(os.path.join(root, *rel.split("/")),
                 frame_bytes(5000 + 10 * i + j, os.path.splitext(name)[1]))
      paths.append(rel)
    out.append((part, pid, cam, paths))
  write_file(os.path.join(root, "train", "0007", "c3_seq1", "notes.txt"), b"not a frame")
  return out


def parse_record(data: bytes) -> dict:
  """Parses a converted record with tf.io.parse_single_example and the schema's keys."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfreid.data import schema  # pylint: disable=import-outside-toplevel
  var = tf.io.VarLenFeature

  def fixed(dtype):
    return tf.io.FixedLenFeature([], dtype)

  spec = {schema.FRAMES: var(tf.string), schema.FRAME_FORMAT: fixed(tf.string),
          schema.FRAME_NAMES: var(tf.string), schema.FRAME_NUMBERS: var(tf.int64),
          schema.PID: fixed(tf.int64), schema.LABEL: fixed(tf.int64),
          schema.CAMID: fixed(tf.int64), schema.TRACKLET_ID: fixed(tf.int64),
          schema.NUM_FRAMES: fixed(tf.int64), schema.HEIGHT: fixed(tf.int64),
          schema.WIDTH: fixed(tf.int64), schema.FLOW: var(tf.string),
          schema.KEYPOINTS: var(tf.float32), schema.KEYPOINTS_PRESENT: var(tf.int64)}
  parsed = tf.io.parse_single_example(data, spec)
  out = {}
  for key, value in parsed.items():
    value = tf.sparse.to_dense(value) if isinstance(value, tf.SparseTensor) else value
    out[key] = value.numpy()
  out[schema.FRAME_FORMAT] = out[schema.FRAME_FORMAT].decode()
  out[schema.FRAME_NAMES] = [n.decode() for n in out[schema.FRAME_NAMES]]
  out[schema.FRAMES] = list(out[schema.FRAMES])
  out[schema.FLOW] = list(out[schema.FLOW])
  for key in (schema.PID, schema.LABEL, schema.CAMID, schema.TRACKLET_ID, schema.NUM_FRAMES,
              schema.HEIGHT, schema.WIDTH):
    out[key] = int(out[key])
  return out


def read_all(output_dir: str) -> dict:
  """tracklet_id -> parsed record, over every shard in the manifest (TFRecordDataset)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  with open(os.path.join(output_dir, "manifest.json")) as f:
    manifest = json.load(f)
  records = {}
  for shard in manifest["shards"]:
    for data in tf.data.TFRecordDataset(os.path.join(output_dir, shard["file"])):
      rec = parse_record(data.numpy())
      rec["shard_group"] = shard["group"]
      records[rec["tracklet_id"]] = rec
  return records


def read_bytes(root: str, rel: str) -> bytes:
  with open(os.path.join(root, *rel.split("/")), "rb") as f:
    return f.read()
