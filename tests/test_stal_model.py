"""stal model: parameter count of the paper's configuration against the docstring's
breakdown, one full-size forward pass, tracklet aggregation over all frames (eq. 9) and the
test distance against NumPy, the test-time switches (Fig. 5-8), gradients, the
experiment's variants."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import stal as stal_experiment
from tfreid import config as cfg
from tfreid.data import samplers
from tfreid.layers import stal_attention as sa
from tfreid.models import build_model, contract, stal
from tfreid.training import trainer as trainer_lib

TINY = dict(width_divisor=16, global_embedding_dim=12, local_embedding_dim=6,
            attention_channels=64, pool_size=4)


@pytest.fixture(autouse=True)
def _seeded():
  keras.utils.set_random_seed(0)


def _inputs(rng, batch=2, frames=3, height=64, width=32):
  clips = rng.integers(0, 256, (batch, frames, height, width, 3), dtype=np.uint8)
  kp = np.concatenate([rng.uniform(0, width - 1, (batch, frames, 14, 1)),
                       rng.uniform(0, height - 1, (batch, frames, 14, 1)),
                       rng.uniform(0.2, 1, (batch, frames, 14, 1))], -1).astype(np.float32)
  return {"clips": clips, "keypoints": kp}


def _conv_bn(k, cin, cout):
  return k * k * cin * cout + cout + 4 * cout   # kernel, bias, BN gamma/beta/mean/var


def _inception(cin, one, r3, c3, rd, cd, proj):
  total = _conv_bn(1, cin, r3) + _conv_bn(3, r3, c3)
  total += _conv_bn(1, cin, rd) + _conv_bn(3, rd, cd) + _conv_bn(3, cd, cd)
  if one:
    total += _conv_bn(1, cin, one)
  if proj:
    total += _conv_bn(1, cin, proj)
  return total


# BN-Inception modules written out from Ioffe and Szegedy's table (input width first).
MODULES = {"3a": (192, 64, 64, 64, 64, 96, 32), "3b": (256, 64, 64, 96, 64, 96, 64),
           "3c": (320, 0, 128, 160, 64, 96, 0), "4a": (576, 224, 64, 96, 96, 128, 128),
           "4b": (576, 192, 96, 128, 96, 128, 128), "4c": (576, 160, 128, 160, 128, 160, 96),
           "4d": (576, 96, 128, 192, 160, 192, 96), "4e": (576, 0, 128, 192, 192, 256, 0),
           "5a": (1024, 352, 192, 320, 160, 224, 128),
           "5b": (1024, 352, 192, 320, 192, 224, 128)}


def test_paper_configuration_size_and_forward():
  config = stal_experiment.get_config("")
  config.model.backbone.init = "none"
  model = build_model(config.validate(), num_classes=625)
  m = {k: _inception(*v) for k, v in MODULES.items()}
  stem = _conv_bn(7, 3, 64) + _conv_bn(1, 64, 64) + _conv_bn(3, 64, 192)
  low = stem + sum(m[k] for k in ("3a", "3b", "3c", "4a", "4b"))
  ran = (_conv_bn(1, 576, 64) + _conv_bn(3, 64, 192) + 16 * 192 * 192 + 192
         + 192 * 576 + 576)
  glob = m["4c"] + ran + sum(m[k] for k in ("4d", "4e", "5a", "5b"))
  classifier = 1024 * 625 + 625
  part = m["4c"] + m["4d"] + m["4e"] + 4 * 4 * 1024 * 1024 + 1024
  stan = 7 * 7 * 576 * 256 + 256 + 2 * (9 * 256 * 256 + 256) + 256 * 6 + 6
  # The docstring's breakdown.
  assert (low, glob, part, stan) == (2_275_328, 8_774_432, 20_231_168, 8_407_302)
  expected = low + glob + classifier + 6 * (part + classifier) + stan
  assert model.count_params() == expected == stal.PAPER_CONFIG_PARAMS

  rng = np.random.default_rng(0)
  inputs = _inputs(rng, batch=1, frames=8, height=224, width=224)
  start = time.perf_counter()
  out = model(inputs, training=False)
  seconds = time.perf_counter() - start
  shapes = {k: tuple(v.shape) for k, v in out.items()}
  assert shapes == {
      "embedding": (1, 1024), "logits": (1, 625), "frame_embedding": (1, 8, 1024),
      "part_features": (1, 8, 6, 1024), "part_logits": (1, 8, 6, 625),
      "attention_scores": (1, 8, 6), "parts": (1, 6, 1024), "part_weight": (1, 6),
      "part_boxes": (1, 8, 6, 4), "attention_boxes": (1, 8, 56, 56)}
  assert all(np.isfinite(v.numpy()).all() for v in out.values())
  print(f"paper-size forward of one 8x224x224 clip: {seconds:.2f} s")


def _np_tracklet(out):
  """Eq. 9 and abar over every frame of one clip's per-frame outputs (NumPy)."""
  f = out["part_features"].numpy()[0].astype(np.float64)      # [T, R, D]
  s = out["attention_scores"].numpy()[0].astype(np.float64)   # [T, R]
  g = out["frame_embedding"].numpy()[0].astype(np.float64)    # [T, Dg]
  parts = np.stack([(s[:, r, None] * f[:, r]).sum(0) / s[:, r].sum() for r in range(6)])
  return {"embedding": g.mean(0), "parts": parts, "abar": s.mean(0), "mean_parts": f.mean(0)}


