"""a3d in the trainer, evaluation and export: 1 and 2 replicas agree (sampled actions
included), a resumed run draws what a straight one would, the SavedModel takes clips and
flow and reproduces the evaluation features; the client-side flow equals the converter's."""

import glob
import os

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import convert
from tfreid import config as cfg
from tfreid.data import flow as flow_lib
from tfreid.data import pipeline
from tfreid.data import reader
from tfreid.serving import exporter
from tfreid.training import trainer as trainer_lib

import convert_fakes as fakes
import data_fixtures
from trainer_fixtures import first_cpu_strategy, two_cpu_strategy

SMALL = ["data.height=32", "data.width=16", "data.seq_len=2", "data.num_identities=4",
         "data.num_instances=2", "data.test_batch_size=3", "model.backbone.block_counts=[1,1,1,1]",
         "model.backbone.base_width=4", "model.a3d.bin_size=[1,1,1]", "model.a3d.hidden_dim=8",
         "model.a3d.feature_dim=6", "model.a3d.num_glimpses=3",
         "data.augmentation.random_erasing=0.0", "trainer.epochs=1",
         "trainer.steps_per_epoch=3", "trainer.log_every_steps=1",
         "trainer.image_summary_every_steps=0", "trainer.eval_every_epochs=0",
         "trainer.checkpoint_every_steps=100"]


def config_for(data_dir, *overrides):
  return cfg.build_config("a3d:synthetic", overrides=SMALL + list(overrides),
                          data_dir=str(data_dir))


@pytest.fixture(scope="module", name="data")
def fixture_data(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("a3d") / "data")
  data_fixtures.write_tiny_dataset(path, num_ids=4, tracklets_per_id=2, num_frames=(3, 6),
                                   height=32, width=16, with_flow=True, num_test_ids=3,
                                   seed=5)
  return path


def _train(config, model_dir, strategy):
  keras.utils.set_random_seed(0)
  trainer = trainer_lib.Trainer(config, str(model_dir), strategy=strategy)
  return trainer, trainer.train()


