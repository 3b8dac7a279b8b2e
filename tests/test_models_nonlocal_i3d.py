"""nonlocal_i3d and temporal_pooling models: size, forward, XLA, training, replicas, bf16."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import nonlocal_i3d as nonlocal_i3d_experiment
from experiments import temporal_pooling as temporal_pooling_experiment
from tfreid import config as cfg
from tfreid.layers.preprocessing import ClipNormalization
from tfreid.models import build_model, nonlocal_i3d, temporal_pooling
from tfreid.models.heads import BottleneckHead

TINY = dict(block_counts=(1, 1, 1, 1), base_width=4, nonlocal_blocks=(0, 0, 1, 0),
            embedding_dim=8)


@pytest.fixture(autouse=True)
def _seeded():
  keras.utils.set_random_seed(0)  # layer initialisers draw from it


def _clips(rng, batch=4, frames=2, height=32, width=16):
  return rng.integers(0, 256, (batch, frames, height, width, 3), dtype=np.uint8)


def _resnet50_params(width=64, blocks=(3, 4, 6, 3)):
  """ResNet-50 without top, bias-free convolutions, BN = 4 numbers per channel."""
  total = 7 * 7 * 3 * width + 4 * width
  channels = width
  for stage, count in enumerate(blocks):
    w = width * 2 ** stage
    for index in range(count):
      if index == 0:
        total += channels * 4 * w + 4 * 4 * w                    # projection shortcut
      total += channels * w + 9 * w * w + w * 4 * w + 4 * (w + w + 4 * w)
      channels = 4 * w
  return total


def test_paper_configuration_size_and_forward():
  """Parameter count at the paper's configuration; one 8 x 256 x 128 clip forward."""
  config = nonlocal_i3d_experiment.get_config("")
  config.model.backbone.init = "none"
  model = build_model(config.validate(), num_classes=625)
  resnet50 = _resnet50_params()
  keras_resnet50 = keras.applications.ResNet50(weights=None, include_top=False)
  conv_biases = sum(layer.bias.shape[0] for layer in keras_resnet50.layers
                    if isinstance(layer, keras.layers.Conv2D))
  assert resnet50 == keras_resnet50.count_params() - conv_biases
  temporal = sum(3 * w * w * n for w, n in zip((64, 128, 256, 512), (3, 4, 6, 3)))
  non_local = lambda c: 3 * (c * c // 2 + c // 2) + (c // 2 * c + c) + 4 * c
  head = 2048 * 512 + 4 * 512 + 512 * 625 + 625
  expected = resnet50 + temporal + 2 * non_local(512) + 3 * non_local(1024) + head
  assert model.count_params() == expected == nonlocal_i3d.PAPER_CONFIG_PARAMS

  clip = _clips(np.random.default_rng(0), batch=1, frames=8, height=256, width=128)
  start = time.perf_counter()
  out = model({"clips": clip}, training=False)
  seconds = time.perf_counter() - start
  assert {k: tuple(v.shape) for k, v in out.items()} == {
      "features": (1, 2048), "embedding": (1, 512), "logits": (1, 625)}
  assert all(v.dtype == tf.float32 and np.isfinite(v.numpy()).all() for v in out.values())
  print(f"paper-size forward of one 8x256x128 clip: {seconds:.2f} s")


def test_tiny_model_eager_xla_and_training_step():
  """Eager call, then one XLA-compiled training step (forward + backward)."""
  rng = np.random.default_rng(1)
  model = nonlocal_i3d.NonLocalI3D(5, **TINY)
  clips = _clips(rng)
  eager = model({"clips": clips}, training=False)
  assert {k: tuple(v.shape) for k, v in eager.items()} == {
      "features": (4, 128), "embedding": (4, 8), "logits": (4, 5)}

  # Non-local blocks start as the identity (BN scale 0), which blocks the gradients of
  # theta/phi/g/W_z; give the scales a value so every path is exercised.
  for var in model.trainable_variables:
    if "nonlocal" in var.path and "gamma" in var.path:
      var.assign(np.full(var.shape, 0.5, "float32"))
  labels = tf.constant([0, 1, 2, 3])

  @tf.function(jit_compile=True)
  def forward_backward(c):
    with tf.GradientTape() as tape:
      out = model({"clips": c}, training=True)
      loss = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(labels, out["logits"]))
      loss += tf.reduce_mean(tf.square(out["embedding"]))  # as a metric loss would
    return out, loss, tape.gradient(loss, model.trainable_variables)

  out, loss, grads = forward_backward(tf.constant(clips))
  # Training-mode features and embedding (batch statistics; dropout acts on logits only)
  # equal the eager computation.
  eager = model({"clips": clips}, training=True)
  for key in ("features", "embedding"):
    want = eager[key].numpy()
    np.testing.assert_allclose(out[key].numpy(), want, rtol=1e-4,
                               atol=1e-5 * np.abs(want).max())
  assert np.isfinite(loss.numpy())
  assert len(grads) == len(model.trainable_variables) > 50
  for var, grad in zip(model.trainable_variables, grads):
    assert grad is not None and np.abs(grad.numpy()).max() > 0, var.path


