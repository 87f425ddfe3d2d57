//! PyTorch checkpoints (`torch.save` files) read and written in Rust, with no Python and no
//! code execution: libtorch's own C++ reader drops `OrderedDict`, so every ordinary
//! `state_dict()` file would fail through tch.
//!
//! Formats: the zip format of torch >= 1.6 (any root folder, pickle protocols 2 to 5) and the
//! legacy format of older releases (a sequence of pickles followed by raw storages).
pub mod mapping;
pub mod moco;
pub mod pickle;
pub mod state;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::model::StateDict;

pub use mapping::{EncoderWeights, LoadOptions, LoadReport};
pub use pickle::Value;
pub use state::{StateReader, StateWriter};

/// Errors of reading, writing and mapping checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The message already holds the cause (`path: problem`), so it is not also chained as a
    /// `source`: callers print one line.
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: Box<CheckpointError> },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
    #[error(
        "refused to load the global '{0}': checkpoints may only name tensors, storages and plain containers"
    )]
    ForbiddenGlobal(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save pickle)")]
    UnknownFormat,
    #[error("zip archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("{0}")]
    Mapping(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl CheckpointError {
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            Self::File { .. } => self,
            other => Self::File { path: path.to_path_buf(), problem: Box::new(other) },
        }
    }
}

/// How a file was serialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// torch >= 1.6 default.
    Zip,
    /// torch < 1.6, or `_use_new_zipfile_serialization=False`.
    Legacy,
}

/// A loaded checkpoint: the unpickled object with its tensors on the CPU.
#[derive(Debug)]
pub struct Checkpoint {
    pub root: Value,
    pub format: Format,
}

impl Checkpoint {
    /// Every tensor with its dotted path.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.root.flatten()
    }
}

const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";

/// Reads a `torch.save` file. Errors name the file.
pub fn load(path: impl AsRef<Path>) -> Result<Checkpoint, CheckpointError> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| CheckpointError::Io(e).in_file(path))?;
    // Mapped rather than read: stored tensors are copied once, from the page cache straight into
    // their tensors. SAFETY: the map is read-only and dropped before returning; a file truncated
    // by another process meanwhile is the one hazard, as for any mmap-based reader (torch.load's
    // mmap=True included).
    match unsafe { memmap2::Mmap::map(&file) } {
        Ok(map) => load_bytes(&map).map_err(|e| e.in_file(path)),
        Err(_) => {
            let bytes = std::fs::read(path).map_err(|e| CheckpointError::Io(e).in_file(path))?;
            load_bytes(&bytes).map_err(|e| e.in_file(path))
        }
    }
}

/// Reads a `torch.save` file already in memory.
pub fn load_bytes(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        Ok(Checkpoint { root: load_zip(bytes)?, format: Format::Zip })
    } else if bytes.starts_with(LEGACY_MAGIC) {
        Ok(Checkpoint { root: load_legacy(bytes)?, format: Format::Legacy })
    } else {
        Err(CheckpointError::UnknownFormat)
    }
}

fn element_size(kind: Kind) -> Result<usize, CheckpointError> {
    Ok(match kind {
        Kind::Double | Kind::Int64 => 8,
        Kind::Float | Kind::Int => 4,
        Kind::Half | Kind::BFloat16 | Kind::Int16 => 2,
        Kind::Uint8 | Kind::Int8 | Kind::Bool => 1,
        other => return Err(CheckpointError::Unsupported(format!("storage dtype {other:?}"))),
    })
}

/// `numel` elements of `kind` need this many bytes; refuses sizes beyond what the file holds.
fn storage_bytes(kind: Kind, numel: i64, available: usize) -> Result<usize, CheckpointError> {
    let n = usize::try_from(numel)
        .ok()
        .and_then(|n| n.checked_mul(element_size(kind).ok()?))
        .ok_or_else(|| CheckpointError::Corrupt(format!("storage of {numel} elements")))?;
    if n > available {
        return Err(CheckpointError::Corrupt(format!(
            "storage of {numel} {kind:?} elements needs {n} bytes, only {available} available"
        )));
    }
    Ok(n)
}

fn tensor_from_bytes(data: &[u8], kind: Kind, numel: i64) -> Result<Tensor, CheckpointError> {
    Ok(Tensor::f_from_data_size(data, &[numel], kind)?)
}

struct ZipStorages<'a> {
    bytes: &'a [u8],
    archive: zip::ZipArchive<std::io::Cursor<&'a [u8]>>,
    prefix: String,
    file_len: usize,
    cache: HashMap<String, Tensor>,
}

