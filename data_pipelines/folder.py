"""Your own tracklets: a folder tree or a CSV file.

Folder tree (`--dataset=folder --input_dir=ROOT`):

    ROOT/train/<pid>/<tracklet>/<frames>
    ROOT/query/<pid>/<tracklet>/<frames>
    ROOT/gallery/<pid>/<tracklet>/<frames>

- `<pid>` folders are integers (e.g. `0007`); `-1` means junk and `0` a distractor, as in
  MARS. Junk tracklets (pid -1) are not stored and are listed in dropped_tracklets, as
  torchreid drops them.
- The camera comes from `--camera_regex` (default `(?i)(?:camera|cam|c)[_-]?(\\d+)`, which
  matches `c3`, `C3`, `cam3`, `cam_3` ...): first searched in the tracklet folder name; if it
  does not match there, in every frame file name (they must agree). Its first group is the
  camera number. Camera numbers are relabelled 0..C-1 in increasing order over the whole
  dataset (c1..c6 -> 0..5); `manifest["camera_map"]` keeps the mapping.
- Frames are the files with an image extension (.jpg .jpeg .png .bmp .tif .tiff .webp),
  ordered by name with digit runs compared as numbers (f2 before f10); the frame number is
  the last digit run of the name (else the position). Other files are ignored and counted in
  `manifest["ignored_files"]`. JPEG and PNG frames are stored as they are; other formats
  are stored as lossless PNG.
- A tracklet folder with no frames is listed in dropped_tracklets.

CSV file (`--dataset=folder --input_dir=ROOT --csv=FILE`): one row per frame, with a header
row naming the columns

    partition,pid,camera,tracklet,frame[,frame_number]

`partition` is train, query or gallery; `pid` and `camera` are integers (cameras relabelled
as above); `tracklet` is any name, unique within its partition (rows sharing partition and
tracklet form one tracklet, frames in row order); `frame` is the frame path relative to
ROOT, `/`-separated; `frame_number` is optional (default: position in the tracklet). A
tracklet whose rows name different pids or cameras is an error naming it.

Tracklets are numbered train, query, gallery; within a partition by pid, then tracklet name
(digit runs as numbers). Train labels = index of pid in the sorted train pids. One protocol,
torchreid (query against gallery). Shards: "train" and "test" groups.
"""

from __future__ import annotations

import collections
import csv
import os
import re
from typing import Optional

from data_pipelines import keypoints as keypoints_lib
from data_pipelines import shards

LAYOUT = """
  INPUT_DIR/train/<pid>/<tracklet>/<frames>      (e.g. train/0001/c1_t0001/000001.jpg)
  INPUT_DIR/query/<pid>/<tracklet>/<frames>
  INPUT_DIR/gallery/<pid>/<tracklet>/<frames>
  or a CSV file (--csv) with columns partition,pid,camera,tracklet,frame[,frame_number]
"""
PARTITIONS = ("train", "query", "gallery")
DEFAULT_CAMERA_REGEX = r"(?i)(?:camera|cam|c)[_-]?(\d+)"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CSV_COLUMNS = ("partition", "pid", "camera", "tracklet", "frame")


def _frame_number(name: str, position: int) -> int:
  runs = re.findall(r"\d+", os.path.splitext(name)[0])
  return int(runs[-1]) if runs else position


def _camera(regex: re.Pattern, track_dir: str, names: list[str], rel_dir: str) -> int:
  m = regex.search(track_dir)
  if m:
    return int(m.group(1))
  found = {}
  for name in names:
    m = regex.search(os.path.splitext(name)[0])
    if m:
      found.setdefault(int(m.group(1)), name)
  if len(found) == 1:
    return next(iter(found))
  if not found:
    raise shards.ConversionError(
        f"tracklet {rel_dir}: --camera_regex {regex.pattern!r} matches neither the tracklet "
        "folder name nor any frame name. Rename them to include the camera (e.g. c3), pass a "
        "--camera_regex whose first group is the camera number, or use --csv.")
  raise shards.ConversionError(
      f"tracklet {rel_dir}: its frame names give cameras {sorted(found)} (e.g. "
      f"{list(found.values())[:2]}); a tracklet comes from one camera.")


