"""Clip-consistent decoding and augmentation: one random draw per clip, every frame alike.

All pixel work stays uint8 and is at most two passes per clip (DESIGN.md: float
conversion, normalisation and per-pixel float work belong in the model). A clip's geometry is two
integer maps, `rows[i]` and `cols[j]`: output pixel (i, j) of every frame is the source
pixel (rows[i], cols[j]) of the decoded frame, or zero where a map is -1 (translated in
from outside the frame). They combine, in this order:

1. Crop from an enlarged frame (nonlocal_i3d section 4.2: frames enlarged by 1/8, then a
   height x width window cropped at random). Enlarging a frame of size (h, w) by
   `e = crop_enlarge` and cropping (H, W) is a window of (ch, cw) = round((h, w) / (1 + e))
   source pixels at a random offset `(y0, x0) = floor(u * ((h, w) - (ch, cw) + 1))`,
   resampled to (H, W). As in the reference implementations (Random2DTranslation of
   torchreid / Video-Person-ReID, "randomly enlarged") it is applied with probability 1/2;
   otherwise the window is the whole frame (a plain resize to (H, W)).
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

7. Occlusion box (data.occlusion_box, stal's polluted protocol, Table VII), training and
   test alike: a black square of that side in the source frame, placed per frame by
   `occlusion_boxes` (a hash of the seed, tracklet id and frame index: the same box for a
   frame in every epoch and in every clip that holds it). Output pixels whose source pixel
   (rows[i], cols[j]) lies in the box are 0, which, with nearest-neighbour resampling, is
   the clip of the frame polluted before decoding. It is drawn last (over erasing and
   jitter); keypoints and flow are unchanged.

The source pixels are those of the whole decoded frame. For a JPEG frame and a crop window
only the window's rows are decoded, at full width (`tf.io.decode_and_crop_jpeg` of the
band `[y0, 0, ch, w]`); libjpeg-turbo decodes such a band to exactly the rows of the full
decode (tests/test_data_augment.py checks it), whereas decoding the window itself would
change its edge pixels (chroma upsampling at the window's border) and, when x0 is not a
multiple of the 16-pixel MCU, costs more than a full decode.

Draws (`params_from_uniform`): a clip's parameters are a function of `NUM_DRAWS` uniform
numbers u in [0, 1): u[0] < 1/2 enlarges, u[1:3] place the window, u[3:5] translate,
u[5] < 1/2 flips, u[6] < random_erasing erases with the ERASE_ATTEMPTS (area, aspect, y, x)
draws u[7:47], u[47:50] are the jitter factors. `draw_params(seed)` draws them for one clip
from a stateless seed; the training pipeline draws those of every clip of an epoch at once.

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

Speed (benchmarks/input_pipeline.py measures the training pipeline against the JPEG-decode
ceiling): when all frames of a clip have the dataset's usual frame size (`static_size`),
the clip's `ClipPlan` (window, maps, byte masks and kernel) can be computed ahead, for a
whole epoch at once, and the pixel work is what the plan names (`KERNEL_*`), each an
XLA-compiled function: nothing (the maps are the identity), a reverse (flip), a masked
pass (erasing), both, or the gathers of the maps, followed by the masked pass when pixels
are translated in or erased. The masked pass is `(byte & keep) | put` over rows of W * 3
bytes, with keep and put built from [H] and [W * 3] byte masks computed outside XLA, which
XLA vectorises (a mask computed inside the kernel from the box would be evaluated for every
byte, and slicing by the box would compile a kernel per box). Otherwise (e.g.
DukeMTMC-VideoReID, whose frame sizes vary) each frame goes through the same computation in
plain TensorFlow ops (tf.map_fn), slower but equal.
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
# Uniform draws per clip (module docstring, "Draws").
NUM_DRAWS = 7 + 4 * ERASE_ATTEMPTS + 3
_JITTER_DRAWS = 7 + 4 * ERASE_ATTEMPTS

# Pixel kernels a ClipPlan chooses between (static path); each is its own XLA function
# (XLA conditionals would copy the clip).
KERNEL_NONE = 0        # maps are the identity: the decoded frames are the clip
KERNEL_FLIP = 1        # frame already (H, W), no translation: a reverse
KERNEL_ERASE = 2       # ... erasing only
KERNEL_FLIP_ERASE = 3  # ... both
KERNEL_RESAMPLE = 4    # the gathers of the maps
KERNEL_MASKED = 5      # the gathers, then translation zeros and/or erasing
NUM_KERNELS = 6


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
    occlusion_box, occlusion_seed: the polluted protocol (item 7 of the module docstring;
      data.occlusion_box), on in training and test clips alike.
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
  occlusion_box: int = 0
  occlusion_seed: int = 0

  @classmethod
  def from_config(cls, data_config, training: bool, **kwargs) -> "ClipSpec":
    """From a DataConfig; `training=False` disables every random augmentation and takes the
    test clip length (data.test_seq_len, or seq_len)."""
    aug = data_config.augmentation
    random = {}
    if training:
      random = dict(crop_enlarge=aug.crop_enlarge, translate=aug.translate, flip=aug.flip,
                    random_erasing=aug.random_erasing, color_jitter=aug.color_jitter)
    seq_len = data_config.seq_len if training else (
        getattr(data_config, "test_seq_len", 0) or data_config.seq_len)
    occlusion = dict(occlusion_box=getattr(data_config, "occlusion_box", 0),
                     occlusion_seed=getattr(data_config, "occlusion_seed", 0))
    return cls(height=data_config.height, width=data_config.width,
               seq_len=seq_len, **random, **occlusion, **kwargs)

  @property
  def random(self) -> bool:
    """Whether any augmentation is on (otherwise every clip gets identity_params)."""
    return (self.crop_enlarge > 0 or self.translate > 0 or self.flip
            or self.random_erasing > 0 or self.color_jitter > 0)


# -------------------------------------------------------------------------- draws


def identity_params(shape=()) -> dict[str, tf.Tensor]:
  """Parameters of no augmentation (test clips: only the resize to (H, W)).

  `shape`: leading shape of every entry (e.g. [N] for N clips); scalars by default.
  """
  shape = tf.cast(shape, tf.int32) if tf.is_tensor(shape) else tf.constant(shape, tf.int32,
                                                                            [len(shape)])

  def full(value, dtype, *tail):
    return tf.fill(tf.concat([shape, tf.constant(tail, tf.int32, [len(tail)])], 0),
                   tf.constant(value, dtype))

  return {"enlarge": full(False, tf.bool), "crop_u": full(0.0, tf.float32, 2),
          "shift": full(0, tf.int32, 2), "flip": full(False, tf.bool),
          "erase_box": full(0, tf.int32, 4), "jitter": full(1.0, tf.float32, 3)}


def params_from_uniform(u, spec: ClipSpec) -> dict[str, tf.Tensor]:
  """Augmentation parameters from draws `u` ([..., NUM_DRAWS] in [0, 1)), one set per row.

  Returns a dict (leading shape `u.shape[:-1]`): `enlarge` bool, `crop_u` float [.., 2]
  (y, x fractions of the free range), `shift` int32 [.., 2] (ty, tx), `flip` bool,
  `erase_box` int32 [.., 4] (y0, y1, x0, x1; empty when not erasing), `jitter` float
  [.., 3] (brightness, contrast, saturation factors). Disabled augmentations keep their
  identity values (module docstring, "Draws").
  """
  u = tf.convert_to_tensor(u, tf.float32)
  params = identity_params(tf.shape(u)[:-1])
  height, width = spec.height, spec.width
  if spec.crop_enlarge > 0:
    params["enlarge"] = u[..., 0] < ENLARGE_PROBABILITY
    params["crop_u"] = u[..., 1:3]
  if spec.translate > 0:
    limits = tf.constant([spec.translate * height, spec.translate * width], tf.float32)
    params["shift"] = tf.cast(tf.round((2.0 * u[..., 3:5] - 1.0) * limits), tf.int32)
  if spec.flip:
    params["flip"] = u[..., 5] < 0.5
  if spec.random_erasing > 0:
    params["erase_box"] = _erase_box(u[..., 6] < spec.random_erasing, u[..., 7:_JITTER_DRAWS],
                                     spec)
  if spec.color_jitter > 0:
    j = u[..., _JITTER_DRAWS:NUM_DRAWS]
    params["jitter"] = tf.maximum(1.0 + spec.color_jitter * (2.0 * j - 1.0), 0.0)
  return params


def draw_params(seed, spec: ClipSpec) -> dict[str, tf.Tensor]:
  """One clip's random augmentation parameters from a stateless seed ([2] int)."""
  if not spec.random:
    return identity_params()
  u = tf.random.stateless_uniform([NUM_DRAWS], tf.cast(seed, tf.int64))
  return params_from_uniform(u, spec)


