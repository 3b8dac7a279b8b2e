"""TensorBoard output of a training run: every loss term, the learning rate against the
schedule, clips/s, the step's input clips and the model's attention maps as images."""

import collections
import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfreid.data import pipeline as data_pipeline
from tfreid.training import trainer as trainer_lib

from trainer_fixtures import fixture_tiny_data, tiny_config  # pylint: disable=unused-import


class AttentionModel(keras.Model):
  """Per-frame convolution, spatial softmax attention over its map and temporal softmax
  attention over frames; returns both attentions as `attention_*` outputs."""

  def __init__(self, num_classes):
    super().__init__()
    self.conv = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")
    self.spatial = keras.layers.Dense(1, name="spatial")
    self.temporal = keras.layers.Dense(1, name="temporal")
    self.embed = keras.layers.Dense(8, name="embed")
    self.classifier = keras.layers.Dense(num_classes, name="classifier")

  def call(self, inputs, training=False):
    clips = keras.ops.cast(inputs["clips"], "float32") / 255.0
    _, t, h, w, c = clips.shape
    b = keras.ops.shape(clips)[0]
    x = self.conv(keras.ops.reshape(clips, (-1, h, w, c)))  # [B*T, h', w', 4]
    hh, ww = x.shape[1], x.shape[2]
    scores = keras.ops.reshape(self.spatial(x), (-1, hh * ww))
    spatial = keras.ops.softmax(scores, axis=-1)  # [B*T, h'w']
    frames = keras.ops.einsum("np,npc->nc", spatial, keras.ops.reshape(x, (-1, hh * ww, 4)))
    frames = keras.ops.reshape(frames, (b, t, 4))
    temporal = keras.ops.softmax(keras.ops.squeeze(self.temporal(frames), -1), axis=-1)
    embedding = self.embed(keras.ops.einsum("bt,btc->bc", temporal, frames))
    return {"embedding": embedding, "logits": self.classifier(embedding),
            "attention_spatial": keras.ops.reshape(spatial, (b, t, hh, ww)),
            "attention_temporal": temporal}


