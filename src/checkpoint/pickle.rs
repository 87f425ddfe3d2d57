//! The subset of Python's pickle that `torch.save` produces, read and written without executing
//! anything: globals are resolved against a whitelist, tensors are rebuilt from their storages.
use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::CheckpointError;

/// A value from a checkpoint. Dicts keep their insertion order, as Python's do.
#[derive(Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// `collections.OrderedDict`, kept distinct so that writing round-trips the type.
    OrderedDict(Vec<(Value, Value)>),
    Tensor(Tensor),
    /// A whitelisted class or function that has not been called (storage types, `torch.Size`).
    Global(Global),
}

impl Clone for Value {
    /// Tensors are shared, not copied: Python objects referenced twice in a pickle are one object.
    fn clone(&self) -> Self {
        match self {
            Self::None => Self::None,
            Self::Bool(b) => Self::Bool(*b),
            Self::Int(i) => Self::Int(*i),
            Self::Float(f) => Self::Float(*f),
            Self::Str(s) => Self::Str(s.clone()),
            Self::Bytes(b) => Self::Bytes(b.clone()),
            Self::List(v) => Self::List(v.clone()),
            Self::Tuple(v) => Self::Tuple(v.clone()),
            Self::Dict(v) => Self::Dict(v.clone()),
            Self::OrderedDict(v) => Self::OrderedDict(v.clone()),
            Self::Tensor(t) => Self::Tensor(t.shallow_clone()),
            Self::Global(g) => Self::Global(*g),
        }
    }
}

impl Value {
    /// A Python `str`.
    pub fn str(v: impl Into<String>) -> Self {
        Self::Str(v.into())
    }

    /// Dict entries (plain or ordered).
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Self::Dict(d) | Self::OrderedDict(d) => Some(d),
            _ => None,
        }
    }

    /// The value under string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| v)
    }

    pub fn as_str(&self) -> Option<&str> {
        if let Self::Str(s) = self { Some(s) } else { None }
    }

    pub fn as_int(&self) -> Option<i64> {
        if let Self::Int(i) = self { Some(*i) } else { None }
    }

    pub fn as_tensor(&self) -> Option<&Tensor> {
        if let Self::Tensor(t) = self { Some(t) } else { None }
    }

    /// Every tensor under this value with its dotted path (`state_dict.module.conv1.weight`,
    /// list items by index), in order.
    pub fn flatten(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        flatten_into(self, String::new(), &mut out);
        out
    }

    /// A short type name for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Bool(_) => "bool",
            Self::Int(_) => "int",
            Self::Float(_) => "float",
            Self::Str(_) => "str",
            Self::Bytes(_) => "bytes",
            Self::List(_) => "list",
            Self::Tuple(_) => "tuple",
            Self::Dict(_) => "dict",
            Self::OrderedDict(_) => "OrderedDict",
            Self::Tensor(_) => "Tensor",
            Self::Global(_) => "global",
        }
    }
}

fn key_string(k: &Value) -> String {
    match k {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Float(f) => f.to_string(),
        other => other.type_name().to_string(),
    }
}

fn flatten_into(v: &Value, prefix: String, out: &mut Vec<(String, Tensor)>) {
    let join = |k: String| if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
    match v {
        Value::Tensor(t) => out.push((prefix, t.shallow_clone())),
        Value::Dict(d) | Value::OrderedDict(d) => {
            for (k, v) in d {
                flatten_into(v, join(key_string(k)), out);
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten_into(v, join(i.to_string()), out);
            }
        }
        _ => {}
    }
}

