"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li: "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017).

`re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3)` returns the
re-ranked query x gallery distance. Defaults are the paper's settings (k1 = 20, k2 = 6,
lambda = 0.3). Sections are cited by their titles in the paper. Semantics follow the
authors' widely used Python implementation:

1. The (Q+G) x (Q+G) matrix ``D = [[q_q, q_g], [q_g^T, g_g]]`` of the given distances is
   *squared* (the implementation squares whatever it receives) and cast to float32; row i
   of the working distance ``d`` is column i of ``D^2`` divided by that column's maximum
   (for symmetric inputs: row i of D^2 divided by its own maximum).
2. "k-reciprocal Nearest Neighbors": ``N(p, k)`` = the k+1 first items of p's ranking by
   ``d`` (p itself included); ``R(p, k1) = {g in N(p, k1) : p in N(g, k1)}``. Expansion:
   for every candidate ``c in R(p, k1)``, ``R(c, round(k1/2))`` is added when more than 2/3
   of it lies in ``R(p, k1)``, giving ``R*(p, k1)``.
3. "Jaccard Distance", Gaussian-kernel encoding:
   ``V[p, g] = exp(-d(p, g)) / sum_{g' in R*(p, k1)} exp(-d(p, g'))`` for ``g in R*(p, k1)``,
   else 0.
4. "Local Query Expansion" (when k2 != 1): ``V[p] <- mean(V[g] for g in the k2
   first items of p's ranking)``.
5. "Jaccard Distance" with min/max: ``d_J(p, g) = 1 - sum_k min(V[p,k], V[g,k]) /
   sum_k max(V[p,k], V[g,k])``, computed as ``1 - m / (2 - m)`` with ``m = sum min`` (every
   row of V sums to 1).
6. "Final Distance": ``d* = (1 - lambda) d_J + lambda d`` on the query x gallery
   block.

Rankings use a stable order (ties: lower index first); the reference implementation uses
numpy's default, unstable argsort, so on inputs with exactly tied distances the two may
pick different neighbours. Otherwise the results agree to float32 rounding.

Memory: no dense (Q+G)^2 matrix is built. Rows of the working distance are produced in
blocks straight from the three inputs to find each row's nearest neighbours (only the
first max(k1+1, k2) are kept); V is a sparse matrix; the Jaccard term is accumulated
over V's non-zeros in bounded chunks. Beyond the inputs, memory peaks at about three
float32 Q x G arrays (at MARS scale: 216 MB beside 417 MB of float32 inputs).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse


def _check(name: str, value, shape) -> np.ndarray:
  array = np.asarray(value)
  if array.ndim != 2 or (shape is not None and array.shape != shape):
    expected = f"[{shape[0]}, {shape[1]}]" if shape is not None else "2-D"
    raise ValueError(f"{name} has shape {array.shape}, expected {expected} (q_g_dist is "
                     "[num_query, num_gallery], q_q_dist [num_query, num_query], g_g_dist "
                     "[num_gallery, num_gallery]).")
  if not np.issubdtype(array.dtype, np.floating):
    array = array.astype(np.float64)
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{name} holds NaN or Inf values: re-ranking needs finite distances.")
  return array


