//! DICOM radiographs to pixel values: every transfer syntax dicom-rs decodes (uncompressed
//! little/big endian, implicit/explicit VR, deflated, RLE, JPEG baseline/lossless, JPEG-LS,
//! JPEG 2000) plus 12-bit JPEG extended (our [`super::jpeg_extended`]),
//! files without preamble or meta group (ACR-NEMA style), rescale, BitsStored, signed pixels,
//! MONOCHROME1, first frame of multi-frame objects; then windowing to the 0..255 display range.
use std::fmt;
use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::{
    DefaultDicomObject, FileMetaTable, FileMetaTableBuilder, InMemDicomObject, OpenFileOptions,
};
use dicom_pixeldata::{PixelDecoder, PixelRepresentation, VoiLutFunction};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

/// Image properties read from the header, as `inspect` prints them.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomInfo {
    pub rows: u32,
    pub columns: u32,
    pub frames: u32,
    pub samples_per_pixel: u16,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub high_bit: u16,
    pub signed: bool,
    pub photometric: String,
    pub transfer_syntax: String,
    pub transfer_syntax_name: String,
    pub modality: Option<String>,
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
    /// First (center, width) of the file, if any.
    pub window: Option<(f64, f64)>,
    pub voi_function: VoiFunction,
    /// A VOI LUT sequence table is present (and used in preference to the window).
    pub has_voi_lut: bool,
    /// The file had no preamble/meta group and was read as implicit VR little endian.
    pub headerless: bool,
}

/// DICOM's VOI LUT functions (PS3.3 C.11.2.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VoiFunction {
    #[default]
    Linear,
    LinearExact,
    Sigmoid,
}

impl fmt::Display for DicomInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "size:            {} x {} (rows x columns), {} frame(s)",
            self.rows, self.columns, self.frames
        )?;
        writeln!(
            f,
            "bits:            {} stored of {} allocated, high bit {}, {}",
            self.bits_stored,
            self.bits_allocated,
            self.high_bit,
            if self.signed { "signed" } else { "unsigned" }
        )?;
        writeln!(
            f,
            "photometric:     {} ({} sample(s) per pixel)",
            self.photometric, self.samples_per_pixel
        )?;
        writeln!(
            f,
            "transfer syntax: {} ({}){}",
            self.transfer_syntax,
            self.transfer_syntax_name,
            if self.headerless { ", no preamble/meta group" } else { "" }
        )?;
        if let Some(m) = &self.modality {
            writeln!(f, "modality:        {m}")?;
        }
        writeln!(f, "rescale:         slope {} intercept {}", self.rescale_slope, self.rescale_intercept)?;
        match (self.has_voi_lut, self.window) {
            (true, _) => write!(f, "window:          VOI LUT sequence"),
            (false, Some((c, w))) => {
                write!(f, "window:          center {c} width {w} ({:?})", self.voi_function)
            }
            (false, None) => write!(f, "window:          none in file"),
        }
    }
}

/// How pixel values become display values when the file carries no VOI LUT or window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum WindowFallback {
    /// Clip to the given low/high percentiles (default 0.5 % and 99.5 %), then scale.
    #[default]
    Percentile,
    /// Scale the full min..max range.
    MinMax,
}

/// Windowing policy: the file's VOI LUT or window first (unless `ignore_file`), else `fallback`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Windowing {
    pub ignore_file: bool,
    pub fallback: WindowFallback,
}

/// Percentiles of the default fallback.
pub const PERCENTILES: (f64, f64) = (0.5, 99.5);

/// Decoded first frame: modality values (rescale applied), before any inversion or windowing.
#[derive(Debug, Clone)]
pub struct DicomPixels {
    pub info: DicomInfo,
    /// `rows * columns` values after rescale slope/intercept (grey; colour converted).
    pub values: Vec<f32>,
    voi_lut: Option<VoiTable>,
}

#[derive(Debug, Clone)]
struct VoiTable {
    first: f64,
    max: f64,
    data: Vec<u16>,
}

fn err(msg: impl Into<String>) -> String {
    msg.into()
}

/// Largest data set a deflated file may inflate to (a 16k x 16k 16-bit radiograph is 512 MiB).
const MAX_INFLATED: u64 = 1 << 29;

