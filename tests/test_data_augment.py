"""Clip-consistent augmentation (tfreid/data/augment.py) against a numpy reference."""

import math

import cv2
import numpy as np
import pytest
import tensorflow as tf

import data_fixtures
from tfreid.data import augment
from tfreid.data import schema

H, W, T = 32, 16, 4
ALL_ON = dict(crop_enlarge=0.125, translate=0.1, flip=True, random_erasing=0.5)


def frames_of(sizes, fmt="png", seed=0):
  rng = np.random.default_rng(seed)
  images = [data_fixtures.make_frame("texture", 0, t, h, w, rng) for t, (h, w) in
            enumerate(sizes)]
  return images, tf.constant([data_fixtures._encode(im, fmt) for im in images])


def np_params(params):
  return {k: v.numpy() for k, v in params.items()}


def np_window(h, w, p, e):
  if e > 0 and p["enlarge"]:
    ch, cw = max(1, math.floor(h / (1 + e) + 0.5)), max(1, math.floor(w / (1 + e) + 0.5))
    free = np.array([h - ch + 1, w - cw + 1], np.float32)
    y0, x0 = np.minimum(np.floor(p["crop_u"].astype(np.float32) * free).astype(int), free - 1)
    return int(y0), int(x0), ch, cw
  return 0, 0, h, w


def np_maps(window, p, out_h=H, out_w=W):
  """Absolute source rows/cols of every output pixel (-1 outside), the documented rule."""
  y0, x0, ch, cw = window
  ty, tx = p["shift"]
  rows = [y0 + (2 * (i - ty) + 1) * ch // (2 * out_h) if 0 <= i - ty < out_h else -1
          for i in range(out_h)]
  cols = []
  for j in range(out_w):
    jf = out_w - 1 - j if p["flip"] else j
    jp = jf - tx
    cols.append(x0 + (2 * jp + 1) * cw // (2 * out_w) if 0 <= jp < out_w else -1)
  return np.array(rows), np.array(cols)


def np_resample(image, rows, cols, fill, box):
  out = np.zeros((len(rows), len(cols), image.shape[-1]), image.dtype)
  for i, r in enumerate(rows):
    for j, c in enumerate(cols):
      if r >= 0 and c >= 0:
        out[i, j] = image[r, c]
  y0, y1, x0, x1 = box
  out[y0:y1, x0:x1] = fill
  return out


def reference_clip(images, p, e):
  out = []
  for image in images:
    window = np_window(image.shape[0], image.shape[1], p, e)
    rows, cols = np_maps(window, p)
    out.append(np_resample(image, rows, cols, augment.ERASE_FILL, p["erase_box"]))
  return np.stack(out)


@pytest.mark.parametrize("size,static", [((40, 20), True), ((40, 20), False),
                                         ((32, 16), True)])
def test_png_clip_matches_reference(size, static):
  images, frames = frames_of([size] * T)
  spec = augment.ClipSpec(H, W, T, **ALL_ON, static_size=size if static else None,
                          formats=("png",))
  seen = set()
  for seed in range(8):
    params = augment.draw_params(tf.constant([seed, 1], tf.int64), spec)
    p = np_params(params)
    seen.add((bool(p["enlarge"]), bool(p["flip"]), bool(p["erase_box"][1] > 0)))
    clip, windows = augment.rgb_clip(frames, True, params, spec)
    assert clip.dtype == tf.uint8 and clip.shape == (T, H, W, 3)
    np.testing.assert_array_equal(clip.numpy(), reference_clip(images, p, 0.125),
                                  err_msg=f"seed {seed}")
    np.testing.assert_array_equal(windows.numpy()[0], np_window(*size, p, 0.125))
  assert {e for e, _, _ in seen} == {True, False} and {f for _, f, _ in seen} == {True, False}
  assert {r for _, _, r in seen} == {True, False}


def encode_jpeg(image, subsampling):
  """JPEG bytes of an RGB frame with the given chroma subsampling (cv2 flag suffix)."""
  factor = getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{subsampling}")
  ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]),
                          [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                           factor])
  assert ok
  return data.tobytes()


@pytest.mark.parametrize("subsampling", ["420", "422", "444"])
def test_jpeg_row_band_decodes_to_the_full_decode_rows(subsampling):
  # The JPEG path decodes only the rows of a crop window, at full width; this is what makes
  # its clips equal to the documented definition (a window of the full decoded frame).
  rng = np.random.default_rng(5)
  for h, w in [(40, 20), (77, 45), (256, 128)]:
    image = data_fixtures.make_frame("texture", 0, 0, h, w, rng)
    frame = encode_jpeg(image, subsampling)
    full = tf.io.decode_jpeg(frame, channels=3).numpy()
    for _ in range(12):
      ch = int(rng.integers(1, h + 1))
      y0 = int(rng.integers(0, h - ch + 1))
      band = tf.io.decode_and_crop_jpeg(frame, [y0, 0, ch, w], channels=3).numpy()
      np.testing.assert_array_equal(band, full[y0:y0 + ch], err_msg=f"{h}x{w} y0={y0}")


