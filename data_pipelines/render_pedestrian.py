"""Procedural pedestrians for the synthetic dataset: appearance, walking pose and drawing.

A pedestrian is an `Appearance`, a combination of part attributes grouped in `PARTS`:

| part | attributes |
| --- | --- |
| head | hair style (short, long, bun, bald, cap), hair colour, cap colour |
| upper | colour, pattern (plain, h/v stripes, checks, chest logo), second colour, sleeves |
| lower | garment colour, style (trousers, shorts, skirt) |
| shoes | colour |
| bag | none, backpack, shoulder bag or handbag; colour; side (left or right) |

plus a body (height, width, skin tone) that is not a "part". `one_part_variant` derives an
identity that differs from another in exactly one part, so that telling them apart needs the
part, not the overall colour.

The body is a 3-D stick figure of height 1 (y up, x to the person's left, z forward) animated
by a walking cycle (thighs and arms swing in opposition, knees flex in the swing phase, the
body bobs twice per cycle), turned by a yaw angle and projected orthographically:
`x_img = m (x cos(yaw) + z sin(yaw))`, `depth = x sin(yaw) - z cos(yaw)` (yaw 0: walking
towards the camera; pi/2: walking to the right of the image; m = -1 mirrors the image).
Limbs are drawn far side first (painter's algorithm) with OpenCV on a supersampled RGBA
canvas, which the caller box-filters down to frame size (anti-aliasing and a soft alpha).

Joints are returned in the order of `tfreid.data.schema.JOINT_NAMES` (MPII's 16 without pelvis
and thorax). In a mirrored image the labels follow the image, as an annotator would label
it: left and right are swapped (`FLIP_PERMUTATION`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import cv2
import numpy as np

from tfreid.data.schema import FLIP_PERMUTATION, JOINT_NAMES, NUM_JOINTS

Color = tuple[int, int, int]

# Named colours (RGB). Names, not values, are stored in an Appearance, so that the
# attribute file reads like a description.
GARMENT_COLORS: dict[str, Color] = {
    "black": (28, 28, 32), "white": (232, 232, 226), "grey": (128, 128, 130),
    "charcoal": (68, 70, 76), "navy": (32, 42, 92), "blue": (40, 92, 200),
    "denim": (66, 96, 142), "light_blue": (132, 182, 228), "red": (200, 32, 36),
    "maroon": (112, 26, 38), "green": (40, 140, 62), "olive": (112, 116, 46),
    "yellow": (236, 206, 52), "orange": (236, 126, 32), "pink": (236, 142, 182),
    "purple": (112, 52, 142), "brown": (112, 72, 42), "beige": (212, 192, 152),
    "teal": (30, 132, 132)}
HAIR_COLORS: dict[str, Color] = {
    "black": (22, 20, 20), "dark_brown": (62, 42, 26), "brown": (112, 76, 42),
    "blonde": (204, 172, 104), "grey": (160, 160, 158), "auburn": (132, 52, 30)}
SKIN_TONES: dict[str, Color] = {
    "light": (240, 206, 182), "fair": (226, 182, 148), "medium": (196, 146, 106),
    "tan": (152, 102, 72), "dark": (102, 66, 46)}
SHOE_COLORS = ("black", "white", "brown", "grey", "red", "blue", "beige")
BAG_COLORS = ("black", "brown", "beige", "red", "navy", "grey", "green", "pink", "yellow")

HAIR_STYLES = ("short", "long", "bun", "bald", "cap")
UPPER_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo")
LOWER_STYLES = ("trousers", "shorts", "skirt")
BAG_TYPES = ("none", "backpack", "shoulder", "handbag")

# Which Appearance fields make up each part (a one-part variant changes fields of one part).
PARTS: dict[str, tuple[str, ...]] = {
    "head": ("hair", "hair_color", "cap_color"),
    "upper": ("upper_color", "upper_pattern", "upper_color2", "sleeves"),
    "lower": ("lower_color", "lower_style"),
    "shoes": ("shoes_color",),
    "bag": ("bag", "bag_color", "bag_side"),
}
BODY_FIELDS = ("height", "width", "skin")
# How often each part is the one that differs in a one-part pair (shoes are a few pixels
# at 128x64, so they are the rarest).
PART_WEIGHTS = {"head": 0.2, "upper": 0.25, "lower": 0.2, "shoes": 0.1, "bag": 0.25}
# Two colours count as clearly different above this RGB distance.
MIN_COLOR_DISTANCE = 90.0

# Body proportions in units of body height (top of head = 1, soles = 0).
HEAD_RADIUS = 0.068
NECK_Y, SHOULDER_Y, HIP_Y = 0.855, 0.815, 0.52
SHOULDER_HALF_WIDTH, HIP_HALF_WIDTH, WAIST_HALF_WIDTH = 0.105, 0.062, 0.088
TORSO_HALF_DEPTH = 0.066
THIGH, SHIN, UPPER_ARM, FOREARM, HAND = 0.245, 0.245, 0.165, 0.15, 0.045
# Limb thickness (diameter) in body heights, multiplied by the width attribute.
THICK = {"upper_arm": 0.056, "forearm": 0.046, "thigh": 0.085, "shin": 0.066, "shoe": 0.042,
         "neck": 0.05, "strap": 0.014}


@dataclasses.dataclass(frozen=True)
class Appearance:
  """What an identity looks like: body plus part attributes (colour names, see module doc)."""
  height: float
  width: float
  skin: str
  hair: str
  hair_color: str
  cap_color: str
  upper_color: str
  upper_pattern: str
  upper_color2: str
  sleeves: str
  lower_color: str
  lower_style: str
  shoes_color: str
  bag: str
  bag_color: str
  bag_side: str

  def to_dict(self) -> dict[str, Any]:
    """Attributes grouped as body + PARTS, for the dataset's attribute file."""
    d = dataclasses.asdict(self)
    out = {"body": {k: d[k] for k in BODY_FIELDS}}
    for part, fields in PARTS.items():
      out[part] = {k: d[k] for k in fields}
    return out