/// dicom-rs allocates (and zeroes) each value at its declared length before reading it, so a
/// few damaged bytes claiming a 4 GiB element cost 4 GiB of memory. This walks the element and
/// item headers as dicom-rs will read them (meta group, then the data set in its transfer
/// syntax, deflated ones inflated first) and refuses any declared length longer than what
/// the input holds after it. Structure it cannot follow is left to dicom-rs to refuse.
/// Returns the inflated data set of a deflated file, so that it is inflated once.
fn check_declared_lengths(bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let meta_start = if bytes.get(128..132) == Some(b"DICM") {
        132
    } else if bytes.starts_with(b"DICM") {
        4
    } else {
        // No meta group: a bare data set, implicit VR little endian.
        return walk_data_set(bytes, 0, false, false).map(|()| None);
    };
    // The meta group: explicit VR little endian, as long as its group length says.
    let Some((tag, len, header)) = element_header(bytes, meta_start, true, false) else { return Ok(None) };
    if tag != (0x0002, 0x0000) || len != 4 {
        return Ok(None);
    }
    let Some(group_length) = read_u32(bytes, meta_start + header, false) else { return Ok(None) };
    let mut pos = meta_start + header + 4;
    let mut read = 0u64;
    let mut ts_uid = String::new();
    while read < u64::from(group_length) {
        let Some((tag, len, header)) = element_header(bytes, pos, true, false) else { return Ok(None) };
        if len == UNDEFINED {
            return Ok(None);
        }
        fits(bytes, pos + header, tag, len)?;
        let value = &bytes[pos + header..pos + header + len as usize];
        if tag == (0x0002, 0x0010) {
            ts_uid = String::from_utf8_lossy(value)
                .trim_end_matches(|c: char| c.is_whitespace() || c == '\0')
                .into();
        }
        pos += header + len as usize;
        read += (header + len as usize) as u64;
    }
    let Some(ts) = TransferSyntaxRegistry.get(&ts_uid) else { return Ok(None) };
    let explicit = ts.uid() != IMPLICIT_VR_LITTLE_ENDIAN.uid();
    let big = ts.endianness() == dicom_encoding::transfer_syntax::Endianness::Big;
    match ts.codec() {
        dicom_encoding::transfer_syntax::Codec::Dataset(Some(adapter)) => {
            use std::io::Read;
            let mut inflated = Vec::new();
            adapter
                .adapt_reader(Box::new(&bytes[pos..]))
                .take(MAX_INFLATED + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| err(format!("deflated data set: {e}")))?;
            if inflated.len() as u64 > MAX_INFLATED {
                return Err(err(format!("deflated data set inflates beyond {} MiB", MAX_INFLATED >> 20)));
            }
            walk_data_set(&inflated, 0, explicit, big)?;
            Ok(Some(inflated))
        }
        _ => walk_data_set(bytes, pos, explicit, big).map(|()| None),
    }
}

const UNDEFINED: u32 = u32::MAX;

/// Largest pixel data fragment that may run past the end of the input (1 GiB).
const MAX_FRAGMENT: u32 = 1 << 30;

fn read_u16(b: &[u8], at: usize, big: bool) -> Option<u16> {
    let v: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(if big { u16::from_be_bytes(v) } else { u16::from_le_bytes(v) })
}

fn read_u32(b: &[u8], at: usize, big: bool) -> Option<u32> {
    let v: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if big { u32::from_be_bytes(v) } else { u32::from_le_bytes(v) })
}

/// Tag, value length and header size of the element (or item) header at `at`, as dicom-rs's
/// decoders read it: items and delimiters have no VR; explicit VRs other than the 16-bit-length
/// ones (PS3.5 7.1.2; unknown VRs are read as UN) have 2 reserved bytes and a 32-bit length.
fn element_header(b: &[u8], at: usize, explicit: bool, big: bool) -> Option<((u16, u16), u32, usize)> {
    let tag = (read_u16(b, at, big)?, read_u16(b, at + 2, big)?);
    if tag.0 == 0xFFFE || !explicit {
        return Some((tag, read_u32(b, at + 4, big)?, 8));
    }
    const SHORT: [&[u8; 2]; 21] = [
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH",
        b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    ];
    let vr = b.get(at + 4..at + 6)?;
    if SHORT.iter().any(|s| s.as_slice() == vr) {
        Some((tag, u32::from(read_u16(b, at + 6, big)?), 8))
    } else {
        Some((tag, read_u32(b, at + 8, big)?, 12))
    }
}

/// A declared length must fit in what follows it.
fn fits(b: &[u8], value_start: usize, tag: (u16, u16), len: u32) -> Result<(), String> {
    let left = b.len().saturating_sub(value_start);
    if len as usize > left {
        return Err(err(format!(
            "element ({:04X},{:04X}) declares {len} bytes, the file holds {left} after it",
            tag.0, tag.1
        )));
    }
    Ok(())
}