def read_events(log_dir):
  """{tag: [(step, value)]} of every summary in the event files of `log_dir`; scalars as
  floats, images as lists of decoded uint8 arrays."""
  found = collections.defaultdict(list)
  for path in sorted(glob.glob(f"{log_dir}/events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        array = tf.make_ndarray(value.tensor)
        if plugin == "scalars":
          found[value.tag].append((event.step, float(array)))
        elif plugin == "images":
          # [width, height, png, png, ...]
          images = [tf.io.decode_png(png).numpy() for png in array[2:]]
          found[value.tag].append((event.step, images))
  return found


def schedule_reference(step, lr=0.01, steps_per_epoch=2, factor=0.5, warmup_factor=0.1):
  """Step decay every epoch times a one-epoch linear warm-up, at optimizer step `step`."""
  epoch = step / steps_per_epoch
  decay = factor ** (step // steps_per_epoch)
  return lr * decay * (warmup_factor + (1 - warmup_factor) * min(epoch, 1.0))


@pytest.fixture(scope="module", name="run")
def fixture_run(tiny_data, tmp_path_factory):
  """4 steps (2 epochs of 2) of AttentionModel; images every 2 steps."""
  model_dir = tmp_path_factory.mktemp("run")
  config = tiny_config(
      tiny_data, "trainer.epochs=2", "trainer.log_every_steps=1",
      "trainer.image_summary_every_steps=2", "optimizer.learning_rate=0.01",
      "schedule.name=step", "schedule.step_epochs=1", "schedule.step_factor=0.5",
      "schedule.warmup_epochs=1", "schedule.warmup_factor=0.1", "runtime.jit_compile=false")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(trainer_lib, "build_model", lambda c, n: AttentionModel(n))
    trainer = trainer_lib.Trainer(config, str(model_dir))
    last = trainer.train()
  return config, model_dir, last, read_events(model_dir / "train")


def test_every_loss_term_learning_rate_and_speed_are_logged_each_step(run):
  _, _, last, events = run
  assert sorted(last) == ["cross_entropy", "l2", "loss", "triplet"]
  for tag in ("loss/total", "loss/cross_entropy", "loss/triplet", "loss/l2", "learning_rate",
              "clips_per_second"):
    assert [s for s, _ in events[tag]] == [1, 2, 3, 4], tag
  for name, value in last.items():
    tag = "loss/total" if name == "loss" else f"loss/{name}"
    np.testing.assert_allclose(events[tag][-1][1], value, rtol=1e-6)
  for step, value in events["loss/total"]:
    parts = {t: dict(events[f"loss/{t}"])[step] for t in ("cross_entropy", "triplet", "l2")}
    np.testing.assert_allclose(value, sum(parts.values()), rtol=1e-5)
  for step, lr in events["learning_rate"]:
    np.testing.assert_allclose(lr, schedule_reference(step), rtol=1e-6)
  assert all(v > 0 for _, v in events["clips_per_second"])


def test_input_clips_of_the_step_are_written_as_images(run):
  config, _, _, events = run
  d = config.data
  # The clips of step 2 and step 4: the second and fourth batches of the run's stream.
  batches = [b["clips"].numpy() for b in
             data_pipeline.make_train_dataset(config, seed=config.runtime.seed).take(4)]
  expected = {2: batches[1], 4: batches[3]}
  for i in range(2):
    written = events[f"input/clip_{i}"]
    assert [s for s, _ in written] == [2, 4]
    for step, images in written:
      assert len(images) == d.seq_len
      for frame, image in enumerate(images):
        assert image.shape == (d.height, d.width, 3)
        np.testing.assert_array_equal(image, expected[step][i, frame])


def test_attention_is_drawn_on_the_frames_of_the_step(run):
  """Per clip: its frames with the spatial heat map under them ([B, T, h, w]), and its
  frames with a bar per temporal weight ([B, T]) (tfreid.visualize)."""
  config, _, _, events = run
  d = config.data
  t, h, w = d.seq_len, d.height, d.width
  batches = [b["clips"].numpy() for b in
             data_pipeline.make_train_dataset(config, seed=config.runtime.seed).take(4)]
  expected = {2: batches[1], 4: batches[3]}
  spatial = events["attention/attention_spatial"]
  temporal = events["attention/attention_temporal"]
  assert [s for s, _ in spatial] == [s for s, _ in temporal] == [2, 4]
  for (step, images), (_, bars) in zip(spatial, temporal):
    assert len(images) == len(bars) == 2  # one picture per clip
    for i, (image, bar) in enumerate(zip(images, bars)):
      assert image.shape == (2 * h + 1, t * w + t - 1, 3)
      assert bar.shape == (h + 4, t * w + t - 1, 3)
      for frame in range(t):
        left = frame * (w + 1)
        np.testing.assert_array_equal(image[:h, left:left + w], expected[step][i, frame])
        np.testing.assert_array_equal(bar[:h, left:left + w], expected[step][i, frame])
      # Some frame's bar fills its width (the largest weight); a bar is white or black.
      rows = bar[h:h + 4]
      assert set(np.unique(rows)) <= {0, 255}
      assert any((rows[:, f * (w + 1):f * (w + 1) + w] == 255).all() for f in range(t))


def test_attention_images_scale_each_map_to_its_range():
  rng = np.random.default_rng(0)
  maps = rng.random((2, 3, 4, 5)).astype(np.float32)
  images = trainer_lib.attention_images(tf.constant(maps)).numpy()
  flat = maps.reshape(6, 4, 5)
  low, high = flat.min(axis=(1, 2), keepdims=True), flat.max(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(images[..., 0], (flat - low) / (high - low), rtol=1e-5,
                             atol=1e-6)
  with_channel = trainer_lib.attention_images(tf.constant(maps[..., None])).numpy()
  np.testing.assert_allclose(with_channel, images, rtol=1e-6)
  weights = rng.random((2, 6)).astype(np.float32)
  row_image = trainer_lib.attention_images(tf.constant(weights)).numpy()
  expected = (weights - weights.min()) / (weights.max() - weights.min())
  np.testing.assert_allclose(row_image, expected[None, ..., None], rtol=1e-5, atol=1e-6)
  assert trainer_lib.attention_images(tf.constant([0.5, 0.5])) is None