def _np_distance(q, g, w=0.3, temporal=True, spatial=True, which="fused", keep=None):
  keep = list(range(6)) if keep is None else keep
  pq = q["parts" if temporal else "mean_parts"][keep]
  pg = g["parts" if temporal else "mean_parts"][keep]
  aq = q["abar"][keep] if spatial else np.ones(len(keep))
  ag = g["abar"][keep] if spatial else np.ones(len(keep))
  local = sum(aq[r] * ag[r] / (aq.sum() * ag.sum()) * np.linalg.norm(pq[r] - pg[r])
              for r in range(len(keep)))
  glob = np.linalg.norm(q["embedding"] - g["embedding"])
  return {"fused": local + w * glob, "local": local, "global": glob}[which]


@pytest.mark.parametrize("switches", [
    {}, {"temporal_attention": False}, {"spatial_attention": False},
    {"temporal_attention": False, "spatial_attention": False},
    {"test_distance": "global"}, {"test_distance": "local", "test_parts": [1]},
    {"global_distance_weight": 0.7}])
def test_tracklets_aggregate_all_frames_and_distance_switches(switches):
  """Twelve frames as three clips of four: the summed statistics, finished, equal eq. 9
  and abar over all twelve frames; the test distance follows the switches."""
  model = stal.Stal(5, **TINY, **switches)
  rng = np.random.default_rng(1)
  reps, refs = [], []
  for _ in range(2):
    whole = _inputs(rng, batch=1, frames=12)
    refs.append(_np_tracklet(model(whole, training=False)))
    sums = None
    for c in range(3):
      clip = {k: v[:, 4 * c:4 * c + 4] for k, v in whole.items()}
      stats = contract.tracklet_statistics(model, model(clip, training=False))
      sums = stats if sums is None else {k: sums[k] + stats[k] for k in stats}
    reps.append(contract.finish_tracklet(model, sums, tf.constant([3.0])))
  np.testing.assert_allclose(reps[0]["embedding"].numpy()[0], refs[0]["embedding"],
                             rtol=1e-4, atol=1e-5)
  if model.temporal_attention:
    np.testing.assert_allclose(reps[0]["parts"].numpy()[0], refs[0]["parts"], rtol=1e-4,
                               atol=1e-5)
  got = model.pairwise_distance(reps[0], reps[1]).numpy()[0, 0]
  want = _np_distance(refs[0], refs[1], w=switches.get("global_distance_weight", 0.3),
                      temporal=switches.get("temporal_attention", True),
                      spatial=switches.get("spatial_attention", True),
                      which=switches.get("test_distance", "fused"),
                      keep=switches.get("test_parts"))
  # d_g comes from the Gram matrix in float32 (as for any Euclidean distance here).
  assert got == pytest.approx(want, rel=1e-3, abs=1e-5)


