//! A memory-mapped cache of decoded, resized images, so a dataset is decoded once rather than
//! every epoch (compressed DICOM costs 40 to 260 ms per file to decode).
//!
//! One file: a header, one state byte per sample, then one `size x size` u8 slot per sample
//! (display values rounded, as the original pipeline's 8-bit PNGs). Slots are filled by the
//! loader threads with positional writes and read through a shared read-only mapping. The
//! header holds a fingerprint of the file list, sizes and modification times and the image
//! size: a cache made for anything else is rebuilt, never misread.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dataset::Dataset;

/// Bumped whenever decoding changes what a file becomes (02: 16-bit PNG/TIFF windowed) or the
/// header does (03: the fingerprint is FNV-1a, no longer std's `DefaultHasher`), so that an
/// older cache is rebuilt rather than trained on.
const MAGIC: &[u8; 8] = b"CHESSC03";
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

/// FNV-1a, 64 bits (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`): fixed by its
/// published definition, so a cache's fingerprint is the same under every Rust release (std's
/// `DefaultHasher` promises no such thing, and a changed hash would silently rebuild a
/// terabyte cache). It guards against stale files, not adversaries: no cryptographic hash is
/// needed, and a few lines need no dependency.
#[derive(Debug, Clone, Copy)]
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }
}

/// What the fingerprint knows of a readable file: its length and, where the file system keeps
/// it, its modification time from the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::Duration>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    let modified = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    Some(Stamp { len: m.len(), modified })
}

fn fingerprint(dataset: &Dataset, size: i64) -> u64 {
    fingerprint_of(size, dataset.samples.iter().map(|s| (s.path.as_path(), stamp(&s.path))))
}

/// [`Fnv1a`] of the image size, then per file its path (length-prefixed bytes) and stamp
/// (tagged options; seconds and nanoseconds), integers as u64 little-endian.
fn fingerprint_of<'a>(size: i64, files: impl IntoIterator<Item = (&'a Path, Option<Stamp>)>) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let mut h = Fnv1a::new();
    h.write_u64(size as u64);
    for (path, stamp) in files {
        let path = path.as_os_str().as_bytes();
        h.write_u64(path.len() as u64);
        h.write(path);
        let Some(stamp) = stamp else {
            h.write(&[0]);
            continue;
        };
        h.write(&[1]);
        h.write_u64(stamp.len);
        match stamp.modified {
            Some(t) => {
                h.write(&[1]);
                h.write_u64(t.as_secs());
                h.write_u64(u64::from(t.subsec_nanos()));
            }
            None => h.write(&[0]),
        }
    }
    h.0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_the_published_function() {
        let hash = |bytes: &[u8]| {
            let mut h = Fnv1a::new();
            h.write(bytes);
            h.0
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Pinned: a change of this value makes every existing cache rebuild, so it must come with
    /// a new `MAGIC`.
    #[test]
    fn the_fingerprint_is_stable() {
        let when = std::time::Duration::new(1_700_000_000, 123_456_789);
        let files = [
            (Path::new("/data/a.png"), Some(Stamp { len: 12, modified: Some(when) })),
            (Path::new("b.dcm"), Some(Stamp { len: 0, modified: None })),
            (Path::new("/no/such/file.jpg"), None),
        ];
        // Computed apart from this code (a few lines of Python over the layout above).
        assert_eq!(fingerprint_of(512, files), 0xcef9_6b44_7827_e272);
        assert_ne!(fingerprint_of(256, files), fingerprint_of(512, files));

        // What a file contributes: its length and modification time.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.png");
        std::fs::write(&file, b"twelve bytes").unwrap();
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + when).unwrap();
        drop(f);
        assert_eq!(stamp(&file), Some(Stamp { len: 12, modified: Some(when) }));
        let dataset = Dataset { samples: vec![crate::data::Sample::new(file.clone())] };
        assert_eq!(fingerprint(&dataset, 64), fingerprint_of(64, [(file.as_path(), stamp(&file))]));
    }
}
