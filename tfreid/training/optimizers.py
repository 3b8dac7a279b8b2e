"""Optimizers, learning-rate schedules, L2 weight decay and gradient clipping.

Learning rate (``config.schedule``), a function of the optimizer step through the epoch
``e = step / steps_per_epoch`` (fractional, so the rate changes smoothly within an epoch):

- ``constant``:     lr
- ``step``:         lr * step_factor ** floor(e / step_epochs)
                    (a3d section III-D: 2e-4, halved every 60 epochs)
- ``exponential``:  lr until decay_start_epoch, then
                    lr * decay_rate ** ((e - decay_start_epoch) / decay_epochs)
                    (nonlocal_i3d section 4.2: 3e-4, decay rate 0.001 from epoch 150, so the
                    rate reaches 3e-7 at epoch 300)
- linear warm-up, on top of any of them: for e < warmup_epochs the rate is multiplied by
  warmup_factor + (1 - warmup_factor) * e / warmup_epochs.

Weight decay (``config.optimizer.weight_decay_mode``):

- ``l2`` (the papers' "weight decay", e.g. nonlocal_i3d section 4.2: Adam with 5e-4): the
  trainer adds :func:`l2_regularization` = wd / 2 * sum ||w||^2 to the loss, whose gradient
  wd * w is exactly what PyTorch's SGD/Adam ``weight_decay`` adds to the gradient. It then goes
  through Adam's moment estimates like any gradient (coupled decay).
- ``decoupled`` (AdamW, Loshchilov & Hutter): the optimizer itself shrinks each variable by
  lr * wd * w per step, outside the moment estimates (``keras.optimizers.AdamW``).

Both apply to the same variables: kernel-like variables of rank >= 2 (convolution and dense
kernels, embedding tables). Variables of rank 0 or 1 (biases, BatchNorm gamma and beta, the
moving statistics, scalars) are not decayed.

Gradient clipping (:func:`clip_gradients`): element-wise to [-clip_value, clip_value] first
(siamese_convgru section V-B: all gradients clipped to [-5, 5]), then rescaling of the whole
gradient to global norm <= clip_global_norm. Either bound holds after both steps. Keras'
own ``clipvalue``/``global_clipnorm`` are left unset: under MirroredStrategy Keras clips each
replica's gradient before the all-reduce, not the global gradient.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_SCHEDULES = ("constant", "step", "exponential")


@keras.saving.register_keras_serializable(package="tfreid")
class EpochLearningRateSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Constant, step or delayed exponential decay over epochs, with linear warm-up.

  Args:
    initial_learning_rate: lr, the base rate.
    steps_per_epoch: optimizer steps per epoch (epoch = step / steps_per_epoch).
    decay: "constant" | "step" | "exponential" (formulas in the module docstring).
    step_epochs, step_factor: step decay (a3d section III-D: 60 epochs, 0.5).
    decay_start_epoch, decay_epochs, decay_rate: exponential decay (nonlocal_i3d section 4.2:
      150, 150, 0.001).
    warmup_epochs, warmup_factor: linear warm-up from warmup_factor * rate; 0 epochs disables.

  Example:
    >>> schedule = EpochLearningRateSchedule(3e-4, steps_per_epoch=100, decay="exponential")
    >>> float(schedule(30000))  # epoch 300: 3e-4 * 0.001
  """

  def __init__(self, initial_learning_rate: float, steps_per_epoch: int,
               decay: str = "constant", step_epochs: int = 60, step_factor: float = 0.5,
               decay_start_epoch: int = 150, decay_epochs: int = 150,
               decay_rate: float = 0.001, warmup_epochs: int = 0, warmup_factor: float = 0.01,
               name: str = "epoch_learning_rate"):
    super().__init__()
    if decay not in _SCHEDULES:
      raise ValueError(f"learning-rate schedule {decay!r} is not supported; expected one of "
                       f"{_SCHEDULES}.")
    if steps_per_epoch < 1:
      raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}: the schedule "
                       "is defined over epochs and needs the number of steps in one.")
    if step_epochs < 1 or decay_epochs < 1 or warmup_epochs < 0:
      raise ValueError("step_epochs and decay_epochs must be >= 1 and warmup_epochs >= 0, got "
                       f"{step_epochs}, {decay_epochs}, {warmup_epochs}.")
    self.initial_learning_rate = float(initial_learning_rate)
    self.steps_per_epoch = int(steps_per_epoch)
    self.decay = decay
    self.step_epochs = int(step_epochs)
    self.step_factor = float(step_factor)
    self.decay_start_epoch = int(decay_start_epoch)
    self.decay_epochs = int(decay_epochs)
    self.decay_rate = float(decay_rate)
    self.warmup_epochs = int(warmup_epochs)
    self.warmup_factor = float(warmup_factor)
    self.name = name

  def __call__(self, step):
    with tf.name_scope(self.name):
      step = tf.cast(step, tf.int64)
      epoch = tf.cast(step, tf.float32) / float(self.steps_per_epoch)
      lr = tf.constant(self.initial_learning_rate, tf.float32)
      if self.decay == "step":
        # Integer division keeps the boundaries exact at any step count.
        drops = step // (self.step_epochs * self.steps_per_epoch)
        lr = lr * tf.pow(tf.constant(self.step_factor, tf.float32), tf.cast(drops, tf.float32))
      elif self.decay == "exponential":
        progress = tf.maximum(epoch - float(self.decay_start_epoch), 0.0) / self.decay_epochs
        lr = lr * tf.pow(tf.constant(self.decay_rate, tf.float32), progress)
      if self.warmup_epochs > 0:
        fraction = tf.minimum(epoch / float(self.warmup_epochs), 1.0)
        lr = lr * (self.warmup_factor + (1.0 - self.warmup_factor) * fraction)
      return lr

  def get_config(self):
    return {
        "initial_learning_rate": self.initial_learning_rate,
        "steps_per_epoch": self.steps_per_epoch,
        "decay": self.decay,
        "step_epochs": self.step_epochs,
        "step_factor": self.step_factor,
        "decay_start_epoch": self.decay_start_epoch,
        "decay_epochs": self.decay_epochs,
        "decay_rate": self.decay_rate,
        "warmup_epochs": self.warmup_epochs,
        "warmup_factor": self.warmup_factor,
        "name": self.name,
    }


