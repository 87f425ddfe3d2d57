//! `bone_suppression predict`: suppressed images at each input's own size, 16-bit PNG where the
//! source held more than 8 bits, and a derived DICOM (new UIDs, the source's patient and study)
//! beside the PNGs for DICOM inputs.
use std::path::Path;

use tch::{Device, Kind};

use super::args::PredictArgs;
use super::evaluate::is_16_bit;
use super::model::BoneNet;
use crate::data::dicom_write::{DerivedImage, write_derived_dicom};
use crate::data::{Dataset, FileKind, file_kind, output_names};
use crate::training::TaskError;

/// What `predict` wrote.
#[derive(Debug)]
pub struct Predicted {
    pub written: usize,
    pub skipped: usize,
}

pub fn predict_files(args: &PredictArgs) -> Result<Predicted, TaskError> {
    let device = args.runtime.device()?;
    let (net, card) = BoneNet::load(&args.model, device)?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let dataset = Dataset::from_sources(&args.images)?;
    let names = output_names(&dataset);
    let (mut written, mut skipped) = (0, 0);
    for (sample, name) in dataset.samples.iter().zip(&names) {
        let path = &sample.path;
        let img = match crate::data::decode_file(path) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("skipped {}: {e}", path.display());
                skipped += 1;
                continue;
            }
        };
        let (w, h) = (img.width as i64, img.height as i64);
        let x = crate::data::resize(&crate::data::to_tensor(&img), card.image_size)
            .unsqueeze(0)
            .to_device(device);
        let out = tch::no_grad(|| net.forward(&x, false));
        // Back to the input's own size.
        let out = out
            .to_kind(Kind::Float)
            .upsample_bilinear2d([h, w], false, None, None)
            .clamp(0.0, 1.0)
            .to_device(Device::Cpu);
        let values = Vec::<f32>::try_from(out.flatten(0, -1))?;
        let png = args.out.join(format!("{name}.png"));
        if is_deep(path) {
            let px: Vec<u16> = values.iter().map(|v| (v * 65535.0).round() as u16).collect();
            let buf = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w as u32, h as u32, px)
                .ok_or("image size")?;
            buf.save(&png).map_err(|e| format!("{}: {e}", png.display()))?;
        } else {
            let px: Vec<u8> = values.iter().map(|v| (v * 255.0).round() as u8).collect();
            let buf = image::GrayImage::from_raw(w as u32, h as u32, px).ok_or("image size")?;
            crate::plot::write_png(&png, &buf)?;
        }
        if file_kind(path).ok() == Some(FileKind::Dicom) {
            // Apart from the PNGs, so that `score` can match the PNGs by name.
            let dicom_dir = args.out.join("dicom");
            std::fs::create_dir_all(&dicom_dir).map_err(|e| format!("{}: {e}", dicom_dir.display()))?;
            let derivation =
                format!("bone suppression by chess-rs {} ({})", env!("CARGO_PKG_VERSION"), card.arch.name());
            let derived = DerivedImage {
                pixels: &values,
                width: w as usize,
                height: h as usize,
                kind: "BONE_SUPPRESSED",
                derivation: &derivation,
            };
            write_derived_dicom(path, &dicom_dir.join(format!("{name}.dcm")), &derived)?;
        }
        written += 1;
    }
    Ok(Predicted { written, skipped })
}

/// Whether a source image holds more than 8 bits (16-bit PNG/TIFF, DICOM over 8 bits stored);
/// read from the header, not the pixels.
fn is_deep(path: &Path) -> bool {
    match file_kind(path) {
        Ok(FileKind::Dicom) => dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
            .open_file(path)
            .ok()
            .and_then(|o| o.element(dicom_dictionary_std::tags::BITS_STORED).ok()?.to_int::<u16>().ok())
            .is_some_and(|b| b > 8),
        _ => image::ImageReader::open(path)
            .ok()
            .and_then(|r| r.with_guessed_format().ok())
            .and_then(|r| r.into_decoder().ok())
            .is_some_and(|d| is_16_bit(image::ImageDecoder::color_type(&d))),
    }
}