/// The globals a checkpoint may name. Anything else is refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    /// `collections.Counter` (`MultiStepLR`'s milestones), read as a plain dict.
    Counter,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    TorchSize,
    CodecsEncode,
    Storage(Kind),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Result<Self, CheckpointError> {
        let storage = |k| Ok(Self::Storage(k));
        match (module, name) {
            ("collections", "OrderedDict") => Ok(Self::OrderedDict),
            ("collections", "Counter") => Ok(Self::Counter),
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Self::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Ok(Self::RebuildParameter),
            ("torch._utils", "_rebuild_parameter_with_state") => Ok(Self::RebuildParameterWithState),
            ("torch", "Size") => Ok(Self::TorchSize),
            ("_codecs", "encode") => Ok(Self::CodecsEncode),
            ("torch", "FloatStorage") => storage(Kind::Float),
            ("torch", "DoubleStorage") => storage(Kind::Double),
            ("torch", "HalfStorage") => storage(Kind::Half),
            ("torch", "BFloat16Storage") => storage(Kind::BFloat16),
            ("torch", "LongStorage") => storage(Kind::Int64),
            ("torch", "IntStorage") => storage(Kind::Int),
            ("torch", "ShortStorage") => storage(Kind::Int16),
            ("torch", "CharStorage") => storage(Kind::Int8),
            ("torch", "ByteStorage") => storage(Kind::Uint8),
            ("torch", "BoolStorage") => storage(Kind::Bool),
            _ => Err(CheckpointError::ForbiddenGlobal(format!("{module}.{name}"))),
        }
    }

    pub(crate) fn storage_name(kind: Kind) -> Option<&'static str> {
        Some(match kind {
            Kind::Float => "FloatStorage",
            Kind::Double => "DoubleStorage",
            Kind::Half => "HalfStorage",
            Kind::BFloat16 => "BFloat16Storage",
            Kind::Int64 => "LongStorage",
            Kind::Int => "IntStorage",
            Kind::Int16 => "ShortStorage",
            Kind::Int8 => "CharStorage",
            Kind::Uint8 => "ByteStorage",
            Kind::Bool => "BoolStorage",
            _ => return None,
        })
    }
}

/// Supplies storages named by persistent ids: `(kind, key, numel)` -> 1-d tensor of `numel`.
pub trait StorageSource {
    fn storage(&mut self, kind: Kind, key: &str, numel: i64) -> Result<Tensor, CheckpointError>;
}

/// Items on the unpickler stack: values, or the MARK separator.
enum Item {
    Mark,
    Value(Value),
}

/// Longest container or string we accept from a length field before any bytes back it.
const MAX_LEN: usize = 1 << 31;

/// Unpickles `data`, resolving storages through `storages`.
pub fn unpickle(data: &[u8], storages: &mut dyn StorageSource) -> Result<Value, CheckpointError> {
    unpickle_at(data, 0, storages).map(|(v, _)| v)
}

/// Unpickles the pickle starting at `pos`; returns it and the position after its STOP.
pub fn unpickle_at(
    data: &[u8],
    pos: usize,
    storages: &mut dyn StorageSource,
) -> Result<(Value, usize), CheckpointError> {
    let mut u = Unpickler { data, pos, stack: Vec::new(), memo: HashMap::new(), storages };
    let v = u.run()?;
    Ok((v, u.pos))
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    memo: HashMap<u32, Value>,
    storages: &'a mut dyn StorageSource,
}

fn corrupt(msg: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt(msg.into())
}

