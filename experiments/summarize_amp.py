"""Summary of experiments/amp_bf16_vs_fp32.sh: smoothed loss and positive top-1 per run at equal
step counts (amp.json, drawn by `chart`), and a table (amp.md) of each run's last 100 steps and
throughput, with whether bf16's final values lie within the fp32 seeds' spread."""
import json
import statistics
import sys
from pathlib import Path

WINDOW = 25  # steps per point of the curves
TAIL = 100  # steps whose mean is the final value


def steps(run: Path):
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "step":
            rows.append(r)
    # A resumed run may log a step twice: keep the last record of each global step.
    by_step = {r["global_step"]: r for r in rows}
    return [by_step[k] for k in sorted(by_step)]


def windows(rows, key):
    points, acc = [], []
    for r in rows:
        acc.append(r[key])
        if len(acc) == WINDOW:
            points.append([r["global_step"], statistics.fmean(acc)])
            acc = []
    return points


def main(out: Path):
    runs = sorted(p for p in out.iterdir() if p.is_dir() and (p / "metrics.jsonl").exists())
    if not runs:
        sys.exit(f"no runs in {out}")
    data = {r.name: steps(r) for r in runs}
    finished = {
        name: any('"kind":"end"' in line for line in (out / name / "metrics.jsonl").read_text().splitlines())
        for name in data
    }
    panels = []
    for key, title, y in [("loss", "MoCo loss", "InfoNCE loss"), ("top1", "positive key top-1", "top-1 (%)")]:
        panels.append({
            "title": f"{title}, mean of {WINDOW} steps",
            "x_label": "step",
            "y_label": y,
            "series": [
                {"name": ("bf16 " if n.startswith("bf16") else "fp32 ") + n.split("_")[-1], "points": windows(rows, key)}
                for n, rows in data.items()
            ],
        })
    (out / "amp.json").write_text(json.dumps(panels, indent=1))

    lines = [
        "| run | steps | finished | loss, last 100 steps | top-1 %, last 100 steps | img/s (median) |",
        "|---|---|---|---|---|---|",
    ]
    final = {}
    for name, rows in data.items():
        tail = rows[-TAIL:]
        loss = statistics.fmean(r["loss"] for r in tail)
        top1 = statistics.fmean(r["top1"] for r in tail)
        ips = statistics.median(r["img_per_s"] for r in rows[10:] or rows)
        final[name] = (len(rows), loss, top1)
        lines.append(f"| {name} | {len(rows)} | {'yes' if finished[name] else 'no'} | {loss:.4f} | {top1:.2f} | {ips:.1f} |")
    fp32 = [v for n, v in final.items() if n.startswith("off") and finished[n]]
    bf16 = [v for n, v in final.items() if n.startswith("bf16") and finished[n]]
    lines.append("")
    if len(fp32) >= 2 and bf16:
        for i, label in [(1, "loss"), (2, "top-1")]:
            lo, hi = min(v[i] for v in fp32), max(v[i] for v in fp32)
            mean_f = statistics.fmean(v[i] for v in fp32)
            sd_f = statistics.stdev(v[i] for v in fp32)
            mean_b = statistics.fmean(v[i] for v in bf16)
            sd_b = statistics.stdev(v[i] for v in bf16) if len(bf16) > 1 else float("nan")
            inside = sum(lo <= v[i] <= hi for v in bf16)
            lines.append(
                f"- final {label}: fp32 {mean_f:.4f} ± {sd_f:.4f} (range {lo:.4f} to {hi:.4f}), "
                f"bf16 {mean_b:.4f} ± {sd_b:.4f}; {inside} of {len(bf16)} bf16 runs inside the fp32 range"
            )
    text = "\n".join(lines) + "\n"
    (out / "amp.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "target/experiments/amp"))
