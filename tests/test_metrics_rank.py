"""CMC/mAP under the torchreid and the official MARS protocols, and split aggregation."""

import warnings

import numpy as np
import pytest

from tfreid.metrics import aggregate_splits, compute_distance_matrix, evaluate_rank, summarize
from tfreid.metrics import rank as rank_module

# ---------------------------------------------------------------- hand-computed 3 x 6 case
# gallery:   g0      g1      g2      g3          g4        g5
#   pid      1       2       1       0 (distr.)  -1 (junk) 1
#   cam      0       1       1       1           0         0
G_PIDS = np.array([1, 2, 1, 0, -1, 1])
G_CAMS = np.array([0, 1, 1, 1, 0, 0])
Q_PIDS = np.array([1, 2, 1])
Q_CAMS = np.array([0, 1, 1])
DIST = np.array([
    # q0 (pid 1, cam 0). Stable order: g4 .05, g0 .1, g5 .2, g2 .3, g3 .3 (tie: g2 first), g1.
    [0.1, 0.4, 0.3, 0.3, 0.05, 0.2],
    # q1 (pid 2, cam 1): the only pid-2 item g1 is in the query's camera -> no true match.
    [0.5, 0.1, 0.2, 0.3, 0.4, 0.6],
    # q2 (pid 1, cam 1). Order: g1 .1, g4 .15, g2 .2, g3 .3, g5 .35, g0 .5.
    [0.5, 0.1, 0.2, 0.3, 0.15, 0.35],
])
# torchreid (same pid + same cam removed; pid -1 is an ordinary non-match):
#   q0: kept g4 x, g2 v, g3 x, g1 x -> first match rank 2; AP = (1/2) / 1 = 0.5
#       (had the tie been broken g3-first: rank 3, AP 1/3)
#   q1: no true match -> skipped
#   q2: kept g1 x, g4 x, g3 x, g5 v, g0 v -> first match rank 4; AP = (1/4 + 2/5) / 2 = 0.325
#   CMC over 2 valid queries: [0, .5, .5, 1, 1, 1]; mAP = (0.5 + 0.325) / 2 = 0.4125
TORCHREID_CMC = [0.0, 0.5, 0.5, 1.0, 1.0, 1.0]
TORCHREID_MAP = 0.4125
# mars_matlab (junk = pid -1 + same pid & cam, skipped; trapezoid AP; all queries averaged):
#   q0: junk g4, g0, g5 -> g2 v, g3 x, g1 x: rank 1; AP = 1 * (1 + 1) / 2 = 1
#   q1: no good item -> CMC 0, AP 0
#   q2: junk g4, g2 -> g1 x, g3 x, g5 v (rank 3), g0 v (rank 4); n_good = 2
#       AP = 0.5 * (0 + 1/3) / 2 + 0.5 * (1/3 + 2/4) / 2 = 1/12 + 5/24 = 7/24
#   CMC over 3 queries: [1/3, 1/3, 2/3, 2/3, 2/3, 2/3]; mAP = (1 + 0 + 7/24) / 3 = 31/72
MATLAB_CMC = [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3]
MATLAB_MAP = 31 / 72


def test_torchreid_hand_computed():
  result = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=6, protocol="torchreid")
  np.testing.assert_allclose(result["cmc"], TORCHREID_CMC, atol=1e-12)
  assert result["mAP"] == pytest.approx(TORCHREID_MAP, abs=1e-12)
  assert result["num_valid_queries"] == 2
  assert result["num_queries"] == 3 and result["num_gallery"] == 6


def test_mars_matlab_hand_computed():
  with pytest.warns(UserWarning, match="1 of 3 queries have no good match"):
    result = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=6,
                           protocol="mars_matlab")
  np.testing.assert_allclose(result["cmc"], MATLAB_CMC, atol=1e-12)
  assert result["mAP"] == pytest.approx(MATLAB_MAP, abs=1e-12)
  assert result["num_valid_queries"] == 2


