"""Dataset converters: layouts, partitions, protocols, splits and metadata errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from data_pipelines import convert
from data_pipelines import dukev
from data_pipelines import folder
from data_pipelines import ilidsvid
from data_pipelines import mars
from data_pipelines import prid2011
from data_pipelines import shards
import convert_fakes as fakes


def _convert(dataset, src, dst, **kw):
  return convert.convert(dataset, str(src), str(dst), progress=False, **kw)


def _stats(rows):
  """Reference partition stats from (pid, frames) pairs."""
  return {"tracklets": len(rows), "identities": len({p for p, _ in rows}),
          "frames": sum(n for _, n in rows)}


# ------------------------------------------------------------------------------- MARS


def test_mars_partitions_protocols_and_records(tmp_path):
  src, dst = tmp_path / "mars", tmp_path / "out"
  paths = fakes.write_mars(str(src))
  manifest = _convert("mars", src, dst)

  train, test, query_rows = fakes.MARS_TRAIN, fakes.MARS_TEST, fakes.MARS_QUERY
  n_train = len(train)
  query = [r - 1 for r in query_rows if test[r - 1][0] != -1]
  gallery = [i for i in range(len(test)) if i + 1 not in query_rows and test[i][0] != -1]
  assert manifest["partitions"] == {
      "train": _stats([(p, n) for p, _, n in train]),
      "query": _stats([(test[i][0], test[i][2]) for i in query]),
      "gallery": _stats([(test[i][0], test[i][2]) for i in gallery]),
      "gallery_all": _stats([(p, n) for p, _, n in test])}
  assert manifest["protocols"] == {"torchreid": {"query": "query", "gallery": "gallery"},
                                   "mars_matlab": {"query": "query", "gallery": "gallery_all"}}
  split = manifest["splits"][0]
  assert split["train"] == list(range(n_train))
  assert split["query"] == [n_train + i for i in query]
  assert split["gallery"] == [n_train + i for i in gallery]
  assert split["gallery_all"] == list(range(n_train, n_train + len(test)))
  assert split["train_pids"] == [2, 5, 9]
  assert manifest["num_splits"] == 1 and manifest["dataset"] == "mars"
  assert manifest["schema_version"] == 1 and manifest["frame_format"] == "jpeg"
  assert manifest["skipped_frames"] == [] and manifest["dropped_tracklets"] == []
  assert [s["group"] for s in manifest["shards"]] == ["train", "test"]
  assert [s["num_records"] for s in manifest["shards"]] == [n_train, len(test)]

  records = fakes.read_all(str(dst))
  assert sorted(records) == list(range(n_train + len(test)))
  rows = [("train", r, paths["train"][i]) for i, r in enumerate(train)]
  rows += [("test", r, paths["test"][i]) for i, r in enumerate(test)]
  for tid, (group, (pid, cam, n), frame_paths) in enumerate(rows):
    rec = records[tid]
    assert rec["pid"] == pid and rec["camid"] == cam - 1 and rec["num_frames"] == n
    assert rec["label"] == ([2, 5, 9].index(pid) if group == "train" else -1)
    assert rec["shard_group"] == group
    assert rec["frame_names"] == frame_paths
    assert list(rec["frame_numbers"]) == list(range(1, n + 1))
    assert (rec["height"], rec["width"]) == (fakes.H, fakes.W)
    assert rec["frame_format"] == "jpeg"
    # JPEG sources are kept byte-for-byte.
    assert rec["frames"] == [fakes.read_bytes(str(src), p) for p in frame_paths]
    assert rec["flow"] == [] and rec["keypoints"].size == 0


def test_mars_parse_name():
  assert mars.parse_name("0001C1T0001F001.jpg") == (1, 1, 1, 1)
  assert mars.parse_name("00-1C6T0012F920.jpg") == (-1, 6, 12, 920)
  assert mars.parse_name("0000C3T0002F017.jpg") == (0, 3, 2, 17)
  with pytest.raises(shards.ConversionError, match="PPPPCcTttttFfff"):
    mars.parse_name("frame_001.jpg")


def test_mars_junk_in_train_is_dropped_and_listed(tmp_path):
  src = tmp_path / "mars"
  fakes.write_mars(str(src), train=[(5, 1, 2), (-1, 2, 2), (3, 1, 2)])
  index = mars.build_index(str(src))
  assert [t.pid for t in index.tracklets[:2]] == [5, 3]
  assert index.splits[0]["train_pids"] == [3, 5]
  assert [t.label for t in index.tracklets[:2]] == [1, 0]
  assert index.dropped_tracklets == [{
      "tracklet": "info/tracks_train_info.mat row 2 (pid -1, camera 2)",
      "reason": "junk pid -1 in the training set"}]


def test_mars_id_mismatch_names_the_tracklet(tmp_path):
  src = tmp_path / "mars"
  fakes.write_mars(str(src))
  info = np.asarray([[1, 3, 5, 1], [4, 5, 5, 4], [6, 9, 2, 1], [10, 11, 9, 3]], np.int32)
  scipy.io.savemat(str(src / "info" / "tracks_train_info.mat"), {"track_train_info": info})
  with pytest.raises(shards.ConversionError) as e:
    mars.build_index(str(src))
  msg = str(e.value)
  assert "tracks_train_info.mat row 2 (pid 5, camera 4)" in msg
  assert "0005C2T0001F001.jpg says pid 5, camera 2" in msg


def test_mars_missing_metadata_names_file_and_layout(tmp_path):
  src = tmp_path / "mars"
  fakes.write_mars(str(src))
  os.remove(src / "info" / "query_IDX.mat")
  with pytest.raises(shards.ConversionError) as e:
    mars.build_index(str(src))
  msg = str(e.value)
  assert str(src / "info" / "query_IDX.mat") in msg
  assert "Expected layout" in msg and "bbox_train/0001/0001C1T0001F001.jpg" in msg


def test_cli_reports_missing_metadata(tmp_path):
  src = tmp_path / "mars"
  fakes.write_mars(str(src))
  os.remove(src / "info" / "tracks_test_info.mat")
  proc = subprocess.run(
      [sys.executable, "-m", "data_pipelines.convert", "--dataset=mars", f"--input_dir={src}",
       f"--output_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(convert.__file__))))
  assert proc.returncode == 1
  assert "tracks_test_info.mat" in proc.stderr and "Expected layout" in proc.stderr
  assert not (tmp_path / "out" / "manifest.json").exists()


# --------------------------------------------------------------------------- iLIDS-VID


def test_ilidsvid_ls_set_selects_sorted_cam1_folders(tmp_path):
  src = tmp_path / "ilids"
  numbers = [2, 3, 5, 8, 13, 21]
  ls_set = fakes.write_ilidsvid(str(src), person_numbers=numbers)
  index = ilidsvid.build_index(str(src))
  assert len(index.splits) == 10
  assert index.split_source == ("ls_set in train-test people splits/"
                                "train_test_splits_ilidsvid.mat")
  folders = sorted(f"person{n:03d}" for n in numbers)
  by_id = {t.tracklet_id: t for t in index.tracklets}
  for i, split in enumerate(index.splits):
    test_pids = sorted(int(folders[j - 1][6:]) for j in ls_set[i, :3])
    train_pids = sorted(int(folders[j - 1][6:]) for j in ls_set[i, 3:])
    assert sorted(by_id[t].pid for t in split["query"]) == test_pids
    assert {by_id[t].camid for t in split["query"]} == {0}
    assert sorted(by_id[t].pid for t in split["gallery"]) == test_pids
    assert {by_id[t].camid for t in split["gallery"]} == {1}
    assert sorted((by_id[t].pid, by_id[t].camid) for t in split["train"]) == sorted(
        (p, c) for p in train_pids for c in (0, 1))
    assert split["train_pids"] == train_pids


def test_ilidsvid_conversion_counts_and_png(tmp_path):
  src, dst = tmp_path / "ilids", tmp_path / "out"
  ls_set = fakes.write_ilidsvid(str(src))
  manifest = _convert("ilidsvid", src, dst)

  def frames(p, cam):  # as written by fakes.write_ilidsvid
    return (3, 2)[cam] + p % 2

  test = [int(j) for j in ls_set[0, :3]]
  train = [int(j) for j in ls_set[0, 3:]]
  assert manifest["partitions"] == {
      "train": _stats([(p, frames(p, c)) for p in train for c in (0, 1)]),
      "query": _stats([(p, frames(p, 0)) for p in test]),
      "gallery": _stats([(p, frames(p, 1)) for p in test])}
  assert manifest["num_splits"] == 10 and len(manifest["splits"]) == 10
  assert {s["group"] for s in manifest["shards"]} == {"all"}
  assert manifest["frame_format"] == "png"
  records = fakes.read_all(str(dst))
  rec = records[manifest["splits"][0]["query"][0]]
  assert rec["frame_format"] == "png"
  assert rec["frames"] == [fakes.read_bytes(str(src), p) for p in rec["frame_names"]]
  assert list(rec["frame_numbers"]) == list(range(10, 10 + rec["num_frames"]))
  labels = {records[t]["pid"]: records[t]["label"] for t in manifest["splits"][0]["train"]}
  assert labels == {p: i for i, p in enumerate(sorted(train))}


def test_ilidsvid_splits_json_and_errors(tmp_path):
  src = tmp_path / "ilids"
  fakes.write_ilidsvid(str(src), num_persons=4)
  mat = src / "train-test people splits" / "train_test_splits_ilidsvid.mat"
  os.remove(mat)
  with pytest.raises(shards.ConversionError) as e:
    ilidsvid.build_index(str(src))
  assert "train_test_splits_ilidsvid.mat" in str(e.value) and "splits.json" in str(e.value)
  with open(src / "splits.json", "w") as f:
    json.dump([{"train": ["person001", "person004"], "test": ["person002", "person003"]}], f)
  index = ilidsvid.build_index(str(src))
  assert index.split_source == "splits.json"
  assert index.splits[0]["train_pids"] == [1, 4]
  bad = src / "i-LIDS-VID" / "sequences" / "cam1" / "person002" / "cam2_person002_00010.png"
  os.rename(src / "i-LIDS-VID" / "sequences" / "cam1" / "person002" /
            "cam1_person002_00010.png", bad)
  with pytest.raises(shards.ConversionError, match="tracklet i-LIDS-VID/sequences/cam1/person002"):
    ilidsvid.build_index(str(src))


# --------------------------------------------------------------------------- PRID-2011


def test_prid_splits_json(tmp_path):
  src, dst = tmp_path / "prid", tmp_path / "out"
  counts = {"cam_a": {1: 2, 2: 3, 3: 2, 4: 2, 250: 2}, "cam_b": {1: 3, 2: 2, 3: 2, 4: 2, 5: 2}}
  splits = [{"train": ["person_0001", "person_0003"], "test": ["person_0002", "person_0004"]},
            {"train": ["person_0002", "person_0004"], "test": ["person_0001", "person_0003"]}]
  fakes.write_prid(str(src), counts, splits)
  manifest = _convert("prid2011", src, dst)
  assert manifest["split_source"] == "splits_prid2011.json"
  assert manifest["num_splits"] == 2
  assert manifest["partitions"] == {
      "train": _stats([(p, counts[c][p]) for p in (1, 3) for c in ("cam_a", "cam_b")]),
      "query": _stats([(p, counts["cam_a"][p]) for p in (2, 4)]),
      "gallery": _stats([(p, counts["cam_b"][p]) for p in (2, 4)])}
  records = fakes.read_all(str(dst))
  assert {records[t]["camid"] for t in manifest["splits"][1]["query"]} == {0}
  assert sorted(records[t]["pid"] for t in manifest["splits"][1]["gallery"]) == [1, 3]
  dropped = sorted(d["tracklet"] for d in manifest["dropped_tracklets"])
  assert dropped == ["prid_2011/multi_shot/cam_a/person_0250",
                     "prid_2011/multi_shot/cam_b/person_0005"]


def test_prid_standard_rule_fallback(tmp_path):
  src = tmp_path / "prid"
  cam_a = {1: 27, 2: 30, 3: 26, 4: 27, 5: 40, 6: 27, 7: 28, 201: 50, 8: 29}
  cam_b = {1: 27, 2: 27, 3: 40, 4: 26, 5: 27, 7: 27, 201: 50, 8: 31, 9: 40}
  fakes.write_prid(str(src), {"cam_a": cam_a, "cam_b": cam_b}, empty_files=True)
  expected = [p for p in range(1, 201) if cam_a.get(p, 0) >= 27 and cam_b.get(p, 0) >= 27]
  assert expected == [1, 2, 5, 7, 8]
  index = prid2011.build_index(str(src), split_seed=3)
  assert "(5 persons)" in index.split_source and ">= 27 frames" in index.split_source
  assert "default_rng(3)" in index.split_source
  by_id = {t.tracklet_id: t for t in index.tracklets}
  assert len(index.splits) == 10
  distinct = set()
  for split in index.splits:
    train = sorted({by_id[t].pid for t in split["train"]})
    test = sorted(by_id[t].pid for t in split["query"])
    assert len(train) == 2 and len(test) == 3
    assert sorted(train + test) == expected
    assert sorted(by_id[t].pid for t in split["gallery"]) == test
    assert {by_id[t].camid for t in split["gallery"]} == {1}
    distinct.add(tuple(train))
  assert len(distinct) > 1
  again = prid2011.build_index(str(src), split_seed=3)
  assert again.splits == index.splits
  other = prid2011.build_index(str(src), split_seed=4)
  assert other.splits != index.splits
  dropped = {d["tracklet"] for d in index.dropped_tracklets}
  assert "prid_2011/multi_shot/cam_a/person_0003" in dropped
  assert "prid_2011/multi_shot/cam_b/person_0201" in dropped
  assert all(">= 27 frames" in d["reason"] for d in index.dropped_tracklets)


# ------------------------------------------------------------------------- DukeV, folder


def test_dukev_partitions_and_parsing(tmp_path):
  src, dst = tmp_path / "duke", tmp_path / "out"
  paths = fakes.write_dukev(str(src))
  manifest = _convert("dukev", src, dst)
  rows = fakes.DUKE
  for part in ("train", "query", "gallery"):
    assert manifest["partitions"][part] == _stats([(p, n) for q, p, _, n in rows if q == part])
  records = fakes.read_all(str(dst))
  assert len(records) == len(rows)  # query tracklets are stored again in the gallery
  for tid, (part, pid, cam, n) in enumerate(rows):
    rec = records[tid]
    assert (rec["pid"], rec["camid"], rec["num_frames"]) == (pid, cam - 1, n)
    assert rec["frame_names"] == paths[tid]
    assert list(rec["frame_numbers"]) == list(range(1, n + 1))
    assert rec["shard_group"] == ("train" if part == "train" else "test")
  assert dukev.parse_name("0001C6F0099X30823.jpg") == (1, 6, 99, 30823)
  wrong = src / "train" / "0008" / "0001" / "0009C3F0003X01021.jpg"
  with open(wrong, "wb") as f:
    f.write(fakes.frame_bytes(1))
  with pytest.raises(shards.ConversionError, match="tracklet train/0008/0001.*says pid 9"):
    dukev.build_index(str(src))


def test_folder_tree_cameras_order_and_csv(tmp_path):
  src, dst = tmp_path / "mine", tmp_path / "out"
  spec = fakes.write_folder(str(src))
  manifest = _convert("folder", src, dst)
  assert manifest["camera_map"] == {"1": 0, "3": 1, "6": 2}
  assert manifest["ignored_files"]["count"] == 1
  assert manifest["dropped_tracklets"] == [
      {"tracklet": "gallery/-1/c3_junk", "reason": "junk pid -1 (torchreid drops it)"}]
  kept = [s for s in spec if s[1] != -1]
  order = {"train": 0, "query": 1, "gallery": 2}
  kept.sort(key=lambda s: (order[s[0]], s[1]))  # within a pid: tracklet name order
  records = fakes.read_all(str(dst))
  cam_map = {1: 0, 3: 1, 6: 2}
  for tid, (part, pid, cam, paths) in enumerate(kept):
    rec = records[tid]
    assert (rec["pid"], rec["camid"]) == (pid, cam_map[cam]), (tid, part)
    assert rec["frame_names"] == paths
  seq = next(r for r in records.values() if r["frame_names"][0].endswith("c3_seq1/f1.jpg"))
  assert list(seq["frame_numbers"]) == [1, 2, 10]
  png = next(r for r in records.values() if r["frame_names"][0].endswith("1.png")
             and "c1_a" in r["frame_names"][0])
  assert png["frame_format"] == "png"
  for part in ("train", "query", "gallery"):
    assert manifest["partitions"][part] == _stats(
        [(p, len(f)) for q, p, _, f in kept if q == part])

  # The same dataset described by a CSV file gives the same partitions and records.
  csv_path = tmp_path / "frames.csv"
  with open(csv_path, "w") as f:
    f.write("partition,pid,camera,tracklet,frame\n")
    for i, (part, pid, cam, paths) in enumerate(spec):
      for p in paths:
        f.write(f"{part},{pid},{cam},{os.path.dirname(p).split('/')[-1]},{p}\n")
  manifest2 = _convert("folder", src, tmp_path / "out_csv", csv_path=str(csv_path))
  assert manifest2["partitions"] == manifest["partitions"]
  records2 = fakes.read_all(str(tmp_path / "out_csv"))
  assert [(r["pid"], r["camid"], r["frame_names"]) for r in records2.values()] == [
      (r["pid"], r["camid"], r["frame_names"]) for r in records.values()]


def test_folder_errors(tmp_path):
  src = tmp_path / "mine"
  fakes.write_folder(str(src))
  with pytest.raises(shards.ConversionError, match="tracklet train/0002/c1_a: --camera_regex"):
    folder.build_index(str(src), camera_regex=r"X(\d+)")
  with pytest.raises(shards.ConversionError, match="needs a group"):
    folder.build_index(str(src), camera_regex=r"c\d+")
  csv_path = tmp_path / "bad.csv"
  with open(csv_path, "w") as f:
    f.write("partition,pid,camera,tracklet,frame\ntrain,1,1,t1,train/a.jpg\n"
            "train,1,2,t1,train/b.jpg\n")
  with pytest.raises(shards.ConversionError, match="line 3: tracklet train/t1 has pid 1, "
                     "camera 1 on an earlier row"):
    folder.build_index(str(src), csv_path=str(csv_path))
  os.rename(src / "query", src / "queries")
  with pytest.raises(shards.ConversionError, match="query folder not found"):
    folder.build_index(str(src))
