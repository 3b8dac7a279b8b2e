"""Query x gallery distance matrices, computed block by block.

Built-in metrics, for features `q` [Q, D] and `g` [G, D]:

* ``"euclidean"``:    ``||q - g||_2``
* ``"sqeuclidean"``:  ``||q - g||_2^2`` (torchreid's "euclidean" metric)
* ``"cosine"``:       ``1 - q.g / (||q|| ||g||)``

The matrix is filled in [block_size x gallery_block_size] tiles; each tile is computed
(in float64 by default) from copies of its rows only, so memory beyond the output stays
bounded by the tile size however large the gallery is (a gallery 10x MARS needs no
full-size float64 intermediate). The output itself can be a file-backed ``np.memmap``
(`out=`) when the matrix is larger than memory; `evaluate_rank` reads such a matrix a block
of queries at a time. The expansion ``|q|^2 + |g|^2 - 2 q.g`` can come out
slightly negative for (near-)identical vectors; it is clipped at 0.

Learned metrics (``metric="learned"``): a model with its own pairwise metric (STAL,
siamese ConvGRU) provides ``pairwise_fn(query_block, gallery_block) -> [bq, bg]``. The
features are then arrays, or dicts of arrays whose leading axis is the tracklet axis
(e.g. ``{"parts": [N, R, D], "scores": [N, T, R]}``); every value is sliced per block.
The function may return a numpy array or a tensor.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

METRICS = ("euclidean", "sqeuclidean", "cosine", "learned")


def _num_rows(name: str, features: Any) -> int:
  """Number of tracklets in an array or a dict of arrays (leading axis), checked."""
  if isinstance(features, Mapping):
    if not features:
      raise ValueError(f"{name} is an empty dict: expected arrays with a leading tracklet axis.")
    lengths = {key: np.shape(value)[0] if np.ndim(value) else None
               for key, value in features.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
      raise ValueError(
          f"Every value of {name} must have the same leading (tracklet) axis; got leading "
          f"sizes {lengths}.")
    return next(iter(lengths.values()))
  if np.ndim(features) == 0:
    raise ValueError(f"{name} must be an array with a leading tracklet axis, got a scalar.")
  return np.shape(features)[0]


def _check_finite(name: str, features: Any) -> None:
  """Raises a ValueError naming the first tracklet whose features hold NaN or Inf."""
  items = features.items() if isinstance(features, Mapping) else [(None, features)]
  for key, value in items:
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.floating)
            or np.issubdtype(array.dtype, np.complexfloating)):
      continue
    finite = np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1) if array.ndim \
        else np.array([np.isfinite(array)])
    if not finite.all():
      where = f"{name}[{key!r}]" if key is not None else name
      bad = np.flatnonzero(~finite)
      raise ValueError(
          f"{where} holds NaN or Inf values in {bad.size} tracklet(s), first at index "
          f"{bad[0]}: the model produced non-finite features; fix them before computing "
          "distances.")


def _check_finite_rows(name: str, rows: np.ndarray, offset: int) -> None:
  """Raises a ValueError when a row of a [n, D] feature block holds NaN or Inf."""
  finite = np.isfinite(rows).all(axis=1)
  if not finite.all():
    raise ValueError(
        f"{name} holds NaN or Inf values, first in tracklet {offset + np.argmin(finite)}: "
        "the model produced non-finite features; fix them before computing distances.")


def _slice(features: Any, start: int, stop: int) -> Any:
  if isinstance(features, Mapping):
    return {key: value[start:stop] for key, value in features.items()}
  return features[start:stop]


def _check_matrix(name: str, features: Any) -> np.ndarray:
  array = np.asarray(features)
  if array.ndim != 2:
    raise ValueError(f"{name} must be a 2-D array [num_tracklets, dim] for the built-in "
                     f"metrics, got shape {array.shape}.")
  if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
    raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}.")
  return array


def _check_block_size(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  return int(value)


def _tile(metric: str, q: np.ndarray, g: np.ndarray, q_sq: np.ndarray, g_sq: np.ndarray):
  """One tile of a built-in metric; q_sq/g_sq are squared norms of the rows."""
  dot = q @ g.T
  if metric == "cosine":
    return 1.0 - dot / np.sqrt(q_sq[:, None] * g_sq[None, :])
  squared = q_sq[:, None] + g_sq[None, :] - 2.0 * dot
  np.maximum(squared, 0.0, out=squared)
  if metric == "euclidean":
    np.sqrt(squared, out=squared)
  return squared


def compute_distance_matrix(query_features, gallery_features, metric: str = "euclidean",
                            pairwise_fn: Callable[[Any, Any], Any] | None = None,
                            block_size: int = 2048, gallery_block_size: int | None = None,
                            dtype=np.float32, compute_dtype=np.float64,
                            out: np.ndarray | None = None) -> np.ndarray:
  """Distance between every query and every gallery tracklet (smaller = more similar).

  Args:
    query_features: [Q, D] array (built-in metrics), or for ``metric="learned"`` an array
      or a dict of arrays with leading axis Q.
    gallery_features: the same for the G gallery tracklets.
    metric: "euclidean", "sqeuclidean", "cosine" or "learned".
    pairwise_fn: required with ``metric="learned"`` (and only then): the model's
      ``pairwise_distance(query_block, gallery_block) -> [bq, bg]``.
    block_size: query rows per tile.
    gallery_block_size: gallery columns per tile (default: `block_size`).
    dtype: dtype of the returned matrix (float32 halves its memory).
    compute_dtype: dtype the built-in metrics' tiles are computed in. float64 (default)
      keeps the expansion |q|^2 + |g|^2 - 2 q.g accurate to float32 output precision;
      float32 is about twice as fast on CPUs, with errors of order 1e-7 |q| |g|.
    out: optional [Q, G] floating array to fill and return instead of a new one of `dtype`,
      e.g. an ``np.memmap`` on disk when the matrix is larger than memory: tiles are written
      one at a time, and `evaluate_rank` reads it a block of queries at a time.

  Returns:
    [Q, G] numpy array of `dtype` (or `out`).

  Raises:
    ValueError: unknown metric, missing or unexpected `pairwise_fn`, mismatched feature
      sizes, NaN/Inf features or distances, zero-norm features with "cosine", an empty
      query set or gallery, a `pairwise_fn` result of the wrong shape, or an `out` of the
      wrong shape or dtype.
  """
  if metric not in METRICS:
    raise ValueError(f"Unknown distance metric {metric!r}: expected one of {METRICS}.")
  if metric == "learned" and pairwise_fn is None:
    raise ValueError("metric='learned' needs pairwise_fn (the model's pairwise_distance).")
  if metric != "learned" and pairwise_fn is not None:
    raise ValueError(f"pairwise_fn is only used with metric='learned', got metric={metric!r}: "
                     "pass metric='learned' to use the model's own distance.")
  block_size = _check_block_size("block_size", block_size)
  gallery_block_size = _check_block_size(
      "gallery_block_size", block_size if gallery_block_size is None else gallery_block_size)
  dtype, compute_dtype = np.dtype(dtype), np.dtype(compute_dtype)
  for name, value in (("dtype", dtype), ("compute_dtype", compute_dtype)):
    if not np.issubdtype(value, np.floating):
      raise ValueError(f"{name} must be a floating dtype, got {value}.")

  num_q = _num_rows("query_features", query_features)
  num_g = _num_rows("gallery_features", gallery_features)
  if num_q == 0:
    raise ValueError("query_features holds no tracklet: nothing to compare.")
  if num_g == 0:
    raise ValueError("gallery_features holds no tracklet: the gallery is empty.")

  if out is None:
    out = np.empty((num_q, num_g), dtype)
  elif np.shape(out) != (num_q, num_g) or not np.issubdtype(out.dtype, np.floating):
    raise ValueError(f"out must be a floating array of shape ({num_q}, {num_g}) = [num_query, "
                     f"num_gallery], got {getattr(out, 'dtype', type(out))} of shape "
                     f"{np.shape(out)}.")

  if metric == "learned":
    _check_finite("query_features", query_features)
    _check_finite("gallery_features", gallery_features)
    return _learned(query_features, gallery_features, pairwise_fn, num_q, num_g, block_size,
                    gallery_block_size, out)

  query = _check_matrix("query_features", query_features)
  gallery = _check_matrix("gallery_features", gallery_features)
  if query.shape[1] != gallery.shape[1]:
    raise ValueError(f"Query features have dimension {query.shape[1]} but gallery features "
                     f"have {gallery.shape[1]}: both must come from the same model.")

  g_sq_all = np.empty(num_g, compute_dtype)
  for g0 in range(0, num_g, gallery_block_size):
    g_rows = gallery[g0:g0 + gallery_block_size].astype(compute_dtype, copy=False)
    _check_finite_rows("gallery_features", g_rows, g0)
    g_sq_all[g0:g0 + g_rows.shape[0]] = np.einsum("ij,ij->i", g_rows, g_rows)
  if metric == "cosine":
    _check_nonzero_norm("gallery_features", g_sq_all)

  for q0 in range(0, num_q, block_size):
    q_rows = query[q0:q0 + block_size].astype(compute_dtype, copy=False)
    _check_finite_rows("query_features", q_rows, q0)
    q_sq = np.einsum("ij,ij->i", q_rows, q_rows)
    if metric == "cosine":
      _check_nonzero_norm("query_features", q_sq, offset=q0)
    for g0 in range(0, num_g, gallery_block_size):
      g1 = min(g0 + gallery_block_size, num_g)
      g_rows = gallery[g0:g1].astype(compute_dtype, copy=False)
      out[q0:q0 + q_rows.shape[0], g0:g1] = _tile(metric, q_rows, g_rows, q_sq, g_sq_all[g0:g1])
  return out


def _check_nonzero_norm(name: str, squared_norms: np.ndarray, offset: int = 0) -> None:
  zero = np.flatnonzero(squared_norms == 0)
  if zero.size:
    raise ValueError(f"{name} has {zero.size} all-zero feature vector(s) (first at index "
                     f"{zero[0] + offset}): the cosine distance is undefined for them; use "
                     "metric='euclidean' or fix the features.")


def _learned(query, gallery, pairwise_fn, num_q, num_g, block_size, gallery_block_size,
             out) -> np.ndarray:
  """Fills `out` with the model's own pairwise distance, tile by tile."""
  for q0 in range(0, num_q, block_size):
    q1 = min(q0 + block_size, num_q)
    q_block = _slice(query, q0, q1)
    for g0 in range(0, num_g, gallery_block_size):
      g1 = min(g0 + gallery_block_size, num_g)
      tile = np.asarray(pairwise_fn(q_block, _slice(gallery, g0, g1)))
      if tile.shape != (q1 - q0, g1 - g0):
        raise ValueError(
            f"pairwise_fn returned shape {tile.shape} for {q1 - q0} query and {g1 - g0} "
            f"gallery tracklets; expected ({q1 - q0}, {g1 - g0}) = [num_query, num_gallery].")
      if not np.all(np.isfinite(tile)):
        bad = np.argwhere(~np.isfinite(tile))[0]
        raise ValueError(
            f"pairwise_fn returned NaN or Inf (first for query {q0 + bad[0]}, gallery "
            f"{g0 + bad[1]}): the learned distance must be finite.")
      out[q0:q1, g0:g1] = tile
  return out
