"""Writes tiny converted datasets (shards + manifest.json) for tests and benchmarks.

The output follows tfreid/data/schema.py exactly: records by `schema.encode_tracklet`,
the manifest keys of `schema.MANIFEST_DOC`, written by `schema.write_manifest`. Layout:

- train identities: pids 1..num_ids, `tracklets_per_id` tracklets each (cameras cycling);
- test identities: pids num_ids+1..num_ids+num_test_ids, `tracklets_per_id` tracklets each;
  the first tracklet of each test identity is a query, the others the gallery;
- protocols: "torchreid" (query / gallery) and "mars_matlab" (query / gallery_all, all
  test tracklets), in that order;
- tracklet ids: train tracklets first, then test, 0-based and consecutive;
- shards: `shards_per_group` files of group "train" and as many of group "test".

Frame content (`content`):
- "code": every frame is one flat colour that identifies it: R = frame number % 256,
  G = tracklet id % 256, B = frame number // 256 (exact with frame_format="png");
- "texture": seeded random smooth texture with a bright bar on the left half, so flips and
  crops are visible;
- "person": a pedestrian-like picture (background, legs, coat, head, noise, slight blur)
  whose figure shifts from frame to frame; JPEG sizes close to MARS frames (~5 KB at
  256x128), for benchmarks.

With `with_flow`, flow frame t is the quantised PNG of dx = (t % 5) - 2 + x / width,
dy = 1 - y / height (flow_scale 16). With `with_keypoints`, joints are random inside the
frame, and frame 1 of every tracklet is marked absent.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import cv2
import numpy as np

from tfreid.data import schema

FLOW_SCALE = 16.0


def _encode(image: np.ndarray, frame_format: str) -> bytes:
  bgr = np.ascontiguousarray(image[..., ::-1])
  if frame_format == "png":
    return cv2.imencode(".png", bgr)[1].tobytes()
  return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def make_frame(content: str, tracklet_id: int, frame: int, height: int, width: int,
               rng: np.random.Generator) -> np.ndarray:
  """One RGB uint8 frame [height, width, 3] (see the module docstring)."""
  if content == "code":
    color = np.array([frame % 256, tracklet_id % 256, frame // 256], np.uint8)
    return np.broadcast_to(color, (height, width, 3)).copy()
  if content == "person":
    return _person(tracklet_id, frame, height, width, rng)
  base = rng.integers(40, 200, size=(max(height // 4, 1), max(width // 4, 1), 3))
  image = cv2.resize(base.astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
  image[height // 4: height // 2, : max(width // 4, 1)] = 250
  return image


def _person(tracklet_id: int, frame: int, height: int, width: int,
            rng: np.random.Generator) -> np.ndarray:
  look = np.random.default_rng(tracklet_id)
  image = np.empty((height, width, 3), np.float32)
  image[:] = look.integers(60, 200, 3)
  image[int(height * 0.7):] = look.integers(40, 160, 3)
  dx = int(round(width * 0.04 * np.sin(frame / 3.0)))
  cx, sx, sy = width // 2 + dx, max(width // 4, 1), max(height // 3, 1)
  coat = tuple(int(v) for v in look.integers(0, 255, 3))
  legs = tuple(int(v) for v in look.integers(0, 120, 3))
  cv2.rectangle(image, (cx - sx // 2, height // 2), (cx + sx // 2, int(height * 0.95)), legs, -1)
  cv2.ellipse(image, (cx, int(height * 0.45)), (sx, sy // 1), 0, 0, 360, coat, -1)
  cv2.circle(image, (cx, int(height * 0.14)), max(width // 7, 1), (190, 150, 120), -1)
  image += rng.normal(0, 6, image.shape)
  image = cv2.GaussianBlur(np.clip(image, 0, 255).astype(np.uint8), (3, 3), 0)
  return image


def flow_field(t: int, height: int, width: int) -> np.ndarray:
  """The float flow [height, width, 2] stored for frame t (module docstring)."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  return np.stack([(t % 5) - 2 + xx / width, 1 - yy / height], -1)