def test_max_rank_is_reduced_to_the_gallery_size_with_a_warning():
  with pytest.warns(UserWarning, match="only 6 items"):
    result = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=50)
  assert result["cmc"].shape == (6,) and result["max_rank"] == 6
  short = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=3)
  np.testing.assert_allclose(short["cmc"], TORCHREID_CMC[:3], atol=1e-12)


# ------------------------------------------------ independent per-query implementations


def _torchreid_loop(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
  """Straightforward per-query version of torchreid's eval_market1501 (stable sort)."""
  max_rank = min(max_rank, dist.shape[1])
  curves, aps = [], []
  for i in range(dist.shape[0]):
    order = np.argsort(dist[i], kind="stable")
    matches, n_kept = [], 0
    for j in order:
      if g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i]:
        continue
      n_kept += 1
      matches.append(1 if g_pids[j] == q_pids[i] else 0)
    if sum(matches) == 0:
      continue
    curve, seen = [], 0
    for m in matches:
      seen += m
      curve.append(1.0 if seen else 0.0)
    curve += [1.0] * max(0, max_rank - len(curve))
    curves.append(curve[:max_rank])
    hits, precision_sum = 0, 0.0
    for k, m in enumerate(matches):
      if m:
        hits += 1
        precision_sum += hits / (k + 1)
    aps.append(precision_sum / hits)
  return np.mean(curves, axis=0), float(np.mean(aps)), len(aps)


def _matlab_loop(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
  """Line-by-line reading of evaluation_mars.m / compute_AP.m (no-good query: AP 0)."""
  max_rank = min(max_rank, dist.shape[1])
  curves, aps = [], []
  for i in range(dist.shape[0]):
    good = {j for j in range(len(g_pids))
            if g_pids[j] == q_pids[i] and g_cams[j] != q_cams[i] and g_pids[j] != -1}
    junk = {j for j in range(len(g_pids))
            if g_pids[j] == -1 or (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])}
    curve = np.zeros(len(g_pids))
    ap = 0.0
    if good:
      old_recall, old_precision, found, position, n_junk = 0.0, 1.0, 0, 0, 0
      for n, j in enumerate(np.argsort(dist[i], kind="stable")):
        if j in good:
          curve[n - n_junk:] = 1
        if j in junk:
          n_junk += 1
          continue
        found += j in good
        recall, precision = found / len(good), found / (position + 1)
        ap += (recall - old_recall) * ((old_precision + precision) / 2)
        old_recall, old_precision = recall, precision
        position += 1
        if found == len(good):
          break
    curves.append(curve[:max_rank])
    aps.append(ap)
  return np.mean(curves, axis=0), float(np.mean(aps))


def _random_case(seed, ties):
  rng = np.random.default_rng(seed)
  num_q, num_g, num_ids = rng.integers(5, 16), rng.integers(10, 45), rng.integers(2, 8)
  q_pids = rng.integers(0, num_ids, num_q)
  g_pids = rng.integers(-1, num_ids, num_g)
  q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
  dist = rng.integers(0, 4, (num_q, num_g)).astype(float) if ties else rng.random((num_q, num_g))
  return dist, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("ties", [False, True])
def test_both_protocols_match_per_query_loops(seed, ties):
  dist, q_pids, g_pids, q_cams, g_cams = _random_case(seed, ties)
  max_rank = 1 + seed * 3  # both below and above the gallery size
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    cmc, mean_ap, num_valid = _torchreid_loop(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
    got = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank, "torchreid",
                        block_size=4)
    np.testing.assert_allclose(got["cmc"], cmc, atol=1e-12)
    assert got["mAP"] == pytest.approx(mean_ap, abs=1e-12)
    assert got["num_valid_queries"] == num_valid

    cmc, mean_ap = _matlab_loop(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
    got = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank, "mars_matlab",
                        block_size=3)
    np.testing.assert_allclose(got["cmc"], cmc, atol=1e-12)
    assert got["mAP"] == pytest.approx(mean_ap, abs=1e-12)


