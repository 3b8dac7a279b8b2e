r"""Convert a raw video ReID dataset into tracklet TFRecord shards and manifest.json.

    python -m data_pipelines.convert --dataset=mars --input_dir=/data/MARS \
        --output_dir=/data/mars_tfrecord [--num_workers=8] [--optical_flow] \
        [--keypoints=poses.jsonl]

`--dataset` is one of mars, ilidsvid, prid2011, dukev, folder (your own tracklets: see
data_pipelines/folder.py). Each module's docstring gives the expected layout and which
tracklets go into which partition. Output (`--output_dir`):

- `<dataset>-<group>-NNNNN-of-MMMMM.tfrecord`: one `tf.train.Example` per tracklet, written
  by `tfreid.data.schema.encode_tracklet` (the schema is in tfreid/data/schema.py). Group
  "train" shards hold only train tracklets, "test" shards the others; 10-split datasets
  (iLIDS-VID, PRID-2011) use "all". About `--shard_size_mb` MiB each.
- `manifest.json`: the keys of `tfreid.data.schema.MANIFEST_DOC` (partitions and counts,
  protocols, splits, shards, skipped frames, dropped tracklets, split source, flow and
  keypoint facts) plus `num_tracklets`, `num_frames`, `num_cameras`, `frame_size`,
  `tracklet_index`, `source`, `options` and dataset-specific entries.
- `tracklets.csv`: one row per stored tracklet: tracklet_id, pid, camid, label, num_frames,
  height, width, frame_format, shard, offset (byte offset of its record in the shard, for
  random access with `data_pipelines.shards.read_record`), name.
- `.convert_state.json`: what a re-run needs to resume (data_pipelines/shards.py).

Bad input: a missing metadata file is an error naming it and the expected layout; file
names that disagree with the metadata are an error naming the tracklet; frames that are
missing, empty, unreadable, do not decode, are damaged (tfreid/data/image_check.py) or, for
JPEG, make libjpeg warn (decoded strictly with simplejpeg) are skipped and listed in
`manifest["skipped_frames"]`; tracklets left without frames are listed in
`manifest["dropped_tracklets"]`. An interrupted conversion re-run with the same flags
resumes (finished shards are verified first and converted again when damaged); the output
is identical for identical input whatever `--num_workers` is. Exit codes: 1 for bad input
(one line `error: ...`), 4 when the disk is full (one line; run the same command again
once there is space).

`--optical_flow` adds per-frame flow (data_pipelines/optical_flow.py, for A3D);
`--keypoints=FILE` adds per-frame body joints (data_pipelines/keypoints.py, for STAL).
"""

from __future__ import annotations

import csv
import errno
import io
import os
import shutil
import sys
from typing import Any, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=wrong-import-position
from absl import flags

from data_pipelines import dukev
from data_pipelines import folder
from data_pipelines import ilidsvid
from data_pipelines import keypoints as keypoints_lib
from data_pipelines import mars
from data_pipelines import optical_flow as flow_lib
from data_pipelines import prid2011
from data_pipelines import shards
from tfreid.data import schema

DATASETS = ("mars", "ilidsvid", "prid2011", "dukev", "folder")
TRACKLET_INDEX = "tracklets.csv"
EXIT_DISK_FULL = 4  # as tfreid.console.EXIT_DISK_FULL
KEYPOINT_WORK_DIR = ".keypoints.tmp"


def build_index(dataset: str, input_dir: str, *, camera_regex: str = folder.DEFAULT_CAMERA_REGEX,
                csv_path: Optional[str] = None, split_seed: int = 0) -> shards.DatasetIndex:
  """The `DatasetIndex` of a raw dataset folder."""
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}.")
  if not os.path.isdir(input_dir):
    raise shards.ConversionError(f"--input_dir {input_dir!r} is not a folder.")
  if dataset == "mars":
    return mars.build_index(input_dir)
  if dataset == "ilidsvid":
    return ilidsvid.build_index(input_dir)
  if dataset == "prid2011":
    return prid2011.build_index(input_dir, split_seed=split_seed)
  if dataset == "dukev":
    return dukev.build_index(input_dir)
  return folder.build_index(input_dir, camera_regex=camera_regex, csv_path=csv_path)


def _partition_stats(ids: list[int], index: shards.DatasetIndex,
                     kept: dict[int, dict[str, Any]]) -> dict[str, int]:
  return {"tracklets": len(ids),
          "identities": len({index.tracklets[t].pid for t in ids}),
          "frames": sum(kept[t]["num_frames"] for t in ids)}


