"""stal through the trainer, evaluation and export, on a tiny dataset with keypoints: the
four named terms, 2 replicas equal 1 with XLA, resuming equals a straight run,
mixed_bfloat16 trains, evaluation merges tracklets over all frames (eq. 9) with the fused
distance, and the SavedModel (clips and keypoints in) reproduces the evaluation's features
and distances."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfreid import config as cfg
from tfreid.data import pipeline
from tfreid.data import reader
from tfreid.serving import exporter
from tfreid.training import evaluation
from tfreid.training import trainer as trainer_lib

import data_fixtures
from trainer_fixtures import fixture_float32_policy  # pylint: disable=unused-import
from trainer_fixtures import first_cpu_strategy, train_seeded, two_cpu_strategy

TINY = ["data.height=64", "data.width=32", "data.seq_len=2", "data.num_identities=2",
        "data.num_instances=2", "data.test_batch_size=4", "model.stal.width_divisor=16",
        "model.stal.global_embedding_dim=12", "model.stal.local_embedding_dim=6",
        "model.stal.attention_channels=64", "model.stal.pool_size=4", "trainer.epochs=1",
        "trainer.steps_per_epoch=2", "trainer.log_every_steps=1",
        "trainer.image_summary_every_steps=0", "runtime.jit_compile=false"]


# Table V's ResNet trunk cut to one bottleneck per stage at base width 4: the STAL layers on
# top (ROI pooling, part networks, STAN, eqs. 4-9) are the same, and the trainer traces in a
# fraction of the BN-Inception stacks' time. The evaluation and export test keeps the paper's
# trunk.
SMALL_TRUNK = ["model.backbone.name=resnet2d", "model.backbone.block_counts=[1, 1, 1, 1]",
               "model.backbone.base_width=4",
               "model.backbone.nonlocal_blocks.blocks_per_stage=[0, 0, 0, 0]"]


def config_for(data_dir, *overrides):
  return cfg.build_config("stal:synthetic", overrides=TINY + list(overrides),
                          data_dir=str(data_dir))


@pytest.fixture(scope="module", name="data")
def fixture_data(tmp_path_factory):
  """Frames 80x40 (the model reads 64x32: export resizes them and their keypoints)."""
  path = str(tmp_path_factory.mktemp("stal") / "data")
  data_fixtures.write_tiny_dataset(path, num_ids=4, tracklets_per_id=2, num_frames=(3, 6),
                                   height=80, width=40, with_keypoints=True,
                                   num_test_ids=2, seed=5)
  return path


def test_two_replicas_equal_one_with_xla(data, tmp_path):
  """With XLA, two logical CPUs equal one after 3 SGD steps. The triplet terms mine within
  each replica's batch, so they are off here; identity, consistency and L2 are compared.
  The BatchNorm layers normalise each replica's half batch by its own statistics
  (per-replica BN), so they are frozen here (inference mode), and the dropout before W^g
  is off. The smallest frames the strides allow (32 x 32: a 2 x 2 low-level map, 2 x 2
  part bins) and table V's ResNet trunk cut to one bottleneck per stage at base width 4
  (the inception stacks take minutes to compile) keep the compilation short; the STAL
  layers on top of the trunk are the same."""
  overrides = ["losses.global_triplet.weight=0", "losses.local_triplet.weight=0",
               "model.stal.dropout=0", "optimizer.name=sgd", "optimizer.learning_rate=1e-6",
               'trainer.freeze=["*bn*"]',
               "runtime.jit_compile=true", "data.height=32", "data.width=32",
               "model.stal.pool_size=2", "trainer.steps_per_epoch=3", *SMALL_TRUNK]
  one, v1 = train_seeded(config_for(data, *overrides), tmp_path / "one", first_cpu_strategy())
  two, v2 = train_seeded(config_for(data, *overrides), tmp_path / "two", two_cpu_strategy())
  assert int(one.global_step.numpy()) == int(two.global_step.numpy()) == 3
  assert {"cross_entropy", "consistency"} <= set(v1)
  assert np.isfinite(v1["loss"])
  assert v1["consistency"] == pytest.approx(v2["consistency"], rel=1e-5)
  moved = 0.0
  for a, b, start in zip(one.model.trainable_variables, two.model.trainable_variables,
                         one.initial):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    moved = max(moved, float(np.abs(a.numpy() - start).max()))
  assert moved > 1e-4


def test_every_term_trains_and_a_resumed_run_equals_a_straight_one(data, tmp_path):
  """SGD: Adam's first steps divide near-zero gradients (the convolution biases before a
  BatchNorm get none but rounding) by their own size, which turns rounding into steps.
  On the small trunk (SMALL_TRUNK)."""
  sgd = ["optimizer.name=sgd", "optimizer.learning_rate=0.05", *SMALL_TRUNK]
  config = config_for(data, "trainer.epochs=2", *sgd)
  straight, values = train_seeded(config, tmp_path / "straight", first_cpu_strategy())
  assert {"global_triplet", "local_triplet", "cross_entropy", "consistency",
          "metrics/attention_mean", "metrics/attention_spread"} <= set(values)
  assert values["global_triplet"] != values["local_triplet"]
  train_seeded(config_for(data, "trainer.epochs=1", *sgd), tmp_path / "resumed",
         first_cpu_strategy())
  resumed, _ = train_seeded(config, tmp_path / "resumed", first_cpu_strategy())
  assert int(resumed.global_step.numpy()) == 4
  for a, b in zip(straight.model.variables, resumed.model.variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def _reference(config, model, partition):
  """Per-clip outputs of the test pipeline merged in NumPy over all frames (eq. 9), each
  frame once: the c-th dense clip of a tracklet of n frames holds frames cT .. cT + T - 1,
  those from n on being repeats that pad the last clip."""
  dataset = pipeline.make_test_dataset(config, partition, protocol=None,
                                       streams=("clips", "keypoints"))
  num_frames = reader.load_partition(config.data.data_dir, partition).num_frames
  sums, clips_seen = {}, {}
  for batch in dataset:
    out = model({k: batch[k] for k in ("clips", "keypoints")}, training=False)
    s = out["attention_scores"].numpy().astype(np.float64)
    f = out["part_features"].numpy().astype(np.float64)
    g = out["frame_embedding"].numpy().astype(np.float64)
    t = g.shape[1]
    for i, row in enumerate(batch["index"].numpy()):
      c = clips_seen.get(int(row), 0)
      clips_seen[int(row)] = c + 1
      keep = c * t + np.arange(t) < num_frames[row]
      acc = sums.setdefault(int(row), [0.0, 0.0, 0.0, 0])
      acc[0] = acc[0] + (s[i][keep][..., None] * f[i][keep]).sum(0)
      acc[1] = acc[1] + s[i][keep].sum(0)
      acc[2] = acc[2] + g[i][keep].sum(0)
      acc[3] += int(keep.sum())
  rows = sorted(sums)
  return {"parts": np.stack([sums[r][0] / sums[r][1][:, None] for r in rows]),
          "part_weight": np.stack([sums[r][1] for r in rows]),
          "embedding": np.stack([sums[r][2] / sums[r][3] for r in rows])}


def _np_distance(q, g, w=0.3):
  out = np.zeros((len(q["embedding"]), len(g["embedding"])))
  for i in range(out.shape[0]):
    for j in range(out.shape[1]):
      aq = q["part_weight"][i] / q["part_weight"][i].sum()
      ag = g["part_weight"][j] / g["part_weight"][j].sum()
      local = sum(aq[r] * ag[r] * np.linalg.norm(q["parts"][i, r] - g["parts"][j, r])
                  for r in range(6))
      out[i, j] = local + w * np.linalg.norm(q["embedding"][i] - g["embedding"][j])
  return out


def _tracklet_streams(data_dir, partition, position):
  index = reader.load_partition(data_dir, partition)
  arrays, _ = reader.RecordReader(index, use_keypoints=True).tracklet(position)
  frames = np.stack([tf.io.decode_image(f, channels=3).numpy() for f in arrays.frames])
  keypoints = arrays.keypoints * arrays.present[:, None, None]
  return frames, keypoints.astype(np.float32)


def test_evaluation_and_export_merge_all_frames_and_use_the_fused_distance(data, tmp_path):
  """On the paper's trunk. The run directory is the trainer's own, with a checkpoint of its
  initial state: training steps would add nothing to what is compared here, and tracing
  the BN-Inception training step takes a minute."""
  config = config_for(data)
  model_dir = tmp_path / "run"
  keras.utils.set_random_seed(0)
  trainer = trainer_lib.Trainer(config, str(model_dir), strategy=first_cpu_strategy())
  trainer.keeper.save(1)
  cfg.save_config(config, str(model_dir / "config.yaml"))
  model = trainer.model
  result = evaluation.evaluate_model(config, model)
  query, gallery = _reference(config, model, "query"), _reference(config, model, "gallery")
  np.testing.assert_allclose(result["distmat"], _np_distance(query, gallery), rtol=1e-4,
                             atol=1e-5)

  path = exporter.export_run(str(model_dir), str(tmp_path / "export"))
  loaded = tf.saved_model.load(path)
  signature = loaded.signatures["embed_tracklet"]
  assert sorted(signature.structured_input_signature[1]) == ["frames", "keypoints"]
  assert sorted(loaded.signatures["serving_default"].structured_input_signature[1]) == [
      "clips", "keypoints"]
  keys = ("embedding", "part_weight", "parts")
  outs = {}
  for side, ref in (("query", query), ("gallery", gallery)):
    got = []
    for position in range(len(ref["embedding"])):
      frames, keypoints = _tracklet_streams(data, side, position)
      got.append(signature(frames=tf.constant(frames), keypoints=tf.constant(keypoints)))
    outs[side] = {k: np.concatenate([g[k].numpy() for g in got]) for k in keys}
    for k in keys:
      np.testing.assert_allclose(outs[side][k], ref[k], rtol=1e-4, atol=1e-5)
  distance = loaded.signatures["distance"](
      **{f"query_{k}": tf.constant(v) for k, v in outs["query"].items()},
      **{f"gallery_{k}": tf.constant(v) for k, v in outs["gallery"].items()})["distance"]
  np.testing.assert_allclose(distance.numpy(), result["distmat"], rtol=1e-4, atol=1e-5)
  assert os.path.exists(os.path.join(path, "assets", "model_card.json"))


def _finite_terms(values):
  terms = ("loss", "global_triplet", "local_triplet", "cross_entropy", "consistency")
  assert set(terms) <= set(values)
  return all(np.isfinite(values[k]) for k in terms)


def test_mixed_bfloat16_trains(data, tmp_path, float32_policy):
  """runtime.mixed_precision=mixed_bfloat16: the layers compute in bfloat16, every loss
  term (and the STAN scores, eqs. 8-9, kept in float32) stays finite. On the small trunk
  (SMALL_TRUNK)."""
  del float32_policy
  trainer, values = train_seeded(config_for(data, "runtime.mixed_precision=mixed_bfloat16",
                                            *SMALL_TRUNK),
                                 tmp_path / "bf16", first_cpu_strategy())
  assert trainer.model.low_level.compute_dtype == "bfloat16"
  assert _finite_terms(values)