def test_ties_follow_gallery_order():
  # Every distance equal: the ranking is the gallery order (stable sort).
  g_pids = np.array([5, 7, 7, 5])
  g_cams = np.array([0, 0, 1, 1])
  result = evaluate_rank(np.zeros((1, 4)), [7], g_pids, [2], g_cams, max_rank=4)
  # order g0 x, g1 v, g2 v, g3 x -> rank 2; AP = (1/2 + 2/3) / 2
  np.testing.assert_allclose(result["cmc"], [0, 1, 1, 1])
  assert result["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)


# ----------------------------------- MARS-like cases against the protocols' definitions


def _brute_force(dist, q_pids, g_pids, q_cams, g_cams, max_rank, protocol):
  """Both protocols from their definitions, without any sort: a kept item is ranked before
  a true match when it is closer, or exactly as close with a lower gallery index."""
  max_rank = min(max_rank, dist.shape[1])
  curves, aps, num_valid = [], [], 0
  for i in range(dist.shape[0]):
    same_pid = g_pids == q_pids[i]
    junk = same_pid & (g_cams == q_cams[i])
    if protocol == "mars_matlab":
      junk = junk | (g_pids == -1)
    kept = np.flatnonzero(~junk)
    ranks = sorted(
        1 + sum(1 for k in kept
                if dist[i, k] < dist[i, j] or (dist[i, k] == dist[i, j] and k < j))
        for j in np.flatnonzero(same_pid & ~junk))
    if not ranks:
      if protocol == "mars_matlab":  # counted, as CMC 0 and AP 0
        curves.append(np.zeros(max_rank))
        aps.append(0.0)
      continue
    num_valid += 1
    curves.append((np.arange(1, max_rank + 1) >= ranks[0]).astype(float))
    if protocol == "torchreid":
      aps.append(sum(hit / rank for hit, rank in enumerate(ranks, 1)) / len(ranks))
    else:  # trapezoid over the non-junk positions; the precision one position earlier
      aps.append(sum((1 / len(ranks)) * ((1.0 if rank == 1 else (hit - 1) / (rank - 1))
                                         + hit / rank) / 2
                     for hit, rank in enumerate(ranks, 1)))
  return np.mean(curves, axis=0), float(np.mean(aps)), num_valid


def _mars_like_case(seed, ties, dtype):
  """Identities over several cameras with several tracklets each, distractors (pid 0), junk
  (pid -1), queries taken from the gallery (as in the MATLAB protocol's gallery, where a
  query is at distance 0 from itself), and queries without any valid match: their pid
  is absent, or present only in their own camera (or only as junk)."""
  rng = np.random.default_rng(seed)
  num_g = int(rng.integers(40, 90))
  num_ids = int(rng.integers(3, 10))
  g_pids = rng.choice(np.arange(-1, num_ids + 1), num_g,
                      p=np.r_[.1, .15, np.full(num_ids, .75 / num_ids)])
  g_cams = rng.integers(0, 4, num_g)
  from_gallery = rng.choice(num_g, int(rng.integers(5, 15)), replace=False)
  q_pids = np.r_[g_pids[from_gallery], num_ids + 1, -1, 0]
  q_cams = np.r_[g_cams[from_gallery], 0, 1, 2]
  # Same pid and camera only: no true match under either protocol.
  g_pids[-1], g_cams[-1] = num_ids + 2, 3
  q_pids, q_cams = np.r_[q_pids, num_ids + 2], np.r_[q_cams, 3]
  if ties:
    dist = rng.integers(0, 3, (q_pids.size, num_g)).astype(dtype)
  else:
    dist = rng.random((q_pids.size, num_g)).astype(dtype)
  dist[np.arange(from_gallery.size), from_gallery] = 0
  return dist, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("protocol", ["torchreid", "mars_matlab"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(6))
def test_mars_like_cases_match_the_definitions(seed, dtype, ties, protocol):
  dist, q_pids, g_pids, q_cams, g_cams = _mars_like_case(seed, ties, dtype)
  max_rank = 5 + 7 * seed
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    cmc, mean_ap, num_valid = _brute_force(dist, q_pids, g_pids, q_cams, g_cams, max_rank,
                                           protocol)
    for block_size, num_threads in [(1000, 1), (3, 1), (4, 2), (1, 3)]:
      got = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank, protocol,
                          block_size=block_size, num_threads=num_threads)
      np.testing.assert_allclose(got["cmc"], cmc, atol=1e-12)
      assert got["mAP"] == pytest.approx(mean_ap, abs=1e-12)
      assert got["num_valid_queries"] == num_valid
  # The sort-based per-query loops above agree with the definitions too.
  loop = _torchreid_loop if protocol == "torchreid" else _matlab_loop
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    loop_cmc, loop_map = loop(dist, q_pids, g_pids, q_cams, g_cams, max_rank)[:2]
  np.testing.assert_allclose(loop_cmc, cmc, atol=1e-12)
  assert loop_map == pytest.approx(mean_ap, abs=1e-12)


@pytest.mark.parametrize("protocol", ["torchreid", "mars_matlab"])
def test_ties_counted_in_small_chunks(monkeypatch, protocol):
  # Every row full of exact ties, counted a few gallery rows at a time.
  monkeypatch.setattr(rank_module, "_CHUNK_ELEMENTS", 50)
  dist, q_pids, g_pids, q_cams, g_cams = _mars_like_case(11, True, np.float64)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    cmc, mean_ap, _ = _brute_force(dist, q_pids, g_pids, q_cams, g_cams, 20, protocol)
    got = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, 20, protocol, block_size=5)
  np.testing.assert_allclose(got["cmc"], cmc, atol=1e-12)
  assert got["mAP"] == pytest.approx(mean_ap, abs=1e-12)