def build_manifest(index: shards.DatasetIndex, result: shards.ConversionResult,
                   options: shards.EncodeOptions, settings: dict[str, Any]) -> dict[str, Any]:
  """manifest.json for a finished conversion (schema.MANIFEST_DOC keys plus extras)."""
  kept = result.tracklets
  splits = []
  for split in index.splits:
    out = {name: [t for t in ids if t in kept] for name, ids in split.items()
           if name != "train_pids"}
    out["train_pids"] = list(split["train_pids"])
    splits.append(out)
  partitions = {name: _partition_stats(ids, index, kept) for name, ids in splits[0].items()
                if name != "train_pids"}
  formats = sorted({t["frame_format"] for t in kept.values()})
  heights = [t["height"] for t in kept.values()]
  widths = [t["width"] for t in kept.values()]
  total_frames = sum(t["num_frames"] for t in kept.values())
  manifest: dict[str, Any] = {
      "schema_version": schema.SCHEMA_VERSION,
      "dataset": index.dataset,
      "num_splits": len(splits),
      "frame_format": formats[0] if len(formats) == 1 else "mixed",
      "partitions": partitions,
      "protocols": index.protocols,
      "num_tracklets": len(kept),
      "num_frames": total_frames,
      "num_cameras": len({index.tracklets[t].camid for t in kept}),
      "frame_size": {
          "min_height": min(heights, default=0), "max_height": max(heights, default=0),
          "min_width": min(widths, default=0), "max_width": max(widths, default=0),
          "mixed_size_tracklets": sum(t["mixed_sizes"] for t in kept.values()),
          "note": "height/width of a record are its first frame's"},
      "shards": result.shards,
  }
  if options.optical_flow:
    manifest["flow"] = {
        "scale": options.flow_scale, "method": options.flow_method,
        **({"dis_preset": options.dis_preset} if options.flow_method == "dis" else {}),
        "clipped_values": result.flow_clipped, "values": result.flow_values,
        "encoding": "PNG per frame: R = dx, G = dy (q = round(f * scale) + 128), B = 0; "
                    "the last flow repeats the one before it"}
  if options.keypoints is not None:
    manifest["keypoints"] = keypoints_lib.keypoints_manifest(
        options.keypoints, sum(t["keypoint_frames"] for t in kept.values()), total_frames)
  manifest.update({
      "skipped_frames": result.skipped_frames,
      "dropped_tracklets": index.dropped_tracklets + result.dropped_tracklets,
      "split_source": index.split_source,
      "transcoded_frames": result.transcoded_frames,
      "tracklet_index": TRACKLET_INDEX,
      "source": os.path.abspath(index.root),
      "options": settings,
  })
  manifest.update(index.extra)
  manifest["splits"] = splits
  return manifest