impl Unpickler<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CheckpointError> {
        let end =
            self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| {
                corrupt(format!("pickle truncated: needs {n} bytes at offset {}", self.pos))
            })?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, CheckpointError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, CheckpointError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, CheckpointError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, CheckpointError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn len(&mut self, n: u64) -> Result<usize, CheckpointError> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= MAX_LEN)
            .ok_or_else(|| corrupt(format!("length {n} too large")))
    }

    fn line(&mut self) -> Result<String, CheckpointError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| corrupt("pickle truncated in a text field"))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn string(&mut self, n: usize) -> Result<String, CheckpointError> {
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| corrupt("invalid UTF-8 in a pickled string"))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Item::Value(v));
    }

    fn pop(&mut self) -> Result<Value, CheckpointError> {
        match self.stack.pop() {
            Some(Item::Value(v)) => Ok(v),
            Some(Item::Mark) => Err(corrupt("unexpected MARK on the pickle stack")),
            None => Err(corrupt("pickle stack underflow")),
        }
    }

    fn top(&mut self) -> Result<&mut Value, CheckpointError> {
        match self.stack.last_mut() {
            Some(Item::Value(v)) => Ok(v),
            _ => Err(corrupt("pickle stack underflow")),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, CheckpointError> {
        let start = self
            .stack
            .iter()
            .rposition(|i| matches!(i, Item::Mark))
            .ok_or_else(|| corrupt("MARK missing on the pickle stack"))?;
        let items = self.stack.split_off(start + 1);
        self.stack.pop();
        Ok(items.into_iter().map(|i| if let Item::Value(v) = i { v } else { Value::None }).collect())
    }

    fn memo_get(&self, idx: u32) -> Result<Value, CheckpointError> {
        self.memo.get(&idx).cloned().ok_or_else(|| corrupt(format!("memo entry {idx} missing")))
    }

    fn memo_put(&mut self, idx: u32) -> Result<(), CheckpointError> {
        let v = match self.stack.last() {
            Some(Item::Value(v)) => v.clone(),
            _ => return Err(corrupt("memoising an empty stack")),
        };
        self.memo.insert(idx, v);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), CheckpointError> {
        if !items.len().is_multiple_of(2) {
            return Err(corrupt("odd number of items for SETITEMS"));
        }
        let target = self.top()?;
        let entries = match target {
            Value::Dict(d) | Value::OrderedDict(d) => d,
            other => return Err(corrupt(format!("SETITEM on a {}", other.type_name()))),
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let Some(slot) = entries.iter_mut().find(|(ek, _)| same_key(ek, &k)) {
                slot.1 = v;
            } else {
                entries.push((k, v));
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Value, CheckpointError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(corrupt(format!("unsupported pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: length only; frames are read as part of the stream
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Item::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v.into()));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let v = long_from_bytes(self.take(n)?)?;
                    self.push(Value::Int(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.push(Value::Float(v));
                }
                b'I' => {
                    // Protocol 0 INT; "01"/"00" are True/False.
                    let line = self.line()?;
                    let v = match line.as_str() {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => Value::Int(s.parse().map_err(|_| corrupt(format!("bad INT {s:?}")))?),
                    };
                    self.push(v);
                }
                b'X' => {
                    let n = self.u32()?;
                    let n = self.len(n.into())?;
                    let s = self.string(n)?;
                    self.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s));
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.len(n)?;
                    let s = self.string(n)?;
                    self.push(Value::Str(s));
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b'T' | b'B' => {
                    let n = self.u32()?;
                    let n = self.len(n.into())?;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                0x8e | 0x96 => {
                    // BINBYTES8, BYTEARRAY8 (protocol 5)
                    let n = self.u64()?;
                    let n = self.len(n)?;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b']' => self.push(Value::List(Vec::new())),
                b')' => self.push(Value::Tuple(Vec::new())),
                b'}' => self.push(Value::Dict(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Vec::new()));
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        other => return Err(corrupt(format!("APPEND to a {}", other.type_name()))),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        other => return Err(corrupt(format!("APPENDS to a {}", other.type_name()))),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| corrupt("memo overflow"))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    let v = self.memo_get(i.into())?;
                    self.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(Global::resolve(&module, &name)?));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(Global::resolve(&m, &n)?)),
                        _ => return Err(corrupt("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.call(func, args)?;
                    self.push(v);
                }
                0x81 => {
                    // NEWOBJ cls(*args): only OrderedDict() is meaningful here.
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.push(v);
                }
                b'b' => {
                    // BUILD: state for the object below. Tensors may carry an empty state.
                    let state = self.pop()?;
                    match (self.top()?, state) {
                        (_, Value::None) => {}
                        (Value::Tensor(_), Value::Dict(d) | Value::OrderedDict(d)) if d.is_empty() => {}
                        // An OrderedDict's attributes (`state_dict()._metadata`, BN versions
                        // only), not items: dropped.
                        (Value::Dict(_) | Value::OrderedDict(_), Value::Dict(_)) => {}
                        (target, state) => {
                            return Err(corrupt(format!(
                                "BUILD of a {} with a {} state",
                                target.type_name(),
                                state.type_name()
                            )));
                        }
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v);
                }
                other => {
                    return Err(corrupt(format!(
                        "unsupported pickle opcode 0x{other:02x} at offset {}",
                        self.pos - 1
                    )));
                }
            }
        }
    }

    /// `('storage', StorageType, key, location, numel)` -> the storage as a 1-d tensor.
    fn persistent_load(&mut self, pid: Value) -> Result<Value, CheckpointError> {
        let Value::Tuple(items) = pid else {
            return Err(corrupt(format!("persistent id is a {}, not a tuple", pid.type_name())));
        };
        match items.as_slice() {
            [
                Value::Str(tag),
                Value::Global(Global::Storage(kind)),
                key,
                _location,
                Value::Int(numel),
                ..,
            ] if tag == "storage" => {
                let key = match key {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => return Err(corrupt("storage key is neither str nor int")),
                };
                if *numel < 0 {
                    return Err(corrupt(format!("storage {key} has negative size {numel}")));
                }
                Ok(Value::Tensor(self.storages.storage(*kind, &key, *numel)?))
            }
            _ => Err(corrupt("persistent id is not a torch storage")),
        }
    }

    fn call(&mut self, func: Value, args: Value) -> Result<Value, CheckpointError> {
        let Value::Global(g) = func else {
            return Err(corrupt(format!("REDUCE on a {}, not a global", func.type_name())));
        };
        let Value::Tuple(args) = args else {
            return Err(corrupt(format!("REDUCE arguments are a {}, not a tuple", args.type_name())));
        };
        match (g, args.as_slice()) {
            (Global::OrderedDict, []) => Ok(Value::OrderedDict(Vec::new())),
            (Global::Counter, []) => Ok(Value::Dict(Vec::new())),
            (Global::Counter, [Value::Dict(d)]) => Ok(Value::Dict(d.clone())),
            (Global::OrderedDict, [Value::List(pairs)]) => {
                let mut entries = Vec::new();
                for p in pairs {
                    match p {
                        Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => {
                            entries.push((kv[0].clone(), kv[1].clone()))
                        }
                        _ => return Err(corrupt("OrderedDict item is not a pair")),
                    }
                }
                Ok(Value::OrderedDict(entries))
            }
            (Global::TorchSize, [Value::Tuple(dims)]) => Ok(Value::Tuple(dims.clone())),
            (Global::CodecsEncode, [Value::Str(s), Value::Str(enc)])
                if enc == "latin1" || enc == "latin-1" =>
            {
                Ok(Value::Bytes(s.chars().map(|c| c as u32 as u8).collect()))
            }
            (Global::RebuildTensorV2, [storage, offset, size, stride, requires_grad, ..]) => {
                let _ = requires_grad;
                rebuild_tensor(storage, offset, size, stride).map(Value::Tensor)
            }
            (Global::RebuildParameter | Global::RebuildParameterWithState, [data, ..]) => match data {
                Value::Tensor(t) => Ok(Value::Tensor(t.shallow_clone())),
                other => Err(corrupt(format!("parameter data is a {}", other.type_name()))),
            },
            (g, args) => Err(corrupt(format!("cannot call {g:?} with {} argument(s)", args.len()))),
        }
    }
}

fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        _ => false,
    }
}