def test_tie_between_a_match_and_junk_or_an_other_identity():
  # q0 (pid 1, cam 0): g0 pid 2, g1 pid 1 cam 0 (junk), g2 pid 1 cam 1, g3 pid -1, g4 pid 1
  # cam 2; all at distance 1 except g4 at 0.5.
  g_pids = np.array([2, 1, 1, -1, 1])
  g_cams = np.array([0, 0, 1, 0, 2])
  dist = np.array([[1.0, 1.0, 1.0, 1.0, 0.5]], np.float32)
  # torchreid: kept order g4 v, g0 x, g2 v, g3 x -> ranks 1, 3; AP = (1 + 2/3) / 2.
  result = evaluate_rank(dist, [1], g_pids, [0], g_cams, max_rank=4)
  np.testing.assert_allclose(result["cmc"], [1, 1, 1, 1])
  assert result["mAP"] == pytest.approx((1 + 2 / 3) / 2)
  # mars_matlab: g1 and g3 junk -> g4 v (rank 1), g0 x, g2 v (rank 3):
  # AP = 1/2 * (1 + 1) / 2 + 1/2 * (1/2 + 2/3) / 2.
  result = evaluate_rank(dist, [1], g_pids, [0], g_cams, max_rank=4, protocol="mars_matlab")
  assert result["mAP"] == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
  # The tied other identity g0 placed after g2 (higher index) would give rank 2 instead.
  reordered = evaluate_rank(dist[:, [2, 1, 0, 3, 4]], [1], g_pids[[2, 1, 0, 3, 4]], [0],
                            g_cams[[2, 1, 0, 3, 4]], max_rank=4)
  assert reordered["mAP"] == pytest.approx(1.0)


@pytest.mark.parametrize("protocol", ["torchreid", "mars_matlab"])
def test_thread_and_block_settings_give_identical_results(protocol):
  rng = np.random.default_rng(5)
  num_q, num_g = 300, 700
  g_pids = rng.integers(-1, 60, num_g)
  g_cams = rng.integers(0, 6, num_g)
  q_pids, q_cams = rng.integers(0, 60, num_q), rng.integers(0, 6, num_q)
  dist = rng.random((num_q, num_g)).astype(np.float32)
  dist[:, ::7] = np.round(dist[:, ::7], 2)  # some exact ties
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    results = [evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, 50, protocol,
                             block_size=b, num_threads=t)
               for b, t in [(256, 1), (64, 2), (7, 4), (1000, 2)]]
  for other in results[1:]:
    np.testing.assert_array_equal(other["cmc"], results[0]["cmc"])
    assert other["mAP"] == results[0]["mAP"]


