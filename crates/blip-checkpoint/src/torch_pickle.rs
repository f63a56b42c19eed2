//! Reading torch zip checkpoints (`torch.save` since torch 1.6: `.pth`, `pytorch_model.bin`).
//!
//! The archive holds `<prefix>/data.pkl` (a pickle of the state dict whose tensors point at storages
//! through persistent ids) and one `<prefix>/data/<key>` entry per storage, stored uncompressed, so
//! tensors are read straight from the memory map. The pickle is interpreted by a small stack machine
//! that knows the handful of globals torch uses (`_rebuild_tensor_v2`, `_rebuild_parameter`,
//! `OrderedDict`, the `*Storage` types) and keeps everything else as opaque objects; nothing is
//! executed. candle-core has a similar reader, but pulls a whole tensor library for it.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::{Buffer, Checkpoint, CheckpointError, DType, Result, TensorEntry, map_file};

// Payloads that are never inspected are kept for Debug output in error messages.
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage {
        dtype: Option<DType>,
        key: String,
    },
    Tensor {
        storage: Box<Value>,
        offset: usize,
        shape: Vec<usize>,
        strides: Vec<usize>,
    },
    Object(String),
    Mark,
}

fn storage_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "DoubleStorage" => DType::F64,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        _ => return None,
    })
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        // `n` is a length read from the file (up to u64::MAX): the sum must not wrap.
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or("pickle ends early (truncated file?)")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "bad length")?))
    }
    /// A newline-terminated argument (GLOBAL's module and name). A missing newline is an error, not
    /// the end of the data: stepping past it would leave `pos` beyond the buffer.
    fn line(&mut self) -> std::result::Result<String, String> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("pickle ends inside a GLOBAL name (truncated file?)")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn pop(&mut self) -> std::result::Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }
    fn pop_mark(&mut self) -> std::result::Result<Vec<Value>, String> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("pickle MARK not found")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> std::result::Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }
    fn text(&mut self, n: usize) -> std::result::Result<Value, String> {
        Ok(Value::Str(
            String::from_utf8_lossy(self.take(n)?).into_owned(),
        ))
    }

    fn run(mut self) -> std::result::Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.u64()?;
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'(' => self.stack.push(Value::Mark),
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v)
                }
                0x8c | b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v)
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v)
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v)
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(v))
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(v))
                }
                0x8e => {
                    let n = self.u64()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(v))
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.stack.push(Value::Int(v))
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.stack
                        .push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err("integer wider than 64 bits in pickle".into());
                    }
                    let mut v: i64 = 0;
                    for (i, byte) in b.iter().enumerate() {
                        v |= (*byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.stack.push(Value::Float(f64::from_be_bytes(
                        b.try_into().map_err(|_| "bad float")?,
                    )))
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = items
                        .chunks(2)
                        .filter(|c| c.len() == 2)
                        .map(|c| (c[0].clone(), c[1].clone()))
                        .collect();
                    self.stack.push(Value::Dict(pairs))
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = reduce(func, args)?;
                    self.stack.push(v)
                }
                0x81 => {
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    let name = match cls {
                        Value::Global(m, n) => format!("{m}.{n}"),
                        _ => "object".into(),
                    };
                    self.stack.push(Value::Object(name))
                }
                b'b' => {
                    // BUILD sets an object's state (e.g. an OrderedDict's _metadata): not needed.
                    self.pop()?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    if let Value::Dict(d) = self.top()? {
                        d.push((k, v));
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if let Value::Dict(d) = self.top()? {
                        for c in items.chunks(2) {
                            if c.len() == 2 {
                                d.push((c[0].clone(), c[1].clone()));
                            }
                        }
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Value::List(l) = self.top()? {
                        l.push(v);
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.extend(items);
                    }
                }
                0x8f => self.stack.push(Value::List(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.extend(items);
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' | b'j' => {
                    let i = if op == b'h' {
                        self.u8()? as u32
                    } else {
                        self.u32()?
                    };
                    let v = self
                        .memo
                        .get(&i)
                        .cloned()
                        .ok_or_else(|| format!("pickle memo {i} missing"))?;
                    self.stack.push(v)
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(persistent_load(pid)?)
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v)
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'.' => return self.pop(),
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {}",
                        self.pos - 1
                    ));
                }
            }
        }
    }
}

