"""Attention drawn on frames (`tfreid.visualize`): heat maps, boxes, weight bars and strips
against hand-computed pixels, the default overlays by output shape, a model's own hook, and
`python -m tfreid.visualize` on a trained run of the test-only method (tests/fake_method)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfreid import config as cfg
from tfreid import visualize
from tfreid.data import pipeline as data_pipeline
from tfreid.training import trainer as trainer_lib

import data_fixtures
from trainer_fixtures import first_cpu_strategy

RAMP_LOW = np.array([0.05, 0.05, 0.35], np.float32)
RAMP_HIGH = np.array([0.85, 0.1, 0.05], np.float32)


def test_heatmap_blends_the_ramp_by_the_normalised_map():
  frames = np.full((1, 2, 3, 3), 0.5, np.float32)
  maps = np.array([[[0.0, 2.0, 4.0], [4.0, 4.0, 0.0]]], np.float32)  # same size: no resize
  out = visualize.heatmap_overlay(frames, maps, alpha=0.6).numpy()
  # Minimum: weight alpha/3 of the first stop; maximum: weight alpha of the last stop.
  np.testing.assert_allclose(out[0, 0, 0], 0.5 * 0.8 + RAMP_LOW * 0.2, rtol=1e-6)
  np.testing.assert_allclose(out[0, 0, 2], 0.5 * 0.4 + RAMP_HIGH * 0.6, rtol=1e-6)
  # Half way: the middle stop, weight alpha * (1 + 2 * 0.5) / 3.
  middle = np.array([0.3, 0.85, 0.45], np.float32)
  np.testing.assert_allclose(out[0, 0, 1], 0.5 * 0.6 + middle * 0.4, rtol=1e-6)
  # uint8 frames are read as /255; a constant map is drawn at its minimum everywhere.
  out8 = visualize.heatmap_overlay(np.full((1, 2, 2, 3), 255, np.uint8),
                                   np.ones((1, 2, 2), np.float32), alpha=0.6).numpy()
  np.testing.assert_allclose(out8[0, 1, 1], 0.8 + RAMP_LOW * 0.2, rtol=1e-6)


def test_heatmap_together_scales_a_clips_maps_by_one_range():
  frames = np.full((2, 1, 2, 3), 0.5, np.float32)
  maps = np.array([[[0.0, 1.0]], [[2.0, 2.0]]], np.float32)
  out = visualize.heatmap_overlay(frames, maps, alpha=0.6, together=True).numpy()
  # The clip's range is 0..2: 0 -> the first stop, 1 -> the middle one, 2 -> the last.
  np.testing.assert_allclose(out[0, 0, 0], 0.5 * 0.8 + RAMP_LOW * 0.2, rtol=1e-6)
  middle = np.array([0.3, 0.85, 0.45], np.float32)
  np.testing.assert_allclose(out[0, 0, 1], 0.5 * 0.6 + middle * 0.4, rtol=1e-6)
  np.testing.assert_allclose(out[1, 0, 0], 0.5 * 0.4 + RAMP_HIGH * 0.6, rtol=1e-6)
  # Each map on its own: the constant second map falls to its minimum instead.
  alone = visualize.heatmap_overlay(frames, maps, alpha=0.6).numpy()
  np.testing.assert_allclose(alone[1, 0, 0], 0.5 * 0.8 + RAMP_LOW * 0.2, rtol=1e-6)


def test_heatmap_is_resized_to_the_frame():
  maps = np.zeros((1, 2, 2), np.float32)
  maps[0, 0, 0] = 1.0  # top-left cell hot
  out = visualize.heatmap_overlay(np.zeros((1, 8, 8, 3), np.float32), maps).numpy()
  assert out.shape == (1, 8, 8, 3)
  # Red dominates top-left (hot), blue bottom-right (cold).
  assert out[0, 0, 0, 0] > out[0, 0, 0, 2] and out[0, 7, 7, 2] > out[0, 7, 7, 0]


def test_boxes_are_drawn_on_their_edges_only():
  frames = np.zeros((1, 10, 10, 3), np.float32)
  boxes = np.array([[[0.2, 0.3, 0.7, 0.8]]], np.float32)
  out = visualize.draw_boxes(frames, boxes, colors=[[1.0, 0.0, 0.0]]).numpy()[0]
  y0, x0 = int(0.2 * 9), int(0.3 * 9)  # TensorFlow maps a fraction f to row f * (H - 1)
  y1, x1 = int(0.7 * 9), int(0.8 * 9)
  edge = np.zeros((10, 10), bool)
  edge[y0, x0:x1 + 1] = edge[y1, x0:x1 + 1] = True
  edge[y0:y1 + 1, x0] = edge[y0:y1 + 1, x1] = True
  np.testing.assert_array_equal(out[..., 0] == 1.0, edge)
  assert (out[..., 1:] == 0).all()


def test_weight_bars_have_lengths_proportional_to_the_weights():
  frames = np.zeros((2, 4, 8, 3), np.uint8)
  weights = np.array([[1.0, 0.25], [0.5, 0.0]], np.float32)  # [T=2, K=2]
  colors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
  out = visualize.weight_bars(frames, weights, bar_height=2, colors=colors).numpy()
  assert out.shape == (2, 4 + 2 * 2, 8, 3)
  lengths = {(t, k): int((out[t, 4 + 2 * k, :, k] == 1.0).sum()) for t in (0, 1)
             for k in (0, 1)}
  assert lengths == {(0, 0): 8, (0, 1): 2, (1, 0): 4, (1, 1): 0}
  assert (out[:, 5] == out[:, 4]).all()  # bar_height rows per bar


def test_clip_strip_lays_frames_left_to_right_and_rows_top_to_bottom():
  rows = [np.full((3, 2, 4, 3), 0.25, np.float32), np.full((3, 5, 4, 3), 0.75, np.float32)]
  out = visualize.clip_strip(rows).numpy()
  assert out.shape == (2 + 1 + 5, 3 * 4 + 2, 3)
  assert (out[:2, :4] == 0.25).all() and (out[3:, 5:9] == 0.75).all()
  assert (out[2] == 1.0).all() and (out[:, 4] == 1.0).all()  # white gaps


def test_default_overlays_follow_the_output_shapes():
  b, t, h, w = 3, 4, 8, 6
  clips = np.random.default_rng(0).integers(0, 256, (b, t, h, w, 3), np.uint8)
  outputs = {"attention_map": np.random.default_rng(1).random((b, t, 2, 3), np.float32),
             "attention_heads": np.ones((b, t, 5, 2, 3), np.float32),
             "attention_time": np.full((b, t), 0.25, np.float32),
             "attention_parts": np.ones((b, t, 3), np.float32),
             "attention_other": np.ones((b, 7), np.float32),  # not a per-frame shape
             "embedding": np.ones((b, 8), np.float32)}
  drawn = visualize.default_overlays({"clips": clips}, outputs, max_clips=2)
  assert sorted(drawn) == ["attention_heads", "attention_map", "attention_parts",
                           "attention_time"]
  width = t * w + t - 1
  assert drawn["attention_map"].shape == (2, 2 * h + 1, width, 3)
  assert drawn["attention_heads"].shape == (2, 6 * h + 5, width, 3)
  assert drawn["attention_time"].shape == (2, h + 4, width, 3)
  assert drawn["attention_parts"].shape == (2, h + 12, width, 3)
  # The top row is the clip itself.
  top = drawn["attention_map"].numpy()[1, :h, :w]
  np.testing.assert_allclose(top, clips[1, 0] / 255.0, rtol=1e-6)


def test_a_models_own_hook_is_used_and_checked():
  class Boxes:
    def attention_overlays(self, inputs, outputs):
      del outputs
      return {"boxes": visualize.draw_boxes(inputs["clips"][:, 0],
                                            tf.constant([[[0.0, 0.0, 1.0, 1.0]]] * 2))}

  clips = np.zeros((5, 2, 6, 4, 3), np.uint8)
  drawn = visualize.attention_overlays(Boxes(), {"clips": clips},
                                         {"attention_x": np.zeros(5)})
  assert list(drawn) == ["boxes"] and drawn["boxes"].shape == (2, 6, 4, 3)

  class Wrong:
    def attention_overlays(self, inputs, outputs):
      return {"maps": tf.zeros([2, 6, 4])}

  with pytest.raises(ValueError, match=r"'maps' has shape .*\[N, H, W, 3\]"):
    visualize.attention_overlays(Wrong(), {"clips": clips}, {})


@pytest.fixture(scope="module", name="run")
def fixture_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("visualize")
  data = str(root / "data")
  data_fixtures.write_tiny_dataset(data, num_ids=4, tracklets_per_id=2, num_frames=(3, 6),
                                   height=16, width=12, with_flow=True, with_keypoints=True,
                                   num_test_ids=3, seed=3)
  config = cfg.build_config("fake_method.experiment", data_dir=data,
                            overrides=["runtime.jit_compile=false", "trainer.epochs=1"])
  model_dir = str(root / "run")
  keras.utils.set_random_seed(0)
  trainer_lib.Trainer(config, model_dir, strategy=first_cpu_strategy()).train()
  cfg.save_config(config, os.path.join(model_dir, "config.yaml"))
  return config, model_dir


def test_the_command_draws_a_test_tracklet(run, tmp_path):
  config, model_dir = run
  out = str(tmp_path / "pictures" / "attention.png")
  assert visualize.main([f"--model_dir={model_dir}", f"--output={out}", "--tracklet=1",
                         "--scale=2"]) == 0
  image = tf.io.decode_png(tf.io.read_file(out)).numpy()
  d = config.data
  h, w = d.height, d.width
  assert image.shape == (2 * (2 * h + 1), 2 * (d.seq_len * w + d.seq_len - 1), 3)
  # The top row: the first test clip of query tracklet 1, as the evaluation reads it.
  expected = None
  for batch in data_pipeline.make_test_dataset(config, "query", streams=("clips",)):
    hits = np.flatnonzero(batch["index"].numpy() == 1)
    if hits.size:
      expected = batch["clips"].numpy()[hits[0]]
      break
  np.testing.assert_array_equal(image[:2 * h:2, :2 * w:2], expected[0])
  np.testing.assert_array_equal(image[:2 * h:2, 2 * (w + 1):2 * (2 * w + 1):2], expected[1])
  # The heat row differs from the frames.
  assert not np.array_equal(image[2 * (h + 1)::2, :2 * w:2], expected[0])


def test_the_command_names_a_tracklet_out_of_range(run, tmp_path):
  config, _ = run
  with pytest.raises(ValueError, match=r"--tracklet=99: the query partition .* has 3 "
                                       r"tracklets \(0\.\.2\)"):
    visualize.test_clip(config, 99)
