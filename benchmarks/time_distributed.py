"""A 2-D ResNet applied to every frame: keras.layers.TimeDistributed vs folding time into the batch.

    python benchmarks/time_distributed.py                  # ResNet-50 layout, base_width 16
    python benchmarks/time_distributed.py --rounds=3 --steps=3   # quick run

The network is :func:`tfreid.backbones.resnet2d.resnet2d` (block counts 3-4-6-3, narrow
widths) returning its res5 map; the clips are [B, T, H, W, 3] float32 (default 8 clips of
8 x 64 x 32). One step is forward + backward in training mode (BatchNorm on batch statistics,
moving statistics updated): the loss is the mean square of the res5 maps and the gradients
of every trainable variable are computed (no optimizer). The ways of applying the network per
frame, all sharing one set of weights:

* ``fold``: :func:`tfreid.backbones.resnet3d.per_frame`, one reshape [B*T, H, W, C] in and
  one out;
* ``time_distributed``: ``keras.layers.TimeDistributed(network)`` on clips of static T (the
  shape a training step sees): Keras 3.15 calls the network once per time step on
  [B, H, W, C] slices of the time-major clips and stacks the results;
* ``time_distributed_dynamic_t``: the same layer traced with T unknown, where Keras maps the
  network over time with ``vectorized_map``.

Each is run as a ``tf.function`` without XLA and with ``jit_compile=True``. The variants are
timed side by side, after an untimed warm-up (tracing, compilation): a round runs one step of
every variant and mode in turn, ``--steps`` times, the order reversed every other time, and
adds up each one's wall and CPU (process) time. A variant's figure is its median over rounds;
its ratio to fold is the median over rounds of the round's ratio (TimeDistributed / fold:
above 1 means TimeDistributed is slower), so load from other jobs, which changes from round to
round, affects both sides of a ratio alike. Before timing, the inference outputs of
TimeDistributed and fold are checked to agree, and their training-mode outputs compared (they
differ: see :func:`relative_difference`). Prints one line per variant and mode and, as the
last line, one JSON object. The variant that cannot be compiled (XLA needs a static T) is
reported with its error instead of a time.

What it printed on this project's 2-core CPU (shared with other jobs; two runs of 9 rounds x
5 steps, base_width 16, 8 clips of 8 x 64 x 32), TimeDistributed / fold:

| mode   | fold ms/step | TimeDistributed (static T) | TimeDistributed (T unknown) |
| ------ | ------------ | -------------------------- | --------------------------- |
| no XLA | 164-184      | 2.03x, 2.21x (slower)      | 1.07x, 1.08x                |
| XLA    | 450-585      | 0.93x, 0.95x (faster)      | does not compile            |
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=wrong-import-position
import keras  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position
from absl import app  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position

from tfreid.backbones import resnet2d, resnet3d  # pylint: disable=wrong-import-position

flags.DEFINE_integer("batch", 8, "Clips per step.")
flags.DEFINE_list("clip", ["8", "64", "32"], "T,H,W of a clip.")
flags.DEFINE_integer("base_width", 16, "Bottleneck width of res2 (ResNet-50: 64).")
flags.DEFINE_list("block_counts", ["3", "4", "6", "3"], "Residual blocks of res2..res5.")
flags.DEFINE_integer("rounds", 7, "Timed rounds; each times every variant.")
flags.DEFINE_integer("steps", 5, "Steps per variant per round.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per variant and mode (at least 1).")
flags.DEFINE_list("modes", ["no_xla", "xla"], "Compile modes: no_xla, xla.")
flags.DEFINE_list("variants", ["fold", "time_distributed", "time_distributed_dynamic_t"],
                  "Per-frame wrappers to time.")
FLAGS = flags.FLAGS

VARIANTS = ("fold", "time_distributed", "time_distributed_dynamic_t")


def make_steps(network, clip_shape, jit: bool) -> dict:
  """{variant: step function (clips) -> (loss, gradient norm)} sharing `network`."""
  wrapped = keras.layers.TimeDistributed(network, name="time_distributed")
  apply = {
      "fold": lambda clips: resnet3d.per_frame(lambda f: network(f, training=True), clips),
      "time_distributed": lambda clips: wrapped(clips, training=True),
      "time_distributed_dynamic_t": lambda clips: wrapped(clips, training=True),
  }

  def make(variant):
    def step(clips):
      with tf.GradientTape() as tape:
        maps = apply[variant](clips)
        loss = tf.reduce_mean(tf.square(maps))
      grads = tape.gradient(loss, network.trainable_variables)
      return loss, tf.linalg.global_norm(grads)
    batch, t, h, w, c = clip_shape
    if variant == "time_distributed_dynamic_t":
      signature = [tf.TensorSpec((batch, None, h, w, c), tf.float32)]
    else:
      signature = [tf.TensorSpec((batch, t, h, w, c), tf.float32)]
    return tf.function(step, input_signature=signature, jit_compile=jit)

  return {variant: make(variant) for variant in FLAGS.variants}, wrapped


def relative_difference(network, wrapped, clips, training: bool) -> float:
  """max |TimeDistributed - fold| / max |fold| of the res5 maps.

  In training mode BatchNorm normalises with batch statistics: over all B*T frames when time
  is folded into the batch, over the B frames of one time step at a time under
  TimeDistributed, so the two differ there (and TimeDistributed updates the moving statistics
  T times per step).
  """
  fold = resnet3d.per_frame(lambda f: network(f, training=training), clips).numpy()
  distributed = wrapped(clips, training=training).numpy()
  return float(np.abs(fold - distributed).max() / max(np.abs(fold).max(), 1e-12))


def main(argv):
  del argv
  unknown = (set(FLAGS.modes) - {"xla", "no_xla"}) | (set(FLAGS.variants) - set(VARIANTS))
  if unknown or "fold" not in FLAGS.variants or len(FLAGS.variants) < 2:
    raise app.UsageError(f"unknown or missing names {sorted(unknown)}: --modes takes xla, "
                         f"no_xla; --variants takes fold (required) and at least one of "
                         f"{VARIANTS[1:]}.")
  t, h, w = (int(v) for v in FLAGS.clip)
  block_counts = tuple(int(v) for v in FLAGS.block_counts)
  clip_shape = (FLAGS.batch, t, h, w, 3)
  keras.utils.set_random_seed(0)
  backbone = resnet2d.resnet2d(block_counts=block_counts, base_width=FLAGS.base_width)
  network = keras.Model(backbone.input, backbone.output["res5"], name="res5_of_resnet2d")
  clips = tf.constant(np.random.default_rng(0).normal(size=clip_shape).astype("float32"))
  params = int(sum(np.prod(v.shape) for v in network.trainable_variables))
  print(f"2-D ResNet {list(block_counts)} base_width {FLAGS.base_width} ({params:,} trainable "
        f"parameters), {FLAGS.batch} clips of {t}x{h}x{w}, forward+backward; "
        f"{FLAGS.rounds} rounds x {FLAGS.steps} steps per variant", flush=True)
  results = {"batch": FLAGS.batch, "clip": [t, h, w], "base_width": FLAGS.base_width,
             "block_counts": list(block_counts), "params": params, "rounds": FLAGS.rounds,
             "steps": FLAGS.steps}
  steps_by_mode, wrapped = {}, None
  for mode in FLAGS.modes:
    steps_by_mode[mode], wrapped = make_steps(network, clip_shape, mode == "xla")
  weights = network.get_weights()
  results["inference_max_relative_difference"] = relative_difference(
      network, wrapped, clips, training=False)
  results["training_max_relative_difference"] = relative_difference(
      network, wrapped, clips, training=True)
  network.set_weights(weights)  # undo the moving-statistics updates
  failed = {}
  for mode, steps in steps_by_mode.items():  # warm-up: tracing and compilation
    for variant, step in steps.items():
      try:
        for _ in range(max(FLAGS.warmup, 1)):
          float(step(clips)[0])
      except (tf.errors.OpError, ValueError) as e:  # e.g. XLA cannot compile the dynamic map
        failed[(mode, variant)] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
  if any(variant == "fold" for _, variant in failed):
    raise RuntimeError(f"the fold variant failed: {failed}")
  keys = [(mode, v) for mode in FLAGS.modes for v in FLAGS.variants if (mode, v) not in failed]
  wall = {key: [] for key in keys}  # per round: ms per step
  cpu = {key: [] for key in keys}
  for _ in range(FLAGS.rounds):
    totals = {key: [0.0, 0.0] for key in keys}
    for index in range(FLAGS.steps):  # one step of each variant in turn, order alternating
      for key in (keys if index % 2 == 0 else keys[::-1]):
        step = steps_by_mode[key[0]][key[1]]
        start, start_cpu = time.perf_counter(), time.process_time()
        float(step(clips)[0])
        totals[key][0] += time.perf_counter() - start
        totals[key][1] += time.process_time() - start_cpu
    for key in keys:
      wall[key].append(1000 * totals[key][0] / FLAGS.steps)
      cpu[key].append(1000 * totals[key][1] / FLAGS.steps)
  for mode in FLAGS.modes:
    figures = {}
    for variant in FLAGS.variants:
      key = (mode, variant)
      if key in failed:
        figures[variant] = {"error": failed[key]}
        print(f"{mode:7s} {variant:27s} fails: {failed[key]}", flush=True)
        continue
      fold = (mode, "fold")
      ms, cpu_ms = float(np.median(wall[key])), float(np.median(cpu[key]))
      ratios = [a / b for a, b in zip(wall[key], wall[fold])]
      cpu_ratios = [a / b for a, b in zip(cpu[key], cpu[fold])]
      figures[variant] = {
          "step_ms": ms, "cpu_ms": cpu_ms, "clips_per_s": FLAGS.batch * 1000 / ms,
          "ratio_to_fold": float(np.median(ratios)),
          "cpu_ratio_to_fold": float(np.median(cpu_ratios)),
          "round_ratios": [round(r, 3) for r in ratios],
          "round_ms": [round(v, 1) for v in wall[key]]}
      print(f"{mode:7s} {variant:27s} {ms:7.1f} ms/step ({cpu_ms:7.1f} ms CPU)  "
            f"{FLAGS.batch * 1000 / ms:6.1f} clips/s  x fold: {np.median(ratios):.2f} wall, "
            f"{np.median(cpu_ratios):.2f} CPU (rounds {np.round(ratios, 2).tolist()})",
            flush=True)
    results[mode] = figures
  print("TimeDistributed vs fold, max relative difference of the outputs: inference "
        f"{results['inference_max_relative_difference']:.1e}, training "
        f"{results['training_max_relative_difference']:.1e} (BatchNorm statistics per time "
        "step vs over all frames)")
  print(json.dumps(results))


if __name__ == "__main__":
  app.run(main)
