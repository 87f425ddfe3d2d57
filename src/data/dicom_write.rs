//! Derived DICOM images: a model's output written back as DICOM beside the archive's original,
//! with the original's patient, study and acquisition attributes kept, so a PACS files it with
//! the study. The result is a new instance (new SOP Instance UID, new series) marked DERIVED,
//! referencing its source (Source Image Sequence), 16-bit MONOCHROME2, uncompressed (explicit VR
//! little endian).
use std::path::{Path, PathBuf};

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Why a derived DICOM could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DicomWriteError {
    #[error("{}: cannot read the source DICOM: {reason}", path.display())]
    Source { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    #[error("{width} x {height} image with {len} pixels")]
    Shape { width: usize, height: usize, len: usize },
}

/// The pixels of a derived image, row-major.
#[derive(Debug, Clone, Copy)]
pub enum DerivedPixels<'a> {
    /// A model's output in 0..1: written as 16-bit MONOCHROME2 (0..65535) with the source's
    /// value transforms (rescale, VOI) removed, as they no longer describe the values.
    Display(&'a [f32]),
    /// Stored values in the source's own representation (its bits, sign, photometric
    /// interpretation, rescale and VOI kept): an edit of the source's own pixels, so that every
    /// pixel left alone keeps its raw value.
    Stored(&'a [i32]),
}

impl DerivedPixels<'_> {
    fn len(&self) -> usize {
        match self {
            DerivedPixels::Display(p) => p.len(),
            DerivedPixels::Stored(p) => p.len(),
        }
    }
}

/// An image to write.
#[derive(Debug, Clone, Copy)]
pub struct DerivedImage<'a> {
    pub pixels: DerivedPixels<'a>,
    pub width: usize,
    pub height: usize,
    /// The third value of Image Type (e.g. `BONE_SUPPRESSED`, `SYNTHETIC_NODULE`).
    pub kind: &'a str,
    /// Derivation Description: what was done, by what.
    pub derivation: &'a str,
}

/// Whether stored values of this layout can be written back ([`DerivedPixels::Stored`]): grey,
/// 8-bit unsigned or 16-bit either way.
pub fn stored_layout_supported(
    bits_allocated: u16,
    signed: bool,
    samples_per_pixel: u16,
) -> Result<(), String> {
    match (bits_allocated, signed, samples_per_pixel) {
        (8, false, 1) | (16, _, 1) => Ok(()),
        _ => Err(format!(
            "{samples_per_pixel}-sample {} {bits_allocated}-bit pixels: only grey 8-bit unsigned and 16-bit pixels are written back",
            if signed { "signed" } else { "unsigned" }
        )),
    }
}

/// Explicit VR little endian: what every reader accepts.
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// A new UID under the `2.25` root (a UUID as a decimal integer, ITU-T X.667): random bits from
/// the clock, the process and a counter, mixed.
pub fn new_uid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hi = mix(nanos as u64 ^ (u64::from(std::process::id()) << 32));
    let lo = mix((nanos >> 64) as u64 ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ hi);
    // UUID version 4 / variant bits, as X.667 asks of a random UUID.
    let v = ((u128::from(hi) << 64) | u128::from(lo)) & !(0xF000u128 << 64) | (0x4000u128 << 64);
    let v = v & !(0xC000_0000_0000_0000u128) | 0x8000_0000_0000_0000u128;
    format!("2.25.{v}")
}

