"""Fisher-vector pooling (tfreid.fisher_vector, siamese_convgru eq. 10, table IV): eq. 10
against a plain loop over components and frames, the GMM's posteriors against Bayes' rule
written out, EM recovering two separated Gaussians, clip sums equal to one pass over the
video, the optional normalisation, bad input refused; and on a tiny trained siamese_convgru
run: `frame_states` is what the temporal pooling pools, and `python -m
tfreid.metric_learning --method=fisher_vector` ranks by the Euclidean distance between
Fisher vectors computed here frame by frame."""

import json
import os

import numpy as np
import pytest

from tfreid import config as cfg
from tfreid import fisher_vector as fv
from tfreid import metric_learning
from tfreid.data import pipeline
from tfreid.training import evaluation

import data_fixtures
from trainer_fixtures import first_cpu_strategy, train_seeded


def _hand_gmm():
  return fv.DiagonalGMM(means=np.array([[0.0, 1.0, -1.0], [2.0, -0.5, 0.5]]),
                        variances=np.array([[1.0, 0.25, 4.0], [0.5, 2.0, 1.0]]),
                        priors=np.array([0.3, 0.7]))


def _posterior_loop(gmm, h):
  q = np.zeros((len(h), gmm.num_components))
  for t, x in enumerate(h):
    p = []
    for k in range(gmm.num_components):
      density = 1.0
      for d in range(len(x)):
        var = gmm.variances[k, d]
        density *= np.exp(-(x[d] - gmm.means[k, d]) ** 2 / (2 * var)) / np.sqrt(2 * np.pi * var)
      p.append(gmm.priors[k] * density)
    q[t] = np.array(p) / sum(p)
  return q


def _eq10_loop(gmm, h):
  """Eq. 10 written out: u_k, v_k per component, summed over frames one at a time."""
  q = _posterior_loop(gmm, h)
  n = len(h)
  out = []
  for k in range(gmm.num_components):
    sigma = np.sqrt(gmm.variances[k])
    u = np.zeros(h.shape[1])
    v = np.zeros(h.shape[1])
    for t in range(n):
      z = (h[t] - gmm.means[k]) / sigma
      u += q[t, k] * z
      v += q[t, k] * (z ** 2 - 1.0)
    out += [u / (n * np.sqrt(gmm.priors[k])), v / (n * np.sqrt(2 * gmm.priors[k]))]
  return np.concatenate(out)


def test_posteriors_follow_bayes_rule_and_sum_to_one():
  gmm = _hand_gmm()
  h = np.random.default_rng(0).normal(size=(7, 3)) * 2.0
  q, log_like = gmm.posteriors(h)
  np.testing.assert_allclose(q, _posterior_loop(gmm, h), rtol=1e-10)
  np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-12)
  # Far from both components the log-sum-exp keeps the posteriors finite.
  q_far, _ = gmm.posteriors(np.full((1, 3), 1e3))
  assert np.all(np.isfinite(q_far)) and q_far.sum() == pytest.approx(1.0)
  direct = np.log(sum(gmm.priors[k] * np.prod(
      np.exp(-(h - gmm.means[k]) ** 2 / (2 * gmm.variances[k]))
      / np.sqrt(2 * np.pi * gmm.variances[k]), axis=1) for k in range(2)))
  np.testing.assert_allclose(log_like, direct, rtol=1e-10)


def test_eq10_equals_a_loop_over_components_and_frames():
  gmm = _hand_gmm()
  h = np.random.default_rng(1).normal(size=(5, 3)) * 1.5 + 0.5
  encoded = fv.fisher_vector(gmm, h)
  assert encoded.shape == (2 * 3 * 2,)  # 2DC
  np.testing.assert_allclose(encoded, _eq10_loop(gmm, h), rtol=1e-9, atol=1e-12)
  # Hand case: one component, one frame at mu + sigma: u = 1, v = 0.
  one = fv.DiagonalGMM(np.array([[1.0, 2.0]]), np.array([[4.0, 9.0]]), np.array([1.0]))
  np.testing.assert_allclose(fv.fisher_vector(one, [[3.0, 5.0]]), [1.0, 1.0, 0.0, 0.0],
                             atol=1e-12)
  # ... and at mu + 2 sigma with T = 2 frames (the other at mu): u = 1, v = (3 - 1) / 2 / sqrt2.
  np.testing.assert_allclose(fv.fisher_vector(one, [[5.0, 8.0], [1.0, 2.0]]),
                             [1.0, 1.0, 1 / np.sqrt(2), 1 / np.sqrt(2)], atol=1e-12)