def _erase_box(erase, a, spec: ClipSpec) -> tf.Tensor:
  """(y0, y1, x0, x1) of the erased rectangle, or zeros (module docstring, item 5).

  `erase` bool [...]; `a` [..., 4 * ERASE_ATTEMPTS] draws, (area, aspect, y, x) per attempt.
  """
  height, width = spec.height, spec.width
  a = tf.reshape(a, tf.concat([tf.shape(a)[:-1], [ERASE_ATTEMPTS, 4]], 0))
  area = (ERASE_AREA[0] + a[..., 0] * (ERASE_AREA[1] - ERASE_AREA[0])) * height * width
  aspect = ERASE_ASPECT + a[..., 1] * (1.0 / ERASE_ASPECT - ERASE_ASPECT)
  eh = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  ew = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = (eh < height) & (ew < width) & (eh > 0) & (ew > 0)
  first = tf.one_hot(tf.argmax(tf.cast(fits, tf.int32), axis=-1, output_type=tf.int32),
                     ERASE_ATTEMPTS, on_value=True, off_value=False, dtype=tf.bool)

  def pick(x):
    return tf.reduce_sum(tf.where(first, x, tf.zeros_like(x)), -1)

  eh, ew, ay, ax = pick(eh), pick(ew), pick(a[..., 2]), pick(a[..., 3])
  ey0 = tf.cast(tf.floor(ay * tf.cast(height - eh + 1, tf.float32)), tf.int32)
  ex0 = tf.cast(tf.floor(ax * tf.cast(width - ew + 1, tf.float32)), tf.int32)
  ey0 = tf.minimum(ey0, height - eh)
  ex0 = tf.minimum(ex0, width - ew)
  box = tf.stack([ey0, ey0 + eh, ex0, ex0 + ew], -1)
  keep = erase & tf.reduce_any(fits, -1)
  return tf.where(keep[..., None], box, tf.zeros_like(box))


