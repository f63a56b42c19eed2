use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

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
    /// Values renamed to a graph output's name by [`GraphBuilder::output`].
    aliases: HashMap<String, String>,
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
            aliases: HashMap::new(),
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

    /// Declares `value` as a graph output named `name`. A value computed by a node is renamed in
    /// place (an `Identity` there would copy it on every run, e.g. each step's KV cache); inputs,
    /// initializers and values already declared as outputs get an `Identity`.
    pub fn output(&mut self, name: &str, value: &str, dtype: DataType, dims: &[Dim]) {
        let value = self
            .aliases
            .get(value)
            .cloned()
            .unwrap_or_else(|| value.to_string());
        if value != name {
            self.used_names.insert(name.to_string());
            let already_output = self
                .outputs
                .iter()
                .any(|o| o.name.as_deref() == Some(&value));
            let computed = self.nodes.iter().any(|n| n.output.contains(&value));
            if computed && !already_output {
                for n in &mut self.nodes {
                    for v in n.input.iter_mut().chain(n.output.iter_mut()) {
                        if *v == value {
                            *v = name.to_string();
                        }
                    }
                }
                self.aliases.insert(value, name.to_string());
            } else {
                self.nodes.push(NodeProto {
                    op_type: Some("Identity".into()),
                    name: Some(format!("{name}/Identity")),
                    input: vec![value],
                    output: vec![name.to_string()],
                    ..Default::default()
                });
            }
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
            input: inputs
                .iter()
                .map(|s| {
                    self.aliases
                        .get(*s)
                        .cloned()
                        .unwrap_or_else(|| s.to_string())
                })
                .collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(g: &GraphBuilder<'_>) -> Vec<(String, Vec<String>, Vec<String>)> {
        g.nodes
            .iter()
            .map(|n| {
                (
                    n.op_type.clone().unwrap_or_default(),
                    n.input.clone(),
                    n.output.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn outputs_rename_computed_values_and_copy_the_rest() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", DataType::F32, &[Dim::Fixed(2)]);
        let r = g.op("Relu", "a", &[&x], vec![]);
        let n = g.op("Neg", "b", &[&r], vec![]);
        g.output("relu", &r, DataType::F32, &[Dim::Fixed(2)]);
        // Declared twice: the second name copies the first.
        g.output("relu_again", &r, DataType::F32, &[Dim::Fixed(2)]);
        // A graph input cannot be renamed.
        g.output("x_out", &x, DataType::F32, &[Dim::Fixed(2)]);
        // A node added after the rename still finds its input under the new name.
        let e = g.op("Exp", "c", &[&r], vec![]);
        g.output("neg", &n, DataType::F32, &[Dim::Fixed(2)]);
        g.output("exp", &e, DataType::F32, &[Dim::Fixed(2)]);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ops(&g),
            [
                ("Relu".into(), s(&["x"]), s(&["relu"])),
                ("Neg".into(), s(&["relu"]), s(&["neg"])),
                ("Identity".into(), s(&["relu"]), s(&["relu_again"])),
                ("Identity".into(), s(&["x"]), s(&["x_out"])),
                ("Exp".into(), s(&["relu"]), s(&["exp"])),
            ]
        );
    }
}