fn as_usizes(v: &Value) -> std::result::Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(x) if *x >= 0 => Ok(*x as usize),
                _ => Err("tensor size/stride is not a non-negative integer".to_string()),
            })
            .collect(),
        _ => Err("tensor size/stride is not a tuple".into()),
    }
}

fn reduce(func: Value, args: Value) -> std::result::Result<Value, String> {
    let Value::Global(module, name) = &func else {
        return Ok(Value::Object("reduced".into()));
    };
    let args = match args {
        Value::Tuple(a) => a,
        _ => Vec::new(),
    };
    match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            if args.len() < 4 {
                return Err("_rebuild_tensor with too few arguments".into());
            }
            let offset = match args[1] {
                Value::Int(o) if o >= 0 => o as usize,
                _ => return Err("tensor storage offset is not an integer".into()),
            };
            Ok(Value::Tensor {
                storage: Box::new(args[0].clone()),
                offset,
                shape: as_usizes(&args[2])?,
                strides: as_usizes(&args[3])?,
            })
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => args
            .into_iter()
            .next()
            .ok_or_else(|| "_rebuild_parameter without data".to_string()),
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        _ => Ok(Value::Object(format!("{module}.{name}"))),
    }
}

fn persistent_load(pid: Value) -> std::result::Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err("persistent id is not a tuple".into());
    };
    match items.as_slice() {
        [Value::Str(kind), storage_type, Value::Str(key), ..] if kind == "storage" => {
            let dtype = match storage_type {
                Value::Global(_, name) => storage_dtype(name),
                _ => None,
            };
            Ok(Value::Storage {
                dtype,
                key: key.clone(),
            })
        }
        _ => Err("unknown persistent id (not a torch storage)".into()),
    }
}

