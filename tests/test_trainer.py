"""The training loop: 2-replica equivalence, resume, profiler trace, NaN stop, signals."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfreid import config as cfg
from tfreid.training import trainer as trainer_lib

import data_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["data.height=32", "data.width=16", "data.seq_len=2", "data.num_identities=4",
        "data.num_instances=2", "data.test_batch_size=8", "model.backbone.base_width=4",
        "model.backbone.block_counts=[1, 1, 1, 1]",
        "model.backbone.nonlocal_blocks.blocks_per_stage=[0, 1, 1, 0]",
        "model.head.embedding_dim=8", "trainer.epochs=2", "trainer.log_every_steps=1",
        "trainer.checkpoint_every_steps=1000", "data.augmentation.crop_enlarge=0.125"]


def tiny_config(data_dir, *overrides):
  return cfg.build_config("nonlocal_i3d:synthetic", overrides=TINY + list(overrides),
                          data_dir=str(data_dir))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  path = tmp_path_factory.mktemp("data")
  data_fixtures.write_tiny_dataset(str(path), num_ids=8, tracklets_per_id=2, num_frames=(3, 6),
                                   height=32, width=16, cameras=2, seed=0)
  return path


class PlainModel(keras.Model):
  """No BatchNorm and no dropout: its gradient on a batch does not depend on how the batch is
  split across replicas, so 1- and 2-replica training must agree."""

  def __init__(self, num_classes):
    super().__init__()
    self.conv = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")
    self.embed = keras.layers.Dense(8, name="embed")
    self.classifier = keras.layers.Dense(num_classes, name="classifier")

  def call(self, inputs, training=False):
    x = keras.ops.cast(inputs["clips"], "float32") / 255.0
    x = keras.ops.mean(x, axis=1)
    x = keras.ops.mean(self.conv(x), axis=(1, 2))
    embedding = self.embed(x)
    return {"embedding": embedding, "logits": self.classifier(embedding)}


def _fixed_batches(num_steps, config, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  d = config.data
  b = d.global_batch_size
  batches = []
  for _ in range(num_steps):
    labels = np.repeat(rng.permutation(num_classes)[:d.num_identities], d.num_instances)
    batches.append({
        "clips": rng.integers(0, 256, (b, d.seq_len, d.height, d.width, 3), np.uint8),
        "labels": labels.astype(np.int32), "pids": labels.astype(np.int32),
        "camids": np.zeros(b, np.int32)})
  return batches


def _train_fixed(strategy, config, batches, num_classes, tmp_path, monkeypatch):
  monkeypatch.setattr(trainer_lib, "build_model", lambda c, n: PlainModel(n))
  keras.utils.set_random_seed(0)
  trainer = trainer_lib.Trainer(config, str(tmp_path), strategy=strategy,
                                num_classes=num_classes, steps_per_epoch=10)
  stacked = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  dataset = tf.data.Dataset.from_tensor_slices(stacked).batch(config.data.global_batch_size)
  iterator = iter(strategy.experimental_distribute_dataset(dataset))
  losses = [float(trainer._train_step(next(iterator))[0]) for _ in batches]  # pylint: disable=protected-access
  return [v.numpy() for v in trainer.model.trainable_variables], losses


def test_two_replicas_equal_one_device_on_the_same_global_batch(tmp_path, monkeypatch):
  """Loss scaling by the global batch, the all-reduce, L2 decay and global-norm clipping are
  the same with 2 replicas as on 1 device: weights agree to 1e-5 after 3 Adam steps."""
  cpus = tf.config.list_logical_devices("CPU")
  assert len(cpus) == 2
  config = tiny_config("", "losses.triplet.weight=0", "optimizer.clip_global_norm=0.05",
                       "optimizer.weight_decay=0.01", "optimizer.learning_rate=0.01")
  num_classes = 6
  batches = _fixed_batches(3, config, num_classes)
  # ReductionToOneDevice: no collective ops, whose instance keys can collide with those of
  # other strategies made earlier in the same test process.
  reduce = tf.distribute.ReductionToOneDevice
  one, loss_one = _train_fixed(
      tf.distribute.MirroredStrategy([cpus[0].name], cross_device_ops=reduce()), config,
      batches, num_classes, tmp_path / "one", monkeypatch)
  two, loss_two = _train_fixed(
      tf.distribute.MirroredStrategy([c.name for c in cpus], cross_device_ops=reduce()), config,
      batches, num_classes, tmp_path / "two", monkeypatch)
  np.testing.assert_allclose(loss_one, loss_two, rtol=1e-5, atol=1e-6)
  moved = max(float(np.abs(a).max()) for a in one)
  assert moved > 0
  for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _weights(trainer):
  return [v.numpy() for v in trainer.model.variables]


def test_resume_gives_the_same_weights_as_a_straight_run(tiny_data, tmp_path):
  config = tiny_config(tiny_data, "trainer.epochs=2", "runtime.jit_compile=false")
  straight = trainer_lib.Trainer(config, str(tmp_path / "straight"))
  total = straight.total_steps
  assert total == 4  # 8 identities / P=4 -> 2 steps per epoch, 2 epochs
  straight.train()
  half = tiny_config(tiny_data, "trainer.epochs=1", "runtime.jit_compile=false")
  first = trainer_lib.Trainer(half, str(tmp_path / "resumed"))
  first.train()
  assert first.keeper.latest.endswith("ckpt-2")
  resumed = trainer_lib.Trainer(config, str(tmp_path / "resumed"))
  assert resumed.resumed_from.endswith("ckpt-2")
  assert int(resumed.global_step.numpy()) == 2
  resumed.train()
  assert int(resumed.global_step.numpy()) == total
  for a, b in zip(_weights(straight), _weights(resumed)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_profiler_trace_is_written(tiny_data, tmp_path):
  config = tiny_config(tiny_data, "trainer.epochs=1")
  trainer = trainer_lib.Trainer(config, str(tmp_path), profile_steps=(0, 2))
  trainer.train()
  traces = glob.glob(str(tmp_path / "train" / "plugins" / "profile" / "*" / "*.xplane.pb"))
  assert traces and os.path.getsize(traces[0]) > 0


def test_nan_loss_stops_with_the_step_and_term_and_keeps_the_last_checkpoint(
    tiny_data, tmp_path, monkeypatch):
  real_build = trainer_lib.build_losses

  class ExplodingAt3:
    name, weight = "exploding", 1.0

    def __init__(self):
      self.calls = tf.Variable(0, trainable=False)

    def __call__(self, outputs, batch):
      return tf.where(self.calls >= 2, np.float32(np.nan), 0.0)

    def update(self, outputs, batch):
      self.calls.assign_add(1)

  def build(config, num_classes, embedding_dim):
    return real_build(config, num_classes, embedding_dim) + [ExplodingAt3()]

  monkeypatch.setattr(trainer_lib, "build_losses", build)
  config = tiny_config(tiny_data, "trainer.epochs=3", "trainer.checkpoint_every_steps=1",
                       "runtime.jit_compile=false")
  trainer = trainer_lib.Trainer(config, str(tmp_path), strategy=tf.distribute.MirroredStrategy(
      [tf.config.list_logical_devices("CPU")[0].name]))
  with pytest.raises(trainer_lib.TrainingError,
                     match=r"loss term 'exploding' is nan at step 3.*ckpt-2"):
    trainer.train()
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")


def _cli(model_dir, data_dir, *overrides):
  args = [sys.executable, "-m", "tfreid.train", "--experiment=nonlocal_i3d:synthetic",
          f"--model_dir={model_dir}", f"--data_dir={data_dir}"]
  args += [f"--override={o}" for o in TINY + list(overrides)]
  return args


def test_kill_9_then_the_same_command_resumes(tiny_data, tmp_path):
  """`kill -9` mid-run loses at most one checkpoint interval; the rerun finishes the job."""
  model_dir = tmp_path / "run"
  args = _cli(model_dir, tiny_data, "trainer.epochs=12", "trainer.checkpoint_every_steps=2",
              "runtime.jit_compile=false")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 180
  while time.time() < deadline and not glob.glob(str(model_dir / "ckpt-4.index")):
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  latest = tf.train.latest_checkpoint(str(model_dir))
  assert latest is not None, "no checkpoint was written before the kill"
  killed_at = int(latest.rsplit("-", 1)[1])
  assert 4 <= killed_at < 24, "the run finished before it was killed"
  rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600, check=False)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert f"from step {killed_at}" in rerun.stderr
  assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-24")


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_data, tmp_path):
  model_dir = tmp_path / "run"
  args = _cli(model_dir, tiny_data, "trainer.epochs=1000", "runtime.jit_compile=false")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 180
  seen = ""
  while time.time() < deadline:
    line = proc.stderr.readline()
    seen += line
    if "step 3/" in line:
      break
  proc.send_signal(signal.SIGTERM)
  _, rest = proc.communicate(timeout=120)
  assert proc.returncode == 0, (seen + rest)[-2000:]
  assert "checkpoint saved" in rest
  latest = tf.train.latest_checkpoint(str(model_dir))
  assert latest is not None and int(latest.rsplit("-", 1)[1]) >= 3


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_workers_on_localhost_train(tiny_data, tmp_path):
  ports = [_free_port(), _free_port()]
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  procs = []
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                  "index": index}}))
    model_dir = tmp_path / ("chief" if index == 0 else f"worker{index}")
    args = _cli(model_dir, tiny_data, "trainer.epochs=1", "runtime.strategy=multi_worker",
                "runtime.jit_compile=false")
    procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "2 replica(s)" in outputs[0][1]
  assert tf.train.latest_checkpoint(str(tmp_path / "chief")).endswith("ckpt-2")
