"""torchvision's ResNet-18 with a 1-channel conv1 loads `classify`'s best.pth (weights_only) and
predicts the images of `classify predict`'s CSV; prints the largest probability difference.

usage: classify_predict_reference.py BEST_PTH PREDICTIONS_CSV
"""
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

best, preds = Path(sys.argv[1]), Path(sys.argv[2])
card = json.loads(best.with_suffix(".json").read_text())
state = torch.load(best, weights_only=True)
model = getattr(torchvision.models, card["arch"])(num_classes=len(card["labels"]))
model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
model.load_state_dict(state, strict=True)
model.eval()

worst = 0.0
with open(preds, newline="") as f:
    rows = list(csv.reader(f))
assert rows[0] == ["Path"] + card["labels"], rows[0]
for row in rows[1:]:
    pixels = np.asarray(Image.open(row[0]).convert("L"), dtype=np.float32)
    assert pixels.shape == (card["image_size"],) * 2, pixels.shape
    x = torch.from_numpy((pixels / 255.0 - 0.658) / 0.221)[None, None]
    with torch.no_grad():
        logits = model(x)
    probs = torch.sigmoid(logits) if card["multi_label"] else torch.softmax(logits, dim=1)
    ours = np.array([float(v) for v in row[1:]])
    worst = max(worst, float(np.abs(probs[0].double().numpy() - ours).max()))
print(f"images {len(rows) - 1}")
print(f"max_abs_diff {worst:.3e}")
