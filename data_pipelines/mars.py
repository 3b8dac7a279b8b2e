"""MARS: index the raw dataset for both evaluation protocols.

Layout (REFERENCE_FACTS.md; `--input_dir` is the folder holding bbox_train, bbox_test, info):

    bbox_train/0001/0001C1T0001F001.jpg     pid folder = the name's pid
    bbox_test/00-1/00-1C1T0001F001.jpg      pid "00-1" = junk (-1), "0000" = distractor
    info/train_name.txt, info/test_name.txt one frame file name per line
    info/tracks_train_info.mat              track_train_info [N, 4] = start, end, pid, cam
    info/tracks_test_info.mat               track_test_info  [M, 4]
    info/query_IDX.mat                      query_IDX: 1-based rows of track_test_info

A frame name `PPPPCcTttttFfff.jpg` carries pid, camera, tracklet and frame number; a track
info row `[start, end, pid, cam]` names rows start..end (1-based, inclusive) of the name
list. A frame whose name disagrees with its row's pid or camera is an error naming the row.

Each tracklet is stored once (ids: train rows, then test rows). Partitions (split 0):

| partition | tracklets | protocol |
| --- | --- | --- |
| train | train rows with pid != -1, labels = index of pid in sorted train pids | both |
| query | test rows in query_IDX with pid != -1 | torchreid, mars_matlab |
| gallery | test rows not in query_IDX with pid != -1 (distractors 0 kept) | torchreid |
| gallery_all | every test row, queries and junk (-1) included | mars_matlab |

torchreid protocol: 625 train ids / 8298 tracklets, 1980 queries, 9330 gallery tracklets;
the official MATLAB protocol ranks each query against all 12180 test tracklets, junk (pid -1,
and same pid and camera) flagged by the evaluator. Train rows with pid -1 (none in MARS) are
not stored and are listed in dropped_tracklets. Cameras are stored 0-based (cam - 1).
"""

from __future__ import annotations

import os
import re

import numpy as np

from data_pipelines import shards

LAYOUT = """
  INPUT_DIR/bbox_train/0001/0001C1T0001F001.jpg
  INPUT_DIR/bbox_test/0002/0002C1T0001F001.jpg
  INPUT_DIR/info/train_name.txt, test_name.txt           (one frame file name per line)
  INPUT_DIR/info/tracks_train_info.mat                    (track_train_info [N, 4])
  INPUT_DIR/info/tracks_test_info.mat                     (track_test_info [M, 4])
  INPUT_DIR/info/query_IDX.mat                            (query_IDX, 1-based rows)
"""

NAME_RE = re.compile(r"^(?P<pid>00-1|\d+)C(?P<cam>\d+)T(?P<track>\d+)F(?P<frame>\d+)\.\w+$")


def parse_name(name: str) -> tuple[int, int, int, int]:
  """`0001C1T0001F001.jpg` -> (pid, cam (1-based, as written), tracklet, frame)."""
  m = NAME_RE.match(name)
  if not m:
    raise shards.ConversionError(
        f"MARS frame name {name!r} does not look like PPPPCcTttttFfff.jpg (e.g. "
        "0001C1T0001F001.jpg); check that --input_dir is a MARS folder.")
  pid = -1 if m["pid"] == "00-1" else int(m["pid"])
  return pid, int(m["cam"]), int(m["track"]), int(m["frame"])


def _load_mat(path: str, var: str) -> np.ndarray:
  import scipy.io  # pylint: disable=import-outside-toplevel
  shards.require(path, f"MARS metadata file {os.path.basename(path)}", LAYOUT)
  try:
    mat = scipy.io.loadmat(path)
  except Exception as e:  # pylint: disable=broad-except
    raise shards.ConversionError(f"{path} is not a readable .mat file ({e}).") from None
  if var not in mat:
    found = sorted(k for k in mat if not k.startswith("__"))
    raise shards.ConversionError(f"{path} has no variable {var!r} (it has {found}); expected "
                                 "the file of the official MARS release.")
  arr = np.asarray(mat[var])
  if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
    raise shards.ConversionError(f"{path}: {var} must hold integers.")
  return arr.astype(np.int64)


def _load_names(path: str) -> list[str]:
  shards.require(path, f"MARS metadata file {os.path.basename(path)}", LAYOUT)
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