def differing_parts(a: Appearance, b: Appearance) -> list[str]:
  """Names of the parts whose attributes differ between two appearances (body excluded)."""
  return [part for part, fields in PARTS.items()
          if any(getattr(a, f) != getattr(b, f) for f in fields)]


def _color_distance(a: Color, b: Color) -> float:
  return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def _pick(rng: np.random.Generator, options, p=None):
  return options[int(rng.choice(len(options), p=p))]


def _distinct_color(rng: np.random.Generator, palette: dict[str, Color], names, avoid) -> str:
  """A colour name from `names` at least MIN_COLOR_DISTANCE away from every name in avoid."""
  ok = [n for n in names
        if all(_color_distance(palette[n], palette[a]) >= MIN_COLOR_DISTANCE for a in avoid)]
  return _pick(rng, ok)


def sample_appearance(rng: np.random.Generator) -> Appearance:
  """Draws a random pedestrian appearance."""
  garments = tuple(GARMENT_COLORS)
  upper = _pick(rng, garments)
  return Appearance(
      height=round(float(rng.uniform(0.9, 1.05)), 3),
      width=round(float(rng.uniform(0.85, 1.2)), 3),
      skin=_pick(rng, tuple(SKIN_TONES)),
      hair=_pick(rng, HAIR_STYLES, p=[0.42, 0.2, 0.1, 0.06, 0.22]),
      hair_color=_pick(rng, tuple(HAIR_COLORS)),
      cap_color=_pick(rng, garments),
      upper_color=upper,
      upper_pattern=_pick(rng, UPPER_PATTERNS, p=[0.45, 0.18, 0.1, 0.13, 0.14]),
      upper_color2=_distinct_color(rng, GARMENT_COLORS, garments, [upper]),
      sleeves=_pick(rng, ("long", "short")),
      lower_color=_pick(rng, garments),
      lower_style=_pick(rng, LOWER_STYLES, p=[0.65, 0.2, 0.15]),
      shoes_color=_pick(rng, SHOE_COLORS),
      bag=_pick(rng, BAG_TYPES, p=[0.35, 0.25, 0.25, 0.15]),
      bag_color=_pick(rng, BAG_COLORS),
      bag_side=_pick(rng, ("left", "right")))


