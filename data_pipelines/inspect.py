"""Look at a converted dataset: the manifest summary and a contact sheet of tracklets.

    python -m data_pipelines.inspect DST [--output=PATH] [--num_queries=4] [--num_matches=3]

prints the manifest summary (partitions, protocols, shards, skipped and dropped items, flow
and keypoints) and writes a PNG (default DST/contact_sheet.png) with one row per sampled
query tracklet of the default protocol: a few frames of the query, then a few frames of each
of its gallery matches (same pid, other cameras first), each labelled with pid and camera.
Tracklets are read by random access through DST/tracklets.csv.
"""

from __future__ import annotations

import csv
import os
import sys
from typing import Any, Optional

import numpy as np

from data_pipelines import shards
from tfreid.data import schema

CELL_H, CELL_W = 128, 64
LABEL_H = 16
GAP = 12


def summarize(manifest: dict[str, Any]) -> str:
  """A few lines describing a manifest."""
  lines = [f"dataset {manifest['dataset']} (schema {manifest['schema_version']}), "
           f"{manifest.get('num_tracklets', '?')} tracklets, "
           f"{manifest.get('num_frames', '?')} frames, {manifest['frame_format']} frames, "
           f"{manifest['num_splits']} split(s); splits from {manifest.get('split_source')}"]
  lines.append(f"  {'partition':<12} {'tracklets':>10} {'identities':>11} {'frames':>10}")
  for name, p in manifest["partitions"].items():
    lines.append(f"  {name:<12} {p['tracklets']:>10} {p['identities']:>11} {p['frames']:>10}")
  protocols = ", ".join(f"{k} ({v['query']} vs {v['gallery']})"
                        for k, v in manifest["protocols"].items())
  lines.append(f"  protocols: {protocols}")
  groups: dict[str, list[int]] = {}
  for s in manifest["shards"]:
    groups.setdefault(s["group"], []).append(s.get("bytes", 0))
  lines.append("  shards: " + ", ".join(f"{len(b)} {g} ({sum(b) / 2**20:.1f} MiB)"
                                       for g, b in groups.items()))
  size = manifest.get("frame_size")
  if size:
    lines.append(f"  frame size: height {size['min_height']}..{size['max_height']}, width "
                 f"{size['min_width']}..{size['max_width']}, "
                 f"{size['mixed_size_tracklets']} tracklet(s) mixing sizes")
  if "flow" in manifest:
    f = manifest["flow"]
    frac = f["clipped_values"] / f["values"] if f.get("values") else 0.0
    lines.append(f"  flow: {f['method']}, scale {f['scale']}, {frac:.4%} of values saturated")
  if "keypoints" in manifest:
    k = manifest["keypoints"]
    lines.append(f"  keypoints: {k['frames_with_keypoints']} of {k['frames']} frames from "
                 f"{k['source']} ({k.get('unmatched_lines', 0)} unmatched lines)")
  lines.append(f"  skipped frames: {len(manifest['skipped_frames'])}; dropped tracklets: "
               f"{len(manifest['dropped_tracklets'])}")
  for item in manifest["skipped_frames"][:5]:
    lines.append(f"    skipped {item['path']}: {item['reason']}")
  for item in manifest["dropped_tracklets"][:5]:
    lines.append(f"    dropped {item['tracklet']}: {item['reason']}")
  return "\n".join(lines)


