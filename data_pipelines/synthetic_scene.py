"""Cameras, backgrounds, occluders and the rendering of whole tracklets (synthetic dataset).

A tracklet is a sequence of detector crops of one walking pedestrian seen by one camera.
Every frame is made as

  1. background: a crop of the camera's procedural scene (shop shelves, bricks, tiles,
     windows or a plain wall over a floor), scrolling as the person walks;
  2. person: `render_pedestrian.draw_pedestrian` at the tracklet's walking direction and the
     frame's walk phase, placed by the (jittered) detector box;
  3. occluders (preset `occluded`): one object that moves smoothly across the crop during
     the tracklet: a pole, a signboard, part of another pedestrian passing in front, or a
     dark box of STAL's size (25x25 pixels on 128x64 frames, STAL section IV-E, fig. 13)
     drifting across the frame: STAL puts one such box at random in each frame, here it
     moves continuously so the occlusion is temporally consistent;
  4. camera: illumination gain, colour cast, vertical light gradient, Gaussian blur and
     sensor noise of the camera.

Detector jitter moves and rescales the crop frame to frame (an AR(1) process), and with
probability `bad_crop_prob` a frame is badly cropped (shifted by a quarter to half of the
width and/or zoomed so the head or feet are cut off).

Each tracklet has its own seed; its random streams (motion, occluders, sensor noise,
keypoint noise) are independent children of that seed, so a tracklet renders identically
whichever process renders it, and disabling the occluders leaves every other pixel as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import cv2
import numpy as np

from data_pipelines import render_pedestrian as rp
from tfreid.data.schema import NUM_JOINTS

BACKGROUNDS = ("shelves", "bricks", "tiles", "windows", "plain")
# Dominant walking directions a camera can see (the tracklet adds pi half of the time).
CAMERA_YAWS = (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)
OCCLUDER_TYPES = ("pole", "sign", "pedestrian", "box")
OCCLUDER_WEIGHTS = (0.25, 0.25, 0.3, 0.2)
# STAL's polluted iLIDS-VID box: 25x25 pixels on 128x64 (height x width) frames.
STAL_BOX = (25.0 / 128.0, 25.0 / 64.0)
JUNK_KINDS = ("junk_background", "junk_part", "junk_edge")
BACKGROUND_WIDTH = 6  # scene width in frame widths (wraps around)
# Walking speed in body heights per radian of walk phase (a stride cycle covers ~0.8).
STEP_PER_RADIAN = 0.8 / (2 * math.pi)


@dataclasses.dataclass(frozen=True)
class Camera:
  """One camera's look. Angles in radians, colours RGB, sizes relative to the frame."""
  index: int  # 1-based, the digit in the MARS file name
  yaw: float  # dominant walking direction relative to the camera
  mirror: bool  # the image is mirrored (a bag on the left shows on the right)
  gain: float  # illumination
  cast: tuple[float, float, float]  # per-channel colour gains (mean 1)
  gradient: float  # light falls off (or rises) from top to bottom by this fraction
  blur: float  # Gaussian sigma in pixels at 128-pixel frame height
  noise: float  # sensor noise std in grey levels
  scale: float  # person height / frame height
  background: str  # one of BACKGROUNDS
  wall_color: tuple[int, int, int]
  floor_color: tuple[int, int, int]
  horizon: float  # wall/floor boundary as a fraction of frame height
  seed: int

  def to_dict(self):
    return dataclasses.asdict(self)


def sample_cameras(seed: int, num_cameras: int) -> tuple[Camera, ...]:
  """The cameras of the world with this seed.

  Walking direction, mirroring and background kind are spread over the cameras (a seeded
  permutation deals them out, so any 4 cameras see 4 different directions, about one in three
  cameras is mirrored and backgrounds repeat only after 5); the rest is drawn per camera.
  """
  deal = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, 0)))
  ranks = deal.permutation(num_cameras)
  kinds = deal.permutation(len(BACKGROUNDS))
  return tuple(_sample_camera(seed, i + 1, int(ranks[i]), int(kinds[ranks[i] % len(kinds)]))
               for i in range(num_cameras))


