"""siamese_convgru through the trainer, evaluation and export on a tiny dataset: 2 replicas
equal 1 with XLA, a resumed run equals a straight one (dropout included), mixed_bfloat16
trains, evaluation uses the learned distance on averaged clip embeddings, the SavedModel's
`embed_tracklet` and `distance` (embeddings only) reproduce it, and the attention drawn on
the frames reaches TensorBoard."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from tfreid import config as cfg
from tfreid.data import pipeline
from tfreid.data import reader
from tfreid.serving import exporter
from tfreid.training import evaluation

import data_fixtures
from trainer_fixtures import (first_cpu_strategy, fixture_float32_policy, train_seeded,  # pylint: disable=unused-import
                              two_cpu_strategy)

# VGG-16 at 1/16 width: 13 convolutions to compile rather than GoogLeNet's 57.
TINY = ["data.height=64", "data.width=32", "data.seq_len=3", "data.test_seq_len=4",
        "model.backbone.name=vgg16",
        "data.num_identities=4", "data.num_instances=2", "data.test_batch_size=3",
        "model.siamese_convgru.backbone_width=0.0625", "model.siamese_convgru.channels=[3, 4, 4]",
        "trainer.epochs=1", "trainer.steps_per_epoch=2", "trainer.log_every_steps=1",
        "trainer.checkpoint_every_steps=1000", "trainer.image_summary_every_steps=0"]


@pytest.fixture(scope="module", name="data")
def fixture_data(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("sc") / "data")
  data_fixtures.write_tiny_dataset(path, num_ids=4, tracklets_per_id=2, num_frames=(3, 9),
                                   height=80, width=40, cameras=2, num_test_ids=3, seed=5)
  return path


def config_for(data, *overrides):
  return cfg.build_config("siamese_convgru:synthetic", overrides=TINY + list(overrides),
                          data_dir=str(data))


def test_two_replicas_equal_one_with_xla(data, tmp_path):
  """3 steps of SGD (RMSProp divides near-zero gradients by their own size, which turns
  float rounding into differences of the order of the step) with element-wise clipping;
  dropout off (each replica draws its own masks); the paper's U[-1, 1] ConvGRU kernels,
  whose larger gradients move the weights of this tiny model within the 3 steps."""
  overrides = ["runtime.jit_compile=true", "optimizer.name=sgd", "optimizer.momentum=0",
               "optimizer.learning_rate=0.5", "model.siamese_convgru.dropout=0",
               "model.siamese_convgru.gru_init_range=1", "trainer.steps_per_epoch=3"]
  one, v1 = train_seeded(config_for(data, *overrides), tmp_path / "one", first_cpu_strategy())
  two, v2 = train_seeded(config_for(data, *overrides), tmp_path / "two", two_cpu_strategy())
  assert v1["pair_bce"] == pytest.approx(v2["pair_bce"], rel=1e-5)
  for a, b in zip(one.model.trainable_variables, two.model.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
  moved = [float(np.abs(a.numpy() - start).max())
           for a, start in zip(one.model.trainable_variables, one.initial)]
  assert max(moved) > 1e-3


def test_resumed_run_equals_a_straight_one_and_bfloat16_trains(data, tmp_path,
                                                               float32_policy):
  straight_config = config_for(data, "runtime.jit_compile=false", "trainer.epochs=2",
                               "model.siamese_convgru.dropout=0.5")
  straight, values = train_seeded(straight_config, tmp_path / "straight", first_cpu_strategy())
  assert {"pair_bce", "attention_penalty"} <= set(values)
  train_seeded(config_for(data, "runtime.jit_compile=false", "model.siamese_convgru.dropout=0.5"),
         tmp_path / "resumed",
         first_cpu_strategy())
  resumed, _ = train_seeded(straight_config, tmp_path / "resumed", first_cpu_strategy())
  assert int(resumed.global_step.numpy()) == 4
  for a, b in zip(straight.model.variables, resumed.model.variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
  _, mixed = train_seeded(config_for(data, "runtime.mixed_precision=mixed_bfloat16",
                               "runtime.jit_compile=false"), tmp_path / "bf16",
                    first_cpu_strategy())
  assert np.isfinite(mixed["loss"]) and np.isfinite(mixed["pair_bce"])


def _reference_embeddings(config, model, partition):
  """Every test clip through the model; clip embeddings averaged per tracklet in NumPy."""
  dataset = pipeline.make_test_dataset(config, partition, protocol=None, streams=("clips",))
  sums, counts = {}, {}
  for batch in dataset:
    assert batch["clips"].shape[1] == 4  # data.test_seq_len
    emb = model({"clips": batch["clips"]}, training=False)["embedding"].numpy()
    for i, row in enumerate(batch["index"].numpy()):
      sums[int(row)] = sums.get(int(row), 0.0) + emb[i].astype(np.float64)
      counts[int(row)] = counts.get(int(row), 0) + 1
  return np.stack([sums[r] / counts[r] for r in sorted(sums)])


def test_evaluation_export_and_tensorboard_use_the_learned_distance(data, tmp_path):
  config = config_for(data, "runtime.jit_compile=false", "trainer.image_summary_every_steps=1")
  model_dir = tmp_path / "run"
  trainer, _ = train_seeded(config, model_dir, first_cpu_strategy())
  cfg.save_config(config, str(model_dir / "config.yaml"))
  model = trainer.model
  result = evaluation.evaluate_model(config, model)
  q = _reference_embeddings(config, model, "query")
  g = _reference_embeddings(config, model, "gallery")
  v = model.similarity_v.numpy().astype(np.float64)
  c = float(model.similarity_c.numpy())
  expected = 1.0 / (1.0 + np.exp((q * v) @ g.T + c))
  np.testing.assert_allclose(result["distmat"], expected, rtol=1e-5, atol=1e-6)

  path = exporter.export_run(str(model_dir), str(tmp_path / "export"))
  loaded = tf.saved_model.load(path)
  assert sorted(loaded.signatures["distance"].structured_input_signature[1]) == [
      "gallery_embedding", "query_embedding"]
  embed = loaded.signatures["embed_tracklet"]
  outs = {}
  for side, n in (("query", len(q)), ("gallery", len(g))):
    index = reader.load_partition(data, side)
    records = reader.RecordReader(index)
    got = []
    for position in range(n):
      arrays, _ = records.tracklet(position)
      frames = np.stack([tf.io.decode_image(f, channels=3).numpy() for f in arrays.frames])
      got.append(embed(frames=tf.constant(frames))["embedding"].numpy())
    outs[side] = np.concatenate(got)
  np.testing.assert_allclose(outs["query"], q, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outs["gallery"], g, rtol=1e-5, atol=1e-5)
  distance = loaded.signatures["distance"](query_embedding=tf.constant(outs["query"]),
                                           gallery_embedding=tf.constant(outs["gallery"]))
  np.testing.assert_allclose(distance["distance"].numpy(), result["distmat"], rtol=1e-5,
                             atol=1e-5)

  tags = set()
  for path in glob.glob(os.path.join(str(model_dir), "train", "events*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  assert "attention/where_and_when" in tags
