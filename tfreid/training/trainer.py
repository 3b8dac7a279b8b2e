"""One custom training loop for every method.

Sections: strategy and model; optimizer and losses; checkpoint and resume; the step;
the loop (progress, summaries, profiling, periodic evaluation, faults).

The step (DESIGN.md, "Engineering facts"): the per-replica forward and backward pass is one
XLA-compiled function (`runtime.jit_compile`); gradients are all-reduced and applied outside
it. The loss of every replica is its local mean divided by the number of replicas, so the
all-reduced (summed) gradient is the gradient of the global-batch mean. The loop never
branches on the method: the model's outputs and the experiment's loss terms decide.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import time

from absl import logging
import tensorflow as tf
import keras

from tfreid import config as cfg
from tfreid import visualize
from tfreid.data import pipeline as data_pipeline
from tfreid.data import reader as data_reader
from tfreid.data import streams as streams_lib
from tfreid.losses import LossContext, build_losses
from tfreid.models import build_model
from tfreid.models import contract
from tfreid.training import checkpoints as ckpt_lib
from tfreid.training import optimizers as opt_lib
from tfreid.training import run_lock
from tfreid.training import strategy as strategy_lib
from tfreid.training.progress import ProgressBar


# Prefix of the model's own scalars (contract.summary_scalars) among the logged values.
SCALAR_PREFIX = "metrics/"


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a NaN loss); the message says what to do."""


def set_mixed_precision(runtime: cfg.RuntimeConfig) -> None:
  """Sets Keras' global dtype policy to `runtime.mixed_precision` (the models the trainer
  builds afterwards compute in float16/bfloat16 with float32 variables). The policy stays
  set after training; `keras.mixed_precision.set_global_policy("float32")` resets it."""
  keras.mixed_precision.set_global_policy(runtime.mixed_precision)


def dummy_inputs(config: cfg.ExperimentConfig, batch: int = 1) -> dict:
  """A zero batch of the model's declared streams with the pipeline's shapes."""
  return streams_lib.dummy_inputs(contract.input_streams(config), config.data, batch)


def seed_generator_states(model) -> dict:
  """The state variables of the model's random-number generators (dropout masks ...), so a
  resumed run draws the same numbers as a straight one. Keras does not checkpoint them."""
  return {k: getattr(state, "value", state)
          for k, state in contract.seed_generator_states(model).items()}