def test_clip_sums_with_weights_equal_one_pass_over_the_video():
  gmm = _hand_gmm()
  h = np.random.default_rng(2).normal(size=(6, 3))
  # Two clips of 4: frames 0-3 and 2-5 with the repeats (2, 3) weighted 0.
  a1, a2 = fv.frame_sums(gmm, h[0:4])
  b1, b2 = fv.frame_sums(gmm, h[2:6], weights=[0, 0, 1, 1])
  np.testing.assert_allclose(fv.finish(gmm, a1 + b1, a2 + b2, 6), fv.fisher_vector(gmm, h),
                             rtol=1e-10, atol=1e-12)
  batch = fv.finish(gmm, np.stack([a1, b1]), np.stack([a2, b2]), np.array([4, 2]))
  np.testing.assert_allclose(batch[0], fv.fisher_vector(gmm, h[0:4]), rtol=1e-10)
  np.testing.assert_allclose(batch[1], fv.fisher_vector(gmm, h[4:6]), rtol=1e-10)


def test_power_l2_normalisation_is_a_switch():
  gmm = _hand_gmm()
  h = np.random.default_rng(3).normal(size=(4, 3))
  raw = fv.fisher_vector(gmm, h)
  normed = fv.fisher_vector(gmm, h, normalization="power_l2")
  expected = np.sign(raw) * np.sqrt(np.abs(raw))
  np.testing.assert_allclose(normed, expected / np.linalg.norm(expected), rtol=1e-10)
  assert np.linalg.norm(normed) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="expected one of"):
    fv.fisher_vector(gmm, h, normalization="l1")


def test_em_recovers_two_separated_gaussians():
  rng = np.random.default_rng(4)
  a = rng.normal([0.0, 0.0], [1.0, 0.5], size=(1500, 2))
  b = rng.normal([8.0, -6.0], [0.5, 2.0], size=(500, 2))
  x = rng.permutation(np.concatenate([a, b]))
  gmm = fv.fit_gmm(x, 2, seed=0)
  order = np.argsort(gmm.means[:, 0])
  # Separated clusters: the maximum-likelihood fit is each cluster's sample mean, (biased)
  # variance and share of the frames.
  np.testing.assert_allclose(gmm.means[order], [a.mean(0), b.mean(0)], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gmm.variances[order], [a.var(0), b.var(0)], rtol=1e-4)
  np.testing.assert_allclose(gmm.priors[order], [0.75, 0.25], rtol=1e-6)
  # ... close to the generating parameters.
  np.testing.assert_allclose(gmm.means[order], [[0.0, 0.0], [8.0, -6.0]], atol=0.3)
  np.testing.assert_allclose(gmm.variances[order], [[1.0, 0.25], [0.25, 4.0]], rtol=0.15)
  assert gmm.priors.sum() == pytest.approx(1.0)
  # Seeded: the same fit twice.
  again = fv.fit_gmm(x, 2, seed=0)
  np.testing.assert_array_equal(again.means, gmm.means)
  # The variance floor (library choice): identical frames do not give a zero variance.
  flat = fv.fit_gmm(np.concatenate([np.zeros((10, 2)), np.ones((10, 2))]), 2)
  assert np.all(flat.variances > 0)


def test_bad_input_is_refused():
  x = np.random.default_rng(5).normal(size=(5, 3))
  with pytest.raises(ValueError, match="components >= 1"):
    fv.fit_gmm(x, 0)
  with pytest.raises(ValueError, match="at least as many frames as components"):
    fv.fit_gmm(x, 6)
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    fv.fit_gmm(x[0], 2)
  with pytest.raises(ValueError, match="NaN"):
    fv.fit_gmm(np.full((5, 3), np.nan), 2)
  gmm = _hand_gmm()
  with pytest.raises(ValueError, match="fitted on 3"):
    fv.fisher_vector(gmm, np.zeros((4, 2)))
  with pytest.raises(ValueError, match="2 frame weights for 5 frames"):
    fv.frame_sums(gmm, x, weights=[1, 1])
  with pytest.raises(ValueError, match="T = 0"):
    fv.finish(gmm, np.zeros((2, 3)), np.zeros((2, 3)), 0)
  with pytest.raises(SystemExit):
    metric_learning.main(["--model_dir=x", "--method=kissme", "--components=4"])
  with pytest.raises(ValueError, match="has none"):
    fv.run_distances(None, object(), "x")  # a model without frame states


# ------------------------------------------------------------------ a tiny trained run

