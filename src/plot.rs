//! PNG figures for results better seen than read: training curves, ROC curves, confusion
//! matrices, Grad-CAM overlays, sample grids.
//!
//! Charts are drawn by `plotters` into memory and written by `image`, whole or not at all. Text
//! is DejaVu Sans bundled in the crate (`assets/fonts`, registered at first use), so a fresh
//! machine needs no system fonts or fontconfig.
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::{GrayImage, ImageBuffer, Luma, PixelWithColorType, Rgb, RgbImage};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// A figure that could not be drawn or written; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct PlotError {
    pub path: PathBuf,
    pub reason: String,
}

/// One named line of (x, y) points in drawing order; NaN and infinite points are left out.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart of a [`line_chart`]. `y_range` fixes the y axis (AUROC in 0..1, so that runs
/// compare at a glance); `None` fits it to the data.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub y_range: Option<(f64, f64)>,
}

/// Size of each panel of a line chart; ROC charts and confusion matrices are square.
const PANEL: (u32, u32) = (640, 480);
const SQUARE: u32 = 640;

/// matplotlib's `tab10`: ten colours told apart at a glance, also by most colour-blind readers.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type Drawn = Result<(), Box<dyn Error>>;

/// Training curves (loss, validation AUROC per epoch) or runs compared: one panel per chart,
/// side by side, each `PANEL` pixels; a legend when a panel has more than one series.
pub fn line_chart(path: &Path, panels: &[Panel]) -> Result<(), PlotError> {
    if panels.is_empty() {
        return Err(PlotError { path: path.to_path_buf(), reason: "no panels to draw".into() });
    }
    render(path, (PANEL.0 * panels.len() as u32, PANEL.1), |root| {
        for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        Ok(())
    })
}

fn draw_panel(area: &Area, panel: &Panel) -> Drawn {
    let lines: Vec<Vec<(f64, f64)>> = panel.series.iter().map(|s| finite(&s.points)).collect();
    let (x0, x1) = padded(lines.iter().flatten().map(|p| p.0), 0.02);
    let (y0, y1) = panel.y_range.unwrap_or_else(|| padded(lines.iter().flatten().map(|p| p.1), 0.05));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    for (i, (series, points)) in panel.series.iter().zip(&lines).enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))?
            .label(&series.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        // Markers show single points and evaluation epochs; on long curves they would be noise.
        if points.len() <= 50 {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        }
    }
    if panel.series.len() > 1 {
        // Curves that end high (AUROC) leave the lower right free; falling ones (loss) the upper.
        let ends: Vec<f64> = lines.iter().filter_map(|l| l.last()).map(|p| (p.1 - y0) / (y1 - y0)).collect();
        let high = !ends.is_empty() && ends.iter().sum::<f64>() / ends.len() as f64 > 0.5;
        let corner = if high { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight };
        draw_legend(&mut chart, corner)?;
    }
    Ok(())
}

/// ROC curves, x = false positive rate, y = true positive rate, with the chance diagonal dashed.
/// Names go in the legend as given: callers write "Label (AUROC 0.912)".
pub fn roc_chart(path: &Path, title: &str, curves: &[Series]) -> Result<(), PlotError> {
    render(path, (SQUARE, SQUARE), |root| {
        // Label areas sized so that the plotting area itself is square.
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(57)
            .y_label_area_size(84)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("false positive rate")
            .y_desc("true positive rate")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(BLACK.mix(0.04))
            .draw()?;
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(DashedLineSeries::new([(0.0, 0.0), (1.0, 1.0)], 8, 6, grey.stroke_width(1)))?
            .label("chance")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey));
        for (i, curve) in curves.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(finite(&curve.points), colour.stroke_width(2)))?
                .label(&curve.name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
    })
}

