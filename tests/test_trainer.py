"""The training loop on one device: resume equivalence and the profiler trace.

Two replicas and two workers: test_trainer_distributed.py. NaN, kill -9 and SIGTERM:
test_trainer_faults.py. Fine-tuning: test_trainer_finetune.py. TensorBoard:
test_trainer_summaries.py. Mixed precision and clipping: test_trainer_precision.py.
"""

import glob
import os

import numpy as np
import pytest

from tfreid.training import trainer as trainer_lib

from trainer_fixtures import fixture_tiny_data, tiny_config  # pylint: disable=unused-import


def _weights(trainer):
  return [v.numpy() for v in trainer.model.variables]


def test_resume_gives_the_same_weights_as_a_straight_run(tiny_data, tmp_path):
  """4 steps straight equal 2 steps, a new Trainer resuming from ckpt-2, and 2 more steps:
  model variables (BatchNorm statistics and dropout RNG state included) within 1e-5."""
  config = tiny_config(tiny_data, "trainer.epochs=2", "runtime.jit_compile=false")
  straight = trainer_lib.Trainer(config, str(tmp_path / "straight"))
  total = straight.total_steps
  assert total == 4  # 8 identities / P=4 -> 2 steps per epoch, 2 epochs
  straight.train()
  half = tiny_config(tiny_data, "trainer.epochs=1", "runtime.jit_compile=false")
  first = trainer_lib.Trainer(half, str(tmp_path / "resumed"))
  first.train()
  assert first.keeper.latest.endswith("ckpt-2")
  resumed = trainer_lib.Trainer(config, str(tmp_path / "resumed"))
  assert resumed.resumed_from.endswith("ckpt-2")
  assert int(resumed.global_step.numpy()) == 2
  assert int(resumed.optimizer.iterations.numpy()) == 2
  resumed.train()
  assert int(resumed.global_step.numpy()) == total
  for a, b in zip(_weights(straight), _weights(resumed)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_profiler_trace_is_written(tiny_data, tmp_path):
  config = tiny_config(tiny_data, "trainer.epochs=1", "runtime.jit_compile=false")
  trainer = trainer_lib.Trainer(config, str(tmp_path), profile_steps=(0, 2))
  trainer.train()
  traces = glob.glob(str(tmp_path / "train" / "plugins" / "profile" / "*" / "*.xplane.pb"))
  assert traces and os.path.getsize(traces[0]) > 0


def test_profile_steps_flag_is_parsed():
  assert trainer_lib.parse_profile_steps("") is None
  assert trainer_lib.parse_profile_steps("20,25") == (20, 25)


@pytest.mark.parametrize("bad", ["20", "a,b", "25,20", "1,2,3"])
def test_bad_profile_steps_flag_is_an_error_naming_it(bad):
  with pytest.raises(ValueError, match=f"--profile_steps='{bad}'"):
    trainer_lib.parse_profile_steps(bad)
