//! Word-embedding tables (`Gather` on a `[vocab, hidden]` initializer): the largest single tensor of
//! every text graph (30524 × 768 in base, 94 MB), so a package only shrinks to a quarter once they
//! are quantized too. Position-embedding tables are small and stay float.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use onnx_writer::onnx::{ModelProto, NodeProto, TensorProto, tensor_proto::DataType as PbType};

use crate::{Result, cast_to_float, f32_values, graph_err, node, quantize_q4_column, tensor};

/// Tables with at least this many rows are vocabularies.
pub const MIN_VOCAB_ROWS: i64 = 1024;

fn vocab_tables(model: &ModelProto) -> HashMap<String, usize> {
    let Some(g) = model.graph.as_ref() else {
        return HashMap::new();
    };
    g.initializer
        .iter()
        .enumerate()
        .filter(|(_, t)| {
            t.dims.len() == 2
                && t.dims[0] >= MIN_VOCAB_ROWS
                && t.data_type == Some(PbType::Float as i32)
        })
        .filter_map(|(i, t)| Some((t.name.clone()?, i)))
        .collect()
}

/// Rewrites every axis-0 `Gather` of a vocabulary table with `rewrite(node, table)`.
fn rewrite_gathers(
    model: &mut ModelProto,
    path: &Path,
    mut rewrite: impl FnMut(
        &NodeProto,
        &TensorProto,
        &mut Vec<NodeProto>,
        &mut Vec<TensorProto>,
    ) -> Result<()>,
) -> Result<usize> {
    let tables = vocab_tables(model);
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| graph_err(path, "no graph"))?;
    let mut nodes = Vec::with_capacity(graph.node.len() + 8);
    let mut inits = Vec::new();
    let mut count = 0;
    for n in std::mem::take(&mut graph.node) {
        let axis0 = n
            .attribute
            .iter()
            .all(|a| a.name.as_deref() != Some("axis") || a.i == Some(0));
        let well_formed = n.input.len() == 2 && n.output.len() == 1;
        let table = (n.op_type.as_deref() == Some("Gather") && axis0 && well_formed)
            .then(|| n.input.first().and_then(|x| tables.get(x)))
            .flatten();
        match table {
            Some(&i) => {
                rewrite(&n, &graph.initializer[i], &mut nodes, &mut inits)?;
                count += 1;
            }
            None => nodes.push(n),
        }
    }
    graph.node = nodes;
    let used: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    graph
        .initializer
        .retain(|t| t.name.as_ref().is_some_and(|n| used.contains(n)));
    let mut seen = HashSet::new();
    graph
        .initializer
        .extend(inits.into_iter().filter(|t| seen.insert(t.name.clone())));
    Ok(count)
}

/// INT8 rows, symmetric per row: `Gather(q) → Cast → Mul(Gather(scale))` in standard ops.
pub(crate) fn quantize_int8(model: &mut ModelProto, path: &Path, qmax: f32) -> Result<usize> {
    rewrite_gathers(model, path, |n, table, nodes, inits| {
        let values = f32_values(table, path)?;
        let (rows, cols) = (table.dims[0] as usize, table.dims[1] as usize);
        let mut q = Vec::with_capacity(values.len());
        let mut scales = Vec::with_capacity(rows);
        for row in values.chunks_exact(cols) {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if max > 0.0 { max / qmax } else { 1.0 };
            q.extend(
                row.iter()
                    .map(|v| (v / s).round().clamp(-qmax, qmax) as i8 as u8),
            );
            scales.push(s);
        }
        let tname = table.name.clone().unwrap_or_default();
        let (qn, sn) = (format!("{tname}_rows_int8"), format!("{tname}_row_scales"));
        inits.push(tensor(&qn, PbType::Int8, &table.dims, q));
        inits.push(tensor(
            &sn,
            PbType::Float,
            &[rows as i64, 1],
            scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        let (name, ids, out) = (
            n.name.clone().unwrap_or_default(),
            n.input[1].clone(),
            n.output[0].clone(),
        );
        let (gq, gf, gs) = (
            format!("{out}_int8"),
            format!("{out}_int8_float"),
            format!("{out}_row_scale"),
        );
        nodes.push(node(
            "Gather",
            &format!("{name}/rows"),
            &[&qn, &ids],
            &[&gq],
            vec![],
        ));
        nodes.push(cast_to_float(&name, &gq, &gf));
        nodes.push(node(
            "Gather",
            &format!("{name}/scales"),
            &[&sn, &ids],
            &[&gs],
            vec![],
        ));
        nodes.push(node(
            "Mul",
            &format!("{name}/dequantize"),
            &[&gf, &gs],
            &[&out],
            vec![],
        ));
        Ok(())
    })
}

/// INT4 rows, symmetric blocks along the hidden axis: `com.microsoft.GatherBlockQuantized`
/// (uint8 data, two codes per byte low nibble first, zero point 8 — MatMulNBits' layout).
pub(crate) fn quantize_int4(
    model: &mut ModelProto,
    path: &Path,
    requested: usize,
    used: &mut std::collections::BTreeSet<usize>,
) -> Result<usize> {
    rewrite_gathers(model, path, |n, table, nodes, inits| {
        let values = f32_values(table, path)?;
        let (rows, cols) = (table.dims[0] as usize, table.dims[1] as usize);
        // GatherBlockQuantized has no padding: the block must divide the width.
        let block = crate::fit_block(requested, cols).ok_or_else(|| {
            graph_err(
                path,
                format!(
                    "embedding width {cols} has no INT4 block (a power of two from 16 to {requested} dividing it); pass --keep-embeddings"
                ),
            )
        })?;
        used.insert(block);
        let mut packed = Vec::with_capacity(rows * cols / 2);
        let mut scales = Vec::with_capacity(rows * cols / block);
        for row in values.chunks_exact(cols) {
            let (b, s) = quantize_q4_column(row, block);
            packed.extend(b);
            scales.extend(s);
        }
        let tname = table.name.clone().unwrap_or_default();
        let (qn, sn) = (format!("{tname}_rows_q4"), format!("{tname}_row_q4_scales"));
        inits.push(tensor(
            &qn,
            PbType::Uint8,
            &[rows as i64, (cols / 2) as i64],
            packed,
        ));
        inits.push(tensor(
            &sn,
            PbType::Float,
            &[rows as i64, (cols / block) as i64],
            scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        let name = n.name.clone().unwrap_or_default();
        let mut g = node(
            "GatherBlockQuantized",
            &format!("{name}/GatherBlockQuantized"),
            &[&qn, &n.input[1], &sn],
            &[&n.output[0]],
            vec![
                onnx_writer::attr_int("gather_axis", 0),
                onnx_writer::attr_int("quantize_axis", 1),
                onnx_writer::attr_int("block_size", block as i64),
                onnx_writer::attr_int("bits", 4),
            ],
        );
        g.domain = Some("com.microsoft".into());
        nodes.push(g);
        Ok(())
    })
}
