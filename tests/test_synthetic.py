"""Tests of the synthetic dataset: MARS layout, determinism, keypoints, occluders, parts."""

import dataclasses
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import scipy.io

from data_pipelines import synthetic
from data_pipelines import render_pedestrian as rp
from data_pipelines import synthetic_scene as scene
from data_pipelines.synthetic_plan import SyntheticConfig, build_plan
from tfreid.data.schema import JOINT_NAMES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(num_identities=8, num_cameras=3, cameras_per_identity=(2, 3),
            tracklets_per_camera=(1, 2), frames=(4, 7), height=64, width=32, distractors=3,
            junk=3)
J = {name: i for i, name in enumerate(JOINT_NAMES)}


def _files(root):
  """relative path -> bytes of every file under root."""
  out = {}
  for d, _, names in os.walk(root):
    for n in names:
      p = os.path.join(d, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, root)] = f.read()
  return out


def _fields(name):
  """(pid, camera, tracklet, frame) from a MARS basename, by character position."""
  pid = -1 if name[:4] == "00-1" else int(name[:4])
  return pid, int(name[5]), int(name[7:11]), int(name[12:15])


def _read_bytes(path):
  with open(path, "rb") as f:
    return f.read()


@pytest.fixture(scope="module")
def occluded(tmp_path_factory):
  """A tiny occluded-preset dataset and its config."""
  config = SyntheticConfig(seed=3, preset="occluded", **TINY)
  out = str(tmp_path_factory.mktemp("occluded"))
  synthetic.generate(config, out)
  return config, out


def test_cli_same_seed_same_bytes_any_workers_other_seed_differs(tmp_path):
  def run(out, seed, workers):
    cmd = [sys.executable, "-m", "data_pipelines.synthetic", f"--output_dir={out}",
           "--num_identities=4", f"--seed={seed}", "--preset=occluded", "--num_cameras=2",
           "--frames=3,4", "--height=32", "--width=16", "--distractors=1", "--junk=1",
           f"--num_workers={workers}"]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    return _files(out)

  a = run(tmp_path / "a", 5, 1)
  b = run(tmp_path / "b", 5, 2)
  c = run(tmp_path / "c", 6, 1)
  assert a == b
  assert any(k.endswith(".jpg") for k in a) and "keypoints.jsonl" in a
  differing = [k for k in a if k.endswith(".jpg") and c.get(k) != a[k]]
  assert differing and a["keypoints.jsonl"] != c["keypoints.jsonl"]


def test_mars_layout_mat_files_and_name_fields(occluded):
  config, out = occluded
  n_train = config.num_identities // 2
  pids_by_split = {}
  for split in ("train", "test"):
    raw = _read_bytes(os.path.join(out, "info", f"{split}_name.txt"))
    assert raw.endswith(b"\r\n") and raw.count(b"\n") == raw.count(b"\r\n")
    names = raw.decode().split("\r\n")[:-1]
    on_disk = sorted(os.path.relpath(os.path.join(d, n), os.path.join(out, f"bbox_{split}"))
                     for d, _, fs in os.walk(os.path.join(out, f"bbox_{split}")) for n in fs)
    assert sorted(f"{n[:4]}/{n}" for n in names) == on_disk
    mat = scipy.io.loadmat(os.path.join(out, "info", f"tracks_{split}_info.mat"))
    var = f"track_{split}_info"
    assert [k for k in mat if not k.startswith("__")] == [var]
    info = mat[var]
    assert info.dtype.kind == "i" and info.ndim == 2 and info.shape[1] == 4
    assert info[0, 0] == 1 and info[-1, 1] == len(names)
    np.testing.assert_array_equal(info[1:, 0], info[:-1, 1] + 1)  # contiguous, inclusive
    seen = set()
    for start, end, pid, cam in info:
      assert 1 <= cam <= config.num_cameras and start <= end
      fields = [_fields(n) for n in names[start - 1:end]]
      assert {f[:3] for f in fields} == {(pid, cam, fields[0][2])}
      assert [f[3] for f in fields] == list(range(1, end - start + 2))
      assert (pid, cam, fields[0][2]) not in seen
      seen.add((pid, cam, fields[0][2]))
    pids_by_split[split] = set(info[:, 2].tolist())
  assert pids_by_split["train"] == set(range(1, n_train + 1))
  assert {-1, 0} <= pids_by_split["test"]
  assert pids_by_split["test"] - {-1, 0} == set(range(n_train + 1, config.num_identities + 1))
  assert os.path.isdir(os.path.join(out, "bbox_test", "00-1"))
  assert os.path.isdir(os.path.join(out, "bbox_test", "0000"))
  q = scipy.io.loadmat(os.path.join(out, "info", "query_IDX.mat"))
  assert [k for k in q if not k.startswith("__")] == ["query_IDX"]
  assert q["query_IDX"].dtype.kind == "i" and q["query_IDX"].shape[0] == 1


