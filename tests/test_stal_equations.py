"""stal's equations and layers against independent references: eq. 7 (part boxes), ROI
pooling (NumPy loops, hand cases, XLA), eq. 9 and eq. 8 (the note's numeric case, NumPy
loops), eqs. 10-13 (the paper's gradients, corrected, and central differences), eq. 6,
STAN, the residual attention mask, BN-Inception widths and weight loading, and part boxes
that follow the keypoints through the clip augmentation."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import data_fixtures
from tfreid.backbones import bn_inception
from tfreid.data import augment, schema
from tfreid.layers import roi_pooling
from tfreid.layers import stal_attention as sa
from tfreid.losses import part_consistency


@pytest.fixture(autouse=True)
def _seeded():
  keras.utils.set_random_seed(0)


# ------------------------------------------------------------------------- eq. 7

def test_part_joint_lists_follow_the_paper():
  """P1..P6 of section III-B in the estimator's order J1..J14 (head top, neck, R sho, R elb,
  R wri, L sho, L elb, L wri, R hip, R knee, R ank, L hip, L knee, L ank)."""
  order = ["head_top", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow",
           "l_wrist", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle"]
  J = lambda *ks: {schema.JOINT_NAMES.index(order[k - 1]) for k in ks}
  paper = [J(1, 2, 3, 6), J(2, 3, 6, 9, 12), J(3, 4, 5), J(6, 7, 8), J(12, 13, 14),
           J(9, 10, 11)]
  ours = [set(joints) for _, joints in sa.BODY_PARTS]
  # The paper's P5 "right leg" holds J12..J14, P6 "left leg" J9..J11: the same two sets.
  assert ours[:4] == paper[:4] and {frozenset(ours[4]), frozenset(ours[5])} == {
      frozenset(paper[4]), frozenset(paper[5])}
  assert all(schema.JOINT_NAMES[j].startswith("r_") for j in sa.BODY_PARTS[4][1])


def test_part_boxes_min_max_fallback_and_clipping():
  h, w = 40, 20
  kp = np.zeros((3, 14, 3), np.float32)
  idx = {n: i for i, n in enumerate(schema.JOINT_NAMES)}
  # Frame 0: every joint visible at a distinct place.
  rng = np.random.default_rng(0)
  kp[0, :, 0] = rng.uniform(1, w - 2, 14)
  kp[0, :, 1] = rng.uniform(1, h - 2, 14)
  kp[0, :, 2] = 1.0
  # Frame 1: the right wrist hidden (v = 0), left arm entirely hidden, r_elbow outside.
  kp[1] = kp[0]
  kp[1, idx["r_wrist"], 2] = 0.0
  kp[1, [idx["l_shoulder"], idx["l_elbow"], idx["l_wrist"]], 2] = 0.0
  kp[1, idx["r_elbow"], :2] = (-5.0, h + 7.0)
  # Frame 2: no keypoints at all (zeros).
  boxes = sa.part_boxes(kp, h, w).numpy()
  assert boxes.shape == (3, 6, 4)
  for r, (_, joints) in enumerate(sa.BODY_PARTS):
    xs, ys = kp[0, list(joints), 0], kp[0, list(joints), 1]
    np.testing.assert_allclose(boxes[0, r], [xs.min(), ys.min(), xs.max(), ys.max()])
  right_arm = [idx["r_shoulder"], idx["r_elbow"]]
  xs, ys = kp[1, right_arm, 0], kp[1, right_arm, 1]
  np.testing.assert_allclose(boxes[1, 2], [0.0, ys.min(), xs.max(), h - 1.0])  # clipped
  np.testing.assert_allclose(boxes[1, 3], [0, 0, w - 1, h - 1])  # no visible joint
  np.testing.assert_allclose(boxes[2], np.tile([0, 0, w - 1, h - 1], (6, 1)))
  # A visibility threshold drops the joints at or below it.
  kp[0, idx["head_top"], 2] = 0.3
  thresholded = sa.part_boxes(kp, h, w, min_visibility=0.5).numpy()
  head = [idx["neck"], idx["r_shoulder"], idx["l_shoulder"]]
  np.testing.assert_allclose(thresholded[0, 0], [kp[0, head, 0].min(), kp[0, head, 1].min(),
                                                 kp[0, head, 0].max(), kp[0, head, 1].max()])
  with pytest.raises(ValueError, match="keypoints"):
    sa.part_boxes(np.zeros((3, 13, 3)), h, w)


# ------------------------------------------------------------------ ROI pooling

def np_roi_max_pool(x, boxes, pool, scale):
  """Fast R-CNN's ROIPoolingLayer forward, written as its C loops."""
  n, height, width, c = x.shape
  out = np.zeros((n, boxes.shape[1], pool, pool, c), np.float32)
  for i in range(n):
    for r in range(boxes.shape[1]):
      x1, y1, x2, y2 = [int(math.floor(v * scale + 0.5)) for v in boxes[i, r]]
      rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
      bh, bw = rh / pool, rw / pool
      for ph in range(pool):
        for pw in range(pool):
          hs = min(max(int(math.floor(ph * bh)) + y1, 0), height)
          he = min(max(int(math.ceil((ph + 1) * bh)) + y1, 0), height)
          ws = min(max(int(math.floor(pw * bw)) + x1, 0), width)
          we = min(max(int(math.ceil((pw + 1) * bw)) + x1, 0), width)
          if he <= hs or we <= ws:
            continue
          out[i, r, ph, pw] = x[i, hs:he, ws:we].reshape(-1, c).max(0)
  return out


