"""COCO-17 keypoints (MMPose, YOLO-pose, OpenPose COCO) mapped to tfreid's 14 joints for
stal: copied limbs, the neck between the shoulders, the head top above the face, missing
joints and frames left absent, the best detection per frame, and the converter reading it."""

import json

import numpy as np
import pytest

from data_pipelines import keypoints as kp_lib
from tfreid.data import schema


def _coco(points):
  """{coco name: (x, y, v)} -> flat 51 numbers."""
  flat = np.zeros((17, 3), np.float32)
  for name, value in points.items():
    flat[kp_lib.COCO17_NAMES.index(name)] = value
  return flat.reshape(-1).tolist()


def test_coco17_mapping_by_hand():
  points = {"nose": (20, 12, .9), "l_eye": (22, 10, .8), "r_eye": (18, 10, .7),
            "l_shoulder": (28, 30, .9), "r_shoulder": (12, 32, .6), "l_elbow": (30, 44, .9),
            "r_elbow": (10, 44, .9), "l_wrist": (31, 56, .9), "r_wrist": (9, 56, 0.0),
            "l_hip": (25, 60, .9), "r_hip": (15, 60, .9), "l_knee": (25, 80, .9),
            "r_knee": (15, 80, .9), "l_ankle": (25, 98, .9), "r_ankle": (15, 98, .5)}
  out = kp_lib.coco17_to_joints(_coco(points))
  j = {n: out[i] for i, n in enumerate(schema.JOINT_NAMES)}
  for name in ("l_shoulder", "r_elbow", "l_wrist", "r_ankle", "l_knee", "r_hip"):
    np.testing.assert_allclose(j[name], points[name])
  np.testing.assert_array_equal(j["r_wrist"], 0)           # v = 0 stays absent
  np.testing.assert_allclose(j["neck"], (20, 31, .6))       # shoulders' midpoint
  # Head top: the highest face point (y 10), raised by half of its distance to the neck
  # (31 - 10 = 21 -> 10.5), at the face points' mean x, with their smallest visibility.
  np.testing.assert_allclose(j["head_top"], (20, -0.5, .7), rtol=1e-6)


def test_coco17_without_shoulders_or_face_leaves_neck_and_head_absent():
  out = kp_lib.coco17_to_joints(_coco({"nose": (5, 5, 1), "l_shoulder": (8, 9, 1)}))
  assert not out[schema.JOINT_NAMES.index("neck")].any()
  assert not out[schema.JOINT_NAMES.index("head_top")].any()
  with pytest.raises(ValueError, match="17"):
    kp_lib.coco17_to_joints([0.0] * 42)


def test_coco17_document_to_lines(tmp_path):
  doc = {"images": [{"id": 1, "file_name": "./bbox_train/0001/a.jpg"},
                    {"id": 2, "file_name": "bbox_train/0001/b.jpg"},
                    {"id": 3, "file_name": "bbox_train/0001/c.jpg"}],
         "annotations": [
             {"image_id": 1, "keypoints": _coco({"l_knee": (1, 2, .5)}), "score": .4},
             {"image_id": 1, "keypoints": _coco({"l_knee": (3, 4, .9)}), "score": .8},
             {"image_id": 2, "keypoints": _coco({"r_knee": (5, 6, 1)})}]}
  src, out = tmp_path / "coco.json", tmp_path / "poses.jsonl"
  src.write_text(json.dumps(doc))
  counts = kp_lib.coco17_to_jsonl(str(src), str(out))
  assert counts == {"frames": 2, "without_detection": 1, "dropped_detections": 1}
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert [line["frame"] for line in lines] == ["bbox_train/0001/a.jpg",
                                               "bbox_train/0001/b.jpg"]
  knee = schema.JOINT_NAMES.index("l_knee")
  assert lines[0]["keypoints"][knee] == [3.0, 4.0, 0.9]   # the higher-scoring detection
  assert all(len(line["keypoints"]) == 14 for line in lines)
  src.write_text(json.dumps({"annotations": []}))
  with pytest.raises(ValueError, match="COCO keypoint document"):
    kp_lib.coco17_to_jsonl(str(src), str(out))
