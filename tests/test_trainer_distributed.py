"""Distribution: two replicas equal one device on the same global batch; two workers on
localhost train together and stop together when one of them gets SIGTERM."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import keras
import numpy as np
import tensorflow as tf

from tfreid.training import trainer as trainer_lib

from trainer_fixtures import (REPO, PlainModel, cli,  # pylint: disable=unused-import
                              distributed_batches, first_cpu_strategy, fixed_batches,
                              fixture_tiny_data, tiny_config, two_cpu_strategy)


def _train_fixed(strategy, config, batches, num_classes, model_dir, monkeypatch):
  monkeypatch.setattr(trainer_lib, "build_model", lambda c, n: PlainModel(n))
  keras.utils.set_random_seed(0)
  trainer = trainer_lib.Trainer(config, str(model_dir), strategy=strategy,
                                num_classes=num_classes, steps_per_epoch=10)
  iterator = distributed_batches(strategy, config, batches)
  step = trainer._train_step  # pylint: disable=protected-access
  losses = [float(step(next(iterator))[0]) for _ in batches]
  return [v.numpy() for v in trainer.model.trainable_variables], losses


def test_two_replicas_equal_one_device_on_the_same_global_batch(tmp_path, monkeypatch):
  """Loss scaling by the global batch, the all-reduce, L2 decay and global-norm clipping are
  the same with 2 replicas as on 1 device: weights agree to 1e-5 after 3 Adam steps (XLA)."""
  config = tiny_config("", "losses.triplet.weight=0", "optimizer.clip_global_norm=0.05",
                       "optimizer.weight_decay=0.01", "optimizer.learning_rate=0.01",
                       "runtime.jit_compile=true")
  num_classes = 6
  batches = fixed_batches(3, config, num_classes)
  one, loss_one = _train_fixed(first_cpu_strategy(), config, batches, num_classes,
                               tmp_path / "one", monkeypatch)
  two, loss_two = _train_fixed(two_cpu_strategy(), config, batches, num_classes,
                               tmp_path / "two", monkeypatch)
  np.testing.assert_allclose(loss_one, loss_two, rtol=1e-5, atol=1e-6)
  moved = max(float(np.abs(a).max()) for a in one)
  assert moved > 0
  for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_workers_on_localhost_train_and_stop_together_on_sigterm(tiny_data, tmp_path):
  """MultiWorkerMirroredStrategy from TF_CONFIG: 2 replicas train; SIGTERM to worker 1 only
  stops both workers at the same step, with one checkpoint from the chief in model_dir."""
  ports = [_free_port(), _free_port()]
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  model_dir = tmp_path / "run"
  args = cli(model_dir, tiny_data, "trainer.epochs=1000", "runtime.strategy=multi_worker",
             "runtime.jit_compile=false")
  procs, logs = [], []
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                  "index": index}}))
    log = open(tmp_path / f"worker{index}.log", "w+")  # pylint: disable=consider-using-with
    logs.append(log)
    procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                  stderr=log, text=True))
  try:
    deadline = time.time() + 300
    while time.time() < deadline and procs[1].poll() is None:
      with open(tmp_path / "worker1.log") as f:
        if "step 3/" in f.read():
          break
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    for p in procs:
      p.wait(timeout=180)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for log in logs:
      log.close()
  texts = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
  for p, text in zip(procs, texts):
    assert p.returncode == 143, text[-3000:]  # stopped on a signal, checkpoint saved
  assert "2 replica(s)" in texts[0]
  stops = [re.findall(r"Stopped at step (\d+)", text) for text in texts]
  assert stops[0] and stops[0] == stops[1], (stops, texts[0][-2000:])
  step = int(stops[0][0])
  assert step >= 3
  assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{step}")
  # Only the chief's checkpoints remain: the other worker's scratch copy is removed.
  assert not list((model_dir / "worker_tmp").glob("*/ckpt-*"))