def test_padded_last_clip_counts_every_frame_once():
  """Ten frames as dense clips of four (the last padded with frames 8, 9 again) weighted by
  the evaluation's frame_weight: eq. 9 and abar over the ten frames, each once."""
  model = stal.Stal(5, **TINY)
  whole = _inputs(np.random.default_rng(3), batch=1, frames=10)
  ref = _np_tracklet(model(whole, training=False))
  index = samplers.test_clips("dense", 10, 4)
  weights = samplers.first_occurrences(index)
  sums = None
  for c in range(3):
    clip = {k: tf.gather(v, index[c], axis=1) for k, v in whole.items()}
    stats = contract.tracklet_statistics(model, model(clip, training=False),
                                         frame_weight=weights[c:c + 1])
    sums = stats if sums is None else {k: sums[k] + stats[k] for k in stats}
  rep = contract.finish_tracklet(model, sums, tf.constant([3.0]))
  np.testing.assert_allclose(rep["embedding"].numpy()[0], ref["embedding"], rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(rep["parts"].numpy()[0], ref["parts"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(rep["part_weight"].numpy()[0], ref["abar"] * 10, rtol=1e-4)


def test_training_outputs_gradients_and_distances():
  model = stal.Stal(4, **TINY)
  inputs = _inputs(np.random.default_rng(2), batch=4, frames=2)
  labels = tf.constant([0, 0, 1, 1])
  with tf.GradientTape() as tape:
    out = model(inputs, training=True)
    loss = (tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels,
                                                                          out["logits"]))
            + tf.reduce_mean(model.local_distance(out, out))
            + tf.reduce_mean(model.global_distance(out, out))
            + tf.reduce_mean(out["part_logits"]))
  grads = tape.gradient(loss, model.trainable_variables)
  for var, grad in zip(model.trainable_variables, grads):
    assert grad is not None and np.isfinite(grad.numpy()).all(), var.path
  # The STAN and the part networks are trained through psi (eqs. 8-9).
  stan = [g for v, g in zip(model.trainable_variables, grads) if "stan" in v.path]
  assert stan and all(np.abs(g.numpy()).max() > 0 for g in stan)
  # The training distances are eq. 8 on eq. 9 of the clip, and d_g.
  fns = contract.distance_functions(model)
  assert set(fns) == {"global", "local", "learned"}
  d = fns["local"](out, out).numpy()
  assert d.shape == (4, 4) and np.allclose(np.diag(d), 0, atol=1e-4)  # Gram, float32
  parts = sa.temporal_aggregation(out["part_features"], out["attention_scores"])
  np.testing.assert_allclose(out["parts"].numpy(), parts.numpy(), rtol=1e-6)
  g = out["embedding"].numpy()
  np.testing.assert_allclose(fns["global"](out, out).numpy()[0, 3],
                             np.linalg.norm(g[0] - g[3]), rtol=1e-5)
  with pytest.raises(ValueError, match="keypoints"):
    model({"clips": inputs["clips"]})


def test_attention_boxes_draw_each_part_with_its_score():
  model = stal.Stal(3, **TINY)
  inputs = _inputs(np.random.default_rng(3), batch=1, frames=2)
  out = model(inputs, training=False)
  drawn = out["attention_boxes"].numpy()          # [1, 2, 16, 8]
  boxes = out["part_boxes"].numpy() / 4.0
  s = out["attention_scores"].numpy()
  for t in range(2):
    for y in range(16):
      for x in range(8):
        inside = [s[0, t, r] for r in range(6) if boxes[0, t, r, 0] <= x <= boxes[0, t, r, 2]
                  and boxes[0, t, r, 1] <= y <= boxes[0, t, r, 3]]
        assert drawn[0, t, y, x] == pytest.approx(max(inside, default=0.0))
  # TensorBoard draws both attention outputs: one image per frame, one T x R map per clip.
  assert tuple(trainer_lib.attention_images(out["attention_boxes"]).shape) == (2, 16, 8, 1)
  assert tuple(trainer_lib.attention_images(out["attention_scores"]).shape) == (1, 2, 6, 1)


def test_variants_build_and_validate():
  for variant in stal_experiment.VARIANTS:
    c = stal_experiment.get_config(variant)
    c.experiment = f"stal:{variant}"
    c.validate()
    assert contract.input_streams(c) == ("clips", "keypoints")
  paper = stal_experiment.get_config("")
  assert (paper.losses.global_triplet.margin, paper.losses.local_triplet.margin,
          paper.losses.local_triplet.weight) == (1.2, 0.8, 0.3)
  assert paper.losses.local_triplet.distance == "local"
  assert paper.model.stal.global_distance_weight == 0.3
  assert stal_experiment.get_config("no_ran").model.stal.residual_attention is False
  with pytest.raises(ValueError, match="unknown stal variant"):
    stal_experiment.get_config("resnet")
  bad = stal_experiment.get_config("synthetic")
  bad.data.height = 100
  with pytest.raises(cfg.ConfigError, match="divisible by 32"):
    stal.validate_config(bad)
  bad = stal_experiment.get_config("")
  bad.model.backbone.weights_path = ""
  with pytest.raises(cfg.ConfigError, match="weights_path"):
    stal.build(bad, 5)
  with pytest.raises(cfg.ConfigError, match="test_parts"):
    stal.StalConfig(test_parts=[6]).validate()


def test_checkpoint_round_trip_restores_every_weight(tmp_path):
  """Every variable (the inception branches and the six part networks included) is saved
  and restored by a tf.train.Checkpoint, as the trainer, evaluation and export use it."""
  model = stal.Stal(5, **TINY)
  rng = np.random.default_rng(9)
  for var in model.variables:
    var.assign(rng.normal(size=var.shape).astype(np.dtype(var.dtype)))
  path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
  fresh = stal.Stal(5, **TINY)
  tf.train.Checkpoint(model=fresh).restore(path).assert_existing_objects_matched()
  weights = [v for v in model.variables if "seed_generator" not in v.path]
  restored = [v for v in fresh.variables if "seed_generator" not in v.path]
  assert len(weights) == len(restored) > 1000
  for a, b in zip(weights, restored):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=b.path)