def write_tracklet_index(output_dir: str, index: shards.DatasetIndex,
                         result: shards.ConversionResult) -> None:
  """Writes tracklets.csv (convert.py docstring) atomically."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["tracklet_id", "pid", "camid", "label", "num_frames", "height", "width",
                   "frame_format", "shard", "offset", "name"])
  for tid in sorted(result.tracklets):
    t, spec = result.tracklets[tid], index.tracklets[tid]
    writer.writerow([tid, spec.pid, spec.camid, spec.label, t["num_frames"], t["height"],
                     t["width"], t["frame_format"], t["shard"], t["offset"], spec.name])
  path = os.path.join(output_dir, TRACKLET_INDEX)
  with open(path + ".tmp", "w") as f:
    f.write(buf.getvalue())
  os.replace(path + ".tmp", path)


def convert(dataset: str, input_dir: str, output_dir: str, *, num_workers: int = 1,
            shard_size_mb: float = 256, optical_flow: bool = False, flow_method: str = "dis",
            dis_preset: str = "fast", flow_scale: float = flow_lib.DEFAULT_FLOW_SCALE,
            keypoints: Optional[str] = None,
            camera_regex: str = folder.DEFAULT_CAMERA_REGEX, csv_path: Optional[str] = None,
            split_seed: int = 0, overwrite: bool = False, progress: bool = True
            ) -> dict[str, Any]:
  """Converts `input_dir` into shards + manifest.json in `output_dir`; returns the manifest.

  Args mirror the command-line flags (module docstring).
  """
  if optical_flow:
    flow_lib.check_method(flow_method, dis_preset)
    if flow_scale <= 0:
      raise ValueError(f"--flow_scale must be > 0, got {flow_scale}.")
  if num_workers < 1:
    raise ValueError(f"num_workers must be >= 1, got {num_workers}.")
  shards.check_jpeg_decoder()
  index = build_index(dataset, input_dir, camera_regex=camera_regex, csv_path=csv_path,
                      split_seed=split_seed)
  os.makedirs(output_dir, exist_ok=True)
  kp_dir = os.path.join(output_dir, KEYPOINT_WORK_DIR)
  arrays = None
  try:
    if keypoints:
      arrays = keypoints_lib.join_keypoints(
          keypoints, (f for s in index.tracklets for f in s.frames),
          sum(len(s.frames) for s in index.tracklets), kp_dir)
    options = shards.EncodeOptions(optical_flow=optical_flow, flow_method=flow_method,
                                   dis_preset=dis_preset, flow_scale=flow_scale,
                                   keypoints=arrays)
    result = shards.write_shards(index, output_dir, options=options,
                                 shard_size_mb=shard_size_mb, num_workers=num_workers,
                                 overwrite=overwrite, progress=progress)
  finally:
    shutil.rmtree(kp_dir, ignore_errors=True)
  settings = {"shard_size_mb": shard_size_mb}
  if dataset == "prid2011":
    settings["split_seed"] = split_seed
  if dataset == "folder":
    settings.update(camera_regex=None if csv_path else camera_regex,
                    csv=os.path.basename(csv_path) if csv_path else None)
  manifest = build_manifest(index, result, options, settings)
  write_tracklet_index(output_dir, index, result)
  schema.write_manifest(output_dir, manifest)
  return manifest


# ------------------------------------------------------------------------------ CLI

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags (defined on use, so importing this module defines none)."""
  flags.DEFINE_enum("dataset", None, DATASETS, "Which raw dataset layout --input_dir holds.")
  flags.DEFINE_string("input_dir", None, "The raw dataset folder.")
  flags.DEFINE_string("output_dir", None, "Where shards and manifest.json are written.")
  flags.DEFINE_integer("num_workers", 0, "Encoding processes; 0 = one per CPU core. The output "
                       "does not depend on it.")
  flags.DEFINE_float("shard_size_mb", 256, "Target shard size in MiB of source frame bytes.")
  flags.DEFINE_bool("optical_flow", False, "Store dense optical flow per frame (A3D).")
  flags.DEFINE_enum("flow_method", "dis", flow_lib.FLOW_METHODS, "Optical flow algorithm.")
  flags.DEFINE_enum("dis_preset", "fast", list(flow_lib.DIS_PRESETS), "DIS flow preset.")
  flags.DEFINE_float("flow_scale", flow_lib.DEFAULT_FLOW_SCALE,
                     "Flow quantisation: q = round(f * scale) + 128, clipped to 0..255.")
  flags.DEFINE_string("keypoints", None, "JSON-lines file of per-frame body joints (see "
                      "data_pipelines/keypoints.py).")
  flags.DEFINE_enum("keypoints_format", "tfreid", ["tfreid", "coco17"], "--keypoints file "
                    "format: tfreid's JSON lines, or a COCO-17 keypoint document (MMPose, "
                    "YOLO-pose, OpenPose COCO), mapped to the 14 joints "
                    "(data_pipelines/keypoints.py COCO17_DOC).")
  flags.DEFINE_string("camera_regex", folder.DEFAULT_CAMERA_REGEX, "--dataset=folder: regex "
                      "whose first group is the camera number, searched in the tracklet folder "
                      "name, then in the frame names.")
  flags.DEFINE_string("csv", None, "--dataset=folder: CSV file listing the frames instead of the "
                      "folder tree (columns partition,pid,camera,tracklet,frame[,frame_number]).")
  flags.DEFINE_integer("split_seed", 0, "--dataset=prid2011 without splits_prid2011.json: seed of "
                       "the 10 random 50/50 splits.")
  flags.DEFINE_bool("overwrite", False, "Replace an earlier conversion of other input or "
                    "options in --output_dir.")
  flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workers = FLAGS.num_workers or (os.cpu_count() or 1)
  keypoints = FLAGS.keypoints
  try:
    if keypoints and FLAGS.keypoints_format == "coco17":
      # The 14-joint lines of the COCO document, beside the output (kept: the manifest
      # names the file it read).
      keypoints = os.path.abspath(FLAGS.output_dir).rstrip("/") + ".keypoints14.jsonl"
      counts = keypoints_lib.coco17_to_jsonl(FLAGS.keypoints, keypoints)
      print(f"COCO-17 keypoints -> {keypoints}: {counts}")
    manifest = convert(FLAGS.dataset, FLAGS.input_dir, FLAGS.output_dir,
                       num_workers=workers, shard_size_mb=FLAGS.shard_size_mb,
                       optical_flow=FLAGS.optical_flow, flow_method=FLAGS.flow_method,
                       dis_preset=FLAGS.dis_preset, flow_scale=FLAGS.flow_scale,
                       keypoints=keypoints, camera_regex=FLAGS.camera_regex,
                       csv_path=FLAGS.csv, split_seed=FLAGS.split_seed,
                       overwrite=FLAGS.overwrite, progress=FLAGS.progress)
  except (shards.ConversionError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    print(f"error: no space left on the device ({e}). Finished shards are complete (each is "
          "written under a temporary name and renamed): free some space and run the same "
          "command to resume.", file=sys.stderr)
    return EXIT_DISK_FULL
  from data_pipelines import inspect as inspect_lib  # pylint: disable=import-outside-toplevel
  print(inspect_lib.summarize(manifest))
  print(f"wrote {FLAGS.output_dir}/{schema.MANIFEST_NAME}")
  return 0


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["dataset", "input_dir", "output_dir"])
  app.run(main)