/// Confusion matrix as a heat map: rows are the true class, columns the predicted one, each
/// cell shaded by its count (white to blue, as scikit-learn's display) and labelled with it.
pub fn confusion_chart(path: &Path, classes: &[String], matrix: &[Vec<u64>]) -> Result<(), PlotError> {
    let n = classes.len();
    if n == 0 || matrix.len() != n || matrix.iter().any(|row| row.len() != n) {
        let shape: Vec<usize> = matrix.iter().map(Vec::len).collect();
        let reason = format!("{n} classes but a matrix with rows of lengths {shape:?}");
        return Err(PlotError { path: path.to_path_buf(), reason });
    }
    render(path, (SQUARE, SQUARE), |root| {
        let (margin, desc) = (16, 28);
        let label = ("sans-serif", 14).into_font();
        let widths = classes.iter().map(|c| label.box_size(c)).collect::<Result<Vec<_>, _>>()?;
        let widest = widths.iter().map(|s| s.0 as i32).max().unwrap_or(0) + 10;
        let room = SQUARE as i32 - 2 * margin - desc;
        // Column names stand upright where they do not fit across their cell.
        let upright = widest > (room - widest).min(room - 24) / n as i32;
        let below = if upright { widest } else { 24 };
        let cell = ((room - widest).min(room - below) / n as i32).max(1);
        // The whole figure centred: names, grid and the two axis words.
        let (spare_x, spare_y) = (room - widest - n as i32 * cell, room - below - n as i32 * cell);
        let (left, top) = (margin + spare_x / 2 + desc + widest, margin + spare_y / 2);
        let max = matrix.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
        let size = (f64::from(cell) * 0.3).clamp(10.0, 18.0);
        for (i, row) in matrix.iter().enumerate() {
            for (j, &count) in row.iter().enumerate() {
                let (x, y) = (left + j as i32 * cell, top + i as i32 * cell);
                let t = count as f64 / max;
                let shade = |a: u8, b: u8| (f64::from(a) + t * (f64::from(b) - f64::from(a))).round() as u8;
                let fill = RGBColor(shade(247, 8), shade(251, 48), shade(255, 107));
                root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], fill.filled()))?;
                let ink = if t > 0.5 { WHITE } else { BLACK };
                let style =
                    ("sans-serif", size).into_font().color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
                root.draw_text(&count.to_string(), &style, (x + cell / 2, y + cell / 2))?;
            }
        }
        let grid = n as i32 * cell;
        root.draw(&Rectangle::new([(left, top), (left + grid, top + grid)], BLACK))?;
        let right = label.color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center));
        let under = if upright {
            label.transform(FontTransform::Rotate270).color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center))
        } else {
            label.color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top))
        };
        for (k, class) in classes.iter().enumerate() {
            let centre = k as i32 * cell + cell / 2;
            root.draw_text(class, &right, (left - 6, top + centre))?;
            root.draw_text(class, &under, (left + centre, top + grid + 6))?;
        }
        let axis = ("sans-serif", 16).into_font().color(&BLACK);
        let predicted = axis.pos(Pos::new(HPos::Center, VPos::Top));
        root.draw_text("predicted", &predicted, (left + grid / 2, top + grid + below + 4))?;
        let truth = axis.transform(FontTransform::Rotate270).pos(Pos::new(HPos::Center, VPos::Top));
        root.draw_text("true", &truth, (left - widest - desc, top + grid / 2))?;
        Ok(())
    })
}

/// matplotlib's `jet` colour map (its segment data sampled into its 256-entry table, as
/// `cm.jet(v)` looks colours up), the usual Grad-CAM palette: blue for 0, red for 1. Values
/// outside 0..1 are clamped, NaN is 0.
pub fn jet(v: f32) -> [u8; 3] {
    const RED: &[(f32, f32)] = &[(0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)];
    const GREEN: &[(f32, f32)] =
        &[(0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)];
    const BLUE: &[(f32, f32)] = &[(0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)];
    // The cast saturates: negative and NaN give entry 0, above 1 entry 255.
    let x = ((v * 256.0) as usize).min(255) as f32 / 255.0;
    [RED, GREEN, BLUE].map(|segments| {
        let w = segments.windows(2).find(|w| x <= w[1].0).expect("segments end at 1");
        let t = (x - w[0].0) / (w[1].0 - w[0].0);
        ((w[0].1 + t * (w[1].1 - w[0].1)) * 255.0).round() as u8
    })
}