def test_jpeg_clip_matches_reference_and_mixed_sizes_take_the_plain_path():
  sizes = [(40, 20)] * T
  _, frames = frames_of(sizes, "jpeg")
  full = [tf.io.decode_jpeg(f, channels=3).numpy() for f in frames]
  spec = augment.ClipSpec(H, W, T, **ALL_ON, static_size=(40, 20))
  seen = set()
  for seed in range(8):
    params = augment.draw_params(tf.constant([seed, 2], tf.int64), spec)
    p = np_params(params)
    seen.add(bool(p["enlarge"]))
    clip, windows = augment.rgb_clip(frames, False, params, spec)
    # Exactly the resampled window of the fully decoded frames (only its rows are decoded).
    np.testing.assert_array_equal(clip.numpy(), reference_clip(full, p, 0.125),
                                  err_msg=f"seed {seed}")
    np.testing.assert_array_equal(windows.numpy(), [np_window(40, 20, p, 0.125)] * T)
  assert seen == {True, False}
  # Frames of different sizes in one clip (DukeMTMC-VideoReID): per-frame windows; a
  # dataset mixing JPEG and PNG tracklets picks the decoder per tracklet.
  mixed = [(40, 20), (36, 24), (40, 20), (48, 16)]
  images, png_frames = frames_of(mixed, "png")
  _, jpeg_frames = frames_of(mixed, "jpeg")
  decoded = [tf.io.decode_jpeg(f, channels=3).numpy() for f in jpeg_frames]
  spec = augment.ClipSpec(H, W, T, **ALL_ON, static_size=(40, 20), formats=("jpeg", "png"))
  for seed in range(4):
    params = augment.draw_params(tf.constant([seed, 3], tf.int64), spec)
    p = np_params(params)
    clip, windows = augment.rgb_clip(png_frames, tf.constant(True), params, spec)
    np.testing.assert_array_equal(clip.numpy(), reference_clip(images, p, 0.125))
    assert [tuple(w) for w in windows.numpy()] == [np_window(h, w, p, 0.125) for h, w in mixed]
    clip, _ = augment.rgb_clip(jpeg_frames, tf.constant(False), params, spec)
    np.testing.assert_array_equal(clip.numpy(), reference_clip(decoded, p, 0.125))


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_every_kernel_of_the_static_path_matches_reference(fmt):
  # Frames already (H, W): the plan picks no work, a flip, erasing, both, or the gathers
  # (with erasing); each must give the documented clip.
  _, frames = frames_of([(H, W)] * T, fmt)
  full = [tf.io.decode_image(f, channels=3).numpy() for f in frames]
  spec = augment.ClipSpec(H, W, T, crop_enlarge=0.125, flip=True, random_erasing=0.5,
                          static_size=(H, W), formats=(fmt,))
  kernels = set()
  for seed in range(40):
    params = augment.draw_params(tf.constant([seed, 11], tf.int64), spec)
    p = np_params(params)
    kernel = int(augment.plan_clips(params, spec).kernel)
    kernels.add(kernel)
    identity = not p["enlarge"] and not p["flip"] and not p["erase_box"].any()
    assert (kernel == augment.KERNEL_NONE) == identity
    clip, _ = augment.rgb_clip(frames, fmt == "png", params, spec)
    np.testing.assert_array_equal(clip.numpy(), reference_clip(full, p, 0.125),
                                  err_msg=f"seed {seed}, kernel {kernel}")
  assert kernels == set(range(augment.NUM_KERNELS))


def test_clips_drawn_together_equal_clips_drawn_one_by_one():
  # The training pipeline draws the parameters and plans of a whole epoch at once.
  spec = augment.ClipSpec(H, W, T, **ALL_ON, color_jitter=0.3, static_size=(40, 20))
  u = tf.random.stateless_uniform([6, augment.NUM_DRAWS], [3, 4])
  batched = augment.params_from_uniform(u, spec)
  plans = augment.plan_clips(batched, spec).as_dict()
  for n in range(6):
    one = augment.params_from_uniform(u[n], spec)
    for key, value in one.items():
      np.testing.assert_array_equal(batched[key][n].numpy(), value.numpy(), err_msg=key)
    for key, value in augment.plan_clips(one, spec).as_dict().items():
      np.testing.assert_array_equal(plans[key][n].numpy(), value.numpy(), err_msg=key)
  seed = tf.constant([8, 9], tf.int64)
  drawn = augment.draw_params(seed, spec)
  expected = augment.params_from_uniform(
      tf.random.stateless_uniform([augment.NUM_DRAWS], seed), spec)
  for key in drawn:
    np.testing.assert_array_equal(drawn[key].numpy(), expected[key].numpy())


