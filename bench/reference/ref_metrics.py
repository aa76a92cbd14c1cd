"""Exact evaluation metrics, as models/metrics.cc computes them."""

import numpy as np


def auc(scores, labels):
    """Exact ROC AUC: P(random positive scores above random negative), ties count one half.

    Labels >= 0.5 are positives. Ties get their average rank (as sklearn's
    roc_auc_score). NaN when a class is empty or any score is NaN.
    """
    scores = np.asarray(scores)
    pos = np.asarray(labels) >= 0.5
    n = scores.shape[0]
    n_pos = int(pos.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0 or np.isnan(scores).any():
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], n)
    avg_rank = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks = avg_rank[np.cumsum(first) - 1]
    pos_rank_sum = ranks[pos[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(scores, labels, groups):
    """Group AUC: per-group AUC averaged with the group's sample count as weight.

    Groups with one class only are skipped; NaN when none is left or any score
    is NaN.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if np.isnan(scores).any():
        return float("nan")
    order = np.argsort(groups, kind="mergesort")
    g = groups[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    weighted = weight = 0.0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = order[lo:hi]
        a = auc(scores[idx], labels[idx])
        if not np.isnan(a):
            weighted += a * (hi - lo)
            weight += hi - lo
    return weighted / weight if weight > 0 else float("nan")


def logloss(probs, labels):
    """Mean binary cross-entropy of probabilities clipped to [1e-7, 1 - 1e-7]; NaN when empty."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    if p.size == 0:
        return float("nan")
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