def test_attention_picture_draws_each_blocks_eq_5_weights():
  """The visualisation hook: one row per non-local block (attention received, the mean of
  eq. 5 over query positions) and a row of one query's weights, from each block's real
  input, drawn over the clip with one scale per row."""
  from tfreid import visualize  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(4)
  model = nonlocal_i3d.NonLocalI3D(5, **dict(TINY, nonlocal_blocks=(0, 1, 1, 0)))
  for var in model.weights:  # trained-like blocks: far from uniform attention
    if "nonlocal" in var.path and ("theta" in var.path or "phi" in var.path):
      var.assign(rng.normal(0.0, 1.0, var.shape).astype("float32"))
  clips = _clips(rng, batch=3, frames=4, height=64, width=32)
  layers = len(model.layers)
  attention = model.nonlocal_attention(clips)
  assert len(model.layers) == layers  # the helper sub-model is not one of the model's layers
  names = [layer.name for layer in model.backbone.layers
           if isinstance(layer, nonlocal_i3d.NonLocalBlock)]
  assert list(attention) == names and len(names) == 2
  # Each block runs before its stage's first block (placement "before"): on the res2 map
  # (16 x 8 at 64 x 32) and the res3 map (8 x 4); keys on the 2x2-pooled grid.
  assert [a[1:] for a in attention.values()] == [((4, 16, 8), (4, 8, 4)),
                                                 ((4, 8, 4), (4, 4, 2))]
  for name, (weights, queries, keys) in attention.items():
    # The weights belong to the block's real input: the block's output from that input,
    # y = x + BN(W_z(weights @ g)), is the output the backbone computes.
    block = model.backbone.get_layer(name)
    probe = keras.Model(model.backbone.inputs, [block.input, block.output])
    x, y = probe(model.normalize(clips), training=False)
    np.testing.assert_allclose(block(x, training=False).numpy(), y.numpy(), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(weights.numpy(), block.attention_weights(x).numpy(),
                               rtol=1e-6)
    assert weights.shape == (3, np.prod(queries), np.prod(keys))
    assert weights.numpy().max() > 3.0 / np.prod(keys)

  drawn = visualize.attention_overlays(model, {"clips": clips}, {}, max_clips=2)
  assert list(drawn) == ["nonlocal"]
  images = drawn["nonlocal"].numpy()
  # 2 clips; rows: frames, 2 blocks, one query (4 x 64 pixels + 3 gaps); 4 x 32 + 3 wide.
  assert images.shape == (2, 4 * 64 + 3, 4 * 32 + 3, 3)
  for b in range(2):
    for row, (weights, _, keys) in enumerate(attention.values(), start=1):
      received = weights.numpy()[b].mean(axis=0).reshape(keys)
      want = visualize.clip_strip([visualize.heatmap_overlay(clips[b], received,
                                                             together=True)]).numpy()
      got = images[b, row * 65:row * 65 + 64]
      np.testing.assert_allclose(got, want, atol=1e-5)
    # The query is the centre cell (4, 2) of frame 2 on the last block's 8 x 4 grid:
    # rows 32-40 and columns 16-24 of frame 2, boxed in white there and nowhere else
    # (tf.image.draw_bounding_boxes puts fraction y at pixel row floor(y * (64 - 1))).
    weights, _, keys = list(attention.values())[-1]
    query = (2 * 8 + 4) * 4 + 2
    want = visualize.heatmap_overlay(clips[b], weights.numpy()[b, query].reshape(keys),
                                     together=True).numpy()
    last = images[b, 3 * 65:]
    for t in (0, 1, 3):
      np.testing.assert_allclose(last[:, t * 33:t * 33 + 32], want[t], atol=1e-5)
    frame = last[:, 2 * 33:2 * 33 + 32]
    differs = np.abs(frame - want[2]).max(axis=-1) > 1e-5
    assert np.all(frame[differs] == 1.0)
    rows, cols = np.nonzero(differs)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (31, 39, 15, 23)


def test_two_replicas_use_per_replica_batchnorm():
  """MirroredStrategy over 2 logical CPUs: per-replica BN statistics, per-replica gradients.

  (XLA is covered on one device above; compiling once per replica here would triple the
  slowest part of this file. The trainer XLA-compiles the same per-replica function.)
  """
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    model = nonlocal_i3d.NonLocalI3D(5, **TINY)
  rng = np.random.default_rng(2)
  clips, labels = _clips(rng), np.array([0, 1, 2, 3])
  alone = [model({"clips": part}, training=True)["embedding"].numpy()
           for part in (clips[:2], clips[2:])]
  whole = model({"clips": clips}, training=True)["embedding"].numpy()
  dataset = tf.data.Dataset.from_tensors(({"clips": clips}, labels))
  inputs, targets = next(iter(strategy.experimental_distribute_dataset(dataset)))

  def replica_step(batch, y):
    with tf.GradientTape() as tape:
      out = model(batch, training=True)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, out["logits"]))
    grads = tape.gradient(loss, model.trainable_variables)
    return out["embedding"], tf.linalg.global_norm(grads)

  embeddings, norms = tf.function(
      lambda b, y: strategy.run(replica_step, args=(b, y)))(inputs, targets)
  halves = strategy.experimental_local_results(embeddings)
  # Each replica normalised with its own half-batch statistics, not the global batch's.
  for half, want in zip(halves, alone):
    np.testing.assert_allclose(half.numpy(), want, rtol=1e-4, atol=1e-4)
  assert np.abs(halves[0].numpy() - whole[:2]).max() > 1e-3
  assert all(np.isfinite(n.numpy()) and n.numpy() > 0
             for n in strategy.experimental_local_results(norms))


