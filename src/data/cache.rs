//! A memory-mapped cache of decoded, resized images, so a dataset is decoded once rather than
//! every epoch (compressed DICOM costs 40 to 260 ms per file to decode).
//!
//! One file: a header, one state byte per sample, then one `size x size` u8 slot per sample
//! (display values rounded, as the original pipeline's 8-bit PNGs). Slots are filled by the
//! loader threads with positional writes and read through a shared read-only mapping. The
//! header holds a fingerprint of the file list, sizes and modification times and the image
//! size: a cache made for anything else is rebuilt, never misread.
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dataset::Dataset;

/// Bumped whenever decoding changes what a file becomes (02: 16-bit PNG/TIFF windowed), so that
/// an older cache is rebuilt rather than trained on.
const MAGIC: &[u8; 8] = b"CHESSC02";
const HEADER: u64 = 32;

/// Errors of the cache file; each names it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct CacheError {
    pub path: PathBuf,
    pub reason: String,
}

/// Decoded images of one dataset at one size.
#[derive(Debug)]
pub struct DecodeCache {
    path: PathBuf,
    file: File,
    map: Mmap,
    size: usize,
    count: usize,
    data_offset: u64,
}

fn fingerprint(dataset: &Dataset, size: i64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    size.hash(&mut h);
    for s in &dataset.samples {
        s.path.hash(&mut h);
        if let Ok(m) = std::fs::metadata(&s.path) {
            m.len().hash(&mut h);
            m.modified().ok().hash(&mut h);
        }
    }
    h.finish()
}

impl DecodeCache {
    /// Opens the cache at `path` for `dataset` at `size`, creating (or recreating, when it was
    /// made for other files or is damaged) a sparse file of the full size.
    pub fn open(path: &Path, dataset: &Dataset, size: i64) -> Result<Self, CacheError> {
        let fail = |reason: String| CacheError { path: path.to_path_buf(), reason };
        let count = dataset.len();
        let pixels = (size * size) as u64;
        let data_offset = (HEADER + count as u64).div_ceil(4096) * 4096;
        let total = data_offset + pixels * count as u64;
        let fp = fingerprint(dataset, size);
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&(size as u64).to_le_bytes());
        header[16..24].copy_from_slice(&(count as u64).to_le_bytes());
        header[24..32].copy_from_slice(&fp.to_le_bytes());

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| fail(e.to_string()))?;
        let mut existing = [0u8; HEADER as usize];
        let reusable = file.metadata().map(|m| m.len() == total).unwrap_or(false)
            && file.read_exact_at(&mut existing, 0).is_ok()
            && existing == header;
        if !reusable {
            // New or stale: start empty (sparse, so untouched slots cost no disk).
            file.set_len(0).map_err(|e| fail(e.to_string()))?;
            file.set_len(total).map_err(|e| fail(e.to_string()))?;
            file.write_all_at(&header, 0).map_err(|e| fail(e.to_string()))?;
        }
        // SAFETY: the mapping is read-only; slots are only written (with pwrite) before their
        // state byte marks them ready, and the file is never shrunk while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| fail(e.to_string()))?;
        Ok(Self { path: path.to_path_buf(), file, map, size: size as usize, count, data_offset })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of samples already decoded into the cache.
    pub fn filled(&self) -> usize {
        self.map[HEADER as usize..HEADER as usize + self.count].iter().filter(|&&b| b == 1).count()
    }

    /// The cached pixels of sample `idx`, if present.
    pub fn get(&self, idx: usize) -> Option<&[u8]> {
        if idx >= self.count || self.map[HEADER as usize + idx] != 1 {
            return None;
        }
        let start = self.data_offset as usize + idx * self.size * self.size;
        Some(&self.map[start..start + self.size * self.size])
    }

    /// Stores sample `idx` (values rounded to u8), then marks it ready; returns the stored bytes
    /// so that a first epoch sees exactly what later epochs read back.
    pub fn put(&self, idx: usize, pixels: &[f32]) -> Result<Vec<u8>, CacheError> {
        let fail = |e: std::io::Error| CacheError { path: self.path.clone(), reason: e.to_string() };
        if idx >= self.count || pixels.len() != self.size * self.size {
            return Err(CacheError { path: self.path.clone(), reason: format!("slot {idx} of wrong size") });
        }
        let bytes: Vec<u8> = pixels.iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect();
        let start = self.data_offset + (idx * self.size * self.size) as u64;
        self.file.write_all_at(&bytes, start).map_err(fail)?;
        self.file.write_all_at(&[1], HEADER + idx as u64).map_err(fail)?;
        Ok(bytes)
    }
}
