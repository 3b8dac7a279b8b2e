"""The nonlocal_i3d and temporal_pooling experiments against the paper: one time scale in
training and test, the table row of every variant, fine-tuning that needs its checkpoint."""

import os

import numpy as np
import pytest
import tensorflow as tf

from experiments import nonlocal_i3d
from experiments import temporal_pooling
from tfreid import config as cfg
from tfreid.data import samplers

# The source tree (README.md): under `bazel test` this file is a symlink into it.
REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
EXPERIMENTS = (nonlocal_i3d, temporal_pooling)


def _validated(module, variant):
  c = module.get_config(variant)
  if variant in ("ilidsvid", "prid2011"):
    c.trainer.init_checkpoint = "runs/nl"
  return c.validate()


@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.__name__)
def test_training_and_test_clips_have_one_spacing_in_every_variant(module):
  """The frames of a training clip and of every full test clip are equally spaced, by the
  same step, for every variant (a 300-frame tracklet, several draws)."""
  for variant in module.VARIANTS:
    data = _validated(module, variant).data
    assert data.train_sampler == "consecutive" and data.test_sampler == "dense"
    steps = set()
    for seed in range(4):
      clip = samplers.sample_train_clip(data.train_sampler, 300, data.seq_len,
                                        data.sample_stride,
                                        tf.constant([seed, 3], tf.int64)).numpy()
      steps |= set(np.diff(clip).tolist())
    clips = samplers.test_clips(data.test_sampler, 300, data.test_clip_len,
                                data.test_sample_stride).numpy()
    for clip in clips:
      if len(set(clip)) == len(clip):
        steps |= set(np.diff(clip).tolist())
    assert steps <= {data.sample_stride}, (variant, steps)
    assert data.test_sample_stride == data.sample_stride, variant


def test_default_is_consecutive_and_stride8_is_the_other_reading():
  default, strided = nonlocal_i3d.get_config(""), nonlocal_i3d.get_config("stride8")
  assert (default.data.sample_stride, default.data.test_sample_stride) == (1, 1)
  assert (strided.data.sample_stride, strided.data.test_sample_stride) == (8, 8)


@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.__name__)
def test_every_variant_names_its_row_in_the_docstring_and_readme(module):
  assert set(module.PAPER_RESULTS) == set(module.VARIANTS)
  readme = open(os.path.join(REPO, "README.md")).read()
  name = module.__name__.rsplit(".", 1)[-1]
  for variant, row in module.PAPER_RESULTS.items():
    label = f"`{name}:{variant}`" if variant else f"`{name}`"
    lines = [l for l in readme.splitlines() if l.startswith(f"| {label} |")]
    assert len(lines) == 1, label
    if row is None:
      assert "no row" in lines[0], label
      continue
    where, numbers = row
    numbers = [f"{v:.1f}" for v in numbers.values()]
    assert where.split(" (")[0] in lines[0], (label, where)
    assert " / ".join(numbers) in lines[0], (label, numbers)
    assert " / ".join(numbers) in module.__doc__, (variant, numbers)
  # Table 2's Kinetics numbers go with the Kinetics-initialised variant only.
  for line in readme.splitlines():
    if "84.3 / " in line and line.startswith("| `nonlocal_i3d"):
      assert line.startswith("| `nonlocal_i3d:init_kinetics` |"), line


def test_imagenet_variants_are_labelled_with_table_3():
  for variant in ("", "init_imagenet", "stride8"):
    assert nonlocal_i3d.get_config(variant).model.backbone.init == "imagenet"
    assert nonlocal_i3d.PAPER_RESULTS[variant][0] == "table 3, ImageNet"
  assert nonlocal_i3d.get_config("init_kinetics").model.backbone.init == "kinetics"


def test_image_baseline_trains_on_single_frames_and_tests_on_clips():
  c = temporal_pooling.get_config("image").validate()
  assert (c.data.seq_len, c.data.test_clip_len) == (1, 8)


@pytest.mark.parametrize("variant", ["ilidsvid", "prid2011"])
def test_fine_tuning_without_its_checkpoint_stops_and_says_how(variant, tmp_path):
  with pytest.raises(cfg.ConfigError) as error:
    cfg.build_config(f"nonlocal_i3d:{variant}")
  message = str(error.value)
  assert f"nonlocal_i3d:{variant}" in message
  assert "--override=trainer.init_checkpoint=runs/nl" in message
  assert "--override=model.nonlocal_i3d.requires_init_checkpoint=false" in message
  # With the checkpoint, or explicitly without it, the config is valid.
  given = cfg.build_config(f"nonlocal_i3d:{variant}",
                           overrides=["trainer.init_checkpoint=runs/nl"])
  assert given.trainer.init_checkpoint == "runs/nl"
  without = cfg.build_config(f"nonlocal_i3d:{variant}", overrides=[
      "model.nonlocal_i3d.requires_init_checkpoint=false", "model.backbone.init=imagenet"])
  assert not without.trainer.init_checkpoint
  # The requirement survives config.yaml (resume, evaluation, the split driver).
  cfg.save_config(given, str(tmp_path / "config.yaml"))
  again = cfg.load_config(str(tmp_path / "config.yaml"))
  assert again.model.nonlocal_i3d.requires_init_checkpoint
  assert again.trainer.init_checkpoint == "runs/nl"


def test_mars_variants_do_not_need_a_checkpoint():
  for variant in ("", "resnet3d", "stride8", "synthetic"):
    assert not cfg.build_config(f"nonlocal_i3d:{variant}" if variant else "nonlocal_i3d") \
        .model.nonlocal_i3d.requires_init_checkpoint


def test_triplet_reduction_and_placement_switches_reach_the_config():
  c = cfg.build_config("nonlocal_i3d", overrides=[
      "losses.triplet.reduction=sum", "model.backbone.nonlocal_blocks.placement=after"])
  assert c.losses.triplet.reduction == "sum"
  assert c.model.backbone.nonlocal_blocks.placement == "after"
  with pytest.raises(cfg.ConfigError, match="placement"):
    cfg.build_config("nonlocal_i3d", overrides=["model.backbone.nonlocal_blocks.placement=x"])
