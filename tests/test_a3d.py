"""a3d (Chen et al.): every equation against NumPy or hand-computed values (design note §7),
REINFORCE against closed-form gradients, gradient routing, weights, full size."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfreid import config as cfg
from tfreid.backbones import resnet2d, weights
from tfreid.data import streams as streams_lib
from tfreid.layers import recurrent_attention as ra
from tfreid.losses import cross_entropy, reinforce
from tfreid.models import a3d

SIGMA = 0.03


def tiny_model(num_classes=5, **kwargs):
  args = dict(block_counts=(1, 1, 1, 1), base_width=4, bin_size=(2, 2, 1), hidden_dim=8,
              feature_dim=6, num_glimpses=3)
  args.update(kwargs)
  return a3d.A3D(num_classes, **args)


def tiny_inputs(b=2, t=3, h=32, w=16, seed=0):
  rng = np.random.default_rng(seed)
  return {"clips": tf.constant(rng.integers(0, 256, (b, t, h, w, 3)), tf.uint8),
          "flow": tf.constant(rng.normal(0, 2, (b, t, h, w, 2)), tf.float32)}


# ------------------------------------------------------------------------- eq. 1


def test_eq1_two_streams_summed_after_res2_then_shared_trunk():
  model = tiny_model()
  x = tiny_inputs()
  g = model.two_stream_features(x["clips"], x["flow"], training=False).numpy()
  frames = tf.reshape(x["clips"], [-1, 32, 16, 3])
  flow = tf.reshape(x["flow"], [-1, 32, 16, 2]) * 6.4
  rgb = model.rgb_stream(model.normalize(frames), training=False)["res2"]
  motion = model.flow_stream(flow, training=False)["res2"]
  expected = model.trunk(rgb + motion, training=False)["res5"].numpy()
  np.testing.assert_allclose(g.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)
  assert g.shape == (2, 3, 2, 1, 128)   # stride 16 (res5 stride 1), 32 x base_width
  # f_g is the mean of g over L, H, W.
  out = model(x, training=False)
  np.testing.assert_allclose(out["global_feature"].numpy(), g.mean(axis=(1, 2, 3)),
                             rtol=1e-5, atol=1e-6)


def test_without_flow_the_model_reads_clips_only():
  model = tiny_model(use_flow=False)
  assert model.flow_stream is None
  out = model({"clips": tiny_inputs()["clips"]}, training=False)
  assert out["embedding"].shape == (2, 128 + 3 * 8)
  c = cfg.build_config("a3d:no_flow")
  from tfreid.models import contract
  assert contract.input_streams(c) == ("clips",)
  assert contract.input_streams(cfg.build_config("a3d")) == ("clips", "flow")
  assert streams_lib.converter_flags(("clips", "flow")) == ["--optical_flow"]


# ------------------------------------------------------------------------- eq. 3


def test_eq3_bin_pooling_equals_a_numpy_loop_with_gradient_one_over_bin_volume():
  rng = np.random.default_rng(1)
  g = rng.normal(size=(2, 6, 16, 8, 3)).astype(np.float32)
  size = (4, 6, 3)
  pooled = ra.bin_pooling(tf.constant(g), size).numpy()
  assert pooled.shape == (2, 3, 11, 6, 3)   # pool of 3 * 11 * 6 = 198 actions
  for l in range(3):
    for h in range(11):
      for w in range(6):
        np.testing.assert_allclose(pooled[:, l, h, w],
                                   g[:, l:l + 4, h:h + 6, w:w + 3].mean(axis=(1, 2, 3)),
                                   rtol=1e-5, atol=1e-6)
  index = tf.constant([[1, 5, 3], [0, 10, 0]], tf.int32)
  gt = tf.constant(g)
  with tf.GradientTape() as tape:
    tape.watch(gt)
    out = ra.gather_bins(ra.bin_pooling(gt, size), index)
    total = tf.reduce_sum(out[:, 0])
  grad = tape.gradient(total, gt).numpy()
  expected = np.zeros_like(g)
  expected[0, 1:5, 5:11, 3:6, 0] = 1 / 72
  expected[1, 0:4, 10:16, 0:3, 0] = 1 / 72
  np.testing.assert_allclose(grad, expected, atol=1e-7)


def test_bin_larger_than_the_feature_volume_is_a_clear_error():
  with pytest.raises(ValueError, match="does not fit"):
    ra.bin_pooling(tf.zeros([1, 3, 4, 2, 1]), (4, 2, 1))
  with pytest.raises(cfg.ConfigError, match="bin_size"):
    cfg.build_config("a3d", overrides=["model.a3d.bin_size=[7,6,3]"])


def test_location_mapping_centre_corners_clipping_and_half_up():
  grid, size = (6, 16, 8), (4, 6, 3)
  idx = lambda a: ra.location_to_index(tf.constant(a, tf.float32), grid, size).numpy().tolist()
  assert idx([0.0, 0.0, 0.0]) == [1, 5, 3]            # a_0: ceil((G - A) / 2)
  assert idx([-1.0, -1.0, -1.0]) == [0, 0, 0]
  assert idx([1.0, 1.0, 1.0]) == [2, 10, 5]
  assert idx([-3.0, 2.5, 1.2]) == [0, 10, 5]           # clipped
  # (a + 1) / 2 * 5 = 2.5 on the W axis rounds half up to 3 (tf.round would give 2).
  assert idx([0.0, 0.0, 0.0])[2] == 3
  loc = ra.index_to_location(tf.constant([1, 5, 3]), grid, size).numpy()
  np.testing.assert_allclose(loc, [0.0, 0.0, 0.2], atol=1e-6)


# ------------------------------------------------------------------------- eqs. 4, 5


def _agent(**kwargs):
  args = dict(bin_size=(2, 2, 1), num_glimpses=3, hidden_dim=5, feature_dim=4)
  args.update(kwargs)
  agent = ra.RecurrentBinAttention(**args)
  agent.build((None, 3, 4, 2, 6))
  return agent


def test_eq4_transition_is_an_elman_rnn_and_eq3_observation_matches_numpy():
  agent = _agent()
  rng = np.random.default_rng(2)
  o = rng.normal(size=(3, 5)).astype(np.float32)
  h = rng.normal(size=(3, 5)).astype(np.float32)
  wi, bi = [v.numpy() for v in agent.fc_i2h.weights]
  (wh,) = [v.numpy() for v in agent.fc_h2h.weights]
  np.testing.assert_allclose(agent.transition(o, h).numpy(),
                             np.maximum(o @ wi + bi + h @ wh, 0), rtol=1e-5, atol=1e-6)
  x = rng.normal(size=(3, 6)).astype(np.float32)
  loc = rng.uniform(-1, 1, size=(3, 3)).astype(np.float32)
  relu = lambda v: np.maximum(v, 0)
  dense = lambda layer, v: v @ layer.kernel.numpy() + layer.bias.numpy()
  expected = relu(dense(agent.fc2_feat, relu(dense(agent.fc1_feat, x)))
                  + dense(agent.fc2_att, relu(dense(agent.fc1_att, loc))))
  np.testing.assert_allclose(agent.observe(x, loc).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_eq5_log_prob_sample_std_and_score():
  mu = tf.constant([0.1, -0.2, 0.3])
  a = tf.constant([0.0, 0.1, 0.2])
  policy = ra.gaussian_policy(mu, SIGMA)
  closed = -1.5 * math.log(2 * math.pi * SIGMA) - float(np.sum((a - mu) ** 2)) / (2 * SIGMA)
  assert closed == pytest.approx(0.669688, abs=1e-6)
  assert float(policy.log_prob(a)) == pytest.approx(closed, abs=1e-5)
  with tf.GradientTape() as tape:
    tape.watch(mu)
    lp = ra.gaussian_policy(mu, SIGMA).log_prob(a)
  np.testing.assert_allclose(tape.gradient(lp, mu).numpy(), (a - mu).numpy() / SIGMA,
                             rtol=1e-5)
  samples = ra.sample_global(tf.zeros([20000, 3]), SIGMA, tf.constant([3, 4]), 0, 1).numpy()
  assert samples.std() == pytest.approx(math.sqrt(SIGMA), abs=0.002)   # 0.1732
  assert abs(samples.mean()) < 0.004


def test_global_sampling_gives_each_batch_position_the_same_noise_on_any_replica_count():
  seed = tf.constant([7, 11])
  mean = tf.constant(np.random.default_rng(3).uniform(-1, 1, (8, 3)), tf.float32)
  whole = ra.sample_global(mean, SIGMA, seed, 0, 1).numpy()
  halves = np.concatenate([ra.sample_global(mean[:4], SIGMA, seed, 0, 2).numpy(),
                           ra.sample_global(mean[4:], SIGMA, seed, 1, 2).numpy()])
  np.testing.assert_allclose(whole, halves, atol=1e-7)
  assert not np.allclose(whole, ra.sample_global(mean, SIGMA, tf.constant([7, 12]), 0,
                                                 1).numpy())


def test_surrogate_gradient_through_the_mean_matches_the_score_function():
  """The agent's sampled actions are stopped: d/d(fc_att bias) of sum log pi(a_t) is
  sum_t (a_t - mu_t) / Sigma * (1 - mu_t^2), non-zero (it would be 0 for a
  reparameterised sample a = mu + sigma eps)."""
  for scope in ("all", "location_head"):
    agent = _agent(policy_gradient_scope=scope)
    g = tf.constant(np.random.default_rng(4).normal(size=(4, 3, 4, 2, 6)), tf.float32)
    advantage = tf.constant([1.0, -0.5, 2.0, 0.3])
    with tf.GradientTape() as tape:
      out = agent(g, training=True, seed=tf.constant([1, 2]))
      surrogate = reinforce.reinforce_surrogate(out["log_prob"], advantage)
    grad = tape.gradient(surrogate, agent.fc_att.bias).numpy()
    a, mu = out["actions"].numpy(), out["mean"].numpy()
    score = (a - mu) / SIGMA * (1 - mu ** 2)                     # [B, T, 3]
    expected = -(score * advantage.numpy()[:, None, None]).sum(axis=1).mean(axis=0)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(grad).max() > 1e-3
    # The bins glimpses 2..T pooled are those the sampled a_1..a_{T-1} chose.
    index = ra.location_to_index(out["actions"][:, :-1], (3, 4, 2), (2, 2, 1)).numpy()
    np.testing.assert_array_equal(out["index"].numpy()[:, 1:], index)
    np.testing.assert_array_equal(out["index"].numpy()[:, 0], [[1, 1, 1]] * 4)


# ------------------------------------------------------------------------- eqs. 6-8, 15


def test_eq6_logits_are_one_fc_on_global_and_local_features():
  model = tiny_model()
  out = model(tiny_inputs(), training=False)
  e = out["embedding"].numpy()
  np.testing.assert_allclose(e[:, :128], out["global_feature"].numpy(), rtol=1e-6)
  kernel, bias = [v.numpy() for v in model.classifier.weights]
  np.testing.assert_allclose(out["logits"].numpy(), e @ kernel + bias, rtol=1e-4, atol=1e-5)


def test_eqs7_8_reward_is_correct_classification_discounted_to_the_last_step():
  logits = tf.constant([[0.1, 2.0, 0.3], [1.0, 0.0, -1.0], [0.0, 0.0, 5.0]])
  labels = tf.constant([1, 2, 2])
  np.testing.assert_allclose(reinforce.classification_return(logits, labels, 4).numpy(),
                             [1, 0, 1])
  np.testing.assert_allclose(
      reinforce.classification_return(logits, labels, 4, discount=0.9).numpy(),
      [0.9 ** 3, 0, 0.9 ** 3], rtol=1e-6)


def test_eq15_cross_entropy_without_smoothing_matches_numpy():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(4, 6)).astype(np.float32)
  labels = np.array([0, 5, 2, 2])
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  expected = -np.mean(np.log(p[np.arange(4), labels]))
  got = cross_entropy.label_smoothed_cross_entropy(logits, labels, 0.0)
  assert float(got) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------- eqs. 10-13


def _episodes(theta, n, seed):
  a = ra.sample_global(tf.fill([n, 1], theta), SIGMA, tf.constant(seed), 0, 1)[:, 0]
  return tf.stop_gradient(a)


def _estimate(reward_fn, baseline=None, n=400_000, theta=0.1, seed=(5, 6)):
  """d/dtheta E[R] by the ReinforceLoss surrogate; and its standard error."""
  th = tf.Variable(theta)
  a = _episodes(theta, n, list(seed))
  r = reward_fn(a)
  with tf.GradientTape() as tape:
    lp = tfd_log_prob(th, a)
    b = None if baseline is None else tf.fill([n, 1], baseline)
    loss = reinforce.reinforce_surrogate(lp[:, None], r, b)
  grad = -float(tape.gradient(loss, th))
  per_episode = ((a - theta) / SIGMA * (r - (baseline or 0.0))).numpy()
  return grad, per_episode.std() / math.sqrt(n)


def tfd_log_prob(theta, a):
  return ra.gaussian_policy(tf.reshape(theta, [1, 1]) + tf.zeros([a.shape[0], 1]),
                            SIGMA).log_prob(a[:, None])


def test_eq12_reinforce_matches_the_closed_form_gradient_within_its_standard_error():
  s = 0.04                                          # R = exp(-(a - 0.3)^2 / (2 s))
  reward = lambda a: tf.exp(-tf.square(a - 0.3) / (2 * s))
  closed_j = lambda t: math.sqrt(s / (s + SIGMA)) * math.exp(-(t - 0.3) ** 2 / (2 * (s + SIGMA)))
  assert closed_j(0.1) == pytest.approx(0.568063, abs=1e-6)
  dj = closed_j(0.1) * (0.3 - 0.1) / (s + SIGMA)
  finite = (closed_j(0.1 + 1e-5) - closed_j(0.1 - 1e-5)) / 2e-5
  assert dj == pytest.approx(1.623038, abs=1e-6)
  assert finite == pytest.approx(dj, abs=1e-6)
  grad, se = _estimate(reward)
  assert se == pytest.approx(0.005, abs=0.001)
  assert abs(grad - dj) < 4 * se
  # Binary reward [a > 0.3]: dJ/dtheta is the density of N(0.1, Sigma) at 0.3.
  binary = lambda a: tf.cast(a > 0.3, tf.float32)
  dj_binary = math.exp(-0.04 / (2 * SIGMA)) / math.sqrt(2 * math.pi * SIGMA)
  assert dj_binary == pytest.approx(1.182551, abs=1e-6)
  grad, se = _estimate(binary, seed=(8, 9))
  assert abs(grad - dj_binary) < 4 * se


def test_eq13_baseline_keeps_the_mean_and_lowers_the_variance():
  s = 0.04
  reward = lambda a: tf.exp(-tf.square(a - 0.3) / (2 * s))
  expected_r = math.sqrt(s / (s + SIGMA)) * math.exp(-0.04 / (2 * (s + SIGMA)))
  dj = expected_r * 0.2 / (s + SIGMA)
  plain, se_plain = _estimate(reward, seed=(10, 11))
  based, se_based = _estimate(reward, baseline=expected_r, seed=(10, 11))
  assert abs(based - dj) < 4 * se_based
  assert se_based == pytest.approx(0.0027, abs=0.0005)
  assert se_based < 0.6 * se_plain
  # The value loss is minimised by b = E[R]: its gradient is 2 (b - mean R).
  r = tf.constant([0.0, 1.0, 1.0, 0.0, 1.0])
  b = tf.Variable(tf.fill([5, 2], 0.2))
  with tf.GradientTape() as tape:
    loss = reinforce.value_loss(b, r)
  np.testing.assert_allclose(tape.gradient(loss, b).numpy(),
                             2 * (0.2 - r.numpy()[:, None]) / 10 * np.ones((5, 2)), rtol=1e-6)


def test_reinforce_term_sums_the_actions_that_chose_bins_and_adds_the_value_loss():
  log_prob = tf.constant([[-1.0, -2.0, -3.0], [0.5, 0.25, 4.0]])
  value = tf.constant([[0.2, 0.4, 0.6], [0.1, 0.3, 0.5]])
  logits = tf.constant([[0.0, 1.0], [1.0, 0.0]])
  batch = {"labels": tf.constant([1, 1])}                   # R = [1, 0]
  outputs = {"a3d_log_prob": log_prob, "a3d_value": value, "logits": logits}
  term = reinforce.ReinforceLoss(value_weight=0.5, include_final_action=False)
  r = np.array([1.0, 0.0])
  lp, v = log_prob.numpy(), value.numpy()
  rl = -np.mean([sum(lp[m, t] * (r[m] - v[m, t]) for t in range(2)) for m in range(2)])
  vl = np.mean((v - r[:, None]) ** 2)
  assert float(term(outputs, batch)) == pytest.approx(rl + 0.5 * vl, rel=1e-6)
  all_actions = reinforce.ReinforceLoss(baseline="none", value_weight=0.0)   # eq. 12: all T
  assert float(all_actions(outputs, batch)) == pytest.approx(-np.mean(lp.sum(1) * r), rel=1e-6)


# ------------------------------------------------------------------------- routing, eval


def _grads(model, x, loss_fn):
  """Largest |gradient| of each part of the model."""
  parts = {"trunk": model.trunk, "rgb": model.rgb_stream, "flow": model.flow_stream,
           "classifier": model.classifier}
  parts.update({name: getattr(model.agent, name) for name in (
      "fc1_feat", "fc2_feat", "fc1_att", "fc2_att", "fc_i2h", "fc_h2h", "fc_att", "fc_v")})
  with tf.GradientTape() as tape:
    out = model(x, training=True)
    loss = loss_fn(out)
  grads = tape.gradient(loss, {k: v.trainable_variables for k, v in parts.items()})
  return {k: max(0.0 if g is None else float(tf.reduce_max(tf.abs(g))) for g in v)
          for k, v in grads.items()}


def _max(grads, part):
  return grads[part]


AGENT_LAYERS = ("fc1_feat", "fc2_feat", "fc1_att", "fc2_att", "fc_i2h", "fc_h2h", "fc_att")
BACKBONE = ("trunk", "rgb", "flow")


def _rl_gradients(model, x):
  return _grads(model, x, lambda o: reinforce.reinforce_surrogate(
      o["a3d_log_prob"], tf.constant([1.0, -1.0])))


def test_default_policy_gradient_trains_the_agent_and_stops_at_g():
  """Eq. 9: theta is the agent's parameters; the representation network is trained by the
  supervised losses only (alg. 1, lines 13-15). The policy gradient reaches every layer of
  F_o, F_h and F_a (F_o's location branch only from glimpse 2 on: its input is stopped)
  and none of the backbones."""
  model = tiny_model()
  assert model.agent.policy_gradient_scope == "agent"
  x = tiny_inputs()
  rl = _rl_gradients(model, x)
  assert all(rl[p] > 0 for p in AGENT_LAYERS), rl
  assert all(rl[p] == 0.0 for p in BACKBONE + ("classifier", "fc_v")), rl
  ce = _grads(model, x, lambda o: cross_entropy.label_smoothed_cross_entropy(
      o["logits"], tf.constant([1, 3]), 0.0))
  assert all(ce[p] > 0 for p in BACKBONE + ("fc1_feat", "fc_i2h", "classifier")), ce


def test_gradient_scope_changes_no_forward_value():
  """The stopped-feature pass of scope agent is the same recurrence: the same means, log
  probabilities, actions and features as scope all, for the same seed and weights."""
  x = tiny_inputs(b=3)
  agent = tiny_model(policy_gradient_scope="agent", num_glimpses=4)
  every = tiny_model(policy_gradient_scope="all", num_glimpses=4)
  every.set_weights(agent.get_weights())
  one, two = agent(x, training=True), every(x, training=True)
  for key in ("a3d_log_prob", "a3d_locations", "embedding", "a3d_value"):
    np.testing.assert_array_equal(one[key].numpy(), two[key].numpy())


@pytest.mark.parametrize("scope", ["agent", "all", "location_head"])
def test_gradient_routing(scope):
  model = tiny_model(policy_gradient_scope=scope)
  x = tiny_inputs()
  labels = tf.constant([1, 3])
  ce = _grads(model, x, lambda o: cross_entropy.label_smoothed_cross_entropy(
      o["logits"], labels, 0.0))
  assert _max(ce, "fc_att") == 0.0 and _max(ce, "fc_v") == 0.0
  assert _max(ce, "trunk") > 0 and _max(ce, "fc_i2h") > 0
  rl = _grads(model, x, lambda o: reinforce.reinforce_surrogate(
      o["a3d_log_prob"], tf.constant([1.0, -1.0])))
  assert _max(rl, "fc_att") > 0 and _max(rl, "fc_v") == 0.0
  assert (_max(rl, "trunk") > 0) == (scope == "all")
  assert (_max(rl, "fc_i2h") > 0) == (scope != "location_head")
  value = _grads(model, x, lambda o: reinforce.value_loss(o["a3d_value"],
                                                           tf.constant([1.0, 0.0])))
  assert {p for p, v in value.items() if v > 0} == {"fc_v"}


def test_inference_is_deterministic_and_follows_the_mean():
  model = tiny_model()
  x = tiny_inputs()
  one = model(x, training=False)
  two = model(x, training=False)
  for key in ("embedding", "a3d_locations"):
    np.testing.assert_array_equal(one[key].numpy(), two[key].numpy())
  np.testing.assert_array_equal(one["a3d_log_prob"].numpy(), 0.0)
  assert int(model.sample_step.numpy()) == 0        # inference draws nothing
  model(x, training=True)
  model(x, training=True)
  assert int(model.sample_step.numpy()) == 2
  # T = 1: the single glimpse is the centre bin, fc_att plays no part.
  single = tiny_model(num_glimpses=1)
  before = single(x, training=False)["embedding"].numpy()
  single.agent.fc_att.kernel.assign(single.agent.fc_att.kernel * 0 + 5.0)
  np.testing.assert_array_equal(single(x, training=False)["embedding"].numpy(), before)
  # The bins are drawn on the frames for TensorBoard (the visualize hook): the frames, then
  # the frames with the boxes, side by side (clip_strip: 1-pixel gaps).
  drawn = model.attention_overlays(x, one)["a3d_bins"].numpy()
  assert drawn.shape == (2, 2 * 32 + 1, 3 * 16 + 2, 3)
  assert 0 <= drawn.min() and drawn.max() <= 1


def test_bin_boxes_on_the_frames_their_bins_cover():
  """The paper's grid (6 x 16 x 8, bins 4 x 6 x 3) at the centre corner (1, 5, 3): rows
  5..10 of 16 and columns 3..5 of 8 on frames 1-4; frames 0 and 5 get no box. A bin at
  corner (0, 0, 0) of a 2-frame map for 4 frames covers feature step 0 = frames 0 and 1."""
  boxes = a3d.bin_boxes(tf.constant([[[1.0, 5.0, 3.0]]]), (6, 16, 8), (4, 6, 3), 6).numpy()
  assert boxes.shape == (1, 6, 1, 4)
  for frame in range(1, 5):
    np.testing.assert_allclose(boxes[0, frame, 0], [5 / 16, 3 / 8, 11 / 16, 6 / 8])
  for frame in (0, 5):
    assert np.all(boxes[0, frame, 0] < 0)
  small = a3d.bin_boxes(tf.constant([[[0.0, 0.0, 0.0]]]), (2, 4, 2), (1, 2, 1), 4).numpy()
  assert [bool(np.all(small[0, f, 0] >= 0)) for f in range(4)] == [True, True, False, False]
  np.testing.assert_allclose(small[0, 0, 0], [0.0, 0.0, 0.5, 0.5])


# ------------------------------------------------------------------------- table VII: QAN*


def _scale_to_unit_scores(dense, features):
  """Rescales a random Dense(1) so that its scores on `features` [..., C] are O(1) (the
  untrained tiny network's features are large; sigmoid would saturate)."""
  rng = np.random.default_rng(2)
  kernel = rng.normal(size=dense.kernel.shape).astype(np.float32)
  kernel /= float(np.abs(features.reshape(-1, features.shape[-1]) @ kernel).max())
  dense.kernel.assign(kernel)
  dense.bias.assign(np.full(dense.bias.shape, 0.1, np.float32))


def test_qan_quality_pooling_matches_numpy():
  """QAN*: mu_l = sigmoid(w . mean_hw g_l + b), embedding = sum_l mu_l g_l / sum_l mu_l."""
  model = tiny_model(attention="qan")
  assert model.agent is None and model.spatial_attention is None
  x = tiny_inputs(b=2)
  g = model.two_stream_features(x["clips"], x["flow"], training=False).numpy()
  frames = g.mean(axis=(2, 3))                                   # [B, L, C]
  _scale_to_unit_scores(model.quality.score, frames)
  out = model(x, training=False)
  w = model.quality.score.kernel.numpy()[:, 0]
  bias = model.quality.score.bias.numpy()[0]
  for b in range(2):
    mu = [1.0 / (1.0 + math.exp(-(float(frames[b, l] @ w) + bias))) for l in range(3)]
    expected = sum(m * frames[b, l] for l, m in enumerate(mu)) / sum(mu)
    np.testing.assert_allclose(out["embedding"].numpy()[b], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["attention_quality"].numpy()[b], mu, rtol=1e-5)
  assert out["logits"].shape == (2, 5)
  assert "a3d_log_prob" not in out
  channels = g.shape[-1]
  assert sum(int(np.prod(v.shape)) for v in model.quality.weights) == channels + 1
  assert model.classifier.kernel.shape == (channels, 5)
  # Every quality underflowing to 0 still gives the weighted mean (no 0 / 0).
  model.quality.score.bias.assign([-1e4])
  pooled = model(x, training=False)["embedding"].numpy()
  assert np.all(np.isfinite(pooled))
  overlays = model.attention_overlays(x, out)
  assert set(overlays) == {"attention_quality"}


def test_separate_attention_is_a_spatial_softmax_per_frame_then_qan():
  keras.utils.set_random_seed(4)
  model = tiny_model(attention="separate")
  x = tiny_inputs(b=2, h=64, w=32)
  g = model.two_stream_features(x["clips"], x["flow"], training=False).numpy()
  _scale_to_unit_scores(model.spatial_attention.logit, g)
  frame_means = g.mean(axis=(2, 3))
  _scale_to_unit_scores(model.quality.score, frame_means)
  out = model(x, training=False)
  v = model.spatial_attention.logit.kernel.numpy()[:, 0]
  c = model.spatial_attention.logit.bias.numpy()[0]
  w = model.quality.score.kernel.numpy()[:, 0]
  bias = model.quality.score.bias.numpy()[0]
  _, length, height, width, _ = g.shape
  assert (height, width) == (4, 2)
  for b in range(2):
    frames, mus = [], []
    for l in range(length):
      logits = np.array([[g[b, l, i, j] @ v + c for j in range(width)] for i in range(height)])
      att = np.exp(logits - logits.max())
      att /= att.sum()
      np.testing.assert_allclose(out["attention_spatial"].numpy()[b, l], att, rtol=1e-4,
                                 atol=1e-6)
      feature = sum(att[i, j] * g[b, l, i, j] for i in range(height) for j in range(width))
      frames.append(feature)
      mus.append(1.0 / (1.0 + math.exp(-(float(feature @ w) + bias))))
    expected = sum(m * f for m, f in zip(mus, frames)) / sum(mus)
    np.testing.assert_allclose(out["embedding"].numpy()[b], expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())
  assert sorted(model.attention_overlays(x, out)) == ["attention_quality", "attention_spatial"]


# ------------------------------------------------------------------------- eq. 12, M episodes


def test_several_episodes_rerun_only_the_head():
  """num_episodes = M: the agent runs M times on the same g with their own actions; the first
  episode is the M = 1 model's (same weights, same seed); each episode's logits are the
  classifier on [f_g, its h_1..h_T]; inference runs one episode."""
  x = tiny_inputs(b=3)
  one = tiny_model(num_glimpses=3)
  many = tiny_model(num_glimpses=3, num_episodes=4)
  many.set_weights(one.get_weights())
  single = one(x, training=True)
  out = many(x, training=True)
  assert out["a3d_log_prob"].shape == (3, 4, 3) and out["a3d_value"].shape == (3, 4, 3)
  assert out["a3d_episode_logits"].shape == (3, 4, 5)
  np.testing.assert_array_equal(out["a3d_log_prob"].numpy()[:, 0], single["a3d_log_prob"])
  np.testing.assert_array_equal(out["embedding"].numpy(), single["embedding"].numpy())
  np.testing.assert_allclose(out["a3d_episode_logits"].numpy()[:, 0], single["logits"],
                             rtol=1e-6, atol=1e-6)
  lp = out["a3d_log_prob"].numpy()
  assert len({tuple(np.round(lp[0, m], 6)) for m in range(4)}) == 4   # own actions
  # Episode m: the agent on the one g with the step's seed folded by m, then the classifier
  # on [f_g, h_1..h_T] (the step's seed is (runtime.seed, training calls so far) = (0, 1)).
  g = many.two_stream_features(x["clips"], x["flow"], training=True)
  kernel = many.classifier.kernel.numpy()
  bias = many.classifier.bias.numpy()
  fg = g.numpy().mean(axis=(1, 2, 3))
  for m in range(4):
    seed = a3d.episode_seed(tf.constant([0, 1], tf.int64), m)
    run = many.agent(g, training=True, seed=seed)
    np.testing.assert_allclose(run["log_prob"].numpy(), lp[:, m], rtol=1e-5, atol=1e-5)
    local = run["local"].numpy().reshape(3, -1)
    np.testing.assert_allclose(out["a3d_episode_logits"].numpy()[:, m],
                               np.concatenate([fg, local], 1) @ kernel + bias,
                               rtol=1e-4, atol=1e-4)
  assert many(x, training=False)["a3d_log_prob"].shape == (3, 3)
  scalars = many.summary_scalars(out, {"labels": tf.constant([0, 1, 2])})
  assert scalars["a3d_reward"].shape == (3,) and scalars["a3d_value_error"].shape == (3,)


def test_reinforce_term_over_several_episodes_matches_numpy():
  """Eq. 12/13 with M episodes per clip: -1/(B M) sum_{b,m} sum_t log pi (R_bm - b_bmt)
  + value_weight * mean (b - R)^2, R_bm = [argmax logits_bm = label_b]."""
  rng = np.random.default_rng(3)
  b, m, t, n = 2, 3, 2, 4
  lp = rng.normal(size=(b, m, t)).astype(np.float32)
  value = rng.random((b, m, t)).astype(np.float32)
  logits = rng.normal(size=(b, m, n)).astype(np.float32)
  labels = np.array([1, 3])
  outputs = {"a3d_log_prob": tf.constant(lp), "a3d_value": tf.constant(value),
             "a3d_episode_logits": tf.constant(logits),
             "logits": tf.constant(logits[:, 0])}
  term = reinforce.ReinforceLoss(value_weight=0.5)
  got = float(term(outputs, {"labels": tf.constant(labels)}))
  reward = np.array([[float(np.argmax(logits[i, j]) == labels[i]) for j in range(m)]
                     for i in range(b)])
  rl = -np.mean([sum(lp[i, j, k] * (reward[i, j] - value[i, j, k]) for k in range(t))
                 for i in range(b) for j in range(m)])
  vl = np.mean((value - reward[..., None]) ** 2)
  assert got == pytest.approx(rl + 0.5 * vl, rel=1e-6)
  bad = dict(outputs, a3d_episode_logits=tf.constant(logits[:, :2]))
  with pytest.raises(ValueError, match="episodes"):
    term(bad, {"labels": tf.constant(labels)})


def test_several_episodes_need_the_gaussian_agent():
  with pytest.raises(cfg.ConfigError, match="num_episodes"):
    cfg.build_config("a3d:random_attention", overrides=["model.a3d.num_episodes=2"]).model.a3d.validate()
  c = cfg.build_config("a3d", overrides=["model.a3d.num_episodes=2"])
  a3d.validate_config(c)


def test_uniform_policy_draws_bins_at_train_and_test():
  model = tiny_model(location_policy="uniform", num_glimpses=4)
  x = tiny_inputs(b=6)
  out = model(x, training=False)
  locs = out["a3d_locations"].numpy()[:, 1:]
  assert len({tuple(v) for v in locs.reshape(-1, 3)}) > 1
  np.testing.assert_array_equal(out["a3d_log_prob"].numpy(), 0.0)


def test_mixed_precision_policy_is_float32():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = tiny_model()
    out = model(tiny_inputs(), training=True)
    assert out["a3d_log_prob"].dtype == tf.float32
    assert model.agent.fc_att.kernel.dtype == "float32"
    assert model.agent.compute_dtype == "float32"
    assert np.all(np.isfinite(out["a3d_log_prob"].numpy()))
    # A training step of the whole objective (CE + REINFORCE + value loss) under bfloat16:
    # finite gradients reach the backbone, the agent and the value head.
    labels = tf.constant([1, 3])
    term = reinforce.ReinforceLoss()
    with tf.GradientTape() as tape:
      out = model(tiny_inputs(), training=True)
      loss = (cross_entropy.label_smoothed_cross_entropy(out["logits"], labels, 0.0)
              + term(out, {"labels": labels}))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(tf.cast(g, tf.float32).numpy()))
               for g in grads)
    before = model.agent.fc_v.kernel.numpy().copy()
    keras.optimizers.Adam(1e-3).apply_gradients(zip(grads, model.trainable_variables))
    assert not np.array_equal(before, model.agent.fc_v.kernel.numpy())
  finally:
    keras.mixed_precision.set_global_policy("float32")


