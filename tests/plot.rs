//! PNG figures (chess::plot): each one decodes with the expected size, is not blank, carries
//! its text (the same figure with other words differs), `jet` is matplotlib's, and a file that
//! cannot be written is named in the error. `PLOT_SAMPLES=/some/dir` keeps a copy of each.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use chess::plot::{
    Panel, PlotError, Series, confusion_chart, heatmap_overlay, image_grid, jet, line_chart, roc_chart,
    write_png,
};
use image::RgbImage;

fn decode(path: &Path) -> RgbImage {
    if let Some(dir) = std::env::var_os("PLOT_SAMPLES") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(path, Path::new(&dir).join(path.file_name().unwrap())).unwrap();
    }
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

fn colours(img: &RgbImage) -> usize {
    img.pixels().collect::<HashSet<_>>().len()
}

fn has(img: &RgbImage, rgb: [u8; 3]) -> bool {
    img.pixels().any(|p| p.0 == rgb)
}

/// Pixels that differ, and the rows they span.
fn difference(a: &RgbImage, b: &RgbImage) -> (usize, u32, u32) {
    assert_eq!(a.dimensions(), b.dimensions());
    let rows: Vec<u32> =
        a.enumerate_pixels().filter(|&(x, y, p)| b.get_pixel(x, y) != p).map(|(_, y, _)| y).collect();
    (rows.len(), rows.iter().copied().min().unwrap_or(0), rows.iter().copied().max().unwrap_or(0))
}

const BLUE: [u8; 3] = [31, 119, 180];
const ORANGE: [u8; 3] = [255, 127, 14];

fn curves(val_name: &str) -> Vec<Panel> {
    let epochs = 1..=30;
    let loss = epochs.clone().map(|e| (f64::from(e), 6.0 * (-f64::from(e) / 8.0).exp() + 0.4)).collect();
    // Validation every third epoch: NaN elsewhere, as metrics.jsonl leaves it.
    let auroc = |offset: f64, every: i32| Series {
        name: String::new(),
        points: epochs
            .clone()
            .map(|e| {
                let y =
                    if e % every == 0 { 0.95 - offset - 0.4 * (-f64::from(e) / 6.0).exp() } else { f64::NAN };
                (f64::from(e), y)
            })
            .collect(),
    };
    vec![
        Panel {
            title: "InfoNCE loss".into(),
            x_label: "epoch".into(),
            y_label: "loss".into(),
            series: vec![Series { name: "train".into(), points: loss }],
            y_range: None,
        },
        Panel {
            title: "Validation AUROC".into(),
            x_label: "epoch".into(),
            y_label: "mean AUROC".into(),
            series: vec![
                Series { name: "lr 0.03".into(), ..auroc(0.0, 1) },
                Series { name: val_name.into(), ..auroc(0.05, 3) },
            ],
            y_range: Some((0.0, 1.0)),
        },
    ]
}

#[test]
fn line_chart_panels_side_by_side_with_legend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("training_curves.png");
    line_chart(&path, &curves("lr 0.3")).unwrap();
    let img = decode(&path);
    assert_eq!(img.dimensions(), (1280, 480));
    assert!(colours(&img) > 50, "{} colours", colours(&img));
    assert!(has(&img, BLUE) && has(&img, ORANGE), "series in the palette's first two colours");
    // Both panels drawn: blue on the left (loss) and on the right (first AUROC series).
    assert!(img.enumerate_pixels().any(|(x, _, p)| x < 640 && p.0 == BLUE));
    assert!(img.enumerate_pixels().any(|(x, _, p)| x >= 640 && p.0 == BLUE));

    let renamed = dir.path().join("renamed.png");
    line_chart(&renamed, &curves("lr 0.1")).unwrap();
    let (n, _, _) = difference(&img, &decode(&renamed));
    assert!(n > 20, "a legend entry renamed changes {n} pixels");

    let mut retitled = curves("lr 0.3");
    retitled[0].title = "MoCo loss".into();
    let other = dir.path().join("retitled.png");
    line_chart(&other, &retitled).unwrap();
    let (n, top, bottom) = difference(&img, &decode(&other));
    assert!(n > 50 && bottom < 50, "a new title changes {n} pixels in rows {top}..={bottom}");
}

#[test]
fn line_chart_of_nothing_but_nan_and_single_points() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.png");
    let panel = |points: Vec<(f64, f64)>| Panel {
        title: "sparse".into(),
        series: vec![Series { name: "a".into(), points }],
        ..Panel::default()
    };
    line_chart(&path, &[panel(vec![(f64::NAN, 1.0), (1.0, f64::NAN)]), panel(vec![(3.0, 0.5)])]).unwrap();
    assert_eq!(decode(&path).dimensions(), (1280, 480));
    assert!(has(&decode(&path), BLUE), "the single point is drawn");
}