class Trainer:
  """Trains `config` into `model_dir`; resumes from the newest checkpoint there."""

  def __init__(self, config: cfg.ExperimentConfig, model_dir: str,
               strategy: tf.distribute.Strategy | None = None, profile_steps=None,
               num_classes: int | None = None, steps_per_epoch: int | None = None):
    """`num_classes` and `steps_per_epoch` come from the dataset unless given (benchmarks
    that feed their own batches give both)."""
    self.config = config
    self.model_dir = model_dir
    self.strategy = strategy or strategy_lib.create_strategy(config.runtime)
    self.num_replicas = self.strategy.num_replicas_in_sync
    self.profile_steps = tuple(profile_steps) if profile_steps else None
    self.chief = strategy_lib.is_chief(self.strategy)
    self.num_workers = strategy_lib.num_workers(self.strategy)
    # One writer per run directory (the chief's lock; run_lock module docstring).
    self.lock = run_lock.acquire(model_dir) if self.chief else None
    set_mixed_precision(config.runtime)
    tf.random.set_seed(config.runtime.seed)
    keras.utils.set_random_seed(config.runtime.seed)

    # ------------------------------------------------------------------ data facts
    self.streams = contract.input_streams(config)
    if num_classes is None:
      train_index = data_reader.load_partition(config.data.data_dir, "train",
                                               split=config.data.split,
                                               skip_corrupt=config.data.skip_corrupt)
      # A stream the model reads but the dataset lacks stops here, before any model is
      # built, with the converter command that adds it.
      data_reader.check_streams(train_index, "flow" in self.streams,
                                "keypoints" in self.streams)
      num_classes = train_index.num_classes
      if not steps_per_epoch:
        steps_per_epoch = data_pipeline.steps_per_epoch(config.data, train_index)
    self.num_classes = num_classes
    self.steps_per_epoch = config.trainer.steps_per_epoch or steps_per_epoch or 1
    self.total_steps = self.steps_per_epoch * config.trainer.epochs

    # ----------------------------------------------------- what initialises the model
    # The newest checkpoint of model_dir wins; otherwise trainer.init_checkpoint (fine-tuning)
    # gives every model variable but a classifier of another shape; otherwise the backbone
    # initialisation of the config. Pretrained backbone weights are read only in that last
    # case, so a resumed or fine-tuned run neither needs nor reads the weights file.
    own_checkpoint = tf.train.latest_checkpoint(model_dir)
    init_checkpoint = ""
    if not own_checkpoint and config.trainer.init_checkpoint:
      init_checkpoint = ckpt_lib.resolve_init_checkpoint(config.trainer.init_checkpoint)
    model_config = config
    if (own_checkpoint or init_checkpoint) and config.model.backbone.init != "none":
      logging.info("Not loading the %s backbone weights: the model comes from %s.",
                   config.model.backbone.init, own_checkpoint or init_checkpoint)
      model_config = copy.deepcopy(config)
      model_config.model.backbone.init = "none"

    # --------------------------------------------------------- model, optimizer, losses
    with self.strategy.scope():
      self.model = build_model(model_config, self.num_classes)
      probe = self.model(dummy_inputs(config), training=False)
      contract.check_checkpointable(self.model)
      self.frozen = contract.freeze_layers(self.model, config.trainer.freeze)
      if self.frozen:
        logging.info("Frozen (trainer.freeze): %d layers, e.g. %s", len(self.frozen),
                     ", ".join(self.frozen[:3]))
      self.optimizer = opt_lib.build_optimizer(config, self.steps_per_epoch)
      self.optimizer.build(self.model.trainable_variables)
      context = LossContext(num_classes=self.num_classes,
                            output_shapes={k: tuple(v.shape[1:]) for k, v in probe.items()},
                            model=self.model, config=config)
      self.loss_terms = build_losses(config, context)
      self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")

    # ------------------------------------------------------------ checkpoint, resume
    stateful = {t.name: t for t in self.loss_terms if isinstance(t, tf.Module) or
                isinstance(t, keras.layers.Layer)}
    self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                          global_step=self.global_step,
                                          rng=seed_generator_states(self.model), **stateful)
    self.keeper = ckpt_lib.CheckpointKeeper(
        self.checkpoint, model_dir, config.trainer.keep_checkpoints, self.global_step,
        chief=self.chief, task=strategy_lib.task_name(self.strategy))
    self.resumed_from = self.keeper.restore_latest() if own_checkpoint else None
    self.initialized_from = None
    if init_checkpoint:
      ckpt_lib.restore_model_weights(self.model, init_checkpoint)
      # Loss-term state (OIM's lookup table) of a run on the same training data: a staged
      # schedule carries it from stage to stage.
      ckpt_lib.restore_loss_state(stateful, init_checkpoint, config.data.data_dir,
                                  config.data.split)
      self.initialized_from = init_checkpoint

    self._train_step = tf.function(self._distributed_step)
    self._any_worker_stops = tf.function(self._distributed_stop_flag)
    self._stop_requested = False
    self._stop_signal = None
    # True when train() returned before trainer.epochs on a SIGTERM (or a peer's).
    self.stopped_early = False

  # --------------------------------------------------------------------------- step

  def _loss_values(self, outputs: dict, batch: dict) -> tuple[tf.Tensor, dict]:
    terms = {}
    total = tf.constant(0.0, tf.float32)
    for term in self.loss_terms:
      value = tf.cast(term(outputs, batch), tf.float32)
      terms[term.name] = value
      total += term.weight * value
    # Keras add_loss terms of the model's last call are part of the objective.
    added = self.model.losses
    if added:
      value = tf.add_n([tf.cast(v, tf.float32) for v in added])
      terms["add_loss"] = value
      total += value
    wd = self.config.optimizer
    if wd.weight_decay > 0 and wd.weight_decay_mode == "l2":
      l2 = opt_lib.l2_regularization(self.model.trainable_variables, wd.weight_decay)
      terms["l2"] = l2
      total += l2
    return total, terms

  def _forward_backward(self, batch: dict):
    """Per-replica forward and backward pass; XLA-compiled when runtime.jit_compile."""
    variables = self.model.trainable_variables
    with tf.GradientTape() as tape:
      outputs = self.model(streams_lib.model_inputs(batch, self.streams), training=True)
      outputs = {k: tf.cast(v, tf.float32) for k, v in outputs.items()}
      total, terms = self._loss_values(outputs, batch)
      scaled = total / self.num_replicas
      if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
        scaled = self.optimizer.scale_loss(scaled)
    grads = tape.gradient(scaled, variables)
    scalars = contract.summary_scalars(self.model, outputs, batch)
    terms.update({f"{SCALAR_PREFIX}{k}": v for k, v in scalars.items()})
    return grads, total, terms, outputs

  def _replica_step(self, batch: dict):
    # Made here, inside the replica function, so that each replica traces its own compiled
    # function over its own copies of the variables (one shared traced function would hold
    # the first replica's variables).
    compiled = tf.function(self._forward_backward, jit_compile=self.config.runtime.jit_compile)
    grads, total, terms, outputs = compiled(batch)
    opt = self.config.optimizer
    clipping = opt.clip_global_norm > 0 or opt.clip_value > 0
    scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
    if clipping or (scaled and self.num_replicas > 1):
      # The global gradient, on every replica: clipping bounds it, not each replica's part
      # of it; and the loss-scale optimizer decides to skip a step (overflow) on the first
      # replica's gradients only, so every replica must see the same ones. The optimizer
      # is handed 1/n of it; its own all-reduce sums the n equal copies back.
      grads = _all_reduce_sum(grads)
      if clipping:
        scale = tf.cast(self.optimizer.dynamic_scale, tf.float32) if scaled else None
        if scale is not None:
          grads = [None if g is None else g / scale for g in grads]
        grads = opt_lib.clip_gradients(grads, opt.clip_global_norm, opt.clip_value)
        if scale is not None:
          grads = [None if g is None else g * scale for g in grads]
      grads = [None if g is None else g / self.num_replicas for g in grads]
    self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
    for term in self.loss_terms:
      if hasattr(term, "update"):
        term.update(outputs, batch)
    return total, terms

  def _distributed_step(self, batch):
    total, terms = self.strategy.run(self._replica_step, args=(batch,))
    self.global_step.assign_add(1)
    mean = lambda v: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
    return mean(total), {k: mean(v) for k, v in terms.items()}

  def _distributed_stop_flag(self, flag):
    """The number of replicas whose worker was asked to stop (SIGTERM)."""
    per_replica = self.strategy.run(tf.identity, args=(flag,))
    return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  def _stop_now(self) -> bool:
    """Whether to stop after this step: on a SIGTERM to this process or, with several
    workers, to any of them (all workers must stop at the same step to save together)."""
    if self.num_workers == 1:
      return self._stop_requested
    flag = tf.constant(1 if self._stop_requested else 0, tf.int32)
    return int(self._any_worker_stops(flag)) > 0

  # --------------------------------------------------------------------------- loop

  def _request_stop(self, signum, frame):  # pylint: disable=unused-argument
    # Only a flag: the signal may arrive while this thread writes to stderr, and logging from
    # the handler would then fail with a reentrant-write error. The loop logs the stop.
    self._stop_signal = signum
    self._stop_requested = True

  def _train_dataset(self, start_step: int):
    """The training stream from `start_step` on: a deterministic function of
    (runtime.seed, step), so a resumed run trains on the batches a straight one would."""
    return data_pipeline.make_train_dataset(self.config, strategy=self.strategy,
                                            seed=self.config.runtime.seed,
                                            streams=self.streams, start_step=start_step)

  def train(self) -> dict:
    """Runs the loop to `trainer.epochs`; returns the last logged values.

    Logged every `trainer.log_every_steps` steps (TensorBoard, MODEL_DIR/train, chief only):
    `loss/total` and `loss/<term>` for every loss term (and `loss/l2`), `learning_rate`
    (the schedule's rate at that step, the one the next update uses) and `clips_per_second`
    (since the previous log). Every `trainer.image_summary_every_steps` steps: the first two
    clips of the step's batch (`input/clip_<i>`, one image per frame) and the model's
    attention drawn on those frames (`attention/<name>`, see `tfreid.visualize`).
    """
    config = self.config
    writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "train")) \
        if self.chief else tf.summary.create_noop_writer()
    previous_handler = _install_sigterm_handler(self._request_stop)
    step = int(self.global_step.numpy())
    bar = ProgressBar(self.total_steps, self.steps_per_epoch, start_step=step,
                      log_every=config.trainer.log_every_steps)
    logging.info("Training %s: %d identities, %d steps/epoch x %d epochs, %d replica(s), "
                 "global batch %d, from step %d", config.experiment, self.num_classes,
                 self.steps_per_epoch, config.trainer.epochs, self.num_replicas,
                 config.data.global_batch_size, step)
    last_values: dict = {}
    window_start, window_steps = time.time(), 0
    last_saved = step
    try:
      # One stream for the whole run (its epoch planner is traced once).
      iterator = iter(self._train_dataset(step)) if step < self.total_steps else None
      while step < self.total_steps:
        epoch = step // self.steps_per_epoch
        while step < (epoch + 1) * self.steps_per_epoch:
          self._maybe_profile(step)
          batch = next(iterator)
          total, terms = self._train_step(batch)
          step += 1
          window_steps += 1
          values = {"loss": float(total)}
          values.update({k: float(v) for k, v in terms.items()})
          self._check_finite(step, values)
          last_values = values
          bar.update(step, values)
          if step % config.trainer.log_every_steps == 0 or step == self.total_steps:
            elapsed = time.time() - window_start
            clips_per_s = window_steps * config.data.global_batch_size / max(elapsed, 1e-9)
            self._write_scalars(writer, step, values, clips_per_s)
            window_start, window_steps = time.time(), 0
          every = config.trainer.image_summary_every_steps
          if every and step % every == 0:
            self._write_images(writer, step, batch)
          if step - last_saved >= config.trainer.checkpoint_every_steps:
            self.keeper.save(step)
            last_saved = step
          if self._stop_now():
            if last_saved != step:
              self.keeper.save(step)
              last_saved = step
            cause = (f"signal {self._stop_signal}" if self._stop_signal is not None
                     else "a stop requested by another worker")
            logging.warning("Stopped at step %d on %s; checkpoint saved. Run the same command "
                            "to resume.", step, cause)
            self.stopped_early = True
            return last_values
        finished_epoch = epoch + 1
        every = config.trainer.eval_every_epochs
        if every and finished_epoch % every == 0:
          if last_saved != step:
            self.keeper.save(step)
            last_saved = step
          self._periodic_eval(writer, step)
      if last_saved != step or not self.keeper.latest:
        self.keeper.save(step)
    finally:
      bar.close()
      if previous_handler is not None:
        signal.signal(signal.SIGTERM, previous_handler)
      if self.profile_steps and self._profiling:
        tf.profiler.experimental.stop()
        self._profiling = False
      writer.flush()
    return last_values

  _profiling = False

  def _maybe_profile(self, step: int) -> None:
    if not self.profile_steps:
      return
    start, stop = self.profile_steps
    if step == start and not self._profiling:
      tf.profiler.experimental.start(os.path.join(self.model_dir, "train"))
      self._profiling = True
    elif step == stop and self._profiling:
      tf.profiler.experimental.stop()
      self._profiling = False

  def _check_finite(self, step: int, values: dict) -> None:
    bad = [k for k, v in values.items()
           if not math.isfinite(v) and not k.startswith(SCALAR_PREFIX)]
    if not bad:
      return
    bad_terms = [k for k in bad if k != "loss"] or bad
    latest = self.keeper.latest or "none (no checkpoint was written yet)"
    raise TrainingError(
        f"loss term {bad_terms[0]!r} is {values[bad_terms[0]]} at step {step}; training "
        f"stopped without saving this state. The last good checkpoint is {latest}. Lower "
        "optimizer.learning_rate, set optimizer.clip_global_norm, or check the data, then "
        "run the same command to resume from it.")

  def current_learning_rate(self) -> float:
    """The schedule's rate at the optimizer's step (the rate of the next update)."""
    lr = self.optimizer.learning_rate
    if callable(lr):
      return float(lr(self.optimizer.iterations))
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)

  def _write_scalars(self, writer, step: int, values: dict, clips_per_s: float) -> None:
    lr = self.current_learning_rate()
    with writer.as_default(step=step):
      for name, value in values.items():
        if name.startswith(SCALAR_PREFIX):
          tf.summary.scalar(name, value)
        else:
          tf.summary.scalar("loss/total" if name == "loss" else f"loss/{name}", value)
      tf.summary.scalar("learning_rate", lr)
      tf.summary.scalar("clips_per_second", clips_per_s)

  def _write_images(self, writer, step: int, batch: dict) -> None:
    """The first two clips of this worker's first replica batch and, when the model returns
    them for those clips, its attention drawn over their frames (`tfreid.visualize`:
    the model's `attention_overlays` hook or the default heat maps and weight bars;
    inference mode)."""
    if not self.chief:
      return
    first = lambda v: self.strategy.experimental_local_results(v)[0][:2]
    sample = {k: first(batch[k]) for k in self.streams}
    clips = sample["clips"]
    outputs = self.model(sample, training=False)
    overlays = visualize.attention_overlays(self.model, sample, outputs)
    with writer.as_default(step=step):
      for i in range(int(clips.shape[0])):
        tf.summary.image(f"input/clip_{i}", clips[i], max_outputs=int(clips.shape[1]))
      for key, images in overlays.items():
        tf.summary.image(f"attention/{key}", images, max_outputs=int(images.shape[0]))
      for key, value in outputs.items():
        # Attention of a shape the overlays do not know: the bare maps.
        if key.startswith("attention") and key not in overlays:
          images = attention_images(value)
          if images is not None:
            tf.summary.image(f"attention/{key}", images, max_outputs=8)

  def _periodic_eval(self, writer, step: int) -> dict:
    from tfreid.training import evaluation  # pylint: disable=import-outside-toplevel
    metrics = evaluation.evaluate_model(self.config, self.model)
    summary = metrics["summary"]
    with writer.as_default(step=step):
      for key in ("rank1", "rank5", "rank10", "rank20", "mAP"):
        tf.summary.scalar(f"eval/{key}", summary[key])
    if self.keeper.maybe_save_best(step, summary):
      logging.info("New best test-set mAP %.4f at step %d (kept in %s/best: selected on the "
                   "test set, not a number to report)", summary["mAP"], step, self.model_dir)
    logging.info("Step %d: rank-1 %.4f mAP %.4f", step, summary["rank1"], summary["mAP"])
    return metrics