def one_part_variant(base: Appearance, rng: np.random.Generator,
                     part: str | None = None) -> tuple[Appearance, str]:
  """An appearance equal to `base` except for one clearly visible change in one part.

  Args:
    base: the appearance to vary.
    rng: random generator.
    part: the part to change (a key of PARTS); drawn with PART_WEIGHTS when None.

  Returns:
    (variant, part).
  """
  if part is None:
    names = tuple(PART_WEIGHTS)
    part = _pick(rng, names, p=np.array([PART_WEIGHTS[n] for n in names]))
  if part not in PARTS:
    raise ValueError(f"unknown part {part!r}; expected one of {sorted(PARTS)}.")
  change: dict[str, str] = {}
  if part == "head":
    colour_field = {"short": "hair_color", "long": "hair_color", "bun": "hair_color",
                    "cap": "cap_color"}.get(base.hair)
    if colour_field is None or rng.random() < 0.5:
      change["hair"] = _pick(rng, tuple(h for h in HAIR_STYLES if h != base.hair))
    elif colour_field == "hair_color":
      change["hair_color"] = _distinct_color(rng, HAIR_COLORS, tuple(HAIR_COLORS),
                                             [base.hair_color])
    else:
      change["cap_color"] = _distinct_color(rng, GARMENT_COLORS, tuple(GARMENT_COLORS),
                                            [base.cap_color])
  elif part == "upper":
    if rng.random() < 0.6:
      change["upper_color"] = _distinct_color(rng, GARMENT_COLORS, tuple(GARMENT_COLORS),
                                              [base.upper_color, base.upper_color2])
    else:
      change["upper_pattern"] = _pick(rng, tuple(p for p in UPPER_PATTERNS
                                                 if p != base.upper_pattern))
  elif part == "lower":
    if rng.random() < 0.65:
      change["lower_color"] = _distinct_color(rng, GARMENT_COLORS, tuple(GARMENT_COLORS),
                                              [base.lower_color])
    else:
      change["lower_style"] = _pick(rng, tuple(s for s in LOWER_STYLES
                                               if s != base.lower_style))
  elif part == "shoes":
    change["shoes_color"] = _distinct_color(rng, GARMENT_COLORS, SHOE_COLORS,
                                            [base.shoes_color])
  else:  # bag
    if base.bag == "none" or rng.random() < 0.5:
      change["bag"] = _pick(rng, tuple(b for b in BAG_TYPES if b != base.bag))
    else:
      change["bag_color"] = _distinct_color(rng, GARMENT_COLORS, BAG_COLORS, [base.bag_color])
  return dataclasses.replace(base, **change), part


# ---------------------------------------------------------------------------------------------
# Pose.

Point = tuple[float, float, float]


def _add(p: Point, dx: float, dy: float, dz: float) -> Point:
  return (p[0] + dx, p[1] + dy, p[2] + dz)


def _along(p: Point, length: float, d: Point) -> Point:
  """p + length * d / |d|."""
  n = length / math.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
  return (p[0] + n * d[0], p[1] + n * d[1], p[2] + n * d[2])


