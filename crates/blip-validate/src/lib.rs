//! Deployment checks of a blip-onnx package.
//!
//! [`check`] is the static checklist of the common BLIP → ONNX guide, run for real: each item passes or
//! fails with its reason, so a CI pipeline can gate on it.

pub mod gates;
mod portability;
pub mod reference;
mod validate;

pub use gates::{Gate, Thresholds, ValidateReport};
pub use portability::check_targets;
pub use validate::{
    DEFAULT_QUESTIONS, DEFAULT_TEXTS, ValidateError, ValidateOptions, generated_images, validate,
};

use std::collections::HashSet;
use std::path::Path;

use blip_package::io::{
    ATTENTION_MASK, CROSS_GROUPS, CROSS_PREFIX, ENCODER_ATTENTION_MASK, ENCODER_HIDDEN_STATES,
    IMAGE_EMBEDS, INPUT_IDS, ITM_LOGITS, LAST_HIDDEN_STATE, LOGITS, PAST_PREFIX, PIXEL_VALUES,
    POSITION_IDS, PRESENT_PREFIX, TEXT_EMBEDS,
};
use blip_package::{Graph, GraphEntry, Package, TensorSpec};
use onnx_writer::onnx::{
    ModelProto, ValueInfoProto, tensor_proto::DataLocation,
    tensor_shape_proto::dimension::Value as DimValue, type_proto::Value as TypeValue,
};
use prost::Message;
use serde::Serialize;

/// Opsets this toolkit writes and the pinned ONNX Runtime runs.
pub const MIN_OPSET: i64 = 17;
pub const MAX_OPSET: i64 = 21;
/// Highest IR version the pinned ONNX Runtime (1.32) reads.
pub const MAX_IR_VERSION: i64 = 11;

/// One checklist item.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckItem {
    /// e.g. `decoder: dynamic axes`, `package: tokenizer ids`.
    pub item: String,
    pub pass: bool,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub package: String,
    pub items: Vec<CheckItem>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.items.iter().all(|i| i.pass)
    }

    pub fn failures(&self) -> impl Iterator<Item = &CheckItem> {
        self.items.iter().filter(|i| !i.pass)
    }
}

fn item(name: String, result: Result<String, String>) -> CheckItem {
    match result {
        Ok(reason) => CheckItem {
            item: name,
            pass: true,
            reason,
        },
        Err(reason) => CheckItem {
            item: name,
            pass: false,
            reason,
        },
    }
}

fn dims(v: &ValueInfoProto) -> Option<(i32, Vec<serde_json::Value>)> {
    let Some(TypeValue::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let dims = t
        .shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(DimValue::DimValue(v)) => serde_json::json!(v),
            Some(DimValue::DimParam(p)) => serde_json::json!(p),
            None => serde_json::Value::Null,
        })
        .collect();
    Some((t.elem_type.unwrap_or(0), dims))
}

fn dtype_name(code: i32) -> &'static str {
    match code {
        1 => "float32",
        10 => "float16",
        7 => "int64",
        6 => "int32",
        3 => "int8",
        2 => "uint8",
        9 => "bool",
        _ => "other",
    }
}

/// Which axes must stay symbolic, by tensor name (what callers vary at run time).
fn expected_symbolic(name: &str) -> Vec<usize> {
    match name {
        PIXEL_VALUES | IMAGE_EMBEDS | TEXT_EMBEDS | ITM_LOGITS => vec![0],
        n if n.starts_with(PAST_PREFIX) || n.starts_with(PRESENT_PREFIX) => vec![0, 2],
        n if n.starts_with(CROSS_PREFIX) => vec![0, 2],
        CROSS_GROUPS => vec![0, 1],
        LAST_HIDDEN_STATE
        | ENCODER_HIDDEN_STATES
        | INPUT_IDS
        | ATTENTION_MASK
        | POSITION_IDS
        | ENCODER_ATTENTION_MASK
        | LOGITS => vec![0, 1],
        _ => vec![0],
    }
}

