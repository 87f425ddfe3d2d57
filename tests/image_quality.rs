//! PSNR, SSIM (uniform and Gaussian windows) and RMSE against scikit-image, on real radiographs
//! and degraded copies of them (noise, blur, a 2-pixel shift, contrast and brightness, clipping,
//! none), at three dynamic ranges: 8-bit values (JPEG at 224 px, a DICOM's display values at
//! 512 px), 12-bit values (a 12-bit DICOM's stored values at 512 px, data range 4095) and floats
//! in 0..1. Also non-square crops (a swapped width and height would show) and images at the
//! window's size. The pairs are made here and handed to tests/python/image_quality_reference.py
//! as float64 .npy files, so both sides score the very same numbers.
mod common;

use std::path::{Path, PathBuf};

use chess::data::{Rng, decode_file, dicom};
use chess::metrics::{ImageQualityError, SsimWindow, psnr, rmse, score_images, ssim};
use serde_json::{Value, json};

/// Absolute tolerance on every score.
const TOL: f64 = 1e-6;

#[derive(Clone)]
struct Image {
    name: String,
    width: usize,
    height: usize,
    pixels: Vec<f64>,
    range: f64,
}

impl Image {
    fn at(&self, x: isize, y: isize) -> f64 {
        let x = x.clamp(0, self.width as isize - 1) as usize;
        let y = y.clamp(0, self.height as isize - 1) as usize;
        self.pixels[y * self.width + x]
    }

    fn crop(&self, name: &str, x0: usize, y0: usize, width: usize, height: usize) -> Image {
        assert!(x0 + width <= self.width && y0 + height <= self.height, "{name}: crop outside the image");
        let pixels = (y0..y0 + height)
            .flat_map(|y| self.pixels[y * self.width + x0..y * self.width + x0 + width].iter().copied())
            .collect();
        Image { name: name.into(), width, height, pixels, range: self.range }
    }

    fn centre_crop(&self, name: &str, size: usize) -> Image {
        let (w, h) = (size.min(self.width), size.min(self.height));
        self.crop(name, (self.width - w) / 2, (self.height - h) / 2, w, h)
    }

    fn map(&self, f: impl Fn(f64) -> f64) -> Vec<f64> {
        self.pixels.iter().map(|&v| f(v)).collect()
    }
}

fn jpeg(path: &Path, scale_to_unit: bool) -> Image {
    let g = decode_file(path).unwrap_or_else(|e| panic!("{e}"));
    let (width, height) = (g.width as usize, g.height as usize);
    assert_eq!(g.pixels.len(), width * height);
    let (div, range) = if scale_to_unit { (255.0, 1.0) } else { (1.0, 255.0) };
    Image {
        name: format!(
            "{}{}",
            path.file_name().unwrap().to_string_lossy(),
            if scale_to_unit { " 0..1" } else { "" }
        ),
        width,
        height,
        pixels: g.pixels.iter().map(|&v| f64::from(v) / div).collect(),
        range,
    }
}

fn first_jpeg(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpeg"))
        .collect();
    files.sort();
    files.into_iter().next().unwrap_or_else(|| panic!("no JPEG in {}", dir.display()))
}

/// Standard normal by Box-Muller.
fn gauss(rng: &mut Rng) -> f64 {
    let u = 1.0 - rng.unit();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * rng.unit()).cos()
}

/// The degraded copies of `img` a bone-suppression model might return, by name.
fn degradations(img: &Image, rng: &mut Rng) -> Vec<(&'static str, Vec<f64>)> {
    let r = img.range;
    let clip = |v: f64| v.clamp(0.0, r);
    let noisy = img.pixels.iter().map(|&v| clip(v + 0.03 * r * gauss(rng))).collect();
    // 5 x 5 box blur, replicated borders.
    let mut blurred = Vec::with_capacity(img.pixels.len());
    for y in 0..img.height as isize {
        for x in 0..img.width as isize {
            let s: f64 = (-2..=2)
                .flat_map(|dy| (-2..=2).map(move |dx| (dx, dy)))
                .map(|(dx, dy)| img.at(x + dx, y + dy))
                .sum();
            blurred.push(s / 25.0);
        }
    }
    let shifted = (0..img.height as isize)
        .flat_map(|y| (0..img.width as isize).map(move |x| (x, y)))
        .map(|(x, y)| img.at(x - 2, y - 2))
        .collect();
    vec![
        ("noise", noisy),
        ("blur", blurred),
        ("shift 2 px", shifted),
        ("contrast", img.map(|v| clip(1.25 * v - 0.1 * r))),
        ("brightness", img.map(|v| clip(0.8 * v + 0.15 * r))),
        ("clipped", img.map(|v| v.clamp(0.2 * r, 0.75 * r))),
        ("identical", img.pixels.clone()),
    ]
}

