"""Summary of experiments/pneumonia_fractions.sh: a Markdown table of test mean AUROC (with the
bootstrap interval, and the spread over seeds where there are several) and the paired
pretrained-vs-scratch differences, plus a chart spec for `chart`.

usage: summarize_fractions.py OUT_DIR   (writes OUT_DIR/summary.md and OUT_DIR/fractions.json)
"""
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

out = Path(sys.argv[1])
runs = out / "runs"
pattern = re.compile(r"f(?P<fraction>[0-9.]+)_(?P<mode>linear|finetune)_(?P<init>scratch|chess)_s(?P<seed>\d+)$")

results = defaultdict(list)  # (fraction, mode, init) -> [(seed, mean, ci, n_train)]
for run in sorted(runs.glob("f*_s*")):
    m = pattern.match(run.name)
    metrics = run / "test" / "metrics.json"
    if not m or not metrics.exists():
        continue
    j = json.loads(metrics.read_text())
    config = json.loads((run / "config.json").read_text())
    key = (float(m["fraction"]), m["mode"], m["init"])
    results[key].append((int(m["seed"]), j["mean_auroc"], j.get("mean_auroc_ci"), config.get("train_images")))

compares = {}
for path in sorted(runs.glob("f*_compare.json")):
    m = re.match(r"f(?P<fraction>[0-9.]+)_(?P<mode>linear|finetune)_s(?P<seed>\d+)_compare.json", path.name)
    if m:
        compares[(float(m["fraction"]), m["mode"], int(m["seed"]))] = json.loads(path.read_text())["mean_auroc"]

lines = [
    "| labels | mode | init | training images | test mean AUROC [95 % CI] | seeds (mean ± sd) |",
    "|---|---|---|---|---|---|",
]
for (fraction, mode, init), rows in sorted(results.items()):
    rows.sort()
    seed0 = rows[0]
    ci = seed0[2]
    cell = f"{seed0[1]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{seed0[1]:.3f}"
    spread = ""
    if len(rows) > 1:
        values = [r[1] for r in rows]
        spread = f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)} seeds)"
    lines.append(f"| {fraction * 100:g} % | {mode} | {init} | {seed0[3]} | {cell} | {spread} |")

lines += ["", "| labels | mode | seed | pretrained - scratch [95 % paired bootstrap CI] |", "|---|---|---|---|"]
for (fraction, mode, seed), c in sorted(compares.items()):
    d, ci = c.get("difference"), c.get("ci")
    cell = f"{d:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if d is not None and ci else "n/a"
    lines.append(f"| {fraction * 100:g} % | {mode} | {seed} | {cell} |")

text = "\n".join(lines) + "\n"
(out / "summary.md").write_text(text)
print(text)

panels = []
for mode in ("linear", "finetune"):
    series = []
    for init, name in (("scratch", "from scratch"), ("chess", "pretrained (MoCo v2, this CPU)")):
        points = []
        for (fraction, m, i), rows in sorted(results.items()):
            if m == mode and i == init:
                points.append([math.log10(fraction * 100), statistics.mean(r[1] for r in rows)])
        if points:
            series.append({"name": name, "points": points})
    if series:
        panels.append({
            "title": f"{mode}: test mean AUROC",
            "x_label": "log10(% of training labels)",
            "y_label": "mean AUROC",
            "series": series,
        })
if panels:
    (out / "fractions.json").write_text(json.dumps(panels, indent=1))