fn check_io(
    role: &str,
    kind: &str,
    actual: &[ValueInfoProto],
    listed: &[TensorSpec],
    out: &mut Vec<CheckItem>,
) {
    // The vision encoder's sequence length is fixed by the image size; only its batch axis varies.
    let symbolic = |name: &str| {
        if role == Graph::VisionEncoder.name() {
            vec![0]
        } else {
            expected_symbolic(name)
        }
    };
    let names: Vec<&str> = actual
        .iter()
        .map(|v| v.name.as_deref().unwrap_or(""))
        .collect();
    let unique: HashSet<&str> = names.iter().copied().collect();
    let listed_names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
    out.push(item(
        format!("{role}: {kind} names"),
        if unique.len() != names.len() || names.iter().any(|n| n.is_empty()) {
            Err(format!("{kind} names are empty or repeated: {names:?}"))
        } else if names != listed_names {
            Err(format!(
                "graph {kind}s {names:?} differ from the manifest's {listed_names:?}"
            ))
        } else {
            Ok(format!(
                "{} unique names, as the manifest lists",
                names.len()
            ))
        },
    ));
    let mut problems = Vec::new();
    for (v, spec) in actual.iter().zip(listed) {
        match dims(v) {
            None => problems.push(format!("{} has no tensor type", spec.name)),
            Some((dt, d)) => {
                if dtype_name(dt) != spec.dtype {
                    problems.push(format!(
                        "{} is {} but the manifest says {}",
                        spec.name,
                        dtype_name(dt),
                        spec.dtype
                    ));
                }
                if d != spec.dims {
                    problems.push(format!(
                        "{} has dims {:?}, manifest {:?}",
                        spec.name, d, spec.dims
                    ));
                }
                for axis in symbolic(&spec.name) {
                    if !d.get(axis).is_some_and(|x| x.is_string()) {
                        problems.push(format!(
                            "{} axis {axis} is not dynamic ({:?})",
                            spec.name,
                            d.get(axis)
                        ));
                    }
                }
            }
        }
    }
    out.push(item(
        format!("{role}: {kind} types and dynamic axes"),
        if problems.is_empty() {
            Ok("dtypes and dims match; batch/sequence axes symbolic".into())
        } else {
            Err(problems.join("; "))
        },
    ));
}

fn check_graph(pkg: &Package, role: &str, entry: &GraphEntry, out: &mut Vec<CheckItem>) {
    let path = pkg.dir.join(&entry.file);
    out.push(item(
        format!("{role}: checksum"),
        match blip_package::sha256_files(
            &entry
                .files()
                .iter()
                .map(|f| pkg.dir.join(f))
                .collect::<Vec<_>>(),
        ) {
            Ok(h) if h == entry.sha256 => Ok("sha256 matches the manifest".into()),
            Ok(h) => Err(format!(
                "{} has sha256 {h}, the manifest says {}",
                entry.files().join(" + "),
                entry.sha256
            )),
            Err(e) => Err(format!("{}: {e}", entry.file)),
        },
    ));
    let model = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| ModelProto::decode(b.as_slice()).map_err(|e| e.to_string()))
    {
        Ok(m) => m,
        Err(e) => {
            out.push(item(
                format!("{role}: parses"),
                Err(format!("{}: {e}", entry.file)),
            ));
            return;
        }
    };
    let ir = model.ir_version.unwrap_or(0);
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.as_deref().unwrap_or("").is_empty())
        .and_then(|o| o.version);
    out.push(item(
        format!("{role}: opset and IR version"),
        match opset {
            Some(v)
                if (MIN_OPSET..=MAX_OPSET).contains(&v) && (7..=MAX_IR_VERSION).contains(&ir) =>
            {
                Ok(format!("opset {v}, IR {ir}"))
            }
            Some(v) => Err(format!(
                "opset {v} / IR {ir} outside opset {MIN_OPSET}-{MAX_OPSET}, IR 7-{MAX_IR_VERSION}"
            )),
            None => Err("no default-domain opset import".into()),
        },
    ));
    let Some(graph) = model.graph else {
        out.push(item(format!("{role}: parses"), Err("no graph".into())));
        return;
    };
    let training: Vec<String> = graph
        .node
        .iter()
        .filter(|n| {
            let op = n.op_type.as_deref().unwrap_or("");
            let domain = n.domain.as_deref().unwrap_or("");
            op == "Dropout"
                || domain.starts_with("ai.onnx.training")
                || domain.starts_with("ai.onnx.preview.training")
        })
        .map(|n| n.name.clone().unwrap_or_default())
        .collect();
    out.push(item(
        format!("{role}: no training-only ops"),
        if training.is_empty() {
            Ok(format!("{} nodes, none training-only", graph.node.len()))
        } else {
            Err(format!("training ops: {training:?}"))
        },
    ));
    check_io(role, "input", &graph.input, &entry.inputs, out);
    check_io(role, "output", &graph.output, &entry.outputs, out);
    // External data: every reference names an existing file and lies inside it.
    let mut problems = Vec::new();
    let mut external = 0;
    for t in &graph.initializer {
        if t.data_location != Some(DataLocation::External as i32) {
            continue;
        }
        external += 1;
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key.as_deref() == Some(k))
                .and_then(|e| e.value.clone())
        };
        let name = t.name.clone().unwrap_or_default();
        let Some(location) = get("location") else {
            problems.push(format!("{name}: no location"));
            continue;
        };
        if location.contains("..") || Path::new(&location).is_absolute() {
            problems.push(format!("{name}: location {location} leaves the package"));
            continue;
        }
        let offset: u64 = get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
        let length: u64 = get("length").and_then(|v| v.parse().ok()).unwrap_or(0);
        match std::fs::metadata(pkg.dir.join(&location)) {
            Ok(m) if offset + length <= m.len() => {}
            Ok(m) => problems.push(format!(
                "{name}: bytes {offset}..{} beyond {location} ({} bytes)",
                offset + length,
                m.len()
            )),
            Err(_) => problems.push(format!("{name}: external data file {location} is missing")),
        }
    }
    out.push(item(
        format!("{role}: external data"),
        if !problems.is_empty() {
            Err(problems.join("; "))
        } else if external > 0 && entry.data_file.is_none() {
            Err(format!(
                "{external} external tensors but the manifest names no data file"
            ))
        } else if external > 0 {
            Ok(format!(
                "{external} external tensors, all inside {}",
                entry.data_file.as_deref().unwrap_or("")
            ))
        } else {
            Ok("weights inline".into())
        },
    ));
}