# ----------------------------------------------------------------------- geometry


def _window_extent(size, crop_enlarge: float):
  """round(size / (1 + e)), in float64 so Python and TensorFlow agree (static shapes)."""
  if isinstance(size, int):
    return max(1, math.floor(size / (1.0 + crop_enlarge) + 0.5))
  size = tf.cast(size, tf.float64)
  return tf.maximum(tf.cast(tf.floor(size / (1.0 + crop_enlarge) + 0.5), tf.int32), 1)


def crop_windows(sizes, params, spec: ClipSpec) -> tf.Tensor:
  """int32 windows (y0, x0, ch, cw) [..., 4] of frames of sizes `sizes` ([..., 2]).

  The leading shapes of `sizes` and of the parameters broadcast: [T, 2] sizes with one
  clip's parameters give the [T, 4] windows of its frames; one size [2] with the
  parameters of N clips gives their [N, 4] windows.
  """
  sizes = tf.cast(sizes, tf.int32)
  full = tf.concat([tf.zeros_like(sizes), sizes], -1)
  if spec.crop_enlarge <= 0:
    return full + tf.zeros_like(params["shift"][..., :1])
  extent = _window_extent(sizes, spec.crop_enlarge)
  free = sizes - extent + 1
  offset = tf.cast(tf.floor(params["crop_u"] * tf.cast(free, tf.float32)), tf.int32)
  offset = tf.minimum(offset, free - 1)
  enlarged = tf.concat([offset, extent + tf.zeros_like(offset)], -1)
  return tf.where(params["enlarge"][..., None], enlarged, full)


