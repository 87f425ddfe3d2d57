//! `nodule_gan generate` (an image per mask) and `nodule_gan insert` (a nodule where a user
//! asks, in a given radiograph, the rest of it untouched).
use std::path::Path;

use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::args::{Blend, GenerateArgs, InsertArgs};
use super::{SpadeGan, load_gan};
use crate::data::decode::for_each_readable_batch;
use crate::data::dicom_write::{DerivedImage, DerivedPixels, stored_layout_supported, write_derived_dicom};
use crate::data::targets::{dicom_spacing, parse_spacing};
use crate::data::{Dataset, FileKind, GreyImage, Windowing, decode_file, file_kind, output_names};
use crate::model::spade::one_hot;
use crate::tasks::refuse;
use crate::training::TaskError;

/// A mask image as a `[1, 1, S, S]` class map (any non-zero pixel is nodule), nearest-resized.
fn mask_labels(img: &GreyImage, size: i64) -> Tensor {
    let t = crate::data::to_tensor(img).gt(0.5).to_kind(Kind::Float).unsqueeze(0);
    crate::nn::upsample_nearest(&t, crate::nn::Resize::Size([size, size]))
}

fn write_grey_png(path: &Path, pixels: &[f32], width: u32, height: u32) -> Result<(), TaskError> {
    let px: Vec<u8> = pixels.iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect();
    let img = image::GrayImage::from_raw(width, height, px).ok_or("image size")?;
    crate::plot::write_png(path, &img)?;
    Ok(())
}

/// Images in 0..255 `[N, 1, S, S]` (CPU) from generator output in -1..1.
fn to_grey(t: &Tensor) -> Tensor {
    ((t + 1.0) * 127.5).clamp(0.0, 255.0).to_device(Device::Cpu)
}

/// One PNG per mask in `args.masks`, named by the mask's stem; returns (written, skipped). The
/// masks go `--batch-size` at a time; each one's latent code is the next draw of `--seed`'s CPU
/// generator, so an image does not depend on the batch size or the device's generator.
pub fn generate(args: &GenerateArgs) -> Result<(usize, usize), TaskError> {
    let device = args.runtime.device()?;
    let (mut gan, _) = load_gan(&args.model, device)?;
    gan.precision = args.runtime.precision(device)?;
    let size = gan.config.crop_size;
    let masks = Dataset::from_sources(std::slice::from_ref(&args.masks))?;
    let names = output_names(&masks);
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    tch::manual_seed(args.seed as i64);
    let mut written = 0;
    let skipped =
        for_each_readable_batch(&masks, args.runtime.batch_size(), args.runtime.workers(), |images| {
            let labels: Vec<Tensor> = images.iter().map(|(_, img)| mask_labels(img, size)).collect();
            let codes: Vec<Tensor> = images
                .iter()
                .map(|_| Tensor::randn([1, gan.config.z_dim], (Kind::Float, Device::Cpu)))
                .collect();
            let seg = one_hot(&Tensor::cat(&labels, 0).to_device(device), gan.config.label_nc);
            let fake = to_grey(&gan.generate(&seg, None, Some(&Tensor::cat(&codes, 0)))?);
            for (b, (i, _)) in images.iter().enumerate() {
                let px = Vec::<f32>::try_from(fake.get(b as i64).flatten(0, -1))?;
                write_grey_png(&args.out.join(format!("{}.png", names[*i])), &px, size as u32, size as u32)?;
                written += 1;
            }
            Ok::<(), TaskError>(())
        })?;
    Ok((written, skipped))
}

/// Where `insert` put the nodule, in pixels of the image: written as JSON beside the output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inserted {
    pub output: String,
    pub mask: String,
    pub x: f64,
    pub y: f64,
    pub diameter_mm: f64,
    /// (row, column) spacing in mm.
    pub pixel_spacing: (f64, f64),
    /// `[x_min, y_min, x_max, y_max]`, inclusive pixel indices of the mask.
    pub bbox: [usize; 4],
    pub feather_px: f64,
    pub sop_instance_uid: Option<String>,
}

/// `(x / rx)^2 + (y / ry)^2` from the nodule centre: 1 on the outline.
fn level(px: f64, py: f64, x: f64, y: f64, rx: f64, ry: f64) -> f64 {
    ((px - x) / rx).powi(2) + ((py - y) / ry).powi(2)
}