def test_two_replicas_equal_one_with_xla_sampled_actions_included(data, tmp_path):
  """The REINFORCE term depends on the actions sampled in each step: equal weights after 3
  SGD steps mean both runs drew the same actions. Two things are per replica by design and
  are held fixed: batch-all triplet mining (each replica forms triplets in its own half of
  the batch), so the triplet term is off; and BatchNorm's batch statistics, so the
  BatchNorm layers are frozen (inference mode). Without batch statistics the from-scratch
  network's activations are large, so the global gradient is clipped (the same on 1 and 2
  replicas: the trainer clips the all-reduced gradient). Two episodes per clip (eq. 12's M):
  both episodes' actions agree too."""
  overrides = ["losses.triplet.weight=0", "runtime.jit_compile=true", "optimizer.name=sgd",
               "optimizer.learning_rate=0.01", "optimizer.clip_global_norm=1.0", "trainer.freeze=['*_bn']",
               "model.a3d.num_episodes=2"]
  one, v1 = _train(config_for(data, *overrides), tmp_path / "one", first_cpu_strategy())
  two, v2 = _train(config_for(data, *overrides), tmp_path / "two", two_cpu_strategy())
  assert v1["reinforce"] == pytest.approx(v2["reinforce"], rel=1e-4, abs=1e-6)
  assert "metrics/a3d_reward" in v1 and "metrics/a3d_value_error" in v1
  for a, b in zip(one.model.trainable_variables, two.model.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
  assert int(one.model.sample_step.numpy()) == int(two.model.sample_step.numpy()) == 3
  agent = one.model.agent
  assert float(np.abs(agent.fc_att.kernel.numpy()).sum()) > 0


def test_resumed_run_draws_what_a_straight_run_draws(data, tmp_path):
  """Also: TensorBoard gets the mean reward, the value baseline's error and the bins drawn
  on the frames (`attention_overlays`)."""
  config = config_for(data, "trainer.steps_per_epoch=2", "trainer.epochs=2",
                      "runtime.jit_compile=false", "trainer.image_summary_every_steps=2")
  straight, _ = _train(config, tmp_path / "straight", first_cpu_strategy())
  tags = set()
  for path in glob.glob(os.path.join(str(tmp_path / "straight"), "train", "events*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  assert {"attention/a3d_bins", "metrics/a3d_reward", "metrics/a3d_value_error",
          "loss/reinforce"} <= tags
  half = config_for(data, "trainer.steps_per_epoch=2", "trainer.epochs=1",
                    "runtime.jit_compile=false", "trainer.image_summary_every_steps=2")
  _train(half, tmp_path / "resumed", first_cpu_strategy())
  resumed, _ = _train(config, tmp_path / "resumed", first_cpu_strategy())
  assert int(resumed.model.sample_step.numpy()) == 4
  for a, b in zip(straight.model.variables, resumed.model.variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def _tracklet(data_dir, partition, position):
  index = reader.load_partition(data_dir, partition)
  arrays, _ = reader.RecordReader(index, use_flow=True).tracklet(position)
  frames = np.stack([tf.io.decode_image(f, channels=3).numpy() for f in arrays.frames])
  flow = np.stack([(tf.io.decode_png(f).numpy()[..., :2].astype(np.float32) - 128.0)
                   / data_fixtures.FLOW_SCALE for f in arrays.flow])
  return frames, flow


def test_export_takes_clips_and_flow_and_equals_evaluation(data, tmp_path):
  config = config_for(data, "runtime.jit_compile=false")
  model_dir = tmp_path / "run"
  trainer, _ = _train(config, model_dir, first_cpu_strategy())
  cfg.save_config(config, str(model_dir / "config.yaml"))
  # What evaluation computes: the per-clip embeddings of the test pipeline, averaged per
  # tracklet (the default merge).
  dataset = pipeline.make_test_dataset(config, "query", protocol=None,
                                       streams=("clips", "flow"))
  sums = {}
  for batch in dataset:
    out = trainer.model({k: batch[k] for k in ("clips", "flow")}, training=False)
    for i, row in enumerate(batch["index"].numpy()):
      s = sums.setdefault(int(row), [0.0, 0])
      s[0] = s[0] + out["embedding"].numpy()[i].astype(np.float64)
      s[1] += 1
  expected = np.stack([sums[r][0] / sums[r][1] for r in sorted(sums)])
  path = exporter.export_run(str(model_dir), str(tmp_path / "export"))
  loaded = tf.saved_model.load(path)
  assert sorted(loaded.signatures["serving_default"].structured_input_signature[1]) == [
      "clips", "flow"]
  signature = loaded.signatures["embed_tracklet"]
  got = np.concatenate([
      signature(frames=tf.constant(f), flow=tf.constant(fl))["embedding"].numpy()
      for f, fl in (_tracklet(data, "query", p) for p in range(len(expected)))])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- flow


def _texture(seed, h=64, w=40):
  rng = np.random.default_rng(seed)
  return cv2.resize((rng.random((h // 4, w // 4, 3)) * 255).astype(np.uint8), (w, h),
                    interpolation=cv2.INTER_CUBIC)


def test_client_flow_equals_the_converters_flow(tmp_path):
  src, dst = tmp_path / "mars", tmp_path / "out"
  paths = fakes.write_mars(str(src), train=[(1, 1, 4), (2, 2, 2)], test=[(3, 1, 2), (3, 2, 2)],
                           query=[1])
  base = _texture(9)
  encoded = []
  for t, rel in enumerate(paths["train"][0]):     # moves 2 pixels right per frame
    ok, buf = cv2.imencode(".jpg", base[:, 8 - 2 * t:8 - 2 * t + 32], [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    encoded.append(buf.tobytes())
    fakes.write_file(os.path.join(src, *rel.split("/")), buf.tobytes())
  manifest = convert.convert("mars", str(src), str(dst), optical_flow=True, progress=False)
  scale = manifest["flow"]["scale"]
  assert scale == flow_lib.DEFAULT_FLOW_SCALE
  stored = fakes.read_all(str(dst))[0]["flow"]
  stored = np.stack([(tf.io.decode_png(p).numpy()[..., :2].astype(np.float32) - 128.0) / scale
                     for p in stored])
  client = flow_lib.clip_flow(encoded)
  assert client.shape == (4, 64, 32, 2) and client.dtype == np.float32
  np.testing.assert_array_equal(client, stored)
  assert abs(np.median(client[0, 8:-8, 8:-8, 0]) - 2.0) < 0.5
  # Decoded RGB arrays give nearly the same flow (gray conversion of decoded pixels).
  rgb = [cv2.cvtColor(cv2.imdecode(np.frombuffer(e, np.uint8), cv2.IMREAD_COLOR),
                      cv2.COLOR_BGR2RGB) for e in encoded]
  assert np.median(np.abs(flow_lib.clip_flow(rgb) - client)) < 0.2
  with pytest.raises(ValueError, match="uint8"):
    flow_lib.clip_flow([np.zeros((4, 4, 3), np.float32)])


def test_mirrored_frames_have_mirrored_negated_flow_as_the_flip_augmentation_assumes():
  base = _texture(11)
  frames = [base[:, 8 - 2 * t:8 - 2 * t + 32] for t in range(3)]
  flow = flow_lib.clip_flow(frames)
  mirrored = flow_lib.clip_flow([f[:, ::-1].copy() for f in frames])
  inner = (slice(None), slice(8, -8), slice(8, -8))
  assert abs(np.median(mirrored[inner][..., 0]) + np.median(flow[inner][..., 0])) < 0.3
  assert np.median(mirrored[inner][..., 0]) < -1.5
