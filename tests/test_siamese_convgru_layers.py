"""siamese_convgru's equations against independent NumPy loops: the ConvGRU cell (eq. 5, its
gate convention, forced gates, FC-GRU eq. 2, section III-E's size), the attentive stack
(eqs. 3, 4, 5, 7), temporal pooling (eq. 6), the similarity (eq. 8) and its distance, the
losses (eq. 9) and the cross-camera tracklet choice."""

import numpy as np
import pytest
import tensorflow as tf

from tfreid import metrics
from tfreid.data import samplers
from tfreid.layers.attentive_conv_gru import (AttentiveConvGRUStack, TemporalAttentionPooling,
                                              attend)
from tfreid.layers.conv_gru import ConvGRUCell, conv_gru_parameter_count
from tfreid.losses import attention_penalty, balanced_pair_bce
from tfreid.models.siamese_convgru import SiameseConvGRU, similarity_logits


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def conv_same(x, kernel):
  """Cross-correlation with TensorFlow's SAME zero padding, by loops. x [H, W, C]."""
  h, w, _ = x.shape
  kh, kw, _, out = kernel.shape
  top, left = (kh - 1) // 2, (kw - 1) // 2
  padded = np.zeros((h + kh - 1, w + kw - 1, x.shape[2]))
  padded[top:top + h, left:left + w] = x
  y = np.zeros((h, w, out))
  for i in range(h):
    for j in range(w):
      for o in range(out):
        y[i, j, o] = np.sum(padded[i:i + kh, j:j + kw, :] * kernel[:, :, :, o])
  return y


