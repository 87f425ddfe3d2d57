//! Image files to grey pixel values. PNG (8 or 16 bit) and JPEG, grey or colour, for now;
//! DICOM arrives with the data pipeline.
use std::path::{Path, PathBuf};

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
    #[error("{}: unsupported file type (expected PNG or JPEG)", path.display())]
    Unsupported { path: PathBuf },
}

/// Extensions this build decodes.
pub fn is_supported_image(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

/// Decodes one file. Colour is converted to grey with ITU-R 601 weights, as PIL's `convert("L")`.
pub fn decode_file(path: &Path) -> Result<GreyImage, DecodeError> {
    if !is_supported_image(path) {
        return Err(DecodeError::Unsupported { path: path.to_path_buf() });
    }
    let fail = |reason: String| DecodeError::Unreadable { path: path.to_path_buf(), reason };
    let img = image::ImageReader::open(path)
        .map_err(|e| fail(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?
        .decode()
        .map_err(|e| fail(e.to_string()))?;
    let (width, height) = (img.width(), img.height());
    use image::DynamicImage as D;
    let (pixels, bit_depth) = match img {
        D::ImageLuma8(g) => (g.into_raw().into_iter().map(f32::from).collect(), 8),
        D::ImageLuma16(g) => (g.into_raw().into_iter().map(|v| f32::from(v) / 257.0).collect(), 16),
        D::ImageLumaA8(g) => (g.pixels().map(|p| f32::from(p.0[0])).collect(), 8),
        D::ImageLumaA16(g) => (g.pixels().map(|p| f32::from(p.0[0]) / 257.0).collect(), 16),
        other => {
            let rgb = other.to_rgb8();
            let grey = rgb
                .pixels()
                .map(|p| {
                    let [r, g, b] = p.0.map(u32::from);
                    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as f32
                })
                .collect();
            (grey, 8)
        }
    };
    Ok(GreyImage { width, height, pixels, bit_depth })
}
