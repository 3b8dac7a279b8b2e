"""Clip-consistent decoding and augmentation: one random draw per clip, every frame alike.

All pixel work stays uint8 and is at most one gather per clip (DESIGN.md: float conversion,
normalisation and per-pixel float work belong in the model). A clip's geometry is two
integer maps, `rows[i]` and `cols[j]`: output pixel (i, j) of every frame is the source
pixel (rows[i], cols[j]), or zero where a map is -1 (translated in from outside the frame).
They combine, in this order:

1. Crop from an enlarged frame (nonlocal_i3d section 4.2: frames enlarged by 1/8, then a
   height x width window cropped at random). Enlarging a frame of size (h, w) by
   `e = crop_enlarge` and cropping (H, W) is a window of (ch, cw) = round((h, w) / (1 + e))
   source pixels at a random offset `(y0, x0) = floor(u * ((h, w) - (ch, cw) + 1))`,
   resampled to (H, W). As in the reference implementations (Random2DTranslation of
   torchreid / Video-Person-ReID, "randomly enlarged") it is applied with probability 1/2;
   otherwise the window is the whole frame (a plain resize to (H, W)).
   For JPEG frames only the window is decoded (`tf.io.decode_and_crop_jpeg`).
2. Resampling, nearest neighbour with pixel centres at half-integers: output row i of the
   window reads window row `floor((i + 1/2) * ch / H)` (same for columns). No
   interpolation arithmetic on the host; this is the same rule at training and at test
   (where the window is the whole frame and only the resize to (H, W) remains).
3. Translation (siamese_convgru section V-B: up to 5% of the frame): the content moves by
   (ty, tx) = round((2u - 1) * translate * (H, W)) output pixels; uncovered pixels are 0.
4. Horizontal flip with probability 1/2: output column j reads column W - 1 - j.
5. Random erasing (a3d section III-D; torchreid's RandomErasing): with probability
   `random_erasing`, one rectangle of area U(0.02, 0.4) * H * W and aspect ratio
   U(0.3, 1 / 0.3) at a uniform position, the same on every frame, is filled with
   `ERASE_FILL` (torchreid's fill, 255 * (0.4914, 0.4822, 0.4465)). Up to
   `ERASE_ATTEMPTS` draws are tried; the first that fits inside the frame is used (none:
   no erasing).
6. Colour jitter (optional, strength s): brightness, contrast and saturation factors drawn
   from U(1 - s, 1 + s) once per clip, applied in that order (contrast around each frame's
   mean grey, saturation around each pixel's grey, grey = 0.299 R + 0.587 G + 0.114 B),
   rounded back to uint8. This is the only float pass and runs only when s > 0.

Streams that follow the geometry:
- flow (float32 [T, H, W, 2], pixels): dequantised `(q - 128) / flow_scale`, resampled
  with the same maps; dx is multiplied by W / cw and dy by H / ch (a flow vector in source
  pixels becomes one in output pixels) and dx is negated by a flip; 0 where translated in
  from outside or erased.
- keypoints (float32 [T, 14, 3], pixel coordinates with the centre of pixel k at k):
  `x' = (x - x0 + 1/2) * W / cw - 1/2 + tx`, likewise y; a flip maps `x' -> W - 1 - x'`
  and swaps left and right joints with `schema.FLIP_PERMUTATION`; visibility is kept;
  frames without keypoints (keypoints_present = 0) stay all zeros. Coordinates are not
  clipped to the frame.

Speed: when all frames of a clip have the dataset's usual frame size (the window then has a
static shape) the pixel work is one XLA-compiled function per clip, specialised to what
the clip needs: nothing (no flip, crop, translation or erasing and the frame already
(H, W)), a reverse (flip only), or the gathers with erasing and the translation zeros
written as one masked pass; XLA compiles one version per frame size. Otherwise (e.g.
DukeMTMC-VideoReID, whose frame sizes vary) each frame goes through the same computation in
plain TensorFlow ops (tf.map_fn), slower but equal. benchmarks/input_pipeline.py measures
the training pipeline against the JPEG-decode ceiling.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import tensorflow as tf

from tfreid.data import schema

# torchreid's RandomErasing fill, mean = (0.4914, 0.4822, 0.4465) of [0, 1] pixels.
ERASE_FILL = (125, 123, 114)
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = 0.3
ERASE_ATTEMPTS = 10
# Probability of the crop from an enlarged frame (Random2DTranslation's p).
ENLARGE_PROBABILITY = 0.5
GREY = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Static facts the clip functions are traced with.

  Attributes:
    height, width, seq_len: output clip size (H, W) and T.
    crop_enlarge, translate, flip, random_erasing, color_jitter: augmentation settings
      (AugmentationConfig); all zero/False at test time.
    static_size: the dataset's usual frame size (h, w): clips whose frames all have it take
      the XLA-compiled path. None: always the plain path.
    formats: frame formats that can occur ("jpeg", "png").
    flow_scale: manifest["flow"]["scale"] (flow quantisation).
  """
  height: int
  width: int
  seq_len: int
  crop_enlarge: float = 0.0
  translate: float = 0.0
  flip: bool = False
  random_erasing: float = 0.0
  color_jitter: float = 0.0
  static_size: Optional[tuple[int, int]] = None
  formats: tuple[str, ...] = ("jpeg",)
  flow_scale: float = 1.0

  @classmethod
  def from_config(cls, data_config, training: bool, **kwargs) -> "ClipSpec":
    """From a DataConfig; `training=False` disables every random augmentation."""
    aug = data_config.augmentation
    random = {}
    if training:
      random = dict(crop_enlarge=aug.crop_enlarge, translate=aug.translate, flip=aug.flip,
                    random_erasing=aug.random_erasing, color_jitter=aug.color_jitter)
    return cls(height=data_config.height, width=data_config.width,
               seq_len=data_config.seq_len, **random, **kwargs)


