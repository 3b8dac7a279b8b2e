"""Metric learning on a trained run's tracklet features, for evaluation only: PCA, then LFDA
or KISSME fitted on the training partition's features (siamese_convgru table VII: "Ours +
LFDA", "Ours + KISSME", features reduced to 150 dimensions by PCA first).

    python -m tfreid.metric_learning --model_dir=runs/sc --method=kissme
    python -m tfreid.metric_learning --model_dir=runs/sc --method=lfda --pca_dim=150
    python -m tfreid.metric_learning --model_dir=runs/sc --method=fisher_vector --components=16

`--method=fisher_vector` is eq. 10's Fisher-vector pooling of the frame-level states (table
IV, evaluation only): tfreid.fisher_vector, which fits its GMM on the training frames and
ranks by the Euclidean distance between Fisher vectors; the rest (the reports) is shared.

The run's model gives every training, query and gallery tracklet its ``embedding`` (the
same extraction as `python -m tfreid.evaluate`: every test clip, merged per tracklet); the
metric is fitted on the training tracklets and ranks query against gallery. Reports go to
MODEL_DIR/eval_<method> (metrics.json, metrics.md, as `tfreid.evaluate` writes).

- PCA: x -> P^T (x - mean), P the top `pca_dim` eigenvectors of the training covariance.
- KISSME (Koestinger et al., "Large Scale Metric Learning from Equivalence Constraints",
  CVPR 2012): M = Sigma_S^-1 - Sigma_D^-1, with Sigma_S (Sigma_D) the mean of
  (x_i - x_j)(x_i - x_j)^T over every pair of training tracklets of the same (different)
  identity, then projected on the positive semi-definite cone (negative eigenvalues set to
  0, as the paper's code re-projects M); d(q, g) = (q - g)^T M (q - g). Every pair is
  counted without being listed: over a group of n vectors with sum s,
  sum_{i<j} (x_i - x_j)(x_i - x_j)^T = n sum_i x_i x_i^T - s s^T.
- LFDA (Sugiyama, "Dimensionality Reduction of Multimodal Labeled Data by Local Fisher
  Discriminant Analysis", JMLR 2007; used for re-identification by Pedagadi et al., CVPR
  2013): affinities A_ij = exp(-||x_i - x_j||^2 / (sigma_i sigma_j)) between tracklets of
  the same identity, sigma_i the distance from x_i to its k-th nearest neighbour of that
  identity (local scaling, k = 7 as in Sugiyama's code); weights
  W^lw_ij = A_ij / n_c and W^lb_ij = A_ij (1/n - 1/n_c) for y_i = y_j = c, W^lw_ij = 0 and
  W^lb_ij = 1/n otherwise; scatters S = 1/2 sum_ij W_ij (x_i - x_j)(x_i - x_j)^T; the
  generalised eigenvectors S^lb phi = lambda S^lw phi of the `dim` largest lambda, each
  scaled by sqrt(lambda) (Sugiyama's "weighted" embedding); d(q, g) = ||T^T (q - g)||^2.

Library choices (not in the papers above): a ridge of 1e-6 times the mean eigenvalue on
Sigma_S, Sigma_D and S^lw, so that a rank-deficient training set still inverts; an identity
with one tracklet gives no similar pair and only its own sigma (0 affinity to nobody).
"""

from __future__ import annotations

import dataclasses

if __name__ == "__main__":
  from tfreid import console as _console  # pylint: disable=ungrouped-imports
  _console.quiet_tensorflow_start()

import numpy as np  # pylint: disable=wrong-import-position

from tfreid import fisher_vector  # pylint: disable=wrong-import-position

METHODS = ("kissme", "lfda")
# The CLI's methods: the metrics above and table IV's Fisher-vector pooling.
CLI_METHODS = METHODS + ("fisher_vector",)
RIDGE = 1e-6


