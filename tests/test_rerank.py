"""k-reciprocal re-ranking against a plain loop-based reading of the paper."""

import numpy as np
import pytest

from tfreid.metrics import compute_distance_matrix, re_ranking
from tfreid.metrics.rerank import smallest_k_stable


def _loop_rerank(q_g, q_q, g_g, k1, k2, lam):
  """Dense, set-based k-reciprocal re-ranking (Zhong et al., CVPR 2017), one item at a time."""
  num_q = q_g.shape[0]
  full = np.block([[q_q, q_g], [q_g.T, g_g]])
  n = full.shape[0]
  squared = np.square(full).astype(np.float32)
  # Row i of the working distance is column i of the squared matrix over its maximum.
  d = np.stack([squared[:, i] / squared[:, i].max() for i in range(n)])
  ranking = [list(np.argsort(d[i], kind="stable")) for i in range(n)]

  def reciprocal(i, k):
    return [j for j in ranking[i][:k + 1] if i in ranking[j][:k + 1]]

  v = np.zeros((n, n))
  for i in range(n):
    base = reciprocal(i, k1)
    expanded = set(base)
    for c in base:
      candidate = reciprocal(c, int(np.around(k1 / 2)))
      if len(set(candidate) & set(base)) > 2 / 3 * len(candidate):
        expanded |= set(candidate)
    members = sorted(expanded)
    weights = np.exp(-d[i, members].astype(np.float64))
    v[i, members] = weights / weights.sum()
  if k2 != 1:
    v = np.stack([v[ranking[i][:k2]].mean(axis=0) for i in range(n)])
  jaccard = np.zeros(q_g.shape)
  for i in range(num_q):
    for j in range(q_g.shape[1]):
      a, b = v[i], v[num_q + j]
      jaccard[i, j] = 1 - np.minimum(a, b).sum() / np.maximum(a, b).sum()
  return (1 - lam) * jaccard + lam * d[:num_q, num_q:]


def _clustered(seed, num_q, num_g):
  rng = np.random.default_rng(seed)
  num_ids = max(2, (num_q + num_g) // 5)
  centres = rng.standard_normal((num_ids, 6))
  features = centres[rng.integers(0, num_ids, num_q + num_g)]
  features = features + 0.6 * rng.standard_normal(features.shape)
  q, g = features[:num_q], features[num_q:]
  return tuple(compute_distance_matrix(a, b, dtype=np.float64) for a, b in ((q, g), (q, q), (g, g)))


@pytest.mark.parametrize("num_q, num_g, k1, k2, lam", [
    (5, 12, 4, 3, 0.3),
    (6, 25, 20, 6, 0.3),   # the paper's parameters
    (4, 9, 20, 6, 0.3),    # fewer items than k1 + 1
    (8, 30, 5, 1, 0.5),    # no local query expansion
    (7, 20, 3, 2, 0.0),    # Jaccard distance only
])
def test_matches_loop_implementation(num_q, num_g, k1, k2, lam):
  q_g, q_q, g_g = _clustered(num_q * 100 + num_g, num_q, num_g)
  got = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
  assert got.shape == (num_q, num_g) and got.dtype == np.float32
  np.testing.assert_allclose(got, _loop_rerank(q_g, q_q, g_g, k1, k2, lam), atol=2e-6)


def test_asymmetric_learned_distances():
  rng = np.random.default_rng(11)
  q_g = rng.random((6, 15)) + 0.1
  q_q, g_g = rng.random((6, 6)) + 0.1, rng.random((15, 15)) + 0.1
  np.fill_diagonal(q_q, 0)
  np.fill_diagonal(g_g, 0)
  got = re_ranking(q_g, q_q, g_g, k1=4, k2=2)
  np.testing.assert_allclose(got, _loop_rerank(q_g, q_q, g_g, 4, 2, 0.3), atol=2e-6)


def test_block_size_does_not_change_the_result():
  q_g, q_q, g_g = _clustered(5, 9, 31)
  np.testing.assert_array_equal(re_ranking(q_g, q_q, g_g, k1=6, k2=3, block_size=4),
                                re_ranking(q_g, q_q, g_g, k1=6, k2=3))


def test_smallest_k_stable_equals_stable_argsort_with_ties():
  rng = np.random.default_rng(2)
  block = rng.integers(0, 5, (20, 17)).astype(np.float32)
  for k in (1, 4, 9, 17, 30):
    np.testing.assert_array_equal(smallest_k_stable(block, k),
                                  np.argsort(block, axis=1, kind="stable")[:, :k])


def test_bad_input_raises():
  q_g, q_q, g_g = _clustered(1, 3, 5)
  with pytest.raises(ValueError, match=r"g_g_dist has shape \(4, 4\), expected \[5, 5\]"):
    re_ranking(q_g, q_q, g_g[:4, :4])
  with pytest.raises(ValueError, match=r"q_q_dist has shape \(3, 5\)"):
    re_ranking(q_g, q_g, g_g)
  bad = q_g.copy()
  bad[1, 2] = np.nan
  with pytest.raises(ValueError, match="q_g_dist holds NaN or Inf"):
    re_ranking(bad, q_q, g_g)
  with pytest.raises(ValueError, match="k1 must be a positive integer"):
    re_ranking(q_g, q_q, g_g, k1=0)
  with pytest.raises(ValueError, match=r"lambda_value must be in \[0, 1\]"):
    re_ranking(q_g, q_q, g_g, lambda_value=1.5)
  with pytest.raises(ValueError, match="at least one query and one gallery"):
    re_ranking(q_g[:, :0], q_q, np.zeros((0, 0)))
  with pytest.raises(ValueError, match="All distances of item 0"):
    re_ranking(np.zeros((1, 2)), np.zeros((1, 1)), np.ones((2, 2)))
