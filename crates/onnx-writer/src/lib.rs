//! Writing ONNX models node by node.
//!
//! * [`onnx`]: prost types generated from the `onnx.proto` of the PyPI `onnx` 1.23.2 wheel (committed,
//!   so no protoc is needed; regenerate with `cargo run -p regen-onnx-proto`).
//! * [`GraphBuilder`]: small helpers that hide proto2's `Option` fields and name values uniquely.
//! * [`save_model`]: streams the model to disk one initializer at a time, so writing a graph never holds
//!   more than one weight tensor beyond what the caller keeps; weights go inline or to an external-data
//!   file (needed past protobuf's 2 GiB limit).

#[allow(clippy::all, missing_docs)]
pub mod onnx;

mod builder;
mod save;

pub use builder::{Dim, GraphBuilder, attr_float, attr_int, attr_ints, attr_string};
pub use save::{ExternalData, ModelInfo, SaveStats, save_model};

/// Element types the writer emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    F32,
    F16,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl DataType {
    pub fn onnx(self) -> i32 {
        use onnx::tensor_proto::DataType as D;
        (match self {
            DataType::F32 => D::Float,
            DataType::F16 => D::Float16,
            DataType::I64 => D::Int64,
            DataType::I32 => D::Int32,
            DataType::I8 => D::Int8,
            DataType::U8 => D::Uint8,
            DataType::Bool => D::Bool,
        }) as i32
    }

    pub fn size_of(self) -> usize {
        match self {
            DataType::F32 | DataType::I32 => 4,
            DataType::F16 => 2,
            DataType::I64 => 8,
            DataType::I8 | DataType::U8 | DataType::Bool => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DataType::F32 => "float32",
            DataType::F16 => "float16",
            DataType::I64 => "int64",
            DataType::I32 => "int32",
            DataType::I8 => "int8",
            DataType::U8 => "uint8",
            DataType::Bool => "bool",
        }
    }
}

/// Errors while producing tensor data or writing a model.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("I/O error writing {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("initializer {name}: {message}")]
    Tensor { name: String, message: String },
}

/// Where an initializer's bytes come from. `Lazy` is produced only while the model is written, so a
/// converted (transposed, upcast) weight lives in memory for the time it takes to write it.
pub enum TensorData<'a> {
    Bytes(std::borrow::Cow<'a, [u8]>),
    Lazy(Box<dyn Fn() -> Result<Vec<u8>, String> + 'a>),
}

/// A graph weight or constant.
pub struct Initializer<'a> {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<i64>,
    pub data: TensorData<'a>,
}

impl Initializer<'_> {
    pub fn byte_len(&self) -> usize {
        self.dims.iter().product::<i64>().max(0) as usize * self.dtype.size_of()
    }
}