/// The data set from `pos`: sequences and items are entered (their content is elements), the
/// fragments of encapsulated pixel data and every other value are skipped; every defined
/// length is checked against the bytes left.
fn walk_data_set(b: &[u8], mut pos: usize, explicit: bool, big: bool) -> Result<(), String> {
    use dicom_core::VR;
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    let dict = dicom_dictionary_std::StandardDataDictionary;
    let mut in_pixel_sequence = false;
    // The first item of encapsulated pixel data is the basic offset table, which dicom-rs
    // reserves as `len` u32 values (4 bytes for each declared byte): it must fit.
    let mut offset_table_next = false;
    while let Some((tag, len, header)) = element_header(b, pos, explicit, big) {
        pos += header;
        if len == UNDEFINED {
            // A sequence, or encapsulated pixel data (fragments follow, up to its delimiter).
            if tag == (0x7FE0, 0x0010) {
                in_pixel_sequence = true;
                offset_table_next = true;
            }
            continue;
        }
        if in_pixel_sequence && tag == (0xFFFE, 0xE000) && !std::mem::take(&mut offset_table_next) {
            // A fragment of a file cut short runs past its end: dicom-rs reads what is there
            // (reserving, not filling, the declared size) and the codec has its say.
            if len > MAX_FRAGMENT && len as usize > b.len() - pos {
                return Err(err(format!(
                    "a pixel data fragment declares {len} bytes, the file holds {} after it",
                    b.len() - pos
                )));
            }
            pos = pos.saturating_add(len as usize).min(b.len());
            continue;
        }
        fits(b, pos, tag, len)?;
        if in_pixel_sequence && tag == (0xFFFE, 0xE000) {
            pos += len as usize; // the offset table
            continue;
        }
        if tag.0 == 0xFFFE {
            // Items of sequences hold data sets; delimiters nothing.
            in_pixel_sequence &= tag.1 != 0xE0DD;
            continue;
        }
        // The VR as dicom-rs takes it: from the header (unknown ones are UN), or, in implicit
        // VR, from the dictionary (OW for pixel and overlay data, UN for unknown tags).
        let vr = if explicit {
            let code = [b[pos - header + 4], b[pos - header + 5]];
            VR::from_binary(code).unwrap_or(VR::UN)
        } else if tag == (0x7FE0, 0x0010) || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
            VR::OW
        } else {
            dict.by_tag(dicom_core::Tag(tag.0, tag.1)).map(|e| e.vr().relaxed()).unwrap_or(VR::UN)
        };
        if vr == VR::SQ {
            continue;
        }
        // Binary numbers are read whole: dicom-rs consumes `len` rounded down to a multiple of
        // the number's size (and reads the rest as the next header), so follow it there.
        let size = match vr {
            VR::AT | VR::FL | VR::OF | VR::SL | VR::UL | VR::OL => 4,
            VR::US | VR::OW | VR::SS => 2,
            VR::FD | VR::OD | VR::SV | VR::OV | VR::UV => 8,
            _ => 1,
        };
        pos += len as usize - len as usize % size;
    }
    Ok(())
}

/// Parses a DICOM file's content, with or without preamble and meta group.
fn open(bytes: &[u8]) -> Result<(DefaultDicomObject, bool), String> {
    let inflated = check_declared_lengths(bytes)?;
    let preamble = if bytes.get(128..132) == Some(b"DICM") {
        Some(ReadPreamble::Always)
    } else if bytes.starts_with(b"DICM") {
        Some(ReadPreamble::Never)
    } else {
        None
    };
    // A deflated data set, inflated above: parsed from there rather than inflated again (on
    // failure dicom-rs reads the file as it is, and says what is wrong).
    let meta_start = match preamble {
        Some(ReadPreamble::Always) => 128,
        _ => 0,
    };
    if let (Some(data_set), Some(_)) = (inflated, preamble)
        && let Ok(obj) = open_inflated(&bytes[meta_start..], &data_set)
    {
        return Ok((obj, false));
    }
    let first = match preamble {
        Some(preamble) => match OpenFileOptions::new().read_preamble(preamble).from_reader(bytes) {
            Ok(obj) => return Ok((obj, false)),
            Err(e) => e.to_string(),
        },
        None => "no DICM prefix at byte 128".to_string(),
    };
    // ACR-NEMA style: a bare data set, implicit VR little endian.
    let looks_like_dataset = bytes.len() > 8 && bytes[0..2] == [0x08, 0x00];
    if !looks_like_dataset {
        return Err(err(format!("not a DICOM file ({first})")));
    }
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| err(format!("unreadable data set without meta group: {e}")))?;
    let sop_class = obj
        .get(tags::SOP_CLASS_UID)
        .and_then(|e| e.to_str().ok().map(|s| s.trim_end_matches('\0').to_string()))
        .unwrap_or_else(|| "1.2.840.10008.5.1.4.1.1.7".to_string());
    let sop_instance = obj
        .get(tags::SOP_INSTANCE_UID)
        .and_then(|e| e.to_str().ok().map(|s| s.trim_end_matches('\0').to_string()))
        .unwrap_or_else(|| "2.25.1".to_string());
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(IMPLICIT_VR_LITTLE_ENDIAN.uid())
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance);
    let obj = obj.with_exact_meta(meta.build().map_err(|e| err(e.to_string()))?);
    Ok((obj, true))
}

