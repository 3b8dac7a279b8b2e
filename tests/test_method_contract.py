"""The method contract, end to end, on a method defined only in tests/fake_method/: it reads
clips + 2-channel flow + keypoints, has two named triplet terms (different margins, one on
its own part distance), a regulariser brought as its own loss type, an add_loss term, a
learned distance, a weighted tracklet merge and a frozen sub-module with BatchNorm. Nothing
in tfreid names it: training, resuming, evaluation and export follow its declarations."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfreid import config as cfg
from tfreid.data import pipeline
from tfreid.data import reader
from tfreid.models import contract
from tfreid.serving import exporter
from tfreid.training import evaluation
from tfreid.training import trainer as trainer_lib

import data_fixtures
from trainer_fixtures import REPO, first_cpu_strategy, two_cpu_strategy

EXPERIMENT = "fake_method.experiment"
TESTS = os.path.dirname(os.path.abspath(__file__))


def config_for(data_dir, *overrides):
  return cfg.build_config(EXPERIMENT, overrides=list(overrides), data_dir=str(data_dir))


@pytest.fixture(scope="module", name="data")
def fixture_data(tmp_path_factory):
  """Frames 16x12 (the model reads 8x6: export resizes), flow and keypoints."""
  path = str(tmp_path_factory.mktemp("contract") / "data")
  data_fixtures.write_tiny_dataset(path, num_ids=4, tracklets_per_id=2, num_frames=(3, 6),
                                   height=16, width=12, with_flow=True, with_keypoints=True,
                                   num_test_ids=3, seed=3)
  return path


def _train(config, model_dir, strategy, steps=None):
  keras.utils.set_random_seed(0)
  trainer = trainer_lib.Trainer(config, str(model_dir), strategy=strategy)
  values = trainer.train()
  return trainer, values


def test_config_section_streams_and_terms_come_from_the_method(data):
  config = config_for(data, "model.probe.channels=3", "losses.local_triplet.margin=0.9")
  assert config.model.probe.channels == 3
  from tfreid.models import contract
  assert contract.input_streams(config) == ("clips", "flow", "keypoints")
  with pytest.raises(cfg.ConfigError, match="model.probe.chanels.*Did you mean 'channels'"):
    config_for(data, "model.probe.chanels=3")
  dumped = cfg.to_dict(config)
  assert dumped["model"]["probe"]["channels"] == 3
  assert dumped["losses"]["local_triplet"] == {
      "type": "triplet", "weight": 0.5, "margin": 0.9, "mining": "batch_hard",
      "feature": "embedding", "distance": "parts", "reduction": "mean"}
  assert dumped["losses"]["attention_entropy"]["type"] == "fake_method.attention_entropy"


def test_missing_stream_fails_before_training_with_the_converter_command(tmp_path):
  plain = str(tmp_path / "plain")
  data_fixtures.write_tiny_dataset(plain, num_ids=4, tracklets_per_id=2, num_frames=4,
                                   height=16, width=12)
  with pytest.raises(pipeline.DatasetError, match="--optical_flow"):
    trainer_lib.Trainer(config_for(plain), str(tmp_path / "run"),
                        strategy=first_cpu_strategy()).train()


def test_two_replicas_equal_one_with_xla(data, tmp_path):
  """Two logical CPUs equal one after 2 steps with XLA. Batch-hard mining is per replica
  (each replica mines its own P/2 identities), so the triplet terms are off here; every
  other term (cross-entropy, the attention regulariser, add_loss, L2) is compared. SGD:
  Adam's first steps divide near-zero gradients by their own size, which turns float
  rounding into differences of the order of the step."""
  overrides = ["losses.global_triplet.weight=0", "losses.local_triplet.weight=0",
               "runtime.jit_compile=true", "optimizer.name=sgd", "optimizer.learning_rate=0.5"]
  one, v1 = _train(config_for(data, *overrides), tmp_path / "one", first_cpu_strategy())
  two, v2 = _train(config_for(data, *overrides), tmp_path / "two", two_cpu_strategy())
  assert v1["attention_entropy"] == pytest.approx(v2["attention_entropy"], rel=1e-5)
  moved = 0.0
  for a, b in zip(one.model.trainable_variables, two.model.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
  for a in one.model.trainable_variables:
    moved = max(moved, float(np.abs(a.numpy()).max()))
  assert moved > 0


def test_training_logs_every_term_freezes_and_resumes_like_a_straight_run(data, tmp_path):
  config = config_for(data, "trainer.epochs=2", "runtime.jit_compile=true")
  straight, values = _train(config, tmp_path / "straight", first_cpu_strategy())
  # Every named term, the add_loss term and the method's own scalar are logged.
  assert {"cross_entropy", "global_triplet", "local_triplet", "attention_entropy",
          "add_loss", "l2", "metrics/attention_peak"} <= set(values)
  assert values["local_triplet"] != values["global_triplet"]
  # The frozen sub-module (conv + BatchNorm, moving statistics included) did not change;
  # the rest did.
  fresh = trainer_lib.build_model(config, straight.num_classes)
  fresh(trainer_lib.dummy_inputs(config), training=False)
  assert straight.frozen == ["probe/frozen_proj", "probe/frozen_proj/bn",
                             "probe/frozen_proj/conv"]
  frozen = straight.model.frozen_proj
  assert all(not v.trainable for v in frozen.variables)
  bn = frozen.get_layer("bn")
  np.testing.assert_array_equal(bn.moving_mean.numpy(), 0.0)
  np.testing.assert_array_equal(bn.moving_variance.numpy(), 1.0)
  assert not any(v is w for v in frozen.variables for w in straight.model.trainable_variables)
  # Resumed after 2 of 4 steps: the same weights as the straight run.
  half = config_for(data, "trainer.epochs=1", "runtime.jit_compile=true")
  _train(half, tmp_path / "resumed", first_cpu_strategy())
  resumed, _ = _train(config, tmp_path / "resumed", first_cpu_strategy())
  assert int(resumed.global_step.numpy()) == 4
  for a, b in zip(straight.model.variables, resumed.model.variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def _reference_features(config, model, partition):
  """Per-clip outputs of the test pipeline, merged in NumPy as the method says: the
  frame-weighted mean of frame embeddings over all clips, the mean of the parts."""
  dataset = pipeline.make_test_dataset(config, partition, protocol=None,
                                       streams=("clips", "flow", "keypoints"))
  sums = {}
  for batch in dataset:
    out = model({k: batch[k] for k in ("clips", "flow", "keypoints")}, training=False)
    w = out["frame_weight"].numpy().astype(np.float64)
    e = out["frame_embedding"].numpy().astype(np.float64)
    for i, row in enumerate(batch["index"].numpy()):
      s = sums.setdefault(int(row), [0.0, 0.0, 0.0, 0])
      s[0] = s[0] + (w[i, :, None] * e[i]).sum(0)
      s[1] += w[i].sum()
      s[2] = s[2] + out["parts"].numpy()[i].astype(np.float64)
      s[3] += 1
  rows = sorted(sums)
  return (np.stack([sums[r][0] / sums[r][1] for r in rows]),
          np.stack([sums[r][2] / sums[r][3] for r in rows]))


def _distance(model, qe, qp, ge, gp):
  alpha = np.log1p(np.exp(float(model.alpha.numpy())))
  glob = np.abs(qe[:, None] - ge[None]).sum(-1)
  parts = np.abs(qp[:, None] - gp[None]).sum(-1).mean(-1)
  return glob + alpha * parts


def _tracklet_streams(data_dir, partition, position):
  """The source-size frames (uint8), flow (float32 pixels) and keypoints of a tracklet, as
  a client would send them."""
  index = reader.load_partition(data_dir, partition)
  arrays, _ = reader.RecordReader(index, use_flow=True, use_keypoints=True).tracklet(position)
  frames = np.stack([tf.io.decode_image(f, channels=3).numpy() for f in arrays.frames])
  flow = np.stack([(tf.io.decode_png(f).numpy()[..., :2].astype(np.float32) - 128.0)
                   / data_fixtures.FLOW_SCALE for f in arrays.flow])
  keypoints = arrays.keypoints * arrays.present[:, None, None]
  return frames, flow, keypoints.astype(np.float32)


def test_evaluation_and_export_use_the_methods_merge_and_distance(data, tmp_path):
  config = config_for(data, "trainer.epochs=1", "runtime.jit_compile=false")
  model_dir = tmp_path / "run"
  trainer, _ = _train(config, model_dir, first_cpu_strategy())
  cfg.save_config(config, str(model_dir / "config.yaml"))
  model = trainer.model
  result = evaluation.evaluate_model(config, model)
  qe, qp = _reference_features(config, model, "query")
  ge, gp = _reference_features(config, model, "gallery")
  expected = _distance(model, qe, qp, ge, gp)
  np.testing.assert_allclose(result["distmat"], expected, rtol=1e-5, atol=1e-5)

  # The exported SavedModel takes the flow and keypoints and reproduces the evaluation's
  # tracklet features and learned distances.
  path = exporter.export_run(str(model_dir), str(tmp_path / "export"))
  loaded = tf.saved_model.load(path)
  signature = loaded.signatures["embed_tracklet"]
  assert sorted(signature.structured_input_signature[1]) == ["flow", "frames", "keypoints"]
  assert sorted(loaded.signatures["serving_default"].structured_input_signature[1]) == [
      "clips", "flow", "keypoints"]
  assert sorted(loaded.signatures["distance"].structured_input_signature[1]) == [
      "gallery_embedding", "gallery_parts", "query_embedding", "query_parts"]
  outs = {}
  for side, n in (("query", len(qe)), ("gallery", len(ge))):
    got = []
    for position in range(n):
      frames, flow, keypoints = _tracklet_streams(data, side, position)
      got.append(signature(frames=tf.constant(frames), flow=tf.constant(flow),
                           keypoints=tf.constant(keypoints)))
    outs[side] = {k: np.concatenate([g[k].numpy() for g in got]) for k in ("embedding", "parts")}
  np.testing.assert_allclose(outs["query"]["embedding"], qe, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outs["gallery"]["parts"], gp, rtol=1e-5, atol=1e-5)
  distance = loaded.signatures["distance"](
      **{f"query_{k}": tf.constant(v) for k, v in outs["query"].items()},
      **{f"gallery_{k}": tf.constant(v) for k, v in outs["gallery"].items()})["distance"]
  np.testing.assert_allclose(distance.numpy(), result["distmat"], rtol=1e-5, atol=1e-5)
  with open(os.path.join(path, "assets", "model_card.json")) as f:
    card = json.load(f)
  assert sorted(card["streams"]) == ["clips", "flow", "keypoints"]
  assert card["distance"] == "learned"


def test_evaluate_cli_restores_and_evaluates_the_method(data, tmp_path):
  """`python -m tfreid.evaluate` on a run of a method outside tfreid (its package on
  PYTHONPATH): the one restore path builds it from config.yaml."""
  model_dir = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, REPO]))
  train = [sys.executable, "-m", "tfreid.train", f"--experiment={EXPERIMENT}",
           f"--model_dir={model_dir}", f"--data_dir={data}",
           "--override=runtime.jit_compile=false", "--override=trainer.epochs=1"]
  subprocess.run(train, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
  proc = subprocess.run([sys.executable, "-m", "tfreid.evaluate", f"--model_dir={model_dir}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(model_dir / "eval" / "metrics.json") as f:
    metrics = json.load(f)
  assert 0.0 <= metrics["mAP"] <= 1.0 and metrics["checkpoint_step"] == 2


def test_a_model_whose_layers_a_checkpoint_would_miss_is_refused(data, tmp_path):
  """Layers in a plain list or dict are not in a Keras 3 model's TensorFlow checkpoint: the
  trainer refuses the model, naming the variables, before training anything."""

  class Listed(keras.Model):
    def __init__(self, num_classes):
      super().__init__()
      self.embed = keras.layers.Dense(4, name="embed")
      self.parts = [keras.layers.Dense(3, name=f"part_{i}") for i in range(2)]
      self.heads = {"logits": keras.layers.Dense(num_classes, name="classifier")}

    def call(self, inputs, training=False):
      x = tf.reduce_mean(tf.cast(inputs["clips"], tf.float32), axis=[1, 2, 3])
      e = self.embed(x) + sum(tf.reduce_sum(p(x), -1, keepdims=True) for p in self.parts)
      return {"embedding": e, "logits": self.heads["logits"](e)}

  model = Listed(3)
  model({"clips": tf.zeros([1, 2, 4, 4, 3], tf.uint8)})
  missing = contract.unsaved_variables(model)
  assert sorted(m.split("/", 1)[1] for m in missing) == [
      "classifier/bias", "classifier/kernel", "part_0/bias", "part_0/kernel", "part_1/bias",
      "part_1/kernel"]
  # A real checkpoint indeed lacks them.
  path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
  saved = [k for k, _ in tf.train.list_variables(path) if k.startswith("model/")]
  assert len(saved) == 2
  with pytest.raises(contract.UnsavedVariablesError,
                     match=r"6 variables of the model would be missing from its checkpoints "
                           r"\(e.g\. .*plain Python list or dict"):
    contract.check_checkpointable(model)
  config = config_for(data, "runtime.jit_compile=false")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(trainer_lib, "build_model", lambda c, n: Listed(n))
    with pytest.raises(contract.UnsavedVariablesError):
      trainer_lib.Trainer(config, str(tmp_path / "run"), strategy=first_cpu_strategy())
  assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("ckpt-*"))
