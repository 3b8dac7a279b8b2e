"""Backbones cut at named stages, on any input channel count, and loading 2-D weights into them."""

import keras
import numpy as np
import pytest

from tfreid.backbones import resnet2d, resnet3d, weights

import weights_fixtures

TINY = dict(block_counts=(1, 2, 1, 1), base_width=4)


@pytest.fixture(autouse=True)
def _seeded():
  keras.utils.set_random_seed(5)


def _variables(*models):
  """{(layer path, variable name): shape} of the models' weight-owning layers."""
  out = {}
  for model in models:
    for layer in model.layers:
      for var in layer.weights:
        key = (layer.name, var.path.split("/")[-1], var.path)
        assert key not in out, f"{key} twice"
        out[key] = tuple(var.shape)
  return out


def _randomise(model, seed):
  """Every variable (BN statistics, temporal kernels, non-local BN scales too) non-trivial."""
  rng = np.random.default_rng(seed)
  for var in model.weights:
    if "variance" in var.path:
      var.assign(rng.uniform(0.5, 1.5, var.shape).astype("float32"))
    else:
      var.assign(rng.normal(0.0, 0.3, var.shape).astype("float32"))


def _copy_by_name(source, target):
  for layer in target.layers:
    if layer.weights:
      layer.set_weights(source.get_layer(layer.name).get_weights())


def test_cut_backbones_shapes_with_two_channels():
  flow = resnet2d.resnet2d(input_channels=2, last_stage="res2", **TINY)
  assert tuple(flow.input.shape) == (None, None, None, 2)
  out = flow(np.zeros((3, 32, 16, 2), "float32"))
  assert {k: tuple(v.shape) for k, v in out.items()} == {"stem": (3, 8, 4, 4),
                                                         "res2": (3, 8, 4, 16)}
  trunk = resnet2d.resnet2d(first_stage="res3", **TINY)
  assert tuple(trunk.input.shape) == (None, None, None, 16)  # 4 x base_width, res2's output
  out = trunk(np.zeros((3, 8, 4, 16), "float32"))
  assert {k: tuple(v.shape) for k, v in out.items()} == {
      "res3": (3, 4, 2, 32), "res4": (3, 2, 1, 64), "res5": (3, 1, 1, 128)}
  middle = resnet2d.resnet2d(first_stage="res3", last_stage="res3", **TINY)
  assert list(middle(np.zeros((1, 8, 4, 16), "float32"))) == ["res3"]

  clips = resnet3d.resnet3d(input_channels=2, last_stage="res2", nonlocal_blocks=(0, 1, 0, 0),
                            **TINY)
  assert tuple(clips.input.shape) == (None, None, None, None, 2)
  assert not any("nonlocal" in layer.name for layer in clips.layers)
  out = clips(np.zeros((2, 3, 32, 16, 2), "float32"))
  assert tuple(out["res2"].shape) == (2, 3, 8, 4, 16)
  trunk3d = resnet3d.resnet3d(first_stage="res3", nonlocal_blocks=(0, 1, 0, 0), **TINY)
  assert tuple(trunk3d.input.shape) == (None, None, None, None, 16)
  assert tuple(trunk3d(np.zeros((2, 3, 8, 4, 16), "float32"))["res5"].shape) == (2, 3, 2, 1, 128)
  one_channel = resnet2d.resnet2d(input_channels=1, last_stage="stem", **TINY)
  assert tuple(one_channel(np.zeros((1, 32, 16, 1), "float32"))["stem"].shape) == (1, 8, 4, 4)


@pytest.mark.parametrize("video", [False, True])
def test_cut_pieces_have_exactly_the_full_networks_variables(video):
  build = resnet3d.resnet3d if video else resnet2d.resnet2d
  extra = dict(nonlocal_blocks=(0, 1, 1, 0)) if video else {}
  full = build(**TINY, **extra)
  rgb = build(last_stage="res2", **TINY, **extra)
  flow = build(input_channels=2, last_stage="res2", **TINY, **extra)
  trunk = build(first_stage="res3", **TINY, **extra)
  want, got = _variables(full), _variables(flow, trunk)
  assert sorted(want) == sorted(got)
  differ = {k for k in want if want[k] != got[k]}
  assert differ == {("conv1_conv", "kernel", "conv1_conv/kernel")}
  conv1 = ("conv1_conv", "kernel", "conv1_conv/kernel")
  assert want[conv1] == (7, 7, 3, 4) and got[conv1] == (7, 7, 2, 4)
  assert _variables(rgb, trunk) == want  # the RGB stem: the full network exactly
  # The same layers, in the same order, under the same names.
  names = [layer.name for layer in full.layers[1:]]
  assert [layer.name for layer in rgb.layers[1:]] + [
      layer.name for layer in trunk.layers[1:]] == names
  assert trunk.layers[0].name == "res2" and full.layers[0].name == ("clips" if video
                                                                    else "frames")