def test_roi_pool_hand_case():
  """v[h, w] = 14 h + w, box x 32..95, y 48..175, scale 1/16 (the note's case)."""
  v = (14 * np.arange(14)[:, None] + np.arange(14)[None, :]).astype(np.float32)
  out = roi_pooling.roi_max_pool(v[None, :, :, None], np.array([[[32, 48, 95, 175]]]), 8,
                                 1 / 16).numpy()[0, 0, ..., 0]
  assert (out[0, 0], out[0, 7], out[7, 7]) == (58, 62, 160)


def test_roi_pool_matches_numpy_eager_and_xla():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 14, 10, 5)).astype(np.float32)
  corners = rng.uniform(-40, 260, (3, 4, 2, 2))                 # two (x, y) per box
  boxes = np.concatenate([corners.min(2), corners.max(2)], -1)  # x1, y1, x2, y2
  boxes[0, 0] = [300, 300, 400, 400]     # entirely outside: zeros
  boxes[0, 1] = [17, 17, 17, 17]         # a point
  want = np_roi_max_pool(x, boxes, 4, 1 / 16)
  np.testing.assert_allclose(roi_pooling.roi_max_pool(x, boxes, 4, 1 / 16).numpy(), want)
  compiled = tf.function(lambda a, b: roi_pooling.roi_max_pool(a, b, 4, 1 / 16),
                         jit_compile=True)
  np.testing.assert_allclose(compiled(x, boxes.astype(np.float32)).numpy(), want)
  assert not want[0, 0].any()
  # The gradient reaches each bin's maximum only.
  xt = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    y = tf.reduce_sum(roi_pooling.roi_max_pool(xt, boxes[:, 2:3], 4, 1 / 16))
  grad = tape.gradient(y, xt).numpy()
  filled = (np_roi_max_pool(x, boxes[:, 2:3], 4, 1 / 16) != 0).sum()
  assert grad.sum() == pytest.approx(filled)   # one unit per non-empty bin and channel
  assert set(np.unique(grad)) <= set(range(0, 17))


