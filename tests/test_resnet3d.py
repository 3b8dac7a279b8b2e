"""ResNet3D / ResNet2D backbones and their initialisation from 2-D and 3-D weight files."""

import copy

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import nonlocal_i3d as nonlocal_i3d_experiment
from experiments import temporal_pooling as temporal_pooling_experiment
from tfreid.backbones import resnet2d, resnet3d, weights
from tfreid.models import nonlocal_i3d, temporal_pooling

import weights_fixtures


@pytest.fixture(scope="module")
def keras_resnet50(tmp_path_factory):
  """keras.applications.ResNet50 (no top) with random weights, saved in both Keras formats.

  Convolution biases and BN statistics are random too (the library initialisers make them 0
  and 1), so folding biases into the BN moving means is exercised.
  """
  model = weights_fixtures.random_resnet50(0)
  folder = tmp_path_factory.mktemp("resnet50")
  keras3_file = str(folder / "resnet50.weights.h5")
  keras2_file = str(folder / "resnet50.h5")
  model.save_weights(keras3_file)
  keras.saving.save_model(model, keras2_file)  # Keras 2 HDF5 layout ("model_weights")
  return model, keras3_file, keras2_file


@pytest.fixture(autouse=True)
def _seeded():
  keras.utils.set_random_seed(1)  # layer initialisers draw from it


def _paper_config(experiment, weights_path):
  config = experiment.get_config("")
  config.model.backbone.init = "imagenet"
  config.model.backbone.weights_path = weights_path
  config.model.backbone.last_stride = 2  # as keras.applications.ResNet50
  return config.validate()


def test_boring_video_equals_2d_resnet50(keras_resnet50):
  """T copies of one frame through the inflated network = the 2-D ResNet-50 on that frame."""
  reference, keras3_file, keras2_file = keras_resnet50
  rng = np.random.default_rng(1)
  frame = rng.integers(0, 256, (1, 64, 32, 3), dtype=np.uint8)
  clip = np.repeat(frame[:, None], 3, axis=1)  # [1, T=3, 64, 32, 3]
  expected_map = reference(keras.applications.resnet50.preprocess_input(
      frame.astype("float32"))).numpy()  # [1, 2, 1, 2048]
  expected = expected_map.mean(axis=(1, 2))
  assert expected_map.std() > 1e-3 and np.isfinite(expected_map).all()
  tolerance = dict(rtol=1e-4, atol=1e-4 * np.abs(expected_map).max())

  config = _paper_config(nonlocal_i3d_experiment, keras3_file)
  assert config.model.backbone.nonlocal_blocks.blocks_per_stage == [0, 2, 3, 0]
  model = nonlocal_i3d.build(config, num_classes=625)
  out = model({"clips": clip}, training=False)
  np.testing.assert_allclose(out["features"].numpy(), expected, **tolerance)
  maps = model.backbone(model.normalize(clip), training=False)["res5"].numpy()
  for t in range(3):  # also frame by frame, at the clip ends too
    np.testing.assert_allclose(maps[:, t], expected_map, **tolerance)

  baseline = temporal_pooling.build(_paper_config(temporal_pooling_experiment, keras2_file),
                                    num_classes=625)
  out = baseline({"clips": clip}, training=False)
  np.testing.assert_allclose(out["features"].numpy(), expected, **tolerance)


def test_nonlocal_positions_follow_section_4_2():
  assert resnet3d.nonlocal_positions(4, 2) == [1, 3]     # res3: before blocks 2 and 4
  assert resnet3d.nonlocal_positions(6, 3) == [1, 3, 5]  # res4: before blocks 2, 4, 6
  assert resnet3d.nonlocal_positions(2, 1) == [1]
  assert resnet3d.nonlocal_positions(3, 0) == []
  with pytest.raises(ValueError, match="every other block"):
    resnet3d.nonlocal_positions(4, 3)


