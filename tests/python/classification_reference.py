"""scikit-learn and NumPy references for src/metrics/classification.rs and bootstrap.rs, on the
cases (and bootstrap resample indices) the Rust test wrote, as JSON on stdout.

usage: classification_reference.py INPUT.json

INPUT holds any of these sections; the output has the same keys:
- "binary": [{scores, labels, thresholds}] -> per case: "at" (per threshold: tp, fp, tn, fn,
  sensitivity, specificity, ppv, f1; null where scikit-learn's zero_division applies) and
  "youden" (thresholds[1:][argmax((tpr - fpr)[1:])] of roc_curve(drop_intermediate=False);
  null for one class), "youden_exact" (the same argmax on integer-exact J, for information).
- "multiclass": [{truth, predicted, classes}] -> per case: confusion matrix and accuracy.
- "percentile": [{values, level}] -> per case: [low, high] of numpy.percentile.
- "bootstrap": {scores_a, scores_b, targets, mask ([image][label]), indices, level} ->
  per-label and mean intervals of model A, and paired differences A - B, with resample counts.
"""
import json
import sys
import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)


def none_if_nan(x):
    x = float(x)
    return None if np.isnan(x) else x


def binary(case):
    scores = np.asarray(case["scores"], dtype=np.float64)
    labels = np.asarray(case["labels"], dtype=bool).astype(int)
    at = []
    for t in case["thresholds"]:
        pred = (scores >= t).astype(int)
        tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
        z = np.nan
        at.append({
            "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
            "sensitivity": none_if_nan(recall_score(labels, pred, zero_division=z)),
            # Specificity: recall of the negative class, as the positive class of the flipped labels.
            "specificity": none_if_nan(recall_score(1 - labels, 1 - pred, zero_division=z)),
            "ppv": none_if_nan(precision_score(labels, pred, zero_division=z)),
            "f1": none_if_nan(f1_score(labels, pred, zero_division=z)),
        })
    out = {"at": at, "youden": None, "youden_exact": None}
    if 0 < labels.sum() < len(labels):
        fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
        # The infinite first threshold is never an answer.
        out["youden"] = float(thr[1:][np.argmax((tpr - fpr)[1:])])
        p, n = labels.sum(), len(labels) - labels.sum()
        tps = np.round(tpr * p).astype(np.int64)
        fps = np.round(fpr * n).astype(np.int64)
        out["youden_exact"] = float(thr[1:][np.argmax((tps * n - fps * p)[1:])])
    return out


def multiclass(case):
    truth, pred = case["truth"], case["predicted"]
    return {
        "confusion": confusion_matrix(truth, pred, labels=list(range(case["classes"]))).tolist(),
        "accuracy": float(accuracy_score(truth, pred)),
    }


def interval(values, level):
    if len(values) == 0:
        return None
    return np.percentile(np.asarray(values), [100 * (1 - level) / 2, 100 * (1 + level) / 2]).tolist()


def auroc(scores, targets, mask, rows, j):
    m = mask[rows, j]
    y, s = targets[rows, j][m], scores[rows, j][m]
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, s))


def aurocs(scores, targets, mask, indices):
    labels = scores.shape[1]
    full = [auroc(scores, targets, mask, np.arange(len(scores)), j) for j in range(labels)]
    per_resample = [[auroc(scores, targets, mask, np.asarray(r), j) for j in range(labels)] for r in indices]
    return full, per_resample


def bootstrap(case):
    level = case["level"]
    targets = np.asarray(case["targets"], dtype=bool)
    mask = np.asarray(case["mask"], dtype=bool)
    a = np.asarray(case["scores_a"], dtype=np.float64)
    b = np.asarray(case["scores_b"], dtype=np.float64)
    full_a, res_a = aurocs(a, targets, mask, case["indices"])
    full_b, res_b = aurocs(b, targets, mask, case["indices"])
    labels = len(full_a)
    defined = [j for j in range(labels) if full_a[j] is not None and full_b[j] is not None]

    def mean(v):
        if not defined or any(v[j] is None for j in defined):
            return None
        return float(np.mean([v[j] for j in defined]))

    single = {"per_label": [], "used": []}
    for j in range(labels):
        values = [r[j] for r in res_a if r[j] is not None]
        single["per_label"].append(interval(values, level))
        single["used"].append(len(values))
    means = [m for m in (mean(r) for r in res_a) if m is not None]
    single["mean"] = interval(means, level)
    single["mean_used"] = len(means)

    paired = {"per_label": [], "used": []}
    for j in range(labels):
        diffs = [ra[j] - rb[j] for ra, rb in zip(res_a, res_b) if ra[j] is not None and rb[j] is not None]
        observed = None if full_a[j] is None or full_b[j] is None else full_a[j] - full_b[j]
        iv = interval(diffs, level)
        paired["per_label"].append(None if observed is None or iv is None else [observed, iv])
        paired["used"].append(len(diffs))
    diffs = [mean(ra) - mean(rb) for ra, rb in zip(res_a, res_b) if mean(ra) is not None and mean(rb) is not None]
    observed = None if mean(full_a) is None or mean(full_b) is None else mean(full_a) - mean(full_b)
    iv = interval(diffs, level)
    paired["mean"] = None if observed is None or iv is None else [observed, iv]
    paired["mean_used"] = len(diffs)
    return {"single": single, "paired": paired}


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    warnings.simplefilter("ignore")  # zero_division and one-class warnings are expected
    out = {}
    if "binary" in cases:
        out["binary"] = [binary(c) for c in cases["binary"]]
    if "multiclass" in cases:
        out["multiclass"] = [multiclass(c) for c in cases["multiclass"]]
    if "percentile" in cases:
        out["percentile"] = [interval(c["values"], c["level"]) for c in cases["percentile"]]
    if "bootstrap" in cases:
        out["bootstrap"] = bootstrap(cases["bootstrap"])
    print(json.dumps(out))


main()