/// The meta group of `meta` (from its "DICM") and the already inflated data set of a deflated
/// file, as dicom-rs reads them (the data set in explicit VR little endian).
fn open_inflated(meta: &[u8], data_set: &[u8]) -> Result<DefaultDicomObject, String> {
    let meta = FileMetaTable::from_reader(meta).map_err(|e| e.to_string())?;
    let explicit = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    let obj = InMemDicomObject::read_dataset_with_ts(data_set, &explicit).map_err(|e| e.to_string())?;
    Ok(obj.with_exact_meta(meta))
}

/// Decodes the first frame of the DICOM file `path` ([`read_bytes`] of its content).
pub fn read(path: &Path) -> Result<DicomPixels, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    read_bytes(&bytes)
}

/// Decodes the first frame of a DICOM file's content. Codec panics (dicom-rs has some on
/// truncated data) are caught, without a word on stderr ([`crate::panics`]), and returned as
/// `decoder failed: <panic message>`, so one bad file cannot end a run.
pub fn read_bytes(bytes: &[u8]) -> Result<DicomPixels, String> {
    crate::panics::catch_quietly(|| read_inner(bytes))
        .unwrap_or_else(|msg| Err(format!("decoder failed: {msg}")))
}

/// The first JPEG frame of encapsulated pixel data: fragments up to the one that ends with
/// the end-of-image marker (a frame may span several fragments; padding may follow EOI).
fn first_jpeg_frame(obj: &DefaultDicomObject) -> Option<Vec<u8>> {
    let fragments = obj.get(tags::PIXEL_DATA)?.value().fragments()?;
    let mut frame = Vec::new();
    for f in fragments {
        frame.extend_from_slice(f);
        let end = f.len().saturating_sub(3)..f.len();
        if f.get(end).is_some_and(|tail| tail.windows(2).any(|w| w == [0xFF, 0xD9])) {
            break;
        }
    }
    Some(frame)
}

/// Sample precision of a JPEG stream's DCT frame header (SOF0/SOF1), if it has one.
fn jpeg_precision(stream: &[u8]) -> Option<u8> {
    let mut pos = 2;
    while pos + 4 < stream.len() {
        if stream[pos] != 0xFF {
            return None;
        }
        let marker = stream[pos + 1];
        if marker == 0xC0 || marker == 0xC1 {
            return stream.get(pos + 4).copied();
        }
        let len = usize::from(u16::from_be_bytes([stream[pos + 2], stream[pos + 3]]));
        pos += 2 + len;
    }
    None
}

/// 12-bit JPEG extended (process 4), which dicom-rs's JPEG decoder refuses: decoded by
/// [`super::jpeg_extended`] into native pixel data of a copy of the object, so that the rest
/// (rescale, window, VOI LUT) follows the same path as every other file.
fn transcode_12bit_jpeg(
    obj: &DefaultDicomObject,
    ts_uid: &str,
) -> Result<Option<DefaultDicomObject>, String> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
    const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";
    if ts_uid != JPEG_EXTENDED && ts_uid != JPEG_BASELINE {
        return Ok(None);
    }
    let Some(stream) = first_jpeg_frame(obj) else { return Ok(None) };
    if jpeg_precision(&stream) != Some(12) {
        return Ok(None);
    }
    let img =
        super::jpeg_extended::decode(&stream).map_err(|e| err(format!("cannot decode pixel data: {e}")))?;
    if img.components != 1 {
        return Err(err(format!("12-bit JPEG with {} components is not supported", img.components)));
    }
    let rows = obj.get(tags::ROWS).and_then(|e| e.to_int::<u32>().ok());
    let columns = obj.get(tags::COLUMNS).and_then(|e| e.to_int::<u32>().ok());
    if rows != Some(img.height as u32) || columns != Some(img.width as u32) {
        return Err(err(format!(
            "JPEG frame is {}x{}, the header says {:?}x{:?}",
            img.width, img.height, columns, rows
        )));
    }
    let mut native = obj.clone();
    native.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(img.samples.into())));
    native.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("1")));
    native.update_meta(|m| {
        m.set_transfer_syntax(&dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN)
    });
    Ok(Some(native))
}

/// dicom-rs sizes the segment table of an RLE Lossless frame by the count in its first 4 bytes
/// before looking at anything else, so a damaged count asked for up to 16 GiB (found by
/// fuzzing). PS3.5 G.5: at most 15 segments.
fn check_rle_header(obj: &DefaultDicomObject) -> Result<(), String> {
    let frame = obj.get(tags::PIXEL_DATA).and_then(|e| e.value().fragments()).and_then(|f| f.first());
    let Some(count) = frame.and_then(|f| f.get(0..4)).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return Ok(());
    };
    if count > 15 {
        return Err(err(format!("RLE frame header declares {count} segments (at most 15)")));
    }
    Ok(())
}