def _sample_camera(seed: int, index: int, rank: int, kind: int) -> Camera:
  rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index)))
  cast = rng.uniform(0.82, 1.18, 3)
  cast /= cast.mean()

  def muted(lo, hi):
    c = rng.uniform(lo, hi, 3)
    return tuple(int(v) for v in np.round(0.55 * c + 0.45 * c.mean()))

  return Camera(
      index=index,
      yaw=round(float(CAMERA_YAWS[rank % len(CAMERA_YAWS)] + rng.normal(0.0, 0.1)), 4),
      mirror=rank % 3 == 2,
      gain=round(float(rng.uniform(0.7, 1.25)), 4),
      cast=tuple(round(float(c), 4) for c in cast),
      gradient=round(float(rng.uniform(-0.35, 0.2)), 4),
      blur=round(float(rng.uniform(0.0, 1.1)) if rng.random() < 0.7 else 0.0, 4),
      noise=round(float(rng.uniform(1.0, 4.0)), 4),
      scale=round(float(rng.uniform(0.78, 0.93)), 4),
      background=BACKGROUNDS[kind],
      wall_color=muted(60, 210),
      floor_color=muted(50, 170),
      horizon=round(float(rng.uniform(0.45, 0.7)), 4),
      seed=int(rng.integers(2**62)))


def background_margin(height: int) -> int:
  """Rows above and below the frame in a camera background (room for vertical jitter)."""
  return max(2, int(round(0.12 * height)))