def _parse_int(value: str, what: str, where: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise shards.ConversionError(f"{where}: {what} must be an integer, got {value!r}.") from None


Raw = collections.namedtuple("Raw", "part pid camera name frames numbers")


def _scan_folders(input_dir: str, regex: re.Pattern) -> tuple[list[Raw], list, int, list]:
  raws, dropped, ignored, ignored_examples = [], [], 0, []
  for part in PARTITIONS:
    shards.require(os.path.join(input_dir, part), f"{part} folder", LAYOUT, is_dir=True)
    for pid_dir in sorted(shards.list_dirs(os.path.join(input_dir, part)),
                          key=shards.natural_key):
      pid = _parse_int(pid_dir, "the pid folder name", f"{part}/{pid_dir}")
      for track_dir in sorted(shards.list_dirs(os.path.join(input_dir, part, pid_dir)),
                              key=shards.natural_key):
        rel_dir = f"{part}/{pid_dir}/{track_dir}"
        path = os.path.join(input_dir, part, pid_dir, track_dir)
        names = sorted(shards.list_files(path, IMAGE_EXTENSIONS), key=shards.natural_key)
        others = [e.name for e in os.scandir(path)
                  if e.is_file() and os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS]
        ignored += len(others)
        for name in sorted(others)[:max(0, 5 - len(ignored_examples))]:
          ignored_examples.append(f"{rel_dir}/{name}")
        if not names:
          dropped.append({"tracklet": rel_dir, "reason": "no frames"})
          continue
        camera = _camera(regex, track_dir, names, rel_dir)
        raws.append(Raw(part, pid, camera, rel_dir, tuple(f"{rel_dir}/{n}" for n in names),
                        tuple(_frame_number(n, i) for i, n in enumerate(names))))
  return raws, dropped, ignored, ignored_examples


def _read_csv(input_dir: str, csv_path: str) -> list[Raw]:
  if not os.path.isfile(csv_path):
    raise shards.missing(csv_path, "--csv file", LAYOUT)
  tracks: dict[tuple[str, str], dict] = collections.OrderedDict()
  with open(csv_path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    header = [c.strip() for c in (reader.fieldnames or [])]
    missing_cols = [c for c in CSV_COLUMNS if c not in header]
    if missing_cols:
      raise shards.ConversionError(
          f"{csv_path}: the header row lacks column(s) {missing_cols}; expected "
          f"{','.join(CSV_COLUMNS)}[,frame_number] (see data_pipelines/folder.py).")
    reader.fieldnames = header
    for line, row in enumerate(reader, start=2):
      where = f"{csv_path} line {line}"
      part = row["partition"].strip()
      if part not in PARTITIONS:
        raise shards.ConversionError(f"{where}: partition must be one of {PARTITIONS}, got "
                                     f"{part!r}.")
      pid = _parse_int(row["pid"].strip(), "pid", where)
      camera = _parse_int(row["camera"].strip(), "camera", where)
      name = row["tracklet"].strip()
      frame = keypoints_lib.normalize_frame_path(row["frame"].strip())
      key = (part, name)
      track = tracks.setdefault(key, {"pid": pid, "camera": camera, "frames": [],
                                      "numbers": []})
      if (track["pid"], track["camera"]) != (pid, camera):
        raise shards.ConversionError(
            f"{where}: tracklet {part}/{name} has pid {track['pid']}, camera "
            f"{track['camera']} on an earlier row but pid {pid}, camera {camera} here; a "
            "tracklet has one pid and one camera.")
      number = (row.get("frame_number") or "").strip()
      track["numbers"].append(_parse_int(number, "frame_number", where) if number
                              else len(track["frames"]))
      track["frames"].append(frame)
  return [Raw(part, t["pid"], t["camera"], f"{part}/{name}", tuple(t["frames"]),
              tuple(t["numbers"])) for (part, name), t in tracks.items()]


def build_index(input_dir: str, camera_regex: str = DEFAULT_CAMERA_REGEX,
                csv_path: Optional[str] = None) -> shards.DatasetIndex:
  """Indexes a folder tree, or the CSV file `csv_path` (module docstring)."""
  shards.require(input_dir, "dataset folder", LAYOUT, is_dir=True)
  dropped, ignored, ignored_examples = [], 0, []
  if csv_path:
    raws = _read_csv(input_dir, csv_path)
    source = f"partition column of {os.path.basename(csv_path)}"
  else:
    try:
      regex = re.compile(camera_regex)
    except re.error as e:
      raise shards.ConversionError(f"--camera_regex {camera_regex!r} is not a valid regular "
                                   f"expression ({e}).") from None
    if regex.groups < 1:
      raise shards.ConversionError(f"--camera_regex {camera_regex!r} needs a group capturing "
                                   r"the camera number, e.g. c(\d+).")
    raws, dropped, ignored, ignored_examples = _scan_folders(input_dir, regex)
    source = "train/query/gallery folders"
  order = {p: i for i, p in enumerate(PARTITIONS)}
  raws.sort(key=lambda r: (order[r.part], r.pid, shards.natural_key(r.name)))
  cameras = sorted({r.camera for r in raws})
  camera_map = {c: i for i, c in enumerate(cameras)}
  specs, members = [], {p: [] for p in PARTITIONS}
  for r in raws:
    if r.pid == -1:
      dropped.append({"tracklet": r.name, "reason": "junk pid -1 (torchreid drops it)"})
      continue
    members[r.part].append(len(specs))
    specs.append(shards.TrackletSpec(len(specs), r.pid, camera_map[r.camera],
                                     "train" if r.part == "train" else "test", r.frames,
                                     r.numbers, r.name))
  if not specs:
    raise shards.ConversionError(f"no tracklets found under {input_dir}; expected layout:"
                                 f"{LAYOUT}")
  split = shards.make_split(members, lambda t: specs[t].pid)
  index = shards.DatasetIndex(
      dataset="folder", root=input_dir, tracklets=specs, splits=[split],
      protocols={"torchreid": {"query": "query", "gallery": "gallery"}},
      split_source=source, dropped_tracklets=dropped,
      extra={"camera_map": {str(c): i for c, i in camera_map.items()},
             "ignored_files": {"count": ignored, "examples": ignored_examples}})
  return shards.finalize_index(index)