def build_schedule(config, steps_per_epoch: int) -> EpochLearningRateSchedule:
  """The learning-rate schedule of ``config.schedule`` starting at ``optimizer.learning_rate``."""
  s = config.schedule
  return EpochLearningRateSchedule(
      initial_learning_rate=config.optimizer.learning_rate, steps_per_epoch=steps_per_epoch,
      decay=s.name, step_epochs=s.step_epochs, step_factor=s.step_factor,
      decay_start_epoch=s.decay_start_epoch, decay_epochs=s.decay_epochs,
      decay_rate=s.decay_rate, warmup_epochs=s.warmup_epochs, warmup_factor=s.warmup_factor)


def is_decayed(variable) -> bool:
  """The weight-decay rule: True for kernel-like variables (rank >= 2)."""
  return len(variable.shape) >= 2


@keras.saving.register_keras_serializable(package="tfreid")
class KernelAdamW(keras.optimizers.AdamW):
  """``keras.optimizers.AdamW`` whose decoupled decay skips variables of rank < 2.

  The same variables as :func:`l2_regularization` are decayed (biases and BatchNorm
  parameters are not); ``exclude_from_weight_decay`` still excludes more.
  """

  def _use_weight_decay(self, variable):
    if not is_decayed(variable):
      return False
    return super()._use_weight_decay(variable)