def walking_skeleton(appearance: Appearance, phase: float, stride: float = 1.0
                     ) -> dict[str, Point]:
  """3-D points of the body in body units (x left, y up, z forward) at a walk phase.

  The right thigh swings forward by `0.42 * stride * sin(phase)` radians, the left in
  opposition; a knee flexes while its leg swings forward; each arm swings against the leg
  on its side; the body rises and falls twice per cycle.

  Returns:
    name -> (x, y, z); names are the 14 JOINT_NAMES plus `head_center`, `r_toe`, `l_toe`,
    `r_hand`, `l_hand`.
  """
  w = appearance.width
  amp = 0.42 * stride
  bob = 0.012 * math.cos(2.0 * phase) - 0.012
  sway = 0.006 * math.sin(phase)
  pts: dict[str, Point] = {}
  for side, sign, ph in (("r", -1.0, phase), ("l", 1.0, phase + math.pi)):
    a = amp * math.sin(ph)  # thigh angle, positive = forward
    k = 0.08 + 0.62 * max(0.0, math.cos(ph)) * stride  # knee flexion during swing
    hip = (sign * HIP_HALF_WIDTH * w + sway, HIP_Y + bob, 0.0)
    knee = _along(hip, THIGH, (0.0, -math.cos(a), math.sin(a)))
    ankle = _along(knee, SHIN, (0.0, -math.cos(a - k), math.sin(a - k)))
    c = -0.6 * amp * math.sin(ph)  # arm swing, opposite to the leg on the same side
    e = 0.18 + 0.45 * max(0.0, c) / max(amp, 1e-6)
    shoulder = (sign * SHOULDER_HALF_WIDTH * w + sway, SHOULDER_Y + bob, 0.0)
    elbow = _along(shoulder, UPPER_ARM, (sign * 0.12, -math.cos(c), math.sin(c)))
    fore = (sign * 0.04, -math.cos(c + e), math.sin(c + e))
    wrist = _along(elbow, FOREARM, fore)
    pts.update({f"{side}_hip": hip, f"{side}_knee": knee, f"{side}_ankle": ankle,
                f"{side}_toe": _add(ankle, 0.0, -0.018, 0.068), f"{side}_shoulder": shoulder,
                f"{side}_elbow": elbow, f"{side}_wrist": wrist,
                f"{side}_hand": _along(wrist, HAND, fore)})
  pts["neck"] = (sway, NECK_Y + bob, 0.0)
  pts["head_center"] = (sway, 1.0 - HEAD_RADIUS + bob, 0.01)
  pts["head_top"] = (sway, 1.0 - 0.1 * HEAD_RADIUS + bob, 0.01)
  return pts


# ---------------------------------------------------------------------------------------------
# Drawing.

_SHIFT = 4  # OpenCV fixed-point bits for sub-pixel drawing
_ONE = 1 << _SHIFT