# -------------------------------------------------------------------------- draws


def draw_params(seed, spec: ClipSpec) -> dict[str, tf.Tensor]:
  """One clip's random augmentation parameters from a stateless seed ([2] int).

  Returns a dict: `enlarge` bool, `crop_u` float [2] (y, x fractions of the free range),
  `shift` int32 [2] (ty, tx), `flip` bool, `erase_box` int32 [4] (y0, y1, x0, x1; empty
  when not erasing), `jitter` float [3] (brightness, contrast, saturation factors).
  """
  seed = tf.cast(seed, tf.int64)
  params = identity_params()
  if not (spec.crop_enlarge > 0 or spec.translate > 0 or spec.flip or spec.random_erasing > 0
          or spec.color_jitter > 0):
    return params
  u = tf.random.stateless_uniform([7], seed)
  height, width = spec.height, spec.width
  if spec.crop_enlarge > 0:
    params["enlarge"] = u[0] < ENLARGE_PROBABILITY
    params["crop_u"] = u[1:3]
  if spec.translate > 0:
    limits = tf.constant([spec.translate * height, spec.translate * width], tf.float32)
    params["shift"] = tf.cast(tf.round((2.0 * u[3:5] - 1.0) * limits), tf.int32)
  if spec.flip:
    params["flip"] = u[5] < 0.5
  if spec.random_erasing > 0:
    params["erase_box"] = _erase_box(u[6] < spec.random_erasing,
                                     tf.random.experimental.stateless_fold_in(seed, 1), spec)
  if spec.color_jitter > 0:
    j = tf.random.stateless_uniform([3], tf.random.experimental.stateless_fold_in(seed, 2))
    params["jitter"] = tf.maximum(1.0 + spec.color_jitter * (2.0 * j - 1.0), 0.0)
  return params