class _WorkingDistance:
  """Row access to the normalised squared distance `d` of step 1 without building it."""

  def __init__(self, q_g, q_q, g_g):
    self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
    self.num_q = q_g.shape[0]
    self.num = q_g.shape[0] + q_g.shape[1]
    self.row_max = None

  def raw_rows(self, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of (D^T)^2 as float32 (row i = column i of D, squared)."""
    q = self.num_q
    parts = []
    if start < q:
      end = min(stop, q)
      parts.append(np.concatenate([self.q_q[:, start:end].T, self.q_g[start:end]], axis=1))
    if stop > q:
      begin = max(start, q) - q
      parts.append(np.concatenate(
          [self.q_g[:, begin:stop - q].T, self.g_g[:, begin:stop - q].T], axis=1))
    rows = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    np.square(rows, out=rows)  # `rows` is a fresh array: square in place, in the input dtype
    return rows.astype(np.float32, copy=False)

  def values(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """d[rows, cols] (float32) for index arrays."""
    q = self.num_q
    raw = np.empty(rows.shape, np.float64)
    # d[i, j] = D[j, i]^2 / row_max[i].
    j_query, i_query = cols < q, rows < q
    sel = j_query & i_query
    raw[sel] = self.q_q[cols[sel], rows[sel]]
    sel = j_query & ~i_query
    raw[sel] = self.q_g[cols[sel], rows[sel] - q]
    sel = ~j_query & i_query
    raw[sel] = self.q_g[rows[sel], cols[sel] - q]
    sel = ~j_query & ~i_query
    raw[sel] = self.g_g[cols[sel] - q, rows[sel] - q]
    dtype = np.result_type(self.q_g.dtype, self.q_q.dtype, self.g_g.dtype)
    return np.square(raw.astype(dtype)).astype(np.float32) / self.row_max[rows]


def smallest_k_stable(block: np.ndarray, k: int) -> np.ndarray:
  """Equals `np.argsort(block, axis=1, kind="stable")[:, :k]`, without a full sort."""
  num_cols = block.shape[1]
  if k >= num_cols:
    return np.argsort(block, axis=1, kind="stable")
  kth = np.partition(block, k - 1, axis=1)[:, k - 1:k]
  rows, cols = np.nonzero(block <= kth)  # >= k per row; columns ascending within a row
  order = np.lexsort((block[rows, cols], rows))  # stable: equal values keep column order
  counts = np.bincount(rows, minlength=block.shape[0])
  starts = np.cumsum(counts) - counts
  picked = order[starts[:, None] + np.arange(k)[None, :]]
  return cols[picked]


def _reciprocal_mask(neighbours: np.ndarray, block_size: int) -> np.ndarray:
  """mask[i, a] = i is among the neighbours of neighbours[i, a] (k-reciprocal neighbours)."""
  mask = np.empty(neighbours.shape, bool)
  for start in range(0, neighbours.shape[0], block_size):
    rows = neighbours[start:start + block_size]
    own = np.arange(start, start + rows.shape[0])[:, None, None]
    mask[start:start + rows.shape[0]] = (neighbours[rows] == own).any(axis=-1)
  return mask


def _expanded_sets(neighbours, recip, half_neighbours, half_recip, block_size):
  """(rows, cols) of the expanded set R*(p, k1) for every p, sorted by row then column."""
  num = neighbours.shape[0]
  keys = []
  for start in range(0, num, block_size):
    stop = min(start + block_size, num)
    cand = neighbours[start:stop]                    # [b, K1] N(p, k1)
    cand_in_r = recip[start:stop]                    # [b, K1] membership of R(p, k1)
    cand_sets = half_neighbours[cand]                # [b, K1, Kh] N(c, k1/2)
    cand_sets_in = half_recip[cand]                  # [b, K1, Kh] membership of R(c, k1/2)
    in_r = ((cand_sets[..., None] == cand[:, None, None, :])
            & cand_in_r[:, None, None, :]).any(axis=-1)
    overlap = (in_r & cand_sets_in).sum(axis=-1)     # |R(c, k1/2) & R(p, k1)|
    size = cand_sets_in.sum(axis=-1)
    accept = cand_in_r & (overlap > 2. / 3 * size)
    row_ids = np.arange(start, stop, dtype=np.int64)
    base_r, base_a = np.nonzero(cand_in_r)
    keys.append((row_ids[base_r] * num + cand[base_r, base_a]))
    add = accept[..., None] & cand_sets_in
    add_r, add_a, add_b = np.nonzero(add)
    keys.append(row_ids[add_r] * num + cand_sets[add_r, add_a, add_b])
  keys = np.unique(np.concatenate(keys))
  return keys // num, keys % num


def _jaccard_min_sums(v_query: sparse.csr_matrix, v_gallery_csc: sparse.csc_matrix,
                      num_gallery: int, chunk: int = 1 << 20) -> np.ndarray:
  """m[i, j] = sum_k min(V[i, k], V[q + j, k]) for query rows i and gallery rows j."""
  num_q = v_query.shape[0]
  out = np.zeros((num_q, num_gallery), np.float32)
  col_nnz = np.diff(v_gallery_csc.indptr)
  query_rows = np.repeat(np.arange(num_q), np.diff(v_query.indptr))
  row_work = np.bincount(query_rows, weights=col_nnz[v_query.indices], minlength=num_q)
  max_rows = max(1, chunk // num_gallery)
  start = 0
  while start < num_q:
    stop, work = start, 0
    while stop < num_q and (stop == start or (work + row_work[stop] <= chunk
                                              and stop - start < max_rows)):
      work += row_work[stop]
      stop += 1
    lo, hi = v_query.indptr[start], v_query.indptr[stop]
    cols = v_query.indices[lo:hi]
    vals = v_query.data[lo:hi]
    rows = np.repeat(np.arange(stop - start), np.diff(v_query.indptr[start:stop + 1]))
    counts = col_nnz[cols]
    total = int(counts.sum())
    if total:
      first = np.repeat(v_gallery_csc.indptr[cols] - (np.cumsum(counts) - counts), counts)
      positions = first + np.arange(total)
      gal = v_gallery_csc.indices[positions]
      mins = np.minimum(np.repeat(vals, counts), v_gallery_csc.data[positions])
      acc = np.bincount(np.repeat(rows, counts) * num_gallery + gal, weights=mins,
                        minlength=(stop - start) * num_gallery)
      out[start:stop] = acc.reshape(stop - start, num_gallery)
    start = stop
  return out


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6,
               lambda_value: float = 0.3, block_size: int = 512) -> np.ndarray:
  """k-reciprocal re-ranking of a query x gallery distance (Zhong et al., CVPR 2017).

  Args:
    q_g_dist: [Q, G] query-gallery distances (e.g. Euclidean; they are squared inside).
    q_q_dist: [Q, Q] query-query distances.
    g_g_dist: [G, G] gallery-gallery distances.
    k1: k of the k-reciprocal neighbour sets (paper: 20).
    k2: neighbours averaged by local query expansion (paper: 6); 1 disables it.
    lambda_value: weight of the original distance in the final one (paper: 0.3).
    block_size: rows of the (Q+G) x (Q+G) working distance handled at once.

  Returns:
    float32 [Q, G] final distance ``(1 - lambda) d_J + lambda d``.

  Raises:
    ValueError: mismatched shapes, NaN/Inf, an all-zero distance column, or parameters out
      of range.
  """
  q_g = _check("q_g_dist", q_g_dist, None)
  num_q, num_g = q_g.shape
  if num_q == 0 or num_g == 0:
    raise ValueError(f"q_g_dist has shape {q_g.shape}: re-ranking needs at least one query "
                     "and one gallery item.")
  q_q = _check("q_q_dist", q_q_dist, (num_q, num_q))
  g_g = _check("g_g_dist", g_g_dist, (num_g, num_g))
  for name, value in (("k1", k1), ("k2", k2), ("block_size", block_size)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  if not 0.0 <= float(lambda_value) <= 1.0:
    raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}.")

  dist = _WorkingDistance(q_g, q_q, g_g)
  num = dist.num
  half = int(np.around(k1 / 2.))
  width1, width_half = min(k1 + 1, num), min(half + 1, num)
  width2 = min(k2, num)
  width = max(width1, width_half, width2)

  # Step 1 + nearest neighbours of every row, block by block.
  neighbours = np.empty((num, width), np.int64)
  row_max = np.empty(num, np.float32)
  base = np.empty((num_q, num_g), np.float32)
  for start in range(0, num, block_size):
    stop = min(start + block_size, num)
    rows = dist.raw_rows(start, stop)
    peak = rows.max(axis=1)
    if np.any(peak == 0):
      bad = start + int(np.argmin(peak))
      raise ValueError(f"All distances of item {bad} (queries first, then gallery) are zero: "
                       "re-ranking normalises by the largest distance and cannot use it.")
    row_max[start:stop] = peak
    rows /= peak[:, None]
    neighbours[start:stop] = smallest_k_stable(rows, width)
    if start < num_q:
      end = min(stop, num_q)
      base[start:end] = rows[:end - start, num_q:]
    del rows
  dist.row_max = row_max

  # Steps 2-3: R*(p, k1) and the Gaussian-kernel encoding V.
  near1 = neighbours[:, :width1]
  near_half = neighbours[:, :width_half]
  rows, cols = _expanded_sets(near1, _reciprocal_mask(near1, block_size), near_half,
                              _reciprocal_mask(near_half, block_size), block_size)
  weights = np.exp(-dist.values(rows, cols))
  sums = np.bincount(rows, weights=weights, minlength=num).astype(np.float32)
  weights = weights / sums[rows]
  v = sparse.csr_matrix((weights.astype(np.float32), (rows, cols)), shape=(num, num))

  # Step 4: local query expansion.
  if k2 != 1:
    expand = sparse.csr_matrix(
        (np.full(num * width2, 1.0 / width2, np.float32),
         (np.repeat(np.arange(num), width2), neighbours[:, :width2].ravel())),
        shape=(num, num))
    v = (expand @ v).tocsr()
  v.eliminate_zeros()

  # Step 5: Jaccard distance of every query to every gallery item.
  jaccard = _jaccard_min_sums(v[:num_q].tocsr(), v[num_q:].tocsc(), num_g)
  del v
  denominator = 2. - jaccard
  np.divide(jaccard, denominator, out=jaccard)
  del denominator
  np.subtract(1, jaccard, out=jaccard)  # 1 - m / (2 - m)

  # Step 6: (1 - lambda) d_J + lambda d, in place.
  lam = float(lambda_value)
  jaccard *= np.float32(1 - lam)
  base *= np.float32(lam)
  jaccard += base
  return jaccard