def _ridge(matrix: np.ndarray) -> np.ndarray:
  d = matrix.shape[0]
  scale = max(float(np.trace(matrix)) / d, 1e-12)
  return matrix + RIDGE * scale * np.eye(d)


def _check(features, labels) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(features, np.float64)
  y = np.asarray(labels).reshape(-1)
  if x.ndim != 2 or len(x) != len(y):
    raise ValueError(f"metric learning needs features [N, D] and N labels, got "
                     f"{x.shape} and {y.shape}.")
  if len(np.unique(y)) < 2:
    raise ValueError("metric learning needs at least 2 identities in the training features.")
  return x, y


@dataclasses.dataclass
class PCA:
  """x -> components^T (x - mean)."""
  mean: np.ndarray
  components: np.ndarray  # [D, k]

  def __call__(self, x) -> np.ndarray:
    return (np.asarray(x, np.float64) - self.mean) @ self.components


def fit_pca(features, dim: int) -> PCA:
  """The top `dim` principal directions of the features (fewer when N - 1 or D is
  smaller; dim <= 0 keeps every direction)."""
  x = np.asarray(features, np.float64)
  mean = x.mean(axis=0)
  _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
  keep = min(len(x) - 1, x.shape[1]) if dim <= 0 else min(dim, len(x) - 1, x.shape[1])
  return PCA(mean, vt[:keep].T)


def pair_scatter(x: np.ndarray) -> tuple[np.ndarray, int]:
  """(sum over the unordered pairs i < j of (x_i - x_j)(x_i - x_j)^T, number of pairs)."""
  n = len(x)
  s = x.sum(axis=0)
  return n * (x.T @ x) - np.outer(s, s), n * (n - 1) // 2


def kissme_covariances(features, labels) -> tuple[np.ndarray, np.ndarray]:
  """(Sigma_S, Sigma_D): the mean outer product of the differences of same-identity and of
  different-identity pairs (module docstring)."""
  x, y = _check(features, labels)
  total, total_pairs = pair_scatter(x)
  similar = np.zeros_like(total)
  similar_pairs = 0
  for label in np.unique(y):
    scatter, pairs = pair_scatter(x[y == label])
    similar += scatter
    similar_pairs += pairs
  if similar_pairs == 0:
    raise ValueError("KISSME needs an identity with at least 2 training tracklets (a similar "
                     "pair); every identity has one.")
  return similar / similar_pairs, (total - similar) / (total_pairs - similar_pairs)


def fit_kissme(features, labels) -> np.ndarray:
  """M = Sigma_S^-1 - Sigma_D^-1 projected on the positive semi-definite cone, [D, D]."""
  sigma_s, sigma_d = kissme_covariances(features, labels)
  m = np.linalg.inv(_ridge(sigma_s)) - np.linalg.inv(_ridge(sigma_d))
  m = 0.5 * (m + m.T)
  values, vectors = np.linalg.eigh(m)
  return (vectors * np.maximum(values, 0.0)) @ vectors.T


def mahalanobis_distances(query, gallery, metric: np.ndarray) -> np.ndarray:
  """(q - g)^T M (q - g) for every pair, [Q, G] (clipped at 0 against rounding)."""
  q = np.asarray(query, np.float64)
  g = np.asarray(gallery, np.float64)
  qm = q @ metric
  d = (np.sum(qm * q, axis=1)[:, None] + np.sum((g @ metric) * g, axis=1)[None, :]
       - 2.0 * qm @ g.T)
  return np.maximum(d, 0.0)


def local_affinity(x: np.ndarray, knn: int = 7) -> np.ndarray:
  """LFDA's A within one identity: exp(-||x_i - x_j||^2 / (sigma_i sigma_j)), sigma_i the
  distance to the k-th nearest other tracklet (the farthest one when there are fewer)."""
  n = len(x)
  squared = np.maximum(np.sum(x * x, 1)[:, None] + np.sum(x * x, 1)[None, :]
                       - 2.0 * x @ x.T, 0.0)
  if n == 1:
    return np.ones((1, 1))
  ordered = np.sort(np.sqrt(squared), axis=1)  # column 0: the tracklet itself
  sigma = np.maximum(ordered[:, min(knn, n - 1)], 1e-12)
  return np.exp(-squared / np.outer(sigma, sigma))