fn long_from_bytes(bytes: &[u8]) -> Result<i64, CheckpointError> {
    if bytes.is_empty() {
        return Ok(0);
    }
    if bytes.len() > 8 {
        return Err(corrupt(format!("integer of {} bytes does not fit 64 bits", bytes.len())));
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(i64::from_le_bytes(buf))
}

fn int_list(v: &Value, what: &str) -> Result<Vec<i64>, CheckpointError> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| i.as_int().ok_or_else(|| corrupt(format!("tensor {what} holds a {}", i.type_name()))))
            .collect(),
        other => Err(corrupt(format!("tensor {what} is a {}", other.type_name()))),
    }
}

/// A strided view into a storage, after checking that it stays inside the storage.
fn rebuild_tensor(
    storage: &Value,
    offset: &Value,
    size: &Value,
    stride: &Value,
) -> Result<Tensor, CheckpointError> {
    let Value::Tensor(storage) = storage else {
        return Err(corrupt(format!("tensor storage is a {}", storage.type_name())));
    };
    let offset = offset.as_int().ok_or_else(|| corrupt("tensor offset is not an int"))?;
    let size = int_list(size, "size")?;
    let stride = int_list(stride, "stride")?;
    if size.len() != stride.len() {
        return Err(corrupt(format!("tensor has {} sizes but {} strides", size.len(), stride.len())));
    }
    if offset < 0 || size.iter().any(|&s| s < 0) || stride.iter().any(|&s| s < 0) {
        return Err(corrupt("negative tensor offset, size or stride"));
    }
    let numel = storage.numel() as i64;
    let empty = size.contains(&0);
    if !empty {
        let mut last = offset;
        for (&n, &s) in size.iter().zip(&stride) {
            let reach = (n - 1).checked_mul(s).ok_or_else(|| corrupt("tensor extent overflows"))?;
            last = last.checked_add(reach).ok_or_else(|| corrupt("tensor extent overflows"))?;
        }
        if last >= numel {
            return Err(corrupt(format!(
                "tensor of size {size:?}, stride {stride:?}, offset {offset} reaches element {last} of a storage of {numel}"
            )));
        }
    } else if offset > numel {
        return Err(corrupt(format!("tensor offset {offset} beyond a storage of {numel}")));
    }
    Ok(storage.f_as_strided(&size, &stride, Some(offset))?)
}

/// Writes values as protocol-2 pickle, the way `torch.save` does; tensors are handed to
/// `add_storage`, which returns the key their data is stored under.
pub struct Pickler<'a> {
    out: Vec<u8>,
    add_storage: &'a mut dyn FnMut(&Tensor) -> Result<String, CheckpointError>,
}

impl<'a> Pickler<'a> {
    pub fn new(add_storage: &'a mut dyn FnMut(&Tensor) -> Result<String, CheckpointError>) -> Self {
        Self { out: Vec::new(), add_storage }
    }

