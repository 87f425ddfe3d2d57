//! Image files to grey pixel values: DICOM (see [`super::dicom`]), PNG and TIFF (8 or 16 bit)
//! and JPEG, grey or colour. The format is told by content, not by name: PACS exports often have none.
use std::io::Read;
use std::path::{Path, PathBuf};

use super::dicom::{self, Windowing};

/// A decoded radiograph: row-major grey values in 0..255 (16-bit sources are scaled).
#[derive(Debug, Clone, PartialEq)]
pub struct GreyImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<f32>,
    /// Bits per sample of the source.
    pub bit_depth: u8,
}

/// Why a file could not be decoded; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("{}: unsupported file type (expected DICOM, PNG, JPEG or TIFF)", path.display())]
    Unsupported { path: PathBuf },
}

/// Files a folder scan picks up: known extensions, and names without one (PACS exports).
pub fn is_supported_image(path: &Path) -> bool {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png" | "jpg" | "jpeg" | "tif" | "tiff" | "dcm" | "dicom" | "dic" | "ima") => true,
        // Files named by their SOP instance UID: `1.2.840.113619.2.55.3.604688119.969.1268071029.320`.
        Some(ext) if ext.bytes().all(|b| b.is_ascii_digit()) => true,
        // DICOMDIR is a media index, never an image.
        None => !path.file_name().is_some_and(|n| {
            let n = n.to_string_lossy();
            n.starts_with('.') || n.eq_ignore_ascii_case("DICOMDIR")
        }),
        _ => false,
    }
}

/// What the first bytes say a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Dicom,
    Png,
    Jpeg,
    Tiff,
    Unknown,
}

/// Sniffs the format from the content (DICOM: "DICM" at 128, or a bare group-0008 data set).
pub fn file_kind(path: &Path) -> std::io::Result<FileKind> {
    let mut head = Vec::with_capacity(132);
    std::fs::File::open(path)?.take(132).read_to_end(&mut head)?;
    Ok(kind_of_bytes(&head))
}

/// [`file_kind`] of a file's content (only the first 132 bytes are looked at).
pub fn kind_of_bytes(head: &[u8]) -> FileKind {
    let n = head.len();
    // "DICM" first: a DICOM preamble may hold a TIFF header (dual-personality files).
    if n >= 132 && &head[128..132] == b"DICM" {
        FileKind::Dicom
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        FileKind::Png
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        FileKind::Jpeg
    } else if head.starts_with(b"II*\0") || head.starts_with(b"MM\0*") {
        FileKind::Tiff
    } else if n >= 8 && head[0..2] == [0x08, 0x00] {
        FileKind::Dicom
    } else {
        FileKind::Unknown
    }
}

/// Why bytes could not be decoded ([`decode_bytes`]); [`DecodeError`] adds the file's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BytesError {
    #[error("{0}")]
    Unreadable(String),
    #[error("unsupported file type (expected DICOM, PNG, JPEG or TIFF)")]
    Unsupported,
}

impl BytesError {
    /// The error of the file `path` these bytes came from.
    pub fn at(self, path: &Path) -> DecodeError {
        match self {
            BytesError::Unreadable(reason) => DecodeError::Unreadable { path: path.to_path_buf(), reason },
            BytesError::Unsupported => DecodeError::Unsupported { path: path.to_path_buf() },
        }
    }
}

/// Decodes one file with the default windowing (see [`decode_file_with`]).
pub fn decode_file(path: &Path) -> Result<GreyImage, DecodeError> {
    decode_file_with(path, Windowing::default())
}