def test_mixed_bfloat16_outputs_float32():
  rng = np.random.default_rng(3)
  clips = _clips(rng)
  reference = nonlocal_i3d.NonLocalI3D(5, **TINY)
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = nonlocal_i3d.NonLocalI3D(5, **TINY)
    baseline = temporal_pooling.TemporalPooling(5, block_counts=(1, 1, 1, 1), base_width=4,
                                                embedding_dim=8)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  model.set_weights(reference.get_weights())
  assert all(v.dtype == "float32" for v in model.weights)
  out = tf.function(lambda c: model({"clips": c}, training=False), jit_compile=True)(clips)
  want = reference({"clips": clips}, training=False)
  for key in ("features", "embedding", "logits"):
    assert out[key].dtype == tf.float32
    scale = np.abs(want[key].numpy()).max()
    np.testing.assert_allclose(out[key].numpy(), want[key].numpy(), atol=0.05 * scale)
  assert all(v.dtype == tf.float32 for v in baseline({"clips": clips}).values())


def test_head_matches_numpy_and_layers_serialise():
  rng = np.random.default_rng(4)
  head = BottleneckHead(num_classes=3, embedding_dim=4, leaky_relu_alpha=0.1, dropout=0.5)
  feature_map = rng.normal(size=(2, 3, 2, 2, 6)).astype("float32")
  head.build(feature_map.shape)
  for var in head.weights:
    value = rng.uniform(0.5, 1.5, var.shape) if "variance" in var.path else rng.normal(
        size=var.shape)
    var.assign(value.astype("float32"))
  fc, = head.fc.get_weights()
  gamma, beta, mean, variance = head.bn.get_weights()
  kernel, bias = head.classifier.get_weights()
  pooled = feature_map.mean(axis=(1, 2, 3))
  x = gamma * (pooled @ fc - mean) / np.sqrt(variance + 1e-5) + beta
  embedding = np.where(x > 0, x, 0.1 * x)
  out = head(feature_map, training=False)
  np.testing.assert_allclose(out["features"].numpy(), pooled, rtol=1e-5)
  np.testing.assert_allclose(out["embedding"].numpy(), embedding, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["logits"].numpy(), embedding @ kernel + bias, rtol=1e-4,
                             atol=1e-4)
  # Training: dropout reaches the logits only; the embedding is deterministic given BN.
  train = head(feature_map, training=True)
  np.testing.assert_array_equal(train["embedding"].numpy(),
                                head(feature_map, training=True)["embedding"].numpy())

  for layer in (head, ClipNormalization("torch")):
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
  assert head.get_config()["num_classes"] == 3 and head.get_config()["dropout"] == 0.5
  frames = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  np.testing.assert_allclose(  # the convention of keras.applications.resnet50
      ClipNormalization("caffe")(frames).numpy(),
      keras.applications.resnet50.preprocess_input(frames.astype("float32")), rtol=1e-6)
  with pytest.raises(ValueError, match="mode="):
    ClipNormalization("imagenet")

  model = nonlocal_i3d.NonLocalI3D(5, **TINY)
  clone = nonlocal_i3d.NonLocalI3D.from_config(model.get_config())
  assert clone.get_config() == model.get_config()
  clone.set_weights(model.get_weights())
  clips = _clips(rng)
  np.testing.assert_allclose(clone({"clips": clips})["embedding"].numpy(),
                             model({"clips": clips})["embedding"].numpy(), rtol=1e-5)