def test_all_gallery_items_junk_under_mars_matlab():
  with pytest.raises(ValueError, match="No query has a true match"):
    evaluate_rank(np.ones((2, 3)), [1, 2], [-1, -1, -1], [0, 1], [1, 1, 0], max_rank=3,
                  protocol="mars_matlab")


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kwargs, message", [
    (dict(q_pids=[1, 2]), "q_pids has 2 entries but distmat has 3 query"),
    (dict(g_camids=[0, 1, 1]), "g_camids has 3 entries but distmat has 6 gallery"),
    (dict(protocol="market"), "Unknown evaluation protocol 'market'"),
    (dict(max_rank=0), "max_rank must be a positive integer"),
    (dict(num_threads=0), "num_threads must be a positive integer"),
    (dict(block_size=0), "block_size must be a positive integer"),
    (dict(distmat=np.ones(6)), "distmat must be 2-D"),
    (dict(distmat=np.zeros((3, 0)), g_pids=[], g_camids=[]), "gallery is empty"),
    (dict(distmat=np.zeros((0, 6)), q_pids=[], q_camids=[]), "no query rows"),
])
def test_bad_input_raises(kwargs, message):
  args = dict(distmat=DIST, q_pids=Q_PIDS, g_pids=G_PIDS, q_camids=Q_CAMS, g_camids=G_CAMS,
              max_rank=6)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    evaluate_rank(**args)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_distances_raise(bad):
  dist = DIST.copy()
  dist[2, 4] = bad
  with pytest.raises(ValueError, match=r"NaN or Inf .*query 2, gallery 4"):
    evaluate_rank(dist, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=6)


@pytest.mark.parametrize("protocol", ["torchreid", "mars_matlab"])
@pytest.mark.parametrize("where", [(0, 1), (2, 3), (2, 4)])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_distances_raise_in_every_block(protocol, where, bad):
  # Column 4 is junk (pid -1): under mars_matlab it takes no rank but is still checked.
  dist = DIST.astype(np.float32)
  dist[where] = bad
  with pytest.raises(ValueError, match=rf"1 NaN or Inf .*query {where[0]}, gallery {where[1]}"):
    evaluate_rank(dist, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=6, protocol=protocol,
                  block_size=1, num_threads=2)


@pytest.mark.parametrize("protocol", ["torchreid", "mars_matlab"])
def test_no_valid_query_raises(protocol):
  with pytest.raises(ValueError, match="No query has a true match"):
    evaluate_rank(DIST[1:2], Q_PIDS[1:2], G_PIDS, Q_CAMS[1:2], G_CAMS, max_rank=6,
                  protocol=protocol)


# ------------------------------------------------------------------- summaries and splits


def test_summarize_reads_ranks_and_handles_short_curves():
  cmc = np.linspace(0.3, 0.98, 50)
  summary = summarize({"cmc": cmc, "mAP": 0.25, "num_gallery": 100})
  assert summary == {"rank1": cmc[0], "rank5": cmc[4], "rank10": cmc[9], "rank20": cmc[19],
                     "mAP": 0.25}
  # An 8-item gallery: the curve covers it, later ranks equal its last value.
  small = summarize({"cmc": np.array([.5, .6, .7, .8, .9, 1., 1., 1.]), "mAP": .4,
                     "num_gallery": 8})
  assert (small["rank5"], small["rank10"], small["rank20"]) == (0.9, 1.0, 1.0)
  with pytest.raises(ValueError, match="evaluate with max_rank >= 20"):
    summarize({"cmc": cmc[:10], "mAP": 0.25, "num_gallery": 100})


def test_summarize_of_a_small_gallery_evaluation():
  with pytest.warns(UserWarning):
    result = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
  assert summarize(result) == {"rank1": 0.0, "rank5": 1.0, "rank10": 1.0, "rank20": 1.0,
                               "mAP": pytest.approx(TORCHREID_MAP)}


