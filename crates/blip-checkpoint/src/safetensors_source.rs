use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::{Buffer, Checkpoint, CheckpointError, DType, Result, TensorEntry, map_file};

fn dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

/// Maps one safetensors file and records its tensors (zero-copy).
pub(crate) fn add_file(ck: &mut Checkpoint, path: &Path) -> Result<()> {
    let map = map_file(path)?;
    let bad = |message: String| CheckpointError::BadSafetensors {
        path: path.to_path_buf(),
        message,
    };
    // deserialize validates the header and that every tensor lies inside the file, so a truncated
    // file is refused here rather than read out of bounds later.
    let st = SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
    let base = map.as_ptr() as usize;
    let buffer = ck.buffers.len();
    let file = ck.files.len();
    let mut entries = Vec::new();
    for (name, view) in st.tensors() {
        let dt = dtype(view.dtype()).ok_or_else(|| {
            bad(format!(
                "tensor {name}: unsupported dtype {:?}",
                view.dtype()
            ))
        })?;
        let data = view.data();
        entries.push((
            name,
            TensorEntry {
                dtype: dt,
                shape: view.shape().to_vec(),
                strides: None,
                buffer,
                offset: data.as_ptr() as usize - base,
                available: data.len(),
                file,
            },
        ));
    }
    drop(st);
    ck.buffers.push(Buffer::Mapped(map));
    ck.files.push(path.to_path_buf());
    ck.tensors.extend(entries);
    Ok(())
}