def quantise_flow(flow: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] as schema.py stores flow: q = clip(round(f * scale) + 128, 0, 255)."""
  q = np.clip(np.round(flow * FLOW_SCALE) + 128, 0, 255).astype(np.uint8)
  return np.concatenate([q, np.zeros_like(q[..., :1])], -1)


def write_tiny_dataset(data_dir: str, num_ids: int = 4, tracklets_per_id: int = 2,
                       num_frames: Union[int, tuple[int, int]] = 8, height: int = 32,
                       width: int = 16, cameras: int = 2, with_flow: bool = False,
                       with_keypoints: bool = False, seed: int = 0, *,
                       num_test_ids: Optional[int] = None, frame_format: str = "jpeg",
                       content: str = "texture", shards_per_group: int = 1,
                       dataset: str = "folder") -> dict:
  """Writes a tiny converted dataset into `data_dir` and returns its manifest.

  Args:
    data_dir: output directory (created).
    num_ids: train identities (num_test_ids test identities, default the same).
    tracklets_per_id: tracklets per identity.
    num_frames: frames per tracklet, or (min, max) inclusive drawn per tracklet.
    height, width: frame size.
    cameras: camera ids cycle through 0..cameras-1 within an identity.
    with_flow, with_keypoints: add the optional streams (and their manifest entries).
    seed: seeds lengths, textures and keypoints.
    frame_format: "jpeg" or "png".
    content: "code" or "texture" (module docstring).
    shards_per_group: shard files per group.
  """
  os.makedirs(data_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  num_test_ids = num_ids if num_test_ids is None else num_test_ids
  tracklets = []  # (tracklet_id, pid, camid, group)
  for group, pids in (("train", range(1, num_ids + 1)),
                      ("test", range(num_ids + 1, num_ids + num_test_ids + 1))):
    for pid in pids:
      for k in range(tracklets_per_id):
        tracklets.append((len(tracklets), pid, k % cameras, group))
  train_pids = sorted({pid for _, pid, _, g in tracklets if g == "train"})
  label_of = {pid: i for i, pid in enumerate(train_pids)}
  lengths = {}
  shard_records: dict[tuple[str, int], list[bytes]] = {}
  group_members = {g: [t for t in tracklets if t[3] == g] for g in ("train", "test")}
  keypoint_frames = 0
  for group, members in group_members.items():
    for position, (tid, pid, camid, _) in enumerate(members):
      n = (num_frames if isinstance(num_frames, int)
           else int(rng.integers(num_frames[0], num_frames[1] + 1)))
      lengths[tid] = n
      frames = [_encode(make_frame(content, tid, f, height, width, rng), frame_format)
                for f in range(n)]
      flow = ([_encode(quantise_flow(flow_field(f, height, width)), "png") for f in range(n)]
              if with_flow else None)
      keypoints = present = None
      if with_keypoints:
        keypoints = np.stack([rng.uniform(0, width - 1, (n, schema.NUM_JOINTS)),
                              rng.uniform(0, height - 1, (n, schema.NUM_JOINTS)),
                              rng.uniform(0.5, 1, (n, schema.NUM_JOINTS))], -1)
        present = np.ones(n, np.int64)
        if n > 1:
          present[1] = 0
          keypoints[1] = 0
        keypoint_frames += int(present.sum())
      record = schema.encode_tracklet(
          frames=frames, frame_format=frame_format, pid=pid, camid=camid, tracklet_id=tid,
          label=label_of.get(pid, -1) if group == "train" else -1,
          frame_names=[f"{pid:04d}/t{tid:05d}_f{f:04d}.{frame_format}" for f in range(n)],
          height=height, width=width, flow=flow, keypoints=keypoints,
          keypoints_present=present)
      shard = position * shards_per_group // max(len(members), 1)
      shard_records.setdefault((group, shard), []).append(record)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  shards = []
  for (group, shard), records in sorted(shard_records.items()):
    name = f"{dataset}-{group}-{shard:05d}-of-{shards_per_group:05d}.tfrecord"
    with tf.io.TFRecordWriter(os.path.join(data_dir, name)) as writer:
      for record in records:
        writer.write(record)
    shards.append({"file": name, "num_records": len(records), "group": group})
  train_ids = [t[0] for t in group_members["train"]]
  test = group_members["test"]
  query = [t[0] for t in test if t[0] == min(u[0] for u in test if u[1] == t[1])]
  gallery = [t[0] for t in test if t[0] not in set(query)]
  split = {"train": sorted(train_ids), "query": sorted(query), "gallery": sorted(gallery),
           "gallery_all": sorted(t[0] for t in test), "train_pids": train_pids}
  pid_of = {t[0]: t[1] for t in tracklets}

  def stats(ids):
    return {"tracklets": len(ids), "identities": len({pid_of[t] for t in ids}),
            "frames": sum(lengths[t] for t in ids)}

  manifest = {
      "schema_version": schema.SCHEMA_VERSION,
      "dataset": dataset,
      "num_splits": 1,
      "frame_format": frame_format,
      "partitions": {k: stats(split[k]) for k in ("train", "query", "gallery")},
      "protocols": {"torchreid": {"query": "query", "gallery": "gallery"},
                    "mars_matlab": {"query": "query", "gallery": "gallery_all"}},
      "splits": [split],
      "shards": shards,
      "skipped_frames": [],
      "dropped_tracklets": [],
      "split_source": "tests/data_fixtures.py",
  }
  if with_flow:
    manifest["flow"] = {"scale": FLOW_SCALE, "method": "synthetic"}
  if with_keypoints:
    manifest["keypoints"] = {"source": "synthetic", "frames_with_keypoints": keypoint_frames,
                             "frames": sum(lengths.values())}
  schema.write_manifest(data_dir, manifest)
  return manifest
