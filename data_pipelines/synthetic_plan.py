"""What the synthetic dataset contains: configuration, identities, cameras and tracklets.

`build_plan(config)` decides everything except pixels: the cameras' looks, each identity's
appearance and split, which cameras see it, how many tracklets of how many frames, the
distractor and junk tracklets, the MARS names and the queries. Rendering a tracklet
(`Plan.render`) depends only on the plan, so any process can render any tracklet.

Splits and ids (MARS conventions, REFERENCE_FACTS.md):
  * the first `num_identities // 2` identities are the training identities, with pids
    0001..n_train; the others are the test identities, with pids n_train+1..num_identities
    (disjoint, 4 digits);
  * test also holds distractor tracklets (pid 0, folder `0000`: pedestrians seen once, by one
    camera, who match nobody) and junk tracklets (pid -1, folder `00-1`: detector false
    alarms: background only, a zoomed-in body part, or a person cut by the crop edge);
  * tracklet numbers count from 1 within each (pid, camera); frame numbers from 1 within the
    tracklet;
  * queries: for every test identity seen by at least 2 cameras, one tracklet (drawn at
    random) per camera it was seen by; every other test tracklet is gallery. Test identities
    get at least 2 tracklets in two of their cameras (whatever `tracklets_per_camera` says),
    so every query has a gallery match in another camera.

One-part pairs: `pair_fraction` of each split's identities come in pairs whose appearances
differ in exactly one part (`render_pedestrian.one_part_variant`): at least one pair per split
when the split has 2 or more identities.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from data_pipelines import render_pedestrian as rp
from data_pipelines import synthetic_scene as scene

# Nuisance rates per preset: share of tracklets with an occluder, share of badly cropped
# frames.
PRESETS: dict[str, dict[str, float]] = {
    "easy": {"occluder_prob": 0.0, "bad_crop_prob": 0.0},
    "occluded": {"occluder_prob": 0.6, "bad_crop_prob": 0.08},
}
MAX_PID = 9999  # 4-digit pid field
MAX_FRAMES = 999  # 3-digit frame field
MAX_TRACKLET_NUMBER = 9999  # 4-digit tracklet field
MAX_CAMERAS = 9  # 1-digit camera field


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Everything that determines the synthetic dataset's bytes.

  Ranges are inclusive (min, max) pairs drawn uniformly per identity / camera / tracklet.
  `cameras_per_identity` defaults to (2, min(3, num_cameras)); `distractors` and `junk` to
  num_identities // 5 and // 10 tracklets;
  `occluder_prob` and `bad_crop_prob` default to the preset's values (PRESETS).
  """
  num_identities: int = 150
  seed: int = 0
  preset: str = "easy"
  num_cameras: int = 6
  cameras_per_identity: tuple[int, int] | None = None
  tracklets_per_camera: tuple[int, int] = (1, 2)
  frames: tuple[int, int] = (8, 24)
  height: int = 128
  width: int = 64
  distractors: int | None = None
  junk: int | None = None
  pair_fraction: float = 0.4
  occluder_prob: float | None = None
  bad_crop_prob: float | None = None
  keypoint_noise: float = 0.0
  jpeg_quality: int = 90

  def resolved(self) -> "SyntheticConfig":
    """A copy with defaults filled in, after checking every field (ValueError if wrong)."""
    if self.preset not in PRESETS:
      raise ValueError(f"unknown preset {self.preset!r}; expected one of {sorted(PRESETS)}.")
    preset = PRESETS[self.preset]
    c = dataclasses.replace(
        self,
        cameras_per_identity=((2, min(3, self.num_cameras)) if self.cameras_per_identity is None
                              else tuple(int(v) for v in self.cameras_per_identity)),
        tracklets_per_camera=tuple(int(v) for v in self.tracklets_per_camera),
        frames=tuple(int(v) for v in self.frames),
        distractors=self.num_identities // 5 if self.distractors is None else self.distractors,
        junk=self.num_identities // 10 if self.junk is None else self.junk,
        occluder_prob=(preset["occluder_prob"] if self.occluder_prob is None
                       else self.occluder_prob),
        bad_crop_prob=(preset["bad_crop_prob"] if self.bad_crop_prob is None
                       else self.bad_crop_prob))
    c._check()
    return c

  def _check(self) -> None:
    if not 2 <= self.num_identities <= MAX_PID:
      raise ValueError(f"num_identities={self.num_identities}: expected 2..{MAX_PID} (half "
                       "train, half test; pids are 4 digits).")
    if not 2 <= self.num_cameras <= MAX_CAMERAS:
      raise ValueError(f"num_cameras={self.num_cameras}: expected 2..{MAX_CAMERAS} (the "
                       "camera is one digit of the MARS file name).")
    for name, (lo, hi), lo_min, hi_max in (
        ("cameras_per_identity", self.cameras_per_identity, 1, self.num_cameras),
        ("tracklets_per_camera", self.tracklets_per_camera, 1, MAX_TRACKLET_NUMBER),
        ("frames", self.frames, 1, MAX_FRAMES)):
      if not lo_min <= lo <= hi <= hi_max:
        raise ValueError(f"{name}=({lo}, {hi}): expected {lo_min} <= min <= max <= {hi_max}; "
                         "give 'min,max' or one number.")
    if self.height < 16 or self.width < 8:
      raise ValueError(f"frame size {self.height}x{self.width} is too small: expected height "
                       ">= 16 and width >= 8 pixels.")
    if self.distractors < 0 or self.junk < 0:
      raise ValueError(f"distractors={self.distractors}, junk={self.junk}: expected counts "
                       ">= 0.")
    if self.distractors > MAX_TRACKLET_NUMBER * self.num_cameras:
      raise ValueError(f"distractors={self.distractors}: at most {MAX_TRACKLET_NUMBER} per "
                       "camera fit the 4-digit tracklet field.")
    if self.junk > MAX_TRACKLET_NUMBER * self.num_cameras:
      raise ValueError(f"junk={self.junk}: at most {MAX_TRACKLET_NUMBER} per camera fit the "
                       "4-digit tracklet field.")
    for name in ("pair_fraction", "occluder_prob", "bad_crop_prob"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value}: expected a fraction in [0, 1].")
    if self.keypoint_noise < 0:
      raise ValueError(f"keypoint_noise={self.keypoint_noise}: expected >= 0 pixels.")
    if not 1 <= self.jpeg_quality <= 100:
      raise ValueError(f"jpeg_quality={self.jpeg_quality}: expected 1..100.")

  def render_settings(self) -> scene.RenderSettings:
    return scene.RenderSettings(height=self.height, width=self.width,
                                occluder_prob=float(self.occluder_prob),
                                bad_crop_prob=float(self.bad_crop_prob))