/// [`decode_file`] of each path on `workers` threads, results in the order of `paths` (for
/// inference over a list of files at their own sizes, where the training [`crate::data::Loader`]
/// would resize).
pub fn decode_files(paths: &[&Path], workers: usize) -> Vec<Result<GreyImage, DecodeError>> {
    let workers = workers.clamp(1, paths.len().max(1));
    if workers == 1 {
        return paths.iter().map(|p| decode_file(p)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, Result<GreyImage, DecodeError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(path) = paths.get(i) else { break done };
                        done.push((i, decode_file(path)));
                    }
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("decode thread panicked")).collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// The readable images of `dataset`, for inference at their own sizes: `batch` files at a time
/// decoded on `workers` threads, `each` given a batch's (dataset index, image) pairs in order.
/// An unreadable file is skipped with one line naming it; returns how many were.
pub fn for_each_readable_batch<E>(
    dataset: &super::Dataset,
    batch: usize,
    workers: usize,
    mut each: impl FnMut(Vec<(usize, GreyImage)>) -> Result<(), E>,
) -> Result<usize, E> {
    let mut skipped = 0;
    let indices: Vec<usize> = (0..dataset.samples.len()).collect();
    for chunk in indices.chunks(batch.max(1)) {
        let paths: Vec<&Path> = chunk.iter().map(|&i| dataset.samples[i].path.as_path()).collect();
        let mut images = Vec::new();
        for (&i, decoded) in chunk.iter().zip(decode_files(&paths, workers)) {
            match decoded {
                Ok(img) => images.push((i, img)),
                Err(e) => {
                    eprintln!("skipped {e}");
                    skipped += 1;
                }
            }
        }
        if !images.is_empty() {
            each(images)?;
        }
    }
    Ok(skipped)
}

/// Decodes one file to display values in 0..255: [`decode_bytes`] of its content.
pub fn decode_file_with(path: &Path, windowing: Windowing) -> Result<GreyImage, DecodeError> {
    let bytes = std::fs::read(path)
        .map_err(|e| DecodeError::Unreadable { path: path.to_path_buf(), reason: e.to_string() })?;
    decode_bytes(&bytes, windowing).map_err(|e| e.at(path))
}

/// Decodes a file's content to display values in 0..255, the format told by the content
/// ([`kind_of_bytes`]). DICOM goes through rescale, the file's VOI LUT or window (else
/// `windowing`'s fallback) and MONOCHROME1 inversion; colour is converted to grey with ITU-R 601
/// weights, as PIL's `convert("L")`. Decoder panics are caught (silently) and returned as
/// `decoder failed: ...` errors.
pub fn decode_bytes(bytes: &[u8], windowing: Windowing) -> Result<GreyImage, BytesError> {
    match kind_of_bytes(bytes) {
        FileKind::Dicom => {
            let px = dicom::read_bytes(bytes).map_err(BytesError::Unreadable)?;
            return Ok(px.grey_image(windowing));
        }
        FileKind::Png | FileKind::Jpeg | FileKind::Tiff => {}
        FileKind::Unknown => return Err(BytesError::Unsupported),
    }
    let decoded = crate::panics::catch_quietly(|| {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?
            .decode()
            .map_err(|e| e.to_string())
    });
    let img = decoded
        .map_err(|panic| BytesError::Unreadable(format!("decoder failed: {panic}")))?
        .map_err(BytesError::Unreadable)?;
    Ok(grey(img, windowing))
}

/// Grey display values of a decoded PNG, JPEG or TIFF.
fn grey(img: image::DynamicImage, windowing: Windowing) -> GreyImage {
    let (width, height) = (img.width(), img.height());
    use image::DynamicImage as D;
    let (pixels, bit_depth) = match img {
        D::ImageLuma8(g) => (g.into_raw().into_iter().map(f32::from).collect(), 8),
        D::ImageLuma16(g) => (display_16bit(g.into_raw().into_iter(), windowing), 16),
        D::ImageLumaA8(g) => (g.pixels().map(|p| f32::from(p.0[0])).collect(), 8),
        D::ImageLumaA16(g) => (display_16bit(g.pixels().map(|p| p.0[0]), windowing), 16),
        other => {
            // Colour JPEGs decode to RGB8 already: convert without another copy.
            let rgb = match other {
                D::ImageRgb8(rgb) => rgb,
                other => other.to_rgb8(),
            };
            let grey = rgb
                .as_raw()
                .chunks_exact(3)
                .map(|p| {
                    let (r, g, b) = (u32::from(p[0]), u32::from(p[1]), u32::from(p[2]));
                    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as f32
                })
                .collect();
            (grey, 8)
        }
    };
    GreyImage { width, height, pixels, bit_depth }
}

/// 16-bit grey PNG and TIFF radiographs are raw detector values as often as display values
/// (12 bits of 16 used, or a narrow band): without a window to go by, they get the DICOM
/// fallback (by default the 0.5-99.5 percentile clip) rather than a fixed / 257.
fn display_16bit(values: impl Iterator<Item = u16>, windowing: Windowing) -> Vec<f32> {
    let values: Vec<f32> = values.map(f32::from).collect();
    let (unit, _) = dicom::fallback_window(&values, windowing.fallback);
    unit.into_iter().map(|y| (y * 255.0) as f32).collect()
}
