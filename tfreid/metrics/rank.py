"""CMC and mAP of a query x gallery distance matrix under the two MARS protocols.

`evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, protocol=...)`
ranks the gallery by ascending distance for every query and returns the cumulative
matching characteristic (CMC) and the mean average precision (mAP), both as fractions.

Protocols
---------
``"torchreid"`` (the protocol of torchreid's ``eval_market1501``, used by most video ReID
papers on MARS, DukeMTMC-VideoReID, iLIDS-VID and PRID-2011):

* gallery items with the query's pid *and* camera are removed from its ranking;
* a query with no remaining true match is skipped (it counts in neither average);
* ``AP = sum_k precision@k * match_k / num_matches`` (no interpolation);
* CMC and mAP are means over the remaining ("valid") queries;
* ``max_rank`` is reduced to the gallery size when the gallery is smaller, with a warning.

``"mars_matlab"`` (the official MARS evaluation, ``evaluation_mars.m`` + ``compute_AP.m``):

* junk = gallery items with pid -1, plus items with the query's pid and camera; junk is
  skipped: it takes no rank and does not count in precision;
* good = gallery items with the query's pid in another camera (never junk);
* AP by the trapezoid rule over the ranked non-junk list:
  ``AP = sum_hits (r_h - r_{h-1}) * (p_{h-1} + p_h) / 2`` with recall ``r = hits / n_good``,
  precision ``p = hits / rank_without_junk``, starting from ``r = 0, p = 1``;
* CMC(r) = 1 when a good item is among the first r non-junk items;
* CMC and mAP are averaged over *all* queries.
  A query without any good item gets CMC 0 and AP 0 here. The MATLAB code computes
  ``recall = 0 / 0`` for such a query, so its AP (and then the mAP) would be NaN; with the
  official protocol on MARS (gallery = every test tracklet, queries included) every query
  has a good item, so the case does not arise there. We count it as AP 0 and warn.
  ``num_valid_queries`` is the number of queries with at least one good item.

Ties
----
Items at equal distance are ranked by gallery index, the lower index first: the order of a
*stable* sort (``np.argsort(kind="stable")``, MATLAB's ``sort``), so the ``mars_matlab``
numbers equal the MATLAB code's even with ties. torchreid's and fast-reid's evaluators
(Python and Cython) rank with numpy's default ``argsort``, which is not stable: its order of
equal distances depends on the data, the numpy version and the CPU (numpy 2 on AVX-512
machines sorts with SIMD networks). Their numbers are therefore only defined without ties;
where no true match is at exactly the same distance as another kept item, every order agrees
and the results are equal.

CMC values are float64 fractions; torchreid accumulates them in float32, so its curve can
differ from ours in the 8th significant digit. When fewer than ``max_rank`` gallery items
remain after removing same-camera items, the curve holds its last value (torchreid's
Python code fails on such ragged curves).

Implementation
--------------
No row is argsorted. Only the ranks of the true matches matter, and the rank of a true
match among its query's kept items is one plus the number of kept items ranked before it:

* the items at a strictly smaller distance, found by a binary search for its distance in
  the row sorted by value (``np.sort``, several times faster than an argsort); under
  ``mars_matlab`` the pid -1 items among them (which take no rank) are found the same way
  in a sorted copy of their columns and subtracted;
* plus, only when its distance occurs more than once in its row, the items that take a
  rank at exactly that distance with a lower gallery index (counted directly);
* minus the junk of its own query (same pid and camera) counted in the two terms above: the
  gallery items of the query's identity are few, and ordered by (distance, gallery index)
  they give this count and each true match's hit number.

Queries are processed in blocks: memory beyond the inputs is one sorted copy of a block
(``block_size`` x num_gallery distances) per thread plus the gallery items of the block's
identities. Blocks run on ``num_threads`` threads (numpy releases the GIL while sorting).
"""

from __future__ import annotations

import os
import warnings
from concurrent import futures
from typing import Any, NamedTuple

import numpy as np

PROTOCOLS = ("torchreid", "mars_matlab")
JUNK_PID = -1
# Elements compared at once when counting exact ties or locating NaN/Inf (bounds temporaries).
_CHUNK_ELEMENTS = 1 << 22


def _as_1d_ints(name: str, values: Any, length: int, side: str) -> np.ndarray:
  """Returns `values` as a 1-D int64 array of `length`, or raises a ValueError."""
  array = np.asarray(values)
  if array.ndim != 1:
    raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}.")
  if array.shape[0] != length:
    raise ValueError(
        f"{name} has {array.shape[0]} entries but distmat has {length} {side} entries "
        f"(distmat shape [num_query, num_gallery]): pass one id per {side} item, in "
        "distmat's order.")
  if array.size and not np.issubdtype(array.dtype, np.integer):
    if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
      raise ValueError(f"{name} must hold integer ids, got dtype {array.dtype} with "
                       "non-integer values.")
  return array.astype(np.int64)


