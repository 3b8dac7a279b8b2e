"""Experiment configs: overlay order, errors, config.yaml round trip, every variant, CLIs."""

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tfreid import config as cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _all_specs():
  for name in cfg.list_experiments():
    for variant in cfg.experiment_variants(name):
      yield f"{name}:{variant}" if variant else name


def test_experiments_are_found_by_module_name():
  assert {"nonlocal_i3d", "temporal_pooling"} <= set(cfg.list_experiments())


# Fine-tuning variants stop without the checkpoint they fine-tune
# (tests/test_experiments_nonlocal_i3d.py checks the message).
FINE_TUNING = ("nonlocal_i3d:ilidsvid", "nonlocal_i3d:prid2011")


@pytest.mark.parametrize("spec", list(_all_specs()))
def test_every_variant_builds_and_validates(spec):
  config = cfg.get_experiment(spec)
  if spec in FINE_TUNING:
    config.trainer.init_checkpoint = "runs/nl"
  config.validate()
  assert config.experiment == spec
  assert config.model.name in cfg.list_models()


def test_paper_configuration_of_nonlocal_i3d():
  c = cfg.get_experiment("nonlocal_i3d")
  # Section 4.2 of the paper.
  assert (c.data.seq_len, c.data.height, c.data.width) == (8, 256, 128)
  assert (c.data.num_identities, c.data.num_instances) == (32, 4)
  assert c.data.global_batch_size == 128
  assert c.data.augmentation.crop_enlarge == 0.125
  assert c.model.backbone.nonlocal_blocks.blocks_per_stage == [0, 2, 3, 0]
  assert c.model.backbone.block_counts == [3, 4, 6, 3]
  assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.weight_decay) == (
      "adam", 3e-4, 5e-4)
  assert (c.trainer.epochs, c.schedule.decay_start_epoch, c.schedule.decay_rate) == (
      300, 150, 0.001)
  assert cfg.get_experiment("nonlocal_i3d:resnet3d").model.backbone.nonlocal_blocks\
      .blocks_per_stage == [0, 0, 0, 0]


def test_overlays_apply_in_order(tmp_path):
  first = tmp_path / "a.yaml"
  first.write_text("trainer:\n  epochs: 7\n  log_every_steps: 3\ndata:\n  seq_len: 6\n")
  second = tmp_path / "b.yaml"
  second.write_text("trainer:\n  epochs: 9\n")
  config = cfg.build_config("nonlocal_i3d:synthetic", [str(first), str(second)],
                            ["trainer.log_every_steps=4", "data.augmentation.flip=false",
                             "model.backbone.block_counts=[1, 1, 1, 1]",
                             "optimizer.learning_rate=1"])
  assert config.trainer.epochs == 9             # second file wins over the first
  assert config.trainer.log_every_steps == 4    # override wins over the files
  assert config.data.seq_len == 6               # first file, untouched later
  assert config.data.augmentation.flip is False
  assert config.model.backbone.block_counts == [1, 1, 1, 1]
  assert config.optimizer.learning_rate == 1.0 and isinstance(
      config.optimizer.learning_rate, float)    # ints are accepted for floats


def test_unknown_key_names_it_lists_valid_keys_and_suggests():
  config = cfg.get_experiment("nonlocal_i3d")
  with pytest.raises(cfg.ConfigError) as err:
    cfg.apply_override(config, "trainer.epoch=3")
  message = str(err.value)
  assert "'trainer.epoch'" in message
  assert "epochs" in message and "steps_per_epoch" in message
  assert "Did you mean 'epochs'?" in message
  with pytest.raises(cfg.ConfigError, match="unknown config key 'modle'.*Did you mean 'model'"):
    cfg.apply_dict(config, {"modle": {}})


@pytest.mark.parametrize("override, pattern", [
    ("trainer.epochs=ten", r"trainer.epochs expects an int, got 'ten'"),
    ("trainer.epochs=2.5", r"trainer.epochs expects an int"),
    ("data.augmentation.flip=3", r"data.augmentation.flip expects true or false"),
    ("model.backbone.block_counts=3", r"model.backbone.block_counts expects a list"),
    ("optimizer.learning_rate=fast", r"optimizer.learning_rate expects a float"),
    ("trainer=3", r"trainer expects a mapping"),
    ("trainer.epochs", r"must look like key.path=value"),
])
def test_wrong_types_are_errors(override, pattern):
  with pytest.raises(cfg.ConfigError, match=pattern):
    cfg.apply_override(cfg.get_experiment("nonlocal_i3d"), override)