# ------------------------------------------------------------------------- weights, size


def test_imagenet_style_weights_load_into_both_streams_and_trunk(tmp_path):
  """A 2-D ResNet weights file (written here, keras.applications layer names): the RGB
  stream and the trunk take it as is, the flow conv1 the RGB conv1 averaged over its input
  channels and replicated (TSN cross-modality rule)."""
  source = resnet2d.resnet2d(block_counts=(1, 1, 1, 1), base_width=64, name="source")
  rng = np.random.default_rng(6)
  for v in source.weights:
    v.assign(rng.normal(size=v.shape).astype(np.float32) * 0.01 + (1.0 if "variance" in v.path
                                                                   else 0.0))
  path = str(tmp_path / "resnet.weights.h5")
  source.save_weights(path)
  model = a3d.A3D(3, block_counts=(1, 1, 1, 1), base_width=64, bin_size=(1, 1, 1),
                  hidden_dim=4, feature_dim=4, num_glimpses=2)
  done = a3d.initialize_streams(model, "imagenet", path)
  assert len(done) == 3
  rgb_kernel = source.get_layer("conv1_conv").kernel.numpy()
  flow_kernel = model.flow_stream.get_layer("conv1_conv").kernel.numpy()
  assert flow_kernel.shape == (7, 7, 2, 64)
  np.testing.assert_allclose(flow_kernel[:, :, 0], rgb_kernel.mean(axis=2), rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(flow_kernel[:, :, 1], rgb_kernel.mean(axis=2), rtol=1e-5, atol=1e-9)
  np.testing.assert_array_equal(model.rgb_stream.get_layer("conv1_conv").kernel.numpy(),
                                rgb_kernel)
  np.testing.assert_array_equal(
      model.trunk.get_layer("conv5_block1_3_conv").kernel.numpy(),
      source.get_layer("conv5_block1_3_conv").kernel.numpy())
  np.testing.assert_array_equal(
      model.flow_stream.get_layer("conv2_block1_2_conv").kernel.numpy(),
      source.get_layer("conv2_block1_2_conv").kernel.numpy())
  np.testing.assert_allclose(weights.cross_modality_kernel(rgb_kernel, 2), flow_kernel)


def test_full_size_parameter_count_and_forward_pass():
  """Table I-IV at the paper's size (docstring breakdown of tfreid.models.a3d), one 6 x 256
  x 128 clip through it."""
  n = 625
  model = a3d.build(cfg.build_config("a3d", overrides=["model.backbone.init=none"]), n)
  count = lambda layer: sum(int(np.prod(v.shape)) for v in layer.weights)
  assert count(model.rgb_stream) == 228_288
  assert count(model.flow_stream) == 228_288 - 7 * 7 * 64
  assert count(model.trunk) == 23_332_864
  assert count(model.agent) == (262_272 + 512 + 2 * 33_024 + 65_792 + 65_536 + 771 + 257)
  assert count(model.classifier) == 3_073 * n
  assert count(model) == 24_247_492 + 3_073 * n
  out = model(tiny_inputs(b=1, t=6, h=256, w=128), training=False)
  assert out["embedding"].shape == (1, 2048 + 4 * 256)
  assert out["logits"].shape == (1, n)
  assert out["a3d_locations"].numpy()[0, 0].tolist() == [1, 5, 3]
  assert np.all(np.isfinite(out["embedding"].numpy()))


def test_every_variant_builds_a_valid_config():
  from experiments import a3d as experiment
  for variant in experiment.VARIANTS:
    c = cfg.build_config("a3d" + (f":{variant}" if variant else ""))
    a3d.validate_config(c)
  assert cfg.build_config("a3d:glimpses2").model.a3d.num_glimpses == 2
  assert cfg.build_config("a3d:no_rl").losses.reinforce.weight == 0
  assert "reinforce" not in dict(cfg.build_config("a3d:no_attention").losses.active())
  for variant, mode in (("qan", "qan"), ("separate_attention", "separate")):
    c = cfg.build_config(f"a3d:{variant}")
    assert c.model.a3d.attention == mode and "reinforce" not in dict(c.losses.active())
  assert cfg.build_config("a3d:bin_t2").model.a3d.bin_size == [2, 6, 3]
  assert cfg.build_config("a3d:bin_h4w2").model.a3d.bin_size == [4, 4, 2]
  assert cfg.build_config("a3d:bin_t4").model.a3d.bin_size == cfg.build_config("a3d").model.a3d.bin_size
  with pytest.raises(cfg.ConfigError, match="variant"):
    experiment.get_config("nope")