/// Runs the checklist. `load_in_ort` also opens every graph in ONNX Runtime.
pub fn check(dir: &Path, load_in_ort: bool) -> CheckReport {
    let mut items = Vec::new();
    // Checksums are checked per graph below, as items of their own.
    let pkg = match Package::open_unverified(dir) {
        Ok(p) => {
            items.push(item(
                "package: manifest".into(),
                Ok(format!(
                    "{} v{}",
                    p.manifest.format, p.manifest.format_version
                )),
            ));
            p
        }
        Err(e) => {
            items.push(item("package: manifest".into(), Err(e.to_string())));
            return CheckReport {
                package: dir.display().to_string(),
                items,
            };
        }
    };
    let m = &pkg.manifest;
    let expected: Vec<&str> = m.head.graphs().iter().map(|g| g.name()).collect();
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|r| !m.graphs.contains_key(*r))
        .collect();
    items.push(item(
        "package: graphs for the head".into(),
        if missing.is_empty() {
            Ok(format!("{} head: {}", m.head, expected.join(", ")))
        } else {
            Err(format!("{} head lacks {missing:?}", m.head))
        },
    ));
    items.push(item(
        "package: tokenizer ids".into(),
        match blip_preprocess::load_tokenizer_json(&pkg.tokenizer_path()) {
            Err(e) => Err(format!("{}: {e}", m.tokenizer)),
            Ok(tok) => {
                let t = &m.tokens;
                let pairs = [
                    ("[DEC]", t.bos),
                    (m.family.itm_first_token(), t.enc),
                    ("[CLS]", t.cls),
                    ("[SEP]", t.sep),
                    ("[PAD]", t.pad),
                ];
                let wrong: Vec<String> = pairs
                    .iter()
                    .filter(|(tokname, id)| tok.token_to_id(tokname).map(|x| x as i64) != Some(*id))
                    .map(|(tokname, id)| {
                        format!(
                            "{tokname} is {:?} in the tokenizer, {id} in the manifest",
                            tok.token_to_id(tokname)
                        )
                    })
                    .collect();
                let vocab = tok.get_vocab_size(true);
                if !wrong.is_empty() {
                    Err(wrong.join("; "))
                } else if vocab != m.model.vocab_size {
                    Err(format!(
                        "tokenizer has {vocab} tokens, the model {}",
                        m.model.vocab_size
                    ))
                } else {
                    Ok(format!(
                        "bos {} enc {} sep {} pad {}, {vocab} tokens",
                        t.bos, t.enc, t.sep, t.pad
                    ))
                }
            }
        },
    ));
    for (role, entry) in &m.graphs {
        check_graph(&pkg, role, entry, &mut items);
    }
    if load_in_ort {
        match blip_runtime::OrtLibrary::init() {
            Err(e) => items.push(item("package: ONNX Runtime".into(), Err(e.to_string()))),
            Ok(rt) => {
                for role in m.graphs.keys() {
                    let r = rt.package_session(
                        &pkg,
                        role,
                        &blip_runtime::SessionOptions {
                            intra_threads: 1,
                            ..Default::default()
                        },
                    );
                    items.push(item(
                        format!("{role}: loads in ONNX Runtime"),
                        r.map(|_| format!("ORT 1.{}", rt.minor_version))
                            .map_err(|e| e.to_string()),
                    ));
                }
            }
        }
    }
    CheckReport {
        package: dir.display().to_string(),
        items,
    }
}
