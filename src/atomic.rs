//! Files that appear whole or not at all: checkpoints, features, anything a killed run must
//! not leave half-written.
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Runs `write` on a temporary file in the target's folder, syncs it and renames it over
/// `path`; on failure the temporary file is removed and `path` is untouched.
pub fn write_atomically<E: From<std::io::Error>>(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        write(&mut file)?;
        file.flush()?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomically`] of a whole buffer (reports, CSVs, JSON).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomically(path, |f| f.write_all(bytes))
}
