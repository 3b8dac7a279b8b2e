"""iLIDS-VID: index the raw dataset with its 10 official train/test person splits.

Layout (REFERENCE_FACTS.md; `--input_dir` holds both folders):

    i-LIDS-VID/sequences/cam1/person001/cam1_person001_00317.png   (cam2 likewise)
    train-test people splits/train_test_splits_ilidsvid.mat        ls_set [10, 300]

(`sequences/` directly under `--input_dir` is accepted too.) Each person has one tracklet per
camera. `ls_set` row i is split i; its values are 1-based indices into the sorted person
folder names of cam1; the first half of the columns are the test persons, the second half
the train persons. Without the .mat file, `splits.json` in `--input_dir` is read instead: a
list of {"train": [person folder names], "test": [...]}.

Per split: train = both tracklets of the train persons (labels = index of pid in the sorted
train pids), query = cam1 tracklets of the test persons, gallery = their cam2 tracklets
(closed set, one true match per query; report the mean over the 10 splits). pid = the
person number (person001 -> 1), camid = 0 for cam1, 1 for cam2. A frame named for another
camera or person than its folder is an error naming the tracklet. Every tracklet of a person
in any split is stored once, in shards of group "all".
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from data_pipelines import shards

LAYOUT = """
  INPUT_DIR/i-LIDS-VID/sequences/cam1/person001/cam1_person001_00317.png   (cam2 likewise)
  INPUT_DIR/train-test people splits/train_test_splits_ilidsvid.mat       (ls_set [10, 300])
    or INPUT_DIR/splits.json   ([{"train": [person folders], "test": [...]}, ...])
"""
SPLIT_MAT = os.path.join("train-test people splits", "train_test_splits_ilidsvid.mat")
SPLIT_JSON = "splits.json"
CAMERAS = ("cam1", "cam2")
PERSON_RE = re.compile(r"^person(\d+)$")
FRAME_RE = re.compile(r"^cam(\d+)_person(\d+)_(\d+)\.png$", re.IGNORECASE)


def _sequences_dir(input_dir: str) -> tuple[str, str]:
  """(absolute sequences dir, its path relative to input_dir)."""
  for rel in ("i-LIDS-VID/sequences", "sequences"):
    path = os.path.join(input_dir, *rel.split("/"))
    if os.path.isdir(os.path.join(path, "cam1")):
      return path, rel
  raise shards.missing(os.path.join(input_dir, "i-LIDS-VID", "sequences", "cam1"),
                       "iLIDS-VID sequence folder", LAYOUT)


def _read_splits(input_dir: str, persons: list[str]) -> tuple[list[tuple[list, list]], str]:
  """[(train person names, test person names)] per split, and where they came from."""
  mat_path = os.path.join(input_dir, SPLIT_MAT)
  json_path = os.path.join(input_dir, SPLIT_JSON)
  if os.path.isfile(mat_path):
    import scipy.io  # pylint: disable=import-outside-toplevel
    mat = scipy.io.loadmat(mat_path)
    if "ls_set" not in mat:
      raise shards.ConversionError(f"{mat_path} has no variable 'ls_set'; expected the split "
                                   "file of the official iLIDS-VID release.")
    ls_set = np.asarray(mat["ls_set"])
    if ls_set.ndim != 2 or ls_set.shape[1] < 2 or not np.all(np.mod(ls_set, 1) == 0):
      raise shards.ConversionError(f"{mat_path}: ls_set must be an integer [splits, persons] "
                                   f"matrix, got shape {list(ls_set.shape)}.")
    ls_set = ls_set.astype(np.int64)
    if ls_set.min() < 1 or ls_set.max() > len(persons):
      raise shards.ConversionError(
          f"{mat_path}: ls_set values must be 1-based indices into the {len(persons)} sorted "
          f"cam1 person folders, got {ls_set.min()}..{ls_set.max()}.")
    half = ls_set.shape[1] // 2
    splits = [([persons[i - 1] for i in row[half:]], [persons[i - 1] for i in row[:half]])
              for row in ls_set.tolist()]
    return splits, "ls_set in " + SPLIT_MAT.replace(os.sep, "/")
  if os.path.isfile(json_path):
    with open(json_path) as f:
      data = json.load(f)
    if not isinstance(data, list) or not all(isinstance(s, dict) and "train" in s and "test"
                                             in s for s in data):
      raise shards.ConversionError(f"{json_path} must be a list of {{\"train\": [...], "
                                   "\"test\": [...]}} with person folder names.")
    return [(list(s["train"]), list(s["test"])) for s in data], SPLIT_JSON
  raise shards.missing(mat_path, f"iLIDS-VID split file (or {SPLIT_JSON})", LAYOUT)


def build_index(input_dir: str) -> shards.DatasetIndex:
  """Indexes an iLIDS-VID folder (module docstring)."""
  shards.require(input_dir, "iLIDS-VID folder", LAYOUT, is_dir=True)
  seq_dir, seq_rel = _sequences_dir(input_dir)
  shards.require(os.path.join(seq_dir, "cam2"), "iLIDS-VID cam2 folder", LAYOUT, is_dir=True)
  persons_by_cam = {cam: [p for p in shards.list_dirs(os.path.join(seq_dir, cam))
                          if PERSON_RE.match(p)] for cam in CAMERAS}
  cam1_persons = persons_by_cam["cam1"]
  splits_named, source = _read_splits(input_dir, cam1_persons)
  used = sorted({p for train, test in splits_named for p in train + test})
  for person in used:
    for cam in CAMERAS:
      if person not in persons_by_cam[cam]:
        raise shards.ConversionError(
            f"person {person} is in a split but {seq_rel}/{cam}/{person} does not exist; "
            "every split person needs a tracklet in both cameras.")
  specs, tid_of = [], {}
  for person in used:
    pid = int(PERSON_RE.match(person).group(1))
    for camid, cam in enumerate(CAMERAS):
      rel_dir = f"{seq_rel}/{cam}/{person}"
      names = shards.list_files(os.path.join(seq_dir, cam, person), (".png",))
      numbers = []
      for name in names:
        m = FRAME_RE.match(name)
        if not m:
          raise shards.ConversionError(
              f"tracklet {rel_dir}: frame {name!r} is not named camC_personNNN_FFFFF.png.")
        if (int(m.group(1)), int(m.group(2))) != (camid + 1, pid):
          raise shards.ConversionError(
              f"tracklet {rel_dir}: frame {name} is named for camera {m.group(1)}, person "
              f"{int(m.group(2))}, but its folder is {cam}/{person}. Move it to its folder.")
        numbers.append(int(m.group(3)))
      tid_of[(person, camid)] = len(specs)
      specs.append(shards.TrackletSpec(len(specs), pid, camid, "all",
                                       tuple(f"{rel_dir}/{n}" for n in names), tuple(numbers),
                                       rel_dir))
  used_set = set(used)
  dropped = [{"tracklet": f"{seq_rel}/{cam}/{p}", "reason": "person in no split"}
             for cam in CAMERAS for p in persons_by_cam[cam] if p not in used_set]
  return shards.two_camera_index("ilidsvid", input_dir, specs, tid_of, splits_named, source,
                                 dropped)