@dataclasses.dataclass(frozen=True)
class Identity:
  """A person of the dataset (pid > 0)."""
  pid: int
  split: str
  appearance: int  # index into Plan.appearances
  cameras: tuple[int, ...]
  sibling_of: int | None = None  # pid this identity differs from in one part only
  differs_in: str | None = None  # that part


@dataclasses.dataclass
class Plan:
  """The whole dataset except pixels. Tracklet lists are in MARS name order."""
  config: SyntheticConfig
  cameras: tuple[scene.Camera, ...]
  appearances: list[rp.Appearance]
  identities: list[Identity]
  train: list[scene.TrackletSpec]
  test: list[scene.TrackletSpec]
  query_rows: list[int]  # 1-based rows of the test track info

  def tracklets(self, split: str) -> list[scene.TrackletSpec]:
    if split not in ("train", "test"):
      raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    return self.train if split == "train" else self.test

  def names(self, split: str) -> list[str]:
    """Frame basenames of a split in order (the lines of info/<split>_name.txt)."""
    return [t.frame_name(i) for t in self.tracklets(split) for i in range(t.num_frames)]

  def track_info(self, split: str) -> np.ndarray:
    """int32 [n, 4]: [start, end, pid, camera], start/end 1-based inclusive name rows."""
    rows, start = [], 1
    for t in self.tracklets(split):
      rows.append((start, start + t.num_frames - 1, t.pid, t.camera))
      start += t.num_frames
    return np.array(rows, np.int32).reshape(-1, 4)

  def camera(self, index: int) -> scene.Camera:
    return self.cameras[index - 1]

  def appearance_of(self, spec: scene.TrackletSpec) -> rp.Appearance | None:
    return self.appearances[spec.appearance] if spec.appearance >= 0 else None

  def render(self, spec: scene.TrackletSpec, *, occluders: bool = True) -> list[scene.Frame]:
    """Renders one tracklet of this plan."""
    return scene.render_tracklet(spec, self.appearance_of(spec), self.camera(spec.camera),
                                 self.config.render_settings(), occluders=occluders)

  def one_part_pairs(self) -> list[tuple[int, int, str]]:
    """(pid, pid it varies, part) for every one-part pair."""
    return [(i.sibling_of, i.pid, i.differs_in) for i in self.identities
            if i.sibling_of is not None]

  def to_dict(self) -> dict[str, Any]:
    """Description written beside the dataset (config, cameras, attributes, pairs, counts)."""
    c = self.config
    n_train = c.num_identities // 2
    return {
        "generator": "data_pipelines.synthetic",
        "config": dataclasses.asdict(c),
        "split_rule": (f"pids 0001..{n_train:04d} train, {n_train + 1:04d}.."
                       f"{c.num_identities:04d} test; distractors pid 0, junk pid -1 (test)"),
        "cameras": [cam.to_dict() for cam in self.cameras],
        "identities": [
            {"pid": i.pid, "split": i.split, "cameras": list(i.cameras),
             "sibling_of": i.sibling_of, "differs_in": i.differs_in,
             "attributes": self.appearances[i.appearance].to_dict()}
            for i in self.identities],
        "one_part_pairs": [list(p) for p in self.one_part_pairs()],
        "counts": {
            "train_tracklets": len(self.train), "test_tracklets": len(self.test),
            "train_frames": sum(t.num_frames for t in self.train),
            "test_frames": sum(t.num_frames for t in self.test),
            "queries": len(self.query_rows),
            "distractor_tracklets": sum(t.pid == 0 for t in self.test),
            "junk_tracklets": sum(t.pid == -1 for t in self.test)},
    }