def _resnet_block(cin, width, projection):
  """A bottleneck block without convolution biases (BN gamma/beta/mean/var per channel)."""
  total = cin * width + 4 * width + 9 * width * width + 4 * width + width * 4 * width
  total += 4 * 4 * width
  if projection:
    total += cin * 4 * width + 4 * 4 * width
  return total


def _resnet_stage(cin, width, blocks):
  return (_resnet_block(cin, width, True)
          + (blocks - 1) * _resnet_block(4 * width, width, False))


def test_resnet50_trunk_size_and_forward():
  """Table V's STAL + ResNet50 (variant resnet50): the docstring's breakdown from the
  ResNet-50 bottleneck table, and one full-size forward pass."""
  config = stal_experiment.get_config("resnet50")
  config.model.backbone.init = "none"
  model = build_model(config.validate(), num_classes=625)
  stem = 7 * 7 * 3 * 64 + 4 * 64
  low = (stem + _resnet_stage(64, 64, 3) + _resnet_stage(256, 128, 4)
         + _resnet_stage(512, 256, 6))
  res5 = _resnet_stage(1024, 512, 3)
  ran = (_conv_bn(1, 1024, 64) + _conv_bn(3, 64, 192) + 16 * 192 * 192 + 192
         + 192 * 1024 + 1024)
  projection = 2048 * 1024 + 1024
  classifier = 1024 * 625 + 625
  part = res5 + 2048 * 4 * 4 * 1024 + 1024
  stan = 7 * 7 * 1024 * 256 + 256 + 2 * (9 * 256 * 256 + 256) + 256 * 6 + 6
  assert (low, res5, ran, part, stan) == (8_573_888, 14_987_264, 965_056, 48_542_720,
                                          14_027_014)
  expected = low + ran + res5 + projection + classifier + 6 * (part + classifier) + stan
  assert model.count_params() == expected == stal.RESNET50_CONFIG_PARAMS
  assert model.trunk == "resnet50" and model.trunk_4c is None

  inputs = _inputs(np.random.default_rng(0), batch=1, frames=8, height=224, width=224)
  # Training mode: BatchNorm normalises by the batch (with untrained moving statistics the
  # 16 residual blocks of random weights grow activations to ~1e5 and saturate the STAN).
  out = model(inputs, training=True)
  assert tuple(out["embedding"].shape) == (1, 1024)
  assert tuple(out["part_features"].shape) == (1, 8, 6, 1024)
  assert tuple(out["attention_scores"].shape) == (1, 8, 6)
  assert all(np.isfinite(v.numpy()).all() for v in out.values())