def test_aggregate_ten_splits():
  rng = np.random.default_rng(3)
  curves = [np.sort(rng.random(20)) for _ in range(10)]
  maps = rng.random(10)
  results = [{"cmc": c, "mAP": m, "num_gallery": 150} for c, m in zip(curves, maps)]
  aggregated = aggregate_splits(results)
  assert aggregated["num_splits"] == 10
  for k in (1, 5, 10, 20):
    values = [c[k - 1] for c in curves]
    assert aggregated[f"rank{k}"] == pytest.approx(sum(values) / 10)
    mean = sum(values) / 10
    assert aggregated[f"rank{k}_std"] == pytest.approx(
        (sum((v - mean) ** 2 for v in values) / 10) ** 0.5)
  assert aggregated["mAP"] == pytest.approx(sum(maps) / 10)
  sample = aggregate_splits(results, ddof=1)
  assert sample["mAP_std"] == pytest.approx(
      (sum((m - sum(maps) / 10) ** 2 for m in maps) / 9) ** 0.5)
  np.testing.assert_allclose(aggregated["cmc"], np.sum(curves, axis=0) / 10)
  assert aggregated["per_split"][3]["rank5"] == curves[3][4]


def test_aggregate_accepts_summaries_and_rejects_bad_input():
  summaries = [{"rank1": r, "rank5": r, "rank10": r, "rank20": r, "mAP": r / 2}
               for r in (0.5, 0.7)]
  aggregated = aggregate_splits(summaries)
  assert aggregated["rank1"] == pytest.approx(0.6)
  assert aggregated["rank1_std"] == pytest.approx(0.1)
  assert "cmc" not in aggregated
  with pytest.raises(ValueError, match="non-empty list"):
    aggregate_splits([])
  with pytest.raises(ValueError, match=r"Split 1 lacks \['rank20'\]"):
    aggregate_splits([summaries[0], {"rank1": 1, "rank5": 1, "rank10": 1, "mAP": 1}])


# ------------------------------------------------ features -> distances -> metrics, blocked


@pytest.mark.parametrize("protocol", ["torchreid", "mars_matlab"])
def test_distances_on_disk_evaluate_like_in_memory(tmp_path, protocol):
  # A matrix too large for memory lives in a file: it is filled tile by tile and ranked a
  # block of queries at a time, with the same result as in memory.
  rng = np.random.default_rng(2)
  query, gallery = rng.standard_normal((37, 16)), rng.standard_normal((90, 16))
  q_pids, g_pids = rng.integers(0, 9, 37), rng.integers(-1, 9, 90)
  q_cams, g_cams = rng.integers(0, 3, 37), rng.integers(0, 3, 90)
  in_memory = compute_distance_matrix(query, gallery, block_size=8, gallery_block_size=32)
  on_disk = np.lib.format.open_memmap(str(tmp_path / "dist.npy"), mode="w+",
                                      dtype=np.float32, shape=(37, 90))
  filled = compute_distance_matrix(query, gallery, block_size=8, gallery_block_size=32,
                                   out=on_disk)
  assert filled is on_disk
  on_disk.flush()
  reopened = np.load(str(tmp_path / "dist.npy"), mmap_mode="r")
  np.testing.assert_array_equal(reopened, in_memory)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    expected = evaluate_rank(in_memory, q_pids, g_pids, q_cams, g_cams, 20, protocol)
    got = evaluate_rank(reopened, q_pids, g_pids, q_cams, g_cams, 20, protocol, block_size=5)
  np.testing.assert_array_equal(got["cmc"], expected["cmc"])
  assert got["mAP"] == expected["mAP"]


def test_distance_output_array_is_checked():
  with pytest.raises(ValueError, match=r"out must be a floating array of shape \(2, 3\)"):
    compute_distance_matrix(np.ones((2, 4)), np.ones((3, 4)), out=np.empty((3, 2)))
  with pytest.raises(ValueError, match="out must be a floating array"):
    compute_distance_matrix(np.ones((2, 4)), np.ones((3, 4)), out=np.empty((2, 3), np.int32))