@pytest.mark.parametrize("video,cut", [(False, "res3"), (True, "res4")])
def test_composed_pieces_equal_the_full_network(video, cut):
  build = resnet3d.resnet3d if video else resnet2d.resnet2d
  extra = dict(nonlocal_blocks=(0, 1, 1, 0), temporal_kernel=3) if video else {}
  full = build(**TINY, **extra)
  _randomise(full, 6)
  previous = resnet3d.STAGES[resnet3d.STAGES.index(cut) - 1]
  head = build(last_stage=previous, **TINY, **extra)
  tail = build(first_stage=cut, **TINY, **extra)
  _copy_by_name(full, head)
  _copy_by_name(full, tail)
  rng = np.random.default_rng(7)
  x = rng.normal(size=((2, 3) if video else (4,)) + (32, 16, 3)).astype("float32")
  want = {k: v.numpy() for k, v in full(x, training=False).items()}
  early = head(x, training=False)
  late = tail(early[previous], training=False)
  assert set(early) | set(late) == set(want) and not set(early) & set(late)
  for name, value in {**early, **late}.items():
    assert np.abs(want[name]).max() > 1e-3
    np.testing.assert_allclose(value.numpy(), want[name], rtol=1e-5,
                               atol=1e-5 * np.abs(want[name]).max())


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
  """keras.applications.ResNet50 (no top) with random kernels, biases and BN statistics."""
  model = weights_fixtures.random_resnet50(8)
  path = str(tmp_path_factory.mktemp("resnet50") / "resnet50.weights.h5")
  model.save_weights(path)
  arrays = {layer.name: [np.asarray(w) for w in layer.get_weights()]
            for layer in model.layers if layer.weights}
  return path, arrays


def _expect_loaded(backbone, arrays, skip=()):
  """Every conv/BN of `backbone` but `skip` holds the file's values (biases in BN means)."""
  checked = 0
  for layer in backbone.layers:
    if layer.name in skip or not layer.weights or "temporal" in layer.name:
      continue
    if layer.name.endswith("_conv"):
      np.testing.assert_array_equal(layer.kernel.numpy(), arrays[layer.name][0])
    elif layer.name.endswith("_bn"):
      gamma, beta, mean, variance = arrays[layer.name]
      bias = arrays[layer.name[:-len("_bn")] + "_conv"][1]
      for got, want in zip(layer.get_weights(), [gamma, beta, mean - bias, variance]):
        np.testing.assert_array_equal(got, want)
    else:
      raise AssertionError(f"unexpected layer with weights: {layer.name}")
    checked += 1
  return checked


def test_cut_backbones_load_resnet50_weights_by_name(resnet50_file):
  path, arrays = resnet50_file
  small = dict(block_counts=(1, 1, 1, 1))
  flow = resnet2d.resnet2d(input_channels=2, last_stage="res2", **small)
  message = weights.initialize_backbone(flow, "imagenet", path, video=False)
  assert path in message and "(10 layers)" in message  # conv1 + res2 block 1: 5 conv + 5 BN
  rgb_kernel = arrays["conv1_conv"][0].astype(np.float64)  # [7, 7, 3, 64]
  average = (rgb_kernel[:, :, 0] + rgb_kernel[:, :, 1] + rgb_kernel[:, :, 2]) / 3.0
  expected = np.stack([average, average], axis=2)  # [7, 7, 2, 64]
  np.testing.assert_allclose(flow.get_layer("conv1_conv").kernel.numpy(), expected,
                             rtol=1e-6, atol=1e-7)
  assert _expect_loaded(flow, arrays, skip={"conv1_conv"}) == 9

  trunk = resnet2d.resnet2d(first_stage="res3", **small)
  loaded = weights.load_2d_weights(trunk, arrays, "a dict")  # a dict of arrays works too
  assert sorted(loaded) == sorted(layer.name for layer in trunk.layers if layer.weights)
  assert not any(name.startswith(("conv1", "conv2")) for name in loaded)
  assert _expect_loaded(trunk, arrays) == len(loaded) == 3 * 8

  # The 3-D flow stem (inflation) follows the same rule; temporal kernels stay the identity.
  clips = resnet3d.resnet3d(input_channels=2, last_stage="res2", nonlocal_blocks=(0,) * 4,
                            **small)
  weights.load_2d_weights(clips, arrays)
  np.testing.assert_allclose(clips.get_layer("conv1_conv").kernel.numpy(), expected,
                             rtol=1e-6, atol=1e-7)
  assert _expect_loaded(clips, arrays, skip={"conv1_conv"}) == 9
  eye = clips.get_layer("conv2_block1_2_temporal_conv").kernel.numpy()[1, 0]
  np.testing.assert_array_equal(eye, np.eye(64, dtype="float32"))


