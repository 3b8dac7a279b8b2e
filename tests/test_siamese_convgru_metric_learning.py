"""Table VII's metric learning (tfreid.metric_learning) against NumPy loops over every pair:
PCA, KISSME's covariances and metric, LFDA's local scaling, scatter matrices and
generalised eigenvectors, and the distances; bad inputs are refused."""

import numpy as np
import pytest

from tfreid import metric_learning as ml


def _data(seed=0, ids=5, per_id=(1, 4), dim=4):
  rng = np.random.default_rng(seed)
  xs, ys = [], []
  for label in range(ids):
    centre = rng.normal(size=dim) * 3.0
    for _ in range(rng.integers(per_id[0], per_id[1] + 1)):
      xs.append(centre + rng.normal(size=dim))
      ys.append(label * 7 + 2)  # labels need not be 0..C-1
  return np.array(xs), np.array(ys)


def test_kissme_covariances_and_metric_equal_a_loop_over_every_pair():
  x, y = _data()
  sim, dis = [], []
  for i in range(len(x)):
    for j in range(i + 1, len(x)):
      d = x[i] - x[j]
      (sim if y[i] == y[j] else dis).append(np.outer(d, d))
  sigma_s, sigma_d = ml.kissme_covariances(x, y)
  np.testing.assert_allclose(sigma_s, np.mean(sim, axis=0), rtol=1e-10)
  np.testing.assert_allclose(sigma_d, np.mean(dis, axis=0), rtol=1e-10)
  raw = np.linalg.inv(np.mean(sim, axis=0)) - np.linalg.inv(np.mean(dis, axis=0))
  values, vectors = np.linalg.eigh(raw)
  expected = vectors @ np.diag(np.clip(values, 0, None)) @ vectors.T
  np.testing.assert_allclose(ml.fit_kissme(x, y), expected, rtol=1e-4, atol=1e-8)
  m = ml.fit_kissme(x, y)
  q, g = x[:3], x[3:]
  loop = np.array([[(a - b) @ m @ (a - b) for b in g] for a in q])
  np.testing.assert_allclose(ml.mahalanobis_distances(q, g, m), loop, rtol=1e-9, atol=1e-12)


def test_kissme_hand_case_two_axes():
  """Same-identity pairs differ only along axis 0 (by +-1), different identities along
  axis 1 (by +-4) and axis 0: Sigma_S = diag(1, 0) + ridge, and the metric keeps axis 1
  (where the classes differ) and gives axis 0 weight 0 after the PSD projection."""
  x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 4.0], [1.0, 4.0]])
  y = np.array([0, 0, 1, 1])
  sigma_s, sigma_d = ml.kissme_covariances(x, y)
  np.testing.assert_allclose(sigma_s, [[1.0, 0.0], [0.0, 0.0]])
  # Different pairs: (0,0)-(0,4), (0,0)-(1,4), (1,0)-(0,4), (1,0)-(1,4).
  np.testing.assert_allclose(sigma_d, [[0.5, 0.0], [0.0, 16.0]])
  m = ml.fit_kissme(x, y)
  assert m[0, 0] == pytest.approx(0.0, abs=1e-9)  # 1/1 - 1/0.5 < 0: projected away
  assert m[1, 1] > 1e3  # 1/ridge - 1/16: the axis that separates identities


def test_pca_keeps_the_top_directions():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
  pca = ml.fit_pca(x, 2)
  cov = np.cov(x - x.mean(0), rowvar=False)
  values, vectors = np.linalg.eigh(cov)
  top = vectors[:, np.argsort(values)[::-1][:2]]
  np.testing.assert_allclose(np.abs(pca.components.T @ top), np.eye(2), atol=1e-8)
  np.testing.assert_allclose(pca(x), (x - x.mean(0)) @ pca.components)
  assert ml.fit_pca(x[:3], 150).components.shape == (6, 2)  # N - 1 directions at most


def _lfda_loops(x, y, knn):
  n = len(x)
  d = np.array([[np.linalg.norm(a - b) for b in x] for a in x])
  sigma = np.zeros(n)
  for i in range(n):
    same = sorted(d[i, j] for j in range(n) if y[j] == y[i] and j != i)
    sigma[i] = same[min(knn, len(same)) - 1] if same else 1.0
  w_lb = np.zeros((n, n))
  w_lw = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      if y[i] == y[j]:
        n_c = np.sum(y == y[i])
        a = np.exp(-d[i, j] ** 2 / (sigma[i] * sigma[j])) if i != j else 1.0
        w_lw[i, j] = a / n_c
        w_lb[i, j] = a * (1.0 / n - 1.0 / n_c)
      else:
        w_lb[i, j] = 1.0 / n
  s_lb = sum(0.5 * w_lb[i, j] * np.outer(x[i] - x[j], x[i] - x[j])
             for i in range(n) for j in range(n))
  s_lw = sum(0.5 * w_lw[i, j] * np.outer(x[i] - x[j], x[i] - x[j])
             for i in range(n) for j in range(n))
  return s_lb, s_lw


@pytest.mark.parametrize("knn", [1, 2, 7])
def test_lfda_scatters_equal_the_pairwise_weights_of_sugiyama(knn):
  x, y = _data(seed=2)
  s_lb, s_lw = ml.lfda_scatters(x, y, knn=knn)
  ref_lb, ref_lw = _lfda_loops(x, y, knn)
  np.testing.assert_allclose(s_lw, ref_lw, rtol=1e-9, atol=1e-10)
  np.testing.assert_allclose(s_lb, ref_lb, rtol=1e-9, atol=1e-10)


def test_lfda_transform_solves_the_generalised_eigenproblem():
  x, y = _data(seed=3, ids=6, per_id=(2, 5), dim=5)
  s_lb, s_lw = _lfda_loops(x, y, 7)
  t = ml.fit_lfda(x, y, dim=3)
  assert t.shape == (5, 3)
  s_lw_r = s_lw + ml.RIDGE * np.trace(s_lw) / 5 * np.eye(5)
  lams = []
  for k in range(3):
    phi = t[:, k]
    lam = (phi @ s_lb @ phi) / (phi @ s_lw_r @ phi)
    np.testing.assert_allclose(s_lb @ phi, lam * s_lw_r @ phi, rtol=1e-6, atol=1e-8)
    # Weighted embedding: phi^T S^lw phi = lambda (unit vector times sqrt(lambda)).
    assert phi @ s_lw_r @ phi == pytest.approx(lam, rel=1e-6)
    lams.append(lam)
  generalised = np.sort(np.real(np.linalg.eigvals(np.linalg.solve(s_lw_r, s_lb))))[::-1]
  np.testing.assert_allclose(lams, generalised[:3], rtol=1e-6)


def test_fit_metric_ranks_the_same_identity_first_and_refuses_bad_input():
  x, y = _data(seed=4, ids=6, per_id=(3, 3), dim=6)
  for method in ml.METHODS:
    distance = ml.fit_metric(method, x, y, pca_dim=4)
    d = distance(x, x)
    assert d.shape == (len(x), len(x))
    np.fill_diagonal(d, np.inf)
    assert np.mean(y[np.argmin(d, axis=1)] == y) > 0.8
  with pytest.raises(ValueError, match="expected one of"):
    ml.fit_metric("itml", x, y)
  with pytest.raises(ValueError, match="at least 2 identities"):
    ml.kissme_covariances(x, np.zeros(len(x)))
  with pytest.raises(ValueError, match="similar pair"):
    ml.kissme_covariances(x[:4], np.arange(4))
  with pytest.raises(ValueError, match=r"features \[N, D\]"):
    ml.fit_kissme(x[0], y)