fn read_inner(bytes: &[u8]) -> Result<DicomPixels, String> {
    let (obj, headerless) = open(bytes)?;
    let ts_uid = obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let frames = obj.get(tags::NUMBER_OF_FRAMES).and_then(|e| e.to_int::<u32>().ok()).unwrap_or(1);
    let obj = transcode_12bit_jpeg(&obj, &ts_uid)?.unwrap_or(obj);
    let ts_name = TransferSyntaxRegistry
        .get(&ts_uid)
        .map(|ts| ts.name().to_string())
        .unwrap_or_else(|| "unknown".into());
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err(err("no pixel data"));
    }
    if ts_uid == "1.2.840.10008.1.2.5" {
        check_rle_header(&obj)?;
    }
    let decoded = obj
        .decode_pixel_data_frame(0)
        .map_err(|e| err(format!("cannot decode pixel data ({ts_name}): {e}")))?;
    let (rows, columns) = (decoded.rows(), decoded.columns());
    let spp = decoded.samples_per_pixel();
    let bits_allocated = decoded.bits_allocated();
    let bits_stored = decoded.bits_stored();
    let high_bit = decoded.high_bit();
    let signed = decoded.pixel_representation() == PixelRepresentation::Signed;
    let photometric = decoded.photometric_interpretation().to_string();
    let rescale = decoded.rescale().ok().and_then(|r| r.first().copied());
    let (slope, intercept) = rescale.map(|r| (r.slope, r.intercept)).unwrap_or((1.0, 0.0));
    let window = decoded.window().ok().flatten().and_then(|w| w.first().map(|w| (w.center, w.width)));
    let voi_function = match decoded.voi_lut_function().ok().flatten().and_then(|f| f.first().copied()) {
        Some(VoiLutFunction::LinearExact) => VoiFunction::LinearExact,
        Some(VoiLutFunction::Sigmoid) => VoiFunction::Sigmoid,
        _ => VoiFunction::Linear,
    };
    let voi_lut =
        decoded.voi_lut_sequence().ok().flatten().and_then(|luts| luts.first()).map(|lut| VoiTable {
            first: f64::from(lut.min_pixel_value),
            max: ((1u64 << lut.bits_stored) - 1) as f64,
            data: lut.data.clone(),
        });
    let n = rows as usize * columns as usize;
    let data = decoded.frame_data(0).map_err(|e| err(format!("pixel data: {e}")))?;
    let stored = StoredSamples::new(data, n * spp as usize, bits_allocated, bits_stored, signed)?;
    let values = if spp == 1 {
        // Grey: straight to modality values, one pass.
        stored.map(|v| (v * slope + intercept) as f32)
    } else if spp == 3 {
        // Colour: ITU-R 601 luma, interleaved (planar data was converted by the decoder or is
        // refused below).
        if decoded.planar_configuration() != dicom_pixeldata::PlanarConfiguration::Standard {
            return Err(err("planar colour pixel data is not supported"));
        }
        let samples = stored.map(|v| v);
        samples
            .chunks_exact(3)
            .map(|p| ((0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]) * slope + intercept) as f32)
            .collect()
    } else {
        return Err(err(format!("{spp} samples per pixel")));
    };
    let info = DicomInfo {
        rows,
        columns,
        frames,
        samples_per_pixel: spp,
        bits_allocated,
        bits_stored,
        high_bit,
        signed,
        photometric,
        transfer_syntax: ts_uid,
        transfer_syntax_name: ts_name,
        modality: obj.get(tags::MODALITY).and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string()),
        rescale_slope: slope,
        rescale_intercept: intercept,
        window,
        voi_function,
        has_voi_lut: voi_lut.is_some(),
        headerless,
    };
    Ok(DicomPixels { info, values, voi_lut })
}

/// Native little-endian pixel data read as stored sample values: masked to BitsStored and
/// sign-extended when signed.
struct StoredSamples<'a> {
    data: &'a [u8],
    /// Bytes per sample: 1, 2 or 4.
    bytes: usize,
    mask: u32,
    /// The sign bit when signed, else 0: a masked value `v` is `(v ^ sign) - sign`.
    sign: u32,
}

impl<'a> StoredSamples<'a> {
    fn new(
        data: &'a [u8],
        count: usize,
        bits_allocated: u16,
        bits_stored: u16,
        signed: bool,
    ) -> Result<Self, String> {
        let bytes = match bits_allocated {
            8 => 1,
            16 => 2,
            32 => 4,
            b => return Err(err(format!("{b} bits allocated"))),
        };
        if data.len() < count * bytes {
            return Err(err(format!(
                "pixel data holds {} bytes, {count} samples need {}",
                data.len(),
                count * bytes
            )));
        }
        let bits = u32::from(bits_stored.clamp(1, bits_allocated));
        let mask = if bits >= 32 { u32::MAX } else { (1u32 << bits) - 1 };
        let sign = if signed { 1u32 << (bits - 1) } else { 0 };
        Ok(Self { data: &data[..count * bytes], bytes, mask, sign })
    }