/// A Grad-CAM overlay: the grey image (0..255) blended with `jet(heat)` (heat in 0..1, same
/// size) as `(1 - alpha) * grey + alpha * colour`, so alpha 0 is the image untouched.
///
/// # Panics
/// If `grey` or `heat` is not `width * height` values long.
pub fn heatmap_overlay(grey: &[f32], width: u32, height: u32, heat: &[f32], alpha: f32) -> RgbImage {
    let n = width as usize * height as usize;
    assert!(
        grey.len() == n && heat.len() == n,
        "{width}x{height} overlay of {} grey and {} heat values",
        grey.len(),
        heat.len()
    );
    let a = alpha.clamp(0.0, 1.0);
    RgbImage::from_fn(width, height, |x, y| {
        let i = y as usize * width as usize + x as usize;
        let g = grey[i].clamp(0.0, 255.0);
        Rgb(jet(heat[i]).map(|c| ((1.0 - a) * g + a * f32::from(c)).round() as u8))
    })
}

/// Grey tiles (0..255, all the same size) in rows of `columns`, `gap` white pixels between
/// them and around: sample grids, or an image beside its reconstruction.
///
/// # Panics
/// If the tiles differ in size or a tile's values do not fill it.
pub fn image_grid(images: &[(Vec<f32>, u32, u32)], columns: usize, gap: u32) -> GrayImage {
    let (w, h) = images.first().map_or((0, 0), |&(_, w, h)| (w, h));
    for (k, (pixels, tw, th)) in images.iter().enumerate() {
        assert!((*tw, *th) == (w, h) && pixels.len() == w as usize * h as usize, "tile {k} is not {w}x{h}");
    }
    let columns = columns.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(columns) as u32;
    let (cols, gap_w) = (columns as u32, w + gap);
    let mut grid = GrayImage::from_pixel(cols * gap_w + gap, rows * (h + gap) + gap, Luma([255]));
    for (k, (pixels, _, _)) in images.iter().enumerate() {
        let (x0, y0) = (gap + (k as u32 % cols) * gap_w, gap + (k as u32 / cols) * (h + gap));
        for (j, &v) in pixels.iter().enumerate() {
            let (x, y) = (j as u32 % w, j as u32 / w);
            grid.put_pixel(x0 + x, y0 + y, Luma([v.clamp(0.0, 255.0).round() as u8]));
        }
    }
    grid
}

/// Writes an 8-bit image (an overlay, a grid) as PNG, whole or not at all.
pub fn write_png<P: PixelWithColorType<Subpixel = u8>>(
    path: &Path,
    image: &ImageBuffer<P, Vec<u8>>,
) -> Result<(), PlotError> {
    crate::atomic::write_atomically(path, |file| {
        image
            .write_to(&mut std::io::BufWriter::new(file), image::ImageFormat::Png)
            .map_err(std::io::Error::other)
    })
    .map_err(|e| PlotError { path: path.to_path_buf(), reason: e.to_string() })
}

/// Draws a `width x height` figure on white and writes it as PNG.
fn render(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area) -> Drawn,
) -> Result<(), PlotError> {
    let fail = |reason: String| PlotError { path: path.to_path_buf(), reason };
    if !font_registered() {
        return Err(fail("the bundled font assets/fonts/DejaVuSans.ttf does not parse".into()));
    }
    let mut buffer = vec![0; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        draw(&root).map_err(|e| fail(format!("drawing: {e}")))?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    write_png(path, &RgbImage::from_raw(width, height, buffer).expect("buffer sized for the figure"))
}

/// Registers the bundled DejaVu Sans as plotters' "sans-serif" (the family every chart names),
/// once per process.
fn font_registered() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let font: &'static [u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
        plotters::style::register_font("sans-serif", FontStyle::Normal, font).is_ok()
    })
}

/// The finite points of a series, in order.
fn finite(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect()
}

/// The span of `values` widened by `fraction` of itself on each side; a single value gets a
/// unit-wide span around it and no values 0..1.
fn padded(values: impl Iterator<Item = f64>, fraction: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * fraction } else { 0.5 };
    (lo - pad, hi + pad)
}

fn draw_legend<'a, 'b: 'a>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    corner: SeriesLabelPosition,
) -> Drawn {
    chart
        .configure_series_labels()
        .position(corner)
        .margin(10)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