fn roc(name: &str) -> Vec<Series> {
    let bowed = |k: f64| (0..=50).map(|i| f64::from(i) / 50.0).map(|x| (x, x.powf(k))).collect();
    vec![
        Series { name: format!("Edema ({name})"), points: bowed(0.2) },
        Series { name: "Atelectasis (AUROC 0.741)".into(), points: bowed(0.55) },
    ]
}

#[test]
fn roc_chart_is_square_with_chance_line_and_legend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roc.png");
    roc_chart(&path, "CheXpert validation", &roc("AUROC 0.912")).unwrap();
    let img = decode(&path);
    assert_eq!(img.dimensions(), (640, 640));
    assert!(colours(&img) > 50, "{} colours", colours(&img));
    assert!(has(&img, BLUE) && has(&img, ORANGE));
    assert!(has(&img, [120, 120, 120]), "the chance diagonal");

    let other = dir.path().join("roc_other.png");
    roc_chart(&other, "CheXpert validation", &roc("AUROC 0.873")).unwrap();
    let (n, _, _) = difference(&img, &decode(&other));
    assert!(n > 20, "another AUROC in the legend changes {n} pixels");

    roc_chart(&other, "CheXpert test", &roc("AUROC 0.912")).unwrap();
    let (n, top, bottom) = difference(&img, &decode(&other));
    assert!(n > 50 && bottom < 50, "a new title changes {n} pixels in rows {top}..={bottom}");
}

#[test]
fn confusion_chart_shades_and_labels_cells() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confusion.png");
    let classes: Vec<String> = ["normal", "pneumonia", "covid"].map(String::from).to_vec();
    let matrix = vec![vec![480, 15, 5], vec![30, 410, 60], vec![2, 40, 158]];
    confusion_chart(&path, &classes, &matrix).unwrap();
    let img = decode(&path);
    assert_eq!(img.dimensions(), (640, 640));
    assert!(has(&img, [8, 48, 107]), "the largest count in the darkest blue");
    // 2 of 480: 2/480 of the way from (247, 251, 255) to (8, 48, 107).
    assert!(has(&img, [246, 250, 254]), "small counts nearly white");
    assert!(colours(&img) > 20, "{} colours", colours(&img));

    let other = dir.path().join("confusion_other.png");
    let renamed: Vec<String> = ["normal", "pneumonia", "COVID-19"].map(String::from).to_vec();
    confusion_chart(&other, &renamed, &matrix).unwrap();
    let (n, _, _) = difference(&img, &decode(&other));
    assert!(n > 20, "a class renamed changes {n} pixels");

    let mut recounted = matrix.clone();
    recounted[1][1] = 411;
    confusion_chart(&other, &classes, &recounted).unwrap();
    let (n, _, _) = difference(&img, &decode(&other));
    assert!(n > 5, "one count changed changes {n} pixels");

    // Long names stand upright under their columns.
    let long: Vec<String> = (0..14).map(|i| format!("Pleural Other {i}")).collect();
    let big: Vec<Vec<u64>> =
        (0..14).map(|i| (0..14).map(|j| if i == j { 90 } else { (i * j) % 7 }).collect()).collect();
    confusion_chart(&other, &long, &big).unwrap();
    assert_eq!(decode(&other).dimensions(), (640, 640));
}

#[test]
fn confusion_chart_refuses_a_matrix_of_the_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.png");
    let classes = vec!["a".to_string(), "b".to_string()];
    let err = confusion_chart(&path, &classes, &[vec![1, 2], vec![3]]).unwrap_err();
    assert_eq!(err.path, path);
    assert!(err.to_string().contains("2 classes"), "{err}");
    assert!(!path.exists());
}

#[test]
fn jet_is_matplotlibs() {
    // matplotlib's _jet_data sampled into its 256-entry table (cm.jet(v) takes entry
    // min(int(v * 256), 255), at x = entry / 255), times 255:
    //   0    -> x 0:       (0, 0, 0.5)
    //   0.25 -> x 64/255:  (0, (x - 0.125) / 0.25 = 0.50392, 1)
    //   0.5  -> x 128/255: ((x - 0.35) / 0.31 = 0.49020, 1, 1 - (x - 0.34) / 0.31 = 0.47755)
    //   0.75 -> x 192/255: (1, 1 - (x - 0.64) / 0.27 = 0.58170, 0)
    //   1    -> x 1:       (0.5, 0, 0)
    let expected = [
        (0.0, [0.0, 0.0, 127.5]),
        (0.25, [0.0, 128.5, 255.0]),
        (0.5, [125.0, 255.0, 121.774]),
        (0.75, [255.0, 148.333, 0.0]),
        (1.0, [127.5, 0.0, 0.0]),
    ];
    for (v, rgb) in expected {
        let ours = jet(v);
        for c in 0..3 {
            assert!((f64::from(ours[c]) - rgb[c]).abs() <= 2.0, "jet({v}) = {ours:?}, matplotlib {rgb:?}");
        }
    }
    assert_eq!(jet(-1.0), jet(0.0));
    assert_eq!(jet(f32::NAN), jet(0.0));
    assert_eq!(jet(7.0), jet(1.0));
}