    /// `f` of every stored value (as f64, exactly), in one pass with no copy in between. Up to
    /// 16 bits stored, `f` of each possible value is tabulated first when the image has many
    /// more pixels than that (the table then costs less than calling `f` per pixel).
    fn map<T: Copy>(&self, f: impl Fn(f64) -> T) -> Vec<T> {
        let (mask, sign) = (self.mask, self.sign);
        let value = |raw: u32| {
            let v = raw & mask;
            f64::from(v ^ sign) - f64::from(sign)
        };
        let count = self.data.len() / self.bytes;
        if self.bytes <= 2 && count >= 4 * (mask as usize + 1) {
            let table: Vec<T> = (0..=mask).map(|raw| f(value(raw))).collect();
            let mask = mask as usize;
            return if self.bytes == 1 {
                self.data.iter().map(|&b| table[usize::from(b) & mask]).collect()
            } else {
                let raw = |c: &[u8]| usize::from(u16::from_le_bytes([c[0], c[1]])) & mask;
                self.data.chunks_exact(2).map(|c| table[raw(c)]).collect()
            };
        }
        match self.bytes {
            1 => self.data.iter().map(|&b| f(value(u32::from(b)))).collect(),
            2 => self
                .data
                .chunks_exact(2)
                .map(|c| f(value(u32::from(u16::from_le_bytes([c[0], c[1]])))))
                .collect(),
            _ => self
                .data
                .chunks_exact(4)
                .map(|c| f(value(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))))
                .collect(),
        }
    }
}

impl DicomPixels {
    /// The range of modality values the stored bits can represent.
    pub fn representable_range(&self) -> (f64, f64) {
        let (lo, hi) = self.stored_range();
        let (s, i) = (self.info.rescale_slope, self.info.rescale_intercept);
        let (a, b) = (lo * s + i, hi * s + i);
        (a.min(b), a.max(b))
    }

    pub fn is_monochrome1(&self) -> bool {
        self.info.photometric == "MONOCHROME1"
    }

    /// Modality values with MONOCHROME1 mirrored inside the representable range, so that
    /// bright means dense for every file: `lo + hi - v`. What `inspect --npy` writes.
    pub fn presentation_values(&self) -> Vec<f32> {
        if !self.is_monochrome1() {
            return self.values.clone();
        }
        let (lo, hi) = self.representable_range();
        self.values.iter().map(|&v| (lo + hi - f64::from(v)) as f32).collect()
    }

    /// Display values in 0..255 (float, not rounded): VOI LUT or window from the file
    /// (PS3.3 C.11.2.1.2) unless told otherwise, else the fallback; MONOCHROME1 inverted after.
    pub fn display(&self, windowing: Windowing) -> (Vec<f32>, String) {
        let (map, how) = self.unit_map(windowing);
        let (values, invert) = (self.values.as_slice(), self.is_monochrome1());
        let pixels = match map {
            // The common case, written out so that the pass is branch-free.
            UnitMap::Window(c, w, VoiFunction::Linear) => {
                display_pass(values, invert, |v| window_linear(v, c, w))
            }
            _ => display_pass(values, invert, |v| map.unit(v)),
        };
        (pixels, how)
    }

    /// The display image every program reads ([`DicomPixels::display`] with its size and depth).
    pub fn grey_image(&self, windowing: Windowing) -> super::decode::GreyImage {
        super::decode::GreyImage {
            width: self.info.columns,
            height: self.info.rows,
            pixels: self.display(windowing).0,
            bit_depth: self.info.bits_stored as u8,
        }
    }