def _stream(seed: int, key: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


def _split_appearances(rng: np.random.Generator, n: int, pair_fraction: float,
                       seen: set) -> list[tuple[rp.Appearance, int | None, str | None]]:
  """n distinct appearances; (appearance, index of its one-part base or None, part)."""

  def fresh():
    while True:
      a = rp.sample_appearance(rng)
      if a not in seen:
        seen.add(a)
        return a

  n_pairs = min(n // 2, int(n * pair_fraction / 2))
  if n >= 2 and pair_fraction > 0:
    n_pairs = max(1, n_pairs)
  entries: list[tuple[rp.Appearance, int | None, str | None]] = []
  for _ in range(n_pairs):
    base = fresh()
    while True:
      variant, part = rp.one_part_variant(base, rng)
      if variant not in seen:
        seen.add(variant)
        break
    entries += [(base, None, None), (variant, len(entries), part)]
  entries += [(fresh(), None, None) for _ in range(n - len(entries))]
  order = [int(i) for i in rng.permutation(n)]  # pair members get unrelated pids
  position = {old: new for new, old in enumerate(order)}
  return [(entries[old][0],
           None if entries[old][1] is None else position[entries[old][1]],
           entries[old][2]) for old in order]


def build_plan(config: SyntheticConfig) -> Plan:
  """Decides the dataset's content (see the module docstring) from a config."""
  c = config.resolved()
  cameras = scene.sample_cameras(c.seed, c.num_cameras)
  looks = _stream(c.seed, 0)  # appearances
  layout = _stream(c.seed, 2)  # cameras, counts, lengths, seeds, queries
  extras = _stream(c.seed, 3)  # distractors and junk
  appearances: list[rp.Appearance] = []
  identities: list[Identity] = []
  tracklets: dict[str, list[scene.TrackletSpec]] = {"train": [], "test": []}
  seen: set = set()
  n_train = c.num_identities // 2

  def length(rng):
    return int(rng.integers(c.frames[0], c.frames[1] + 1))

  def seed(rng):
    return int(rng.integers(2**62))

  for split, first_pid, n in (("train", 1, n_train),
                              ("test", n_train + 1, c.num_identities - n_train)):
    entries = _split_appearances(looks, n, c.pair_fraction, seen)
    for k, (appearance, base, part) in enumerate(entries):
      pid = first_pid + k
      k_cams = int(layout.integers(c.cameras_per_identity[0], c.cameras_per_identity[1] + 1))
      cams = tuple(sorted(int(v) + 1 for v in layout.choice(c.num_cameras, k_cams,
                                                            replace=False)))
      appearances.append(appearance)
      identities.append(Identity(
          pid=pid, split=split, appearance=len(appearances) - 1, cameras=cams,
          sibling_of=None if base is None else first_pid + base, differs_in=part))
      # A test identity has >= 2 tracklets in two of its cameras, so that with one query per
      # camera every query keeps a gallery tracklet of the same pid in another camera.
      doubled = (set(int(v) for v in layout.choice(cams, min(2, len(cams)), replace=False))
                 if split == "test" else set())
      for cam in cams:
        count = int(layout.integers(c.tracklets_per_camera[0], c.tracklets_per_camera[1] + 1))
        if cam in doubled:
          count = max(count, 2)
        for number in range(1, count + 1):
          tracklets[split].append(scene.TrackletSpec(
              split=split, pid=pid, camera=cam, number=number, num_frames=length(layout),
              appearance=len(appearances) - 1, kind="person", seed=seed(layout)))
  # Distractors (pid 0) and junk (pid -1): numbered per camera.
  for pid, count in ((0, c.distractors), (-1, c.junk)):
    numbers = [0] * (c.num_cameras + 1)
    for _ in range(count):
      cam = int(extras.integers(1, c.num_cameras + 1))
      numbers[cam] += 1
      kind = ("person" if pid == 0 else
              scene.JUNK_KINDS[int(extras.integers(len(scene.JUNK_KINDS)))])
      index = -1
      if kind != "junk_background":
        appearances.append(rp.sample_appearance(extras))
        index = len(appearances) - 1
      tracklets["test"].append(scene.TrackletSpec(
          split="test", pid=pid, camera=cam, number=numbers[cam], num_frames=length(extras),
          appearance=index, kind=kind, seed=seed(extras)))
  for split in tracklets:
    tracklets[split].sort(key=lambda t: t.frame_name(0))
  # Queries: one tracklet per (test pid, camera) for pids seen by >= 2 cameras.
  rows_by_key: dict[tuple[int, int], list[int]] = {}
  for row, t in enumerate(tracklets["test"], start=1):
    if t.pid > 0:
      rows_by_key.setdefault((t.pid, t.camera), []).append(row)
  cams_of: dict[int, int] = {}
  for pid, _ in rows_by_key:
    cams_of[pid] = cams_of.get(pid, 0) + 1
  query_rows = sorted(rows[int(layout.integers(len(rows)))]
                      for (pid, _), rows in sorted(rows_by_key.items()) if cams_of[pid] >= 2)
  return Plan(config=c, cameras=cameras, appearances=appearances, identities=identities,
              train=tracklets["train"], test=tracklets["test"], query_rows=query_rows)