fn key_string(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// Reads a torch zip checkpoint. With `nested = Some("model")` the state dict is taken from that
/// top-level key (salesforce/BLIP layout); otherwise the top-level dict is the state dict.
pub(crate) fn add_file(ck: &mut Checkpoint, path: &Path, nested: Option<&str>) -> Result<()> {
    let bad = |message: String| CheckpointError::BadTorchFile {
        path: path.to_path_buf(),
        message,
    };
    let map = map_file(path)?;
    if map.len() >= 2 && map[0] == 0x80 {
        return Err(bad("legacy (pre-1.6, non-zip) torch serialization is not supported; re-save it with torch.save in torch >= 1.6".into()));
    }
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&map[..])).map_err(|e| {
        bad(format!(
            "not a zip archive ({e}); truncated or not a torch.save file?"
        ))
    })?;
    let pkl_name = (0..archive.len())
        .filter_map(|i| {
            archive
                .name_for_index(i)
                .and_then(|n| n.ok())
                .map(|n| n.to_string())
        })
        .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
        .ok_or_else(|| bad("no data.pkl in the archive".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut pkl = Vec::new();
    archive
        .by_name(&pkl_name)
        .and_then(|mut f| f.read_to_end(&mut pkl).map_err(Into::into))
        .map_err(|e| bad(format!("reading {pkl_name}: {e}")))?;
    let root = Machine {
        data: &pkl,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
    }
    .run()
    .map_err(|e| bad(format!("{pkl_name}: {e}")))?;
    let Value::Dict(top) = root else {
        return Err(bad("the pickled object is not a dict".into()));
    };
    let state = match nested {
        Some(key) => {
            let found = top
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v.clone());
            match found {
                Some(Value::Dict(d)) => d,
                Some(_) => return Err(bad(format!("\"{key}\" is not a dict of tensors"))),
                None => {
                    let keys: Vec<String> = top.iter().map(|(k, _)| key_string(k)).collect();
                    return Err(CheckpointError::NoModelKey {
                        path: path.to_path_buf(),
                        keys: keys.join(", "),
                    });
                }
            }
        }
        None => top,
    };

    // One buffer per storage key: a slice of the mapped archive (stored entries) or a decompressed copy.
    let file = ck.files.len();
    let map_buffer = ck.buffers.len();
    let mut storage_buffers: HashMap<String, (usize, usize, usize)> = HashMap::new(); // key -> (buffer, offset, len)
    let mut owned: Vec<Buffer> = Vec::new();
    let mut entries = Vec::new();
    for (k, v) in state {
        let Value::Tensor {
            storage,
            offset,
            shape,
            strides,
        } = v
        else {
            continue;
        };
        let name = key_string(&k);
        let Value::Storage { dtype, key } = *storage else {
            return Err(bad(format!(
                "tensor {name}: storage is not a torch storage"
            )));
        };
        let dtype = dtype.ok_or_else(|| bad(format!("tensor {name}: unsupported storage type")))?;
        if !storage_buffers.contains_key(&key) {
            let entry_name = format!("{prefix}data/{key}");
            let mut f = archive
                .by_name(&entry_name)
                .map_err(|e| bad(format!("tensor {name}: {entry_name}: {e}")))?;
            let len = f.size() as usize;
            if f.compression() == zip::CompressionMethod::Stored {
                let start = f
                    .data_start()
                    .ok_or_else(|| bad(format!("{entry_name}: unknown data offset")))?
                    as usize;
                if start.checked_add(len).is_none_or(|end| end > map.len()) {
                    return Err(bad(format!(
                        "{entry_name} lies beyond the end of the file (truncated?)"
                    )));
                }
                storage_buffers.insert(key.clone(), (map_buffer, start, len));
            } else {
                // The declared size is the file's claim: deflate expands at most ~1032x, so a
                // larger claim is refused before anything is allocated for it.
                let packed = f.compressed_size() as usize;
                if len > packed.saturating_mul(1032).saturating_add(1024) {
                    return Err(bad(format!(
                        "{entry_name} claims {len} bytes from {packed} compressed (corrupt archive)"
                    )));
                }
                let mut data = Vec::with_capacity(len);
                f.read_to_end(&mut data)
                    .map_err(|e| bad(format!("{entry_name}: {e}")))?;
                if data.len() != len {
                    return Err(bad(format!(
                        "{entry_name}: {} bytes, the archive says {len} (truncated?)",
                        data.len()
                    )));
                }
                let idx = map_buffer + 1 + owned.len();
                owned.push(Buffer::Owned(data));
                storage_buffers.insert(key.clone(), (idx, 0, len));
            }
        }
        let (buffer, start, len) = storage_buffers[&key];
        let size = dtype.size_of();
        if strides.len() != shape.len() {
            return Err(bad(format!(
                "tensor {name}: {} strides for {} dimensions",
                strides.len(),
                shape.len()
            )));
        }
        // Sizes come from the file: checked arithmetic, so a hostile shape cannot wrap the
        // bounds check below and send a later read out of range.
        let overflow = || bad(format!("tensor {name}: shape {shape:?} overflows"));
        let numel = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(overflow)?;
        let contiguous = {
            let mut expect = 1usize;
            let mut ok = true;
            for (d, s) in shape.iter().zip(&strides).rev() {
                if *d != 1 && *s != expect {
                    ok = false;
                }
                expect = expect.saturating_mul(*d);
            }
            ok
        };
        let byte_offset = offset.checked_mul(size).ok_or_else(overflow)?;
        let span = if numel == 0 {
            0
        } else {
            shape
                .iter()
                .zip(&strides)
                .try_fold(0usize, |acc, (d, s)| {
                    acc.checked_add((d - 1).checked_mul(*s)?)
                })
                .and_then(|last| last.checked_add(1)?.checked_mul(size))
                .ok_or_else(overflow)?
        };
        if byte_offset.checked_add(span).is_none_or(|end| end > len) {
            return Err(bad(format!(
                "tensor {name}: data runs past its storage (truncated file?)"
            )));
        }
        entries.push((
            name,
            TensorEntry {
                dtype,
                shape,
                strides: if contiguous { None } else { Some(strides) },
                buffer,
                offset: start + byte_offset,
                available: len - byte_offset,
                file,
            },
        ));
    }
    drop(archive);
    ck.buffers.push(Buffer::Mapped(map));
    ck.buffers.extend(owned);
    ck.files.push(path.to_path_buf());
    ck.tensors.extend(entries);
    Ok(())
}