/// The blend weight of a pixel: 1 inside the nodule's outline, falling linearly to 0 at
/// `feather` pixels outside it (distance measured along the radius), 0 beyond.
pub fn blend_weight(px: f64, py: f64, x: f64, y: f64, rx: f64, ry: f64, feather: f64) -> f64 {
    let rho = level(px, py, x, y, rx, ry).sqrt();
    if rho <= 1.0 {
        return 1.0;
    }
    // Pixels outside the outline along the ray from the centre.
    let r_along = {
        let (dx, dy) = (px - x, py - y);
        let d = (dx * dx + dy * dy).sqrt();
        d - d / rho
    };
    (1.0 - r_along / feather).clamp(0.0, 1.0)
}

/// A nodule of `diameter_mm` at `(x, y)` in `args.image`: the image (resized to the
/// generator's size) is encoded by the VAE encoder (its mean code, or a draw with `--seed`
/// noise if asked) and generated with the nodule's mask; with [`Blend::Difference`] also
/// without it, and the difference (the nodule the generator draws, on this image's anatomy) is
/// added to the original at full resolution; with [`Blend::Replace`] the generated pixels
/// replace the original's. Either is weighted 1 inside the outline and feathered to 0 over
/// `feather` pixels: every pixel farther than that from the outline keeps its value.
pub fn insert(args: &InsertArgs) -> Result<Inserted, TaskError> {
    let device = args.runtime.device()?;
    let (mut gan, _) = load_gan(&args.model, device)?;
    gan.precision = args.runtime.precision(device)?;
    let (x, y) =
        match args.at.split_once(',').map(|(a, b)| (a.trim().parse::<f64>(), b.trim().parse::<f64>())) {
            Some((Ok(x), Ok(y))) if x.is_finite() && y.is_finite() => (x, y),
            _ => refuse!("--at {}: expected x,y in pixels", args.at),
        };
    if !(args.diameter_mm.is_finite() && args.diameter_mm > 0.0) {
        refuse!("--diameter-mm {}: must be positive", args.diameter_mm);
    }
    let is_dicom =
        file_kind(&args.image).map_err(|e| format!("{}: {e}", args.image.display()))? == FileKind::Dicom;
    let spacing = match &args.pixel_spacing {
        Some(s) => parse_spacing(&s.replace(',', "\\"))
            .ok_or_else(|| format!("--pixel-spacing {s}: expected one or two positive numbers (mm)"))?,
        None if is_dicom => dicom_spacing(&args.image)?,
        None => refuse!("{}: not DICOM, so give --pixel-spacing (mm per pixel)", args.image.display()),
    };
    // A DICOM's own values are kept to write the result in its representation.
    let source = if is_dicom {
        let px =
            crate::data::dicom::read(&args.image).map_err(|e| format!("{}: {e}", args.image.display()))?;
        let i = &px.info;
        stored_layout_supported(i.bits_allocated, i.signed, i.samples_per_pixel)
            .map_err(|e| format!("{}: {e}", args.image.display()))?;
        Some(px)
    } else {
        None
    };
    let img: GreyImage = match &source {
        Some(px) => px.grey_image(Windowing::default()),
        None => decode_file(&args.image)?,
    };
    let (w, h) = (img.width as usize, img.height as usize);
    if !(0.0..w as f64).contains(&x) || !(0.0..h as f64).contains(&y) {
        refuse!("--at {x},{y} lies outside the {w} x {h} image");
    }
    let (rx, ry) = (args.diameter_mm / 2.0 / spacing.1, args.diameter_mm / 2.0 / spacing.0);
    let feather = args.feather.unwrap_or((rx.min(ry) * 2.0 / 5.0).max(3.0));
    if !(feather.is_finite() && feather > 0.0) {
        refuse!("--feather {feather}: must be positive");
    }
    // The mask at full resolution and at the generator's.
    let mut mask = vec![0f32; w * h];
    let (mut bx0, mut by0, mut bx1, mut by1) = (usize::MAX, usize::MAX, 0, 0);
    for (i, m) in mask.iter_mut().enumerate() {
        let (px, py) = ((i % w) as f64, (i / w) as f64);
        if level(px, py, x, y, rx, ry) <= 1.0 {
            *m = 1.0;
            let (cx, cy) = (i % w, i / w);
            (bx0, by0, bx1, by1) = (bx0.min(cx), by0.min(cy), bx1.max(cx), by1.max(cy));
        }
    }
    if bx0 == usize::MAX {
        refuse!("a {} mm nodule covers no pixel centre at this spacing", args.diameter_mm);
    }
    let size = gan.config.crop_size;
    let small = |t: &Tensor, nearest: bool| {
        if nearest {
            crate::nn::upsample_nearest(t, crate::nn::Resize::Size([size, size]))
        } else {
            t.upsample_bilinear2d([size, size], false, None, None)
        }
    };
    let full = Tensor::from_slice(&mask).view([1, 1, h as i64, w as i64]);
    let labels = small(&full, true);
    let grey = crate::data::to_tensor(&img).unsqueeze(0);
    let real = small(&grey, false).to_device(device) / 127.5 - 1.0;
    let eps = if args.seed == 0 {
        Tensor::zeros([1, gan.config.z_dim], (Kind::Float, device))
    } else {
        tch::manual_seed(args.seed as i64);
        Tensor::randn([1, gan.config.z_dim], (Kind::Float, Device::Cpu))
    };
    let generate_one = |labels: &Tensor| -> Result<Tensor, TaskError> {
        let seg = one_hot(&labels.to_device(device), gan.config.label_nc);
        Ok(to_grey(&SpadeGan::generate(&gan, &seg, Some(&real), Some(&eps))?))
    };
    let with = generate_one(&labels)?;
    let full_size = |t: Tensor| -> Result<Vec<f32>, TaskError> {
        Ok(Vec::<f32>::try_from(
            t.upsample_bilinear2d([h as i64, w as i64], false, None, None).flatten(0, -1),
        )?)
    };
    // What to add at full weight: the generator's nodule (with minus without), or the
    // generated pixels in place of the original's.
    let delta = match args.blend {
        Blend::Difference => full_size(with - generate_one(&labels.zeros_like())?)?,
        Blend::Replace => full_size(with)?.iter().zip(&img.pixels).map(|(g, o)| g - o).collect(),
    };
    let mut out = img.pixels.clone();
    let (ex, ey) = (rx + feather + 1.0, ry + feather + 1.0);
    let (x0, x1) = ((x - ex).floor().max(0.0) as usize, ((x + ex).ceil() as usize).min(w - 1));
    let (y0, y1) = ((y - ey).floor().max(0.0) as usize, ((y + ey).ceil() as usize).min(h - 1));
    for py in y0..=y1 {
        for px in x0..=x1 {
            let a = blend_weight(px as f64, py as f64, x, y, rx, ry, feather) as f32;
            if a > 0.0 {
                let i = py * w + px;
                out[i] = (out[i] + a * delta[i]).clamp(0.0, 255.0);
            }
        }
    }
    let stem = args.out.with_extension("");
    let mask_path = stem.with_file_name(format!(
        "{}_mask.png",
        stem.file_name().and_then(|s| s.to_str()).unwrap_or("inserted")
    ));
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut uid = None;
    if let Some(px) = &source {
        let stored = px.stored_after_edit(Windowing::default(), &img.pixels, &out);
        let derivation = format!(
            "synthetic {} mm nodule at ({x:.1}, {y:.1}) by chess-rs {} nodule_gan insert",
            args.diameter_mm,
            env!("CARGO_PKG_VERSION")
        );
        let derived = DerivedImage {
            pixels: DerivedPixels::Stored(&stored),
            width: w,
            height: h,
            kind: "SYNTHETIC_NODULE",
            derivation: &derivation,
        };
        uid = Some(write_derived_dicom(&args.image, &args.out, &derived)?);
    } else {
        write_grey_png(&args.out, &out, w as u32, h as u32)?;
    }
    let mask255: Vec<f32> = mask.iter().map(|m| m * 255.0).collect();
    write_grey_png(&mask_path, &mask255, w as u32, h as u32)?;
    let inserted = Inserted {
        output: args.out.display().to_string(),
        mask: mask_path.display().to_string(),
        x,
        y,
        diameter_mm: args.diameter_mm,
        pixel_spacing: spacing,
        bbox: [bx0, by0, bx1, by1],
        feather_px: feather,
        sop_instance_uid: uid,
    };
    let json_path = stem.with_extension("json");
    crate::atomic::write(&json_path, serde_json::to_string_pretty(&json!(inserted))?.as_bytes())
        .map_err(|e| format!("{}: {e}", json_path.display()))?;
    Ok(inserted)
}
