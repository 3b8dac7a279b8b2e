"""Shared pieces of the trainer tests: a tiny nonlocal_i3d configuration, a tiny converted
dataset, a model without BatchNorm or dropout, and fixed batches fed straight to the step."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfreid import config as cfg

import data_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# nonlocal_i3d:synthetic shrunk to seconds: 2 frames of 32x16, widths of 4, one block per stage.
TINY = ["data.height=32", "data.width=16", "data.seq_len=2", "data.num_identities=4",
        "data.num_instances=2", "data.test_batch_size=8", "model.backbone.base_width=4",
        "model.backbone.block_counts=[1, 1, 1, 1]",
        "model.backbone.nonlocal_blocks.blocks_per_stage=[0, 1, 1, 0]",
        "model.head.embedding_dim=8", "trainer.epochs=2", "trainer.log_every_steps=1",
        "trainer.checkpoint_every_steps=1000", "data.augmentation.crop_enlarge=0.125"]


def tiny_config(data_dir, *overrides):
  """nonlocal_i3d:synthetic with TINY and `overrides`, reading `data_dir`."""
  return cfg.build_config("nonlocal_i3d:synthetic", overrides=TINY + list(overrides),
                          data_dir=str(data_dir))


def write_tiny_data(path, num_ids=8):
  """A converted dataset of `num_ids` training identities, 2 tracklets each, 32x16 frames."""
  data_fixtures.write_tiny_dataset(str(path), num_ids=num_ids, tracklets_per_id=2,
                                   num_frames=(3, 6), height=32, width=16, cameras=2, seed=0)
  return path


@pytest.fixture(scope="module", name="tiny_data")
def fixture_tiny_data(tmp_path_factory):
  return write_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(name="float32_policy")
def fixture_float32_policy():
  """Restores Keras' float32 policy after a test that trains with mixed precision."""
  yield
  keras.mixed_precision.set_global_policy("float32")


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


def fixed_batches(num_steps, config, num_classes, seed=0):
  """`num_steps` random global PK batches with the config's clip shape."""
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


def distributed_batches(strategy, config, batches):
  """An iterator over `batches` split across the strategy's replicas."""
  stacked = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  dataset = tf.data.Dataset.from_tensor_slices(stacked).batch(config.data.global_batch_size)
  return iter(strategy.experimental_distribute_dataset(dataset))


def first_cpu_strategy():
  """MirroredStrategy on the first logical CPU, without collective ops (their instance keys
  can collide with those of other strategies made earlier in the same test process)."""
  cpu = tf.config.list_logical_devices("CPU")[0].name
  return tf.distribute.MirroredStrategy([cpu],
                                        cross_device_ops=tf.distribute.ReductionToOneDevice())


def two_cpu_strategy():
  """MirroredStrategy over the two logical CPUs of conftest.py, without collective ops."""
  cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
  assert len(cpus) == 2, "conftest.py should have made two logical CPU devices"
  return tf.distribute.MirroredStrategy(cpus,
                                        cross_device_ops=tf.distribute.ReductionToOneDevice())


def train_seeded(config, model_dir, strategy):
  """A Trainer built with Keras' seed 0 and trained to its end; returns (trainer, last
  logged values). `trainer.initial` keeps its trainable variables before the first step."""
  from tfreid.training import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
  keras.utils.set_random_seed(0)
  trainer = trainer_lib.Trainer(config, str(model_dir), strategy=strategy)
  trainer.initial = [v.numpy() for v in trainer.model.trainable_variables]
  return trainer, trainer.train()


def cli(model_dir, data_dir, *overrides):
  """The `python -m tfreid.train` command line of a tiny run."""
  args = [sys.executable, "-m", "tfreid.train", "--experiment=nonlocal_i3d:synthetic",
          f"--model_dir={model_dir}", f"--data_dir={data_dir}"]
  return args + [f"--override={o}" for o in TINY + list(overrides)]


__all__ = ["REPO", "TINY", "tiny_config", "write_tiny_data", "fixture_tiny_data",
           "fixture_float32_policy", "PlainModel", "fixed_batches", "distributed_batches",
           "first_cpu_strategy", "two_cpu_strategy", "train_seeded", "cli"]
