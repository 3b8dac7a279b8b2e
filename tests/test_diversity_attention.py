"""diversity_attention's equations, each against NumPy loops or hand-computed values: spatial
attention (eqs. 1-3), the diversity regulariser (eqs. 5-10), the enhancement (S1-S4),
temporal attention (eqs. 11-13), and the whole clip model on top of its backbone (14-15)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfreid.data import samplers
from tfreid.layers import spatial_attention as sa
from tfreid.layers import temporal_attention as ta
from tfreid.losses import diversity
from tfreid.models.diversity_attention import DiversityAttention
from tfreid.training import trainer as trainer_lib


@pytest.fixture(autouse=True)
def _seeded():
  keras.utils.set_random_seed(0)


def _softmax(x, axis=-1):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _randomise(layer, rng, scale=0.5):
  for var in layer.weights:
    var.assign(rng.normal(0.0, scale, var.shape).astype("float32"))


# ----------------------------------------------------------------------- eqs. (1)-(3)


def test_spatial_attention_matches_a_loop_over_explicit_heads():
  rng = np.random.default_rng(0)
  k, d, dim, cells = 3, 5, 7, 6
  layer = sa.MultiSpatialAttention(k, d)
  layer.build((None, cells, dim))
  _randomise(layer, rng)
  f = rng.normal(size=(2, cells, dim)).astype("float32")
  s, x = layer(f)
  big_w = layer.hidden_kernel.numpy()  # [D, K*d]
  for b in range(2):
    for head in range(k):
      w_k = big_w[:, head * d:(head + 1) * d].T            # W_{s,k} [d, D]
      b_k = layer.hidden_bias.numpy()[head * d:(head + 1) * d]
      w2 = layer.score_kernel.numpy()[head]
      b2 = layer.score_bias.numpy()[head]
      e = np.array([w2 @ np.maximum(w_k @ f[b, l] + b_k, 0) + b2 for l in range(cells)])
      s_ref = np.exp(e) / np.exp(e).sum()                  # eq. 2
      np.testing.assert_allclose(s[b, head].numpy(), s_ref, rtol=1e-5, atol=1e-6)
      x_ref = sum(s_ref[l] * f[b, l] for l in range(cells))  # eq. 3
      np.testing.assert_allclose(x[b, head].numpy(), x_ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(s.numpy().sum(-1), 1.0, rtol=1e-6)
  # Head 2 reads only its own weights: changing them leaves heads 1 and 3 as they were.
  kernel = big_w.copy()
  kernel[:, d:2 * d] += 1.0
  layer.hidden_kernel.assign(kernel)
  s2, _ = layer(f)
  np.testing.assert_array_equal(s2.numpy()[:, [0, 2]], s.numpy()[:, [0, 2]])
  assert np.abs(s2.numpy()[:, 1] - s.numpy()[:, 1]).max() > 1e-3


def test_attend_one_hot_gives_the_cell_and_uniform_the_mean():
  rng = np.random.default_rng(1)
  f = rng.normal(size=(5, 4)).astype("float32")
  one_hot = np.zeros((2, 5), "float32")
  one_hot[0, 3] = 1.0
  one_hot[1] = 0.2
  x = sa.attend(tf.constant(one_hot), tf.constant(f)).numpy()
  np.testing.assert_allclose(x[0], f[3], rtol=1e-6)
  np.testing.assert_allclose(x[1], f.mean(0), rtol=1e-5)


def test_heads_start_different_and_the_diversity_term_separates_them():
  """Independent initial heads move apart under Q; identical heads get no gradient from Q
  (it is maximal there), so they could never separate."""
  rng = np.random.default_rng(2)
  features = tf.constant(rng.normal(size=(8, 12, 6)).astype("float32"))
  layer = sa.MultiSpatialAttention(3, 8)
  layer.build((None, 12, 6))
  s0, _ = layer(features)
  assert np.abs(s0.numpy()[:, 0] - s0.numpy()[:, 1]).max() > 1e-3  # heads differ at start
  q_start = float(tf.reduce_mean(diversity.hellinger_diversity(s0)))
  optimizer = keras.optimizers.SGD(0.5)
  for _ in range(30):
    with tf.GradientTape() as tape:
      q = tf.reduce_mean(diversity.hellinger_diversity(layer(features)[0]))
    optimizer.apply_gradients(zip(tape.gradient(q, layer.trainable_variables),
                                  layer.trainable_variables))
  q_end = float(tf.reduce_mean(diversity.hellinger_diversity(layer(features)[0])))
  assert q_end < 0.5 * q_start, (q_start, q_end)

  same = sa.MultiSpatialAttention(3, 8)
  same.build((None, 12, 6))
  kernel = same.hidden_kernel.numpy()
  same.hidden_kernel.assign(np.tile(kernel[:, :8], (1, 3)))
  score = same.score_kernel.numpy()
  same.score_kernel.assign(np.tile(score[:1], (3, 1)))
  with tf.GradientTape() as tape:
    q = tf.reduce_mean(diversity.hellinger_diversity(same(features)[0]))
  assert float(q) == pytest.approx(6.0, abs=1e-4)  # K (K - 1): identical maps
  grads = tape.gradient(q, same.trainable_variables)
  assert max(float(tf.reduce_max(tf.abs(g))) for g in grads) < 1e-4


# ----------------------------------------------------------------------- eqs. (5)-(10)


def _q_loop(s):
  """Eq. (9) by a double loop: sum over i, j of ((R R^T)_ij - I_ij)^2 with R = sqrt(S)."""
  s = np.asarray(s, np.float64)
  r = np.sqrt(s)
  k = s.shape[0]
  return sum((r[i] @ r[j] - (i == j)) ** 2 for i in range(k) for j in range(k))


def test_hellinger_distance_and_q_against_loops():
  rng = np.random.default_rng(3)
  s = _softmax(rng.normal(0, 2, size=(4, 5, 10)))  # 4 frames, K = 5, L = 10
  h = diversity.hellinger_distance(s[:, 0], s[:, 1]).numpy()
  bc = np.sqrt(s[:, 0] * s[:, 1]).sum(-1)
  np.testing.assert_allclose(h, np.sqrt(1 - bc), rtol=1e-5)            # eq. 8
  np.testing.assert_allclose(                                           # eq. 6
      h, np.sqrt(((np.sqrt(s[:, 0]) - np.sqrt(s[:, 1])) ** 2).sum(-1) / 2), rtol=1e-5)
  q = diversity.hellinger_diversity(s.astype("float32")).numpy()
  for n in range(4):
    assert q[n] == pytest.approx(_q_loop(s[n]), rel=1e-5)
    coefficients = [np.sqrt(s[n, i] * s[n, j]).sum() for i in range(5) for j in range(5)
                    if i != j]
    assert q[n] == pytest.approx(sum(c ** 2 for c in coefficients), rel=1e-5)
  q_lin = diversity.lin_diversity(s.astype("float32")).numpy()
  for n in range(4):
    want = sum((s[n, i] @ s[n, j] - (i == j)) ** 2 for i in range(5) for j in range(5))
    assert q_lin[n] == pytest.approx(want, rel=1e-5)                    # eq. 10


def test_q_hand_computed_cases():
  disjoint = np.zeros((4, 32), "float32")
  for k in range(4):
    disjoint[k, 8 * k:8 * (k + 1)] = 1 / 8
  assert float(diversity.hellinger_diversity(disjoint)) == pytest.approx(0.0, abs=1e-7)
  assert float(diversity.lin_diversity(disjoint)) == pytest.approx(4 * (7 / 8) ** 2, rel=1e-6)
  peaked = _softmax(np.random.default_rng(4).normal(size=32)).astype("float32")
  identical = np.tile(peaked, (6, 1))
  assert float(diversity.hellinger_diversity(identical)) == pytest.approx(30.0, rel=1e-5)
  uniform = np.full((6, 32), 1 / 32, "float32")
  assert float(diversity.lin_diversity(uniform)) == pytest.approx(
      6 * (1 / 32 - 1) ** 2 + 30 * (1 / 32) ** 2, rel=1e-6)             # ~5.660
  assert float(diversity.hellinger_diversity(peaked[None])) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="hellinger"):
    diversity.diversity(uniform, "kl")


def _q_of_logits_float64(logits):
  return _q_loop(_softmax(logits))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_q_gradient_is_finite_where_attention_underflows(dtype):
  """Logit gaps of 200: most of the softmax is exactly 0; the gradient of Q through the
  square root and the softmax stays finite, and equals the float64 central difference."""
  logits = np.zeros((3, 6))
  logits[0, 0] = logits[1, 1] = 200.0
  logits[2] = np.linspace(-3, 3, 6)
  e = tf.Variable(logits.astype(dtype))
  with tf.GradientTape() as tape:
    q = diversity.hellinger_diversity(sa.receptive_fields(e))
  grad = tape.gradient(q, e).numpy().astype(np.float64)
  assert np.isfinite(grad).all() and np.isfinite(float(q))
  base = logits.astype(np.float32).astype(np.float64) if dtype == "float32" else \
      tf.cast(tf.constant(logits, tf.bfloat16), tf.float64).numpy()
  numeric = np.zeros_like(base)
  for idx in np.ndindex(*base.shape):
    plus, minus = base.copy(), base.copy()
    plus[idx] += 1e-5
    minus[idx] -= 1e-5
    numeric[idx] = (_q_of_logits_float64(plus) - _q_of_logits_float64(minus)) / 2e-5
  np.testing.assert_allclose(grad, numeric, atol=1e-4)


def test_diversity_term_is_the_mean_over_every_frame():
  rng = np.random.default_rng(5)
  maps = _softmax(rng.normal(0, 1.5, size=(2, 3, 4, 8))).reshape(2, 3, 4, 4, 2)
  term = diversity.DiversityLoss("div", 1.0, "hellinger", "attention_spatial")
  value = float(term({"attention_spatial": tf.constant(maps, tf.float32)}, {}))
  flat = maps.reshape(6, 4, 8)
  assert value == pytest.approx(np.mean([_q_loop(m) for m in flat]), rel=1e-5)
  lin = diversity.DiversityLoss("div", 1.0, "lin")
  want = np.mean([((m @ m.T - np.eye(4)) ** 2).sum() for m in flat])
  assert float(lin({"attention_spatial": tf.constant(maps, tf.float32)}, {})) == \
      pytest.approx(want, rel=1e-5)
  with pytest.raises(KeyError, match="attention_spatial"):
    term({"embedding": tf.zeros((2, 3))}, {})


# ---------------------------------------------------------------------- eqs. (S1)-(S4)


def test_enhancement_matches_numpy_loops():
  rng = np.random.default_rng(6)
  b, n, k, d = 2, 4, 3, 5
  layer = ta.TemporalEnhancement(n, sigma=1.5, scale=0.3)
  layer.build((None, n, k, d))
  _randomise(layer, rng, 0.4)
  x = rng.normal(size=(b, n, k, d)).astype("float32")
  out, c = layer(x)
  w, bias = layer.weight.numpy(), layer.bias.numpy()
  fc_w, fc_b = layer.fcn.get_weights()
  for bb in range(b):
    for part in range(k):
      xk = x[bb, :, part].astype(np.float64).T                          # X_k [D, N]
      phi = 0.3 * xk.T @ xk                                               # S1
      psi = np.array([[w[i, j] * np.exp(-abs(i - j) / 1.5) + bias[j] for j in range(n)]
                      for i in range(n)])                                 # S2
      cc = _softmax(phi + psi, axis=1)                                    # S3
      np.testing.assert_allclose(c[bb, part].numpy(), cc, rtol=1e-4, atol=1e-6)
      pooled = xk @ cc.T                                                  # X_k C_k^T
      want = (pooled.T @ fc_w + fc_b) + xk.T                              # S4 [N, D]
      np.testing.assert_allclose(out[bb, :, part].numpy(), want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(c.numpy().sum(-1), 1.0, rtol=1e-6)
  # A constant added to a row of Psi cancels in the row softmax.
  phi = ta.feature_similarity(x)
  psi = ta.temporal_similarity(w, bias, n, 1.0)
  shifted = psi + np.arange(n, dtype="float32")[:, None]
  np.testing.assert_allclose(ta.frame_contributions(phi, shifted).numpy(),
                             ta.frame_contributions(phi, psi).numpy(), rtol=1e-5, atol=1e-7)


def test_enhancement_starts_as_the_identity_and_checks_the_frame_count():
  rng = np.random.default_rng(7)
  layer = ta.TemporalEnhancement(3)
  x = rng.normal(size=(2, 3, 2, 4)).astype("float32")
  out, _ = layer(x)
  np.testing.assert_allclose(out.numpy(), x, rtol=1e-6)  # zero FCN
  with pytest.raises(ValueError, match="3 frames"):
    layer(rng.normal(size=(2, 5, 2, 4)).astype("float32"))


# ---------------------------------------------------------------------- eqs. (11)-(13)


def test_temporal_attention_matches_numpy_and_the_pooling_modes():
  rng = np.random.default_rng(8)
  b, n, k, d = 2, 5, 3, 4
  x = rng.normal(size=(b, n, k, d)).astype("float32")
  layer = ta.PartTemporalAttention("attention")
  layer.build(x.shape)
  _randomise(layer, rng)
  pooled, t = layer(x)
  w, bias = layer.kernel.numpy(), layer.bias.numpy()
  for bb in range(b):
    for part in range(k):
      e = np.array([w[part] @ x[bb, i, part] + bias[part] for i in range(n)])   # eq. 11
      t_ref = np.exp(e) / np.exp(e).sum()                                        # eq. 12
      np.testing.assert_allclose(t[bb, part].numpy(), t_ref, rtol=1e-5)
      np.testing.assert_allclose(pooled[bb, part].numpy(),                       # eq. 13
                                 (t_ref[:, None] * x[bb, :, part]).sum(0), rtol=1e-5,
                                 atol=1e-6)
  np.testing.assert_allclose(t.numpy().sum(-1), 1.0, rtol=1e-6)
  assert np.abs(t.numpy()[:, 0] - t.numpy()[:, 1]).max() > 1e-3  # each part its own weights
  same = np.repeat(x[:, :1], n, axis=1)
  np.testing.assert_allclose(layer(same)[0].numpy(), x[:, 0], rtol=1e-5, atol=1e-6)
  avg, none = ta.PartTemporalAttention("average")(x)
  assert none is None
  np.testing.assert_allclose(avg.numpy(), x.mean(1), rtol=1e-6)
  np.testing.assert_allclose(ta.PartTemporalAttention("max")(x)[0].numpy(), x.max(1))
  with pytest.raises(ValueError, match="attention, average, max"):
    ta.PartTemporalAttention("sum")


# ------------------------------------------------------------------ eqs. (14)-(15), model


def test_model_head_matches_a_numpy_forward_pass():
  """Everything after the backbone (eqs. 1-4, S1-S4, 11-15, FC, L2) recomputed in NumPy from
  the layers' weights and the backbone's res5 maps."""
  rng = np.random.default_rng(9)
  model = DiversityAttention(5, num_frames=3, block_counts=(1, 1, 1, 1), base_width=2,
                             num_parts=2, hidden_dim=4, embedding_dim=6,
                             enhancement_scale=0.05)
  for layer in (model.spatial_attention, model.enhance, model.temporal_attention):
    _randomise(layer, rng, 0.3)
  clips = rng.integers(0, 256, (2, 3, 128, 64, 3), dtype=np.uint8)
  out = model({"clips": clips}, training=False)
  frames = clips.reshape(-1, 128, 64, 3)
  maps = model.backbone(model.normalize(frames), training=False)["res5"].numpy()
  maps = maps.astype(np.float64).reshape(2, 3, 8, 64)                     # f [B, N, L, D]
  sa_layer, en, tl = model.spatial_attention, model.enhance, model.temporal_attention
  w1, b1 = sa_layer.hidden_kernel.numpy(), sa_layer.hidden_bias.numpy()
  w2, b2 = sa_layer.score_kernel.numpy(), sa_layer.score_bias.numpy()
  fc_w, fc_b = en.fcn.get_weights()
  embed_w, embed_b = model.embed.get_weights()
  for b in range(2):
    x = np.zeros((3, 2, 64))
    s = np.zeros((3, 2, 8))
    for n in range(3):
      for k in range(2):
        h = np.maximum(maps[b, n] @ w1[:, 4 * k:4 * k + 4] + b1[4 * k:4 * k + 4], 0)
        s[n, k] = _softmax(h @ w2[k] + b2[k])
        x[n, k] = s[n, k] @ maps[b, n]
    np.testing.assert_allclose(out["attention_spatial"][b].numpy().reshape(3, 2, 8), s,
                               rtol=1e-3, atol=1e-5)
    x_hat = np.zeros_like(x)
    for k in range(2):
      phi = 0.05 * x[:, k] @ x[:, k].T
      psi = np.array([[en.weight.numpy()[i, j] * np.exp(-abs(i - j)) + en.bias.numpy()[j]
                       for j in range(3)] for i in range(3)])
      c = _softmax(phi + psi, axis=1)
      x_hat[:, k] = (c @ x[:, k]) @ fc_w + fc_b + x[:, k]
    parts = []
    for k in range(2):
      t = _softmax(x_hat[:, k] @ tl.kernel.numpy()[k] + tl.bias.numpy()[k])
      np.testing.assert_allclose(out["attention_temporal"][b, k].numpy(), t, rtol=1e-3,
                                 atol=1e-5)
      parts.append(t @ x_hat[:, k])
    concat = np.concatenate(parts)                                         # eq. 15 order
    np.testing.assert_allclose(out["features"][b].numpy(), concat, rtol=1e-3,
                               atol=1e-4 * np.abs(concat).max())
    z = concat @ embed_w + embed_b
    np.testing.assert_allclose(out["embedding"][b].numpy(), z / np.linalg.norm(z),
                               rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(out["embedding"].numpy(), axis=-1), 1.0,
                             rtol=1e-5)


def test_baseline_average_pools_space_and_time():
  rng = np.random.default_rng(10)
  model = DiversityAttention(5, num_frames=2, block_counts=(1, 1, 1, 1), base_width=2,
                             num_parts=0, temporal="average", embedding_dim=4)
  clips = rng.integers(0, 256, (2, 2, 64, 32, 3), dtype=np.uint8)
  out = model({"clips": clips}, training=False)
  maps = model.backbone(model.normalize(clips.reshape(-1, 64, 32, 3)),
                        training=False)["res5"].numpy().reshape(2, 2, -1, 64)
  np.testing.assert_allclose(out["features"].numpy(), maps.mean(axis=(1, 2)), rtol=1e-5,
                             atol=1e-6)
  assert "attention_spatial" not in out and "attention_temporal" not in out


# -------------------------------------------------------------------- section 3.1


def test_restricted_random_sampling_and_chunk_first_follow_section_3_1():
  """N equal chunks, one frame drawn per chunk in order; at test the first frame of each."""
  starts, lengths = samplers.chunk_bounds(20, 6)
  np.testing.assert_array_equal(np.append(starts.numpy(), 20), [0, 3, 6, 10, 13, 16, 20])
  for n, want in ((20, [0, 3, 6, 10, 13, 16]), (4, [0, 0, 1, 2, 2, 3]), (2, [0, 0, 0, 1, 1, 1])):
    np.testing.assert_array_equal(samplers.test_clips("chunk_first", n, 6).numpy(), [want])
  draws = np.random.default_rng(11).uniform(size=(4000, 6)).astype("float32")
  picked = samplers.restricted_random_indices(tf.fill([4000], 20), 6, draws).numpy()
  edges = [0, 3, 6, 10, 13, 16, 20]
  for k in range(6):
    counts = np.bincount(picked[:, k] - edges[k], minlength=edges[k + 1] - edges[k])
    assert len(counts) == edges[k + 1] - edges[k]                       # inside chunk k
    assert counts.min() > 0.8 * 4000 / len(counts)                      # uniform within it


def test_attention_outputs_become_one_picture_per_frame_and_part():
  """TensorBoard (`attention/<output>`): each of the K receptive fields of every frame is a
  picture of the h x w grid, and they differ from the start; the temporal weights of a clip
  are one K x N picture (a row per part)."""
  rng = np.random.default_rng(12)
  model = DiversityAttention(5, num_frames=3, block_counts=(1, 1, 1, 1), base_width=2,
                             num_parts=3, hidden_dim=4, embedding_dim=4)
  clips = rng.integers(0, 256, (2, 3, 128, 64, 3), dtype=np.uint8)
  out = model({"clips": clips}, training=False)
  assert trainer_lib.attention_images(out["attention_spatial"]).shape == (2 * 3 * 3, 4, 2, 1)
  assert trainer_lib.attention_images(out["attention_temporal"]).shape == (2, 3, 3, 1)
  maps = out["attention_spatial"].numpy()
  for i in range(3):
    for j in range(i + 1, 3):
      assert np.abs(maps[:, :, i] - maps[:, :, j]).max() > 1e-3


def test_attention_overlays_draw_each_part_with_its_temporal_weights():
  """The `tfreid.visualize` hook, K = N = 3 (where the default would read the [B, K, N]
  temporal weights as [B, N, K]): row k + 1 of a clip's picture is part k's receptive field
  over each frame with a bar of its weight t_{n,k} under it (length t_{n,k} / max_n t_{n,k}
  of the frame width, in the part's colour); `attention_temporal` has the K bars of frame
  n under frame n."""
  from tfreid import visualize  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(13)
  model = DiversityAttention(5, num_frames=3, block_counts=(1, 1, 1, 1), base_width=2,
                             num_parts=3, hidden_dim=4, embedding_dim=4)
  clips = rng.integers(0, 256, (2, 3, 128, 64, 3), dtype=np.uint8)
  out = model({"clips": clips}, training=False)
  weights = rng.dirichlet(np.ones(3), size=(2, 3)).astype(np.float32)  # [B, K, N]
  out["attention_temporal"] = tf.constant(weights)
  drawn = visualize.attention_overlays(model, {"clips": clips}, out)
  height, width, bar, k_parts, n_frames = 128, 64, 4, 3, 3
  assert drawn["attention_spatial"].shape == (
      2, height + k_parts * (1 + height + bar), n_frames * width + 2, 3)
  assert drawn["attention_temporal"].shape == (2, height + k_parts * bar, n_frames * width + 2, 3)
  maps = out["attention_spatial"].numpy()
  for b in range(2):
    picture = drawn["attention_spatial"][b].numpy()
    np.testing.assert_allclose(picture[:height, :width], clips[b, 0] / 255.0, atol=1e-6)
    for k in range(k_parts):
      top = height + 1 + k * (1 + height + bar)
      for n in range(n_frames):
        left = n * (width + 1)
        np.testing.assert_allclose(
            picture[top:top + height, left:left + width],
            visualize.heatmap_overlay(clips[b, n:n + 1], maps[b, n:n + 1, k]).numpy()[0],
            atol=1e-5)
        bar_row = picture[top + height + 1, left:left + width]
        length = int(np.ceil(weights[b, k, n] / weights[b, k].max() * width))
        np.testing.assert_allclose(bar_row[:length], np.tile(visualize.PART_COLORS[k],
                                                             (length, 1)), atol=1e-6)
        np.testing.assert_array_equal(bar_row[length:], 0.0)
    strip = drawn["attention_temporal"][b].numpy()
    for n in range(n_frames):
      for k in range(k_parts):
        row = strip[height + k * bar, n * (width + 1):n * (width + 1) + width]
        length = int(np.ceil(weights[b, k, n] / weights[b].max() * width))
        assert (row.sum(axis=-1) > 0).sum() == length
  baseline = DiversityAttention(5, num_frames=3, block_counts=(1, 1, 1, 1), base_width=2,
                                num_parts=0, embedding_dim=4)
  out = baseline({"clips": clips}, training=False)
  assert visualize.attention_overlays(baseline, {"clips": clips}, out) == {}
