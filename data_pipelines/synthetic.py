"""The built-in synthetic video ReID dataset, written in the MARS on-disk layout.

    python -m data_pipelines.synthetic --output_dir=DIR --num_identities=150 --seed=0

writes the quickstart dataset (11.5k frames of 128x64, 53 MB; about 14 s on one core); then
`python -m data_pipelines.convert --dataset=mars --input_dir=DIR --output_dir=DST` converts
it like the real MARS. Layout (REFERENCE_FACTS.md, "MARS"):

    DIR/bbox_train/0001/0001C1T0001F001.jpg      PPPPCcTttttFfff.jpg
    DIR/bbox_test/00-1/...  0000/...  0076/...    junk (-1), distractors (0), test pids
    DIR/info/train_name.txt  test_name.txt        one basename per line, CRLF
    DIR/info/tracks_train_info.mat               track_train_info  int32 [n, 4]
    DIR/info/tracks_test_info.mat                track_test_info   int32 [n, 4]
    DIR/info/query_IDX.mat                       query_IDX         int32 [1, nq]
    DIR/keypoints.jsonl                           14 joints per frame (--keypoints for convert)
    DIR/synthetic_info.json                       config, cameras, attributes, one-part pairs

Track info rows are [start, end, pid, camera] with 1-based inclusive rows into the name
list; query_IDX holds 1-based rows of track_test_info. The first half of the identities
(pids 0001..N//2) is the training set, the rest the test set (synthetic_plan).

Each keypoints line is `{"frame": "bbox_train/0001/0001C1T0001F001.jpg", "keypoints":
[[x, y, v], ...]}`: 14 joints in `tfreid.data.schema.JOINT_NAMES` order, x and y in pixels
of that frame (they may lie outside it), v = 1 visible, 0 hidden by an occluder or outside
the frame (self-occlusion is not marked). `--keypoint_noise` adds Gaussian noise of that
standard deviation (pixels) to x and y.

Presets: `easy` (camera changes, detector jitter, one-part look-alikes) and `occluded`
(plus occluders moving across 60% of the tracklets and 8% badly cropped frames). Output is
byte-identical for the same flags, with any --num_workers.

`--contact_sheet=PATH` writes a PNG of sample identities across all cameras and of a few
tracklets over time (with or without --output_dir).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import sys
import time
from typing import Any

import cv2
import numpy as np
import scipy.io

from data_pipelines import synthetic_scene as scene
from data_pipelines.synthetic_plan import PRESETS, Plan, SyntheticConfig, build_plan

KEYPOINTS_FILE = "keypoints.jsonl"
INFO_FILE = "synthetic_info.json"
# What generate() writes; only these are removed by overwrite=True.
OUTPUTS = ("bbox_train", "bbox_test", "info", INFO_FILE)
# MAT-file header text: scipy writes the creation time there, which would make two runs
# differ; a fixed text keeps the files byte-identical.
MAT_HEADER = b"MATLAB 5.0 MAT-file, written by tfreid data_pipelines.synthetic"


def _savemat(path: str, name: str, value: np.ndarray) -> None:
  """scipy.io.savemat with a fixed header text (see MAT_HEADER)."""
  buf = io.BytesIO()
  scipy.io.savemat(buf, {name: value}, format="5", do_compression=False, oned_as="row")
  data = bytearray(buf.getvalue())
  data[:116] = MAT_HEADER.ljust(116, b" ")
  with open(path, "wb") as f:
    f.write(bytes(data))


def _write_lines(path: str, lines: list[str]) -> None:
  with open(path, "w", newline="") as f:
    f.write("".join(line + "\r\n" for line in lines))


def _keypoint_line(path: str, keypoints: np.ndarray) -> str:
  rows = [[round(float(x), 2) + 0.0, round(float(y), 2) + 0.0, int(v)]
          for x, y, v in keypoints]
  return json.dumps({"frame": path, "keypoints": rows}, separators=(",", ":"))


# State of a worker process (set by _init_worker) or of the main process.
_WORKER: dict[str, Any] = {}


def _init_worker(plan: Plan, output_dir: str) -> None:
  cv2.setNumThreads(1)
  _WORKER["plan"] = plan
  _WORKER["output_dir"] = output_dir


def _render_and_write(job: tuple[str, int]) -> tuple[list[str], int]:
  """Renders tracklet `job` = (split, index), writes its JPEGs; returns keypoint lines."""
  plan: Plan = _WORKER["plan"]
  output_dir: str = _WORKER["output_dir"]
  spec = plan.tracklets(job[0])[job[1]]
  frames = plan.render(spec)
  noise = plan.config.keypoint_noise
  kp_rng = scene.tracklet_streams(spec.seed)[3]
  params = [cv2.IMWRITE_JPEG_QUALITY, int(plan.config.jpeg_quality)]
  lines, size = [], 0
  for i, frame in enumerate(frames):
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(frame.image[..., ::-1]), params)
    if not ok:
      raise RuntimeError(f"JPEG encoding failed for {spec.frame_path(i)}.")
    path = spec.frame_path(i)
    with open(os.path.join(output_dir, *path.split("/")), "wb") as f:
      f.write(data.tobytes())
    size += data.size
    keypoints = frame.keypoints.copy()
    if noise > 0 and spec.appearance >= 0:
      keypoints[:, :2] += kp_rng.normal(0.0, noise, (keypoints.shape[0], 2))
    lines.append(_keypoint_line(path, keypoints))
  return lines, size


def _prepare(output_dir: str, keypoints_file: str, overwrite: bool) -> None:
  existing = [name for name in OUTPUTS + (keypoints_file,)
              if os.path.exists(os.path.join(output_dir, name))]
  if existing and not overwrite:
    raise FileExistsError(
        f"{output_dir!r} already holds {existing}: refusing to mix two datasets. Choose an "
        "empty --output_dir or pass --overwrite (which deletes only those entries).")
  for name in existing:
    path = os.path.join(output_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  os.makedirs(os.path.join(output_dir, "info"), exist_ok=True)


def generate(config: SyntheticConfig, output_dir: str, *, num_workers: int = 1,
             keypoints_file: str = KEYPOINTS_FILE, overwrite: bool = False) -> dict[str, Any]:
  """Writes the synthetic dataset of `config` to output_dir (layout: module docstring).

  Args:
    config: the dataset (see SyntheticConfig; validated here).
    output_dir: destination directory (created if missing).
    num_workers: processes rendering tracklets; the output does not depend on it.
    keypoints_file: keypoints file name, relative to output_dir unless absolute.
    overwrite: delete a previous dataset's entries in output_dir first.

  Returns:
    Summary: counts, `bytes` (JPEG bytes), `seconds`.
  """
  start = time.perf_counter()
  plan = build_plan(config)
  if num_workers < 1:
    raise ValueError(f"num_workers={num_workers}: expected >= 1.")
  _prepare(output_dir, keypoints_file, overwrite)
  info = os.path.join(output_dir, "info")
  for split in ("train", "test"):
    for folder in sorted({t.folder for t in plan.tracklets(split)}):
      os.makedirs(os.path.join(output_dir, f"bbox_{split}", folder), exist_ok=True)
    _write_lines(os.path.join(info, f"{split}_name.txt"), plan.names(split))
    _savemat(os.path.join(info, f"tracks_{split}_info.mat"), f"track_{split}_info",
             plan.track_info(split))
  _savemat(os.path.join(info, "query_IDX.mat"), "query_IDX",
           np.array(plan.query_rows, np.int32).reshape(1, -1))
  with open(os.path.join(output_dir, INFO_FILE), "w") as f:
    json.dump(plan.to_dict(), f, indent=1)
    f.write("\n")

  jobs = [(split, i) for split in ("train", "test") for i in range(len(plan.tracklets(split)))]
  total = 0
  kp_path = os.path.join(output_dir, keypoints_file)
  with open(kp_path, "w", newline="\n") as kp_file:
    if num_workers == 1:
      _init_worker(plan, output_dir)
      results = map(_render_and_write, jobs)
      pool = None
    else:
      pool = multiprocessing.get_context("spawn").Pool(
          num_workers, initializer=_init_worker, initargs=(plan, output_dir))
      results = pool.imap(_render_and_write, jobs, chunksize=4)
    try:
      for lines, size in results:  # in job order, whichever process rendered them
        kp_file.write("".join(line + "\n" for line in lines))
        total += size
    finally:
      if pool is not None:
        pool.close()
        pool.join()
      _WORKER.clear()
  summary = dict(plan.to_dict()["counts"])
  summary.update(identities=plan.config.num_identities, bytes=total,
                 seconds=round(time.perf_counter() - start, 2), output_dir=output_dir)
  return summary


# ---------------------------------------------------------------------------------------------
# Contact sheet.


def _label(cell: np.ndarray, text: str) -> np.ndarray:
  band = np.full((14, cell.shape[1], 3), 255, np.uint8)
  cv2.putText(band, text, (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
  return np.concatenate([band, cell], axis=0)


def _pad_row(row: np.ndarray, width: int) -> np.ndarray:
  if row.shape[1] >= width:
    return row[:, :width]
  pad = np.full((row.shape[0], width - row.shape[1], 3), 255, np.uint8)
  return np.concatenate([row, pad], axis=1)


def contact_sheet(plan: Plan, *, num_identities: int = 6, num_tracklets: int = 3,
                  num_frames: int = 6, zoom: int = 2) -> np.ndarray:
  """RGB image: sample identities (rows; one-part pairs adjacent) across every camera,
  without occluders, then a few tracklets over time as the preset renders them."""
  c = plan.config
  pairs = plan.one_part_pairs()
  chosen: list[tuple[int, str]] = []
  for base, variant, part in pairs:
    if len(chosen) + 2 <= num_identities:
      chosen += [(base, f"{base:04d}"), (variant, f"{variant:04d} ({part} of {base:04d})")]
  for ident in plan.identities:
    if len(chosen) >= num_identities:
      break
    if all(ident.pid != pid for pid, _ in chosen):
      chosen.append((ident.pid, f"{ident.pid:04d}"))
  by_pid = {i.pid: i for i in plan.identities}
  rows = []
  for pid, text in chosen:
    cells = []
    for cam in plan.cameras:
      spec = scene.TrackletSpec(split=by_pid[pid].split, pid=pid, camera=cam.index, number=1,
                                num_frames=1, appearance=by_pid[pid].appearance,
                                kind="person", seed=c.seed * 100003 + pid * 10 + cam.index)
      frame = plan.render(spec, occluders=False)[0]
      cells.append(_label(cv2.resize(frame.image, None, fx=zoom, fy=zoom,
                                     interpolation=cv2.INTER_NEAREST), f"C{cam.index}"))
    row = np.concatenate(cells, axis=1)
    rows.append(_label(row, f"pid {text}"))
  sheet_width = max(r.shape[1] for r in rows)
  # Tracklets over time (identities' tracklets; with occluders when the preset has them).
  picked = []
  for spec in plan.test + plan.train:
    if spec.pid <= 0 or spec.num_frames < 2 or len(picked) >= num_tracklets:
      continue
    frames = plan.render(spec)
    if c.occluder_prob > 0 and not any(f.occluder_mask.any() for f in frames):
      continue
    picked.append((spec, frames))
  for spec, frames in picked:
    steps = min(num_frames, len(frames))
    index = np.round(np.linspace(0, len(frames) - 1, steps)).astype(int)
    strip = np.concatenate([cv2.resize(frames[i].image, None, fx=zoom, fy=zoom,
                                       interpolation=cv2.INTER_NEAREST) for i in index], axis=1)
    strip = _label(strip, f"{spec.frame_name(0)[:11]} ({c.preset}): frames "
                   + ", ".join(str(i + 1) for i in index))
    rows.append(_pad_row(strip, sheet_width))
  rows = [_pad_row(r, sheet_width) for r in rows]
  gap = np.full((4, sheet_width, 3), 255, np.uint8)
  return np.concatenate([x for r in rows for x in (r, gap)], axis=0)


def write_contact_sheet(plan: Plan, path: str) -> None:
  """Writes `contact_sheet(plan)` as a PNG."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  image = np.ascontiguousarray(contact_sheet(plan)[..., ::-1])
  if not cv2.imwrite(path, image, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
    raise OSError(f"could not write the contact sheet to {path!r} (a .png path is expected).")


# ---------------------------------------------------------------------------------------------
# Command line.


def parse_range(text: str, name: str) -> tuple[int, int]:
  """'8,24' -> (8, 24); '16' -> (16, 16)."""
  parts = [p.strip() for p in str(text).split(",")]
  try:
    values = [int(p) for p in parts]
  except ValueError:
    values = []
  if len(values) not in (1, 2):
    raise ValueError(f"--{name}={text!r}: expected 'min,max' or a single integer.")
  return (values[0], values[-1])


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program, so importing this module
  next to other tools does not collide with their flags)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  d = SyntheticConfig()
  flags.DEFINE_string("output_dir", None, "Destination directory of the dataset.")
  flags.DEFINE_integer("num_identities", d.num_identities,
                       "Identities; the first half train, the second half test.")
  flags.DEFINE_integer("seed", d.seed, "Random seed; the same flags give identical bytes.")
  flags.DEFINE_enum("preset", d.preset, sorted(PRESETS),
                    "easy, or occluded (moving occluders and bad crops).")
  flags.DEFINE_integer("num_cameras", d.num_cameras, "Cameras (2..9).")
  flags.DEFINE_string("cameras_per_identity", None,
                      "min,max cameras that see an identity; default 2,min(3,num_cameras).")
  flags.DEFINE_string("tracklets_per_camera", "1,2",
                      "min,max tracklets of an identity per camera that sees it.")
  flags.DEFINE_string("frames", "8,24", "min,max frames per tracklet, or a fixed count.")
  flags.DEFINE_integer("height", d.height, "Frame height in pixels.")
  flags.DEFINE_integer("width", d.width, "Frame width in pixels.")
  flags.DEFINE_integer("distractors", None,
                       "Distractor tracklets (pid 0); default num_identities // 5.")
  flags.DEFINE_integer("junk", None, "Junk tracklets (pid -1); default num_identities // 10.")
  flags.DEFINE_float("pair_fraction", d.pair_fraction,
                     "Share of identities in pairs that differ in one part only.")
  flags.DEFINE_float("occluder_prob", None, "Share of tracklets with an occluder (default: "
                     "preset).")
  flags.DEFINE_float("bad_crop_prob", None, "Share of badly cropped frames (default: preset).")
  flags.DEFINE_float("keypoint_noise", d.keypoint_noise,
                     "Std of Gaussian noise added to keypoint x, y (pixels).")
  flags.DEFINE_string("keypoints_file", KEYPOINTS_FILE,
                      "Keypoints JSON-lines file, relative to --output_dir.")
  flags.DEFINE_integer("jpeg_quality", d.jpeg_quality, "JPEG quality.")
  flags.DEFINE_integer("num_workers", 1, "Rendering processes (output does not depend on it).")
  flags.DEFINE_bool("overwrite", False, "Replace a dataset already in --output_dir.")
  flags.DEFINE_string("contact_sheet", None, "Also write a PNG contact sheet to this path.")