def test_pixel_masks():
  spec = augment.ClipSpec(6, 4, 1)
  rows = tf.constant([-1, 0, 1, 2, 3, -1])
  cols = tf.constant([1, 2, 3, -1])
  row_masks, col_masks = augment.pixel_masks(tf.constant([2, 4, 1, 3]), spec, rows, cols)
  np.testing.assert_array_equal(row_masks.numpy() // 255, [[0, 1, 1, 1, 1, 0],
                                                            [0, 0, 1, 1, 0, 0]])
  np.testing.assert_array_equal(col_masks.numpy() // 255, [[1] * 9 + [0] * 3,
                                                            [0] * 3 + [1] * 6 + [0] * 3])
  row_masks, col_masks = augment.pixel_masks(tf.zeros([4], tf.int32), spec)
  assert (row_masks[0].numpy() == 255).all() and not row_masks[1].numpy().any()
  assert (col_masks[0].numpy() == 255).all() and not col_masks[1].numpy().any()


def test_one_draw_per_clip():
  image = data_fixtures.make_frame("texture", 0, 0, 40, 20, np.random.default_rng(1))
  frames = tf.constant([data_fixtures._encode(image, "jpeg")] * T)
  spec = augment.ClipSpec(H, W, T, **ALL_ON, static_size=(40, 20))
  clips = []
  for seed in range(6):
    params = augment.draw_params(tf.constant([seed, 9], tf.int64), spec)
    clip = augment.rgb_clip(frames, False, params, spec)[0].numpy()
    for t in range(1, T):  # every frame got the same crop, flip, translation and erasing
      np.testing.assert_array_equal(clip[t], clip[0])
    clips.append(clip[0])
  assert len({c.tobytes() for c in clips}) == len(clips)  # and clips differ


def test_draws_follow_the_config():
  spec = augment.ClipSpec(H, W, T, **ALL_ON)
  draw = tf.function(lambda s: augment.draw_params(s, spec), autograph=False)
  draws = [np_params(draw(tf.constant([s, 0], tf.int64))) for s in range(400)]
  for name in ("enlarge", "flip"):
    assert 0.4 < np.mean([d[name] for d in draws]) < 0.6
  boxes = np.array([d["erase_box"] for d in draws])
  erased = boxes[:, 1] > boxes[:, 0]
  assert 0.4 < erased.mean() < 0.6
  eh, ew = boxes[erased, 1] - boxes[erased, 0], boxes[erased, 3] - boxes[erased, 2]
  area = eh * ew / (H * W)
  assert area.min() > 0.015 and area.max() < 0.45  # U(0.02, 0.4) of the frame, rounded
  assert (eh < H).all() and (ew < W).all() and (boxes[erased, 0] >= 0).all()
  assert (boxes[erased, 1] <= H).all() and (boxes[erased, 3] <= W).all()
  shifts = np.array([d["shift"] for d in draws])
  assert np.abs(shifts[:, 0]).max() == round(0.1 * H) and np.abs(shifts[:, 1]).max() <= 2
  off = augment.ClipSpec(H, W, T)
  quiet = np_params(augment.draw_params(tf.constant([1, 2], tf.int64), off))
  assert not quiet["enlarge"] and not quiet["flip"] and not quiet["erase_box"].any()


def test_flow_follows_geometry():
  h, w = 40, 20
  flow = [data_fixtures.flow_field(t, h, w) for t in range(T)]
  quantised = [data_fixtures.quantise_flow(f) for f in flow]
  encoded = tf.constant([data_fixtures._encode(q, "png") for q in quantised])
  spec = augment.ClipSpec(H, W, T, **ALL_ON, static_size=(h, w),
                          flow_scale=data_fixtures.FLOW_SCALE)
  for seed in range(6):
    params = augment.draw_params(tf.constant([seed, 4], tf.int64), spec)
    p = np_params(params)
    out = augment.flow_clip(encoded, params, spec).numpy()
    window = np_window(h, w, p, 0.125)
    rows, cols = np_maps(window, p)
    gain = np.array([W / window[3] * (-1 if p["flip"] else 1), H / window[2]], np.float32)
    for t in range(T):
      source = (quantised[t][..., :2].astype(np.float32) - 128) / data_fixtures.FLOW_SCALE
      expected = np_resample(source * gain, rows, cols, 0.0, p["erase_box"])
      np.testing.assert_allclose(out[t], expected, atol=1e-5)
  # Flip only, same size: dx mirrored and negated, dy mirrored.
  spec = augment.ClipSpec(h, w, T, flip=True, static_size=(h, w),
                          flow_scale=data_fixtures.FLOW_SCALE)
  params = augment.identity_params()
  params["flip"] = tf.constant(True)
  out = augment.flow_clip(encoded, params, spec).numpy()
  source = (quantised[0][..., :2].astype(np.float32) - 128) / data_fixtures.FLOW_SCALE
  np.testing.assert_allclose(out[0, :, :, 0], -source[:, ::-1, 0], atol=1e-6)
  np.testing.assert_allclose(out[0, :, :, 1], source[:, ::-1, 1], atol=1e-6)
  np.testing.assert_allclose(source, flow[0], atol=0.5 / data_fixtures.FLOW_SCALE)


