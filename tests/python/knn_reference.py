"""Weighted kNN classification written from its definition (Wu et al. 2018) in NumPy, as the
reference of chess::metrics::knn: cosine similarity, the k most similar bank rows vote for
their label with weight exp(sim / T). Prints the predictions and each row's vote margin.

    knn_reference.py BANK.npy LABELS.npy QUERY.npy CLASSES K T
"""
import json
import sys

import numpy as np

bank, labels, query = (np.load(p).astype(np.float64) for p in sys.argv[1:4])
classes, k, t = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
labels = labels.astype(np.int64).reshape(-1)
bank /= np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
query /= np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
sim = query @ bank.T
idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
weights = np.exp(np.take_along_axis(sim, idx, 1) / t)
votes = np.zeros((query.shape[0], classes))
for row in range(query.shape[0]):
    np.add.at(votes[row], labels[idx[row]], weights[row])
top2 = np.sort(votes, axis=1)[:, -2:]
print(json.dumps({"pred": votes.argmax(1).tolist(),
                  "margin": ((top2[:, 1] - top2[:, 0]) / top2[:, 1]).tolist()}))
