use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use crate::builder::GraphBuilder;
use crate::onnx::{
    GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    tensor_proto::DataLocation,
};
use crate::{Initializer, TensorData, WriteError};

const MODEL_GRAPH_FIELD: u32 = 7;
const GRAPH_INITIALIZER_FIELD: u32 = 5;
const TENSOR_RAW_DATA_FIELD: u32 = 9;
/// Protobuf messages must stay below 2 GiB; leave headroom for the graph itself.
const INLINE_LIMIT: usize = 1 << 30;
/// Tensors smaller than this stay inline even in external-data mode (shapes, scalars, biases).
const EXTERNAL_MIN_BYTES: usize = 1024;

/// Where weights go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExternalData {
    /// Inline unless the graph's weights pass 1 GiB (protobuf's hard limit is 2 GiB).
    #[default]
    Auto,
    Always,
    Never,
}

/// Model-level fields.
pub struct ModelInfo {
    pub ir_version: i64,
    pub opsets: Vec<(String, i64)>,
    pub producer_name: String,
    pub producer_version: String,
    pub doc: String,
    pub metadata: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct SaveStats {
    pub onnx_bytes: u64,
    pub data_bytes: u64,
    /// File name of the external-data file, when one was written.
    pub data_file: Option<String>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn materialize<'b>(init: &'b Initializer<'_>) -> Result<Cow<'b, [u8]>, WriteError> {
    let bytes = match &init.data {
        TensorData::Bytes(b) => Cow::Borrowed(b.as_ref()),
        TensorData::Lazy(f) => Cow::Owned(f().map_err(|message| WriteError::Tensor {
            name: init.name.clone(),
            message,
        })?),
    };
    if bytes.len() != init.byte_len() {
        return Err(WriteError::Tensor {
            name: init.name.clone(),
            message: format!(
                "has {} bytes, dims {:?} need {}",
                bytes.len(),
                init.dims,
                init.byte_len()
            ),
        });
    }
    Ok(bytes)
}

fn tensor_header(init: &Initializer<'_>) -> TensorProto {
    TensorProto {
        name: Some(init.name.clone()),
        data_type: Some(init.dtype.onnx()),
        dims: init.dims.clone(),
        ..Default::default()
    }
}

fn delimited_len(body: usize) -> usize {
    1 + encoded_len_varint(body as u64) + body
}

/// Writes `graph` as an ONNX model at `path`, streaming initializers one at a time.
/// The file appears atomically (written to `path.partial`, then renamed).
pub fn save_model(
    graph: GraphBuilder<'_>,
    info: &ModelInfo,
    path: &Path,
    external: ExternalData,
) -> Result<SaveStats, WriteError> {
    let total: usize = graph.total_initializer_bytes();
    let use_external = match external {
        ExternalData::Always => true,
        ExternalData::Never => false,
        ExternalData::Auto => total > INLINE_LIMIT,
    };
    let file_name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.onnx".into());
    let data_name = format!("{file_name}.data");
    let data_path = path.with_file_name(&data_name);

    let model = ModelProto {
        ir_version: Some(info.ir_version),
        producer_name: Some(info.producer_name.clone()),
        producer_version: Some(info.producer_version.clone()),
        doc_string: Some(info.doc.clone()),
        opset_import: info
            .opsets
            .iter()
            .map(|(d, v)| OperatorSetIdProto {
                domain: Some(d.clone()),
                version: Some(*v),
            })
            .collect(),
        metadata_props: info
            .metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect(),
        ..Default::default()
    };
    let graph_head = GraphProto {
        name: Some(graph.name.clone()),
        node: graph.nodes,
        input: graph.inputs,
        output: graph.outputs,
        ..Default::default()
    };

    // Plan every initializer: its encoded TensorProto (external) or its header + raw length (inline).
    let mut data_offset: u64 = 0;
    let mut plans: Vec<(Vec<u8>, Option<u64>)> = Vec::with_capacity(graph.initializers.len());
    let mut graph_len = graph_head.encoded_len();
    for init in &graph.initializers {
        let n = init.byte_len();
        if use_external && n >= EXTERNAL_MIN_BYTES {
            // Align big tensors to the page size so ORT can map them.
            let align = if n >= 65536 { 4096 } else { 64 };
            data_offset = data_offset.div_ceil(align) * align;
            let mut t = tensor_header(init);
            t.data_location = Some(DataLocation::External as i32);
            t.external_data = vec![
                StringStringEntryProto {
                    key: Some("location".into()),
                    value: Some(data_name.clone()),
                },
                StringStringEntryProto {
                    key: Some("offset".into()),
                    value: Some(data_offset.to_string()),
                },
                StringStringEntryProto {
                    key: Some("length".into()),
                    value: Some(n.to_string()),
                },
            ];
            let enc = t.encode_to_vec();
            graph_len += delimited_len(enc.len());
            plans.push((enc, Some(data_offset)));
            data_offset += n as u64;
        } else {
            let enc = tensor_header(init).encode_to_vec();
            let body = enc.len() + delimited_len(n);
            graph_len += delimited_len(body);
            plans.push((enc, None));
        }
    }
    if !use_external && graph_len >= (i32::MAX as usize) {
        return Err(WriteError::Tensor {
            name: graph.name.clone(),
            message: "graph exceeds protobuf's 2 GiB limit: write it with external data".into(),
        });
    }

    let partial = path.with_file_name(format!("{file_name}.partial"));
    let data_partial = path.with_file_name(format!("{data_name}.partial"));
    let result = (|| -> Result<SaveStats, WriteError> {
        let mut out =
            BufWriter::with_capacity(1 << 20, File::create(&partial).map_err(io_err(&partial))?);
        let mut data_out = if use_external {
            Some(BufWriter::with_capacity(
                1 << 20,
                File::create(&data_partial).map_err(io_err(&data_partial))?,
            ))
        } else {
            None
        };
        let mut head = model.encode_to_vec();
        encode_key(MODEL_GRAPH_FIELD, WireType::LengthDelimited, &mut head);
        encode_varint(graph_len as u64, &mut head);
        head.extend_from_slice(&graph_head.encode_to_vec());
        out.write_all(&head).map_err(io_err(&partial))?;

        let mut written_data: u64 = 0;
        for (init, (enc, ext_offset)) in graph.initializers.iter().zip(&plans) {
            let bytes = materialize(init)?;
            let mut buf = Vec::with_capacity(16 + enc.len());
            if let (Some(offset), Some(data)) = (ext_offset, data_out.as_mut()) {
                let pad = (offset - written_data) as usize;
                data.write_all(&vec![0u8; pad])
                    .map_err(io_err(&data_partial))?;
                data.write_all(&bytes).map_err(io_err(&data_partial))?;
                written_data = offset + bytes.len() as u64;
                encode_key(GRAPH_INITIALIZER_FIELD, WireType::LengthDelimited, &mut buf);
                encode_varint(enc.len() as u64, &mut buf);
                buf.extend_from_slice(enc);
                out.write_all(&buf).map_err(io_err(&partial))?;
            } else {
                let body = enc.len() + delimited_len(bytes.len());
                encode_key(GRAPH_INITIALIZER_FIELD, WireType::LengthDelimited, &mut buf);
                encode_varint(body as u64, &mut buf);
                buf.extend_from_slice(enc);
                encode_key(TENSOR_RAW_DATA_FIELD, WireType::LengthDelimited, &mut buf);
                encode_varint(bytes.len() as u64, &mut buf);
                out.write_all(&buf).map_err(io_err(&partial))?;
                out.write_all(&bytes).map_err(io_err(&partial))?;
            }
        }
        let file = out
            .into_inner()
            .map_err(|e| io_err(&partial)(e.into_error()))?;
        let onnx_bytes = file.metadata().map_err(io_err(&partial))?.len();
        if let Some(data) = data_out {
            data.into_inner()
                .map_err(|e| io_err(&data_partial)(e.into_error()))?;
            std::fs::rename(&data_partial, &data_path).map_err(io_err(&data_path))?;
        }
        std::fs::rename(&partial, path).map_err(io_err(path))?;
        Ok(SaveStats {
            onnx_bytes,
            data_bytes: written_data,
            data_file: use_external.then_some(data_name.clone()),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
        let _ = std::fs::remove_file(&data_partial);
    }
    result
}
