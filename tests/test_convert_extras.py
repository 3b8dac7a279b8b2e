"""Converter extras: optical flow, keypoints, and the inspect tool."""

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import convert
from data_pipelines import inspect as inspect_lib
from data_pipelines import optical_flow
from data_pipelines import shards
from tfreid.data import schema
import convert_fakes as fakes


def _texture(seed, h=64, w=32):
  rng = np.random.default_rng(seed)
  img = cv2.resize((rng.random((h // 4, w // 4, 3)) * 255).astype(np.uint8), (w + 8, h),
                   interpolation=cv2.INTER_CUBIC)
  return img


def test_quantize_formula_and_png_channels():
  flow = np.array([[[1.0, -0.5], [25.0, -25.0]], [[0.07, 0.08], [19.9, -20.0]]], np.float32)
  q, clipped = optical_flow.quantize(flow, 6.4)
  # q = clip(round(f * 6.4) + 128, 0, 255), by hand:
  assert q.tolist() == [[[134, 125], [255, 0]], [[128, 129], [255, 0]]]
  assert clipped == 2
  png = optical_flow.encode_flow_png(q)
  rgb = tf.io.decode_png(png, channels=3).numpy()
  assert rgb[..., 0].tolist() == q[..., 0].tolist() and rgb[..., 1].tolist() == q[..., 1].tolist()
  assert not rgb[..., 2].any()
  np.testing.assert_allclose(optical_flow.decode_flow_png(png, 6.4), (q - 128.0) / 6.4)


def test_optical_flow_records_match_opencv_reference(tmp_path):
  src, dst = tmp_path / "mars", tmp_path / "out"
  paths = fakes.write_mars(str(src), train=[(1, 1, 4), (2, 2, 1)], test=[(3, 1, 2), (3, 2, 2)],
                           query=[1])
  base = _texture(7)
  for t, rel in enumerate(paths["train"][0]):  # the person moves 2 pixels right per frame
    crop = base[:, 8 - 2 * t:8 - 2 * t + 32]
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    fakes.write_file(os.path.join(src, *rel.split("/")), buf.tobytes())
  manifest = convert.convert("mars", str(src), str(dst), optical_flow=True, progress=False)
  assert manifest["flow"]["scale"] == optical_flow.DEFAULT_FLOW_SCALE
  assert manifest["flow"]["method"] == "dis"
  records = fakes.read_all(str(dst))
  scale = manifest["flow"]["scale"]

  rec = records[0]
  assert len(rec["flow"]) == rec["num_frames"] == 4
  grays = [cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_GRAYSCALE) for f in rec["frames"]]
  threads = cv2.getNumThreads()
  cv2.setNumThreads(1)
  ref = [cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST).calc(a, b, None)
         for a, b in zip(grays[:-1], grays[1:])]
  # The flow of a pair does not depend on what the computer saw before.
  computer = optical_flow.FlowComputer("dis", "fast")
  computer(_texture(3)[:32, :16, 1].copy(), _texture(4)[:32, :16, 1].copy())
  np.testing.assert_array_equal(computer(grays[0], grays[1]), ref[0])
  cv2.setNumThreads(threads)
  ref.append(ref[-1])  # A3D III-A: the last flow map is repeated
  for png, f in zip(rec["flow"], ref):
    stored = tf.io.decode_png(png, channels=3).numpy()
    assert stored.shape == (64, 32, 3)
    want = np.clip(np.rint(f.astype(np.float64) * scale) + 128, 0, 255)
    np.testing.assert_array_equal(stored[..., :2], want)
    assert not stored[..., 2].any()
  assert rec["flow"][-1] == rec["flow"][-2]
  dx = (tf.io.decode_png(rec["flow"][0]).numpy()[8:-8, 8:-8, :2] - 128.0) / scale
  assert abs(np.median(dx[..., 0]) - 2.0) < 0.5 and abs(np.median(dx[..., 1])) < 0.5
  # A one-frame tracklet gets one zero flow map.
  single = tf.io.decode_png(records[1]["flow"][0]).numpy()
  assert len(records[1]["flow"]) == 1 and np.all(single[..., :2] == 128)

  farneback = convert.convert("mars", str(src), str(tmp_path / "fb"), optical_flow=True,
                              flow_method="farneback", progress=False)
  assert farneback["flow"]["method"] == "farneback"
  fb = fakes.read_all(str(tmp_path / "fb"))
  assert [len(r["flow"]) for r in fb.values()] == [r["num_frames"] for r in fb.values()]


def test_flow_method_errors_and_tvl1():
  if hasattr(cv2, "optflow"):  # opencv-contrib installed: TV-L1 must run
    a = _texture(1)[:, :32, 0].copy()
    assert optical_flow.FlowComputer("tvl1")(a, np.roll(a, 1, axis=1)).shape == (64, 32, 2)
  else:
    with pytest.raises(ValueError, match="opencv-contrib"):
      optical_flow.check_method("tvl1")
  with pytest.raises(ValueError, match="unknown optical flow method"):
    optical_flow.check_method("flownet")


def test_keypoints_attached_absent_and_aligned_after_skips(tmp_path):
  src, dst = tmp_path / "mars", tmp_path / "out"
  paths = fakes.write_mars(str(src))
  bad = paths["train"][2][0]
  fakes.write_file(os.path.join(src, *bad.split("/")), b"\x89PNG\r\n\x1a\n broken")
  rng = np.random.default_rng(0)
  given = {}
  for rel in [paths["train"][0][0], paths["train"][0][2], bad, paths["train"][2][1],
              paths["train"][2][3], paths["test"][5][1]]:
    given[rel] = np.round(rng.random((14, 3)) * [16, 32, 1], 3)
  kp_file = tmp_path / "poses.jsonl"
  with open(kp_file, "w") as f:
    for i, (rel, kp) in enumerate(given.items()):
      name = "./" + rel if i == 1 else rel.replace("/", "\\") if i == 3 else rel
      f.write(json.dumps({"frame": name, "keypoints": kp.tolist()}) + "\n")
    f.write(json.dumps({"frame": "bbox_train/9999/nope.jpg", "keypoints": kp.tolist()}) + "\n")
  manifest = convert.convert("mars", str(src), str(dst), keypoints=str(kp_file), progress=False)
  records = fakes.read_all(str(dst))
  stored = sum(r["num_frames"] for r in records.values())
  assert manifest["keypoints"]["frames"] == stored
  assert manifest["keypoints"]["frames_with_keypoints"] == len(given) - 1  # `bad` is skipped
  assert manifest["keypoints"]["unmatched_lines"] == 1
  assert manifest["keypoints"]["source"] == "poses.jsonl"
  for rec in records.values():
    kp = rec[schema.KEYPOINTS].reshape(rec["num_frames"], 14, 3)
    present = rec[schema.KEYPOINTS_PRESENT]
    for i, name in enumerate(rec["frame_names"]):
      if name in given:
        assert present[i] == 1
        np.testing.assert_allclose(kp[i], given[name], rtol=1e-6)
      else:
        assert present[i] == 0 and not kp[i].any()
  assert records[2]["frame_names"][0] == paths["train"][2][1]
  assert not os.path.exists(dst / convert.KEYPOINT_WORK_DIR)

  with open(kp_file, "a") as f:
    f.write(json.dumps({"frame": paths["test"][0][0], "keypoints": [[1, 2, 3]] * 13}) + "\n")
  with pytest.raises(ValueError, match=r"poses.jsonl line 8: 'keypoints' of .* must be 14"):
    convert.convert("mars", str(src), str(tmp_path / "o2"), keypoints=str(kp_file),
                    progress=False)
  with open(kp_file, "w") as f:
    line = json.dumps({"frame": paths["test"][0][0], "keypoints": [[1, 2, 3]] * 14})
    f.write(line + "\n" + line + "\n")
  with pytest.raises(ValueError, match="line 2: frame .* has keypoints on an earlier line"):
    convert.convert("mars", str(src), str(tmp_path / "o3"), keypoints=str(kp_file),
                    progress=False)


def test_inspect_summary_and_contact_sheet(tmp_path):
  src, dst = tmp_path / "mars", tmp_path / "out"
  fakes.write_mars(str(src))
  manifest = convert.convert("mars", str(src), str(dst), progress=False)
  text = inspect_lib.summarize(manifest)
  for name, p in manifest["partitions"].items():
    assert f"{name:<12} {p['tracklets']:>10} {p['identities']:>11} {p['frames']:>10}" in text
  assert "mars_matlab (query vs gallery_all)" in text

  rows = inspect_lib.read_tracklet_index(str(dst))
  examples = inspect_lib.pick_examples(manifest, rows, num_queries=4, num_matches=3)
  n_train = len(fakes.MARS_TRAIN)
  # Query rows 1 and 4 have gallery matches (other camera first); row 8 (pid 7) has none.
  assert examples == [(n_train + 0, [n_train + 1, n_train + 2]), (n_train + 3, [n_train + 4])]
  out = tmp_path / "sheet.png"
  path = inspect_lib.contact_sheet(str(dst), str(out), num_queries=4, num_matches=3)
  sheet = cv2.imread(path)
  cell_h, cell_w = inspect_lib.CELL_H, inspect_lib.CELL_W
  assert sheet.shape == (2 * (inspect_lib.LABEL_H + cell_h) + inspect_lib.GAP // 2,
                         4 * 4 * cell_w + 3 * inspect_lib.GAP, 3)
  first = fakes.read_bytes(str(src), records_first_frame(dst, n_train))
  want = cv2.resize(cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR),
                    (cell_w, cell_h))
  np.testing.assert_array_equal(sheet[inspect_lib.LABEL_H:inspect_lib.LABEL_H + cell_h, :cell_w],
                                want)


def records_first_frame(dst, tracklet_id):
  """First frame path of a stored tracklet, read by random access through tracklets.csv."""
  row = inspect_lib.read_tracklet_index(str(dst))[tracklet_id]
  return fakes.parse_record(shards.read_record(str(dst / row["shard"]), row["offset"]))[
      "frame_names"][0]