def test_nonlocal_placement_after_is_one_block_later():
  """placement "after" (Wang et al.'s released code): after blocks 2, 4 of res3 and 2, 4, 6
  of res4 (1-based); "before" (the paper's text): before those blocks, unchanged names."""
  def order(placement):
    backbone = resnet3d.resnet3d(block_counts=(1, 4, 6, 1), base_width=4,
                                 nonlocal_blocks=(0, 2, 3, 0), nonlocal_placement=placement)
    names = [layer.name for layer in backbone.layers]
    return names, [n for n in names if "nonlocal" in n]

  names, nonlocal_names = order("after")
  assert nonlocal_names == [
      "conv3_nonlocal_after_block2", "conv3_nonlocal_after_block4",
      "conv4_nonlocal_after_block2", "conv4_nonlocal_after_block4",
      "conv4_nonlocal_after_block6"]
  for name in nonlocal_names:
    stage, block = name.split("_nonlocal_after_")
    assert names.index(name) == names.index(f"{stage}_{block}_out") + 1
  # The last one closes res4 (its output is the res4 endpoint).
  assert names.index("conv4_nonlocal_after_block6") < names.index("conv5_block1_1_conv")
  names, nonlocal_names = order("before")
  assert nonlocal_names == [
      "conv3_nonlocal_before_block2", "conv3_nonlocal_before_block4",
      "conv4_nonlocal_before_block2", "conv4_nonlocal_before_block4",
      "conv4_nonlocal_before_block6"]
  for name in nonlocal_names:
    stage, block = name.split("_nonlocal_before_")
    previous = f"{stage}_block{int(block[5:]) - 1}_out"
    assert names.index(name) == names.index(previous) + 1
  with pytest.raises(ValueError, match="nonlocal_placement"):
    resnet3d.resnet3d(base_width=4, nonlocal_placement="middle")


def test_layout_and_endpoint_shapes():
  backbone = resnet3d.resnet3d(block_counts=(1, 4, 3, 1), base_width=4, temporal_kernel=3,
                               nonlocal_blocks=(0, 2, 2, 0))
  names = [layer.name for layer in backbone.layers]
  assert [n for n in names if "nonlocal" in n] == [
      "conv3_nonlocal_before_block2", "conv3_nonlocal_before_block4",
      "conv4_nonlocal_before_block1", "conv4_nonlocal_before_block3"]
  temporal = [n for n in names if n.endswith("_temporal_conv")]
  assert len(temporal) == 1 + 4 + 3 + 1
  assert names.index("conv2_block1_2_temporal_conv") == names.index("conv2_block1_1_relu") + 1
  out = backbone(np.zeros((2, 3, 32, 16, 3), "float32"))
  assert {k: tuple(v.shape) for k, v in out.items()} == {
      "stem": (2, 3, 8, 4, 4), "res2": (2, 3, 8, 4, 16), "res3": (2, 3, 4, 2, 32),
      "res4": (2, 3, 2, 1, 64), "res5": (2, 3, 2, 1, 128)}
  strided = resnet3d.resnet3d(block_counts=(1, 1, 1, 1), base_width=4, last_stride=2,
                              temporal_kernel=1, nonlocal_blocks=(0, 0, 0, 0))
  assert not any("temporal" in layer.name for layer in strided.layers)
  assert strided(np.zeros((1, 2, 64, 32, 3), "float32"))["res5"].shape == (1, 2, 2, 1, 128)
  frames = resnet2d.resnet2d(block_counts=(1, 1, 1, 1), base_width=4, last_stride=1)
  assert frames(np.zeros((5, 32, 16, 3), "float32"))["res5"].shape == (5, 2, 1, 128)


def test_frame_and_temporal_convolutions_are_3d_convolutions():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 5, 9, 7, 3)).astype("float32")
  spatial = resnet3d.FrameConv2D(4, 3, strides=2, padding="same", use_bias=False)
  out = spatial(x).numpy()
  expected = tf.nn.conv3d(x, spatial.kernel.numpy()[None], [1, 1, 2, 2, 1], "SAME").numpy()
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)

  temporal = resnet3d.TemporalConv(3, 3)
  np.testing.assert_array_equal(temporal(x).numpy(), x)  # identity initialisation
  kernel = rng.normal(size=(3, 1, 3, 3)).astype("float32")
  temporal.kernel.assign(kernel)
  expected = tf.nn.conv3d(x, kernel[:, :, None], [1] * 5, "SAME").numpy()  # (3, 1, 1, 3, 3)
  np.testing.assert_allclose(temporal(x).numpy(), expected, rtol=1e-5, atol=1e-5)
  clone = resnet3d.TemporalConv.from_config(temporal.get_config())
  assert clone.kernel_size == (3, 1) and clone(x).shape == x.shape


