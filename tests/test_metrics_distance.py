"""Block-wise distance matrices against the direct formulas, the learned-metric hook, errors."""

import numpy as np
import pytest

from tfreid.metrics import compute_distance_matrix


def _features(seed=0, num_q=7, num_g=11, dim=5):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((num_q, dim)).astype(np.float32),
          rng.standard_normal((num_g, dim)).astype(np.float32))


def _direct(metric, q, g):
  q, g = q.astype(np.float64), g.astype(np.float64)
  diff = q[:, None, :] - g[None, :, :]
  if metric == "euclidean":
    return np.sqrt((diff ** 2).sum(-1))
  if metric == "sqeuclidean":
    return (diff ** 2).sum(-1)
  cos = (q[:, None, :] * g[None, :, :]).sum(-1) / (
      np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(g, axis=1)[None, :])
  return 1 - cos


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("blocks", [(3, 4), (2, 11), (100, 100)])
def test_blocks_equal_direct_formula(metric, blocks):
  q, g = _features()
  got = compute_distance_matrix(q, g, metric, block_size=blocks[0],
                                gallery_block_size=blocks[1], dtype=np.float64)
  assert got.shape == (7, 11) and got.dtype == np.float64
  np.testing.assert_allclose(got, _direct(metric, q, g), rtol=1e-10, atol=1e-10)


def test_default_output_is_float32():
  q, g = _features(1)
  got = compute_distance_matrix(q, g)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, _direct("euclidean", q, g), rtol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_float32_computation(metric):
  q, g = _features(3, dim=64)
  got = compute_distance_matrix(q, g, metric, block_size=4, compute_dtype=np.float32)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, _direct(metric, q, g), rtol=1e-4, atol=1e-5)


def test_identical_vectors_have_zero_distance():
  q, _ = _features(2)
  got = compute_distance_matrix(q, q * 1, "euclidean", dtype=np.float64)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(np.diag(got), 0.0, atol=1e-6)


def test_learned_metric_with_dict_features_is_sliced_per_block():
  rng = np.random.default_rng(4)
  query = {"parts": rng.random((5, 3, 2)), "weights": rng.random((5, 3))}
  gallery = {"parts": rng.random((8, 3, 2)), "weights": rng.random((8, 3))}
  calls = []

  def pairwise(q_block, g_block):
    calls.append((q_block["parts"].shape[0], g_block["weights"].shape[0]))
    diff = np.abs(q_block["parts"][:, None] - g_block["parts"][None]).sum(-1)  # [bq, bg, 3]
    return (diff * q_block["weights"][:, None, :] * g_block["weights"][None, :, :]).sum(-1)

  got = compute_distance_matrix(query, gallery, "learned", pairwise_fn=pairwise, block_size=2,
                                gallery_block_size=3, dtype=np.float64)
  expected = np.zeros((5, 8))
  for i in range(5):
    for j in range(8):
      expected[i, j] = sum(
          np.abs(query["parts"][i, r] - gallery["parts"][j, r]).sum()
          * query["weights"][i, r] * gallery["weights"][j, r] for r in range(3))
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  assert calls == [(2, 3), (2, 3), (2, 2), (2, 3), (2, 3), (2, 2), (1, 3), (1, 3), (1, 2)]


def test_learned_metric_with_arrays():
  q, g = _features(5)
  got = compute_distance_matrix(q, g, "learned", block_size=4, dtype=np.float64,
                                pairwise_fn=lambda a, b: _direct("cosine", a, b))
  np.testing.assert_allclose(got, _direct("cosine", q, g), rtol=1e-12)


@pytest.mark.parametrize("where", ["query", "gallery"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_raise(where, bad):
  q, g = _features(6)
  target = q if where == "query" else g
  target[4, 1] = bad
  with pytest.raises(ValueError, match=f"{where}_features holds NaN or Inf.*tracklet 4"):
    compute_distance_matrix(q, g, block_size=3)
  dict_q, dict_g = {"f": q}, {"f": g}
  with pytest.raises(ValueError, match=rf"{where}_features\['f'\] holds NaN or Inf"):
    compute_distance_matrix(dict_q, dict_g, "learned", pairwise_fn=lambda a, b: None)


def test_bad_arguments_raise():
  q, g = _features(7)

  def fn(a, b):
    return np.zeros((a.shape[0], b.shape[0]))

  cases = [
      (lambda: compute_distance_matrix(q, g, "manhattan"), "Unknown distance metric"),
      (lambda: compute_distance_matrix(q, g, "learned"), "needs pairwise_fn"),
      (lambda: compute_distance_matrix(q, g, "cosine", pairwise_fn=fn),
       "pairwise_fn is only used with metric='learned'"),
      (lambda: compute_distance_matrix(q, g[:, :3]), "dimension 5 but gallery .* 3"),
      (lambda: compute_distance_matrix(q, g[:0]), "gallery is empty"),
      (lambda: compute_distance_matrix(q[:0], g), "query_features holds no tracklet"),
      (lambda: compute_distance_matrix(q, g, block_size=0), "block_size must be a positive"),
      (lambda: compute_distance_matrix(q[0], g), "must be a 2-D array"),
      (lambda: compute_distance_matrix(q, g, "learned", block_size=3,
                                       pairwise_fn=lambda a, b: np.zeros((2, 2))),
       r"returned shape \(2, 2\) for 3 query and 3 gallery"),
      (lambda: compute_distance_matrix(q, g, "learned",
                                       pairwise_fn=lambda a, b: np.full((7, 11), np.nan)),
       "pairwise_fn returned NaN or Inf"),
      (lambda: compute_distance_matrix({"a": q, "b": g}, {"a": g}, "learned", pairwise_fn=fn),
       "same leading .* axis"),
  ]
  for call, message in cases:
    with pytest.raises(ValueError, match=message):
      call()


def test_cosine_of_a_zero_vector_raises():
  q, g = _features(8)
  g[3] = 0
  with pytest.raises(ValueError, match="all-zero feature vector.*index 3"):
    compute_distance_matrix(q, g, "cosine")