@pytest.mark.parametrize("override, pattern", [
    ("data.train_sampler=randm", r"data.train_sampler='randm'.*Did you mean 'random'"),
    ("optimizer.name=adamm", r"optimizer.name='adamm'.*Did you mean 'adam'"),
    ("optimizer.weight_decay_mode=decoupled", r"set optimizer.name=adamw"),
    ("model.backbone.init=kinetics", r"set model.backbone.weights_path"),
    ("model.backbone.nonlocal_blocks.blocks_per_stage=[0, 3, 3, 0]",
     r"a stage of 4 blocks takes at most 2"),
    ("data.num_instances=1", r"data.num_instances \(K\) must be >= 2"),
    ("model.name=nonlocal", r"model.name='nonlocal' is not a model.*Did you mean"),
    ("runtime.mixed_precision=float16", r"runtime.mixed_precision.*mixed_float16"),
])
def test_invalid_values_and_combinations(override, pattern):
  with pytest.raises(cfg.ConfigError, match=pattern):
    cfg.build_config("nonlocal_i3d", overrides=[override])


def test_unknown_experiment_and_variant():
  with pytest.raises(cfg.ConfigError, match=r"unknown experiment 'nonlocal'.*nonlocal_i3d.*"
                     r"temporal_pooling.*Did you mean 'nonlocal_i3d'"):
    cfg.get_experiment("nonlocal")
  with pytest.raises(cfg.ConfigError, match=r"unknown variant 'synth'.*synthetic.*"
                     r"Did you mean 'synthetic'"):
    cfg.get_experiment("nonlocal_i3d:synth")


def test_config_yaml_round_trip(tmp_path):
  config = cfg.build_config("nonlocal_i3d:synthetic",
                            overrides=["trainer.epochs=3", "data.augmentation.translate=0.05"],
                            data_dir="/data/x")
  path = tmp_path / "config.yaml"
  cfg.save_config(config, str(path))
  assert yaml.safe_load(path.read_text())["experiment"] == "nonlocal_i3d:synthetic"
  assert cfg.load_config(str(path)) == config
  # Passing the file back as an overlay of its experiment reproduces the run.
  again = cfg.build_config("nonlocal_i3d:synthetic", [str(path)])
  assert again == config


def _run_cli(module, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=120, check=False)


def test_train_cli_unknown_experiment_exits_nonzero_with_the_list(tmp_path):
  proc = _run_cli("tfreid.train", "--experiment=nonlocal", f"--model_dir={tmp_path}")
  assert proc.returncode != 0
  assert "unknown experiment 'nonlocal'" in proc.stderr
  assert "nonlocal_i3d" in proc.stderr and "temporal_pooling" in proc.stderr


def test_train_cli_data_dir_without_manifest_says_how_to_convert(tmp_path):
  proc = _run_cli("tfreid.train", "--experiment=nonlocal_i3d:synthetic",
                  f"--model_dir={tmp_path / 'run'}", f"--data_dir={tmp_path}")
  assert proc.returncode == 2
  assert "has no manifest.json" in proc.stderr
  assert "python -m data_pipelines.convert" in proc.stderr
  assert "python -m data_pipelines.synthetic" in proc.stderr
  assert "no download" in proc.stderr


def test_train_cli_bad_override_names_the_key(tmp_path):
  proc = _run_cli("tfreid.train", "--experiment=nonlocal_i3d:synthetic",
                  f"--model_dir={tmp_path}", "--override=trainer.epoch=2")
  assert proc.returncode == 2
  assert "unknown config key 'trainer.epoch'" in proc.stderr


def test_evaluate_cli_without_a_run_is_a_clear_error(tmp_path):
  proc = _run_cli("tfreid.evaluate", f"--model_dir={tmp_path}")
  assert proc.returncode == 2
  assert "is not a training directory" in proc.stderr