/// Writes `image` as a derived instance of `source` at `out` (atomically); returns its new SOP
/// Instance UID.
pub fn write_derived_dicom(
    source: &Path,
    out: &Path,
    image: &DerivedImage,
) -> Result<String, DicomWriteError> {
    let DerivedImage { pixels, width, height, kind, derivation } = *image;
    if pixels.len() != width * height || width == 0 || height == 0 || width > 65535 || height > 65535 {
        return Err(DicomWriteError::Shape { width, height, len: pixels.len() });
    }
    let mut obj = dicom_object::open_file(source)
        .map_err(|e| DicomWriteError::Source { path: source.to_path_buf(), reason: e.to_string() })?;
    let source_err = |reason: String| DicomWriteError::Source { path: source.to_path_buf(), reason };
    let int = |obj: &dicom_object::DefaultDicomObject, tag| {
        obj.element(tag).ok().and_then(|e| e.to_int::<i64>().ok())
    };
    // Lossy Image Compression stays: the derived image comes from the lossy one (PS3.3 C.7.6.1.1.5).
    for tag in [
        tags::SMALLEST_IMAGE_PIXEL_VALUE,
        tags::LARGEST_IMAGE_PIXEL_VALUE,
        tags::NUMBER_OF_FRAMES,
        tags::PLANAR_CONFIGURATION,
    ] {
        obj.remove_element(tag);
    }
    let pixel_data = match pixels {
        DerivedPixels::Display(values) => {
            // Value transforms of the original no longer describe these values.
            for tag in [
                tags::RESCALE_SLOPE,
                tags::RESCALE_INTERCEPT,
                tags::RESCALE_TYPE,
                tags::MODALITY_LUT_SEQUENCE,
                tags::VOILUT_SEQUENCE,
                tags::VOILUT_FUNCTION,
                tags::WINDOW_CENTER_WIDTH_EXPLANATION,
                tags::PIXEL_PADDING_VALUE,
                tags::PIXEL_PADDING_RANGE_LIMIT,
            ] {
                obj.remove_element(tag);
            }
            let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
            obj.put(us(tags::ROWS, height as u16));
            obj.put(us(tags::COLUMNS, width as u16));
            obj.put(us(tags::SAMPLES_PER_PIXEL, 1));
            obj.put(us(tags::BITS_ALLOCATED, 16));
            obj.put(us(tags::BITS_STORED, 16));
            obj.put(us(tags::HIGH_BIT, 15));
            obj.put(us(tags::PIXEL_REPRESENTATION, 0));
            obj.put_str(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
            obj.put_str(tags::WINDOW_CENTER, VR::DS, "32768");
            obj.put_str(tags::WINDOW_WIDTH, VR::DS, "65536");
            obj.put_str(tags::PRESENTATION_LUT_SHAPE, VR::CS, "IDENTITY");
            let values: Vec<u16> =
                values.iter().map(|&v| (v.clamp(0.0, 1.0) * 65535.0).round() as u16).collect();
            DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(values.into()))
        }
        DerivedPixels::Stored(values) => {
            let same = int(&obj, tags::ROWS) == Some(height as i64)
                && int(&obj, tags::COLUMNS) == Some(width as i64);
            if !same || int(&obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) != 1 {
                return Err(source_err(format!(
                    "stored values of a {width} x {height} grey image do not fit it"
                )));
            }
            let signed = int(&obj, tags::PIXEL_REPRESENTATION) == Some(1);
            let bits = int(&obj, tags::BITS_ALLOCATED).and_then(|b| u16::try_from(b).ok()).unwrap_or(0);
            stored_layout_supported(bits, signed, 1).map_err(source_err)?;
            match (bits, signed) {
                (8, _) => {
                    let v: Vec<u8> = values.iter().map(|&v| v.clamp(0, 255) as u8).collect();
                    DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(v.into()))
                }
                (_, false) => {
                    let v: Vec<u16> = values.iter().map(|&v| v.clamp(0, 65535) as u16).collect();
                    DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(v.into()))
                }
                (_, true) => {
                    let v: Vec<i16> = values.iter().map(|&v| v.clamp(-32768, 32767) as i16).collect();
                    DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::I16(v.into()))
                }
            }
        }
    };
    obj.put_str(tags::IMAGE_TYPE, VR::CS, format!("DERIVED\\SECONDARY\\{kind}"));
    obj.put_str(tags::DERIVATION_DESCRIPTION, VR::ST, derivation);
    let description = obj
        .element(tags::SERIES_DESCRIPTION)
        .ok()
        .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .map_or_else(|| kind.to_lowercase(), |s| format!("{s} ({})", kind.to_lowercase()));
    obj.put_str(tags::SERIES_DESCRIPTION, VR::LO, description.chars().take(64).collect::<String>());
    // The source image, referenced as PS3.3's General Image module asks of a derived one.
    let uid_of = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
    };
    if let (Some(class), Some(instance)) = (uid_of(tags::SOP_CLASS_UID), uid_of(tags::SOP_INSTANCE_UID)) {
        let item = InMemDicomObject::from_element_iter([
            DataElement::new(tags::REFERENCED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(class)),
            DataElement::new(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(instance)),
        ]);
        obj.put(DataElement::new(tags::SOURCE_IMAGE_SEQUENCE, VR::SQ, DataSetSequence::from(vec![item])));
    }
    let sop = new_uid();
    obj.put_str(tags::SOP_INSTANCE_UID, VR::UI, sop.clone());
    obj.put_str(tags::SERIES_INSTANCE_UID, VR::UI, new_uid());
    obj.put(pixel_data);
    obj.update_meta(|meta| {
        meta.media_storage_sop_instance_uid = sop.clone();
        meta.transfer_syntax = EXPLICIT_VR_LE.to_string();
    });
    let write_err = |reason: String| DicomWriteError::Write { path: out.to_path_buf(), reason };
    let mut bytes = Vec::new();
    obj.write_all(&mut bytes).map_err(|e| write_err(e.to_string()))?;
    crate::atomic::write(out, &bytes).map_err(|e| write_err(e.to_string()))?;
    Ok(sop)
}
