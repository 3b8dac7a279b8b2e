"""REINFORCE with a learned value baseline for a3d's location policy (Chen et al., eqs. 7-13).

The reward is classification correctness at the last glimpse (eq. 7): r_t = 1 when
argmax p_c is the ground-truth label and t = T, else 0. The return (eq. 8) is
R = sum_t gamma^(t-1) r_t = gamma^(T-1) r_T. The objective J = E[R] (eq. 11) is ascended
with the score-function estimate (eq. 12), minus a baseline b (eq. 13):

    grad J ~ 1/M sum_m sum_t grad log pi(a_t^m | s_t^m) (R^m - b_t^m).

As a loss to minimise (M episodes: every clip of the batch, times ``model.a3d.num_episodes``
when the agent samples several episodes per clip):

    L_RL = -mean_m sum_t log pi(a_t^m | s_t^m) * sg(R^m - b_t^m)     (:func:`reinforce_surrogate`)
    L_V  = mean_{m, t} (b_t^m - R^m)^2                                 (:func:`value_loss`)

and the term is L_RL + value_weight * L_V. sg is the stop-gradient: the advantage is a
constant to the policy gradient, and the sampled actions are already stopped inside the
model (their log-probabilities carry the gradient through the policy mean only). The value
network's regression loss is the library's choice of how to fit "the value function" the
paper uses as baseline (section III-C); it reaches only the value head (the model stops h_t
before it).

Which actions count: eq. 12 sums over all T actions a_1..a_T, and so does this term by
default. The action a_T of the last glimpse chooses no bin, so it cannot affect R: its score
term has expectation 0 and only adds variance; ``include_final_action=False`` drops it (sum
over a_1..a_{T-1}, the actions that chose the bins of glimpses 2..T; with T = 1 the RL term
is then 0). The design note prefers that default; the paper's printed sum wins here.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfreid.config import ConfigError
from tfreid.losses import LossTerm, get_labels, get_output

BASELINES = ("value", "none")


def classification_return(logits, labels, num_steps: int, discount: float = 1.0
                          ) -> tf.Tensor:
  """Eqs. 7-8: R = gamma^(T-1) [argmax logits = label], float32 [B]."""
  predicted = tf.argmax(tf.cast(logits, tf.float32), axis=-1, output_type=tf.int32)
  correct = tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32)
  return correct * tf.constant(discount, tf.float32) ** float(num_steps - 1)


def reinforce_surrogate(log_prob, returns, baseline=None) -> tf.Tensor:
  """Eqs. 12-13 as a loss: -mean_m sum_t log_prob[m, t] * sg(R[m] - b[m, t]).

  Args:
    log_prob: [M, T'] log pi of the actions (gradient through the policy only).
    returns: [M] R of each episode.
    baseline: [M, T'] b_t, or None (eq. 12).

  Its gradient is minus the estimate of eq. 12/13; the advantage is stopped.
  """
  log_prob = tf.cast(log_prob, tf.float32)
  advantage = tf.cast(returns, tf.float32)[:, None]
  if baseline is not None:
    advantage = advantage - tf.cast(baseline, tf.float32)
  advantage = tf.stop_gradient(advantage)
  return -tf.reduce_mean(tf.reduce_sum(log_prob * advantage, axis=1))


def value_loss(baseline, returns) -> tf.Tensor:
  """The baseline's regression to the return: mean (b_t - R)^2 over episodes and steps."""
  target = tf.stop_gradient(tf.cast(returns, tf.float32))[:, None]
  return tf.reduce_mean(tf.square(tf.cast(baseline, tf.float32) - target))


class ReinforceLoss(LossTerm):
  """L_RL + value_weight * L_V on the model's outputs (module docstring).

  Args:
    value_weight: factor of L_V.
    discount: gamma of eq. 8 (paper: 1).
    baseline: "value" (eq. 13, the model's value output) or "none" (eq. 12).
    include_final_action: count a_T too.
    log_prob, value, logits: the model outputs read ([B, T], [B, T], [B, N]).
    episode_logits: the output read instead of `logits` when log_prob and value are
      [B, M, T] (M episodes per clip): [B, M, N]; every episode is one of eq. 12's M.
  """

  def __init__(self, name: str = "reinforce", weight: float = 1.0, value_weight: float = 1.0,
               discount: float = 1.0, baseline: str = "value",
               include_final_action: bool = True, log_prob: str = "a3d_log_prob",
               value: str = "a3d_value", logits: str = "logits",
               episode_logits: str = "a3d_episode_logits"):
    super().__init__(name=name, weight=weight)
    if baseline not in BASELINES:
      raise ValueError(f"reinforce baseline={baseline!r}; expected one of {BASELINES}.")
    self.value_weight = float(value_weight)
    self.discount = float(discount)
    self.baseline = baseline
    self.include_final_action = include_final_action
    self.log_prob_key, self.value_key, self.logits_key = log_prob, value, logits
    self.episode_logits_key = episode_logits

  def __call__(self, outputs, batch):
    log_prob = get_output(outputs, self.log_prob_key, self.name)
    labels = get_labels(batch, self.name)
    value = get_output(outputs, self.value_key, self.name) if self.baseline == "value" else None
    if log_prob.shape.rank == 3:
      # M episodes per clip: [B, M, T] -> B * M episodes of eq. 12.
      logits = get_output(outputs, self.episode_logits_key, self.name)
      episodes = int(log_prob.shape[1])
      if logits.shape.rank != 3 or int(logits.shape[1]) != episodes:
        raise ValueError(f"loss {self.name!r}: {self.log_prob_key!r} has {episodes} episodes "
                         f"per clip ([B, M, T]) but {self.episode_logits_key!r} has shape "
                         f"{logits.shape}; expected [B, {episodes}, num_classes].")
      flat = lambda x: tf.reshape(x, [-1] + x.shape[2:].as_list())
      log_prob, logits = flat(log_prob), flat(logits)
      labels = tf.reshape(tf.repeat(tf.reshape(labels, [-1])[:, None], episodes, axis=1), [-1])
      value = None if value is None else flat(value)
    else:
      logits = get_output(outputs, self.logits_key, self.name)
    num_steps = int(log_prob.shape[-1])
    returns = classification_return(logits, labels, num_steps, self.discount)
    used = num_steps if self.include_final_action else num_steps - 1
    loss = tf.constant(0.0, tf.float32)
    if used > 0:
      loss += reinforce_surrogate(log_prob[:, :used], returns,
                                  None if value is None else value[:, :used])
    if value is not None and self.value_weight > 0:
      loss += self.value_weight * value_loss(value, returns)
    return loss


@dataclasses.dataclass
class Config:
  """``losses.<name>`` of type reinforce."""
  type: str = "reinforce"
  weight: float = 1.0
  # Factor of the value baseline's regression loss.
  value_weight: float = 1.0
  # gamma of eq. 8.
  discount: float = 1.0
  # value (eq. 13) | none (eq. 12)
  baseline: str = "value"
  # Count the last glimpse's action, which chooses no bin (eq. 12 sums all T).
  include_final_action: bool = True
  log_prob: str = "a3d_log_prob"
  value: str = "a3d_value"
  logits: str = "logits"
  # Read instead of `logits` when the model samples several episodes per clip.
  episode_logits: str = "a3d_episode_logits"

  def validate(self, prefix: str, config=None) -> None:
    if self.baseline not in BASELINES:
      raise ConfigError(f"{prefix}.baseline={self.baseline!r}; expected one of {BASELINES}.")
    if not 0.0 < self.discount <= 1.0:
      raise ConfigError(f"{prefix}.discount must be in (0, 1], got {self.discount}.")
    if self.value_weight < 0:
      raise ConfigError(f"{prefix}.value_weight must be >= 0, got {self.value_weight}.")


def build(name: str, config: Config, context) -> ReinforceLoss:
  del context
  return ReinforceLoss(name, config.weight, config.value_weight, config.discount,
                       config.baseline, config.include_final_action, config.log_prob,
                       config.value, config.logits, config.episode_logits)
