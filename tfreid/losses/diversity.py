"""Diversity regulariser of K spatial attention maps (diversity_attention section 3.3,
eqs. 5-10; Li et al., CVPR 2018).

For one frame, S [K, L] holds the K receptive fields (eq. 5), each a probability mass over
the L cells. The Hellinger distance of two of them (eqs. 6-7) is

    H(s_i, s_j) = 1/sqrt(2) ||sqrt(s_i) - sqrt(s_j)||_2,   H^2 = 1 - sum_l sqrt(s_il s_jl)  (8)

and with R = sqrt(S) element-wise the regulariser of the frame is (eq. 9)

    Q = ||R R^T - I_K||_F^2.

The rows of R have unit norm, so the diagonal of R R^T is 1 and Q = sum_{i != j} BC_ij^2
with BC_ij = 1 - H^2(s_i, s_j) the Bhattacharyya coefficient: 0 when the maps have disjoint
supports, K (K - 1) when they are identical. The term of the objective is the mean of Q over
every frame of every clip of the batch; the paper multiplies Q by "a coefficient" and adds
it to the OIM loss (`losses.<name>.weight`, no value in the paper).

``variant="lin"`` is the regulariser of Lin et al. the paper compares with (eq. 10,
table 1 "SpaAtn+Q'"): Q' = ||S S^T - I||_F^2 on the maps themselves, which also pushes each
map towards a single cell.

Square root: d sqrt(s)/ds = 1 / (2 sqrt(s)) is infinite where the softmax underflowed to 0
(large logit gaps, or any low-precision run), and the softmax's own derivative there is 0,
so automatic differentiation gives 0 * inf = NaN. :func:`attention_sqrt` returns the same
values with a gradient that is 0 where s = 0, the limit of the composed derivative
d sqrt(s_j)/de_i = sqrt(s_j) (delta_ij - s_i) / 2 as s_j -> 0. The maps are read in float32.

This corrects the partial public release of the paper, which takes the unsquared norm over
the whole batch (growing with the square root of the batch size), plus a constant inside the
root, instead of the per-frame squared norm averaged.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfreid.config import ConfigError
from tfreid.losses import LossTerm, get_output

VARIANTS = ("hellinger", "lin")


@tf.custom_gradient
def attention_sqrt(attention):
  """R = sqrt(S) element-wise, with a finite gradient where S underflowed to 0 (module
  docstring). S must be non-negative."""
  root = tf.sqrt(attention)

  def grad(upstream):
    positive = root > 0
    safe = tf.where(positive, root, tf.ones_like(root))
    return tf.where(positive, upstream * 0.5 / safe, tf.zeros_like(upstream))

  return root, grad


def hellinger_distance(s_i, s_j):
  """Eqs. (6)-(7): H(s_i, s_j) = ||sqrt(s_i) - sqrt(s_j)||_2 / sqrt(2) over the last axis."""
  diff = attention_sqrt(tf.cast(s_i, tf.float32)) - attention_sqrt(tf.cast(s_j, tf.float32))
  return tf.norm(diff, axis=-1) / tf.sqrt(2.0)


def _gram_penalty(rows):
  """||M M^T - I||_F^2 over the last two axes of M [..., K, L] -> [...]."""
  gram = tf.linalg.matmul(rows, rows, transpose_b=True)
  eye = tf.eye(tf.shape(rows)[-2], dtype=rows.dtype)
  return tf.reduce_sum(tf.square(gram - eye), axis=[-2, -1])


def hellinger_diversity(attention):
  """Eq. (9): Q = ||R R^T - I_K||_F^2 with R = sqrt(S), per map set; S [..., K, L] ->
  [...] (float32)."""
  return _gram_penalty(attention_sqrt(tf.cast(attention, tf.float32)))


def lin_diversity(attention):
  """Eq. (10): Q' = ||S S^T - I_K||_F^2 (Lin et al.), per map set; [..., K, L] -> [...]."""
  return _gram_penalty(tf.cast(attention, tf.float32))


def diversity(attention, variant: str = "hellinger"):
  """Q (``hellinger``, eq. 9) or Q' (``lin``, eq. 10) of every map set [..., K, L]."""
  if variant == "hellinger":
    return hellinger_diversity(attention)
  if variant == "lin":
    return lin_diversity(attention)
  raise ValueError(f"diversity variant {variant!r}; expected one of {', '.join(VARIANTS)}.")


class DiversityLoss(LossTerm):
  """The mean of Q (or Q') over every frame of the local batch.

  Reads ``outputs[output]``, the receptive fields S of every frame: [B, N, K, h, w] (or
  [B, N, K, L]; any leading axes before K), each map summing to 1 over its cells.
  """

  def __init__(self, name: str = "diversity", weight: float = 1.0,
               variant: str = "hellinger", output: str = "attention_spatial"):
    super().__init__(name=name, weight=weight)
    if variant not in VARIANTS:
      raise ValueError(f"diversity variant {variant!r}; expected one of {', '.join(VARIANTS)}.")
    self.variant = variant
    self.output = output

  def __call__(self, outputs: dict, batch: dict) -> tf.Tensor:
    maps = get_output(outputs, self.output, self.name)
    if maps.shape.rank == 5:
      maps = tf.reshape(maps, [-1] + maps.shape[1:3].as_list()
                        + [maps.shape[3] * maps.shape[4]])
    elif maps.shape.rank not in (3, 4):
      raise ValueError(f"loss {self.name!r} reads outputs[{self.output!r}] as attention maps "
                       f"[B, N, K, h, w] or [B, N, K, L], got shape {maps.shape}.")
    return tf.reduce_mean(diversity(maps, self.variant))


@dataclasses.dataclass
class Config:
  """``losses.<name>`` of type diversity."""
  type: str = "diversity"
  weight: float = 1.0
  # hellinger: Q, eq. (9) | lin: Q', eq. (10) (table 1 "SpaAtn+Q'").
  variant: str = "hellinger"
  # The model output holding the receptive fields [B, N, K, h, w].
  output: str = "attention_spatial"

  def validate(self, prefix: str, config=None) -> None:
    del config
    if self.variant not in VARIANTS:
      raise ConfigError(f"{prefix}.variant={self.variant!r} is not valid; expected one of "
                        f"{', '.join(map(repr, VARIANTS))}.")


def build(name: str, config: Config, context) -> DiversityLoss:
  shape = context.output_shapes.get(config.output)
  if shape is None or len(shape) not in (2, 3, 4):
    raise ValueError(
        f"losses.{name} (diversity) reads the attention maps in model output "
        f"{config.output!r} ([B, N, K, h, w]); the model's outputs are "
        f"{ {k: list(v) for k, v in context.output_shapes.items()} }. A model without "
        f"spatial attention has none: set losses.{name}.weight=0.")
  return DiversityLoss(name, config.weight, config.variant, config.output)
