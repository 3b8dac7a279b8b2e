"""Headline numbers of one evaluation, and their mean and spread over dataset splits.

iLIDS-VID and PRID-2011 are evaluated on 10 random train/test person splits and papers
report the mean over the splits (REFERENCE_FACTS.md; a3d section IV-A: "We repeated
experiments 10 times and calculated the average accuracy", stal section IV-A likewise).
`summarize` turns one `evaluate_rank` result into rank-1/5/10/20 and mAP; `aggregate_splits`
averages those over splits and adds their standard deviation.

Which standard deviation: the papers print the mean only; a spread over repeated random
splits, when given beside it as "mean ± std", is conventionally the *sample* standard
deviation (divisor N - 1, the default of MATLAB's `std`, the tool of the datasets'
released split files and of the official MARS evaluation code). The 10 splits are a random
sample of the possible person partitions, and the N - 1 divisor makes the variance an
unbiased estimate of the split-to-split variance. `SPLITS_STD_DDOF` (= 1) is what the
protocol drivers use (`python -m tfreid.splits`, `python -m tfreid.evaluate --split=all`);
`aggregate_splits` itself keeps numpy's population default (ddof=0) unless asked.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

RANKS = (1, 5, 10, 20)
KEYS = tuple(f"rank{k}" for k in RANKS) + ("mAP",)
# Delta degrees of freedom of the spread over splits reported by the protocol drivers:
# the sample standard deviation (module docstring).
SPLITS_STD_DDOF = 1


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
    results: one entry per split, each an `evaluate_rank` result (with `cmc`; a
      `metrics.json` record of `python -m tfreid.evaluate` works too) or an already
      summarised dict with the keys of `summarize`.
    ddof: delta degrees of freedom of the standard deviation: 0 (default) the population
      std, as `np.std`; 1 the sample std, as MATLAB's `std` and the protocol drivers
      (`SPLITS_STD_DDOF`, module docstring).

  Returns:
    dict with `rank1`, ..., `mAP` (means over splits), `rank1_std`, ..., `mAP_std`,
    `std_ddof` (the `ddof` used), `num_splits`, `per_split` (the summaries, in order) and,
    when every result holds a CMC curve of the same length, `cmc` (the element-wise mean
    curve).

  Raises:
    ValueError: no results, `ddof` not in 0..len(results) - 1, a result without the
      keys, or a value that is not a finite fraction in [0, 1].
  """
  if isinstance(results, Mapping) or isinstance(results, (str, bytes)):
    raise ValueError("aggregate_splits needs a list of per-split results (10 for iLIDS-VID "
                     "and PRID-2011), got a single mapping or string.")
  results = list(results)
  if not results:
    raise ValueError("aggregate_splits needs a non-empty list of per-split results "
                     "(10 for iLIDS-VID and PRID-2011).")
  if ddof < 0:
    raise ValueError(f"ddof must be 0 (population std) or 1 (sample std), got {ddof}.")
  if len(results) <= ddof:
    raise ValueError(f"ddof={ddof} needs more than {ddof} splits, got {len(results)}: "
                     "the sample standard deviation of one split is undefined.")
  summaries = []
  for index, result in enumerate(results):
    if not isinstance(result, Mapping):
      raise ValueError(f"Split {index} is a {type(result).__name__}, expected a dict "
                       "(an evaluate_rank result or a summary).")
    if "cmc" in result:
      summaries.append(summarize(result))
    else:
      missing = [key for key in KEYS if key not in result]
      if missing:
        raise ValueError(f"Split {index} lacks {missing}: pass evaluate_rank results or "
                         "summaries with rank1, rank5, rank10, rank20 and mAP.")
      summaries.append({key: float(result[key]) for key in KEYS})
  table = np.array([[summary[key] for key in KEYS] for summary in summaries], np.float64)
  bad = ~np.isfinite(table) | (table < 0) | (table > 1)
  if bad.any():
    row, column = (int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"Split {row} has {KEYS[column]} = {table[row, column]}; expected a "
                     "finite fraction in [0, 1] (metrics are fractions, not percentages).")
  means = table.mean(axis=0)
  stds = table.std(axis=0, ddof=ddof)
  aggregated = {key: float(mean) for key, mean in zip(KEYS, means)}
  aggregated.update({f"{key}_std": float(std) for key, std in zip(KEYS, stds)})
  aggregated["std_ddof"] = int(ddof)
  aggregated["num_splits"] = len(summaries)
  aggregated["per_split"] = summaries
  curves = [np.asarray(result["cmc"], np.float64) for result in results if "cmc" in result]
  if len(curves) == len(results) and len({curve.shape for curve in curves}) == 1:
    aggregated["cmc"] = np.mean(curves, axis=0)
  return aggregated