def config_from_flags(values) -> SyntheticConfig:
  """SyntheticConfig from parsed absl flag values."""
  return SyntheticConfig(
      num_identities=values.num_identities, seed=values.seed, preset=values.preset,
      num_cameras=values.num_cameras,
      cameras_per_identity=(None if values.cameras_per_identity is None else
                            parse_range(values.cameras_per_identity, "cameras_per_identity")),
      tracklets_per_camera=parse_range(values.tracklets_per_camera, "tracklets_per_camera"),
      frames=parse_range(values.frames, "frames"), height=values.height, width=values.width,
      distractors=values.distractors, junk=values.junk, pair_fraction=values.pair_fraction,
      occluder_prob=values.occluder_prob, bad_crop_prob=values.bad_crop_prob,
      keypoint_noise=values.keypoint_noise, jpeg_quality=values.jpeg_quality)


def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments {argv[1:]}; all options are --flags.")
  values = flags.FLAGS
  if not values.output_dir and not values.contact_sheet:
    raise SystemExit("give --output_dir=DIR (the dataset) and/or --contact_sheet=PATH.png.")
  try:
    config = config_from_flags(values)
    if values.output_dir:
      summary = generate(config, values.output_dir, num_workers=values.num_workers,
                         keypoints_file=values.keypoints_file, overwrite=values.overwrite)
      print(json.dumps(summary, indent=1))
    if values.contact_sheet:
      write_contact_sheet(build_plan(config), values.contact_sheet)
      print(f"contact sheet: {values.contact_sheet}")
  except (ValueError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from e


if __name__ == "__main__":
  from absl import app  # pylint: disable=import-outside-toplevel
  define_flags()
  app.run(main)
