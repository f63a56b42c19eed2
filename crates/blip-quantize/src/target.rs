//! Quantization targets: the flavour of a package that is fastest where it will run, and the
//! runtimes its manifest then claims. What each default rests on, and how it is known, is in
//! `docs/runtimes.md`.

use blip_package::Runtime;

use crate::{Policy, Scheme, WeightType};

/// Where the quantized package is meant to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// Native ONNX Runtime (CLI, server, Python, onnxruntime-node, ORT mobile): QInt8 (VNNI's
    /// type), INT4 at accuracy level 4 (int8 compute, native-only).
    #[default]
    Native,
    /// onnxruntime-web's wasm EP: INT8 on every graph with QUInt8 weights (faster than QInt8
    /// there, the reverse of native); INT4 is slower than FP32 in wasm, so not the default.
    Web,
    /// onnxruntime-web's WebGPU EP: FP16 (or weight-only INT4); it has no dynamic-INT8 kernels
    /// (they fall back to wasm).
    Webgpu,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Native => "native",
            Target::Web => "web",
            Target::Webgpu => "webgpu",
        }
    }

    /// The runtimes a package of this flavour is made for.
    pub fn runtimes(self) -> &'static [Runtime] {
        match self {
            Target::Native => &[Runtime::Ort, Runtime::Node, Runtime::OrtMobile],
            // QUInt8 weights are exact on ORT mobile too (see `narrow`).
            Target::Web => &[Runtime::Web, Runtime::OrtMobile],
            Target::Webgpu => &[Runtime::Webgpu],
        }
    }

    /// Weight-only INT4 with `block_size`; the accuracy level is the target's unless given.
    pub fn int4(self, block_size: usize, accuracy_level: Option<i64>) -> Scheme {
        Scheme::Int4 {
            block_size,
            accuracy_level: accuracy_level.unwrap_or_else(|| self.default_int4_accuracy_level()),
        }
    }

    pub fn default_scheme(self) -> Scheme {
        match self {
            Target::Native | Target::Web => Scheme::Int8,
            Target::Webgpu => Scheme::Fp16,
        }
    }

    pub fn default_weight_type(self) -> WeightType {
        match self {
            Target::Native | Target::Webgpu => WeightType::QInt8,
            Target::Web => WeightType::QUInt8,
        }
    }

    /// INT4 accuracy level 4 only takes effect in native ONNX Runtime: elsewhere the graph
    /// computes in float anyway, and level 0 makes native give the same numbers.
    pub fn default_int4_accuracy_level(self) -> i64 {
        match self {
            Target::Native => crate::DEFAULT_INT4_ACCURACY_LEVEL,
            Target::Web | Target::Webgpu => 0,
        }
    }

    /// In wasm the decoder is INT8 too (INT4, native's decoder precision, is slow there).
    pub fn default_policy(self, scheme: &Scheme) -> Policy {
        match (self, scheme) {
            (Target::Web, Scheme::Int8) => Policy::All,
            _ => scheme.default_policy(),
        }
    }

    /// Why `scheme` does not suit this target, if it does not.
    pub fn refuses(self, scheme: &Scheme) -> Option<&'static str> {
        match (self, scheme) {
            (Target::Web, Scheme::Fp16) => Some(
                "onnxruntime-web's wasm kernels compute FP16 slowly or not at all; use int8 (the default) or --target webgpu",
            ),
            (Target::Webgpu, Scheme::Int8) => Some(
                "the WebGPU EP has no dynamic-INT8 kernels (they fall back to wasm); use fp16 (the default) or int4",
            ),
            _ => None,
        }
    }

    /// The runtimes of a package quantized from one made for `source`: the target's, of those
    /// the source runs on. `saturating_int8`: the package has full-range QInt8 weights, whose
    /// u8 x s8 products ORT's x86 kernel sums in saturating int16 on CPUs without VNNI; native
    /// sessions avoid it (`session.x64quantprecision`), the ORT format does not (measured by the
    /// portability suite: RMS to FP32 0.07 against 0.005), so ORT mobile is left out.
    pub fn narrow(self, source: &[Runtime], saturating_int8: bool) -> Vec<Runtime> {
        let source = Runtime::claimed(source);
        self.runtimes()
            .iter()
            .copied()
            .filter(|r| source.contains(r))
            .filter(|r| !(saturating_int8 && *r == Runtime::OrtMobile))
            .collect()
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        [Target::Native, Target::Web, Target::Webgpu]
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown target {s:?} (native, web, webgpu)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_is_quint8_on_every_graph_and_narrows_to_web() {
        let t = Target::Web;
        assert_eq!(t.default_weight_type(), WeightType::QUInt8);
        assert_eq!(t.default_policy(&t.default_scheme()), Policy::All);
        assert_eq!(
            t.narrow(&Runtime::ALL, false),
            vec![Runtime::Web, Runtime::OrtMobile]
        );
        assert!(t.narrow(&[Runtime::Ort, Runtime::Node], false).is_empty());
        assert_eq!(
            Target::Native.narrow(&Runtime::ALL, true),
            vec![Runtime::Ort, Runtime::Node]
        );
        assert!(t.refuses(&Scheme::Fp16).is_some());
        assert!(Target::Webgpu.refuses(&Scheme::Int8).is_some());
        // A package without the field was made for native ONNX Runtime only.
        assert_eq!(Target::Native.narrow(&[], false), vec![Runtime::Ort]);
    }
}