TINY = ["data.height=64", "data.width=32", "data.seq_len=3", "data.test_seq_len=4",
        "model.backbone.name=vgg16", "runtime.jit_compile=false",
        "data.num_identities=4", "data.num_instances=2", "data.test_batch_size=3",
        "model.siamese_convgru.backbone_width=0.0625", "model.siamese_convgru.channels=[3, 4, 4]",
        "trainer.epochs=1", "trainer.steps_per_epoch=2", "trainer.log_every_steps=1",
        "trainer.checkpoint_every_steps=1000", "trainer.image_summary_every_steps=0"]


@pytest.fixture(scope="module", name="run")
def fixture_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("fv")
  data = str(root / "data")
  data_fixtures.write_tiny_dataset(data, num_ids=4, tracklets_per_id=2, num_frames=(3, 9),
                                   height=80, width=40, cameras=2, num_test_ids=3, seed=5)
  config = cfg.build_config("siamese_convgru:synthetic", overrides=TINY, data_dir=data)
  model_dir = root / "run"
  trainer, _ = train_seeded(config, model_dir, first_cpu_strategy())
  cfg.save_config(config, str(model_dir / "config.yaml"))
  return config, trainer.model, str(model_dir)


def _frames_per_tracklet(config, model, partition):
  """Every tracklet's frame states, each frame once (frame_weight 1), in NumPy."""
  frames = {}
  for batch in pipeline.make_test_dataset(config, partition, protocol=None,
                                          streams=("clips",)):
    states = model.frame_states({"clips": batch["clips"]}, training=False).numpy()
    for i, row in enumerate(batch["index"].numpy()):
      keep = batch["frame_weight"].numpy()[i] > 0
      frames.setdefault(int(row), []).append(states[i][keep].astype(np.float64))
  return [np.concatenate(frames[r]) for r in sorted(frames)]


def test_frame_states_are_what_the_temporal_pooling_pools(run):
  config, model, _ = run
  batch = next(iter(pipeline.make_test_dataset(config, "query", protocol=None,
                                               streams=("clips",))))
  outputs = model({"clips": batch["clips"]}, training=False)
  states = model.frame_states({"clips": batch["clips"]}, training=False).numpy()
  assert states.shape == batch["clips"].shape[:2] + (model.embedding_dim,)
  if "attention_temporal" in outputs:
    weights = outputs["attention_temporal"].numpy()
  else:
    weights = np.full(states.shape[:2], 1.0 / states.shape[1])
  np.testing.assert_allclose(np.einsum("bt,btd->bd", weights, states),
                             outputs["embedding"].numpy(), rtol=1e-5, atol=1e-6)


def test_cli_ranks_by_fisher_vectors_of_every_frame(run, tmp_path):
  config, model, model_dir = run
  train = _frames_per_tracklet(config, model, "train")
  gmm = fv.fit_gmm(np.concatenate(train), 2, seed=0)
  query = np.stack([fv.fisher_vector(gmm, h) for h in _frames_per_tracklet(config, model,
                                                                            "query")])
  gallery = np.stack([fv.fisher_vector(gmm, h) for h in _frames_per_tracklet(config, model,
                                                                              "gallery")])
  assert query.shape[1] == 2 * 2 * model.embedding_dim
  expected = np.sqrt(((query[:, None] - gallery[None]) ** 2).sum(-1))
  protocol, _ = evaluation.resolve_protocol(config)
  distmat, q_index, g_index, details = fv.run_distances(config, model, protocol, components=2)
  np.testing.assert_allclose(distmat, expected, rtol=1e-4, atol=1e-6)
  assert len(q_index.pids) == len(query) and len(g_index.pids) == len(gallery)
  assert details["dimensions"] == query.shape[1]

  out = tmp_path / "eval_fv"
  assert metric_learning.main([f"--model_dir={model_dir}", "--method=fisher_vector",
                               "--components=2", f"--output_dir={out}"]) == 0
  record = json.loads((out / "metrics.json").read_text())
  assert record["fisher_vector"]["components"] == 2
  assert record["fisher_vector"]["normalization"] == "none"
  from tfreid import metrics  # pylint: disable=import-outside-toplevel
  ranks = metrics.evaluate_rank(expected, q_index.pids, g_index.pids, q_index.camids,
                                g_index.camids, max_rank=config.eval.max_rank)
  assert record["rank1"] == pytest.approx(float(ranks["cmc"][0]))
  assert os.path.exists(out / "metrics.md")
  with pytest.raises(ValueError, match="at least as many frames as components"):
    metric_learning.evaluate_run(model_dir, "fisher_vector", components=10000,
                                 output_dir=str(tmp_path / "x"))