def test_roi_pool_mirrors_with_the_map():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 12, 12, 2)).astype(np.float32)
  boxes = np.array([[[1, 2, 6, 9], [0, 0, 11, 11], [3, 3, 4, 8]]], np.float32)
  mirrored = boxes.copy()
  mirrored[..., 0], mirrored[..., 2] = 11 - boxes[..., 2], 11 - boxes[..., 0]
  a = roi_pooling.roi_max_pool(x, boxes, 4, 1.0).numpy()
  b = roi_pooling.roi_max_pool(x[:, :, ::-1], mirrored, 4, 1.0).numpy()
  np.testing.assert_array_equal(a, b[:, :, :, ::-1])
  with pytest.raises(ValueError, match="boxes"):
    roi_pooling.roi_max_pool(x, boxes[0], 4, 1.0)


# --------------------------------------------------------------- eqs. 8 and 9

A_I = np.array([[0.8, 0.2], [0.4, 0.6]], np.float32)               # [t][r]
F_I = np.array([[[1, 0], [2, 2]], [[0, 1], [0, 0]]], np.float32)   # [t][r][d]
F_J = np.array([[0, 0], [1, 1]], np.float32)                       # [r][d], already eq. 9


def np_psi(fi, ai, fj, aj):
  """Eq. 9 then eq. 8 with loops; f [T, R, D], a [T, R]."""
  def agg(f, a):
    return np.array([sum(a[t, r] * f[t, r] for t in range(len(a))) / a[:, r].sum()
                     for r in range(a.shape[1])])
  gi, gj = agg(fi, ai), agg(fj, aj)
  bi, bj = ai.mean(0), aj.mean(0)
  return sum(bi[r] * bj[r] / (np.abs(bi).sum() * np.abs(bj).sum())
             * np.linalg.norm(gi[r] - gj[r]) for r in range(len(bi)))


def _psi_tf(a_i):
  f_i = sa.temporal_aggregation(tf.constant(F_I[None]), a_i[None])
  a_j = tf.fill([1, 2, 2], 0.5)
  f_j = sa.temporal_aggregation(tf.constant(np.stack([F_J, F_J])[None]), a_j)
  return sa.attention_part_distance(f_i, tf.reduce_sum(a_i, 0)[None], f_j,
                                    tf.reduce_sum(a_j[0], 0)[None])[0, 0]


def test_eq9_and_eq8_numeric_case():
  agg = sa.temporal_aggregation(tf.constant(F_I[None]), tf.constant(A_I[None])).numpy()[0]
  np.testing.assert_allclose(agg, [[2 / 3, 1 / 3], [0.5, 0.5]], rtol=1e-6)
  psi = _psi_tf(tf.constant(A_I)).numpy()
  assert psi == pytest.approx(0.365028, abs=1e-6)
  assert psi == pytest.approx(np_psi(F_I, A_I, np.stack([F_J, F_J]), np.full((2, 2), .5)),
                              abs=1e-6)
  # Scale invariance, and uniform scores give sum_r ||delta|| / R^2.
  assert _psi_tf(tf.constant(3 * A_I)).numpy() == pytest.approx(psi, abs=1e-6)
  uniform = _psi_tf(tf.ones((2, 2))).numpy()
  mean_f = F_I.mean(0)
  assert uniform == pytest.approx(sum(np.linalg.norm(mean_f[r] - F_J[r]) for r in range(2))
                                  / 4, abs=1e-6)