def _all_reduce_sum(grads: list) -> list:
  """Sums the replicas' gradients (None entries stay None); call in replica context."""
  present = [i for i, g in enumerate(grads) if g is not None]
  if not present:
    return list(grads)
  ctx = tf.distribute.get_replica_context()
  summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
  out = list(grads)
  for i, g in zip(present, summed):
    out[i] = g
  return out


def _install_sigterm_handler(handler):
  """Installs `handler` for SIGTERM; returns the previous handler, or None when signals
  cannot be handled here (not the main thread)."""
  try:
    return signal.signal(signal.SIGTERM, handler)
  except ValueError:
    logging.warning("Training outside the main thread: SIGTERM will not save a checkpoint.")
    return None


def attention_images(value) -> tf.Tensor | None:
  """Attention maps as images [N, H, W, 1] in [0, 1], each scaled to its own min and max.

  [B, ..., H, W] (or [B, ..., H, W, 1]) gives one image per map (e.g. per frame or per
  attention part); [B, N] (temporal attention, one weight per frame) gives one image, a row
  per example. Other shapes give None.
  """
  maps = tf.cast(value, tf.float32)
  rank = len(maps.shape)
  if rank >= 4 and maps.shape[-1] == 1:
    maps = maps[..., 0]
    rank -= 1
  if rank == 2:
    maps = maps[tf.newaxis]
  elif rank < 2:
    return None
  maps = tf.reshape(maps, [-1] + list(maps.shape[-2:]) + [1])
  low = tf.reduce_min(maps, axis=[1, 2, 3], keepdims=True)
  high = tf.reduce_max(maps, axis=[1, 2, 3], keepdims=True)
  return (maps - low) / tf.maximum(high - low, 1e-12)


def run_training(config: cfg.ExperimentConfig, model_dir: str, strategy=None,
                 profile_steps=None, return_trainer: bool = False):
  """Writes config.yaml and trains. Returns the last logged loss values, or the Trainer
  (`return_trainer`; its `stopped_early` says whether a signal stopped it)."""
  trainer = Trainer(config, model_dir, strategy=strategy, profile_steps=profile_steps)
  if trainer.chief:
    cfg.save_config(config, os.path.join(model_dir, "config.yaml"))
  values = trainer.train()
  return trainer if return_trainer else values


def parse_profile_steps(value: str):
  if not value:
    return None
  parts = value.split(",")
  if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
    raise ValueError(f"--profile_steps={value!r} must be two step numbers A,B with A < B, "
                     "e.g. --profile_steps=20,25.")
  start, stop = (int(p) for p in parts)
  if start >= stop:
    raise ValueError(f"--profile_steps={value!r}: the first step must be before the second.")
  return start, stop

