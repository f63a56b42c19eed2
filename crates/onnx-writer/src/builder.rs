use std::borrow::Cow;
use std::collections::HashSet;

use crate::onnx::{
    AttributeProto, NodeProto, TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType,
    tensor_shape_proto::{Dimension, dimension},
    type_proto,
};
use crate::{DataType, Initializer, TensorData};

/// A dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Sym(String),
}

impl Dim {
    pub fn sym(name: &str) -> Self {
        Dim::Sym(name.to_string())
    }
}

impl From<i64> for Dim {
    fn from(v: i64) -> Self {
        Dim::Fixed(v)
    }
}

impl From<&str> for Dim {
    fn from(v: &str) -> Self {
        Dim::Sym(v.to_string())
    }
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

pub(crate) fn value_info(name: &str, dtype: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
                Dim::Sym(s) => dimension::Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype.onnx()),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Builds one graph. Node names are set by the caller (they mirror checkpoint keys so a parity diff
/// points at a layer); value names are made unique here.
pub struct GraphBuilder<'a> {
    pub name: String,
    pub(crate) nodes: Vec<NodeProto>,
    pub(crate) inputs: Vec<ValueInfoProto>,
    pub(crate) outputs: Vec<ValueInfoProto>,
    pub(crate) initializers: Vec<Initializer<'a>>,
    used_names: HashSet<String>,
    scope: Vec<String>,
}

impl<'a> GraphBuilder<'a> {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            nodes: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            initializers: Vec::new(),
            used_names: HashSet::new(),
            scope: Vec::new(),
        }
    }

    /// Runs `f` with `name` pushed on the node-name scope (`a.b.c/Op`).
    pub fn scoped<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        self.scope.push(name.to_string());
        let out = f(self);
        self.scope.pop();
        out
    }

    fn unique(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while !self.used_names.insert(name.clone()) {
            name = format!("{base}_{i}");
            i += 1;
        }
        name
    }

    pub fn input(&mut self, name: &str, dtype: DataType, dims: &[Dim]) -> String {
        self.used_names.insert(name.to_string());
        self.inputs.push(value_info(name, dtype, dims));
        name.to_string()
    }

    /// Declares `value` as a graph output named `name` (an Identity node renames it when needed).
    pub fn output(&mut self, name: &str, value: &str, dtype: DataType, dims: &[Dim]) {
        if value != name {
            self.used_names.insert(name.to_string());
            self.nodes.push(NodeProto {
                op_type: Some("Identity".into()),
                name: Some(format!("{name}/Identity")),
                input: vec![value.to_string()],
                output: vec![name.to_string()],
                ..Default::default()
            });
        }
        self.outputs.push(value_info(name, dtype, dims));
    }

    pub fn initializer(
        &mut self,
        name: &str,
        dtype: DataType,
        dims: &[i64],
        data: TensorData<'a>,
    ) -> String {
        let name = self.unique(name);
        self.initializers.push(Initializer {
            name: name.clone(),
            dtype,
            dims: dims.to_vec(),
            data,
        });
        name
    }

    pub fn const_i64(&mut self, name: &str, values: &[i64]) -> String {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(
            name,
            DataType::I64,
            &[values.len() as i64],
            TensorData::Bytes(Cow::Owned(bytes)),
        )
    }

    pub fn scalar_i64(&mut self, name: &str, value: i64) -> String {
        self.initializer(
            name,
            DataType::I64,
            &[],
            TensorData::Bytes(Cow::Owned(value.to_le_bytes().to_vec())),
        )
    }

    pub fn scalar_f32(&mut self, name: &str, value: f32) -> String {
        self.initializer(
            name,
            DataType::F32,
            &[],
            TensorData::Bytes(Cow::Owned(value.to_le_bytes().to_vec())),
        )
    }

    /// Adds a node with one output and returns that output's name.
    pub fn op(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.op_n(op, name, inputs, 1, attrs).remove(0)
    }

    /// Adds a node with `n_out` outputs.
    pub fn op_n(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        n_out: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let mut full = self.scope.join(".");
        if !full.is_empty() && !name.is_empty() {
            full.push('.');
        }
        full.push_str(name);
        let node_name = self.unique(&format!("{full}/{op}"));
        let outputs: Vec<String> = if n_out == 1 {
            vec![self.unique(&format!("{full}/{op}_out"))]
        } else {
            (0..n_out)
                .map(|i| self.unique(&format!("{full}/{op}_out{i}")))
                .collect()
        };
        self.nodes.push(NodeProto {
            op_type: Some(op.into()),
            name: Some(node_name),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            attribute: attrs,
            ..Default::default()
        });
        outputs
    }

    pub fn total_initializer_bytes(&self) -> usize {
        self.initializers.iter().map(|i| i.byte_len()).sum()
    }
}

impl GraphBuilder<'_> {
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}
