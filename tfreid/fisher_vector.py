"""Fisher-vector pooling of a trained siamese_convgru run's frame-level hidden states, for
evaluation only (siamese_convgru, eq. 10 and table IV's "Fisher vector pooling" row).

    python -m tfreid.metric_learning --model_dir=runs/sc --method=fisher_vector --components=16

A Gaussian mixture Delta = {(mu_k, sigma_k, pi_k), k = 1..C} with diagonal covariances is
fitted by EM on the frame-level hidden representations h_t of the training tracklets (the
top ConvGRU layer's states, flattened: `SiameseConvGRU.frame_states`). A video
H = [h_1 .. h_T] is encoded (eq. 10) as

    u_k = 1 / (T sqrt(pi_k))   sum_t q_kt (h_t - mu_k) / sigma_k
    v_k = 1 / (T sqrt(2 pi_k)) sum_t q_kt [((h_t - mu_k) / sigma_k)^2 - 1]

with q_kt the posterior of component k for h_t and sigma_k the standard deviation (the
element-wise square root of the diagonal variance), and the Fisher vector is the
concatenation (u_1, v_1, ..., u_C, v_C), 2DC dimensions. Query and gallery Fisher vectors are
compared by the Euclidean distance.

Every sum over t is a sum over frames, so a tracklet's Fisher vector is built from its test
clips (`python -m tfreid.evaluate`'s dense clips): per clip, the weighted sums of eq. 10 over
its frames (a frame repeated to pad a tracklet's last clip has weight 0, so every frame counts
once), summed over the tracklet's clips and divided by its number of frames T. The states of a
frame are those of the clip it is first seen in (the ConvGRU runs clip by clip, as in
training and evaluation).

Library choices (the paper gives none of these):
- C: ``--components``, default 16 (DEFAULT_COMPONENTS); the paper does not give C.
- The distance: Euclidean (the paper does not say).
- Normalisation: none by default (eq. 10 as written); ``--fv_normalization=power_l2`` applies
  the signed square root then L2 normalisation of the improved Fisher vector (Perronnin,
  Sanchez and Mensink, ECCV 2010), a library option.
- The EM: k-means++ seeding of the means (seeded), a few Lloyd iterations, then EM until the
  mean log-likelihood improves by less than 1e-6 (relative) or 100 iterations; variances
  floored at 1e-3 times the data's variance per dimension (VARIANCE_FLOOR, plus 1e-10);
  a component that loses every frame keeps its previous mean and variance (its prior drops
  to ~0).
- The frames the GMM is fitted on: every training frame, or a seeded uniform random subset of
  ``--max_fit_frames`` (default DEFAULT_MAX_FIT_FRAMES, 200000) when there are more.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_COMPONENTS = 16
# Training frames the GMM is fitted on at most (a seeded random subset when there are more).
DEFAULT_MAX_FIT_FRAMES = 200000
VARIANCE_FLOOR = 1e-3
NORMALIZATIONS = ("none", "power_l2")


@dataclasses.dataclass
class DiagonalGMM:
  """A Gaussian mixture with diagonal covariances: means, variances [C, D], priors [C]."""
  means: np.ndarray
  variances: np.ndarray
  priors: np.ndarray

  @property
  def num_components(self) -> int:
    return int(self.means.shape[0])

  def log_joint(self, x) -> np.ndarray:
    """log(pi_k N(x_t; mu_k, diag(sigma_k^2))) for every frame and component, [N, C]."""
    x = np.asarray(x, np.float64)
    inv = 1.0 / self.variances  # [C, D]
    # sum_d (x - mu)^2 / var = x^2 . inv - 2 x . (mu inv) + mu^2 . inv
    quad = ((x * x) @ inv.T - 2.0 * x @ (self.means * inv).T
            + np.sum(self.means ** 2 * inv, axis=1)[None, :])
    quad = np.maximum(quad, 0.0)
    log_det = np.sum(np.log(self.variances), axis=1)
    d = x.shape[1]
    with np.errstate(divide="ignore"):
      log_prior = np.log(self.priors)
    return log_prior[None, :] - 0.5 * (d * np.log(2.0 * np.pi) + log_det[None, :] + quad)

  def posteriors(self, x) -> tuple[np.ndarray, np.ndarray]:
    """(q [N, C], log-likelihood of each frame [N]): q_kt = p(k | h_t), rows summing to 1."""
    joint = self.log_joint(x)
    top = np.max(joint, axis=1, keepdims=True)
    log_like = top[:, 0] + np.log(np.sum(np.exp(joint - top), axis=1))
    return np.exp(joint - log_like[:, None]), log_like


def _check_frames(frames, what: str) -> np.ndarray:
  x = np.asarray(frames, np.float64)
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"{what} needs frame features [N, D] with N, D >= 1, got shape "
                     f"{x.shape}.")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{what}: the frame features contain NaN or infinite values.")
  return x


def _kmeans_pp(x: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
  """k-means++ seeding: the first centre uniformly, then each next one with probability
  proportional to the squared distance to the nearest chosen centre."""
  centres = [x[rng.integers(len(x))]]
  nearest = np.sum((x - centres[0]) ** 2, axis=1)
  for _ in range(1, c):
    total = nearest.sum()
    if total <= 0.0:  # fewer distinct frames than components: any frame
      pick = rng.integers(len(x))
    else:
      pick = rng.choice(len(x), p=nearest / total)
    centres.append(x[pick])
    nearest = np.minimum(nearest, np.sum((x - x[pick]) ** 2, axis=1))
  return np.array(centres)


def fit_gmm(frames, components: int = DEFAULT_COMPONENTS, iterations: int = 100,
            tolerance: float = 1e-6, seed: int = 0, kmeans_iterations: int = 10
            ) -> DiagonalGMM:
  """A diagonal-covariance GMM of `components` components fitted by EM on frames [N, D]
  (library choices of the module docstring: k-means++ then Lloyd seeding, variance floor)."""
  if int(components) != components or components < 1:
    raise ValueError(f"the Fisher-vector GMM needs components >= 1 (an integer), got "
                     f"{components!r}.")
  components = int(components)
  x = _check_frames(frames, "the Fisher-vector GMM")
  n, _ = x.shape
  if n < components:
    raise ValueError(f"cannot fit a GMM of {components} components on {n} frames: it needs "
                     f"at least as many frames as components; lower --components.")
  rng = np.random.default_rng(seed)
  floor = VARIANCE_FLOOR * np.var(x, axis=0) + 1e-10
  means = _kmeans_pp(x, components, rng)

  def nearest_centre():
    dist = (np.sum(x * x, 1)[:, None] - 2.0 * x @ means.T + np.sum(means ** 2, 1)[None, :])
    return np.argmin(dist, axis=1)

  for _ in range(kmeans_iterations):
    assign = nearest_centre()
    for k in range(components):
      if np.any(assign == k):
        means[k] = x[assign == k].mean(axis=0)
  assign = nearest_centre()
  variances = np.empty_like(means)
  priors = np.empty(components)
  for k in range(components):
    members = x[assign == k]
    priors[k] = max(len(members), 1) / n
    variances[k] = np.maximum(members.var(axis=0) if len(members) > 1 else np.var(x, axis=0),
                              floor)
  gmm = DiagonalGMM(means, variances, priors / priors.sum())
  previous = -np.inf
  for _ in range(iterations):
    q, log_like = gmm.posteriors(x)  # E step
    mean_ll = float(np.mean(log_like))
    mass = q.sum(axis=0)  # M step
    alive = mass > 1e-10 * n
    new_means = gmm.means.copy()
    new_vars = gmm.variances.copy()
    safe = np.where(alive, mass, 1.0)[:, None]
    m = (q.T @ x) / safe
    v = (q.T @ (x * x)) / safe - m * m
    new_means[alive] = m[alive]
    new_vars[alive] = np.maximum(v[alive], floor)
    gmm = DiagonalGMM(new_means, new_vars, np.maximum(mass, 0.0) / n)
    if np.isfinite(previous) and abs(mean_ll - previous) <= tolerance * max(abs(previous), 1.0):
      break
    previous = mean_ll
  return gmm


def frame_sums(gmm: DiagonalGMM, frames, weights=None) -> tuple[np.ndarray, np.ndarray]:
  """The weighted sums over frames of eq. 10 before the 1/T: (sum_t w_t q_kt z_kt,
  sum_t w_t q_kt (z_kt^2 - 1)), each [C, D], with z_kt = (h_t - mu_k) / sigma_k."""
  x = _check_frames(frames, "the Fisher vector")
  if x.shape[1] != gmm.means.shape[1]:
    raise ValueError(f"frame features of {x.shape[1]} dimensions but the GMM was fitted on "
                     f"{gmm.means.shape[1]}.")
  w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
  if len(w) != len(x):
    raise ValueError(f"{len(w)} frame weights for {len(x)} frames.")
  q, _ = gmm.posteriors(x)
  qw = q * w[:, None]  # [N, C]
  sigma = np.sqrt(gmm.variances)
  # sum_t qw_kt (x_t - mu_k) / sigma_k and sum_t qw_kt ((x_t - mu_k)^2 / sigma_k^2 - 1).
  first = (qw.T @ x - qw.sum(0)[:, None] * gmm.means) / sigma
  second = ((qw.T @ (x * x) - 2.0 * (qw.T @ x) * gmm.means
             + qw.sum(0)[:, None] * gmm.means ** 2) / gmm.variances
            - qw.sum(0)[:, None])
  return first, second


def finish(gmm: DiagonalGMM, first, second, num_frames, normalization: str = "none"
           ) -> np.ndarray:
  """Eq. 10 from `frame_sums` (summed over a video's clips) and its frame count T:
  (u_1, v_1, ..., u_C, v_C), [2 C D] (a leading batch axis is kept)."""
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"Fisher-vector normalization {normalization!r}; expected one of "
                     f"{NORMALIZATIONS}.")
  first = np.asarray(first, np.float64)
  second = np.asarray(second, np.float64)
  t = np.asarray(num_frames, np.float64).reshape(np.shape(num_frames) + (1, 1))
  if np.any(t <= 0):
    raise ValueError("a video with no frame (T = 0) has no Fisher vector.")
  with np.errstate(divide="ignore", invalid="ignore"):
    u = first / (t * np.sqrt(gmm.priors)[:, None])
    v = second / (t * np.sqrt(2.0 * gmm.priors)[:, None])
  # A component of prior 0 has q_kt = 0 for every frame: its entries are 0, not 0/0.
  u = np.where(gmm.priors[:, None] > 0, u, 0.0)
  v = np.where(gmm.priors[:, None] > 0, v, 0.0)
  fv = np.stack([u, v], axis=-2)  # [..., C, 2, D]
  fv = fv.reshape(fv.shape[:-3] + (-1,))
  if normalization == "power_l2":
    fv = np.sign(fv) * np.sqrt(np.abs(fv))
    norm = np.linalg.norm(fv, axis=-1, keepdims=True)
    fv = fv / np.maximum(norm, 1e-12)
  return fv


def fisher_vector(gmm: DiagonalGMM, frames, normalization: str = "none") -> np.ndarray:
  """Eq. 10 of one video H = [h_1 .. h_T], [T, D] -> [2 C D]."""
  first, second = frame_sums(gmm, frames)
  return finish(gmm, first, second, len(np.asarray(frames)), normalization)


# ------------------------------------------------------------------ a trained run's frames


def _check_model(model):
  if not hasattr(model, "frame_states"):
    raise ValueError(f"Fisher-vector pooling reads the frame-level hidden states of "
                     f"siamese_convgru (`frame_states`); {type(model).__name__} has none: "
                     "use --method=fisher_vector on a siamese_convgru run.")


def _frame_function(model, streams):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from tfreid.data import streams as streams_lib  # pylint: disable=import-outside-toplevel
  _check_model(model)

  @tf.function(reduce_retracing=True)
  def run(batch):
    return model.frame_states(streams_lib.model_inputs(batch, streams), training=False)

  return run


def _partition_batches(config, model, partition: str, protocol: str):
  """(frame states [B, T, D] float64, frame weights [B, T], tracklet positions [B]) of every
  test clip of a partition, and the partition index."""
  from tfreid.training import evaluation  # pylint: disable=import-outside-toplevel
  index, dataset, streams = evaluation.partition_clips(config, partition, protocol)
  run = _frame_function(model, streams)

  def batches():
    for batch in dataset:
      states = np.asarray(run(batch), np.float64)
      if "frame_weight" in batch:
        weights = batch["frame_weight"].numpy().astype(np.float64)
      else:
        weights = np.ones(states.shape[:2])
      yield states, weights, batch["index"].numpy()

  return batches(), index


def training_frames(config, model, protocol: str, max_frames: int = DEFAULT_MAX_FIT_FRAMES,
                    seed: int = 0) -> np.ndarray:
  """The training tracklets' frame states [N, D] (every frame once), or a seeded uniform
  random subset of `max_frames` of them (each frame gets a random key; the smallest keys
  are kept)."""
  rng = np.random.default_rng(seed)
  batches, _ = _partition_batches(config, model, "train", protocol)
  kept, keys = [], []
  for states, weights, _ in batches:
    frames = states[weights > 0]
    kept.append(frames)
    keys.append(rng.random(len(frames)))
    if max_frames > 0 and sum(len(k) for k in keys) > 2 * max_frames:
      kept, keys = _keep_smallest(np.concatenate(kept), np.concatenate(keys), max_frames)
  frames, key = np.concatenate(kept), np.concatenate(keys)
  if max_frames > 0 and len(frames) > max_frames:
    frames = frames[np.argsort(key)[:max_frames]]
  return frames


def _keep_smallest(frames, keys, count):
  order = np.argsort(keys)[:count]
  return [frames[order]], [keys[order]]


def encode_partition(config, model, gmm: DiagonalGMM, partition: str, protocol: str,
                     normalization: str = "none"):
  """(Fisher vectors [N, 2 C D] float32, index) of a partition's tracklets (eq. 10 over
  every frame of the tracklet's test clips, module docstring)."""
  batches, index = _partition_batches(config, model, partition, protocol)
  n = len(index.pids)
  c, d = gmm.means.shape
  first = np.zeros((n, c, d))
  second = np.zeros((n, c, d))
  frames = np.zeros(n)
  for states, weights, positions in batches:
    for b, position in enumerate(positions):
      s1, s2 = frame_sums(gmm, states[b], weights[b])
      first[position] += s1
      second[position] += s2
      frames[position] += weights[b].sum()
  if np.any(frames <= 0):
    missing = np.flatnonzero(frames <= 0)[:5]
    raise RuntimeError(f"partition {partition!r}: tracklets at positions {missing.tolist()} "
                       "produced no frame.")
  return finish(gmm, first, second, frames, normalization).astype(np.float32), index


def run_distances(config, model, protocol: str, components: int = DEFAULT_COMPONENTS,
                  normalization: str = "none", max_fit_frames: int = DEFAULT_MAX_FIT_FRAMES,
                  seed: int = 0):
  """Fits the GMM on the training frames, encodes query and gallery, and returns
  (Euclidean distances [Q, G], query index, gallery index, report details)."""
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"--fv_normalization={normalization!r}; expected one of "
                     f"{NORMALIZATIONS}.")
  _check_model(model)
  fit_frames = training_frames(config, model, protocol, max_fit_frames, seed)
  gmm = fit_gmm(fit_frames, components, seed=seed)
  query, q_index = encode_partition(config, model, gmm, "query", protocol, normalization)
  gallery, g_index = encode_partition(config, model, gmm, "gallery", protocol, normalization)
  details = {"components": int(components), "normalization": normalization,
             "distance": "euclidean", "dimensions": int(query.shape[1]),
             "fitted_on": f"{len(fit_frames)} training frames", "seed": int(seed)}
  from tfreid import metrics  # pylint: disable=import-outside-toplevel
  distances = metrics.compute_distance_matrix(query, gallery, "euclidean", dtype=np.float64)
  return distances, q_index, g_index, details
