"""scikit-learn's roc_curve and roc_auc_score on seeded cases with ties, as JSON on stdout.

usage: auroc_reference.py
"""
import json

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def case(rng, n, levels, p):
    labels = rng.random(n) < p
    if labels.all() or not labels.any():
        labels[0] = not labels[0]
    # Scores on a coarse grid give ties, as probabilities rounded by a model often do.
    scores = np.round(rng.random(n) * levels) / levels + 0.3 * labels
    out = {"scores": scores.tolist(), "labels": labels.tolist(), "auc": roc_auc_score(labels, scores)}
    for drop in (True, False):
        fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=drop)
        key = "drop" if drop else "full"
        out[key] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": [t if np.isfinite(t) else "inf" for t in thr.tolist()]}
    return out


rng = np.random.default_rng(5)
cases = [case(rng, n, levels, p) for n, levels, p in [(10, 4, 0.5), (200, 10, 0.1), (1000, 1000, 0.3), (57, 2, 0.7)]]
print(json.dumps(cases))