def test_a_config_yaml_written_before_the_method_contract_still_loads():
  """A run directory's config.yaml of the earlier layout (closed loss list with weight-0
  OIM and pair BCE, data.use_flow/use_keypoints, eval.distance euclidean) loads: the loss
  entries become named terms of their type, the retired stream keys are skipped."""
  path = os.path.join(REPO, "tests", "testdata", "config_before_method_contract.yaml")
  with open(path) as f:
    old = yaml.safe_load(f)
  assert "use_flow" in old["data"] and old["losses"]["oim"]["weight"] == 0.0
  config = cfg.load_config(path)
  assert [name for name, _ in config.losses.active()] == ["cross_entropy", "triplet"]
  assert config.losses.oim.type == "oim" and config.losses.oim.weight == 0.0
  assert config.losses.triplet.margin == old["losses"]["triplet"]["margin"]
  assert config.eval.distance == "euclidean"
  assert "use_flow" not in cfg.to_dict(config)["data"]
  with pytest.raises(cfg.ConfigError, match="data.use_flow' no longer exists: the input "
                                            "streams are declared by the model"):
    cfg.apply_override(config, "data.use_flow=true")


def test_fixed_length_query_and_gallery_sequences():
  config = cfg.build_config("stal", overrides=["eval.query_seq_len=16",
                                               "eval.gallery_seq_len=4"])
  assert config.eval.partition_seq_len("query") == 16
  assert config.eval.partition_seq_len("gallery") == 4
  assert config.eval.partition_seq_len("train") == 0
  with pytest.raises(cfg.ConfigError, match=r"eval.gallery_seq_len must be >= 0 \(0: every "
                                            r"frame of the tracklet\), got -1"):
    cfg.build_config("stal", overrides=["eval.gallery_seq_len=-1"])


def test_test_time_augmentation_conditions():
  """eval.tta_*: siamese_convgru's section V-B reading (2 mirrors x 8 diagonal shifts over
  +-5%, tracklets under 128 frames), plain clips elsewhere, and the errors."""
  paper = cfg.build_config("siamese_convgru")
  conditions = paper.eval.tta_conditions()
  assert len(conditions) == 16 and paper.eval.tta_max_length == 128
  shifts = sorted({shift for _, shift in conditions})
  np.testing.assert_allclose(shifts, np.linspace(-0.05, 0.05, 8), atol=1e-12)
  assert sorted(conditions) == sorted((f, s) for f in (False, True) for s in shifts)
  for name in ("siamese_convgru:synthetic", "temporal_pooling", "stal"):
    plain = cfg.build_config(name).eval
    assert plain.tta_conditions() == [(False, 0.0)] and not plain.tta_on
  assert paper.eval.tta_on
  flips = cfg.build_config("temporal_pooling", overrides=["eval.tta_flip=true"])
  assert flips.eval.tta_conditions() == [(False, 0.0), (True, 0.0)]
  for overrides, pattern in [
      (["eval.tta_shifts=8"], r"eval.tta_shifts=8 with eval.tta_translate=0.0: translated "
                              r"test conditions need both"),
      (["eval.tta_translate=0.05"], r"need both"),
      (["eval.tta_shifts=3", "eval.tta_translate=0.6"], r"fraction of the frame in \[0, 0.5\)"),
      (["eval.tta_max_length=-1"], r"must be >= 0")]:
    with pytest.raises(cfg.ConfigError, match=pattern):
      cfg.build_config("temporal_pooling", overrides=overrides)


def test_evaluation_overrides_take_the_methods_test_time_switches_only():
  from tfreid import evaluate  # pylint: disable=import-outside-toplevel
  config = cfg.build_config("stal")
  evaluate.apply_overrides(config, ["model.stal.test_distance=global",
                                    "model.stal.global_distance_weight=0.7",
                                    "eval.query_seq_len=8"])
  assert config.model.stal.test_distance == "global"
  assert config.model.stal.global_distance_weight == 0.7
  assert config.eval.query_seq_len == 8
  with pytest.raises(ValueError, match=r"--override=model.stal.pool_size=3: evaluation takes "
                                       r"the model of its checkpoint; .*test-time switches "
                                       r"model.stal.temporal_attention"):
    evaluate.apply_overrides(config, ["model.stal.pool_size=3"])
  plain = cfg.build_config("temporal_pooling")
  with pytest.raises(ValueError, match=r"only data.\*, eval.\*, export.\* and runtime.\* keys "
                                       r"can change here"):
    evaluate.apply_overrides(plain, ["model.head.embedding_dim=8"])
