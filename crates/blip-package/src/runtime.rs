//! The runtimes a package can be meant for: the manifest's `runtimes` and `check --target` name
//! them the same way.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One runtime that loads blip-onnx graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// Native ONNX Runtime (the CLI, the server, the Python wheel).
    Ort,
    /// onnxruntime-node (native ONNX Runtime under Node.js).
    Node,
    /// onnxruntime-web, wasm execution provider (the browser).
    Web,
    /// onnxruntime-web, WebGPU execution provider.
    Webgpu,
    /// OpenVINO (f32 inference precision).
    Openvino,
    /// tract, the Rust ONNX runtime.
    Tract,
    /// ONNX Runtime's mobile `.ort` format (runtime-style conversion, CPU execution provider).
    OrtMobile,
}

impl Runtime {
    pub const ALL: [Runtime; 7] = [
        Runtime::Ort,
        Runtime::Node,
        Runtime::Web,
        Runtime::Webgpu,
        Runtime::Openvino,
        Runtime::Tract,
        Runtime::OrtMobile,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Ort => "ort",
            Runtime::Node => "node",
            Runtime::Web => "web",
            Runtime::Webgpu => "webgpu",
            Runtime::Openvino => "openvino",
            Runtime::Tract => "tract",
            Runtime::OrtMobile => "ort-mobile",
        }
    }

    /// The runtimes of a manifest: an empty list (a package written before the field existed)
    /// claims nothing beyond native ONNX Runtime, which every package was made for.
    pub fn claimed(runtimes: &[Runtime]) -> Vec<Runtime> {
        if runtimes.is_empty() {
            vec![Runtime::Ort]
        } else {
            runtimes.to_vec()
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown runtime {0:?} (expected one of ort, node, web, webgpu, openvino, tract, ort-mobile)"
)]
pub struct UnknownRuntime(pub String);

impl FromStr for Runtime {
    type Err = UnknownRuntime;

    fn from_str(s: &str) -> Result<Runtime, UnknownRuntime> {
        Runtime::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| UnknownRuntime(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for r in Runtime::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.name()));
            assert_eq!(serde_json::from_str::<Runtime>(&json).unwrap(), r);
            assert_eq!(r.name().parse::<Runtime>().unwrap(), r);
        }
        let err = "wasm".parse::<Runtime>().unwrap_err().to_string();
        assert!(
            err.contains("\"wasm\"") && err.contains("ort-mobile"),
            "{err}"
        );
    }
}
