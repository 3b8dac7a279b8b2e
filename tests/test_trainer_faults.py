"""Faults: a NaN loss stops training naming the step and the term; `kill -9` then the same
command resumes; SIGTERM saves a checkpoint and exits 143."""

import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from tfreid.training import trainer as trainer_lib

from trainer_fixtures import (REPO, cli, first_cpu_strategy,  # pylint: disable=unused-import
                              fixture_tiny_data, tiny_config)


def test_nan_loss_stops_with_the_step_and_term_and_keeps_the_last_checkpoint(
    tiny_data, tmp_path, monkeypatch):
  real_build = trainer_lib.build_losses

  class ExplodingAt3:
    """A loss term that is 0 for two steps, then NaN."""
    name, weight = "exploding", 1.0

    def __init__(self):
      self.calls = tf.Variable(0, trainable=False)

    def __call__(self, outputs, batch):
      return tf.where(self.calls >= 2, np.float32(np.nan), 0.0)

    def update(self, outputs, batch):
      self.calls.assign_add(1)

  def build(config, context):
    return real_build(config, context) + [ExplodingAt3()]

  monkeypatch.setattr(trainer_lib, "build_losses", build)
  config = tiny_config(tiny_data, "trainer.epochs=3", "trainer.checkpoint_every_steps=1",
                       "runtime.jit_compile=false")
  trainer = trainer_lib.Trainer(config, str(tmp_path), strategy=first_cpu_strategy())
  with pytest.raises(trainer_lib.TrainingError,
                     match=r"loss term 'exploding' is nan at step 3.*ckpt-2"):
    trainer.train()
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def test_kill_9_then_the_same_command_resumes(tiny_data, tmp_path):
  """`kill -9` mid-run loses at most one checkpoint interval; the rerun finishes the job."""
  model_dir = tmp_path / "run"
  # 100 steps in 2 epochs of 50 (the tiny dataset's own epoch is 2 batches: the trainer's
  # epoch length decides), a checkpoint every 20.
  args = cli(model_dir, tiny_data, "trainer.steps_per_epoch=50", "trainer.epochs=2",
             "trainer.checkpoint_every_steps=20", "trainer.log_every_steps=10",
             "runtime.jit_compile=false")
  log = tmp_path / "first_run.log"
  with open(log, "w", encoding="utf-8") as stderr:
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=stderr)
    # Kill once the `checkpoint` state file names a checkpoint (it is written after the
    # checkpoint's own files, so waiting for ckpt-20.index alone could kill in between).
    deadline = time.time() + 480
    while (time.time() < deadline and proc.poll() is None
           and tf.train.latest_checkpoint(str(model_dir)) is None):
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  latest = tf.train.latest_checkpoint(str(model_dir))
  assert latest is not None, ("no checkpoint was written before the kill:\n"
                              + log.read_text(encoding="utf-8")[-2000:])
  killed_at = int(latest.rsplit("-", 1)[1])
  assert 20 <= killed_at < 100, "the run finished before it was killed"
  rerun = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=600, check=False)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert f"from step {killed_at}" in rerun.stderr
  assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-100")


def test_sigterm_saves_a_checkpoint_and_exits_143(tiny_data, tmp_path):
  """A stop on a signal saves its checkpoint and exits 143 (128 + SIGTERM), not 0: a job
  scheduler must not take the run for finished."""
  model_dir = tmp_path / "run"
  args = cli(model_dir, tiny_data, "trainer.epochs=1000", "runtime.jit_compile=false")
  proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  seen = ""
  while time.time() < deadline:
    line = proc.stderr.readline()
    seen += line
    if "step 3/" in line or not line:
      break
  proc.send_signal(signal.SIGTERM)
  _, rest = proc.communicate(timeout=120)
  assert proc.returncode == 143, (seen + rest)[-2000:]
  stopped = re.findall(r"Stopped at step (\d+) on signal 15; checkpoint saved", rest)
  assert len(stopped) == 1, (seen + rest)[-2000:]
  step = int(stopped[0])
  assert step >= 3
  assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{step}")