def test_keypoints_flip_mirrors_and_swaps_sides():
  rng = np.random.default_rng(0)
  kp = np.stack([rng.uniform(0, W - 1, (T, 14)), rng.uniform(0, H - 1, (T, 14)),
                 rng.uniform(0.5, 1, (T, 14))], -1).astype(np.float32)
  present = np.array([1, 0, 1, 1])
  spec = augment.ClipSpec(H, W, T, flip=True)
  params = augment.identity_params()
  params["flip"] = tf.constant(True)
  windows = tf.constant([[0, 0, H, W]] * T)
  out = augment.transform_keypoints(kp, present, windows, params, spec).numpy()
  perm = list(schema.FLIP_PERMUTATION)
  expected = np.stack([W - 1 - kp[:, perm, 0], kp[:, perm, 1], kp[:, perm, 2]], -1)
  expected[1] = 0  # frame without keypoints
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # "r_ankle" of the flipped clip is the mirrored "l_ankle".
  assert schema.JOINT_NAMES[perm[0]] == "l_ankle"


def test_keypoints_land_on_the_pixels_they_were_on():
  h, w = H, W  # enlarging or not, every source pixel of the window has output pixels
  spec = augment.ClipSpec(H, W, 1, **ALL_ON)
  rng = np.random.default_rng(3)
  for seed in range(10):
    params = augment.draw_params(tf.constant([seed, 5], tf.int64), spec)
    p = np_params(params)
    window = np_window(h, w, p, 0.125)
    rows, cols = np_maps(window, p)
    # Joints at pixel centres of the source window.
    pts = np.stack([rng.integers(window[1], window[1] + window[3], 14),
                    rng.integers(window[0], window[0] + window[2], 14)], -1).astype(np.float32)
    kp = np.concatenate([pts, np.ones((14, 1), np.float32)], -1)[None]
    out = augment.transform_keypoints(kp, [1], tf.constant([window]), params, spec).numpy()[0]
    if p["flip"]:  # undo the joint swap to compare joint by joint
      out = out[np.argsort(schema.FLIP_PERMUTATION)]
    for (x, y), (xo, yo, _) in zip(pts, out):
      i, j = int(round(yo)), int(round(xo))
      if 0 <= i < H and 0 <= j < W:
        assert rows[i] == y and cols[j] == x


def test_color_jitter_matches_reference():
  images, frames = frames_of([(H, W)] * T)
  spec = augment.ClipSpec(H, W, T, color_jitter=0.4, random_erasing=1.0, static_size=(H, W),
                          formats=("png",))
  params = augment.draw_params(tf.constant([1, 1], tf.int64), spec)
  p = np_params(params)
  clip = augment.rgb_clip(frames, True, params, spec)[0].numpy()
  grey = np.array(augment.GREY, np.float32)
  expected = []
  for image in images:
    x = np.clip(image.astype(np.float32) * p["jitter"][0], 0, 255)
    m = (x @ grey).mean()
    x = np.clip((x - m) * p["jitter"][1] + m, 0, 255)
    g = (x @ grey)[..., None]
    x = np.clip((x - g) * p["jitter"][2] + g, 0, 255)
    x = np.round(x).astype(np.uint8)
    y0, y1, x0, x1 = p["erase_box"]
    x[y0:y1, x0:x1] = augment.ERASE_FILL
    expected.append(x)
  assert not np.allclose(p["jitter"], 1.0)
  assert np.abs(clip.astype(int) - np.stack(expected)).max() <= 1


def test_augmentation_inside_tf_data():
  images, frames = frames_of([(40, 20)] * T, "jpeg")
  spec = augment.ClipSpec(H, W, T, **ALL_ON, static_size=(40, 20))

  def make(seed):
    params = augment.draw_params(tf.stack([seed, tf.constant(7, tf.int64)]), spec)
    return augment.rgb_clip(frames, False, params, spec)[0]

  ds = tf.data.Dataset.range(3).map(tf.autograph.experimental.do_not_convert(make),
                                    num_parallel_calls=2, deterministic=True)
  for seed, clip in enumerate(ds):
    eager = make(tf.constant(seed, tf.int64))
    np.testing.assert_array_equal(clip.numpy(), eager.numpy())