def lfda_scatters(features, labels, knn: int = 7) -> tuple[np.ndarray, np.ndarray]:
  """(S^lb, S^lw) of LFDA (module docstring), computed identity by identity:
  S^lw = sum_c X_c^T L(A_c) X_c / n_c and S^lb = (1/n) S(B) - S^lw, where L(W) = diag(W 1)
  - W and B_ij = A_ij within an identity, 1 across identities."""
  x, y = _check(features, labels)
  n = len(x)
  s_all, _ = pair_scatter(x)
  s_lw = np.zeros_like(s_all)
  s_b = s_all.copy()
  for label in np.unique(y):
    xc = x[y == label]
    a = local_affinity(xc, knn)
    laplacian = np.diag(a.sum(axis=1)) - a
    within = xc.T @ laplacian @ xc
    s_lw += within / len(xc)
    ones, _ = pair_scatter(xc)
    s_b += within - ones
  return s_b / n - s_lw, s_lw


def fit_lfda(features, labels, dim: int = 0, knn: int = 7) -> np.ndarray:
  """The LFDA transform T [D, dim] (dim <= 0: D): generalised eigenvectors of
  S^lb phi = lambda S^lw phi for the largest lambda, phi^T S^lw phi = 1, each scaled by
  sqrt(lambda) (clipped at 0)."""
  s_lb, s_lw = lfda_scatters(features, labels, knn)
  s_lb = 0.5 * (s_lb + s_lb.T)
  s_lw = _ridge(0.5 * (s_lw + s_lw.T))
  # Whiten S^lw (Cholesky), then an ordinary symmetric eigenproblem.
  chol = np.linalg.cholesky(s_lw)
  inv = np.linalg.inv(chol)
  values, vectors = np.linalg.eigh(inv @ s_lb @ inv.T)
  order = np.argsort(values)[::-1]
  keep = order[: (len(values) if dim <= 0 else min(dim, len(values)))]
  phi = inv.T @ vectors[:, keep]
  return phi * np.sqrt(np.maximum(values[keep], 0.0))


def fit_metric(method: str, train_features, train_labels, pca_dim: int = 150):
  """A function (query [Q, D], gallery [G, D]) -> distances [Q, G], fitted on the training
  features: PCA to `pca_dim`, then `method` (kissme | lfda)."""
  if method not in METHODS:
    raise ValueError(f"metric learning method {method!r}; expected one of {METHODS}.")
  pca = fit_pca(train_features, pca_dim)
  z = pca(train_features)
  if method == "kissme":
    metric = fit_kissme(z, train_labels)
    return lambda q, g: mahalanobis_distances(pca(q), pca(g), metric)
  transform = fit_lfda(z, train_labels)
  return lambda q, g: mahalanobis_distances(pca(q) @ transform, pca(g) @ transform,
                                            np.eye(transform.shape[1]))