    pub fn finish(mut self, root: &Value) -> Result<Vec<u8>, CheckpointError> {
        self.out.extend_from_slice(&[0x80, 2]);
        self.value(root)?;
        self.out.push(b'.');
        Ok(self.out)
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
    }

    fn str(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, i: i64) {
        if (0..256).contains(&i) {
            self.out.extend_from_slice(&[b'K', i as u8]);
        } else if (0..65536).contains(&i) {
            self.out.push(b'M');
            self.out.extend_from_slice(&(i as u16).to_le_bytes());
        } else if let Ok(v) = i32::try_from(i) {
            self.out.push(b'J');
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            self.out.extend_from_slice(&[0x8a, 8]);
            self.out.extend_from_slice(&i.to_le_bytes());
        }
    }

    fn tuple(&mut self, items: &[Value]) -> Result<(), CheckpointError> {
        match items.len() {
            0 => self.out.push(b')'),
            1..=3 => {
                for v in items {
                    self.value(v)?;
                }
                self.out.push(0x84 + items.len() as u8);
            }
            _ => {
                self.out.push(b'(');
                for v in items {
                    self.value(v)?;
                }
                self.out.push(b't');
            }
        }
        Ok(())
    }

    fn dict_items(&mut self, entries: &[(Value, Value)]) -> Result<(), CheckpointError> {
        if entries.is_empty() {
            return Ok(());
        }
        for chunk in entries.chunks(1000) {
            self.out.push(b'(');
            for (k, v) in chunk {
                self.value(k)?;
                self.value(v)?;
            }
            self.out.push(b'u');
        }
        Ok(())
    }

    fn tensor(&mut self, t: &Tensor) -> Result<(), CheckpointError> {
        let kind = t.kind();
        let storage = Global::storage_name(kind)
            .ok_or_else(|| CheckpointError::Unsupported(format!("tensors of dtype {kind:?}")))?;
        let key = (self.add_storage)(t)?;
        let size: Vec<Value> = t.size().into_iter().map(Value::Int).collect();
        // Stored contiguous: row-major strides.
        let mut stride = vec![0i64; size.len()];
        let mut acc = 1;
        for (i, &n) in t.size().iter().enumerate().rev() {
            stride[i] = acc;
            acc *= n.max(1);
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(b'(');
        // persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel)
        self.out.push(b'(');
        self.str("storage");
        self.global("torch", storage);
        self.str(&key);
        self.str("cpu");
        self.int(t.numel() as i64);
        self.out.push(b't');
        self.out.push(b'Q');
        self.int(0);
        self.tuple(&size)?;
        self.tuple(&stride.into_iter().map(Value::Int).collect::<Vec<_>>())?;
        self.out.push(0x89);
        self.global("collections", "OrderedDict");
        self.out.extend_from_slice(b")R");
        self.out.push(b't');
        self.out.push(b'R');
        Ok(())
    }

    fn value(&mut self, v: &Value) -> Result<(), CheckpointError> {
        match v {
            Value::None => self.out.push(b'N'),
            Value::Bool(b) => self.out.push(if *b { 0x88 } else { 0x89 }),
            Value::Int(i) => self.int(*i),
            Value::Float(f) => {
                self.out.push(b'G');
                self.out.extend_from_slice(&f.to_be_bytes());
            }
            Value::Str(s) => self.str(s),
            Value::Bytes(b) => {
                // Protocol 2 has no bytes opcode: Python writes _codecs.encode(latin1 str).
                self.global("_codecs", "encode");
                let s: String = b.iter().map(|&c| c as char).collect();
                self.str(&s);
                self.str("latin1");
                self.out.extend_from_slice(&[0x86, b'R']);
            }
            Value::List(items) => {
                self.out.push(b']');
                if !items.is_empty() {
                    self.out.push(b'(');
                    for i in items {
                        self.value(i)?;
                    }
                    self.out.push(b'e');
                }
            }
            Value::Tuple(items) => self.tuple(items)?,
            Value::Dict(entries) => {
                self.out.push(b'}');
                self.dict_items(entries)?;
            }
            Value::OrderedDict(entries) => {
                self.global("collections", "OrderedDict");
                self.out.extend_from_slice(b")R");
                self.dict_items(entries)?;
            }
            Value::Tensor(t) => self.tensor(t)?,
            Value::Global(g) => {
                return Err(CheckpointError::Unsupported(format!("writing the bare global {g:?}")));
            }
        }
        Ok(())
    }
}