#[test]
fn heatmap_overlay_blends_jet_over_the_image() {
    // A grey disc (a stand-in radiograph) and a Gaussian blob of heat; the left half has heat 0.
    let (w, h) = (256u32, 192u32);
    let at = |i: u32| ((i % w) as f32, (i / w) as f32);
    let grey: Vec<f32> = (0..w * h)
        .map(|i| {
            let (x, y) = at(i);
            (200.0 - 0.02 * ((x - 128.0).powi(2) + (y - 96.0).powi(2))).max(20.0) + (x * 0.7).sin() * 10.0
        })
        .collect();
    let heat: Vec<f32> = (0..w * h)
        .map(|i| {
            let (x, y) = at(i);
            if x < 128.0 { 0.0 } else { (-((x - 180.0).powi(2) + (y - 90.0).powi(2)) / 1800.0).exp() }
        })
        .collect();
    let plain = heatmap_overlay(&grey, w, h, &heat, 0.0);
    assert_eq!(plain.dimensions(), (w, h));
    for (x, y, p) in plain.enumerate_pixels() {
        let g = grey[(y * w + x) as usize].round() as u8;
        assert_eq!(p.0, [g, g, g], "alpha 0 leaves ({x}, {y}) as it was");
    }
    let full = heatmap_overlay(&grey, w, h, &heat, 1.0);
    assert!(full.enumerate_pixels().all(|(x, y, p)| p.0 == jet(heat[(y * w + x) as usize])));
    let half = heatmap_overlay(&grey, w, h, &heat, 0.5);
    let i = 90 * w as usize + 170;
    let mid = jet(heat[i]).map(|c| ((grey[i] + f32::from(c)) / 2.0).round() as u8);
    assert_eq!(half.get_pixel(170, 90).0, mid);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gradcam_overlay.png");
    write_png(&path, &half).unwrap();
    let img = decode(&path);
    assert_eq!(img, half);
    assert!(colours(&img) > 20);
}

#[test]
fn image_grid_places_tiles_in_padded_rows() {
    let (w, h, gap) = (96u32, 72u32, 4u32);
    let tiles: Vec<(Vec<f32>, u32, u32)> =
        (0..5).map(|k| ((0..w * h).map(|i| (k * 40 + i % w) as f32).collect(), w, h)).collect();
    let grid = image_grid(&tiles, 3, gap);
    assert_eq!(grid.dimensions(), (3 * w + 4 * gap, 2 * h + 3 * gap));
    assert_eq!(grid.get_pixel(0, 0).0, [255], "gaps are white");
    // Tile 4 is the second of the second row; the sixth place stays empty.
    assert_eq!(grid.get_pixel(gap + (w + gap) + 7, gap + (h + gap) + 3).0, [4 * 40 + 7]);
    assert_eq!(grid.get_pixel(gap + 2 * (w + gap) + 7, gap + (h + gap) + 3).0, [255]);
    // Fewer tiles than columns: one row, as wide as the tiles.
    assert_eq!(image_grid(&tiles[..2], 8, gap).dimensions(), (2 * w + 3 * gap, h + 2 * gap));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample_grid.png");
    write_png(&path, &grid).unwrap();
    let img = decode(&path);
    assert_eq!(img.dimensions(), grid.dimensions());
    assert!(colours(&img) > 100);
}

#[test]
fn a_missing_folder_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("no-such-folder").join("chart.png");
    let check = |err: PlotError| {
        assert_eq!(err.path, path);
        assert!(err.to_string().starts_with(&path.display().to_string()), "{err}");
    };
    check(line_chart(&path, &curves("b")).unwrap_err());
    check(roc_chart(&path, "t", &roc("x")).unwrap_err());
    check(confusion_chart(&path, &["a".into()], &[vec![1]]).unwrap_err());
    check(write_png(&path, &image_grid(&[(vec![0.0; 4], 2, 2)], 1, 1)).unwrap_err());
    let empty = dir.path().join("chart.png");
    let err = line_chart(&empty, &[]).unwrap_err();
    assert_eq!(err.path, empty, "{err}");
    assert!(!empty.exists());
}