@functools.lru_cache(maxsize=64)
def camera_background(camera: Camera, height: int, width: int) -> np.ndarray:
  """The camera's scene: uint8 RGB [height + 2 margin, BACKGROUND_WIDTH * width, 3]."""
  rng = np.random.default_rng(camera.seed)
  m = background_margin(height)
  bh, bw = height + 2 * m, BACKGROUND_WIDTH * width
  horizon = m + int(round(camera.horizon * height))
  img = np.zeros((bh, bw, 3), np.uint8)
  img[:horizon] = camera.wall_color
  img[horizon:] = camera.floor_color
  wall = np.array(camera.wall_color, np.float64)

  def shade(color, f):
    return tuple(int(v) for v in np.clip(np.asarray(color, np.float64) * f, 0, 255))

  line = max(1, int(round(height / 128)))
  if camera.background == "shelves":
    gap = max(6, int(round(0.17 * height)))
    for y in range(2, horizon, gap):
      x = 0
      while x < bw:
        bwid = int(rng.uniform(0.08, 0.3) * width) + 2
        bhgt = int(rng.uniform(0.5, 0.9) * gap)
        color = rp.GARMENT_COLORS[list(rp.GARMENT_COLORS)[int(rng.integers(19))]]
        cv2.rectangle(img, (x, y + gap - bhgt), (x + bwid - 1, y + gap - 1),
                      shade(color, rng.uniform(0.55, 0.9)), -1)
        x += bwid + int(rng.integers(0, 3))
      cv2.rectangle(img, (0, y + gap - 1), (bw - 1, y + gap - 1 + line), shade(wall, 0.45), -1)
  elif camera.background == "bricks":
    row = max(4, int(round(0.06 * height)))
    brick = max(8, int(round(0.45 * width)))
    for i, y in enumerate(range(0, horizon, row)):
      cv2.line(img, (0, y), (bw - 1, y), shade(wall, 1.25), line)
      off = (brick // 2) * (i % 2)
      for x in range(off, bw, brick):
        cv2.line(img, (x, y), (x, y + row), shade(wall, 1.25), line)
        img[y + line:y + row, x + line:x + brick] = shade(wall, rng.uniform(0.85, 1.1))
  elif camera.background == "tiles":
    step = max(6, int(round(0.16 * height)))
    for y in range(0, horizon, step):
      cv2.line(img, (0, y), (bw - 1, y), shade(wall, 0.7), line)
    for x in range(0, bw, step):
      cv2.line(img, (x, 0), (x, horizon), shade(wall, 0.7), line)
  elif camera.background == "windows":
    x = int(rng.integers(0, width))
    while x < bw:
      w = int(rng.uniform(0.6, 1.2) * width)
      top = int(rng.uniform(0.05, 0.2) * height)
      cv2.rectangle(img, (x, top), (x + w, horizon - 3 * line), (170, 190, 205), -1)
      cv2.rectangle(img, (x, top), (x + w, horizon - 3 * line), shade(wall, 0.5), 2 * line)
      cv2.line(img, (x + w // 2, top), (x + w // 2, horizon - 3 * line), shade(wall, 0.5), line)
      x += w + int(rng.uniform(0.4, 1.5) * width)
  # Pillars and doors break up every scene.
  for _ in range(int(rng.integers(1, 4))):
    x = int(rng.integers(0, bw))
    w = int(rng.uniform(0.2, 0.6) * width)
    cv2.rectangle(img, (x, 0), (x + w, horizon), shade(wall, rng.uniform(0.6, 1.3)), -1)
  # Floor: tiles in rough perspective, or plain.
  if rng.random() < 0.6:
    floor = shade(camera.floor_color, 0.75)
    y, step = horizon, max(2.0, 0.04 * height)
    while y < bh:
      cv2.line(img, (0, int(y)), (bw - 1, int(y)), floor, line)
      y += step
      step *= 1.35
    for x in range(0, bw, max(8, width // 2)):
      cv2.line(img, (x, horizon), (x + int((x % (3 * width) - 1.5 * width) * 0.4), bh - 1),
               floor, line)
  cv2.line(img, (0, horizon), (bw - 1, horizon), shade(wall, 0.5), line)
  # Low-frequency blotches and a floor darkening towards the camera.
  low = rng.normal(0.0, 1.0, (bh // 12 + 3, bw // 12 + 3)).astype(np.float32)
  blotch = cv2.resize(low, (bw, bh), interpolation=cv2.INTER_CUBIC)
  out = img.astype(np.float32) * (1.0 + 0.07 * blotch[..., None])
  out[horizon:] *= np.linspace(1.0, 0.85, bh - horizon, dtype=np.float32)[:, None, None]
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class TrackletSpec:
  """One tracklet to render, and its MARS name fields."""
  split: str  # "train" or "test"
  pid: int  # MARS pid: > 0 a person, 0 distractor, -1 junk
  camera: int  # 1-based
  number: int  # tracklet number within (pid, camera), 1-based
  num_frames: int
  appearance: int  # index into the plan's appearances; -1 = nobody (junk background)
  kind: str  # "person" or one of JUNK_KINDS
  seed: int

  @property
  def folder(self) -> str:
    """The pid folder / name prefix: 4 digits, or `00-1` for junk."""
    return "00-1" if self.pid == -1 else f"{self.pid:04d}"

  def frame_name(self, i: int) -> str:
    """Basename of frame i (0-based): PPPPCcTttttFfff.jpg."""
    return f"{self.folder}C{self.camera}T{self.number:04d}F{i + 1:03d}.jpg"

  def frame_path(self, i: int) -> str:
    """Frame path relative to the dataset root, `/`-separated."""
    return f"bbox_{self.split}/{self.folder}/{self.frame_name(i)}"


@dataclasses.dataclass(frozen=True)
class RenderSettings:
  """Frame size and the preset's nuisance rates."""
  height: int
  width: int
  occluder_prob: float
  bad_crop_prob: float
  supersample: int = 2


@dataclasses.dataclass
class Frame:
  """A rendered frame with its ground truth."""
  image: np.ndarray  # uint8 [H, W, 3] RGB
  person_mask: np.ndarray  # bool [H, W]: person coverage >= 0.5 (before occlusion)
  occluder_mask: np.ndarray  # bool [H, W]: occluder coverage >= 0.5
  keypoints: np.ndarray  # float64 [14, 3]: x, y (frame pixels), visibility 1/0
  person_alpha: np.ndarray  # float32 [H, W]: person coverage 0..1 (anti-aliased)
  occluder_alpha: np.ndarray  # float32 [H, W]: occluder coverage 0..1


@functools.lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
  """A fixed bank of standard normal noise; frames take windows of it (much cheaper than
  drawing fresh normals per pixel, and just as good for sensor noise)."""
  return np.random.default_rng(20240613).standard_normal(size, dtype=np.float32)


def tracklet_streams(seed: int) -> list[np.random.Generator]:
  """Independent generators (motion, occluders, sensor noise, keypoint noise) of a tracklet."""
  return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def _ar1(rng, n, sigma, rho=0.5):
  out = np.zeros(n)
  prev = 0.0
  for t in range(n):
    prev = rho * prev + rng.normal(0.0, sigma)
    out[t] = prev
  return out


def _fill_rect(canvas, x0, y0, x1, y1, color, s):
  """Fills frame-pixel rectangle [x0, x1] x [y0, y1] (edges at pixel borders) on a canvas."""
  pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
  pts = np.round((pts + 0.5) * s * 16.0 - 8.0).astype(np.int32)
  cv2.fillConvexPoly(canvas, pts, (int(color[0]), int(color[1]), int(color[2]), 255),
                     cv2.LINE_8, 4)


class _Occluder:
  """One occluder's parameters and how to draw it at frame t."""

  def __init__(self, rng: np.random.Generator, n: int, height: int, width: int,
               person_height: float):
    self.kind = OCCLUDER_TYPES[int(rng.choice(len(OCCLUDER_TYPES), p=OCCLUDER_WEIGHTS))]
    self.h, self.w = height, width
    direction = 1.0 if rng.random() < 0.5 else -1.0
    t_cross = rng.uniform(0.25, 0.75) * max(n - 1, 1)
    palette = list(rp.GARMENT_COLORS.values())
    self.color = palette[int(rng.integers(len(palette)))]
    if self.kind == "pole":
      self.size = rng.uniform(0.14, 0.28) * width
      speed = rng.uniform(0.03, 0.08) * width
      center = width / 2 + rng.normal(0.0, 0.1 * width)
      self.color = tuple(int(v) for v in rng.uniform(70, 190) * np.ones(3) *
                         rng.uniform(0.85, 1.15, 3))
    elif self.kind == "sign":
      self.size = rng.uniform(0.6, 1.1) * width
      self.tall = rng.uniform(0.18, 0.32) * height
      self.y = rng.uniform(0.45, 0.85) * height
      speed = rng.uniform(0.03, 0.08) * width
      center = width / 2 + rng.normal(0.0, 0.1 * width)
    elif self.kind == "pedestrian":
      self.appearance = rp.sample_appearance(rng)
      self.yaw = rng.uniform(0, 2 * math.pi)
      self.phase0, self.dphase = rng.uniform(0, 2 * math.pi), rng.uniform(0.45, 0.8)
      self.pixel_height = person_height * rng.uniform(1.0, 1.15)
      self.feet = height / 2 + self.pixel_height / 2 + rng.uniform(0.0, 0.08) * height
      speed = rng.uniform(0.01, 0.04) * width
      center = width / 2 + rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.5) * width
    else:  # box
      self.box = (STAL_BOX[0] * height, STAL_BOX[1] * width)
      start = rng.uniform([0.0, 0.0], [width - self.box[1], height - self.box[0]])
      end = rng.uniform([0.0, 0.0], [width - self.box[1], height - self.box[0]])
      self.path = (start, end)
      self.color = tuple(int(v) for v in rng.uniform(0, 30, 3))
      speed, center = 0.0, 0.0
    self.x = [center + direction * speed * (t - t_cross) for t in range(n)]
    self.n = n

  def draw(self, canvas: np.ndarray, t: int, s: int) -> None:
    if self.kind == "pole":
      x0 = self.x[t] - self.size / 2
      for i, f in enumerate((0.8, 1.0, 1.15, 0.9)):
        shade = np.clip(np.array(self.color) * f, 0, 255)
        _fill_rect(canvas, x0 + i * self.size / 4, -1, x0 + (i + 1) * self.size / 4,
                   self.h, shade, s)
    elif self.kind == "sign":
      x0, y0 = self.x[t] - self.size / 2, self.y - self.tall / 2
      _fill_rect(canvas, x0, y0, x0 + self.size, y0 + self.tall, self.color, s)
      ink = (245, 245, 240) if sum(self.color) < 380 else (20, 20, 24)
      for k in range(2):
        yy = y0 + self.tall * (0.25 + 0.35 * k)
        _fill_rect(canvas, x0 + 0.12 * self.size, yy, x0 + 0.8 * self.size,
                   yy + 0.14 * self.tall, ink, s)
    elif self.kind == "pedestrian":
      rp.draw_pedestrian(canvas, self.appearance, phase=self.phase0 + self.dphase * t,
                         yaw=self.yaw, center_x=self.x[t], feet_y=self.feet,
                         pixel_height=self.pixel_height, supersample=s)
    else:
      frac = t / max(self.n - 1, 1)
      x0, y0 = (1 - frac) * self.path[0] + frac * self.path[1]
      _fill_rect(canvas, x0, y0, x0 + self.box[1], y0 + self.box[0], self.color, s)


def _composite(under: np.ndarray, canvas: np.ndarray, h: int, w: int):
  """Box-filters a supersampled RGBA layer to [h, w] and puts it over `under` (float32 RGB).

  The canvas is black where nothing was drawn, so its filtered colour is premultiplied by
  the filtered alpha. Returns (composite, layer coverage float32 [h, w] in 0..1).
  """
  layer = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA)
  alpha = np.ascontiguousarray(layer[..., 3])
  rgb = cv2.cvtColor(layer, cv2.COLOR_RGBA2RGB).astype(np.float32)
  keep = cv2.cvtColor(alpha, cv2.COLOR_GRAY2RGB).astype(np.float32)
  keep *= np.float32(-1.0 / 255.0)
  keep += np.float32(1.0)
  under *= keep
  under += rgb
  return under, alpha.astype(np.float32) * np.float32(1.0 / 255.0)


def render_tracklet(spec: TrackletSpec, appearance: rp.Appearance | None, camera: Camera,
                    settings: RenderSettings, *, occluders: bool = True) -> list[Frame]:
  """Renders every frame of a tracklet.

  Args:
    spec: the tracklet (its seed fixes every random choice).
    appearance: the person (None for a junk background tracklet).
    camera: the camera it is seen by (spec.camera).
    settings: frame size, occluder and bad-crop rates.
    occluders: False renders the same frames without the occluder (all other pixels and
      random choices unchanged), for inspection and tests.

  Returns:
    spec.num_frames Frames.
  """
  h, w, s = settings.height, settings.width, settings.supersample
  n = spec.num_frames
  motion, occ_rng, noise_rng, _ = tracklet_streams(spec.seed)
  # Walk and detector.
  yaw = camera.yaw + (math.pi if motion.random() < 0.5 else 0.0) + motion.normal(0.0, 0.25)
  phase0, dphase = motion.uniform(0, 2 * math.pi), motion.uniform(0.45, 0.8)
  stride = motion.uniform(0.8, 1.1)
  height_frac = camera.scale * (appearance.height if appearance else 1.0)
  pixel_height = h * height_frac * motion.uniform(0.96, 1.04)
  center_x = w / 2 + motion.normal(0.0, 0.02 * w)
  feet_y = h / 2 + pixel_height / 2 + motion.normal(0.0, 0.01 * h)
  if spec.kind == "junk_part":
    pixel_height = h * motion.uniform(1.7, 2.4)
    feet_y = h / 2 + pixel_height * (0.25 if motion.random() < 0.5 else 0.65)
  elif spec.kind == "junk_edge":
    center_x = w / 2 + (1 if motion.random() < 0.5 else -1) * motion.uniform(0.45, 0.6) * w
  light = motion.uniform(0.92, 1.08)
  jx, jy = _ar1(motion, n, 0.025 * w), _ar1(motion, n, 0.012 * h)
  js = _ar1(motion, n, 0.02)
  bad = motion.random(n) < settings.bad_crop_prob
  bad_dx = motion.choice([-1.0, 1.0], n) * motion.uniform(0.25, 0.5, n) * w
  bad_dy = motion.uniform(-0.15, 0.15, n) * h
  bad_zoom = np.where(motion.random(n) < 0.5, motion.uniform(1.25, 1.5, n), 1.0)
  bg = camera_background(camera, h, w)
  margin = background_margin(h)
  bg_x0 = int(motion.integers(0, bg.shape[1]))
  mirror = -1.0 if camera.mirror else 1.0
  bg_speed = STEP_PER_RADIAN * pixel_height * dphase * stride * math.sin(yaw) * mirror
  # Occluder (its own stream, so switching it off changes nothing else).
  occluder = None
  if spec.kind == "person" and occ_rng.random() < settings.occluder_prob:
    occluder = _Occluder(occ_rng, n, h, w, pixel_height)
  if not occluders:
    occluder = None
  # Camera response.
  rows = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None, None]
  light_map = np.ascontiguousarray(np.broadcast_to(
      camera.gain * light * (1.0 + camera.gradient * rows) * np.array(camera.cast, np.float32),
      (h, w, 3)), dtype=np.float32)
  blur = camera.blur * h / 128.0

  frames = []
  for t in range(n):
    dx, dy = jx[t] + (bad_dx[t] if bad[t] else 0.0), jy[t] + (bad_dy[t] if bad[t] else 0.0)
    zoom = (1.0 + js[t]) * (bad_zoom[t] if bad[t] else 1.0)
    # Background crop follows the crop window (walking scroll + jitter).
    x_off = int(round(bg_x0 + bg_speed * t - dx))
    y_off = int(np.clip(round(margin - dy), 0, 2 * margin))
    x0 = x_off % bg.shape[1]
    if x0 + w <= bg.shape[1]:
      comp = bg[y_off:y_off + h, x0:x0 + w].astype(np.float32)
    else:
      comp = np.concatenate([bg[y_off:y_off + h, x0:], bg[y_off:y_off + h, :x0 + w - bg.shape[1]]],
                            axis=1).astype(np.float32)
    person_alpha = np.zeros((h, w), np.float32)
    keypoints = np.zeros((NUM_JOINTS, 3))
    if appearance is not None:
      canvas = np.zeros((h * s, w * s, 4), np.uint8)
      ph = pixel_height * zoom
      # Zoom about the frame centre.
      cx = w / 2 + (center_x - w / 2) * zoom + dx
      fy = h / 2 + (feet_y - h / 2) * zoom + dy
      joints = rp.draw_pedestrian(canvas, appearance, phase=phase0 + dphase * t, yaw=yaw,
                                  center_x=cx, feet_y=fy, pixel_height=ph,
                                  mirror=camera.mirror, stride=stride, supersample=s)
      comp, person_alpha = _composite(comp, canvas, h, w)
      keypoints[:, :2] = joints
    occluder_alpha = np.zeros((h, w), np.float32)
    if occluder is not None:
      canvas = np.zeros((h * s, w * s, 4), np.uint8)
      occluder.draw(canvas, t, s)
      comp, occluder_alpha = _composite(comp, canvas, h, w)
    occluder_mask = occluder_alpha >= 0.5
    comp *= light_map
    if blur > 0.2:
      comp = cv2.GaussianBlur(comp, (0, 0), blur)
    bank = _noise_bank(4 * h * w * 3)
    start = int(noise_rng.integers(0, bank.size - h * w * 3))
    comp += bank[start:start + h * w * 3].reshape(h, w, 3) * np.float32(camera.noise)
    image = np.clip(comp + 0.5, 0, 255).astype(np.uint8)
    if appearance is not None:
      xi, yi = np.round(keypoints[:, 0]), np.round(keypoints[:, 1])
      inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
      covered = np.zeros(NUM_JOINTS, bool)
      covered[inside] = occluder_mask[yi[inside].astype(int), xi[inside].astype(int)]
      keypoints[:, 2] = (inside & ~covered).astype(np.float64)
    frames.append(Frame(image=image, person_mask=person_alpha >= 0.5,
                        occluder_mask=occluder_mask, keypoints=keypoints,
                        person_alpha=person_alpha, occluder_alpha=occluder_alpha))
  return frames