def test_cross_modality_kernel_and_its_errors(resnet50_file, tmp_path):
  _, arrays = resnet50_file
  rng = np.random.default_rng(9)
  rgb = rng.normal(size=(3, 3, 3, 5)).astype("float32")
  for channels in (1, 2, 10):
    out = weights.cross_modality_kernel(rgb, channels)
    assert out.shape == (3, 3, channels, 5) and out.dtype == np.float32
    for c in range(channels):
      np.testing.assert_allclose(out[:, :, c], rgb.astype(np.float64).sum(axis=2) / 3,
                                 rtol=1e-6, atol=1e-7)
  with pytest.raises(weights.WeightsError, match=r"RGB conv1 kernel \[k, k, 3, C_out\]"):
    weights.cross_modality_kernel(rgb[:, :, :2], 2)

  # Flow-stem weights load as they are into a flow stem, but not into an RGB one.
  flow = resnet2d.resnet2d(input_channels=2, last_stage="stem")
  weights.load_2d_weights(flow, arrays)
  flow_weights = {"conv1_conv": [flow.get_layer("conv1_conv").kernel.numpy()],
                  "conv1_bn": flow.get_layer("conv1_bn").get_weights()}
  again = resnet2d.resnet2d(input_channels=2, last_stage="stem")
  weights.load_2d_weights(again, flow_weights)
  np.testing.assert_array_equal(again.get_layer("conv1_conv").kernel.numpy(),
                                flow_weights["conv1_conv"][0])
  rgb_stem = resnet2d.resnet2d(last_stage="stem")
  with pytest.raises(weights.WeightsError, match="2-channel frames.*3-channel ones"):
    weights.load_2d_weights(rgb_stem, flow_weights, "flow.weights.h5")
  narrow = resnet2d.resnet2d(input_channels=2, last_stage="stem", base_width=8)
  with pytest.raises(weights.WeightsError, match="base_width=64"):
    weights.load_2d_weights(narrow, arrays)


def test_bad_stage_ranges_name_the_valid_stages():
  valid = "stem, res2, res3, res4, res5"
  with pytest.raises(ValueError, match=f"first_stage='res6' is not a stage.*{valid}"):
    resnet2d.resnet2d(first_stage="res6", **TINY)
  with pytest.raises(ValueError, match=f"last_stage='conv5' is not a stage.*{valid}"):
    resnet3d.resnet3d(last_stage="conv5", **TINY)
  with pytest.raises(ValueError, match=f"(?s)'res4' comes after last_stage='res3'.*empty.*"
                                       f"{valid}"):
    resnet2d.resnet2d(first_stage="res4", last_stage="res3", **TINY)
  with pytest.raises(ValueError, match=f"'res5' comes after last_stage='stem'.*{valid}"):
    resnet3d.resnet3d(first_stage="res5", last_stage="stem", **TINY)
  with pytest.raises(ValueError, match="starts at res3, which takes the 16-channel res2 map"):
    resnet2d.resnet2d(first_stage="res3", input_channels=2, **TINY)
  with pytest.raises(ValueError, match="input_channels must be >= 1"):
    resnet2d.resnet2d(input_channels=0, **TINY)
  wrong = keras.Input(shape=(None, None, 32))
  with pytest.raises(ValueError, match=r"starting at res3 takes the res2 endpoint .*C=16.*32\)"):
    resnet3d.build_resnet(wrong, video=False, first_stage="res3", **TINY)
  with pytest.raises(ValueError, match=r"\[B, T, H, W, C\] with C=2"):
    resnet3d.build_resnet(keras.Input(shape=(None, None, None, 3)), video=True,
                          input_channels=2, **TINY)
  assert resnet3d.stage_range() == resnet3d.STAGES == tuple(valid.split(", "))
  assert resnet3d.stage_range("res3", "res4") == ("res3", "res4")
  assert [resnet3d.stage_output_channels(s, 64) for s in resnet3d.STAGES] == [
      64, 256, 512, 1024, 2048]
  assert resnet3d.stage_input_channels("res3", 64) == 256
  assert resnet3d.stage_input_channels("stem", 64, input_channels=2) == 2