def test_eq8_pairwise_matches_numpy_loops():
  rng = np.random.default_rng(4)
  fa, fb = rng.normal(size=(3, 8, 6, 5)), rng.normal(size=(4, 8, 6, 5))
  aa, ab = rng.uniform(0.1, 1, (3, 8, 6)), rng.uniform(0.1, 1, (4, 8, 6))
  pa = sa.temporal_aggregation(tf.constant(fa, tf.float32), tf.constant(aa, tf.float32))
  pb = sa.temporal_aggregation(tf.constant(fb, tf.float32), tf.constant(ab, tf.float32))
  got = sa.attention_part_distance(pa, aa.sum(1), pb, ab.sum(1)).numpy()
  want = np.array([[np_psi(fa[i], aa[i], fb[j], ab[j]) for j in range(4)] for i in range(3)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_underflowed_scores_give_the_mean_and_equal_part_weights_not_nan():
  """A part whose sigmoid scores all underflow to 0 has no eq. 9 average: its feature is the
  plain mean over frames; a tracklet whose part weights are all 0 weighs the parts equally in
  eq. 8. Other parts keep eq. 9 exactly, and every output is finite."""
  rng = np.random.default_rng(7)
  f = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  a = rng.uniform(0.1, 1, (2, 5, 6)).astype(np.float32)
  a[0, :, 2] = 0.0          # one part of tracklet 0
  a[1] = 0.0                # every part of tracklet 1
  parts = sa.temporal_aggregation(tf.constant(f), tf.constant(a)).numpy()
  assert np.isfinite(parts).all()
  np.testing.assert_allclose(parts[0, 2], f[0, :, 2].mean(0), rtol=1e-6)
  np.testing.assert_allclose(parts[1], f[1].mean(0), rtol=1e-6)
  want = (a[0, :, 0, None] * f[0, :, 0]).sum(0) / a[0, :, 0].sum()
  np.testing.assert_allclose(parts[0, 0], want, rtol=1e-5)
  got = sa.attention_part_distance(parts[1:], a[1].sum(0)[None], parts[:1],
                                   a[0].sum(0)[None]).numpy()[0, 0]
  wb = a[0].sum(0) / a[0].sum()
  want = sum((1 / 6) * wb[r] * np.linalg.norm(parts[1, r] - parts[0, r]) for r in range(6))
  assert got == pytest.approx(want, rel=1e-5)


def test_eqs_10_to_13_gradient_of_psi():
  """Autodiff of psi w.r.t. a_i against the note's values, the paper's chain (eq. 13) with
  the corrected eq. 12, (delta_rr' - a_n^r') / (T ||abar||), and central differences."""
  a = tf.constant(A_I)
  with tf.GradientTape() as tape:
    tape.watch(a)
    psi = _psi_tf(a)
  grad = tape.gradient(psi, a).numpy()
  np.testing.assert_allclose(grad, [[0.041093, -0.536067], [-0.070711, 0.171039]],
                             atol=2e-6)
  # Eq. 13 from eqs. 10-12.
  T, R = A_I.shape
  f_r = (A_I[..., None] * F_I).sum(0) / A_I.sum(0)[:, None]
  abar = A_I.mean(0)
  an_i, an_j = abar / abar.sum(), np.full(R, 0.5)
  chain = np.zeros_like(A_I)
  for t in range(T):
    for r in range(R):
      diff = f_r[r] - F_J[r]
      dpsi_df = an_i[r] * an_j[r] * diff / np.linalg.norm(diff)                   # eq. 10
      df_da = (F_I[t, r] - f_r[r]) / A_I[:, r].sum()                              # eq. 11
      total = dpsi_df @ df_da
      for q in range(R):
        dpsi_dan = an_j[q] * np.linalg.norm(f_r[q] - F_J[q])                      # eq. 10
        dan_da = ((q == r) - an_i[q]) / (T * abar.sum())                         # eq. 12
        total += dpsi_dan * dan_da
      chain[t, r] = total                                                         # eq. 13
  np.testing.assert_allclose(grad, chain, atol=1e-5)
  numeric = np.zeros_like(A_I, np.float64)
  for t in range(T):
    for r in range(R):
      up, down = A_I.astype(np.float64).copy(), A_I.astype(np.float64).copy()
      up[t, r] += 1e-4
      down[t, r] -= 1e-4
      fj = np.stack([F_J, F_J]).astype(np.float64)
      numeric[t, r] = (np_psi(F_I, up, fj, np.full((2, 2), .5))
                       - np_psi(F_I, down, fj, np.full((2, 2), .5))) / 2e-4
  np.testing.assert_allclose(grad, numeric, atol=1e-4)


# ------------------------------------------------------------------------ eq. 6

def test_eq6_consistency_against_numpy():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(3, 2, 6, 5)).astype(np.float32)
  labels = np.array([4, 0, 2])
  total = 0.0
  for r in range(6):
    ces = []
    for i in range(3):
      for t in range(2):
        z = logits[i, t, r]
        ces.append(-(z[labels[i]] - np.log(np.exp(z).sum())))
    total += np.mean(ces)
  got = part_consistency.part_consistency_loss(logits, labels).numpy()
  assert got == pytest.approx(total, rel=1e-5)
  with pytest.raises(ValueError, match=r"\[B, T, R, N\]"):
    part_consistency.part_consistency_loss(logits[0], labels)


# ------------------------------------------------------------------ STAN, RAN

def test_stan_scores_are_per_frame_and_permutation_equivariant():
  layer = sa.SpatialTemporalAttention(6, 8)
  x = np.random.default_rng(6).normal(size=(2, 5, 7, 4, 3)).astype(np.float32)
  s = layer(x).numpy()
  assert s.shape == (2, 5, 6) and ((s > 0) & (s < 1)).all()
  perm = [3, 0, 4, 1, 2]
  np.testing.assert_allclose(layer(x[:, perm]).numpy(), s[:, perm], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(layer(x[:1, 2:3]).numpy()[0, 0], s[0, 2], rtol=1e-5, atol=1e-6)
  a = s / s.sum(axis=(1, 2), keepdims=True)  # the paper's L1-normalised map
  np.testing.assert_allclose(a.sum(axis=(1, 2)), 1.0, rtol=1e-6)


def test_residual_attention_mask_shape_and_range():
  layer = sa.ResidualAttentionMask(12, width_divisor=8)
  for h, w in ((14, 14), (8, 4), (7, 5)):
    m = layer(np.random.default_rng(7).normal(size=(2, h, w, 9)).astype(np.float32)).numpy()
    assert m.shape == (2, h, w, 12) and ((m > 0) & (m < 1)).all()


# -------------------------------------------------------------- BN-Inception

def test_bn_inception_widths_and_strides():
  """Table I: 3a 256, 3b 320, 3c 576 (/2), 4a-4d 576, 4e 1024 (/2), 5a 5b 1024."""
  assert [bn_inception.module_channels(m) for m in bn_inception.MODULE_ORDER] == [
      256, 320, 576, 576, 576, 576, 576, 1024, 1024, 1024]
  low = bn_inception.low_level("4b", width_divisor=16)
  x = np.zeros((1, 224, 224, 3), np.float32)
  y = low(x)
  assert y.shape == (1, 14, 14, bn_inception.module_channels("4b", 16))
  high = bn_inception.modules("4c", "5b", 16)
  assert high(y).shape == (1, 7, 7, bn_inception.module_channels("5b", 16))
  with pytest.raises(ValueError, match="comes before"):
    bn_inception.modules("5a", "4c")


def test_bn_inception_loads_caffe_layout_weights(tmp_path):
  """A file in WEIGHTS_FORMAT, written here: every ConvBN takes its Caffe layer's blobs
  (kernels transposed from [out, in, kh, kw]), part copies included."""
  low = bn_inception.low_level("4b")
  parts = [bn_inception.modules("4c", "4e", name=f"p{i}") for i in range(2)]
  low.build((None, None, None, 3))
  for p in parts:
    p.build((None, 8, 8, 576))
  rng = np.random.default_rng(8)
  blobs = {}
  for layer in bn_inception.conv_bn_layers([low] + parts):
    kh, kw, cin, cout = layer.conv.kernel.shape
    name = layer.caffe_name
    blobs[f"{name}/weights"] = rng.normal(size=(cout, cin, kh, kw)).astype(np.float32)
    blobs[f"{name}/bias"] = rng.normal(size=cout).astype(np.float32)
    for key in ("scale", "shift", "mean", "variance"):
      blobs[f"{name}_bn/{key}"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
  path = str(tmp_path / "bn_inception.npz")
  np.savez(path, **blobs)
  n = bn_inception.load_caffe_weights([low] + parts, path)
  assert n == len(bn_inception.conv_bn_layers([low] + parts))
  conv1 = [c for c in bn_inception.conv_bn_layers(low) if c.caffe_name == "conv1/7x7_s2"][0]
  assert conv1.caffe_name == "conv1/7x7_s2"
  np.testing.assert_array_equal(conv1.conv.kernel.numpy()[2, 5, 1, 7],
                                blobs["conv1/7x7_s2/weights"][7, 1, 2, 5])
  for p in parts:
    layer = bn_inception.conv_bn_layers(p)[-1]
    np.testing.assert_array_equal(layer.bn.moving_variance.numpy(),
                                  blobs[f"{layer.caffe_name}_bn/variance"])
  del blobs["inception_4e/3x3/bias"]
  np.savez(path, **blobs)
  with pytest.raises(ValueError, match="inception_4e/3x3/bias"):
    bn_inception.load_caffe_weights(parts, path)
  small = bn_inception.low_level("4b", width_divisor=2)
  small.build((None, None, None, 3))
  with pytest.raises(ValueError, match="width_divisor"):
    bn_inception.load_caffe_weights(small, path)


# ---------------------------------------------- boxes through the augmentation

def test_part_boxes_follow_the_keypoints_through_crop_resize_and_flip():
  """Each part's box painted its own colour; the clip augmented (crop, resize, flip) with
  its keypoints; the boxes of the augmented keypoints pool (scale 1) their own colour."""
  h, w, T = 64, 32, 1
  idx = {n: i for i, n in enumerate(schema.JOINT_NAMES)}
  kp = np.zeros((T, 14, 3), np.float32)
  spots = {"head_top": (16, 2), "neck": (16, 10), "r_shoulder": (10, 12),
           "l_shoulder": (22, 12), "r_elbow": (4, 20), "r_wrist": (2, 28),
           "l_elbow": (28, 20), "l_wrist": (30, 28), "r_hip": (12, 32), "l_hip": (20, 32),
           "r_knee": (10, 46), "r_ankle": (9, 60), "l_knee": (22, 46), "l_ankle": (23, 60)}
  for name, (x, y) in spots.items():
    kp[0, idx[name]] = (x, y, 1.0)
  source = sa.part_boxes(kp, h, w).numpy()[0]
  colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255],
                      [255, 0, 255]], np.uint8)
  # Paint limbs after the torso so each box's pixels are mostly its own colour; keep the
  # paint order's overlaps out of the check by pooling only arms and legs.
  image = np.zeros((h, w, 3), np.uint8)
  for r in (0, 1, 2, 3, 4, 5):
    x1, y1, x2, y2 = source[r].astype(int)
    image[y1:y2 + 1, x1:x2 + 1] = colours[r]
  frames = tf.constant([data_fixtures._encode(image, "png")])
  spec = augment.ClipSpec(h, w, T, crop_enlarge=0.125, flip=True, formats=("png",),
                          static_size=(h, w))
  checked_flip = False
  for seed in range(6):
    params = augment.draw_params(tf.constant([seed, 3], tf.int64), spec)
    clip, windows = augment.rgb_clip(frames, True, params, spec)
    moved = augment.transform_keypoints(kp, [1], windows, params, spec)
    boxes = sa.part_boxes(moved, h, w).numpy()                    # [T, R, 4]
    pooled = roi_pooling.roi_max_pool(tf.cast(clip, tf.float32), boxes, 4, 1.0).numpy()
    flipped = bool(params["flip"].numpy())
    for r in (2, 3, 4, 5):
      # After a flip the right arm's box holds what was the left arm (the joint swap).
      want = colours[{2: 3, 3: 2, 4: 5, 5: 4}[r] if flipped else r]
      bins = pooled[0, r].reshape(-1, 3)
      hits = np.mean(np.all(np.abs(bins - want) < 40, -1))
      assert hits >= 0.9, (seed, r, flipped, hits)
    checked_flip |= flipped
  assert checked_flip