def test_kinetics_weights_round_trip(tmp_path):
  kwargs = dict(block_counts=(1, 2, 1, 1), base_width=4, nonlocal_blocks=(0, 1, 1, 0))
  source = resnet3d.resnet3d(**kwargs)
  rng = np.random.default_rng(3)
  for var in source.weights:  # temporal kernels and non-local BN scales non-trivial
    if "temporal" in var.path or "gamma" in var.path:
      var.assign(rng.normal(0.0, 0.5, var.shape).astype("float32"))
  path = str(tmp_path / "kinetics.weights.h5")
  source.save_weights(path)
  target = resnet3d.resnet3d(**kwargs)
  message = weights.initialize_backbone(target, "kinetics", path, video=True)
  assert path in message
  x = rng.normal(size=(2, 3, 32, 16, 3)).astype("float32")
  np.testing.assert_allclose(target(x)["res5"].numpy(), source(x)["res5"].numpy(), rtol=1e-6)
  # A whole model's file holds the backbone too (layer paths nonlocal_i3d/resnet3d/...).
  whole = nonlocal_i3d.NonLocalI3D(3, **kwargs)
  whole.backbone.set_weights(source.get_weights())
  whole_path = str(tmp_path / "model.weights.h5")
  whole.save_weights(whole_path)
  again = resnet3d.resnet3d(**kwargs)
  weights.initialize_backbone(again, "kinetics", whole_path, video=True)
  for got, want in zip(again.get_weights(), source.get_weights()):
    np.testing.assert_array_equal(got, want)
  for other_kwargs, problem in (({"nonlocal_blocks": (0, 0, 1, 0)},
                                 "conv3_nonlocal_before_block2/theta not in this backbone"),
                                ({"nonlocal_blocks": (1, 1, 1, 0)},
                                 "conv2_nonlocal_before_block1/theta missing"),
                                ({"temporal_kernel": 5},
                                 "conv2_block1_2_temporal_conv has shapes")):
    other = resnet3d.resnet3d(**dict(kwargs, **other_kwargs))
    with pytest.raises(weights.WeightsError, match=f"(?s){problem}.*same block_counts"):
      weights.initialize_backbone(other, "kinetics", path, video=True)


def test_2d_weights_errors(keras_resnet50, tmp_path, monkeypatch):
  _, keras3_file, _ = keras_resnet50
  narrow = resnet3d.resnet3d(block_counts=(1, 1, 1, 1), base_width=4,
                             nonlocal_blocks=(0, 0, 0, 0))
  with pytest.raises(weights.WeightsError, match="base_width=64"):
    weights.initialize_backbone(narrow, "imagenet", keras3_file)
  with pytest.raises(weights.WeightsError, match="does not exist.*weights_path"):
    weights.initialize_backbone(narrow, "reid", str(tmp_path / "missing.weights.h5"))
  with pytest.raises(weights.WeightsError, match="weights_path"):
    weights.initialize_backbone(narrow, "reid", "")
  with pytest.raises(weights.WeightsError, match="2-D backbone"):
    weights.initialize_backbone(narrow, "kinetics", keras3_file, video=False)

  small = resnet2d.resnet2d(block_counts=(1, 1, 1, 1), base_width=4)
  small_file = str(tmp_path / "small.weights.h5")
  small.save_weights(small_file)
  deeper = resnet2d.resnet2d(block_counts=(1, 2, 1, 1), base_width=4)
  with pytest.raises(weights.WeightsError, match="conv3_block2_1_conv"):
    weights.initialize_backbone(deeper, "reid", small_file, video=False)

  def offline(*args, **kwargs):
    raise OSError("URL fetch failure: no network")
  monkeypatch.setattr(keras.applications, "ResNet50", offline)
  with pytest.raises(weights.WeightsError,
                     match="(?s)URL fetch failure.*model.backbone.weights_path"):
    weights.initialize_backbone(narrow, "imagenet", "")


def test_read_weights_file_formats(keras_resnet50, tmp_path):
  model, keras3_file, keras2_file = keras_resnet50
  expected = model.get_layer("conv4_block2_2_conv").get_weights()
  for path in (keras3_file, keras2_file):
    read = weights.read_weights_file(path)
    assert len(read["conv4_block2_2_bn"]) == 4
    for got, want in zip(read["conv4_block2_2_conv"], expected):
      np.testing.assert_array_equal(got, want)
  not_h5 = tmp_path / "weights.txt"
  not_h5.write_text("not hdf5")
  with pytest.raises(weights.WeightsError, match="not a readable HDF5"):
    weights.read_weights_file(str(not_h5))


def test_every_experiment_variant_validates():
  for module in (nonlocal_i3d_experiment, temporal_pooling_experiment):
    for variant in module.VARIANTS:
      config = copy.deepcopy(module.get_config(variant))
      if variant in ("ilidsvid", "prid2011"):  # fine-tuning: needs the MARS checkpoint
        config.trainer.init_checkpoint = "runs/nl"
      config = config.validate()
      assert config.model.backbone.name == (
          "resnet3d" if module is nonlocal_i3d_experiment else "resnet2d")