/// A little-endian float64 `.npy` of shape (height, width).
fn write_npy(path: &Path, pixels: &[f64], width: usize, height: usize) {
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({height}, {width}), }}");
    // Magic (6) + version (2) + length (2) + header + newline, a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(pixels.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

struct Case {
    name: String,
    target: Image,
    pred: Vec<f64>,
}

fn assert_close(what: &str, ours: f64, theirs: f64, worst: &mut f64) {
    let d = (ours - theirs).abs();
    *worst = worst.max(d);
    assert!(d <= TOL, "{what}: {ours} vs scikit-image {theirs} (difference {d:e})");
}

#[test]
fn psnr_ssim_and_rmse_equal_scikit_image_on_radiographs() {
    let data = common::data_dir();
    let jpegs = data.join("cxr-pneumonia-224/test");
    let normal = first_jpeg(&jpegs.join("NORMAL"));
    let mut sources = vec![
        jpeg(&normal, false),
        jpeg(&first_jpeg(&jpegs.join("PNEUMONIA")), false),
        jpeg(&first_jpeg(&data.join("cxr-pneumonia-224/train/NORMAL")), false),
        jpeg(&normal, true),
    ];
    // A DICOM's display values (0..255, not rounded), 512 px from the middle.
    let display = decode_file(&data.join("dicom/nih_dx_implicit_vr.dcm")).unwrap_or_else(|e| panic!("{e}"));
    let display = Image {
        name: "nih_dx_implicit_vr.dcm".into(),
        width: display.width as usize,
        height: display.height as usize,
        pixels: display.pixels.iter().map(|&v| f64::from(v)).collect(),
        range: 255.0,
    };
    sources.push(display.centre_crop("nih_dx_implicit_vr.dcm 512 px", 512));
    // A 12-bit DICOM's stored values, data range 4095.
    let px = dicom::read(&data.join("dicom/dx_chest_mono1_12bit_j2kr.dcm")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(px.info.bits_stored, 12);
    let (lo, hi) = px.representable_range();
    assert_eq!((lo, hi), (0.0, 4095.0), "12-bit file with a rescale");
    let twelve = Image {
        name: "dx_chest_mono1_12bit_j2kr.dcm".into(),
        width: px.info.columns as usize,
        height: px.info.rows as usize,
        pixels: px.values.iter().map(|&v| f64::from(v)).collect(),
        range: 4095.0,
    };
    let (min, max) = twelve.pixels.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    eprintln!("{}: {} x {}, stored values {min}..{max}", twelve.name, twelve.width, twelve.height);
    assert!(min >= 0.0 && max <= 4095.0 && max > 255.0, "not 12-bit values: {min}..{max}");
    let twelve_crop = twelve.centre_crop("dx_chest_mono1_12bit_j2kr.dcm 512 px", 512);
    sources.push(twelve_crop.clone());
    // Non-square and odd-sized: width and height swapped anywhere would show.
    sources.push(twelve.crop("12-bit 301 x 187", 400, 700, 301, 187));
    sources.push(sources[0].crop("224 px 224 x 61", 0, 80, 224, 61));

    let mut rng = Rng::new(16);
    let mut cases = Vec::new();
    for src in &sources {
        assert_eq!(src.pixels.len(), src.width * src.height, "{}", src.name);
        for (what, pred) in degradations(src, &mut rng) {
            cases.push(Case {
                name: format!("{} ({} x {}), {what}", src.name, src.width, src.height),
                target: src.clone(),
                pred,
            });
        }
    }
    // At the windows' size: 7 x 7 (Gaussian refused), 11 x 11 (one SSIM value each), 7 x 12.
    for (w, h) in [(7, 7), (11, 11), (7, 12), (12, 7)] {
        let small = sources[0].crop(&format!("{w} x {h}"), 100, 100, w, h);
        let pred = degradations(&small, &mut rng).swap_remove(0).1;
        cases.push(Case { name: small.name.clone(), target: small, pred });
    }

    let dir = tempfile::tempdir().unwrap();
    let mut manifest = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let (t, p) = (dir.path().join(format!("{i}_target.npy")), dir.path().join(format!("{i}_pred.npy")));
        write_npy(&t, &c.target.pixels, c.target.width, c.target.height);
        write_npy(&p, &c.pred, c.target.width, c.target.height);
        manifest.push(json!({"target": t, "pred": p, "data_range": c.target.range}));
    }
    let manifest_path = dir.path().join("cases.json");
    std::fs::write(&manifest_path, serde_json::to_string(&manifest).unwrap()).unwrap();
    let expected: Vec<Value> =
        serde_json::from_str(&common::run_python("image_quality_reference.py", [&manifest_path])).unwrap();
    assert_eq!(expected.len(), cases.len());

    let mut worst = [0.0f64; 4];
    let (mut refused, mut infinite) = (0, 0);
    for (c, e) in cases.iter().zip(&expected) {
        let (t, w, h, r) = (&c.target, c.target.width, c.target.height, c.target.range);
        let started = std::time::Instant::now();
        let p = psnr(&c.pred, &t.pixels, r).unwrap();
        let e_rmse = e["rmse"].as_f64().unwrap();
        assert!(
            (e_rmse - e["rmse_numpy"].as_f64().unwrap()).abs() <= 1e-12,
            "{}: skimage vs numpy RMSE",
            c.name
        );
        match e["psnr"].as_f64() {
            Some(theirs) => assert_close(&format!("{}: PSNR", c.name), p, theirs, &mut worst[0]),
            None => {
                assert_eq!(p, f64::INFINITY, "{}: PSNR of identical images", c.name);
                infinite += 1;
            }
        }
        assert_close(&format!("{}: RMSE", c.name), rmse(&c.pred, &t.pixels).unwrap(), e_rmse, &mut worst[1]);
        let mut line = format!("{}: PSNR {p:.4} dB, RMSE {e_rmse:.4}", c.name);
        for (k, (window, key)) in
            [(SsimWindow::Uniform7, "ssim_uniform"), (SsimWindow::Gaussian, "ssim_gaussian")]
                .into_iter()
                .enumerate()
        {
            let ours = ssim(&c.pred, &t.pixels, w, h, r, window);
            match e[key].as_f64() {
                Some(theirs) => {
                    let ours = ours.clone().unwrap_or_else(|err| panic!("{}: {window:?}: {err}", c.name));
                    assert_close(&format!("{}: SSIM {window:?}", c.name), ours, theirs, &mut worst[2 + k]);
                    line += &format!(", SSIM {window:?} {ours:.6}");
                    // score_images is the same numbers.
                    let s = score_images(&c.pred, &t.pixels, w, h, r, window).unwrap();
                    assert_eq!((s.psnr, s.ssim, s.rmse), (p, ours, rmse(&c.pred, &t.pixels).unwrap()));
                }
                None => {
                    let msg =
                        e[key]["error"].as_str().unwrap_or_else(|| panic!("{}: {key}: {}", c.name, e[key]));
                    assert!(msg.contains("win_size exceeds image extent"), "{msg}");
                    assert_eq!(
                        ours,
                        Err(ImageQualityError::TooSmall { width: w, height: h, window: window.size() }),
                        "{}: {window:?}",
                        c.name
                    );
                    line += &format!(", SSIM {window:?} refused (as scikit-image)");
                    refused += 1;
                }
            }
            if c.name.ends_with("identical") {
                assert!((ours.unwrap() - 1.0).abs() <= 1e-12, "{}: SSIM of identical images", c.name);
            }
        }
        eprintln!("{line} [{:.1} ms]", started.elapsed().as_secs_f64() * 1e3);
    }
    eprintln!(
        "{} cases: max |difference| to scikit-image: PSNR {:.3e}, RMSE {:.3e}, SSIM uniform {:.3e}, SSIM \
         Gaussian {:.3e}; {infinite} infinite PSNR, {refused} SSIM refused",
        cases.len(),
        worst[0],
        worst[1],
        worst[2],
        worst[3]
    );
    assert!(infinite >= sources.len() && refused >= 3, "{infinite} infinite PSNR, {refused} refused");
}

