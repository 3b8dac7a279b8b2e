"""siamese_convgru at full size (parameter count against the model docstring's breakdown, one
224 x 224 forward pass), its experiment's variants, and the CNN weight loaders (GoogLeNet
from .npz / caffe-tensorflow .npy files, VGG-16 from a keras.applications model or a Keras
weights file), each tested with files the test writes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfreid import config as cfg
from tfreid.backbones import googlenet, vgg16
from tfreid.models import siamese_convgru

# The model docstring's breakdown of the paper configuration.
PAPER_BREAKDOWN = {
    "googlenet to inception_5b": 5_973_552,
    "conv_gru_1": 3 * 3 * 3 * (1024 * 128 + 128 ** 2),
    "conv_gru_2": 3 * 5 * 5 * (128 * 256 + 256 ** 2),
    "conv_gru_3": 3 * 5 * 5 * (256 * 256 + 256 ** 2),
    "f_init": 1024 * (128 + 256 + 256) + (128 + 256 + 256),
    "attention": (2 * 2 * 256) * 7 * 7,
    "temporal": 2 * 2 * 256 + 1,
    "similarity": 2 * 2 * 256 + 1,
}


def test_paper_configuration_parameter_count_and_full_size_forward_pass():
  config = cfg.get_experiment("siamese_convgru")
  cfg.apply_override(config, "model.backbone.init=none")
  config.validate()
  model = siamese_convgru.build(config, num_classes=150)
  expected = sum(PAPER_BREAKDOWN.values())
  assert expected == siamese_convgru.PAPER_CONFIG_PARAMS == 27_866_290
  assert model.count_params() == expected
  assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == expected
  assert model.cnn.count_params() == PAPER_BREAKDOWN["googlenet to inception_5b"]
  for i in (1, 2, 3):
    assert model.stack.cells[i - 1].count_params() == PAPER_BREAKDOWN[f"conv_gru_{i}"]
  assert sum(siamese_convgru.parameter_breakdown().values()) == expected
  clips = np.random.default_rng(0).integers(0, 256, (1, 2, 224, 224, 3)).astype(np.uint8)
  cubes = model.feature_cubes(tf.constant(clips))
  assert cubes.shape == (1, 2, 7, 7, 1024)
  out = model({"clips": clips}, training=False)
  assert out["embedding"].shape == (1, 1024)
  assert out["attention_spatial"].shape == (1, 2, 7, 7)
  assert out["attention_temporal"].shape == (1, 2)
  assert np.isfinite(out["embedding"].numpy()).all()
  np.testing.assert_allclose(out["attention_spatial"].numpy().sum(axis=(2, 3)), 1.0, rtol=1e-5)


def test_every_variant_is_a_valid_configuration_with_its_table_row():
  expected = {
      "": ("googlenet", "conv", [3, 5, 5], "learned", "attention"),
      "k9_1": ("googlenet", "conv", [3, 9, 1], "learned", "attention"),
      "k1_9": ("googlenet", "conv", [3, 1, 9], "learned", "attention"),
      "vgg16": ("vgg16", "conv", [3, 5, 5], "learned", "attention"),
      "vgg16_k9_1": ("vgg16", "conv", [3, 9, 1], "learned", "attention"),
      "vgg16_k1_9": ("vgg16", "conv", [3, 1, 9], "learned", "attention"),
      "fc_gru_googlenet": ("googlenet", "fc", [1, 1, 1], "learned", "attention"),
      "fc_gru_vgg16": ("vgg16", "fc", [1, 1, 1], "learned", "attention"),
      "no_attention": ("googlenet", "conv", [3, 5, 5], "uniform", "attention"),
      "max_pool": ("googlenet", "conv", [3, 5, 5], "learned", "max"),
      "mean_pool": ("googlenet", "conv", [3, 5, 5], "learned", "mean"),
  }
  for variant in cfg.experiment_variants("siamese_convgru"):
    c = cfg.get_experiment(f"siamese_convgru:{variant}" if variant else "siamese_convgru")
    c.validate()
    s = c.model.siamese_convgru
    if variant in expected:
      assert (c.model.backbone.name, s.feature, s.kernel_sizes, s.spatial_attention,
              s.temporal_pooling) == expected[variant], variant
  paper = cfg.get_experiment("siamese_convgru")
  assert (paper.data.height, paper.data.width, paper.data.seq_len) == (224, 224, 20)
  assert paper.data.test_clip_len == 128
  assert (paper.data.num_identities, paper.data.num_instances) == (5, 2)
  assert paper.data.tracklet_sampler == "cross_camera"
  assert (paper.optimizer.name, paper.optimizer.clip_value, paper.optimizer.momentum,
          paper.optimizer.weight_decay) == ("rmsprop", 5.0, 0.0, 0.0)
  assert [name for name, _ in paper.losses.active()] == ["pair_bce", "attention_penalty"]
  assert paper.model.siamese_convgru.dropout == 0.7
  # Section V-B's U[-1, 1] ConvGRU initialisation (tests/test_siamese_convgru_learning.py).
  assert paper.model.siamese_convgru.gru_init_range == 1.0
  synthetic = cfg.get_experiment("siamese_convgru:synthetic")
  assert synthetic.model.siamese_convgru.gru_init_range == 0.0
  assert cfg.get_experiment("siamese_convgru:mars").trainer.epochs == 2000


def test_bad_configurations_are_refused_with_the_key():
  with pytest.raises(cfg.ConfigError, match="weights_path"):
    cfg.build_config("siamese_convgru", overrides=["model.backbone.weights_path="])
  with pytest.raises(cfg.ConfigError, match="model.backbone.name"):
    cfg.build_config("siamese_convgru:synthetic", overrides=["model.backbone.name=resnet2d"])
  with pytest.raises(cfg.ConfigError, match="temporal_pooling"):
    cfg.build_config("siamese_convgru:synthetic",
                     overrides=["model.siamese_convgru.temporal_pooling=sum"])
  with pytest.raises(cfg.ConfigError, match="kernel_sizes"):
    cfg.build_config("siamese_convgru:synthetic",
                     overrides=["model.siamese_convgru.kernel_sizes=[3, 5]"])
  with pytest.raises(cfg.ConfigError, match="num_instances >= 2"):
    cfg.build_config("siamese_convgru:synthetic", overrides=["data.num_instances=1"])
  model = siamese_convgru.SiameseConvGRU(backbone_width=0.0625, channels=(2, 2, 2),
                                         height=64, width=32)
  with pytest.raises(ValueError, match="built for 64x32"):
    model({"clips": np.zeros((1, 2, 32, 32, 3), np.uint8)})


def test_googlenet_weights_round_trip_through_npz_and_caffe_tensorflow_npy(tmp_path):
  source = googlenet.googlenet(width=0.0625, name="source")
  rng = np.random.default_rng(1)
  for v in source.weights:
    v.assign(rng.normal(0, 0.05, v.shape).astype(np.float32))
  frames = rng.normal(0, 50, (2, 64, 32, 3)).astype(np.float32)
  expected = source(frames)["inception_5b"].numpy()
  npz = str(tmp_path / "googlenet.npz")
  googlenet.save_googlenet_weights(source, npz)
  target = googlenet.googlenet(width=0.0625, name="target")
  loaded = googlenet.load_googlenet_weights(target, npz)
  assert len(loaded) == 3 + 9 * 6 and "inception_5b_pool_proj" in loaded
  np.testing.assert_allclose(target(frames)["inception_5b"].numpy(), expected, rtol=1e-5,
                             atol=1e-6)
  # caffe-tensorflow layout: {layer: {"weights", "biases"}} pickled in a .npy, extra layers
  # (the classifier) ignored.
  content = {layer.name: {"weights": layer.kernel.numpy(), "biases": layer.bias.numpy()}
             for layer in source.layers if isinstance(layer, keras.layers.Conv2D)}
  content["loss3_classifier"] = {"weights": np.zeros((4, 3)), "biases": np.zeros(3)}
  npy = str(tmp_path / "googlenet.npy")
  np.save(npy, content, allow_pickle=True)
  other = googlenet.googlenet(width=0.0625, name="other")
  googlenet.load_googlenet_weights(other, npy)
  np.testing.assert_allclose(other(frames)["inception_5b"].numpy(), expected, rtol=1e-5,
                             atol=1e-6)
  wider = googlenet.googlenet(width=0.125, name="wider")
  with pytest.raises(ValueError, match="width other than 1"):
    googlenet.load_googlenet_weights(wider, npz)
  (tmp_path / "weights.h5").write_bytes(b"")
  with pytest.raises(ValueError, match=".npz"):
    googlenet.load_googlenet_weights(wider, str(tmp_path / "weights.h5"))
  with pytest.raises(ValueError, match="does not exist.*model.backbone.init=none"):
    googlenet.load_googlenet_weights(wider, str(tmp_path / "missing.npz"))


def test_model_build_loads_googlenet_weights_from_the_configured_file(tmp_path):
  config = cfg.build_config("siamese_convgru:synthetic")
  reference = siamese_convgru.build(config, 1)
  rng = np.random.default_rng(2)
  for v in reference.cnn.weights:
    v.assign(rng.normal(0, 0.05, v.shape).astype(np.float32))
  path = str(tmp_path / "g.npz")
  googlenet.save_googlenet_weights(reference.cnn, path)
  cfg.apply_override(config, "model.backbone.init=imagenet")
  cfg.apply_override(config, f"model.backbone.weights_path={path}")
  model = siamese_convgru.build(config.validate(), 1)
  for a, b in zip(model.cnn.weights, reference.cnn.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_vgg16_loads_from_keras_applications_and_from_a_keras_weights_file(tmp_path):
  reference = keras.applications.VGG16(weights=None, include_top=False,
                                       input_shape=(32, 32, 3))
  ours = vgg16.vgg16(name="ours")
  assert ours.count_params() == reference.count_params() == 14_714_688
  loaded = vgg16.load_vgg16_weights(ours, reference)
  assert len(loaded) == 13
  frames = np.random.default_rng(3).normal(0, 50, (1, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(ours(frames)["block5_pool"].numpy(), reference(frames).numpy(),
                             rtol=1e-4, atol=1e-4)
  path = str(tmp_path / "vgg16_notop.weights.h5")
  reference.save_weights(path)
  from_file = vgg16.vgg16(name="from_file")
  vgg16.load_vgg16_weights(from_file, path)
  for a, b in zip(from_file.weights, reference.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  with pytest.raises(ValueError, match="has shapes"):
    vgg16.load_vgg16_weights(vgg16.vgg16(width=0.5, name="narrow"), reference)