def sample_maps(window, params, spec: ClipSpec, relative: bool = False
                ) -> tuple[tf.Tensor, tf.Tensor]:
  """(rows [..., H], cols [..., W]) int32 source indices of windows [..., 4] (-1: outside).

  `relative`: indices into the window itself instead of the whole frame.
  """
  window = tf.cast(window, tf.int32)
  y0, x0, ch, cw = (window[..., k:k + 1] for k in range(4))
  if relative:
    y0, x0 = tf.zeros_like(y0), tf.zeros_like(x0)
  height, width = spec.height, spec.width
  shift = params["shift"]
  i = tf.range(height, dtype=tf.int32) - shift[..., 0:1]
  rows = tf.where((i >= 0) & (i < height), y0 + ((2 * i + 1) * ch) // (2 * height), -1)
  j = tf.range(width, dtype=tf.int32)
  j = tf.where(params["flip"][..., None], width - 1 - j, j) - shift[..., 1:2]
  cols = tf.where((j >= 0) & (j < width), x0 + ((2 * j + 1) * cw) // (2 * width), -1)
  return rows, cols


def _pixel_box(params, spec: ClipSpec) -> tf.Tensor:
  """The erase box applied by the geometric kernels (the jitter kernel erases instead when
  it is on, so that the fill is not jittered)."""
  if spec.color_jitter > 0:
    return tf.zeros_like(params["erase_box"])
  return params["erase_box"]


def pixel_masks(box, spec: ClipSpec, rows=None, cols=None) -> tuple[tf.Tensor, tf.Tensor]:
  """Byte masks of the masked kernels, (row_masks [.., 2, H], col_masks [.., 2, W * 3]).

  Entry 0 is 255 on the rows / bytes of the columns whose map is >= 0 (all of them when
  `rows` / `cols` are None), entry 1 is 255 on those of the erase box (y0, y1, x0, x1);
  0 elsewhere. Plain TensorFlow on H + 3W values per clip: passed to the XLA kernels as
  inputs (computed inside them, the masks would be re-evaluated for every byte of the
  clip, and slices by the box would make XLA compile one kernel per box).
  """
  height, width = spec.height, spec.width
  box = tf.cast(box, tf.int32)
  full, zero = tf.constant(255, tf.uint8), tf.constant(0, tf.uint8)
  i = tf.range(height)
  k = tf.range(width * 3)
  erase_rows = tf.where((i >= box[..., 0:1]) & (i < box[..., 1:2]), full, zero)
  erase_cols = tf.where((k >= 3 * box[..., 2:3]) & (k < 3 * box[..., 3:4]), full, zero)
  valid_rows = tf.fill(tf.shape(erase_rows), full) if rows is None else \
      tf.where(rows >= 0, full, zero)
  valid_cols = tf.fill(tf.shape(erase_cols), full) if cols is None else \
      tf.where(tf.repeat(cols >= 0, 3, axis=-1), full, zero)
  return tf.stack([valid_rows, erase_rows], -2), tf.stack([valid_cols, erase_cols], -2)


@dataclasses.dataclass
class ClipPlan:
  """What the static path does with a clip whose frames all have `spec.static_size`.

  Attributes (leading shape [] for one clip, [N] for N clips):
    window: int32 [.., 4] crop window (y0, x0, ch, cw) in the frame.
    rows, cols: int32 [.., H], [.., W] maps into the whole frame (-1: outside).
    kernel: int32, one of the KERNEL_* numbers.
    row_masks, col_masks: uint8 [.., 2, H], [.., 2, W * 3] (`pixel_masks`).
  """
  window: tf.Tensor
  rows: tf.Tensor
  cols: tf.Tensor
  kernel: tf.Tensor
  row_masks: tf.Tensor
  col_masks: tf.Tensor

  def as_dict(self) -> dict[str, tf.Tensor]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, d) -> "ClipPlan":
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def plan_clips(params, spec: ClipSpec) -> ClipPlan:
  """The `ClipPlan` of clips (any leading shape) with frames of size `spec.static_size`."""
  h0, w0 = spec.static_size
  window = crop_windows(tf.constant([h0, w0], tf.int32), params, spec)
  rows, cols = sample_maps(window, params, spec)
  shifted = tf.reduce_any(params["shift"] != 0, -1)
  whole = tf.reduce_all(window == tf.constant([0, 0, h0, w0], tf.int32), -1)
  box = _pixel_box(params, spec)
  erased = box[..., 1] > box[..., 0]
  resample = tf.where(erased | shifted, KERNEL_MASKED, KERNEL_RESAMPLE)
  if (h0, w0) == (spec.height, spec.width):
    same = tf.where(params["flip"], KERNEL_FLIP, KERNEL_NONE) + tf.where(erased, 2, 0)
    kernel = tf.where(whole & ~shifted, same, resample)
  else:
    kernel = resample
  row_masks, col_masks = pixel_masks(box, spec, rows, cols)
  return ClipPlan(window=window, rows=rows, cols=cols, kernel=tf.cast(kernel, tf.int32),
                  row_masks=row_masks, col_masks=col_masks)


# ------------------------------------------------------------------------- kernels


def _masked(flat, row_masks, col_masks):
  """uint8 [T, H, W * C] (frames as rows of bytes): 0 where a map is outside the frame,
  ERASE_FILL in the erase box (`pixel_masks`). One pass of byte and/or,
  (byte & keep) | put; with the bytes of a row innermost XLA vectorises it."""
  row_bytes = flat.shape[2]
  valid = tf.bitwise.bitwise_and(row_masks[0][:, None], col_masks[0][None, :])
  erased = tf.bitwise.bitwise_and(row_masks[1][:, None], col_masks[1][None, :])
  keep = tf.bitwise.bitwise_and(valid, tf.bitwise.invert(erased))
  fill = tf.constant([ERASE_FILL[c % 3] for c in range(row_bytes)], tf.uint8)
  put = tf.bitwise.bitwise_and(erased, fill[None, :])
  return tf.bitwise.bitwise_or(tf.bitwise.bitwise_and(flat, keep[None]), put[None])


def _flip(images):
  """uint8 [T, H, W, C] mirrored left to right (output column j is column W - 1 - j)."""
  return tf.reverse(images, [2])


def _resample(images, rows, cols, row_origin):
  """uint8 [T, h, w, C] -> [T, H, W, C]: the gathers of the maps (rows counted from
  `row_origin`, the first decoded row; no map may be -1)."""
  return tf.gather(tf.gather(images, rows - row_origin, axis=1), cols, axis=2)


def _clamped_maps(rows, cols, row_origin):
  """The maps with -1 (outside) replaced by a valid index (`_masked` zeroes those)."""
  return tf.where(rows >= 0, rows, row_origin), tf.maximum(cols, 0)


def _apply_masks(images, row_masks, col_masks, kernel):
  """`kernel` (`_masked` or its XLA version) on uint8 [T, H, W, C] clips."""
  t, h, w, c = images.shape
  flat = kernel(tf.reshape(images, [t, h, w * c]), row_masks, col_masks)
  return tf.reshape(flat, [t, h, w, c])


def _gather_flow(quantised, rows, cols, erase_box, gain, scale):
  """Quantised flow PNG pixels [T, h, w, 3] -> float32 [T, H, W, 2] (module docstring)."""
  height, width = rows.shape[0], cols.shape[0]
  flow = (tf.cast(quantised[..., :2], tf.float32) - 128.0) / scale
  out = tf.gather(tf.gather(flow, tf.maximum(rows, 0), axis=1), tf.maximum(cols, 0), axis=2)
  out = out * gain[:, None, None, :]
  i = tf.range(height)[:, None]
  j = tf.range(width)[None, :]
  erased = (i >= erase_box[0]) & (i < erase_box[1]) & (j >= erase_box[2]) & (j < erase_box[3])
  drop = ((rows < 0)[:, None] | (cols < 0)[None, :]) | erased
  return tf.where(drop[None, :, :, None], tf.zeros_like(out), out)


def _jitter(clip, factors):
  """Brightness, contrast, saturation (module docstring) on uint8 [T, H, W, 3]."""
  grey = tf.constant(GREY, tf.float32)
  x = tf.cast(clip, tf.float32)
  x = tf.clip_by_value(x * factors[0], 0.0, 255.0)
  mean = tf.reduce_mean(tf.reduce_sum(x * grey, -1), axis=[1, 2], keepdims=True)[..., None]
  x = tf.clip_by_value((x - mean) * factors[1] + mean, 0.0, 255.0)
  g = tf.reduce_sum(x * grey, -1, keepdims=True)
  x = tf.clip_by_value((x - g) * factors[2] + g, 0.0, 255.0)
  return tf.cast(tf.round(x), tf.uint8)


_flip_xla = tf.function(_flip, jit_compile=True, autograph=False)
# Separate functions rather than one fused computation: fused with the gathers or the
# reverse, the masked pass would index every byte through the pixel layout (several times
# slower than running it on its own).
_masked_xla = tf.function(_masked, jit_compile=True, autograph=False)
_resample_xla = tf.function(_resample, jit_compile=True, autograph=False)
_gather_flow_xla = tf.function(_gather_flow, jit_compile=True, autograph=False)
_jitter_xla = tf.function(_jitter, jit_compile=True, autograph=False)


# ------------------------------------------------------------------------ decoding


def png_sizes(frames) -> tf.Tensor:
  """[T, 2] int32 (height, width) of PNG frames ([T] string), read from the IHDR chunk."""
  header = tf.cast(tf.io.decode_raw(tf.strings.substr(frames, 16, 8), tf.uint8), tf.int32)
  weights = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int32)
  width = tf.reduce_sum(header[:, 0:4] * weights, -1)
  height = tf.reduce_sum(header[:, 4:8] * weights, -1)
  return tf.stack([height, width], 1)


