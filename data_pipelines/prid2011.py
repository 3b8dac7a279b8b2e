"""PRID-2011: index the multi-shot part with 10 train/test person splits.

Layout (REFERENCE_FACTS.md; `--input_dir` holds both):

    prid_2011/multi_shot/cam_a/person_0001/0001.png      (cam_b likewise)
    splits_prid2011.json    list of 10 {"train": [person folder names], "test": [...]}

(`multi_shot/` directly under `--input_dir` is accepted too.) cam_a has 385 persons and
cam_b 749; only persons 1..200 are the same people in both cameras.

Splits:
- `splits_prid2011.json` when present (`split_source` = "splits_prid2011.json").
- Otherwise the standard subset, made here: of persons person_0001..person_0200, those with
  at least 27 frames in *both* cameras (178 persons in the real dataset), split 10 times at
  random into halves with `numpy.random.default_rng(seed)` (`--split_seed`, default 0):
  split i takes permutation i of the persons, the first `n // 2` are train, the rest test
  (89 / 89). `split_source` says so, with the seed and the person count.

Per split: train = both tracklets of the train persons (labels = index of pid in the sorted
train pids), query = cam_a tracklets of the test persons, gallery = their cam_b tracklets.
pid = the person number, camid 0 = cam_a, 1 = cam_b. The tracklets of persons in some split
are stored once (shard group "all"); the others are listed in dropped_tracklets.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from data_pipelines import shards

LAYOUT = """
  INPUT_DIR/prid_2011/multi_shot/cam_a/person_0001/0001.png   (cam_b likewise)
  INPUT_DIR/splits_prid2011.json   (optional: [{"train": [person folders], "test": [...]}])
"""
SPLIT_JSON = "splits_prid2011.json"
CAMERAS = ("cam_a", "cam_b")
PERSON_RE = re.compile(r"^person_(\d+)$")
MIN_FRAMES = 27
NUM_SHARED_PERSONS = 200
NUM_SPLITS = 10


def _multi_shot_dir(input_dir: str) -> tuple[str, str]:
  for rel in ("prid_2011/multi_shot", "multi_shot"):
    path = os.path.join(input_dir, *rel.split("/"))
    if os.path.isdir(os.path.join(path, "cam_a")):
      return path, rel
  raise shards.missing(os.path.join(input_dir, "prid_2011", "multi_shot", "cam_a"),
                       "PRID-2011 multi_shot folder", LAYOUT)


def standard_splits(frame_counts: dict[str, dict[str, int]], seed: int = 0
                    ) -> tuple[list[tuple[list[str], list[str]]], list[str]]:
  """The 178-person rule and its seeded 50/50 splits (module docstring).

  Args:
    frame_counts: camera -> person folder -> number of frames.
    seed: seed of numpy.random.default_rng.

  Returns:
    ([(train persons, test persons)] x 10, the kept persons).
  """
  kept = []
  for n in range(1, NUM_SHARED_PERSONS + 1):
    person = f"person_{n:04d}"
    if all(frame_counts[cam].get(person, 0) >= MIN_FRAMES for cam in CAMERAS):
      kept.append(person)
  rng = np.random.default_rng(seed)
  splits = []
  for _ in range(NUM_SPLITS):
    order = [kept[i] for i in rng.permutation(len(kept))]
    half = len(kept) // 2
    splits.append((sorted(order[:half]), sorted(order[half:])))
  return splits, kept


def build_index(input_dir: str, split_seed: int = 0) -> shards.DatasetIndex:
  """Indexes a PRID-2011 folder (module docstring)."""
  shards.require(input_dir, "PRID-2011 folder", LAYOUT, is_dir=True)
  ms_dir, ms_rel = _multi_shot_dir(input_dir)
  shards.require(os.path.join(ms_dir, "cam_b"), "PRID-2011 cam_b folder", LAYOUT, is_dir=True)
  frames = {cam: {p: shards.list_files(os.path.join(ms_dir, cam, p), (".png",))
                  for p in shards.list_dirs(os.path.join(ms_dir, cam)) if PERSON_RE.match(p)}
            for cam in CAMERAS}
  json_path = os.path.join(input_dir, SPLIT_JSON)
  if os.path.isfile(json_path):
    with open(json_path) as f:
      data = json.load(f)
    if not isinstance(data, list) or not all(isinstance(s, dict) and "train" in s and "test"
                                             in s for s in data):
      raise shards.ConversionError(f"{json_path} must be a list of {{\"train\": [...], "
                                   "\"test\": [...]}} with person folder names.")
    splits_named = [(list(s["train"]), list(s["test"])) for s in data]
    source = SPLIT_JSON
  else:
    counts = {cam: {p: len(v) for p, v in frames[cam].items()} for cam in CAMERAS}
    splits_named, kept = standard_splits(counts, split_seed)
    source = (f"standard subset built by the converter ({SPLIT_JSON} not found): persons "
              f"1..{NUM_SHARED_PERSONS} with >= {MIN_FRAMES} frames in both cameras "
              f"({len(kept)} persons), {NUM_SPLITS} random 50/50 splits, "
              f"numpy.random.default_rng({split_seed})")
    if not kept:
      raise shards.ConversionError(
          f"no person of person_0001..person_{NUM_SHARED_PERSONS:04d} has >= {MIN_FRAMES} "
          f"frames in both cameras under {ms_dir}; expected layout:{LAYOUT}")
  used = sorted({p for train, test in splits_named for p in train + test})
  specs, tid_of = [], {}
  for person in used:
    m = PERSON_RE.match(person)
    for camid, cam in enumerate(CAMERAS):
      if not m or person not in frames[cam]:
        raise shards.ConversionError(
            f"person {person!r} is in a split but {ms_rel}/{cam}/{person} does not exist; "
            "every split person needs a tracklet in both cameras.")
      rel_dir = f"{ms_rel}/{cam}/{person}"
      names = frames[cam][person]
      numbers = []
      for name in names:
        stem = os.path.splitext(name)[0]
        if not stem.isdigit():
          raise shards.ConversionError(
              f"tracklet {rel_dir}: frame {name!r} is not named NNNN.png.")
        numbers.append(int(stem))
      tid_of[(person, camid)] = len(specs)
      specs.append(shards.TrackletSpec(len(specs), int(m.group(1)), camid, "all",
                                       tuple(f"{rel_dir}/{n}" for n in names), tuple(numbers),
                                       rel_dir))
  used_set = set(used)
  reason = ("person in no split" if source == SPLIT_JSON else
            f"not in the standard subset (persons 1..{NUM_SHARED_PERSONS} with >= "
            f"{MIN_FRAMES} frames in both cameras)")
  dropped = [{"tracklet": f"{ms_rel}/{cam}/{p}", "reason": reason}
             for cam in CAMERAS for p in sorted(frames[cam]) if p not in used_set]
  return shards.two_camera_index("prid2011", input_dir, specs, tid_of, splits_named, source,
                                 dropped)