class _Painter:
  """Projects body-space points into a supersampled RGBA canvas and draws primitives."""

  def __init__(self, canvas, *, yaw, mirror, center_x, feet_y, pixel_height, supersample):
    self.canvas = canvas
    self.cos, self.sin = math.cos(yaw), math.sin(yaw)
    self.m = -1.0 if mirror else 1.0
    s = float(supersample)
    self.s = s
    self.scale = pixel_height * s  # canvas pixels per body unit
    # Frame pixel centre x maps to canvas coordinate (x + 0.5) * s - 0.5.
    self.cx = (center_x + 0.5) * s - 0.5
    self.fy = (feet_y + 0.5) * s - 0.5
    self._mc, self._ms = self.m * self.cos * self.scale, self.m * self.sin * self.scale

  def project(self, p: Point) -> tuple[float, float]:
    """Canvas (x, y) of a body-space point."""
    return (self.cx + p[0] * self._mc + p[2] * self._ms, self.fy - p[1] * self.scale)

  def to_frame(self, xy) -> tuple[float, float]:
    return ((xy[0] + 0.5) / self.s - 0.5, (xy[1] + 0.5) / self.s - 0.5)

  @staticmethod
  def fixed(xy) -> tuple[int, int]:
    return (int(math.floor(xy[0] * _ONE + 0.5)), int(math.floor(xy[1] * _ONE + 0.5)))

  @staticmethod
  def rgba(color):
    return (int(color[0]), int(color[1]), int(color[2]), 255)

  def limb(self, a: Point, b: Point, thickness: float, color):
    t = max(1, int(thickness * self.scale + 0.5))
    cv2.line(self.canvas, self.fixed(self.project(a)), self.fixed(self.project(b)),
             self.rgba(color), t, cv2.LINE_8, _SHIFT)

  def disc(self, center: Point, radius: float, color):
    r = max(1, int(radius * self.scale * _ONE + 0.5))
    cv2.circle(self.canvas, self.fixed(self.project(center)), r, self.rgba(color), -1,
               cv2.LINE_8, _SHIFT)

  def ellipse(self, center_xy, axes, start, end, color):
    """Filled ellipse (or sector) in canvas coordinates; axes in canvas pixels."""
    ax = (max(1, int(axes[0] * _ONE + 0.5)), max(1, int(axes[1] * _ONE + 0.5)))
    cv2.ellipse(self.canvas, self.fixed(center_xy), ax, 0.0, start, end, self.rgba(color), -1,
                cv2.LINE_8, _SHIFT)

  def hull(self, points) -> np.ndarray:
    pts = np.array([self.project(p) for p in points], np.float32)
    return cv2.convexHull(pts).reshape(-1, 2)

  def fill(self, polygon, color):
    pts = np.floor(np.asarray(polygon, np.float64) * _ONE + 0.5).astype(np.int32)
    cv2.fillConvexPoly(self.canvas, pts, self.rgba(color), cv2.LINE_8, _SHIFT)

  def box(self, center: Point, half: Point, color):
    """Fills the projection of an axis-aligned 3-D box."""
    corners = [(center[0] + i * half[0], center[1] + j * half[1], center[2] + k * half[2])
               for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)]
    self.fill(self.hull(corners), color)

  def patterned(self, polygon, top, bottom, color, color2, pattern, front):
    """Fills a polygon with a garment pattern in its own (u, v) box coordinates."""
    if pattern == "plain" or (pattern == "logo" and not front):
      self.fill(polygon, color)
      return
    h, w = self.canvas.shape[:2]
    x0 = max(0, int(math.floor(polygon[:, 0].min())))
    x1 = min(w, int(math.ceil(polygon[:, 0].max())) + 1)
    y0 = max(0, int(math.floor(polygon[:, 1].min())))
    y1 = min(h, int(math.ceil(polygon[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
      return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    pts = np.floor((polygon - [x0, y0]) * _ONE + 0.5).astype(np.int32)
    cv2.fillConvexPoly(mask, pts, 1, cv2.LINE_8, _SHIFT)
    left, right = float(polygon[:, 0].min()), float(polygon[:, 0].max())
    u = (np.arange(x0, x1, dtype=np.float32) - left)[None, :] / max(right - left, 1.0)
    v = (np.arange(y0, y1, dtype=np.float32) - top)[:, None] / max(bottom - top, 1.0)
    if pattern == "hstripes":
      second = (np.floor(v * 7.0) % 2 == 1) & (u > -1.0)
    elif pattern == "vstripes":
      second = (np.floor(u * 5.0) % 2 == 1) & (v > -1.0)
    elif pattern == "checks":
      second = (np.floor(u * 4.0) + np.floor(v * 5.0)) % 2 == 1
    else:  # logo on the chest, seen from the front
      second = (u > 0.32) & (u < 0.68) & (v > 0.14) & (v < 0.42)
    mask[second & (mask == 1)] = 2
    region = self.canvas[y0:y1, x0:x1]
    region[mask == 1] = self.rgba(color)
    region[mask == 2] = self.rgba(color2)


def draw_pedestrian(canvas: np.ndarray, appearance: Appearance, *, phase: float, yaw: float,
                    center_x: float, feet_y: float, pixel_height: float, mirror: bool = False,
                    stride: float = 1.0, supersample: int = 1) -> np.ndarray:
  """Draws a walking pedestrian on an RGBA canvas and returns its 14 joints.

  Args:
    canvas: uint8 [supersample * H, supersample * W, 4] (RGB + alpha), drawn in place.
    appearance: what to draw.
    phase: walking phase in radians (one stride cycle = 2 pi).
    yaw: walking direction in radians (0 towards the camera, pi/2 to the image right).
    center_x: x of the body's vertical axis in frame pixels.
    feet_y: y of the soles in frame pixels.
    pixel_height: body height in frame pixels.
    mirror: draw the mirror image (left and right joint labels swap, see module doc).
    stride: stride length factor.
    supersample: canvas pixels per frame pixel.

  Returns:
    float64 [14, 2] joint (x, y) in frame pixels, in JOINT_NAMES order.
  """
  a = appearance
  w = a.width
  pts = walking_skeleton(a, phase, stride)
  pen = _Painter(canvas, yaw=yaw, mirror=mirror, center_x=center_x, feet_y=feet_y,
                 pixel_height=pixel_height, supersample=supersample)
  skin = SKIN_TONES[a.skin]
  upper = GARMENT_COLORS[a.upper_color]
  lower = GARMENT_COLORS[a.lower_color]
  shoes = GARMENT_COLORS[a.shoes_color]
  bag = GARMENT_COLORS[a.bag_color]
  hair = HAIR_COLORS[a.hair_color] if a.hair != "bald" else skin
  facing = pen.cos > 0.0  # front of the body towards the camera
  profile = abs(pen.sin) >= 0.45
  # Side sign: +1 = person's left. A side is "far" when its lateral axis points away.
  far_sign = 1.0 if pen.sin > 0 else -1.0
  bag_sign = 1.0 if a.bag_side == "left" else -1.0
  backpack = ((0.0, 0.67, -(TORSO_HALF_DEPTH + 0.05)), (0.085 * w, 0.11, 0.05))

  def leg(side):
    pen.limb(pts[side + "_hip"], pts[side + "_knee"], THICK["thigh"] * w,
             lower if a.lower_style != "skirt" else skin)
    pen.limb(pts[side + "_knee"], pts[side + "_ankle"], THICK["shin"] * w,
             lower if a.lower_style == "trousers" else skin)
    pen.limb(pts[side + "_ankle"], pts[side + "_toe"], THICK["shoe"] * w, shoes)

  def arm(side):
    pen.limb(pts[side + "_shoulder"], pts[side + "_elbow"], THICK["upper_arm"] * w, upper)
    pen.limb(pts[side + "_elbow"], pts[side + "_wrist"], THICK["forearm"] * w,
             upper if a.sleeves == "long" else skin)
    hand = pts[side + "_hand"]
    pen.disc(hand, 0.022 * w, skin)
    if a.bag == "handbag" and (side == "l") == (bag_sign > 0):
      pen.limb(hand, _add(hand, 0.0, -0.035, 0.0), THICK["strap"], bag)
      pen.box(_add(hand, 0.0, -0.085, 0.0), (0.022, 0.05, 0.065), bag)

  def shoulder_bag():
    pen.box((bag_sign * (WAIST_HALF_WIDTH * w + 0.035), 0.47, 0.02), (0.022, 0.058, 0.075), bag)

  far, near = ("l", "r") if far_sign > 0 else ("r", "l")
  head = pts["head_center"]
  r = HEAD_RADIUS
  # Behind the body.
  if a.bag == "backpack" and facing:
    pen.box(*backpack, bag)
  if a.hair == "long" and facing:
    pen.fill(pen.hull([_add(head, dx, dy, -0.02) for dx in (-0.06, 0.06)
                       for dy in (0.0, -0.15)]), hair)
  if profile:
    arm(far)
  if a.bag == "shoulder" and bag_sign == far_sign:
    shoulder_bag()
  leg(far)
  leg(near)
  if a.lower_style == "skirt":
    ring = [(sx * hw, y, sz * d)
            for (hw, y, d) in ((HIP_HALF_WIDTH * w + 0.03, HIP_Y + 0.02, TORSO_HALF_DEPTH),
                               (0.135 * w, 0.31, 0.1))
            for sx in (-1, 1) for sz in (-1, 1)]
    pen.fill(pen.hull(ring), lower)
  # Torso (moves with the neck: bob and sway).
  nx, ny = pts["neck"][0], pts["neck"][1] - NECK_Y
  top, bottom = SHOULDER_Y + 0.015 + ny, HIP_Y - 0.02 + ny
  corners = [(sx * half * w + nx, y, sz * TORSO_HALF_DEPTH)
             for (half, y) in ((SHOULDER_HALF_WIDTH, top), (WAIST_HALF_WIDTH, bottom))
             for sx in (-1, 1) for sz in (-1, 1)]
  pen.patterned(pen.hull(corners), pen.project((0, top, 0))[1],
                pen.project((0, bottom, 0))[1], upper, GARMENT_COLORS[a.upper_color2],
                a.upper_pattern, pen.cos > 0.5)
  if a.bag == "backpack":
    if facing:  # straps over the chest
      for sx in (-1, 1):
        pen.limb((sx * 0.07 * w + nx, top, TORSO_HALF_DEPTH),
                 (sx * 0.06 * w + nx, 0.6 + ny, TORSO_HALF_DEPTH), THICK["strap"] * 1.4, bag)
    else:
      pen.box(*backpack, bag)
  if a.bag == "shoulder":
    z = TORSO_HALF_DEPTH if facing else -TORSO_HALF_DEPTH
    pen.limb((-bag_sign * 0.08 * w + nx, top, z), (bag_sign * WAIST_HALF_WIDTH * w, 0.53, z),
             THICK["strap"], bag)
    if bag_sign != far_sign:
      shoulder_bag()
  # Head.
  forward_x = pen.m * pen.sin  # image-x direction the face points to
  unit = r * pen.scale  # head radius in canvas pixels
  pen.limb(_add(pts["neck"], 0.0, -0.02, 0.0), head, THICK["neck"] * w, skin)
  bun = _add(head, 0.0, 0.045, -0.05)
  if a.hair == "bun" and facing:
    pen.disc(bun, 0.45 * r, hair)
  pen.disc(head, r, hair if a.hair != "cap" else HAIR_COLORS[a.hair_color])
  if pen.cos > -0.25:  # some of the face is visible
    low = a.hair != "bald"  # hair shows above the face
    cx, cy = pen.project(_add(head, 0.0, -(0.3 if low else 0.18) * r, 0.0))
    pen.ellipse((cx + 0.35 * unit * forward_x, cy),
                (unit * (0.5 + 0.32 * max(pen.cos, 0.0)), unit * (0.7 if low else 0.78)),
                0.0, 360.0, skin)
  if a.hair == "bun" and not facing:
    pen.disc(bun, 0.45 * r, hair)
  if a.hair == "long" and not facing:
    pen.fill(pen.hull([_add(head, dx, dy, -0.03) for dx in (-0.062, 0.062)
                       for dy in (0.0, -0.15)]), hair)
  if a.hair == "cap":
    cap = GARMENT_COLORS[a.cap_color]
    cx, cy = pen.project(head)
    pen.ellipse((cx, cy - 0.1 * unit), (1.08 * unit, 0.95 * unit), 180.0, 360.0, cap)
    if pen.cos > -0.5:  # the brim, towards where the face looks
      y = cy - 0.12 * unit
      if abs(pen.sin) > 0.2:
        x_end = cx + forward_x * (1.35 + 0.9 * abs(pen.sin)) * unit
        ends = ((min(cx, x_end), y), (max(cx, x_end), y))
      else:
        ends = ((cx - 1.1 * unit, y), (cx + 1.1 * unit, y))
      cv2.line(canvas, pen.fixed(ends[0]), pen.fixed(ends[1]), pen.rgba(cap),
               max(1, int(0.028 * pen.scale + 0.5)), cv2.LINE_8, _SHIFT)
  # Arms in front.
  if profile:
    arm(near)
  else:
    arm(far)
    arm(near)

  joints = np.array([pen.to_frame(pen.project(pts[name])) for name in JOINT_NAMES])
  if mirror:
    joints = joints[list(FLIP_PERMUTATION)]
  assert joints.shape == (NUM_JOINTS, 2)
  return joints
