"""Training step time and clips/s, with and without XLA, for an experiment's model.

    python benchmarks/train_step.py --experiment=nonlocal_i3d:synthetic [--steps=10]
        [--override=data.height=128 ...] [--batch=N]

Feeds random uint8 clips of the experiment's shape (no input pipeline: this measures the
model, losses and optimizer), measures both compile modes side by side in one run (warm-up
steps excluded), prints them and, as the last line, one JSON object.
"""

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position

flags.DEFINE_string("experiment", "nonlocal_i3d:synthetic", "NAME[:VARIANT]")
flags.DEFINE_multi_string("override", [], "key.path=value overrides")
flags.DEFINE_integer("steps", 10, "Timed steps per mode.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per mode (compilation).")
flags.DEFINE_integer("batch", 0, "Global batch (P*K) override; 0 keeps the experiment's.")
flags.DEFINE_integer("num_classes", 625, "Identities of the classifier.")
FLAGS = flags.FLAGS


def measure(config, jit: bool) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfreid.training import trainer as trainer_lib  # pylint: disable=import-outside-toplevel

  config.runtime.jit_compile = jit
  d = config.data
  batch = d.global_batch_size
  trainer = trainer_lib.Trainer(config, tempfile.mkdtemp(), num_classes=FLAGS.num_classes,
                                steps_per_epoch=1000)
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(d.num_identities), d.num_instances).astype(np.int32)
  element = {
      "clips": rng.integers(0, 256, (batch, d.seq_len, d.height, d.width, 3), np.uint8),
      "labels": labels, "pids": labels, "camids": np.zeros(batch, np.int32)}
  dataset = tf.data.Dataset.from_tensors(element).repeat()
  iterator = iter(trainer.strategy.experimental_distribute_dataset(
      dataset.unbatch().batch(batch)))
  for _ in range(FLAGS.warmup):
    float(trainer._train_step(next(iterator))[0])  # pylint: disable=protected-access
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    float(trainer._train_step(next(iterator))[0])  # pylint: disable=protected-access
  elapsed = (time.perf_counter() - start) / FLAGS.steps
  params = int(sum(np.prod(v.shape) for v in trainer.model.trainable_variables))
  return {"step_ms": 1000 * elapsed, "clips_per_s": batch / elapsed, "params": params}


def main(argv):
  del argv
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  overrides = list(FLAGS.override)
  config = cfg.build_config(FLAGS.experiment, overrides=overrides)
  if FLAGS.batch:
    k = config.data.num_instances
    config.data.num_identities = max(1, FLAGS.batch // k)
  config.model.backbone.init = "none"
  d = config.data
  results = {"experiment": FLAGS.experiment, "clip_shape": [d.seq_len, d.height, d.width, 3],
             "global_batch": d.global_batch_size}
  for jit in (True, False):
    figures = measure(config, jit)
    key = "xla" if jit else "no_xla"
    results[key] = figures
    print(f"{key:7s} step {figures['step_ms']:.1f} ms  {figures['clips_per_s']:.1f} clips/s  "
          f"({figures['params']:,} trainable parameters)")
  results["xla_speedup"] = results["no_xla"]["step_ms"] / results["xla"]["step_ms"]
  print(f"XLA speed-up: {results['xla_speedup']:.2f}x")
  print(json.dumps(results))


if __name__ == "__main__":
  app.run(main)
