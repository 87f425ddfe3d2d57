//! `bone_suppression predict`: suppressed images at each input's own size, 16-bit PNG where the
//! source held more than 8 bits, and a derived DICOM (new UIDs, the source's patient and study)
//! beside the PNGs for DICOM inputs.
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::args::PredictArgs;
use super::evaluate::is_16_bit;
use super::model::{BoneCard, BoneNet};
use crate::data::decode::for_each_readable_batch;
use crate::data::dicom_write::{DerivedImage, DerivedPixels, write_derived_dicom};
use crate::data::{Dataset, FileKind, GreyImage, file_kind, output_names, resize, to_tensor};
use crate::device::autocast;
use crate::training::TaskError;

/// What `predict` wrote.
#[derive(Debug)]
pub struct Predicted {
    pub written: usize,
    pub skipped: usize,
}

/// `bone_suppression predict`: `--batch-size` images at a time, decoded on `--workers` threads,
/// the model under `--amp`; an unreadable file is skipped with one line naming it.
pub fn predict_files(args: &PredictArgs) -> Result<Predicted, TaskError> {
    let device = args.runtime.device()?;
    let precision = args.runtime.precision(device)?;
    let (net, card) = BoneNet::load(&args.model, device)?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let dataset = Dataset::from_sources(&args.images)?;
    let names = output_names(&dataset);
    let mut written = 0;
    let skipped =
        for_each_readable_batch(&dataset, args.runtime.batch_size(), args.runtime.workers(), |images| {
            let x = Tensor::stack(
                &images.iter().map(|(_, img)| resize(&to_tensor(img), card.image_size)).collect::<Vec<_>>(),
                0,
            )
            .to_device(device);
            let out =
                tch::no_grad(|| autocast(device, precision, || net.forward(&x, false)))?.to_kind(Kind::Float);
            for (b, (i, img)) in images.iter().enumerate() {
                write_prediction(
                    args,
                    &card,
                    &dataset.samples[*i].path,
                    &names[*i],
                    img,
                    &out.get(b as i64),
                )?;
                written += 1;
            }
            Ok::<(), TaskError>(())
        })?;
    Ok(Predicted { written, skipped })
}

/// One output `[1, S, S]` at the input's own size: a PNG (16-bit for deep sources) and, for a
/// DICOM input, a derived DICOM in `OUT/dicom` (apart from the PNGs, so that `score` can match
/// the PNGs by name).
fn write_prediction(
    args: &PredictArgs,
    card: &BoneCard,
    path: &Path,
    name: &str,
    img: &GreyImage,
    out: &Tensor,
) -> Result<(), TaskError> {
    let (w, h) = (img.width as i64, img.height as i64);
    let out = out
        .unsqueeze(0)
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
        let dicom_dir = args.out.join("dicom");
        std::fs::create_dir_all(&dicom_dir).map_err(|e| format!("{}: {e}", dicom_dir.display()))?;
        let derivation =
            format!("bone suppression by chess-rs {} ({})", env!("CARGO_PKG_VERSION"), card.arch.name());
        let derived = DerivedImage {
            pixels: DerivedPixels::Display(&values),
            width: w as usize,
            height: h as usize,
            kind: "BONE_SUPPRESSED",
            derivation: &derivation,
        };
        write_derived_dicom(path, &dicom_dir.join(format!("{name}.dcm")), &derived)?;
    }
    Ok(())
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