#[test]
fn malformed_inputs_are_typed_errors() {
    let a = vec![10.0; 64];
    let b = vec![12.0; 63];
    let length = ImageQualityError::Length { pred: 64, target: 63 };
    assert_eq!(psnr(&a, &b, 255.0), Err(length.clone()));
    assert_eq!(rmse(&a, &b), Err(length.clone()));
    assert_eq!(ssim(&a, &b, 8, 8, 255.0, SsimWindow::Uniform7), Err(length.clone()));
    assert_eq!(score_images(&a, &b, 8, 8, 255.0, SsimWindow::Gaussian), Err(length));
    assert_eq!(psnr(&[], &[], 255.0), Err(ImageQualityError::Empty));
    assert_eq!(rmse(&[], &[]), Err(ImageQualityError::Empty));
    assert_eq!(ssim(&[], &[], 0, 0, 1.0, SsimWindow::Uniform7), Err(ImageQualityError::Empty));
    // Pixel count not width x height, including a product that overflows.
    let shape = |width, height| ImageQualityError::Shape { pixels: 64, width, height };
    assert_eq!(ssim(&a, &a, 8, 9, 255.0, SsimWindow::Uniform7), Err(shape(8, 9)));
    assert_eq!(score_images(&a, &a, 16, 8, 255.0, SsimWindow::Uniform7), Err(shape(16, 8)));
    assert_eq!(ssim(&a, &a, usize::MAX, 2, 255.0, SsimWindow::Uniform7), Err(shape(usize::MAX, 2)));
    // Smaller than the window on either side (scikit-image raises; see the parity test).
    let c = vec![1.0; 60];
    let small = |width, height, window| Err(ImageQualityError::TooSmall { width, height, window });
    assert_eq!(ssim(&c, &c, 6, 10, 255.0, SsimWindow::Uniform7), small(6, 10, 7));
    assert_eq!(ssim(&c, &c, 10, 6, 255.0, SsimWindow::Uniform7), small(10, 6, 7));
    assert_eq!(ssim(&a, &a, 8, 8, 255.0, SsimWindow::Gaussian), small(8, 8, 11));
    assert_eq!(
        score_images(&a, &a, 8, 8, 255.0, SsimWindow::Gaussian),
        Err(ImageQualityError::TooSmall { width: 8, height: 8, window: 11 })
    );
    assert_eq!(ssim(&a, &a, 8, 8, 255.0, SsimWindow::Uniform7), Ok(1.0));
    // Data ranges that make every score meaningless.
    for r in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        // Compared by bits, so that NaN equals itself.
        let range_of = |e: Result<f64, ImageQualityError>| match e {
            Err(ImageQualityError::DataRange(x)) => Some(x.to_bits()),
            _ => None,
        };
        assert_eq!(range_of(psnr(&a, &a, r)), Some(r.to_bits()), "{r}");
        assert_eq!(range_of(ssim(&a, &a, 8, 8, r, SsimWindow::Uniform7)), Some(r.to_bits()), "{r}");
        assert!(matches!(
            score_images(&a, &a, 8, 8, r, SsimWindow::Uniform7),
            Err(ImageQualityError::DataRange(_))
        ));
    }
    // Identical images: infinite PSNR, zero RMSE, SSIM 1; errors read well.
    let s = score_images(&a, &a, 8, 8, 255.0, SsimWindow::Uniform7).unwrap();
    assert_eq!((s.psnr, s.rmse, s.ssim), (f64::INFINITY, 0.0, 1.0));
    assert_eq!(
        ImageQualityError::TooSmall { width: 8, height: 8, window: 11 }.to_string(),
        "a 8 x 8 image is smaller than the 11 x 11 SSIM window"
    );
}