def max_pool_same(x):
  """2 x 2 max-pooling, stride 2, SAME (windows past the edge take the valid cells)."""
  h, w, c = x.shape
  out = np.zeros((-(-h // 2), -(-w // 2), c))
  for i in range(out.shape[0]):
    for j in range(out.shape[1]):
      out[i, j] = x[2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(-1, c).max(0)
  return out


def gru_step_numpy(x, h, w_kernel, u_kernel, bias=None):
  """Eq. 5 for one example: z, r from W * x + U * h; candidate from U * (r ⊙ h)."""
  ch = h.shape[-1]
  b = np.zeros(3 * ch) if bias is None else bias
  w_z, w_r, w_c = (w_kernel[..., i * ch:(i + 1) * ch] for i in range(3))
  u_z, u_r, u_c = (u_kernel[..., i * ch:(i + 1) * ch] for i in range(3))
  z = sigmoid(conv_same(x, w_z) + conv_same(h, u_z) + b[:ch])
  r = sigmoid(conv_same(x, w_r) + conv_same(h, u_r) + b[ch:2 * ch])
  candidate = np.tanh(conv_same(x, w_c) + conv_same(r * h, u_c) + b[2 * ch:])
  return (1 - z) * h + z * candidate, z, candidate


def _cell(filters, kernel, recurrent, channels, use_bias=False, seed=0):
  cell = ConvGRUCell(filters, kernel, recurrent, use_bias=use_bias)
  cell.build((None, 5, 4, channels))
  rng = np.random.default_rng(seed)
  for variable in cell.weights:
    variable.assign(rng.normal(0, 0.3, variable.shape).astype(np.float32))
  return cell


def test_conv_gru_cell_equals_numpy_eq5_with_separate_kernels():
  cell = _cell(3, 3, 5, channels=2)
  assert tuple(cell.kernel.shape) == (3, 3, 2, 9)
  assert tuple(cell.recurrent_kernel.shape) == (5, 5, 3, 9)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 5, 4, 2)).astype(np.float32)
  h = rng.uniform(-1, 1, size=(2, 5, 4, 3)).astype(np.float32)
  got = cell(x, h).numpy()
  for b in range(2):
    expected, _, _ = gru_step_numpy(x[b], h[b], cell.kernel.numpy(),
                                    cell.recurrent_kernel.numpy())
    np.testing.assert_allclose(got[b], expected, rtol=1e-5, atol=1e-5)


def test_forced_gates_follow_the_papers_convention():
  """z ~ 1 (bias +50): h_t is the candidate; z ~ 0 (bias -50): h_t is h_{t-1}. Keras' GRU
  convention (z weighting h_{t-1}) would give the opposite."""
  cell = _cell(3, 3, 3, channels=2, use_bias=True, seed=2)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(1, 5, 4, 2)).astype(np.float32)
  h = rng.uniform(-1, 1, size=(1, 5, 4, 3)).astype(np.float32)
  bias = np.zeros(9, np.float32)
  bias[:3] = 50.0
  cell.bias.assign(bias)
  _, z, candidate = gru_step_numpy(x[0], h[0], cell.kernel.numpy(),
                                   cell.recurrent_kernel.numpy(), bias)
  assert z.min() > 1 - 1e-12
  np.testing.assert_allclose(cell(x, h).numpy()[0], candidate, rtol=1e-5, atol=1e-5)
  assert np.abs(candidate - h[0]).max() > 0.1
  bias[:3] = -50.0
  cell.bias.assign(bias)
  np.testing.assert_allclose(cell(x, h).numpy(), h, rtol=1e-6, atol=1e-6)


def test_one_by_one_kernels_on_a_one_by_one_map_are_the_fc_gru_of_eq2():
  cell = ConvGRUCell(4, 1)
  cell.build((None, 1, 1, 6))
  rng = np.random.default_rng(4)
  for variable in cell.weights:
    variable.assign(rng.normal(0, 0.4, variable.shape).astype(np.float32))
  x = rng.normal(size=(3, 6)).astype(np.float32)
  h = rng.uniform(-1, 1, size=(3, 4)).astype(np.float32)
  w = cell.kernel.numpy()[0, 0]            # [6, 12]: W_z | W_r | W
  u = cell.recurrent_kernel.numpy()[0, 0]  # [4, 12]: U_z | U_r | U
  z = sigmoid(x @ w[:, :4] + h @ u[:, :4])
  r = sigmoid(x @ w[:, 4:8] + h @ u[:, 4:8])
  candidate = np.tanh(x @ w[:, 8:] + (r * h) @ u[:, 8:])
  expected = (1 - z) * h + z * candidate
  got = cell(x[:, None, None], h[:, None, None]).numpy()[:, 0, 0]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_parameter_count_is_the_formula_of_section_3e():
  for k, cx, ch in ((5, 128, 256), (3, 1024, 128), (1, 7, 3)):
    cell = ConvGRUCell(ch, k)
    cell.build((None, 7, 7, cx))
    assert cell.count_params() == 3 * k * k * (cx * ch + ch * ch)
    assert conv_gru_parameter_count(k, cx, ch) == 3 * k * k * (cx * ch + ch * ch)
  with_bias = ConvGRUCell(3, 3, use_bias=True)
  with_bias.build((None, 4, 4, 2))
  assert with_bias.count_params() == 3 * 9 * (2 * 3 + 9) + 9


def test_bad_cell_arguments_are_refused():
  with pytest.raises(ValueError, match="filters"):
    ConvGRUCell(0)
  with pytest.raises(ValueError, match="kernel_size"):
    ConvGRUCell(2, (3, 0))
  with pytest.raises(ValueError, match="K1, K2, D"):
    AttentiveConvGRUStack((2,), (3,)).build((None, None, None, 3, 4))


# ---------------------------------------------------------------- the attentive stack


def stack_numpy(cubes, stack):
  """Eqs. 7, 3, 4, 5 for one sequence [T, K1, K2, D] by loops; pooling between layers."""
  t_len, k1, k2, depth = cubes.shape
  mu = cubes.mean(axis=(0, 1, 2))
  states = []
  for init_map, size in zip(stack.init_maps, stack.grids):
    w, b = (v.numpy() for v in init_map.weights)
    h0 = np.tanh(mu @ w + b)
    states.append(np.broadcast_to(h0, size + (h0.shape[0],)).copy())
  attention_kernel = stack.attention_kernel.numpy()
  tops, maps = [], []
  for t in range(t_len):
    logits = states[-1].reshape(-1) @ attention_kernel
    m = np.exp(logits - logits.max())
    m /= m.sum()
    x = cubes[t] * m.reshape(k1, k2, 1)
    for i, cell in enumerate(stack.cells):
      if i > 0:
        x = max_pool_same(x)
      states[i], _, _ = gru_step_numpy(x, states[i], cell.kernel.numpy(),
                                       cell.recurrent_kernel.numpy())
      x = states[i]
    tops.append(states[-1].copy())
    maps.append(m.reshape(k1, k2))
  return np.stack(tops), np.stack(maps)


def test_attentive_stack_equals_numpy_eqs_3_4_5_7():
  stack = AttentiveConvGRUStack((2, 3, 3), (3, 3, 3), pool=True, dropout=0.5)
  stack.build((None, None, 3, 3, 4))
  assert stack.grids == [(3, 3), (2, 2), (1, 1)]
  rng = np.random.default_rng(5)
  for variable in stack.weights:
    variable.assign(rng.normal(0, 0.5, variable.shape).astype(np.float32))
  cubes = rng.normal(size=(2, 4, 3, 3, 4)).astype(np.float32)
  out = stack(cubes, training=False)
  for b in range(2):
    tops, maps = stack_numpy(cubes[b].astype(np.float64), stack)
    np.testing.assert_allclose(out["states"].numpy()[b], tops, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["attention"].numpy()[b], maps, rtol=1e-4, atol=1e-6)
  m = out["attention"].numpy()
  assert (m >= 0).all()
  np.testing.assert_allclose(m.sum(axis=(2, 3)), 1.0, rtol=1e-6)
  # In training, dropout (0.5) changes what reaches layers 2 and 3.
  trained = stack(cubes, training=True)["states"].numpy()
  assert np.abs(trained - out["states"].numpy()).max() > 1e-4


def test_uniform_attention_is_one_over_k_squared_and_attend_scales_slices():
  stack = AttentiveConvGRUStack((2, 2), (3, 3), spatial_attention="uniform", dropout=0.0)
  cubes = np.random.default_rng(6).normal(size=(1, 3, 3, 2, 4)).astype(np.float32)
  m = stack(cubes)["attention"].numpy()
  np.testing.assert_array_equal(m, np.full((1, 3, 3, 2), 1.0 / 6, np.float32))
  weights = np.random.default_rng(7).dirichlet(np.ones(6), size=2).astype(np.float32)
  cube = np.random.default_rng(8).normal(size=(2, 3, 2, 4)).astype(np.float32)
  got = attend(cube, weights).numpy()
  for b in range(2):
    for i in range(6):
      np.testing.assert_allclose(got[b].reshape(6, 4)[i], weights[b, i] * cube[b].reshape(6, 4)[i],
                                 rtol=1e-6)


def test_temporal_pooling_eq6_mean_and_max():
  states = np.random.default_rng(9).normal(size=(2, 5, 2, 2, 3)).astype(np.float32)
  flat = states.reshape(2, 5, 12)
  pool = TemporalAttentionPooling("attention")
  pool.build(states.shape)
  w = np.random.default_rng(10).normal(size=(12, 1)).astype(np.float32)
  pool.score_kernel.assign(w)
  pool.score_bias.assign(0.7)
  h_bar, alpha = pool(states)
  scores = flat @ w[:, 0] + 0.7
  expected_alpha = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
  np.testing.assert_allclose(alpha.numpy(), expected_alpha, rtol=1e-5)
  np.testing.assert_allclose(alpha.numpy().sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(h_bar.numpy(), np.einsum("bt,btf->bf", expected_alpha, flat),
                             rtol=1e-5, atol=1e-6)
  mean, alpha = TemporalAttentionPooling("mean")(states)
  np.testing.assert_allclose(mean.numpy(), flat.mean(1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(alpha.numpy(), 0.2)
  maxed, none = TemporalAttentionPooling("max")(states)
  assert none is None
  np.testing.assert_array_equal(maxed.numpy(), flat.max(1))


# ------------------------------------------------------------------ similarity, eq. 8


def _tiny_model(**kwargs):
  args = dict(backbone_width=0.0625, channels=(4, 4, 4), kernel_sizes=(3, 3, 3), height=64,
              width=32, dropout=0.0)
  args.update(kwargs)
  return SiameseConvGRU(**args)


def test_similarity_and_distance_closed_form_symmetry_and_blocks():
  model = _tiny_model()
  rng = np.random.default_rng(11)
  v = rng.normal(size=model.embedding_dim).astype(np.float32)
  model.similarity_v.assign(v)
  model.similarity_c.assign(-0.4)
  q = rng.normal(size=(7, model.embedding_dim)).astype(np.float32)
  g = rng.normal(size=(11, model.embedding_dim)).astype(np.float32)
  expected = np.zeros((7, 11))
  for i in range(7):
    for j in range(11):
      expected[i, j] = 1.0 - sigmoid(np.sum(v * q[i] * g[j]) - 0.4)   # 1 - s of eq. 8
  d = model.pairwise_distance({"embedding": q}, {"embedding": g}).numpy()
  np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6)
  # Symmetric and blocked alike up to float32 rounding of the sums (the products are summed
  # in another order).
  back = model.pairwise_distance({"embedding": g}, {"embedding": q}).numpy()
  np.testing.assert_allclose(d, back.T, rtol=1e-6, atol=1e-7)
  pairwise = lambda a, b: np.asarray(model.pairwise_distance(a, b))
  for block in (1, 3, 4096):
    blocked = metrics.compute_distance_matrix({"embedding": q}, {"embedding": g},
                                              metric="learned", pairwise_fn=pairwise,
                                              block_size=block)
    np.testing.assert_allclose(blocked, d, rtol=1e-6, atol=1e-7)
  logits = similarity_logits(q, q, model.similarity_v, model.similarity_c).numpy()
  np.testing.assert_allclose(logits, logits.T, rtol=1e-6, atol=1e-6)


def test_averaged_clip_embeddings_give_the_mean_clip_pair_logit():
  """The logit is bilinear: averaging clip embeddings per tracklet equals averaging the
  logits of every (query clip, gallery clip) pair."""
  rng = np.random.default_rng(12)
  v = rng.normal(size=6)
  c = 0.3
  qa, gb = rng.normal(size=(4, 6)), rng.normal(size=(3, 6))
  mean_pair_logit = np.mean([np.sum(v * a * b) + c for a in qa for b in gb])
  got = similarity_logits(qa.mean(0, keepdims=True), gb.mean(0, keepdims=True), v, c).numpy()
  np.testing.assert_allclose(got[0, 0], mean_pair_logit, rtol=1e-5)


def test_pair_logits_are_symmetric_and_no_sequence_sees_its_partners():
  model = _tiny_model()
  clips = np.random.default_rng(13).integers(0, 256, (3, 3, 64, 32, 3)).astype(np.uint8)
  out = model({"clips": clips}, training=False)
  logits = out["pair_logits"].numpy()
  np.testing.assert_allclose(logits, logits.T, rtol=1e-6)
  alone = model({"clips": clips[1:2]}, training=False)["embedding"].numpy()
  shuffled = model({"clips": clips[::-1]}, training=False)["embedding"].numpy()
  np.testing.assert_allclose(alone[0], out["embedding"].numpy()[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(shuffled[::-1], out["embedding"].numpy(), rtol=1e-5, atol=1e-6)
  assert out["attention_spatial"].shape == (3, 3, 2, 1)
  assert out["attention_temporal"].shape == (3, 3)


# ---------------------------------------------------------------------- losses, eq. 9


def test_balanced_pairs_are_one_to_one_and_match_numpy_bce():
  for p in (2, 3, 5, 6):
    partner = balanced_pair_bce.identity_partner(p)
    assert sorted(partner) == list(range(p)) and (partner != np.arange(p)).all()
  first, second = balanced_pair_bce.balanced_pairs(10, 2)
  labels = np.array([7, 7, 3, 3, 9, 9, 1, 1, 4, 4])
  same = labels[first] == labels[second]
  assert same.sum() == 5 and (~same).sum() == 5
  logits = np.random.default_rng(14).normal(size=(10, 10)).astype(np.float32)
  logits = logits + logits.T
  got = float(balanced_pair_bce.balanced_pair_cross_entropy(logits, labels, 2))
  total = 0.0
  for p in range(5):
    total -= np.log(sigmoid(logits[2 * p, 2 * p + 1]))
  partner = balanced_pair_bce.identity_partner(5)
  for p in range(5):
    total -= np.log(1 - sigmoid(logits[2 * p, 2 * partner[p] + 1]))
  assert got == pytest.approx(total / 10, rel=1e-5)
  # Pairs stay inside couples of identities: 2 replicas of P = 2 take one device's P = 4 pairs.
  f4, s4 = balanced_pair_bce.balanced_pairs(8, 2)
  f2, s2 = balanced_pair_bce.balanced_pairs(4, 2)
  pairs4 = set(zip(f4.tolist(), s4.tolist()))
  pairs2 = set(zip(f2.tolist(), s2.tolist())) | {(a + 4, b + 4) for a, b in zip(f2, s2)}
  assert pairs4 == pairs2
  with pytest.raises(ValueError, match="K >= 2"):
    balanced_pair_bce.balanced_pairs(6, 1)
  with pytest.raises(ValueError, match="at least 2 identities"):
    balanced_pair_bce.identity_partner(1)


def test_attention_penalty_matches_numpy_and_its_floor():
  rng = np.random.default_rng(15)
  maps = rng.dirichlet(np.ones(12), size=(2, 5)).reshape(2, 5, 3, 4).astype(np.float32)
  got = attention_penalty.attention_penalty(maps).numpy()
  for b in range(2):
    expected = sum((1 - maps[b, :, i // 4, i % 4].sum()) ** 2 for i in range(12))
    assert got[b] == pytest.approx(expected, rel=1e-5)
  # Uniform maps: K^2 (1 - T/K^2)^2 (T = 20, K^2 = 49: 17.16).
  uniform = np.full((1, 20, 7, 7), 1 / 49, np.float32)
  assert float(attention_penalty.attention_penalty(uniform)[0]) == pytest.approx(
      49 * (1 - 20 / 49) ** 2, rel=1e-5)
  # T = K^2 and every location covered once: 0, with zero gradient.
  perm = np.eye(4, dtype=np.float32)[rng.permutation(4)].reshape(1, 4, 2, 2)
  var = tf.Variable(perm)
  with tf.GradientTape() as tape:
    value = attention_penalty.attention_penalty(var)[0]
  assert float(value) == 0.0
  assert np.abs(tape.gradient(value, var).numpy()).max() == 0.0


# --------------------------------------------------------- cross-camera tracklet choice


def test_cross_camera_keys_pick_distinct_cameras_first():
  rng = np.random.default_rng(16)
  keys = rng.uniform(size=(50, 6)).astype(np.float32)
  cams = rng.integers(0, 3, (50, 6)).astype(np.int32)
  count = rng.integers(1, 7, 50)
  valid = np.arange(6)[None] < count[:, None]
  got = samplers.cross_camera_keys(keys, cams, valid).numpy()
  for n in range(50):
    for i in range(6):
      if not valid[n, i]:
        assert got[n, i] == 8.0
        continue
      rank = sum(1 for j in range(6) if valid[n, j] and cams[n, j] == cams[n, i]
                 and keys[n, j] < keys[n, i])
      assert got[n, i] == pytest.approx(rank + keys[n, i])
    chosen = np.argsort(got[n])[:2]
    if count[n] >= 2 and len(set(cams[n, :count[n]])) >= 2:
      assert cams[n, chosen[0]] != cams[n, chosen[1]]


def test_attention_overlay_puts_the_spatial_maps_and_temporal_bars_under_the_frames():
  """The hook's picture, rebuilt by hand: frames on top (1-pixel white gaps), below each
  frame its map as a heat map and under it a white bar as long as alpha_t / max alpha."""
  from tfreid import visualize  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  clips = rng.integers(0, 256, (2, 3, 8, 4, 3)).astype(np.uint8)
  spatial = rng.random((2, 3, 2, 1)).astype(np.float32)
  temporal = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]], np.float32)
  pictures = SiameseConvGRU.attention_overlays(
      None, {"clips": tf.constant(clips)},
      {"attention_spatial": tf.constant(spatial), "attention_temporal": tf.constant(temporal)})
  images = pictures["where_and_when"].numpy()
  bar = 4
  assert images.shape == (2, 8 + 1 + 8 + bar, 3 * 4 + 2, 3)
  for b in range(2):
    for t in range(3):
      column = slice(t * 5, t * 5 + 4)
      np.testing.assert_allclose(images[b, :8, column], clips[b, t] / 255.0, atol=1e-6)
      heat = visualize.heatmap_overlay(clips[b, t:t + 1], spatial[b, t:t + 1]).numpy()[0]
      np.testing.assert_allclose(images[b, 9:17, column], heat, atol=1e-6)
      filled = int(np.sum(images[b, 17, column, 0] == 1.0))
      assert filled == int(np.ceil(temporal[b, t] / temporal[b].max() * 4 - 1e-6))
    assert (images[b, 8] == 1.0).all()  # the gap between the rows
  # Max pooling weights no frame: the maps only.
  pictures = SiameseConvGRU.attention_overlays(
      None, {"clips": tf.constant(clips)}, {"attention_spatial": tf.constant(spatial)})
  assert pictures["where_and_when"].shape == (2, 17, 14, 3)


def test_summary_scalars_are_the_attention_peaks_and_the_embedding_spread():
  rng = np.random.default_rng(4)
  spatial = rng.random((3, 2, 2, 2)).astype(np.float32)
  temporal = rng.random((3, 2)).astype(np.float32)
  embedding = rng.normal(size=(3, 5)).astype(np.float32)
  outputs = {"attention_spatial": tf.constant(spatial),
             "attention_temporal": tf.constant(temporal), "embedding": tf.constant(embedding)}
  scalars = SiameseConvGRU.summary_scalars(None, outputs, {})
  peaks = [max(spatial[b, t].ravel()) for b in range(3) for t in range(2)]
  assert float(scalars["spatial_attention_peak"]) == pytest.approx(np.mean(peaks), rel=1e-6)
  assert float(scalars["temporal_attention_peak"]) == pytest.approx(
      np.mean([max(temporal[b]) for b in range(3)]), rel=1e-6)
  spread = np.mean([np.sqrt(np.mean((embedding[:, f] - embedding[:, f].mean()) ** 2))
                    for f in range(5)])
  assert float(scalars["embedding_spread"]) == pytest.approx(spread, rel=1e-5)
  del outputs["attention_temporal"]
  assert "temporal_attention_peak" not in SiameseConvGRU.summary_scalars(None, outputs, {})