def _check_distmat(distmat: Any) -> np.ndarray:
  """Returns `distmat` as a 2-D float array, or raises a ValueError (finiteness is checked
  block by block while ranking)."""
  dist = np.asarray(distmat)
  if dist.ndim != 2:
    raise ValueError(f"distmat must be 2-D [num_query, num_gallery], got shape {dist.shape}.")
  if not np.issubdtype(dist.dtype, np.floating):
    dist = dist.astype(np.float64)
  if dist.shape[0] == 0:
    raise ValueError(f"distmat has no query rows (shape {dist.shape}): evaluate at least one "
                     "query.")
  if dist.shape[1] == 0:
    raise ValueError(f"The gallery is empty (distmat shape {dist.shape}): evaluation needs "
                     "at least one gallery tracklet.")
  return dist


class _NonFinite(Exception):
  """A block of distmat holds NaN or Inf (the message is built from the whole matrix)."""


def _non_finite_error(dist: np.ndarray) -> ValueError:
  """The error naming how many distances are NaN/Inf and where the first one is."""
  count, first = 0, None
  rows_per_step = max(1, _CHUNK_ELEMENTS // dist.shape[1])
  for start in range(0, dist.shape[0], rows_per_step):
    bad = ~np.isfinite(dist[start:start + rows_per_step])
    found = int(np.count_nonzero(bad))
    if found and first is None:
      row, col = np.argwhere(bad)[0]
      first = (start + int(row), int(col))
    count += found
  row, col = first
  return ValueError(
      f"distmat holds {count} NaN or Inf values (first at query {row}, gallery {col}: "
      f"{dist[row, col]}). Check the features or the pairwise distance for NaN/Inf before "
      "evaluating.")


class _Gallery(NamedTuple):
  """The gallery's ids, its columns grouped by pid, and which columns take a rank."""
  pids: np.ndarray
  camids: np.ndarray
  by_pid: np.ndarray       # columns sorted by pid, ascending columns within a pid
  group_pids: np.ndarray   # the distinct pids, ascending
  group_start: np.ndarray  # where each pid's columns start in by_pid
  group_size: np.ndarray
  takes_rank: np.ndarray | None  # bool per column (None: every column takes a rank)
  dropped: np.ndarray            # columns that never take a rank (mars_matlab: pid -1)


def _gallery(g_pids: np.ndarray, g_camids: np.ndarray, protocol: str) -> _Gallery:
  by_pid = np.argsort(g_pids, kind="stable")
  group_pids, group_start, group_size = np.unique(g_pids[by_pid], return_index=True,
                                                  return_counts=True)
  takes_rank, dropped = None, np.zeros(0, np.int64)
  if protocol == "mars_matlab" and (g_pids == JUNK_PID).any():
    takes_rank = g_pids != JUNK_PID
    dropped = np.flatnonzero(~takes_rank)
  return _Gallery(g_pids, g_camids, by_pid, group_pids, group_start, group_size, takes_rank,
                  dropped)


def _same_pid_items(gallery: _Gallery, q_pids: np.ndarray):
  """(rows, cols, first): every gallery column holding its query's pid, rows ascending and
  columns ascending within a row; `first[i]` is where row i's items start."""
  pos = np.minimum(np.searchsorted(gallery.group_pids, q_pids), gallery.group_pids.size - 1)
  sizes = np.where(gallery.group_pids[pos] == q_pids, gallery.group_size[pos], 0)
  first = np.cumsum(sizes) - sizes
  rows = np.repeat(np.arange(q_pids.size), sizes)
  within = np.arange(rows.size) - first[rows]
  cols = gallery.by_pid[gallery.group_start[pos][rows] + within]
  return rows, cols, first


def _count_smaller(sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
  """For each (row, value): entries of the ascending `sorted_rows[row]` smaller than value.

  A binary search run for all pairs at once (numpy's searchsorted takes one row at a time).
  """
  num_cols = sorted_rows.shape[1]
  flat = sorted_rows.reshape(-1)
  base = rows * num_cols
  lo = np.zeros(rows.size, np.int64)
  hi = np.full(rows.size, num_cols, np.int64)
  for _ in range(num_cols.bit_length()):
    mid = (lo + hi) >> 1
    go_right = flat[base + np.minimum(mid, num_cols - 1)] < values
    go_right &= lo < hi
    lo = np.where(go_right, mid + 1, lo)
    hi = np.where(go_right, hi, mid)
  return lo


def _equal_before(block: np.ndarray, gallery: _Gallery, rows: np.ndarray, cols: np.ndarray,
                  values: np.ndarray) -> np.ndarray:
  """For each (row, col, value): items of the row that take a rank, at exactly `value`, with
  a gallery index below `col`."""
  num_g = block.shape[1]
  positions = np.arange(num_g)
  out = np.empty(rows.size, np.int64)
  step = max(1, _CHUNK_ELEMENTS // num_g)
  for start in range(0, rows.size, step):
    stop = start + step
    equal = block[rows[start:stop]] == values[start:stop, None]
    equal &= positions < cols[start:stop, None]
    if gallery.takes_rank is not None:
      equal &= gallery.takes_rank
    out[start:stop] = np.count_nonzero(equal, axis=1)
  return out


def _rank_block(block: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray,
                gallery: _Gallery, protocol: str):
  """CMC counts and per-query AP for one block of queries.

  Returns (first_rank [b] int64 rank of the first good item among non-junk items, 0 when
  none), (ap [b] float64), (num_good [b] int64).
  """
  num_q = block.shape[0]
  sorted_rows = np.sort(block, axis=1)
  # mars_matlab: the pid -1 items take no rank; they are counted apart and subtracted.
  sorted_dropped = None
  if gallery.dropped.size:
    sorted_dropped = np.take(block, gallery.dropped, axis=1)  # C order (block[:, idx] is not)
    sorted_dropped.sort(axis=1)
  # np.sort puts -inf first and +inf, NaN last: the ends of the rows tell whether all is finite.
  if not (np.isfinite(sorted_rows[:, 0]).all() and np.isfinite(sorted_rows[:, -1]).all()):
    raise _NonFinite()

  # The gallery items of each query's identity, in ranking order: by distance, then gallery
  # index (they come in ascending columns, and lexsort is stable).
  rows, cols, first = _same_pid_items(gallery, q_pids)
  values = block[rows, cols]
  order = np.lexsort((values, rows))
  cols, values = cols[order], values[order]
  same_cam = gallery.camids[cols] == q_camids[rows]
  if protocol == "mars_matlab":
    takes_rank = gallery.pids[cols] != JUNK_PID
    good, junk = ~same_cam & takes_rank, same_cam & takes_rank
  else:
    good, junk = ~same_cam, same_cam
  # Per item: junk of its query ranked before it, and good items up to it (its hit number).
  junk_before = np.cumsum(junk) - junk
  junk_before -= junk_before[first[rows]]
  hits = np.cumsum(good)
  hits -= (hits - good)[first[rows]]

  is_good = np.flatnonzero(good)
  rows, cols, values = rows[is_good], cols[is_good], values[is_good]
  junk_before, hit = junk_before[is_good], hits[is_good].astype(np.float64)
  before = _count_smaller(sorted_rows, rows, values)
  # Another item at the same distance (the item itself sits at position `before`): count the
  # ranked ones with a lower gallery index.
  num_g = sorted_rows.shape[1]
  after = np.minimum(before + 1, num_g - 1)
  tied = np.flatnonzero((before + 1 < num_g)
                        & (sorted_rows.reshape(-1)[rows * num_g + after] == values))
  if sorted_dropped is not None:
    before -= _count_smaller(sorted_dropped, rows, values)
  if tied.size:
    before[tied] += _equal_before(block, gallery, rows[tied], cols[tied], values[tied])
  rank = (before - junk_before + 1).astype(np.float64)

  num_good = np.bincount(rows, minlength=num_q)
  first_rank = np.zeros(num_q, np.int64)
  is_first = hit == 1
  first_rank[rows[is_first]] = rank[is_first].astype(np.int64)

  precision = hit / rank
  if protocol == "torchreid":
    ap_sum = np.bincount(rows, weights=precision, minlength=num_q)
    with np.errstate(invalid="ignore", divide="ignore"):
      ap = ap_sum / num_good
  else:
    # compute_AP.m: the precision at the previous non-junk position is (hit - 1) / (rank - 1),
    # or the initial 1 at rank 1; recall steps by hit/ngood - (hit-1)/ngood.
    ngood = num_good[rows].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
      old_precision = np.where(rank > 1, (hit - 1) / (rank - 1), 1.0)
    terms = (hit / ngood - (hit - 1) / ngood) * ((old_precision + precision) / 2)
    ap = np.bincount(rows, weights=terms, minlength=num_q)
  ap = np.where(num_good > 0, ap, 0.0)
  return first_rank, ap, num_good


def _default_threads() -> int:
  try:
    return max(1, min(4, len(os.sched_getaffinity(0))))
  except AttributeError:  # not on Linux
    return max(1, min(4, os.cpu_count() or 1))


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                  protocol: str = "torchreid", block_size: int = 256,
                  num_threads: int | None = None) -> dict:
  """CMC curve and mAP of a query x gallery distance matrix (smaller = more similar).

  Args:
    distmat: float [num_query, num_gallery] distances.
    q_pids, g_pids: int person ids of queries and gallery items (MARS: -1 junk, 0
      distractor).
    q_camids, g_camids: int camera ids.
    max_rank: length of the returned CMC curve; reduced to the gallery size (with a
      warning) when the gallery is smaller, as torchreid does.
    protocol: "torchreid" (torchreid `eval_market1501`) or "mars_matlab" (official MARS
      MATLAB evaluation); see the module docstring for their exact rules.
    block_size: queries ranked at once (each thread holds a sorted copy of its block).
    num_threads: threads ranking blocks of queries at once (default: the CPUs this process
      may use, at most 4).

  Returns:
    dict with `cmc` (float64 [max_rank] fractions, `cmc[k-1]` = rank-k accuracy), `mAP`
    (fraction), `num_valid_queries` (queries with a true match), `num_queries`,
    `num_gallery`, `max_rank` (the effective one) and `protocol`.

  Raises:
    ValueError: wrong shapes or lengths, NaN/Inf distances, an empty gallery or query
      set, an unknown protocol, a non-positive block_size or num_threads, or no query with
      a true match.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"Unknown evaluation protocol {protocol!r}: expected one of {PROTOCOLS}.")
  if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
    raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}.")
  if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
      or block_size < 1:
    raise ValueError(f"block_size must be a positive integer, got {block_size!r}.")
  if num_threads is None:
    num_threads = _default_threads()
  if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) \
      or num_threads < 1:
    raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}.")
  dist = _check_distmat(distmat)
  num_q, num_g = dist.shape
  q_pids = _as_1d_ints("q_pids", q_pids, num_q, "query")
  q_camids = _as_1d_ints("q_camids", q_camids, num_q, "query")
  g_pids = _as_1d_ints("g_pids", g_pids, num_g, "gallery")
  g_camids = _as_1d_ints("g_camids", g_camids, num_g, "gallery")

  max_rank = int(max_rank)
  if num_g < max_rank:
    warnings.warn(f"The gallery has only {num_g} items, fewer than max_rank={max_rank}: "
                  f"the CMC curve is computed up to rank {num_g}.", stacklevel=2)
    max_rank = num_g

  gallery = _gallery(g_pids, g_camids, protocol)
  first_rank = np.empty(num_q, np.int64)
  ap = np.empty(num_q, np.float64)
  num_good = np.empty(num_q, np.int64)

  def rank_queries(start: int) -> None:
    stop = min(start + block_size, num_q)
    first_rank[start:stop], ap[start:stop], num_good[start:stop] = _rank_block(
        dist[start:stop], q_pids[start:stop], q_camids[start:stop], gallery, protocol)

  starts = range(0, num_q, block_size)
  try:
    if num_threads == 1 or len(starts) == 1:
      for start in starts:
        rank_queries(start)
    else:
      with futures.ThreadPoolExecutor(min(num_threads, len(starts))) as pool:
        for _ in pool.map(rank_queries, starts):
          pass
  except _NonFinite:
    raise _non_finite_error(dist) from None

  valid = num_good > 0
  num_valid = int(valid.sum())
  if num_valid == 0:
    raise ValueError(
        "No query has a true match in the gallery (same pid in another camera"
        + (", pid != -1" if protocol == "mars_matlab" else "")
        + "): check that q_pids/g_pids use the same ids and that the gallery holds the "
        "query identities seen from other cameras.")
  in_curve = valid & (first_rank <= max_rank)
  counts = np.bincount(first_rank[in_curve] - 1, minlength=max_rank)[:max_rank]
  if protocol == "torchreid":
    denominator = num_valid
    mean_ap = float(np.mean(ap[valid]))
  else:
    denominator = num_q
    mean_ap = float(np.mean(ap))
    if num_valid < num_q:
      warnings.warn(
          f"{num_q - num_valid} of {num_q} queries have no good match (same pid in another "
          "camera); under protocol 'mars_matlab' they count as CMC 0 and AP 0 (the MATLAB "
          "code would return NaN mAP).", stacklevel=2)
  cmc = np.cumsum(counts).astype(np.float64) / denominator
  return {
      "cmc": cmc,
      "mAP": mean_ap,
      "num_valid_queries": num_valid,
      "num_queries": num_q,
      "num_gallery": num_g,
      "max_rank": max_rank,
      "protocol": protocol,
  }
