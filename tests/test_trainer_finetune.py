"""What initialises a run's model: its own newest checkpoint, else `trainer.init_checkpoint`
(fine-tuning: every variable but a classifier of another shape), else the pretrained backbone
weights of `model.backbone.init` (read only when there is no checkpoint)."""

import os

import numpy as np
import pytest

from tfreid.backbones.weights import WeightsError
from tfreid.models import build_model
from tfreid.training import trainer as trainer_lib

from trainer_fixtures import fixture_tiny_data, tiny_config  # pylint: disable=unused-import

NEW_CLASSES = 5


def _compared(model):
  """(path, variable) of the model's variables that a checkpoint initialises (dropout RNG
  state excluded)."""
  return [(v.path, v) for v in model.variables if "seed_generator" not in v.path]


def _is_classifier(path):
  return path.startswith("head/classifier/")


def _new_trainer(config, model_dir):
  """A Trainer for a dataset of NEW_CLASSES identities (the step is never run here)."""
  return trainer_lib.Trainer(config, str(model_dir), num_classes=NEW_CLASSES,
                             steps_per_epoch=1)


def _perturb_and_save(trainer, step):
  """Moves every trainable variable and saves checkpoint `step`; returns the new values."""
  rng = np.random.default_rng(step)
  for v in trainer.model.trainable_variables:
    v.assign(v.numpy() + rng.normal(0, 0.1, v.shape).astype(np.float32))
  trainer.global_step.assign(step)
  trainer.keeper.save(step)
  return {path: v.numpy() for path, v in _compared(trainer.model)}


@pytest.fixture(scope="module", name="source_run")
def fixture_source_run(tiny_data, tmp_path_factory):
  """A run trained for 2 steps on the 8 identities of tiny_data: (model_dir, values)."""
  model_dir = tmp_path_factory.mktemp("source")
  config = tiny_config(tiny_data, "trainer.epochs=1", "runtime.jit_compile=false")
  source = trainer_lib.Trainer(config, str(model_dir))
  source.train()
  assert source.num_classes == 8
  assert source.keeper.latest.endswith("ckpt-2")
  return model_dir, {path: v.numpy() for path, v in _compared(source.model)}


def test_init_checkpoint_restores_everything_but_a_classifier_of_another_size(
    source_run, tiny_data, tmp_path):
  source_dir, source = source_run
  fresh = _new_trainer(tiny_config(tiny_data), tmp_path / "fresh")
  initial = {path: v.numpy() for path, v in _compared(fresh.model)}
  tuned = _new_trainer(tiny_config(tiny_data, f"trainer.init_checkpoint={source_dir}"),
                       tmp_path / "tuned")
  assert tuned.initialized_from.endswith("ckpt-2") and tuned.resumed_from is None
  assert int(tuned.global_step.numpy()) == 0
  assert int(tuned.optimizer.iterations.numpy()) == 0
  values = {path: v.numpy() for path, v in _compared(tuned.model)}
  assert values.keys() == source.keys() == initial.keys()
  classifier = [p for p in values if _is_classifier(p)]
  assert sorted(classifier) == ["head/classifier/bias", "head/classifier/kernel"]
  for path in classifier:
    assert source[path].shape[-1] == 8 and values[path].shape[-1] == NEW_CLASSES
    np.testing.assert_array_equal(values[path], initial[path], err_msg=path)
  changed_by_training = 0
  for path in values:
    if not _is_classifier(path):
      np.testing.assert_array_equal(values[path], source[path], err_msg=path)
      changed_by_training += not np.array_equal(source[path], initial[path])
  # The source run moved the weights away from their initial values (and its BatchNorm
  # statistics), so the equality above is not the shared seed's doing.
  assert changed_by_training > len(values) // 2


def test_init_checkpoint_may_name_a_checkpoint_file_and_bad_paths_are_errors(
    source_run, tiny_data, tmp_path):
  source_dir, _ = source_run
  tuned = _new_trainer(
      tiny_config(tiny_data, f"trainer.init_checkpoint={source_dir / 'ckpt-2'}"),
      tmp_path / "tuned")
  assert tuned.initialized_from == str(source_dir / "ckpt-2")
  with pytest.raises(FileNotFoundError, match=r"trainer.init_checkpoint=.*ckpt-7.*DIR/ckpt"):
    _new_trainer(tiny_config(tiny_data, f"trainer.init_checkpoint={source_dir / 'ckpt-7'}"),
                 tmp_path / "bad")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="directory without checkpoints"):
    _new_trainer(tiny_config(tiny_data, f"trainer.init_checkpoint={empty}"), tmp_path / "bad2")


def test_own_checkpoint_wins_over_init_checkpoint(source_run, tiny_data, tmp_path):
  source_dir, source = source_run
  config = tiny_config(tiny_data, f"trainer.init_checkpoint={source_dir}")
  first = _new_trainer(config, tmp_path / "run")
  saved = _perturb_and_save(first, step=3)
  again = _new_trainer(config, tmp_path / "run")
  assert again.resumed_from.endswith("ckpt-3") and again.initialized_from is None
  assert int(again.global_step.numpy()) == 3
  for path, v in _compared(again.model):
    np.testing.assert_array_equal(v.numpy(), saved[path], err_msg=path)
    if not _is_classifier(path) and v.trainable:
      assert not np.array_equal(v.numpy(), source[path]), path


def _write_backbone_weights(config, path):
  """Saves the backbone of a tiny model with random weights as a 3-D weights file (what
  model.backbone.init=kinetics reads); returns {backbone variable path: value}."""
  model = build_model(config, NEW_CLASSES)
  rng = np.random.default_rng(7)
  for v in model.backbone.variables:
    v.assign(rng.normal(0, 0.5, v.shape).astype(np.float32))
  model.backbone.save_weights(path)
  return [v.numpy() for v in model.backbone.variables]


def test_pretrained_backbone_weights_are_read_only_without_a_checkpoint(tiny_data, tmp_path):
  path = str(tmp_path / "backbone.weights.h5")
  init = ["model.backbone.init=kinetics", f"model.backbone.weights_path={path}"]
  pretrained = _write_backbone_weights(tiny_config(tiny_data), path)

  # No checkpoint: the backbone comes from the weights file.
  first = _new_trainer(tiny_config(tiny_data, *init), tmp_path / "run")
  assert first.resumed_from is None
  for v, expected in zip(first.model.backbone.variables, pretrained):
    np.testing.assert_array_equal(v.numpy(), expected, err_msg=v.path)
  saved = _perturb_and_save(first, step=1)

  # With the weights file gone, a run without a checkpoint fails, which shows it reads it ...
  os.remove(path)
  with pytest.raises(WeightsError, match="does not exist"):
    _new_trainer(tiny_config(tiny_data, *init), tmp_path / "other")
  # ... while resuming does not read it: the checkpoint's values are restored.
  resumed = _new_trainer(tiny_config(tiny_data, *init), tmp_path / "run")
  assert resumed.resumed_from.endswith("ckpt-1")
  for p, v in _compared(resumed.model):
    np.testing.assert_array_equal(v.numpy(), saved[p], err_msg=p)
  # Fine-tuning from a checkpoint does not read it either.
  tuned = _new_trainer(
      tiny_config(tiny_data, *init, f"trainer.init_checkpoint={tmp_path / 'run'}"),
      tmp_path / "tuned")
  assert tuned.initialized_from.endswith("ckpt-1")
  for p, v in _compared(tuned.model):
    np.testing.assert_array_equal(v.numpy(), saved[p], err_msg=p)