def test_resnet50_trunk_loads_keras_resnet_weights(tmp_path):
  """model.backbone.init=imagenet with a Keras ResNet-50 weights file: the low-level CNN,
  the global res5 and every part network's res5 copy take the file's weights (by the layer
  names of keras.applications.ResNet50)."""
  keras.utils.set_random_seed(4)
  source = stal.Stal(3, **TINY, trunk="resnet50", resnet_base_width=4,
                     resnet_block_counts=(1, 1, 1, 1))
  full = keras.Model(source.low_level.input,
                     source.high_level(source.low_level.output["res4"])["res5"])
  path = str(tmp_path / "resnet.weights.h5")
  full.save_weights(path)
  config = stal_experiment.get_config("resnet50")
  config.model.backbone.weights_path = path
  config.model.backbone.base_width = 4
  config.model.backbone.block_counts = [1, 1, 1, 1]
  for key, value in TINY.items():
    setattr(config.model.stal, key, value)
  keras.utils.set_random_seed(5)
  model = stal.build(config.validate(), 3)
  want = source.high_level.get_layer("conv5_block1_2_conv").kernel.numpy()
  for piece in [model.high_level] + [n.get_layer("res5") for n in model.part_nets]:
    np.testing.assert_array_equal(piece.get_layer("conv5_block1_2_conv").kernel.numpy(), want)
  np.testing.assert_array_equal(model.low_level.get_layer("conv1_conv").kernel.numpy(),
                                source.low_level.get_layer("conv1_conv").kernel.numpy())


def test_attention_overlays_draw_part_boxes_and_scores():
  """The hook TensorBoard and tfreid.visualize call: part boxes in their colours on the
  frames, and under each frame one bar per part as long as its score (scaled to the
  clip's largest)."""
  from tfreid import visualize  # pylint: disable=import-outside-toplevel
  model = stal.Stal(3, **TINY)
  inputs = _inputs(np.random.default_rng(6), batch=3, frames=2)
  out = model(inputs, training=False)
  drawn = visualize.attention_overlays(model, inputs, out, max_clips=2)
  assert set(drawn) == {"parts"}
  images = drawn["parts"].numpy()
  # Two clips; rows: frames + 6 bars of 4 pixels, a gap, heat maps; 2 frames + a gap.
  assert images.shape == (2, 64 + 24 + 1 + 64, 2 * 32 + 1, 3)
  boxes = out["part_boxes"].numpy()
  scores = out["attention_scores"].numpy()
  colors = visualize.PART_COLORS[:6]
  for b in range(2):
    for t in range(2):
      frame = images[b, :, t * 33:t * 33 + 32]
      # The last part drawn (left leg) keeps its colour at its top-left corner.
      # (tf.image.draw_bounding_boxes truncates fraction * (size - 1) to a pixel.)
      x1, y1 = boxes[b, t, 5, :2]
      row = int(np.float32(np.float32(y1) / np.float32(63)) * np.float32(63))
      col = int(np.float32(np.float32(x1) / np.float32(31)) * np.float32(31))
      np.testing.assert_allclose(frame[row, col], colors[5], atol=1e-6)
      for r in range(6):
        bar = frame[64 + 4 * r]
        filled = np.all(np.abs(bar - colors[r]) < 1e-6, axis=-1).sum()
        want = scores[b, t, r] / scores[b].max() * 32
        assert abs(filled - want) <= 1.0, (b, t, r, filled, want)