impl pickle::StorageSource for ZipStorages<'_> {
    fn storage(&mut self, kind: Kind, key: &str, numel: i64) -> Result<Tensor, CheckpointError> {
        if let Some(t) = self.cache.get(key) {
            if t.kind() != kind || (t.numel() as i64) < numel {
                return Err(CheckpointError::Corrupt(format!("storage {key} used with two types or sizes")));
            }
            return Ok(t.shallow_clone());
        }
        let name = format!("{}data/{key}", self.prefix);
        let mut entry = self
            .archive
            .by_name(&name)
            .map_err(|_| CheckpointError::Corrupt(format!("storage record '{name}' is missing")))?;
        let nbytes = storage_bytes(kind, numel, self.file_len)?;
        if (entry.size() as usize) < nbytes {
            return Err(CheckpointError::Corrupt(format!(
                "storage record '{name}' holds {} bytes, {numel} {kind:?} elements need {nbytes}",
                entry.size()
            )));
        }
        // torch.save stores records uncompressed: take them straight from the file's bytes
        // (one copy, into the tensor) instead of through the zip reader (two copies and a CRC).
        if entry.compression() == zip::CompressionMethod::Stored {
            let start = usize::try_from(entry.data_start()).unwrap_or(usize::MAX);
            let data = start
                .checked_add(nbytes)
                .and_then(|end| self.bytes.get(start..end))
                .ok_or_else(|| CheckpointError::Corrupt(format!("storage record '{name}' is truncated")))?;
            let t = tensor_from_bytes(data, kind, numel)?;
            self.cache.insert(key.to_string(), t.shallow_clone());
            return Ok(t);
        }
        let mut data = Vec::with_capacity(nbytes);
        entry
            .by_ref()
            .take(nbytes as u64)
            .read_to_end(&mut data)
            .map_err(|e| CheckpointError::Corrupt(format!("reading record '{name}': {e}")))?;
        if data.len() != nbytes {
            return Err(CheckpointError::Corrupt(format!("storage record '{name}' is truncated")));
        }
        let t = tensor_from_bytes(&data, kind, numel)?;
        self.cache.insert(key.to_string(), t.shallow_clone());
        Ok(t)
    }
}

fn load_zip(bytes: &[u8]) -> Result<Value, CheckpointError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))?;
    let pkl_name = archive
        .file_names()
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or_else(|| CheckpointError::Corrupt("no '<root>/data.pkl' record in the archive".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut pkl = Vec::new();
    {
        let entry = archive.by_name(&pkl_name)?;
        if entry.size() as usize > bytes.len() * 64 {
            return Err(CheckpointError::Corrupt("data.pkl claims an impossible size".into()));
        }
        entry
            .take(bytes.len() as u64 * 64)
            .read_to_end(&mut pkl)
            .map_err(|e| CheckpointError::Corrupt(format!("reading record '{pkl_name}': {e}")))?;
    }
    if let Ok(mut order) = archive.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        order.read_to_string(&mut s)?;
        if s.trim() != "little" {
            return Err(CheckpointError::Unsupported(format!("byte order '{}'", s.trim())));
        }
    }
    let mut storages = ZipStorages { bytes, archive, prefix, file_len: bytes.len(), cache: HashMap::new() };
    pickle::unpickle(&pkl, &mut storages)
}

/// Storages of a legacy file: allocated while the main pickle is read, filled afterwards from
/// the raw data that follows it.
struct LegacyStorages {
    file_len: usize,
    by_key: HashMap<String, Tensor>,
}

impl pickle::StorageSource for LegacyStorages {
    fn storage(&mut self, kind: Kind, key: &str, numel: i64) -> Result<Tensor, CheckpointError> {
        if let Some(t) = self.by_key.get(key) {
            return Ok(t.shallow_clone());
        }
        storage_bytes(kind, numel, self.file_len)?;
        let t = Tensor::f_zeros([numel], (kind, tch::Device::Cpu))?;
        self.by_key.insert(key.to_string(), t.shallow_clone());
        Ok(t)
    }
}

fn load_legacy(bytes: &[u8]) -> Result<Value, CheckpointError> {
    let mut pos = LEGACY_MAGIC.len();
    let mut none = NoStorages;
    let (version, next) = pickle::unpickle_at(bytes, pos, &mut none)?;
    if version.as_int() != Some(1001) {
        return Err(CheckpointError::Unsupported(format!("legacy protocol version {version:?}")));
    }
    let (sys_info, next) = pickle::unpickle_at(bytes, next, &mut none)?;
    if let Some(Value::Bool(false)) = sys_info.get("little_endian") {
        return Err(CheckpointError::Unsupported("big-endian legacy checkpoint".into()));
    }
    let mut storages = LegacyStorages { file_len: bytes.len(), by_key: HashMap::new() };
    let (root, next) = pickle::unpickle_at(bytes, next, &mut storages)?;
    let (keys, next) = pickle::unpickle_at(bytes, next, &mut none)?;
    pos = next;
    let Value::List(keys) = keys else {
        return Err(CheckpointError::Corrupt("legacy storage key list missing".into()));
    };
    for key in keys {
        let key =
            key.as_str().ok_or_else(|| CheckpointError::Corrupt("legacy storage key is not a str".into()))?;
        let t = storages
            .by_key
            .get(key)
            .ok_or_else(|| CheckpointError::Corrupt(format!("legacy storage {key} is not referenced")))?;
        let header = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| CheckpointError::Corrupt(format!("legacy storage {key} is truncated")))?;
        let numel = i64::from_le_bytes(header.try_into().unwrap());
        pos += 8;
        if numel != t.numel() as i64 {
            return Err(CheckpointError::Corrupt(format!(
                "legacy storage {key} has {numel} elements, the pickle says {}",
                t.numel()
            )));
        }
        let n = storage_bytes(t.kind(), numel, bytes.len() - pos)?;
        let data = tensor_from_bytes(&bytes[pos..pos + n], t.kind(), numel)?;
        t.shallow_clone().f_copy_(&data)?;
        pos += n;
    }
    Ok(root)
}

