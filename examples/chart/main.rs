//! Line charts from a JSON spec, for results that scripts gather (experiment summaries,
//! training curves of several runs side by side):
//!
//!     chart --spec fractions.json --out fractions.png
//!
//! The spec is a list of panels: `[{"title": ..., "x_label": ..., "y_label": ...,
//! "y_range": [lo, hi] (optional), "series": [{"name": ..., "points": [[x, y], ...]}]}]`.
use std::path::PathBuf;

use anyhow::{Context, Result};
use chess::plot::{Panel, Series, line_chart};
use clap::Parser;
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(about = "Draw line charts (PNG) from a JSON spec")]
struct Args {
    #[arg(long)]
    spec: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Deserialize)]
struct PanelSpec {
    title: String,
    #[serde(default)]
    x_label: String,
    #[serde(default)]
    y_label: String,
    y_range: Option<(f64, f64)>,
    series: Vec<SeriesSpec>,
}

#[derive(Deserialize)]
struct SeriesSpec {
    name: String,
    points: Vec<(f64, f64)>,
}

fn main() -> std::process::ExitCode {
    chess::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.spec).with_context(|| args.spec.display().to_string())?;
    let specs: Vec<PanelSpec> =
        serde_json::from_str(&text).with_context(|| format!("{}: not a chart spec", args.spec.display()))?;
    let panels: Vec<Panel> = specs
        .into_iter()
        .map(|p| Panel {
            title: p.title,
            x_label: p.x_label,
            y_label: p.y_label,
            y_range: p.y_range,
            series: p.series.into_iter().map(|s| Series { name: s.name, points: s.points }).collect(),
        })
        .collect();
    line_chart(&args.out, &panels)?;
    Ok(())
}
