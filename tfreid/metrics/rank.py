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
The gallery is ordered with a *stable* sort: items at equal distance keep their gallery
order (the lower gallery index ranks first). MATLAB's ``sort`` is stable, so the
``mars_matlab`` numbers equal the MATLAB code even with ties. torchreid uses numpy's
default (unstable) ``argsort``; without ties (any continuous distance) the order is the
same, with ties it is implementation-defined there and gallery order here.

CMC values are float64 fractions; torchreid accumulates them in float32, so its curve can
differ from ours in the 8th significant digit. When fewer than ``max_rank`` gallery items
remain after removing same-camera items, the curve holds its last value (torchreid's
Python code fails on such ragged curves).

Implementation: queries are processed in blocks; within a block the gallery order, the
good and junk positions and every good item's rank among non-junk items are computed with
whole-array numpy operations (no per-query Python loop).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

PROTOCOLS = ("torchreid", "mars_matlab")
JUNK_PID = -1


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
  """Returns `distmat` as a finite 2-D float array, or raises a ValueError."""
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
  finite = np.isfinite(dist)
  if not finite.all():
    row, col = np.argwhere(~finite)[0]
    raise ValueError(
        f"distmat holds {int((~finite).sum())} NaN or Inf values (first at query {row}, "
        f"gallery {col}: {dist[row, col]}). Check the features or the pairwise distance "
        "for NaN/Inf before evaluating.")
  return dist


def stable_argsort_rows(dist: np.ndarray) -> np.ndarray:
  """Row-wise ascending argsort equal to `np.argsort(dist, axis=1, kind="stable")`.

  Uses numpy's faster default sort, then re-sorts stably only the rows that hold ties
  (without ties the ascending order is unique, so both sorts agree).
  """
  order = np.argsort(dist, axis=1)
  ranked = np.take_along_axis(dist, order, axis=1)
  tied = np.flatnonzero((ranked[:, 1:] == ranked[:, :-1]).any(axis=1))
  if tied.size:
    order[tied] = np.argsort(dist[tied], axis=1, kind="stable")
  return order


def _rank_block(dist, q_pids, q_camids, g_pids, g_camids, protocol):
  """CMC counts and per-query AP for one block of queries.

  Returns (first_rank [b] int64 rank of the first good item among non-junk items, 0 when
  none), (ap [b] float64), (num_good [b] int64).
  """
  num_q, num_g = dist.shape
  order = stable_argsort_rows(dist)
  ranked_pids = g_pids[order]
  same_pid = ranked_pids == q_pids[:, None]
  junk = same_pid & (g_camids[order] == q_camids[:, None])
  if protocol == "mars_matlab":
    junk |= ranked_pids == JUNK_PID
  good = same_pid & ~junk
  del ranked_pids, same_pid, order

  good_rows, good_cols = np.nonzero(good)  # row-major: rows ascending, columns ascending
  junk_rows, junk_cols = np.nonzero(junk)
  good_keys = good_rows * num_g + good_cols
  junk_keys = junk_rows * num_g + junk_cols
  # Junk items before each good item in its own row -> its 1-based rank among kept items.
  junk_before = (np.searchsorted(junk_keys, good_keys)
                 - np.searchsorted(junk_keys, good_rows * num_g))
  rank = (good_cols + 1 - junk_before).astype(np.float64)
  num_good = np.bincount(good_rows, minlength=num_q)
  row_start = np.cumsum(num_good) - num_good
  hit = (np.arange(good_rows.size) - row_start[good_rows] + 1).astype(np.float64)

  first_rank = np.zeros(num_q, np.int64)
  is_first = hit == 1
  first_rank[good_rows[is_first]] = rank[is_first].astype(np.int64)

  ngood = num_good[good_rows].astype(np.float64)
  precision = hit / rank
  if protocol == "torchreid":
    ap_sum = np.bincount(good_rows, weights=precision, minlength=num_q)
    with np.errstate(invalid="ignore", divide="ignore"):
      ap = ap_sum / num_good
  else:
    # compute_AP.m: the precision at the previous non-junk position is (hit - 1) / (rank - 1),
    # or the initial 1 at rank 1; recall steps by hit/ngood - (hit-1)/ngood.
    with np.errstate(invalid="ignore", divide="ignore"):
      old_precision = np.where(rank > 1, (hit - 1) / (rank - 1), 1.0)
    terms = (hit / ngood - (hit - 1) / ngood) * ((old_precision + precision) / 2)
    ap = np.bincount(good_rows, weights=terms, minlength=num_q)
  ap = np.where(num_good > 0, ap, 0.0)
  return first_rank, ap, num_good


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                  protocol: str = "torchreid", block_size: int = 256) -> dict:
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
    block_size: queries ranked at once (memory ~ 30 bytes x block_size x num_gallery).

  Returns:
    dict with `cmc` (float64 [max_rank] fractions, `cmc[k-1]` = rank-k accuracy), `mAP`
    (fraction), `num_valid_queries` (queries with a true match), `num_queries`,
    `num_gallery`, `max_rank` (the effective one) and `protocol`.

  Raises:
    ValueError: wrong shapes or lengths, NaN/Inf distances, an empty gallery or query
      set, an unknown protocol, or (torchreid) no query with a true match.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"Unknown evaluation protocol {protocol!r}: expected one of {PROTOCOLS}.")
  if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
    raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}.")
  if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
      or block_size < 1:
    raise ValueError(f"block_size must be a positive integer, got {block_size!r}.")
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

  first_rank = np.empty(num_q, np.int64)
  ap = np.empty(num_q, np.float64)
  num_good = np.empty(num_q, np.int64)
  for start in range(0, num_q, block_size):
    stop = min(start + block_size, num_q)
    first_rank[start:stop], ap[start:stop], num_good[start:stop] = _rank_block(
        dist[start:stop], q_pids[start:stop], q_camids[start:stop], g_pids, g_camids,
        protocol)

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