struct NoStorages;

impl pickle::StorageSource for NoStorages {
    fn storage(&mut self, _: Kind, key: &str, _: i64) -> Result<Tensor, CheckpointError> {
        Err(CheckpointError::Corrupt(format!("unexpected storage {key} in a legacy header")))
    }
}

/// Writes `root` as a zip-format `torch.save` file that `torch.load(path, weights_only=True)`
/// reads. The file appears atomically: written beside the target, then renamed over it.
pub fn save(path: impl AsRef<Path>, root: &Value) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    crate::atomic::write_atomically(path, |file| write_zip(file, root)).map_err(|e| e.in_file(path))
}

/// Writes `model`'s `state_dict()` as a plain PyTorch state dict: a `collections.OrderedDict`
/// of name -> tensor, in the module's `state_dict()` order, under its torchvision names (for an
/// [`crate::model::Encoder`]: `conv1.weight`, ..., every BatchNorm's `running_mean`,
/// `running_var` and int64 `num_batches_tracked`, `fc.weight`, `fc.bias`), tensors on the CPU.
/// `torch.load(path, weights_only=True)` reads it and the PyTorch module of the same
/// architecture takes it with `load_state_dict(sd, strict=True)`. The file appears
/// atomically, as with [`save`]; errors name the file.
pub fn save_state_dict(path: &Path, model: &dyn StateDict) -> Result<(), CheckpointError> {
    save(path, &state_dict_value(model))
}

/// `model`'s state as the `OrderedDict` that [`save_state_dict`] writes (tensors detached,
/// sharing storage with the module's), to embed in a larger checkpoint.
pub fn state_dict_value(model: &dyn StateDict) -> Value {
    Value::OrderedDict(
        model
            .named_tensors("")
            .into_iter()
            .map(|t| (Value::Str(t.name), Value::Tensor(t.tensor.detach())))
            .collect(),
    )
}

fn write_zip(file: &mut File, root: &Value) -> Result<(), CheckpointError> {
    let mut storages: Vec<(String, Tensor)> = Vec::new();
    let mut add = |t: &Tensor| -> Result<String, CheckpointError> {
        let key = storages.len().to_string();
        storages.push((key.clone(), t.detach().to_device(tch::Device::Cpu).contiguous()));
        Ok(key)
    };
    let pkl = pickle::Pickler::new(&mut add).finish(root)?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    // Stored (uncompressed) records with data aligned to 64 bytes, as torch writes them.
    let mut record = |name: &str, data: &[u8]| -> Result<(), CheckpointError> {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64)
            .large_file(data.len() as u64 >= u32::MAX as u64);
        zip.start_file(format!("archive/{name}"), opts)?;
        zip.write_all(data)?;
        Ok(())
    };
    record("data.pkl", &pkl)?;
    record(".format_version", b"1")?;
    record(".storage_alignment", b"64")?;
    record("byteorder", b"little")?;
    for (key, t) in &storages {
        record(&format!("data/{key}"), &tensor_bytes(t)?)?;
    }
    record("version", b"3\n")?;
    zip.finish()?.flush()?;
    Ok(())
}

/// Raw little-endian bytes of a contiguous CPU tensor.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>, CheckpointError> {
    let numel = t.numel();
    let mut out = vec![0u8; numel * element_size(t.kind())?];
    t.f_copy_data_u8(&mut out, numel)?;
    Ok(out)
}

/// The encoder weights of a `torch.save` file or a safetensors file.
pub fn load_weights(path: &Path) -> Result<EncoderWeights, CheckpointError> {
    let ckpt = if path.extension().is_some_and(|e| e == "safetensors") {
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| CheckpointError::Mapping(format!("{}: {e}", path.display())))?;
        let dict = tensors.into_iter().map(|(n, t)| (Value::Str(n), Value::Tensor(t))).collect();
        Checkpoint { root: Value::OrderedDict(dict), format: Format::Zip }
    } else {
        load(path)?
    };
    EncoderWeights::from_checkpoint(&ckpt).map_err(|e| e.in_file(path))
}