def test_one_query_per_pid_camera_each_with_a_cross_camera_gallery_match(occluded):
  _, out = occluded
  info = scipy.io.loadmat(os.path.join(out, "info", "tracks_test_info.mat"))["track_test_info"]
  rows = scipy.io.loadmat(os.path.join(out, "info", "query_IDX.mat"))["query_IDX"][0] - 1
  cams = {}
  for _, _, pid, cam in info:
    if pid > 0:
      cams.setdefault(pid, set()).add(cam)
  expected = sorted((p, c) for p, cs in cams.items() if len(cs) >= 2 for c in cs)
  assert sorted(map(tuple, info[rows, 2:4].tolist())) == expected
  gallery = np.setdiff1d(np.arange(len(info)), rows)
  for r in rows:
    pid, cam = info[r, 2], info[r, 3]
    assert pid > 0
    assert np.any((info[gallery, 2] == pid) & (info[gallery, 3] != cam))


def test_keypoints_file_pixels_and_person_masks(occluded):
  config, out = occluded
  plan = build_plan(config)
  with open(os.path.join(out, "keypoints.jsonl")) as f:
    records = [json.loads(line) for line in f]
  specs = plan.train + plan.test
  paths = [t.frame_path(i) for t in specs for i in range(t.num_frames)]
  assert [r["frame"] for r in records] == paths
  names = [l for s in ("train", "test") for l in
           _read_bytes(os.path.join(out, "info", f"{s}_name.txt")).decode().split("\r\n")[:-1]]
  assert [p.split("/")[-1] for p in paths] == names
  k, visible_checked, outside = 0, 0, 0
  for spec in specs:
    for t, frame in enumerate(plan.render(spec)):
      rec = np.array(records[k]["keypoints"], np.float64)
      k += 1
      assert rec.shape == (14, 3) and set(rec[:, 2]) <= {0.0, 1.0}
      written = cv2.imread(os.path.join(out, spec.frame_path(t)))[..., ::-1]
      err = np.abs(written.astype(int) - frame.image).mean()
      assert err < 10  # the JPEG of this rendering (noisy 64x32 frames: JPEG error ~3-7)
      np.testing.assert_allclose(rec, frame.keypoints, atol=0.006)
      if spec.appearance < 0:
        assert not rec[:, 2].any()
        continue
      h, w = frame.person_mask.shape
      grown = cv2.dilate(frame.person_mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
      xi, yi = np.round(rec[:, 0]).astype(int), np.round(rec[:, 1]).astype(int)
      inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
      outside += int((~inside).sum())
      assert not (rec[:, 2] == 1)[~inside].any()  # outside the frame -> not visible
      for j in np.flatnonzero(rec[:, 2] == 1):
        assert grown[yi[j], xi[j]], (spec.frame_path(0), JOINT_NAMES[j])
        assert not frame.occluder_mask[yi[j], xi[j]]
        visible_checked += 1
  assert k == len(records) and visible_checked > 500
  assert outside > 0  # junk crops and bad crops cut people


def test_easy_preset_keeps_every_joint_of_identities_in_frame():
  config = SyntheticConfig(seed=1, preset="easy", **dict(TINY, distractors=0, junk=0))
  plan = build_plan(config)
  for spec in plan.train[:6] + plan.test[:6]:
    for frame in plan.render(spec):
      assert frame.keypoints[:, 2].all() and not frame.occluder_mask.any()
      h = frame.person_mask.shape[0]
      rows = np.flatnonzero(frame.person_mask.any(axis=1))
      # The crop holds the person: mask spans most of the height, joints in the mask box.
      assert rows[-1] - rows[0] > 0.6 * h
      assert frame.keypoints[J["head_top"], 1] >= rows[0] - 1
      assert max(frame.keypoints[J["r_ankle"], 1], frame.keypoints[J["l_ankle"], 1]) <= rows[-1]


def test_occluders_cover_the_person_and_move_smoothly():
  config = SyntheticConfig(seed=7, preset="occluded", occluder_prob=1.0, bad_crop_prob=0.0,
                           **dict(TINY, frames=(10, 10)))
  plan = build_plan(config)
  covered_total, hidden_joints = 0, 0
  for spec in plan.train[:10]:
    with_occ, without = plan.render(spec), plan.render(spec, occluders=False)
    centroids = []
    for a, b in zip(with_occ, without):
      assert not b.occluder_mask.any()
      np.testing.assert_array_equal(a.person_mask, b.person_mask)
      np.testing.assert_array_equal(a.keypoints[:, :2], b.keypoints[:, :2])
      if a.occluder_mask.any():
        ys, xs = np.nonzero(a.occluder_mask)
        centroids.append((xs.mean(), ys.mean()))
      diff = np.abs(a.image.astype(int) - b.image).sum(axis=2)
      covered = a.occluder_mask & a.person_mask
      if covered.sum() >= 4:
        covered_total += int(covered.sum())
        assert diff[covered].mean() > 20  # the person is hidden there
      far = cv2.dilate((a.occluder_alpha > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
      assert (diff[far] == 0).all()  # nothing else changed
      hidden = (b.keypoints[:, 2] == 1) & (a.keypoints[:, 2] == 0)
      hidden_joints += int(hidden.sum())
      xi = np.round(a.keypoints[hidden, 0]).astype(int)
      yi = np.round(a.keypoints[hidden, 1]).astype(int)
      assert a.occluder_mask[yi, xi].all()
    steps = np.linalg.norm(np.diff(np.array(centroids), axis=0), axis=1) if len(
        centroids) > 1 else np.zeros(1)
    assert np.median(steps) < 0.2 * config.width  # an object moving, not a random box
  assert covered_total > 100 and hidden_joints > 0


def test_one_part_pairs_differ_in_that_part_only(occluded):
  config, out = occluded
  with open(os.path.join(out, "synthetic_info.json")) as f:
    info = json.load(f)
  by_pid = {i["pid"]: i for i in info["identities"]}
  pairs = info["one_part_pairs"]
  assert {by_pid[b]["split"] for _, b, _ in pairs} == {"train", "test"}
  for base, variant, part in pairs:  # the attribute file: one part group differs
    a, b = by_pid[base]["attributes"], by_pid[variant]["attributes"]
    assert by_pid[base]["split"] == by_pid[variant]["split"]
    assert [p for p in a if a[p] != b[p]] == [part] and part != "body"
  # Pixels: on a larger world, the two renderings differ only where that part is.
  plan = build_plan(dataclasses.replace(config, num_identities=120))
  look = {i.pid: plan.appearances[i.appearance] for i in plan.identities}
  pairs = plan.one_part_pairs()
  assert len(pairs) >= 10 and {p for _, _, p in pairs} == {"head", "upper", "lower", "shoes",
                                                            "bag"}
  h, w, s = 128, 64, 2
  for base, variant, part in pairs:
    assert rp.differing_parts(look[base], look[variant]) == [part]
    changed = 0
    for yaw in np.arange(8) * np.pi / 4:  # every walking direction, two phases, mirrored
      for phase, mirror in ((0.3, False), (1.9, True)):
        canvases = []
        for pid in (base, variant):
          canvas = np.zeros((h * s, w * s, 4), np.uint8)
          kp = rp.draw_pedestrian(canvas, look[pid], phase=phase, yaw=yaw, center_x=w / 2,
                                  feet_y=0.93 * h, pixel_height=0.85 * h, mirror=mirror,
                                  supersample=s)
          canvases.append(canvas)
        ys = np.nonzero((canvases[0] != canvases[1]).any(axis=2))[0] / s  # frame rows
        changed += ys.size
        if not ys.size:
          continue
        shoulder = kp[[J["r_shoulder"], J["l_shoulder"]], 1].mean()
        hip = kp[[J["r_hip"], J["l_hip"]], 1].mean()
        knee = kp[[J["r_knee"], J["l_knee"]], 1].min()
        wrist = kp[[J["r_wrist"], J["l_wrist"]], 1].max()
        # Limbs are drawn with a thickness around the joints: allow 4% of the body height.
        margin = 0.04 * (kp[[J["r_ankle"], J["l_ankle"]], 1].max() - kp[J["head_top"], 1])
        if part == "head":  # hair may fall to the shoulders
          assert ys.max() <= shoulder + 0.3 * (hip - shoulder) + margin
        elif part == "upper":  # torso and sleeves
          assert kp[J["head_top"], 1] <= ys.min() and ys.max() <= wrist + margin
        elif part == "lower":  # from the waist down
          assert ys.min() >= hip - 0.15 * (hip - shoulder) - margin
        elif part == "shoes":
          assert ys.min() >= knee
    assert changed > 0, (base, variant, part)


def test_keypoint_noise_moves_keypoints_not_pixels(tmp_path):
  small = dict(TINY, num_identities=4, distractors=0, junk=0)
  clean, noisy = tmp_path / "clean", tmp_path / "noisy"
  synthetic.generate(SyntheticConfig(seed=2, **small), str(clean))
  synthetic.generate(SyntheticConfig(seed=2, keypoint_noise=2.0, **small), str(noisy))
  a, b = _files(clean), _files(noisy)
  assert {k: v for k, v in a.items() if k.endswith(".jpg")} == {
      k: v for k, v in b.items() if k.endswith(".jpg")}

  def read(files):
    return np.array([json.loads(l)["keypoints"] for l in
                     files["keypoints.jsonl"].decode().splitlines()])

  ka, kb = read(a), read(b)
  np.testing.assert_array_equal(ka[..., 2], kb[..., 2])
  d = (kb[..., :2] - ka[..., :2]).ravel()
  assert d.size > 500 and abs(d.std() - 2.0) < 0.25 and abs(d.mean()) < 0.25


def test_errors_explain_what_to_do(tmp_path):
  with pytest.raises(ValueError, match="num_cameras=10: expected 2..9"):
    build_plan(SyntheticConfig(num_cameras=10))
  with pytest.raises(ValueError, match=r"frames=\(5, 3\)"):
    build_plan(SyntheticConfig(frames=(5, 3)))
  with pytest.raises(ValueError, match="unknown preset"):
    build_plan(SyntheticConfig(preset="hard"))
  with pytest.raises(ValueError, match="'min,max' or a single integer"):
    synthetic.parse_range("8-24", "frames")
  assert synthetic.parse_range("16", "frames") == (16, 16)
  config = SyntheticConfig(seed=0, **dict(TINY, num_identities=2, distractors=0, junk=0,
                                          frames=(2, 2)))
  synthetic.generate(config, str(tmp_path))
  with pytest.raises(FileExistsError, match="--overwrite"):
    synthetic.generate(config, str(tmp_path))
  synthetic.generate(config, str(tmp_path), overwrite=True)