def jpeg_sizes(frames, seq_len: int) -> tf.Tensor:
  """[T, 2] int32 (height, width) of JPEG frames ([T] string), from their headers."""
  shapes = [tf.io.extract_jpeg_shape(f, output_type=tf.int32)
            for f in tf.unstack(frames, num=seq_len)]
  return tf.stack(shapes)[:, :2]


def _decode_frame(frame, png: bool, window=None):
  """One frame, uint8 [h, w, 3]; a JPEG with `window` ([4] int32) only that window."""
  if png:
    return tf.io.decode_png(frame, channels=3)
  if window is None:
    return tf.io.decode_jpeg(frame, channels=3)
  return tf.io.decode_and_crop_jpeg(frame, window, channels=3)


def _decode_stack(frames, png: bool, seq_len: int, shape, window=None):
  """T frames stacked, uint8 [T, *shape, 3] (static shape)."""
  images = [_decode_frame(f, png, window) for f in tf.unstack(frames, num=seq_len)]
  return tf.ensure_shape(tf.stack(images), [seq_len] + list(shape) + [3])


# Per kernel number: its geometry (0 none, 1 flip, 2 the maps' gathers) and whether the
# masked pass follows.
_GEOMETRY = (0, 1, 0, 1, 2, 2)
_MASKED = (False, False, True, True, False, True)


