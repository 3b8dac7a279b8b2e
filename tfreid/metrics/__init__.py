"""Evaluation metrics: distances, CMC/mAP under both MARS protocols, re-ranking, splits.

    dist = compute_distance_matrix(query_embeddings, gallery_embeddings, "euclidean")
    result = evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids, protocol="torchreid")
    summarize(result)  # {"rank1", "rank5", "rank10", "rank20", "mAP"} fractions

Reports (Markdown table, CMC plot, rank-list images) are in `tfreid.metrics.report`.
"""

from tfreid.metrics.distance import METRICS, compute_distance_matrix
from tfreid.metrics.rank import PROTOCOLS, evaluate_rank
from tfreid.metrics.rerank import re_ranking
from tfreid.metrics.splits import aggregate_splits, summarize

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "aggregate_splits",
    "compute_distance_matrix",
    "evaluate_rank",
    "re_ranking",
    "summarize",
]