def _erase_box(erase, seed, spec: ClipSpec) -> tf.Tensor:
  """(y0, y1, x0, x1) of the erased rectangle, or zeros (module docstring, item 5)."""
  height, width = spec.height, spec.width
  a = tf.random.stateless_uniform([ERASE_ATTEMPTS, 4], seed)
  area = (ERASE_AREA[0] + a[:, 0] * (ERASE_AREA[1] - ERASE_AREA[0])) * height * width
  aspect = ERASE_ASPECT + a[:, 1] * (1.0 / ERASE_ASPECT - ERASE_ASPECT)
  eh = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  ew = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = (eh < height) & (ew < width) & (eh > 0) & (ew > 0)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  eh, ew = eh[first], ew[first]
  ey0 = tf.cast(tf.floor(a[first, 2] * tf.cast(height - eh + 1, tf.float32)), tf.int32)
  ex0 = tf.cast(tf.floor(a[first, 3] * tf.cast(width - ew + 1, tf.float32)), tf.int32)
  ey0 = tf.minimum(ey0, height - eh)
  ex0 = tf.minimum(ex0, width - ew)
  box = tf.stack([ey0, ey0 + eh, ex0, ex0 + ew])
  return tf.where(erase & tf.reduce_any(fits), box, tf.zeros([4], tf.int32))


def identity_params() -> dict[str, tf.Tensor]:
  """Parameters of no augmentation (test clips: only the resize to (H, W))."""
  return {"enlarge": tf.constant(False), "crop_u": tf.zeros([2]),
          "shift": tf.zeros([2], tf.int32), "flip": tf.constant(False),
          "erase_box": tf.zeros([4], tf.int32), "jitter": tf.ones([3])}


# ----------------------------------------------------------------------- geometry


def _window_extent(size, crop_enlarge: float):
  """round(size / (1 + e)), in float64 so Python and TensorFlow agree (static shapes)."""
  if isinstance(size, int):
    return max(1, math.floor(size / (1.0 + crop_enlarge) + 0.5))
  size = tf.cast(size, tf.float64)
  return tf.maximum(tf.cast(tf.floor(size / (1.0 + crop_enlarge) + 0.5), tf.int32), 1)


def crop_windows(sizes, params, spec: ClipSpec) -> tf.Tensor:
  """[T, 4] int32 windows (y0, x0, ch, cw) of frames of sizes `sizes` ([T, 2])."""
  sizes = tf.cast(sizes, tf.int32)
  if spec.crop_enlarge <= 0:
    return tf.concat([tf.zeros_like(sizes), sizes], 1)
  extent = _window_extent(sizes, spec.crop_enlarge)
  free = sizes - extent + 1
  offset = tf.cast(tf.floor(params["crop_u"][None, :] * tf.cast(free, tf.float32)), tf.int32)
  offset = tf.minimum(offset, free - 1)
  enlarged = tf.concat([offset, extent], 1)
  full = tf.concat([tf.zeros_like(sizes), sizes], 1)
  return tf.where(params["enlarge"], enlarged, full)