def _pixel_work(images, plan: ClipPlan, row_origin, geometries, may_mask: bool):
  """The kernel the plan names, on decoded frames (`geometries`: the geometry numbers
  that can occur, static). Plain tf.cond choices: lowered to switches they cost a few
  microseconds, where one tf.switch_case over every kernel cost a tenth of the clip's
  decoding (benchmarks/input_pipeline.py)."""
  geometry = tf.gather(tf.constant(_GEOMETRY, tf.int32), plan.kernel)

  def resample():
    return _resample_xla(images, *_clamped_maps(plan.rows, plan.cols, row_origin),
                         row_origin)

  choices = [(2, resample), (1, lambda: _flip_xla(images)), (0, lambda: images)]
  choices = [(kind, fn) for kind, fn in choices if kind in geometries]
  out = choices[-1][1]()
  for kind, fn in reversed(choices[:-1]):
    out = tf.cond(geometry == kind, fn, lambda out=out: out)
  if not may_mask:
    return out
  masks = (plan.row_masks, plan.col_masks)
  return tf.cond(tf.gather(tf.constant(_MASKED), plan.kernel),
                 lambda: _apply_masks(out, *masks, _masked_xla), lambda: out)


def _static_rgb(frames, png: bool, plan: ClipPlan, spec: ClipSpec):
  """The clip of T frames that all have `spec.static_size` (module docstring): decoded
  (a JPEG crop window: only its rows), then the plan's kernel."""
  t, (h0, w0) = spec.seq_len, spec.static_size
  may_mask = spec.translate > 0 or (spec.random_erasing > 0 and not spec.color_jitter > 0)
  if (h0, w0) != (spec.height, spec.width):
    geometries = (2,)
  elif not spec.random:
    geometries = (0,)
  else:
    geometries = (0, 1, 2)

  def full():
    images = _decode_stack(frames, png, t, (h0, w0))
    return _pixel_work(images, plan, 0, geometries, may_mask)

  ch = _window_extent(h0, spec.crop_enlarge) if spec.crop_enlarge > 0 else h0
  if png or ch == h0:
    return full()

  def band():
    # Enlarged JPEG clips: only the window's rows, at full width (module docstring).
    window = plan.window * tf.constant([1, 0, 0, 0]) + tf.constant([0, 0, ch, w0])
    images = _decode_stack(frames, png, t, (ch, w0), window)
    return _pixel_work(images, plan, window[0], (2,), may_mask)

  return tf.cond(plan.window[2] < h0, band, full)


def _generic_rgb(frames, png: bool, windows, params, spec: ClipSpec):
  """Frames of any sizes, each decoded and resampled on its own (tf.map_fn)."""
  box = _pixel_box(params, spec)

  def one(args):
    frame, window = args
    rows, cols = sample_maps(window, params, spec)
    band = None
    origin = 0
    if not png and spec.crop_enlarge > 0:
      width = tf.io.extract_jpeg_shape(frame, output_type=tf.int32)[1]
      band, origin = tf.stack([window[0], 0, window[2], width]), window[0]
    image = _decode_frame(frame, png, band)[None]
    out = _resample(image, *_clamped_maps(rows, cols, origin), origin)
    return _apply_masks(out, *pixel_masks(box, spec, rows, cols), _masked)[0]

  signature = tf.TensorSpec([spec.height, spec.width, 3], tf.uint8)
  return tf.map_fn(one, (frames, windows), fn_output_signature=signature)