def build_optimizer(config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
  """The optimizer of ``config.optimizer`` with the schedule of ``config.schedule``.

  Under ``runtime.mixed_precision=mixed_float16`` it is wrapped in a
  ``keras.optimizers.LossScaleOptimizer`` (dynamic loss scaling). L2 weight decay
  (``weight_decay_mode=l2``) is not part of the optimizer: the trainer adds
  ``l2_regularization(variables, l2_weight_decay(config))`` to the loss.

  Args:
    config: an ``ExperimentConfig``.
    steps_per_epoch: optimizer steps per epoch, to turn the schedule's epochs into steps.
  """
  o = config.optimizer
  learning_rate = build_schedule(config, steps_per_epoch)
  if o.name == "adam":
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=o.beta_1,
                                      beta_2=o.beta_2, epsilon=o.epsilon)
  elif o.name == "adamw":
    decoupled = o.weight_decay if o.weight_decay_mode == "decoupled" else 0.0
    optimizer = KernelAdamW(learning_rate=learning_rate, weight_decay=decoupled,
                            beta_1=o.beta_1, beta_2=o.beta_2, epsilon=o.epsilon)
  elif o.name == "sgd":
    optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=o.momentum,
                                     nesterov=o.nesterov)
  elif o.name == "rmsprop":
    optimizer = keras.optimizers.RMSprop(learning_rate=learning_rate, rho=o.rho,
                                         momentum=o.momentum, epsilon=o.epsilon)
  else:
    raise ValueError(f"optimizer.name={o.name!r} is not supported; expected one of 'adam', "
                     "'adamw', 'sgd', 'rmsprop'.")
  return maybe_wrap_loss_scale(optimizer, config.runtime.mixed_precision)


def maybe_wrap_loss_scale(optimizer, policy) -> keras.optimizers.Optimizer:
  """Wraps ``optimizer`` in a LossScaleOptimizer when ``policy`` is mixed_float16.

  Args:
    optimizer: a Keras optimizer.
    policy: a dtype policy name ("float32", "mixed_bfloat16", "mixed_float16") or a
      ``keras.DTypePolicy``. bfloat16 has float32's exponent range and needs no loss scaling.
  """
  name = policy if isinstance(policy, str) else policy.name
  if name == "mixed_float16" and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    return keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def l2_weight_decay(config) -> float:
  """The coefficient of the L2 term the trainer adds to the loss (0 for decoupled decay)."""
  o = config.optimizer
  return o.weight_decay if o.weight_decay_mode == "l2" else 0.0


def l2_regularization(variables, weight_decay: float) -> tf.Tensor:
  """weight_decay / 2 * sum ||w||^2 over the variables of rank >= 2, as float32.

  Its gradient is weight_decay * w for those variables (0 for the others): PyTorch's
  ``weight_decay`` of SGD and Adam. Pass ``model.trainable_variables``. Under a distribution
  strategy add it to every replica's loss before the division by ``num_replicas_in_sync``:
  the summed replica gradients then count it once.
  """
  kernels = [v for v in variables if is_decayed(v)]
  if not kernels or weight_decay == 0:
    return tf.constant(0.0, tf.float32)
  squares = [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in kernels]
  return tf.constant(0.5 * weight_decay, tf.float32) * tf.add_n(squares)


def clip_gradients(grads, clip_global_norm: float = 0.0, clip_value: float = 0.0) -> list:
  """Element-wise clipping to [-clip_value, clip_value], then global-norm clipping.

  A bound of 0 disables that step. ``None`` gradients pass through; ``tf.IndexedSlices`` keep
  their indices. Non-finite elements are not clipped by value, so an overflow stays visible
  to ``keras.optimizers.LossScaleOptimizer`` (which then skips the step).

  Clip the gradient the update uses: under MirroredStrategy that is the
  all-reduced (summed) gradient, e.g. ``ctx.all_reduce("sum", grads)``, clipped, divided by
  ``num_replicas_in_sync`` before ``optimizer.apply`` (Keras sums the replicas' gradients
  again).

  Args:
    grads: list of gradients (tensors, IndexedSlices or None).
    clip_global_norm: maximum global L2 norm of all gradients together.
    clip_value: maximum absolute value of any gradient element (siamese_convgru: 5).

  Returns:
    list of clipped gradients, same structure.
  """
  grads = list(grads)
  if clip_value > 0:
    def clip_finite(values):
      # Inf and NaN stay as they are: a loss-scale optimizer must still see an overflow
      # (clipping inf to the bound would turn it into an ordinary update).
      clipped = tf.clip_by_value(values, -clip_value, clip_value)
      return tf.where(tf.math.is_finite(values), clipped, values)

    def clip(g):
      if g is None:
        return None
      if isinstance(g, tf.IndexedSlices):
        return tf.IndexedSlices(clip_finite(g.values), g.indices, g.dense_shape)
      return clip_finite(g)
    grads = [clip(g) for g in grads]
  if clip_global_norm > 0:
    grads, _ = tf.clip_by_global_norm(grads, clip_global_norm)
    grads = list(grads)
  return grads