def _tracklets(sub: str, names: list[str], info: np.ndarray, info_file: str
               ) -> list[tuple[int, int, tuple[str, ...], tuple[int, ...], str]]:
  """Track info rows -> (pid, cam0, frame paths, frame numbers, name), checked."""
  if info.ndim != 2 or info.shape[1] != 4:
    raise shards.ConversionError(f"{info_file}: track info must be [N, 4] (start, end, pid, "
                                 f"cam), got shape {list(info.shape)}.")
  out = []
  for row, (start, end, pid, cam) in enumerate(info.tolist()):
    label = f"{info_file} row {row + 1} (pid {pid}, camera {cam})"
    if not 1 <= start <= end <= len(names):
      raise shards.ConversionError(
          f"{label}: frames {start}..{end} are outside the {len(names)} names of "
          f"{sub.replace('bbox_', '')}_name.txt.")
    paths, numbers = [], []
    for name in names[start - 1:end]:
      npid, ncam, _, frame = parse_name(name)
      if (npid, ncam) != (pid, cam):
        raise shards.ConversionError(
            f"tracklet {label}: frame {name} says pid {npid}, camera {ncam}; the metadata "
            "and the file names disagree. Use the name lists and .mat files of the same MARS "
            "release.")
      paths.append(f"{sub}/{name.split('C', 1)[0]}/{name}")  # pid folder = the name's pid
      numbers.append(frame)
    out.append((pid, cam - 1, tuple(paths), tuple(numbers), label))
  return out


def build_index(input_dir: str) -> shards.DatasetIndex:
  """Indexes a MARS folder (module docstring)."""
  info_dir = os.path.join(input_dir, "info")
  shards.require(input_dir, "MARS folder", LAYOUT, is_dir=True)
  train_names = _load_names(os.path.join(info_dir, "train_name.txt"))
  test_names = _load_names(os.path.join(info_dir, "test_name.txt"))
  train_info = _load_mat(os.path.join(info_dir, "tracks_train_info.mat"), "track_train_info")
  test_info = _load_mat(os.path.join(info_dir, "tracks_test_info.mat"), "track_test_info")
  query_idx = _load_mat(os.path.join(info_dir, "query_IDX.mat"), "query_IDX").ravel()
  for sub in ("bbox_train", "bbox_test"):
    shards.require(os.path.join(input_dir, sub), f"MARS frame folder {sub}", LAYOUT,
                   is_dir=True)
  if query_idx.size and (query_idx.min() < 1 or query_idx.max() > len(test_info)):
    raise shards.ConversionError(
        f"info/query_IDX.mat: query_IDX must be 1-based rows of track_test_info (1.."
        f"{len(test_info)}), got values in {query_idx.min()}..{query_idx.max()}.")
  if len(set(query_idx.tolist())) != query_idx.size:
    raise shards.ConversionError("info/query_IDX.mat: query_IDX lists a row twice.")

  train = _tracklets("bbox_train", train_names, train_info, "info/tracks_train_info.mat")
  test = _tracklets("bbox_test", test_names, test_info, "info/tracks_test_info.mat")
  specs, dropped = [], []
  train_ids = []
  for pid, cam, paths, numbers, label in train:
    if pid == -1:
      dropped.append({"tracklet": label, "reason": "junk pid -1 in the training set"})
      continue
    train_ids.append(len(specs))
    specs.append(shards.TrackletSpec(len(specs), pid, cam, "train", paths, numbers, label))
  test_ids = []
  for pid, cam, paths, numbers, label in test:
    test_ids.append(len(specs))
    specs.append(shards.TrackletSpec(len(specs), pid, cam, "test", paths, numbers, label))
  is_query = np.zeros(len(test_ids), bool)
  is_query[query_idx - 1] = True
  query, gallery = [], []
  for row, tid in enumerate(test_ids):
    if specs[tid].pid == -1:
      continue
    (query if is_query[row] else gallery).append(tid)
  split = shards.make_split(
      {"train": train_ids, "query": query, "gallery": gallery, "gallery_all": test_ids},
      lambda t: specs[t].pid)
  index = shards.DatasetIndex(
      dataset="mars", root=input_dir, tracklets=specs, splits=[split],
      protocols={"torchreid": {"query": "query", "gallery": "gallery"},
                 "mars_matlab": {"query": "query", "gallery": "gallery_all"}},
      split_source="info/query_IDX.mat (query rows of info/tracks_test_info.mat)",
      dropped_tracklets=dropped,
      extra={"junk_query_rows_excluded": int(sum(
          1 for row, tid in enumerate(test_ids) if is_query[row] and specs[tid].pid == -1))})
  return shards.finalize_index(index)