def _rgb(frames, png: bool, params, spec: ClipSpec, plan: Optional[ClipPlan]):
  """(clip, windows) of one format; see rgb_clip."""
  t = spec.seq_len
  sizes = png_sizes(frames) if png else jpeg_sizes(frames, t)

  def generic(frames, sizes, params):
    windows = crop_windows(sizes, params, spec)
    return _generic_rgb(frames, png, windows, params, spec), windows

  if spec.static_size is None:
    return generic(frames, sizes, params)
  if plan is None:
    plan = plan_clips(params, spec)
  windows = tf.tile(plan.window[None], [t, 1])
  uniform = tf.reduce_all(sizes == tf.constant(spec.static_size, tf.int32))
  # The generic path as one function call that is not inlined: inlined, the untaken
  # branch's ops (a tf.map_fn loop) would still be stepped through for every clip.
  generic_call = tf.function(generic, autograph=False,
                             experimental_attributes={"_noinline": True})
  return tf.cond(uniform, lambda: (_static_rgb(frames, png, plan, spec), windows),
                 lambda: generic_call(frames, sizes, params))


def occlusion_boxes(frame_keys, sizes, side: int, seed: int = 0) -> tf.Tensor:
  """int32 [T, 4] (y0, y1, x0, x1): the polluted protocol's box of each frame (item 7).

  Args:
    frame_keys: int [T, 2] (tracklet id, frame index in its tracklet).
    sizes: int [T, 2] (height, width) of the stored frames.
    side: the box's side in source pixels (clipped to the frame).
    seed: data.occlusion_seed.

  The corner is uniform over the positions where the box fits: (y0, x0) = floor(u * (h -
  side + 1), v * (w - side + 1)) with u, v the first two 24-bit groups of the FarmHash64
  fingerprint (`tf.fingerprint`, the same on every platform) of (seed, tracklet id, frame
  index) over 2^24: a fixed function of the frame, whatever clip, epoch or split holds it.
  """
  keys = tf.cast(frame_keys, tf.int64)
  data = tf.concat([tf.fill([tf.shape(keys)[0], 1], tf.constant(seed, tf.int64)), keys], 1)
  b = tf.cast(tf.fingerprint(data), tf.float32)                   # [T, 8] bytes
  scale = tf.constant([65536.0, 256.0, 1.0])
  u = tf.reduce_sum(b[:, 0:3] * scale, 1) / 16777216.0
  v = tf.reduce_sum(b[:, 3:6] * scale, 1) / 16777216.0
  sizes = tf.cast(sizes, tf.int32)
  sh = tf.minimum(side, sizes[:, 0])
  sw = tf.minimum(side, sizes[:, 1])
  y0 = tf.cast(tf.floor(u * tf.cast(sizes[:, 0] - sh + 1, tf.float32)), tf.int32)
  x0 = tf.cast(tf.floor(v * tf.cast(sizes[:, 1] - sw + 1, tf.float32)), tf.int32)
  return tf.stack([y0, y0 + sh, x0, x0 + sw], 1)


def occlude(clip, boxes, windows, params, spec: ClipSpec) -> tf.Tensor:
  """uint8 [T, H, W, 3] with 0 wherever an output pixel samples its frame's box ([T, 4]
  source-pixel (y0, y1, x0, x1); `windows` [T, 4] and `params` as given to the clip)."""
  rows, cols = sample_maps(windows, params, spec)                 # [T, H], [T, W]
  boxes = tf.cast(boxes, tf.int32)
  in_rows = (rows >= boxes[:, 0:1]) & (rows < boxes[:, 1:2])
  in_cols = (cols >= boxes[:, 2:3]) & (cols < boxes[:, 3:4])
  inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  return tf.where(inside, tf.zeros_like(clip), clip)


def _frame_sizes(frames, is_png, spec: ClipSpec) -> tf.Tensor:
  """[T, 2] (height, width) of the encoded frames, from their headers."""
  if spec.formats == ("png",):
    return png_sizes(frames)
  if "png" not in spec.formats:
    return jpeg_sizes(frames, spec.seq_len)
  return tf.cond(is_png, lambda: png_sizes(frames), lambda: jpeg_sizes(frames, spec.seq_len))