def read_tracklet_index(data_dir: str) -> dict[int, dict[str, Any]]:
  """tracklets.csv -> {tracklet_id: row} with integer fields converted."""
  path = os.path.join(data_dir, "tracklets.csv")
  if not os.path.exists(path):
    raise schema.DatasetError(f"{data_dir} has no tracklets.csv; re-run the converter.")
  rows = {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      for key in ("tracklet_id", "pid", "camid", "label", "num_frames", "height", "width",
                  "offset"):
        row[key] = int(row[key])
      rows[row["tracklet_id"]] = row
  return rows


def load_tracklet(data_dir: str, row: dict[str, Any]) -> dict[str, Any]:
  """Reads one record by random access and parses it (frames left encoded)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  data = shards.read_record(os.path.join(data_dir, row["shard"]), row["offset"])
  feats = tf.train.Example.FromString(data).features.feature
  return {"frames": list(feats[schema.FRAMES].bytes_list.value),
          "pid": feats[schema.PID].int64_list.value[0],
          "camid": feats[schema.CAMID].int64_list.value[0],
          "tracklet_id": feats[schema.TRACKLET_ID].int64_list.value[0]}


def pick_examples(manifest: dict[str, Any], rows: dict[int, dict[str, Any]],
                  num_queries: int, num_matches: int, split: int = 0,
                  protocol: Optional[str] = None) -> list[tuple[int, list[int]]]:
  """[(query id, [gallery match ids])]: queries spread over the query list, matches of the
  same pid with other cameras first."""
  protocol = protocol or next(iter(manifest["protocols"]))
  parts = manifest["protocols"][protocol]
  s = manifest["splits"][split]
  by_pid: dict[int, list[int]] = {}
  for g in s[parts["gallery"]]:
    by_pid.setdefault(rows[g]["pid"], []).append(g)
  candidates = []
  for q in s[parts["query"]]:
    matches = [g for g in by_pid.get(rows[q]["pid"], []) if g != q]
    matches.sort(key=lambda g: (rows[g]["camid"] == rows[q]["camid"], g))
    if matches:
      candidates.append((q, matches[:num_matches]))
  if len(candidates) <= num_queries:
    return candidates
  picks = np.linspace(0, len(candidates) - 1, num_queries).round().astype(int)
  return [candidates[i] for i in picks]


def _block(frames: list[bytes], label: str, colour: tuple[int, int, int], per: int):
  import cv2  # pylint: disable=import-outside-toplevel
  block = np.full((LABEL_H + CELL_H, per * CELL_W, 3), 255, np.uint8)
  picks = np.linspace(0, len(frames) - 1, min(per, len(frames))).round().astype(int)
  for j, i in enumerate(picks):
    img = cv2.imdecode(np.frombuffer(frames[i], np.uint8), cv2.IMREAD_COLOR)
    if img is not None:
      block[LABEL_H:, j * CELL_W:(j + 1) * CELL_W] = cv2.resize(img, (CELL_W, CELL_H))
  cv2.rectangle(block, (0, 0), (block.shape[1] - 1, LABEL_H - 1), colour, -1)
  cv2.putText(block, label, (2, LABEL_H - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255),
              1, cv2.LINE_AA)
  return block


def contact_sheet(data_dir: str, output: Optional[str] = None, *, num_queries: int = 4,
                  num_matches: int = 3, frames_per_tracklet: int = 4, split: int = 0) -> str:
  """Writes the contact sheet PNG (module docstring) and returns its path."""
  import cv2  # pylint: disable=import-outside-toplevel
  manifest = schema.read_manifest(data_dir)
  rows = read_tracklet_index(data_dir)
  examples = pick_examples(manifest, rows, num_queries, num_matches, split)
  if not examples:
    raise schema.DatasetError(f"{data_dir}: no query has a gallery match to show.")
  width = (1 + num_matches) * frames_per_tracklet * CELL_W + num_matches * GAP
  sheet_rows = []
  for q, matches in examples:
    row = np.full((LABEL_H + CELL_H, width, 3), 255, np.uint8)
    x = 0
    for k, tid in enumerate([q] + matches):
      t = load_tracklet(data_dir, rows[tid])
      kind = "query" if k == 0 else "gallery"
      colour = (160, 60, 20) if k == 0 else (40, 130, 40)
      block = _block(t["frames"], f"{kind} {tid} pid {t['pid']} cam {t['camid']}", colour,
                     frames_per_tracklet)
      row[:, x:x + block.shape[1]] = block
      x += block.shape[1] + (GAP if k == 0 else GAP // 2 if k < len(matches) else 0)
    sheet_rows.append(row)
    sheet_rows.append(np.full((GAP // 2, width, 3), 255, np.uint8))
  sheet = np.concatenate(sheet_rows[:-1], axis=0)
  output = output or os.path.join(data_dir, "contact_sheet.png")
  if not cv2.imwrite(output, sheet):
    raise OSError(f"could not write {output}.")
  return output


def main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel
  from absl import app  # pylint: disable=import-outside-toplevel
  if len(argv) != 2:
    raise app.UsageError("usage: python -m data_pipelines.inspect DST [--output=PATH]")
  data_dir = argv[1]
  try:
    manifest = schema.read_manifest(data_dir)
    print(summarize(manifest))
    path = contact_sheet(data_dir, flags.FLAGS.output, num_queries=flags.FLAGS.num_queries,
                         num_matches=flags.FLAGS.num_matches)
  except schema.DatasetError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"contact sheet: {path}")
  return 0


if __name__ == "__main__":
  from absl import app as _app
  from absl import flags as _flags
  _flags.DEFINE_string("output", None, "Contact sheet PNG path (default DST/contact_sheet.png).")
  _flags.DEFINE_integer("num_queries", 4, "Query tracklets shown (one row each).")
  _flags.DEFINE_integer("num_matches", 3, "Gallery matches shown per query.")
  _app.run(main)
