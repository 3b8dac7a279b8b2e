"""DukeMTMC-VideoReID: index the train / query / gallery folders (torchreid protocol).

Layout (REFERENCE_FACTS.md; `--input_dir` holds the three folders, or holds
`DukeMTMC-VideoReID/` with them):

    train/0001/0003/0001C6F0099X30823.jpg      partition / pid / tracklet / frame
    query/...   gallery/...

A frame name `PPPPCcFffffXxxxxx.jpg` holds the pid, the camera (1..8), the frame's index in
its tracklet (stored as the frame number) and its frame in the video. Frames are ordered by
name. A frame whose pid differs from its pid folder, or a tracklet whose frames name
different cameras, is an error naming the tracklet. Frame sizes vary (the crops are not
resized); each record's height/width are its first frame's and
manifest["frame_size"]["mixed_size_tracklets"] counts tracklets that mix sizes.

Partitions: train (702 ids / 2196 tracklets, labels = index of pid in the sorted train pids),
query (702), gallery (2636, 1110 ids with 408 distractors). Each query tracklet also lies in
the gallery folder and is stored twice (once per folder, as on disk); evaluation removes the
same-pid same-camera gallery items. Tracklets with pid -1 (none in the release) are not
stored and are listed in dropped_tracklets. Camera 0-based (C6 -> 5). Shards: "train" and
"test" groups.
"""

from __future__ import annotations

import os
import re

from data_pipelines import shards

LAYOUT = """
  INPUT_DIR/train/0001/0003/0001C6F0099X30823.jpg     (partition/pid/tracklet/frame)
  INPUT_DIR/query/...     INPUT_DIR/gallery/...
"""
PARTITIONS = ("train", "query", "gallery")
NAME_RE = re.compile(r"^(?P<pid>-?\d+)C(?P<cam>\d+)F(?P<index>\d+)X(?P<frame>\d+)\.jpe?g$",
                     re.IGNORECASE)


def parse_name(name: str) -> tuple[int, int, int, int]:
  """`0001C6F0099X30823.jpg` -> (pid, camera as written, index in tracklet, video frame)."""
  m = NAME_RE.match(name)
  if not m:
    raise shards.ConversionError(
        f"DukeMTMC-VideoReID frame name {name!r} does not look like PPPPCcFffffXxxxxx.jpg "
        "(e.g. 0001C6F0099X30823.jpg).")
  return int(m["pid"]), int(m["cam"]), int(m["index"]), int(m["frame"])


def build_index(input_dir: str) -> shards.DatasetIndex:
  """Indexes a DukeMTMC-VideoReID folder (module docstring)."""
  shards.require(input_dir, "DukeMTMC-VideoReID folder", LAYOUT, is_dir=True)
  base, prefix = input_dir, ""
  if not os.path.isdir(os.path.join(input_dir, "train")):
    nested = os.path.join(input_dir, "DukeMTMC-VideoReID")
    if os.path.isdir(os.path.join(nested, "train")):
      base, prefix = nested, "DukeMTMC-VideoReID/"
  for part in PARTITIONS:
    shards.require(os.path.join(base, part), f"DukeMTMC-VideoReID {part} folder", LAYOUT,
                   is_dir=True)
  specs, dropped = [], []
  members = {part: [] for part in PARTITIONS}
  for part in PARTITIONS:
    for pid_dir in shards.list_dirs(os.path.join(base, part)):
      try:
        pid = int(pid_dir)
      except ValueError:
        raise shards.ConversionError(
            f"{prefix}{part}/{pid_dir}: pid folders must be numbers (e.g. 0001).") from None
      for track_dir in shards.list_dirs(os.path.join(base, part, pid_dir)):
        rel_dir = f"{prefix}{part}/{pid_dir}/{track_dir}"
        names = shards.list_files(os.path.join(base, part, pid_dir, track_dir),
                                  (".jpg", ".jpeg"))
        cams, numbers = set(), []
        for name in names:
          npid, cam, idx, _ = parse_name(name)
          if npid != pid:
            raise shards.ConversionError(
                f"tracklet {rel_dir}: frame {name} says pid {npid} but its folder is pid "
                f"{pid}. Move it to its pid folder.")
          cams.add(cam)
          numbers.append(idx)
        if len(cams) > 1:
          raise shards.ConversionError(
              f"tracklet {rel_dir}: its frames name cameras {sorted(cams)}; a tracklet comes "
              "from one camera.")
        if not names:
          dropped.append({"tracklet": rel_dir, "reason": "no frames"})
          continue
        if pid == -1:
          dropped.append({"tracklet": rel_dir, "reason": "junk pid -1 (torchreid drops it)"})
          continue
        members[part].append(len(specs))
        specs.append(shards.TrackletSpec(
            len(specs), pid, cams.pop() - 1, "train" if part == "train" else "test",
            tuple(f"{rel_dir}/{n}" for n in names), tuple(numbers), rel_dir))
  split = shards.make_split(members, lambda t: specs[t].pid)
  index = shards.DatasetIndex(
      dataset="dukev", root=input_dir, tracklets=specs, splits=[split],
      protocols={"torchreid": {"query": "query", "gallery": "gallery"}},
      split_source="train/query/gallery folders", dropped_tracklets=dropped)
  return shards.finalize_index(index)