def rgb_clip(frames, is_png, params, spec: ClipSpec, plan: Optional[ClipPlan] = None,
             frame_keys=None) -> tuple[tf.Tensor, tf.Tensor]:
  """Decodes and augments T encoded frames ([T] string) into uint8 [T, H, W, 3].

  Returns (clip, windows): windows [T, 4] int32 (y0, x0, ch, cw) per frame, for the
  keypoints. `is_png` (scalar bool) chooses the decoder when `spec.formats` has both.
  `plan`: the clip's `plan_clips(params, spec)` when the caller computed it ahead (the
  training pipeline does, for a whole epoch); used only when every frame has
  `spec.static_size`. `frame_keys` int [T, 2] (tracklet id, frame index): required when
  `spec.occlusion_box` > 0 (`occlusion_boxes`).
  """
  frames = tf.ensure_shape(frames, [spec.seq_len])
  if spec.occlusion_box > 0 and frame_keys is None:
    raise ValueError("rgb_clip: data.occlusion_box is on, so frame_keys [T, 2] (tracklet "
                     "id, frame index) must say which frames these are.")
  if spec.formats == ("png",):
    clip, windows = _rgb(frames, True, params, spec, plan)
  elif "png" not in spec.formats:
    clip, windows = _rgb(frames, False, params, spec, plan)
  else:
    clip, windows = tf.cond(is_png, lambda: _rgb(frames, True, params, spec, plan),
                            lambda: _rgb(frames, False, params, spec, plan))
  if spec.color_jitter > 0:
    clip = _jitter_xla(tf.ensure_shape(clip, [spec.seq_len, spec.height, spec.width, 3]),
                       params["jitter"])
    clip = tf.cond(params["erase_box"][1] > params["erase_box"][0],
                   lambda: _apply_masks(clip, *pixel_masks(params["erase_box"], spec),
                                        _masked_xla),
                   lambda: clip)
  if spec.occlusion_box > 0:
    boxes = occlusion_boxes(frame_keys, _frame_sizes(frames, is_png, spec),
                            spec.occlusion_box, spec.occlusion_seed)
    clip = occlude(tf.ensure_shape(clip, [spec.seq_len, spec.height, spec.width, 3]), boxes,
                   windows, params, spec)
  return tf.ensure_shape(clip, [spec.seq_len, spec.height, spec.width, 3]), windows


def flow_gain(windows, params, spec: ClipSpec) -> tf.Tensor:
  """[T, 2] factors turning source-pixel flow (dx, dy) into output-pixel flow."""
  windows = tf.cast(windows, tf.float32)
  gx = spec.width / windows[:, 3]
  gx = tf.where(params["flip"], -gx, gx)
  return tf.stack([gx, spec.height / windows[:, 2]], 1)


def flow_clip(flow_frames, params, spec: ClipSpec) -> tf.Tensor:
  """Decodes quantised flow PNGs ([T] string) into float32 [T, H, W, 2] (pixels)."""
  t = spec.seq_len
  flow_frames = tf.ensure_shape(flow_frames, [t])
  sizes = png_sizes(flow_frames)
  windows = crop_windows(sizes, params, spec)
  box = params["erase_box"]

  def generic():
    def one(args):
      frame, window = args
      rows, cols = sample_maps(window, params, spec)
      gain = flow_gain(window[None], params, spec)
      image = tf.io.decode_png(frame, channels=3)[None]
      return _gather_flow(image, rows, cols, box, gain, spec.flow_scale)[0]

    signature = tf.TensorSpec([spec.height, spec.width, 2], tf.float32)
    return tf.map_fn(one, (flow_frames, windows), fn_output_signature=signature)

  if spec.static_size is None:
    out = generic()
  else:
    h0, w0 = spec.static_size

    def static():
      rows, cols = sample_maps(windows[0], params, spec)
      images = _decode_stack(flow_frames, True, t, (h0, w0))
      return _gather_flow_xla(images, rows, cols, box, flow_gain(windows, params, spec),
                              spec.flow_scale)

    uniform = tf.reduce_all(sizes == tf.constant([h0, w0], tf.int32))
    out = tf.cond(uniform, static, generic)
  return tf.ensure_shape(out, [t, spec.height, spec.width, 2])


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
