"""Training step time and clips/s, with and without XLA, for an experiment's model.

Synthetic size (nonlocal_i3d:synthetic: 4 frames of 64x32, P=8 x K=4 = 32 clips, narrow
network; about a minute and a half on a 2-core CPU):

    python benchmarks/train_step.py --experiment=nonlocal_i3d:synthetic

Full size (the paper's ResNet3D-50 with 5 non-local blocks, 8 frames of 256x128) at a small
global batch; on a CPU a step takes tens of seconds, so time few steps:

    python benchmarks/train_step.py --experiment=nonlocal_i3d --batch=4 --steps=3 --warmup=1

Any size in between through overrides, e.g. `--override=data.seq_len=4
--override=data.height=128 --override=data.width=64`; mixed precision with
`--override=runtime.mixed_precision=mixed_bfloat16`; one compile mode with `--modes=xla`.

Feeds a random batch of every stream the model reads (`tfreid.data.streams.random_inputs`:
frames, and flow or keypoints when the model declares them), of the experiment's shape (no
input pipeline: this measures the
model, losses and optimizer in the trainer's own step, on the trainer's strategy: every local
GPU, else one CPU), times `--steps` steps per mode after `--warmup` untimed ones (tracing and
compilation), prints one line per mode and, as the last line, one JSON object.
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
flags.DEFINE_integer("warmup", 2, "Untimed steps per mode (tracing, compilation).")
flags.DEFINE_integer("batch", 0, "Global batch: P = max(1, batch // K) identities of the "
                     "experiment's K clips each; 0 keeps the experiment's P.")
flags.DEFINE_integer("num_classes", 625, "Identities of the classifier (MARS: 625).")
flags.DEFINE_list("modes", ["xla", "no_xla"], "Compile modes to time: xla, no_xla.")
FLAGS = flags.FLAGS


def measure(config, jit: bool) -> dict:
  """Times the trainer's step with `runtime.jit_compile=jit`."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfreid.data import streams as streams_lib  # pylint: disable=import-outside-toplevel
  from tfreid.training import trainer as trainer_lib  # pylint: disable=import-outside-toplevel

  config.runtime.jit_compile = jit
  d = config.data
  batch = d.global_batch_size
  with tempfile.TemporaryDirectory() as model_dir:
    trainer = trainer_lib.Trainer(config, model_dir, num_classes=FLAGS.num_classes,
                                  steps_per_epoch=1000)
    labels = np.repeat(np.arange(d.num_identities), d.num_instances).astype(np.int32)
    element = streams_lib.random_inputs(trainer.streams, d, batch)
    # Two cameras alternating, so cross-camera pair samplers find pairs.
    element.update(labels=labels, pids=labels, camids=np.arange(batch, dtype=np.int32) % 2)
    dataset = tf.data.Dataset.from_tensors(element).repeat()
    iterator = iter(trainer.strategy.experimental_distribute_dataset(
        dataset.unbatch().batch(batch)))
    step = trainer._train_step  # pylint: disable=protected-access
    for _ in range(FLAGS.warmup):
      float(step(next(iterator))[0])
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      loss = float(step(next(iterator))[0])
    elapsed = (time.perf_counter() - start) / FLAGS.steps
    params = int(sum(np.prod(v.shape) for v in trainer.model.trainable_variables))
    replicas = trainer.num_replicas
  return {"step_ms": 1000 * elapsed, "clips_per_s": batch / elapsed, "params": params,
          "replicas": replicas, "last_loss": loss}


def main(argv):
  del argv
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  unknown = set(FLAGS.modes) - {"xla", "no_xla"}
  if unknown or not FLAGS.modes:
    raise app.UsageError(f"--modes={','.join(FLAGS.modes)}: expected xla, no_xla or both.")
  if FLAGS.steps < 1 or FLAGS.warmup < 0:
    raise app.UsageError("--steps must be >= 1 and --warmup >= 0.")
  config = cfg.build_config(FLAGS.experiment, overrides=list(FLAGS.override))
  if FLAGS.batch:
    config.data.num_identities = max(1, FLAGS.batch // config.data.num_instances)
  # No pretrained weights are needed to time a step.
  config.model.backbone.init = "none"
  d = config.data
  results = {"experiment": FLAGS.experiment, "clip_shape": [d.seq_len, d.height, d.width, 3],
             "global_batch": d.global_batch_size,
             "mixed_precision": config.runtime.mixed_precision}
  print(f"{FLAGS.experiment}: clips {d.seq_len}x{d.height}x{d.width}, global batch "
        f"{d.global_batch_size} (P={d.num_identities} x K={d.num_instances}), "
        f"{config.runtime.mixed_precision}, {FLAGS.steps} timed steps after {FLAGS.warmup}")
  for key in ("xla", "no_xla"):
    if key not in FLAGS.modes:
      continue
    figures = measure(config, key == "xla")
    results[key] = figures
    print(f"{key:7s} step {figures['step_ms']:.1f} ms  {figures['clips_per_s']:.3g} clips/s  "
          f"({figures['params']:,} trainable parameters, {figures['replicas']} replica(s))",
          flush=True)
  if "xla" in results and "no_xla" in results:
    results["xla_speedup"] = results["no_xla"]["step_ms"] / results["xla"]["step_ms"]
    print(f"XLA speed-up: {results['xla_speedup']:.2f}x")
  print(json.dumps(results))


if __name__ == "__main__":
  app.run(main)