    /// The display value (0..255, as [`DicomPixels::display`] gives it before rounding to
    /// f32) of one modality value: to go back from an edited display image to stored values.
    pub fn display_of(&self, windowing: Windowing) -> impl Fn(f64) -> f64 + '_ {
        let (map, _) = self.unit_map(windowing);
        let invert = self.is_monochrome1();
        move |v| if invert { (1.0 - map.unit(v)) * 255.0 } else { map.unit(v) * 255.0 }
    }

    /// The stored value of a modality value (rescale undone, rounded).
    pub fn stored_of(&self, v: f64) -> f64 {
        let (slope, intercept) = self.rescale();
        ((v - intercept) / slope).round()
    }

    /// The modality value of a stored value.
    pub fn modality_of(&self, s: f64) -> f64 {
        let (slope, intercept) = self.rescale();
        s * slope + intercept
    }

    /// (slope, intercept), a zero slope read as 1 so that the rescale can be undone.
    fn rescale(&self) -> (f64, f64) {
        let slope = self.info.rescale_slope;
        (if slope == 0.0 { 1.0 } else { slope }, self.info.rescale_intercept)
    }

    /// The range of values the stored bits hold.
    pub fn stored_range(&self) -> (f64, f64) {
        let bits = i32::from(self.info.bits_stored.max(1));
        if self.info.signed {
            (-(2f64.powi(bits - 1)), 2f64.powi(bits - 1) - 1.0)
        } else {
            (0.0, 2f64.powi(bits) - 1.0)
        }
    }

    /// Stored values of `edited`, an edit of this image's display values `display` (what
    /// [`DicomPixels::display`] gave with `windowing`): a pixel left as it was keeps its stored
    /// value exactly; an edited one moves, in modality units, by the display mapping's inverse
    /// (piecewise linear over the stored range, extended beyond the window with the slope at
    /// its edge), so that it displays as edited through the file's own window or LUT.
    pub fn stored_after_edit(&self, windowing: Windowing, display: &[f32], edited: &[f32]) -> Vec<i32> {
        let g = self.display_of(windowing);
        let (smin, smax) = self.stored_range();
        let n = (smax - smin + 1.0).clamp(2.0, 65536.0) as usize;
        let step = (smax - smin) / (n - 1) as f64;
        // (display, modality) where the mapping is not saturated, by display value.
        let mut table: Vec<(f64, f64)> = (0..n)
            .map(|k| self.modality_of(smin + k as f64 * step))
            .map(|v| (g(v), v))
            .filter(|(d, _)| *d > 0.0 && *d < 255.0)
            .collect();
        table.sort_by(|a, b| a.0.total_cmp(&b.0));
        table.dedup_by(|later, first| later.0 == first.0);
        if table.len() < 2 {
            // A window narrower than one stored step: the ends of the stored range.
            let (lo, hi) = (self.modality_of(smin), self.modality_of(smax));
            table = if g(lo) <= g(hi) { vec![(0.0, lo), (255.0, hi)] } else { vec![(0.0, hi), (255.0, lo)] };
        }
        let inverse = |d: f64| {
            let i = table.partition_point(|e| e.0 < d).clamp(1, table.len() - 1);
            let ((d0, v0), (d1, v1)) = (table[i - 1], table[i]);
            v0 + (d - d0) * (v1 - v0) / (d1 - d0)
        };
        let (first, last) = (table[0].0, table[table.len() - 1].0);
        self.values
            .iter()
            .zip(display.iter().zip(edited))
            .map(|(&v, (&d, &e))| {
                let (v, d, e) = (f64::from(v), f64::from(d), f64::from(e));
                let v = if d == e {
                    v
                } else if d < first || d > last {
                    // Clipped by the display (beyond the window): its own value says nothing of
                    // where the edit lands, so it takes the edited display's value.
                    inverse(e)
                } else {
                    v + inverse(e) - inverse(d)
                };
                self.stored_of(v).clamp(smin, smax) as i32
            })
            .collect()
    }

    /// Which mapping to 0..1 `display` applies, and how (for reports).
    fn unit_map(&self, windowing: Windowing) -> (UnitMap<'_>, String) {
        match (&self.voi_lut, self.info.window, windowing.ignore_file) {
            (Some(lut), _, false) => (UnitMap::Lut(lut), "file VOI LUT".into()),
            (None, Some((c, w)), false) if w > 0.0 && self.window_fits(c, w) => {
                (UnitMap::Window(c, w, self.info.voi_function), format!("file window c={c} w={w}"))
            }
            (None, Some((c, w)), false) => {
                let (lo, hi, how) = fallback_range(&self.values, windowing.fallback);
                (UnitMap::Range(lo, hi), format!("file window c={c} w={w} misses the data, {how}"))
            }
            _ => {
                let (lo, hi, how) = fallback_range(&self.values, windowing.fallback);
                (UnitMap::Range(lo, hi), how)
            }
        }
    }

    /// Whether at least 1 % of the pixels fall inside the window rather than saturating:
    /// some files carry a window for differently offset values (e.g. a JPEG 2000 stream whose
    /// signedness disagrees with the header), which would show a blank image.
    fn window_fits(&self, c: f64, w: f64) -> bool {
        let (lo, hi) = (c - w / 2.0, c + w / 2.0);
        let inside = self.values.iter().filter(|&&v| (lo..hi).contains(&f64::from(v))).count();
        inside * 100 >= self.values.len()
    }
}

/// A modality value to 0..1: the file's VOI LUT, its window, or a fallback range.
#[derive(Debug, Clone, Copy)]
enum UnitMap<'a> {
    Lut(&'a VoiTable),
    Window(f64, f64, VoiFunction),
    Range(f64, f64),
}

impl UnitMap<'_> {
    fn unit(&self, v: f64) -> f64 {
        match *self {
            UnitMap::Lut(lut) => {
                let n = lut.data.len().max(1);
                let idx = (v - lut.first).clamp(0.0, (n - 1) as f64) as usize;
                f64::from(lut.data.get(idx).copied().unwrap_or(0)) / lut.max.max(1.0)
            }
            UnitMap::Window(c, w, f) => window(v, c, w, f),
            UnitMap::Range(lo, hi) => ((v - lo) / (hi - lo).max(f64::MIN_POSITIVE)).clamp(0.0, 1.0),
        }
    }
}