def evaluate_run(model_dir: str, method: str, pca_dim: int = 150, checkpoint="latest",
                 output_dir: str | None = None, components: int | None = None,
                 fv_normalization: str = "none",
                 max_fit_frames: int = fisher_vector.DEFAULT_MAX_FIT_FRAMES,
                 seed: int = 0) -> dict:
  """Fits `method` on the run's training features and evaluates query against gallery
  (the run's dataset, split and protocol); writes MODEL_DIR/eval_<method> (or
  `output_dir`). Returns the metrics.json record. `components`, `fv_normalization`,
  `max_fit_frames` and `seed` are fisher_vector's (tfreid.fisher_vector)."""
  import os  # pylint: disable=import-outside-toplevel

  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  from tfreid import evaluate  # pylint: disable=import-outside-toplevel
  from tfreid import metrics  # pylint: disable=import-outside-toplevel
  from tfreid.training import checkpoints  # pylint: disable=import-outside-toplevel
  from tfreid.training import evaluation  # pylint: disable=import-outside-toplevel

  config_path = os.path.join(model_dir, "config.yaml")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} does not exist: {model_dir!r} is not a training "
                            "directory written by `python -m tfreid.train`.")
  if method not in CLI_METHODS:
    raise ValueError(f"--method={method!r}; expected one of {CLI_METHODS}.")
  config = cfg.load_config(config_path)
  path = checkpoints.resolve_checkpoint(model_dir, checkpoint)
  model, step = evaluate.restore_model(config, path,
                                       evaluate.num_training_identities(config, path))
  manifest_protocol, metric_protocol = evaluation.resolve_protocol(config)
  if method == "fisher_vector":
    distmat, q_index, g_index, details = fisher_vector.run_distances(
        config, model, manifest_protocol,
        fisher_vector.DEFAULT_COMPONENTS if components is None else components,
        fv_normalization, max_fit_frames, seed)
    details = {"fisher_vector": details}
  else:
    train, t_index = evaluation.extract_features(config, model, "train", manifest_protocol)
    query, q_index = evaluation.extract_features(config, model, "query", manifest_protocol)
    gallery, g_index = evaluation.extract_features(config, model, "gallery",
                                                   manifest_protocol)
    distance = fit_metric(method, train["embedding"], t_index.pids, pca_dim)
    distmat = distance(query["embedding"], gallery["embedding"])
    details = {"metric_learning": {"method": method, "pca_dim": int(pca_dim),
                                   "fitted_on": f"{len(t_index.pids)} training tracklets"}}
  result = metrics.evaluate_rank(distmat, q_index.pids, g_index.pids, q_index.camids,
                                 g_index.camids, max_rank=config.eval.max_rank,
                                 protocol=metric_protocol)
  evaluation_result = {"summary": metrics.summarize(result), "result": result,
                       "distmat": distmat, "query_index": q_index, "gallery_index": g_index,
                       "protocol": manifest_protocol, "rerank": False}
  out_dir = output_dir or os.path.join(model_dir, f"eval_{method}")
  writer = tf.summary.create_file_writer(out_dir)
  record = evaluation.write_reports(
      config, evaluation_result, out_dir, 0 if step is None else step, writer=writer,
      extra={**details, "checkpoint": path})
  writer.close()
  return record


def main(argv=None) -> int:
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--method", choices=CLI_METHODS, required=True)
  parser.add_argument("--pca_dim", type=int, default=150, help="kissme, lfda")
  parser.add_argument("--components", type=int, default=None,
                      help="fisher_vector: GMM components C (library default 16; the paper "
                      "does not give C)")
  parser.add_argument("--fv_normalization", default="none",
                      choices=fisher_vector.NORMALIZATIONS,
                      help="fisher_vector: none (eq. 10, default) or the library's signed "
                      "square root + L2")
  parser.add_argument("--max_fit_frames", type=int,
                      default=fisher_vector.DEFAULT_MAX_FIT_FRAMES,
                      help="fisher_vector: training frames the GMM is fitted on (a seeded "
                      "random subset when there are more; 0: all)")
  parser.add_argument("--seed", type=int, default=0, help="fisher_vector: GMM seed")
  parser.add_argument("--checkpoint", default="latest")
  parser.add_argument("--output_dir", default=None)
  args = parser.parse_args(argv)
  if args.components is not None and args.method != "fisher_vector":
    parser.error("--components is fisher_vector's; drop it or use --method=fisher_vector.")
  record = evaluate_run(args.model_dir, args.method, args.pca_dim, args.checkpoint,
                        args.output_dir, components=args.components,
                        fv_normalization=args.fv_normalization,
                        max_fit_frames=args.max_fit_frames, seed=args.seed)
  from tfreid import evaluate  # pylint: disable=import-outside-toplevel
  print(evaluate.format_summary(record))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
