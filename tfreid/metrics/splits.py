"""Headline numbers of one evaluation, and their mean and spread over dataset splits.

iLIDS-VID and PRID-2011 are evaluated on 10 random train/test person splits and papers
report the mean over the splits (REFERENCE_FACTS.md). `summarize` turns one
`evaluate_rank` result into rank-1/5/10/20 and mAP; `aggregate_splits` averages those
over splits and adds their standard deviation.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

RANKS = (1, 5, 10, 20)
KEYS = tuple(f"rank{k}" for k in RANKS) + ("mAP",)


def summarize(result: Mapping[str, Any]) -> dict:
  """{"rank1", "rank5", "rank10", "rank20", "mAP"} fractions of an `evaluate_rank` result.

  A rank beyond the CMC curve (max_rank < 20) is known only when the curve already covers
  the whole gallery (the gallery is smaller than that rank): the curve is flat after its
  end, so its last value is used. Otherwise the rank was cut off by `max_rank` and a
  ValueError says to evaluate with a larger max_rank.
  """
  if "cmc" not in result or "mAP" not in result:
    raise ValueError(f"Expected an evaluate_rank result with 'cmc' and 'mAP', got keys "
                     f"{sorted(result)}.")
  cmc = np.asarray(result["cmc"], np.float64)
  if cmc.ndim != 1 or cmc.size == 0:
    raise ValueError(f"result['cmc'] must be a non-empty 1-D curve, got shape {cmc.shape}.")
  num_gallery = result.get("num_gallery")
  summary = {}
  for k in RANKS:
    if k <= cmc.size:
      summary[f"rank{k}"] = float(cmc[k - 1])
    elif num_gallery is not None and cmc.size >= num_gallery:
      summary[f"rank{k}"] = float(cmc[-1])
    else:
      raise ValueError(
          f"The CMC curve stops at rank {cmc.size} but rank-{k} was asked for and the gallery "
          f"({num_gallery if num_gallery is not None else 'unknown size'}) is larger: "
          f"evaluate with max_rank >= {max(RANKS)}.")
  summary["mAP"] = float(result["mAP"])
  return summary


def aggregate_splits(results: Sequence[Mapping[str, Any]], ddof: int = 0) -> dict:
  """Mean and standard deviation of rank-1/5/10/20 and mAP over per-split results.

  Args:
    results: one entry per split, each an `evaluate_rank` result (with `cmc`) or an
      already summarised dict with the keys of `summarize`.
    ddof: delta degrees of freedom of the standard deviation (0: population std as
      `np.std`; 1: sample std).

  Returns:
    dict with `rank1`, ..., `mAP` (means over splits), `rank1_std`, ..., `mAP_std`,
    `num_splits`, `per_split` (the summaries, in order) and, when every result holds a CMC
    curve of the same length, `cmc` (the element-wise mean curve).
  """
  if isinstance(results, Mapping) or len(results) == 0:
    raise ValueError("aggregate_splits needs a non-empty list of per-split results "
                     "(10 for iLIDS-VID and PRID-2011).")
  if len(results) <= ddof:
    raise ValueError(f"ddof={ddof} needs more than {ddof} splits, got {len(results)}.")
  summaries = []
  for index, result in enumerate(results):
    if "cmc" in result:
      summaries.append(summarize(result))
    else:
      missing = [key for key in KEYS if key not in result]
      if missing:
        raise ValueError(f"Split {index} lacks {missing}: pass evaluate_rank results or "
                         "summaries with rank1, rank5, rank10, rank20 and mAP.")
      summaries.append({key: float(result[key]) for key in KEYS})
  table = np.array([[summary[key] for key in KEYS] for summary in summaries], np.float64)
  means = table.mean(axis=0)
  stds = table.std(axis=0, ddof=ddof)
  aggregated = {key: float(mean) for key, mean in zip(KEYS, means)}
  aggregated.update({f"{key}_std": float(std) for key, std in zip(KEYS, stds)})
  aggregated["num_splits"] = len(summaries)
  aggregated["per_split"] = summaries
  curves = [np.asarray(result["cmc"], np.float64) for result in results if "cmc" in result]
  if len(curves) == len(results) and len({curve.shape for curve in curves}) == 1:
    aggregated["cmc"] = np.mean(curves, axis=0)
  return aggregated