/// Display values 0..255 of modality values, `unit` mapping them to 0..1: one pass, no copy
/// in between, MONOCHROME1 inverted after.
fn display_pass(values: &[f32], invert: bool, unit: impl Fn(f64) -> f64) -> Vec<f32> {
    if invert {
        values.iter().map(|&v| ((1.0 - unit(f64::from(v))) * 255.0) as f32).collect()
    } else {
        values.iter().map(|&v| (unit(f64::from(v)) * 255.0) as f32).collect()
    }
}

/// `values` scaled to 0..1 by `fallback`, and how (for reports): what a file without a window
/// gets, DICOM or a 16-bit PNG or TIFF.
pub fn fallback_window(values: &[f32], fallback: WindowFallback) -> (Vec<f64>, String) {
    let (lo, hi, how) = fallback_range(values, fallback);
    let map = UnitMap::Range(lo, hi);
    (values.iter().map(|&v| map.unit(f64::from(v))).collect(), how)
}

/// The range `fallback` scales to 0..1, and how (for reports).
fn fallback_range(values: &[f32], fallback: WindowFallback) -> (f64, f64, String) {
    let (lo, hi) = match fallback {
        WindowFallback::MinMax => min_max(values),
        WindowFallback::Percentile => percentiles(values, PERCENTILES.0, PERCENTILES.1),
    };
    let name = match fallback {
        WindowFallback::MinMax => "min-max",
        WindowFallback::Percentile => "percentile 0.5-99.5",
    };
    (lo, hi, format!("{name} [{lo}, {hi}]"))
}

/// The VOI window function mapped to 0..1.
pub fn window(x: f64, c: f64, w: f64, f: VoiFunction) -> f64 {
    match f {
        VoiFunction::Linear => window_linear(x, c, w),
        VoiFunction::LinearExact => {
            if w <= 0.0 {
                return if x < c { 0.0 } else { 1.0 };
            }
            ((x - c) / w + 0.5).clamp(0.0, 1.0)
        }
        VoiFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - c) / w).exp()),
    }
}

/// DICOM's LINEAR window (PS3.3 C.11.2.1.2.1) mapped to 0..1.
#[inline]
fn window_linear(x: f64, c: f64, w: f64) -> f64 {
    let (lo, hi) = (c - 0.5 - (w - 1.0) / 2.0, c - 0.5 + (w - 1.0) / 2.0);
    let y = ((x - (c - 0.5)) / (w - 1.0).max(f64::MIN_POSITIVE) + 0.5).clamp(0.0, 1.0);
    if x <= lo {
        0.0
    } else if x > hi {
        1.0
    } else {
        y
    }
}

fn min_max(v: &[f32]) -> (f64, f64) {
    let (lo, hi) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    (f64::from(lo), f64::from(hi))
}

/// Low and high percentiles (nearest rank), in linear time.
fn percentiles(v: &[f32], lo: f64, hi: f64) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 1.0);
    }
    let last = v.len() - 1;
    let rank = |p: f64| (((p / 100.0) * last as f64).round() as usize).min(last);
    let (ilo, ihi) = (rank(lo), rank(hi));
    if let Some([a, b]) = ranks_by_counting(v, [ilo, ihi]) {
        return (f64::from(a), f64::from(b));
    }
    let mut copy = v.to_vec();
    let cmp = |a: &f32, b: &f32| a.total_cmp(b);
    let (below, a, above) = copy.select_nth_unstable_by(ilo, cmp);
    let a = *a;
    // The other rank is found in the part on its side of `ilo`.
    let b = match ihi.cmp(&ilo) {
        std::cmp::Ordering::Greater => *above.select_nth_unstable_by(ihi - ilo - 1, cmp).1,
        std::cmp::Ordering::Equal => a,
        std::cmp::Ordering::Less => *below.select_nth_unstable_by(ihi, cmp).1,
    };
    (f64::from(a), f64::from(b))
}

/// The values of the given ranks (0 = smallest) by counting, when `v` holds integers that
/// span at most 2^16 (the stored values of almost every radiograph, rescaled by an integer
/// slope): two passes instead of a copy and two selections. `None` otherwise.
fn ranks_by_counting(v: &[f32], ranks: [usize; 2]) -> Option<[f32; 2]> {
    let (lo, hi) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    // Integers of f32 are exact up to 2^24, and so are their differences there.
    const EXACT: f32 = 16_777_216.0;
    if !(lo > -EXACT && hi < EXACT && hi - lo < 65_536.0) {
        return None;
    }
    let mut counts = vec![0u32; (hi - lo) as usize + 1];
    for &x in v {
        let d = x - lo;
        let i = d as usize;
        if i as f32 != d {
            return None; // not an integer (or NaN)
        }
        counts[i] += 1;
    }
    let mut out = [0f32; 2];
    for (o, &rank) in out.iter_mut().zip(&ranks) {
        let mut seen = 0usize;
        let i = counts.iter().position(|&c| {
            seen += c as usize;
            seen > rank
        })?;
        *o = lo + i as f32;
    }
    Some(out)
}