def sample_maps(window, params, spec: ClipSpec, relative: bool) -> tuple[tf.Tensor, tf.Tensor]:
  """(rows [H], cols [W]) int32 source indices of one window (-1: outside, filled with 0).

  `relative`: indices into the decoded window (JPEG crops) instead of the whole frame.
  """
  window = tf.cast(window, tf.int32)
  y0, x0, ch, cw = window[0], window[1], window[2], window[3]
  if relative:
    y0, x0 = 0, 0
  height, width = spec.height, spec.width
  i = tf.range(height, dtype=tf.int32) - params["shift"][0]
  rows = tf.where((i >= 0) & (i < height), y0 + ((2 * i + 1) * ch) // (2 * height), -1)
  j = tf.range(width, dtype=tf.int32)
  j = tf.where(params["flip"], width - 1 - j, j) - params["shift"][1]
  cols = tf.where((j >= 0) & (j < width), x0 + ((2 * j + 1) * cw) // (2 * width), -1)
  return rows, cols


def _erase_mask(box, height: int, width: int) -> tf.Tensor:
  """[H, W] bool: inside the erase box (y0, y1, x0, x1)."""
  i = tf.range(height)[:, None]
  j = tf.range(width)[None, :]
  return (i >= box[0]) & (i < box[1]) & (j >= box[2]) & (j < box[3])


def _blend(images, replace, value):
  """`value` ([C]) where `replace` ([H, W] bool), else `images` ([T, H, W, C], static).

  Written as arithmetic on flattened frames (the mask broadcast over T only), which XLA
  turns into one vectorised pass; a select on a [1, H, W, 1] mask costs about twice that.
  """
  t, h, w, c = images.shape
  m = tf.cast(tf.reshape(tf.broadcast_to(replace[:, :, None], [h, w, c]), [1, h * w * c]),
              images.dtype)
  v = tf.reshape(tf.broadcast_to(tf.cast(value, images.dtype), [h, w, c]), [1, h * w * c])
  flat = tf.reshape(images, [t, h * w * c])
  return tf.reshape(flat * (1 - m) + v * m, [t, h, w, c])


# ------------------------------------------------------------------------- kernels


def _gather_pixels(images, rows, cols, erase_box, fill):
  """uint8 [T, h, w, C] -> [T, H, W, C] by the maps; 0 outside, `fill` in the box."""
  height, width = rows.shape[0], cols.shape[0]
  out = tf.gather(tf.gather(images, tf.maximum(rows, 0), axis=1), tf.maximum(cols, 0), axis=2)
  outside = (rows < 0)[:, None] | (cols < 0)[None, :]
  out = _blend(out, outside, tf.zeros([out.shape[-1]], images.dtype))
  return _blend(out, _erase_mask(erase_box, height, width), fill)


def _gather_flow(quantised, rows, cols, erase_box, gain, scale):
  """Quantised flow PNG pixels [T, h, w, 3] -> float32 [T, H, W, 2] (module docstring)."""
  height, width = rows.shape[0], cols.shape[0]
  flow = (tf.cast(quantised[..., :2], tf.float32) - 128.0) / scale
  out = tf.gather(tf.gather(flow, tf.maximum(rows, 0), axis=1), tf.maximum(cols, 0), axis=2)
  out = out * gain[:, None, None, :]
  drop = ((rows < 0)[:, None] | (cols < 0)[None, :]) | _erase_mask(erase_box, height, width)
  return _blend(out, drop, tf.zeros([2]))


def _jitter(clip, factors, erase_box, fill):
  """Brightness, contrast, saturation (module docstring) on uint8 [T, H, W, 3]."""
  grey = tf.constant(GREY, tf.float32)
  x = tf.cast(clip, tf.float32)
  x = tf.clip_by_value(x * factors[0], 0.0, 255.0)
  mean = tf.reduce_mean(tf.reduce_sum(x * grey, -1), axis=[1, 2], keepdims=True)[..., None]
  x = tf.clip_by_value((x - mean) * factors[1] + mean, 0.0, 255.0)
  g = tf.reduce_sum(x * grey, -1, keepdims=True)
  x = tf.clip_by_value((x - g) * factors[2] + g, 0.0, 255.0)
  out = tf.cast(tf.round(x), tf.uint8)
  return _blend(out, _erase_mask(erase_box, clip.shape[1], clip.shape[2]), fill)


def _resample(images, rows, cols, erase_box, fill, translate: bool, erase: bool):
  """`_gather_pixels` specialised: the masks only when translating / erasing."""
  if translate:
    return _gather_pixels(images, rows, cols, erase_box if erase else _no_box(), fill)
  out = tf.gather(tf.gather(images, rows, axis=1), cols, axis=2)
  if erase:
    out = _blend(out, _erase_mask(erase_box, rows.shape[0], cols.shape[0]), fill)
  return out


def _flip_erase(images, flip, erase_box, fill, erase: bool):
  """Same-size clip: optional flip (a reverse), optional erasing."""
  if not erase:
    return tf.reverse(images, [2])
  out = tf.cond(flip, lambda: tf.reverse(images, [2]), lambda: images)
  return _blend(out, _erase_mask(erase_box, images.shape[1], images.shape[2]), fill)


_resample_xla = tf.function(_resample, jit_compile=True, autograph=False)
_flip_erase_xla = tf.function(_flip_erase, jit_compile=True, autograph=False)
_gather_flow_xla = tf.function(_gather_flow, jit_compile=True, autograph=False)
_jitter_xla = tf.function(_jitter, jit_compile=True, autograph=False)


# ------------------------------------------------------------------------ decoding


def _fill() -> tf.Tensor:
  return tf.constant(ERASE_FILL, tf.uint8)


def _no_box() -> tf.Tensor:
  return tf.zeros([4], tf.int32)


def _pixel_box(params, spec: ClipSpec) -> tf.Tensor:
  """The erase box applied by the geometric kernel (after the jitter when it is on)."""
  return _no_box() if spec.color_jitter > 0 else params["erase_box"]


def _static_pixels(images, rows, cols, params, spec: ClipSpec, same_size: bool):
  """XLA path for a stacked clip [T, h, w, 3] of static shape.

  `same_size`: the window is the whole frame and already (H, W), so without translation
  the maps are the identity or a flip: a reverse, or nothing at all.
  """
  box = _pixel_box(params, spec)
  can_erase = spec.random_erasing > 0 and not spec.color_jitter > 0
  erase = box[1] > box[0]
  translate = spec.translate > 0
  fill = _fill()
  if same_size and not translate:
    flip = params["flip"]
    if not can_erase:
      if not spec.flip:
        return images
      return tf.cond(flip, lambda: _flip_erase_xla(images, flip, box, fill, False),
                     lambda: images)
    return tf.cond(
        flip | erase,
        lambda: tf.cond(erase, lambda: _flip_erase_xla(images, flip, box, fill, True),
                        lambda: _flip_erase_xla(images, flip, box, fill, False)),
        lambda: images)
  if not can_erase:
    return _resample_xla(images, rows, cols, box, fill, translate, False)
  return tf.cond(erase,
                 lambda: _resample_xla(images, rows, cols, box, fill, translate, True),
                 lambda: _resample_xla(images, rows, cols, box, fill, translate, False))


def png_sizes(frames) -> tf.Tensor:
  """[T, 2] int32 (height, width) of PNG frames ([T] string), read from the IHDR chunk."""
  header = tf.cast(tf.io.decode_raw(tf.strings.substr(frames, 16, 8), tf.uint8), tf.int32)
  weights = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int32)
  width = tf.reduce_sum(header[:, 0:4] * weights, -1)
  height = tf.reduce_sum(header[:, 4:8] * weights, -1)
  return tf.stack([height, width], 1)


def jpeg_sizes(frames, seq_len: int) -> tf.Tensor:
  """[T, 2] int32 (height, width) of JPEG frames ([T] string), from their headers."""
  return tf.stack([tf.io.extract_jpeg_shape(f, output_type=tf.int32)[:2]
                   for f in tf.unstack(frames, num=seq_len)])


def _clip(frames, png: bool, params, spec: ClipSpec, flow: bool):
  """(output, windows) of T encoded frames: RGB uint8 [T, H, W, 3] or flow [T, H, W, 2].

  Frames that all have `spec.static_size` take the XLA path (one stacked clip); otherwise
  each frame is decoded and resampled on its own (tf.map_fn), with the same result.
  """
  t, height, width = spec.seq_len, spec.height, spec.width
  sizes = png_sizes(frames) if png else jpeg_sizes(frames, t)
  windows = crop_windows(sizes, params, spec)
  box = params["erase_box"] if flow else _pixel_box(params, spec)
  crop = not png  # JPEG: only the window is decoded, maps are relative to it.

  def decode(f, window=None):
    if png:
      return tf.io.decode_png(f, channels=3)
    if window is None:
      return tf.io.decode_jpeg(f, channels=3)
    return tf.io.decode_and_crop_jpeg(f, window, channels=3)

  def generic():
    def one(args):
      f, window = args
      rows, cols = sample_maps(window, params, spec, relative=crop)
      image = decode(f, window if crop else None)[None]
      if flow:
        gain = flow_gain(window[None], params, spec)
        return _gather_flow(image, rows, cols, box, gain, spec.flow_scale)[0]
      return _gather_pixels(image, rows, cols, box, _fill())[0]

    signature = tf.TensorSpec([height, width, 2 if flow else 3], tf.float32 if flow else tf.uint8)
    return tf.map_fn(one, (frames, windows), fn_output_signature=signature)

  if spec.static_size is None:
    return generic(), windows
  h0, w0 = spec.static_size

  def static():
    window = windows[0]
    rows, cols = sample_maps(window, params, spec, relative=crop)

    def stacked(extent, cropped: bool):
      images = [decode(f, window if cropped else None) for f in tf.unstack(frames, num=t)]
      return tf.stack([tf.ensure_shape(image, [extent[0], extent[1], 3]) for image in images])

    if flow:
      gain = flow_gain(windows, params, spec)
      return _gather_flow_xla(stacked((h0, w0), False), rows, cols, box, gain, spec.flow_scale)

    def whole():
      same = (h0, w0) == (height, width)
      return _static_pixels(stacked((h0, w0), False), rows, cols, params, spec, same)

    if spec.crop_enlarge <= 0:
      return whole()
    extent = ((_window_extent(h0, spec.crop_enlarge), _window_extent(w0, spec.crop_enlarge))
              if crop else (h0, w0))
    enlarged = lambda: _static_pixels(stacked(extent, crop), rows, cols, params, spec, False)
    return tf.cond(params["enlarge"], enlarged, whole)

  uniform = tf.reduce_all(sizes == tf.constant([h0, w0], tf.int32))
  return tf.cond(uniform, static, generic), windows


def rgb_clip(frames, is_png, params, spec: ClipSpec) -> tuple[tf.Tensor, tf.Tensor]:
  """Decodes and augments T encoded frames ([T] string) into uint8 [T, H, W, 3].

  Returns (clip, windows): windows [T, 4] int32 (y0, x0, ch, cw) per frame, for the
  keypoints. `is_png` (scalar bool) chooses the decoder when `spec.formats` has both.
  """
  frames = tf.ensure_shape(frames, [spec.seq_len])
  if spec.formats == ("png",):
    clip, windows = _clip(frames, True, params, spec, flow=False)
  elif "png" not in spec.formats:
    clip, windows = _clip(frames, False, params, spec, flow=False)
  else:
    clip, windows = tf.cond(is_png, lambda: _clip(frames, True, params, spec, flow=False),
                            lambda: _clip(frames, False, params, spec, flow=False))
  if spec.color_jitter > 0:
    clip = _jitter_xla(tf.ensure_shape(clip, [spec.seq_len, spec.height, spec.width, 3]),
                       params["jitter"], params["erase_box"], _fill())
  return tf.ensure_shape(clip, [spec.seq_len, spec.height, spec.width, 3]), windows


def flow_gain(windows, params, spec: ClipSpec) -> tf.Tensor:
  """[T, 2] factors turning source-pixel flow (dx, dy) into output-pixel flow."""
  windows = tf.cast(windows, tf.float32)
  gx = spec.width / windows[:, 3]
  gx = tf.where(params["flip"], -gx, gx)
  return tf.stack([gx, spec.height / windows[:, 2]], 1)


def flow_clip(flow_frames, params, spec: ClipSpec) -> tf.Tensor:
  """Decodes quantised flow PNGs ([T] string) into float32 [T, H, W, 2] (pixels)."""
  flow_frames = tf.ensure_shape(flow_frames, [spec.seq_len])
  out, _ = _clip(flow_frames, True, params, spec, flow=True)
  return tf.ensure_shape(out, [spec.seq_len, spec.height, spec.width, 2])


def transform_keypoints(keypoints, present, windows, params, spec: ClipSpec) -> tf.Tensor:
  """Source keypoints [T, 14, 3] -> clip keypoints (module docstring)."""
  keypoints = tf.cast(keypoints, tf.float32)
  windows = tf.cast(windows, tf.float32)[:, None, :]
  shift = tf.cast(params["shift"], tf.float32)
  x = (keypoints[..., 0] - windows[..., 1] + 0.5) * spec.width / windows[..., 3] - 0.5 + shift[1]
  y = (keypoints[..., 1] - windows[..., 0] + 0.5) * spec.height / windows[..., 2] - 0.5 + shift[0]
  x = tf.where(params["flip"], spec.width - 1.0 - x, x)
  out = tf.stack([x, y, keypoints[..., 2]], -1)
  out = tf.cond(params["flip"],
                lambda: tf.gather(out, list(schema.FLIP_PERMUTATION), axis=1), lambda: out)
  mask = tf.cast(tf.cast(present, tf.bool), tf.float32)[:, None, None]
  return tf.ensure_shape(out * mask, [spec.seq_len, schema.NUM_JOINTS, 3])