def test_temporal_pooling_equals_inflated_3d_model_at_start(tmp_path):
  """From the same 2-D weights, both models give the same features on any clip."""
  rng = np.random.default_rng(5)
  configs = {}
  for name, module in (("nonlocal_i3d", nonlocal_i3d_experiment),
                       ("temporal_pooling", temporal_pooling_experiment)):
    config = module.get_config("synthetic")
    config.model.backbone.block_counts = [1, 2, 1, 1]
    config.model.backbone.base_width = 4
    configs[name] = config
  source = build_model(configs["temporal_pooling"].validate(), num_classes=7)
  for var in source.backbone.weights:
    var.assign(rng.uniform(0.5, 1.5, var.shape).astype("float32") if "variance" in var.path
               else rng.normal(0.0, 0.3, var.shape).astype("float32"))
  path = str(tmp_path / "reid.weights.h5")
  source.save_weights(path)  # a whole temporal_pooling model: backbone + head layers
  for config in configs.values():
    config.model.backbone.init = "reid"
    config.model.backbone.weights_path = path
  video = build_model(configs["nonlocal_i3d"].validate(), num_classes=7)
  frames = build_model(configs["temporal_pooling"].validate(), num_classes=7)
  clips = _clips(rng, batch=2, frames=4, height=64, width=32)
  want = source({"clips": clips}, training=False)["features"].numpy()
  assert want.std() > 1e-3
  for model in (video, frames):
    np.testing.assert_allclose(model({"clips": clips}, training=False)["features"].numpy(),
                               want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_build_rejects_mismatched_backbone():
  config = nonlocal_i3d_experiment.get_config("synthetic")
  config.model.backbone.name = "resnet2d"
  config.model.backbone.nonlocal_blocks.blocks_per_stage = [0, 0, 0, 0]
  with pytest.raises(cfg.ConfigError, match="backbone.name=resnet3d"):
    nonlocal_i3d.build(config, 5)
  config = temporal_pooling_experiment.get_config("synthetic")
  config.model.backbone.name = "resnet3d"
  with pytest.raises(cfg.ConfigError, match="backbone.name=resnet2d"):
    temporal_pooling.build(config, 5)
