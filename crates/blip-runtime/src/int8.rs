//! Which integer kernel a dynamic-INT8 graph runs on this CPU, and whether its session asks ONNX
//! Runtime for exact u8 × u8 products (`session.x64quantprecision`).
//!
//! ORT's x86 u8 × s8 kernel without VNNI (`vpmaddubsw`) sums pairs of products in saturating int16:
//! full-range int8 weights ([-127, 127]) can overflow it, 7-bit weights ([-63, 63], what `quantize`
//! writes by default) cannot (2 · 255 · 63 < 32767). With VNNI (`vpdpbusd`) or AMX the products are
//! summed in int32 and both are exact. `session.x64quantprecision` makes ORT convert s8 weights to u8
//! and run the u8 × u8 kernel, which is exact but slower, and on AMX CPUs it also moves the graph off
//! AMX (ORT applies it whenever its u8 × u8 and u8 × s8 kernels differ). So the option is set only
//! where it is needed: full-range weights on a CPU without VNNI. Measured by
//! `scripts/bench-cpu-quant.sh` (its table: `docs/bench/cpu-quant.md`).

use blip_package::GraphEntry;

/// The integer features of the CPU that decide ORT's INT8 kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuInt8 {
    /// AVX2 (the u8 × s8 `vpmaddubsw` kernel).
    pub avx2: bool,
    /// AVX512-VNNI or AVX-VNNI (`vpdpbusd`: int32 sums, no saturation).
    pub vnni: bool,
    /// AMX-INT8 tiles (ORT's u8 × s8 kernel of Sapphire Rapids and later).
    pub amx: bool,
}

impl CpuInt8 {
    /// The features of this CPU (the same CPUID bits ORT's MLAS reads).
    pub fn detect() -> CpuInt8 {
        #[cfg(target_arch = "x86_64")]
        {
            CpuInt8 {
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                vnni: std::arch::is_x86_feature_detected!("avx512vnni")
                    || std::arch::is_x86_feature_detected!("avxvnni"),
                amx: amx_int8(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuInt8 {
                avx2: false,
                vnni: false,
                amx: false,
            }
        }
    }

    /// The CPU in words, e.g. `AVX2, no VNNI`.
    pub fn describe(&self) -> String {
        match (self.avx2, self.vnni, self.amx) {
            (_, true, true) => "AVX-512 VNNI + AMX-INT8".into(),
            (_, true, false) => "VNNI".into(),
            (true, false, _) => "AVX2, no VNNI".into(),
            (false, false, _) => "no AVX2".into(),
        }
    }
}

/// CPUID leaf 7 EDX bit 25 (AMX-INT8); `is_x86_feature_detected!("amx-int8")` is not stable.
#[cfg(target_arch = "x86_64")]
fn amx_int8() -> bool {
    // CPUID is on every x86-64 CPU (safe to call); leaf 7 is read only where the CPU has it.
    let max = std::arch::x86_64::__cpuid(0).eax;
    max >= 7 && std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 25) != 0
}

/// The int8 weights of a dynamic-INT8 graph, as `quantize` recorded them in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Weights {
    /// QInt8 in [-127, 127].
    FullRange,
    /// QInt8 in [-63, 63] (`quantize`'s default since full-range weights saturate without VNNI).
    ReduceRange,
    /// QUInt8 (zero point 128): the u8 × u8 kernel whatever the CPU.
    Unsigned,
}

impl Int8Weights {
    /// The weights of a graph entry; `None` for graphs that are not dynamic INT8. Reads the note
    /// `blip-quantize` writes ("dynamic INT8, per-channel QInt8 weights, reduce-range").
    pub fn of(entry: &GraphEntry) -> Option<Int8Weights> {
        let note = entry.quantization.as_deref()?;
        if entry.precision != "int8" || !note.contains("dynamic INT8") {
            return None;
        }
        Some(if note.contains("QUInt8") {
            Int8Weights::Unsigned
        } else if note.contains("reduce-range") {
            Int8Weights::ReduceRange
        } else {
            Int8Weights::FullRange
        })
    }
}

/// The kernel an INT8 graph runs on a CPU, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Int8Path {
    pub weights: Int8Weights,
    /// The session sets `session.x64quantprecision` (exact u8 × u8 instead of u8 × s8).
    pub precise_u8u8: bool,
    /// The kernel, e.g. `u8×s8 AVX2 (vpmaddubsw)`.
    pub kernel: &'static str,
    /// Why this kernel, in one sentence.
    pub why: String,
}

impl Int8Path {
    pub fn choose(weights: Int8Weights, cpu: CpuInt8) -> Int8Path {
        let (precise_u8u8, kernel, why) = match weights {
            Int8Weights::Unsigned => (
                false,
                "u8×u8",
                "QUInt8 weights (the web flavour) run the u8×u8 kernel on every CPU".to_string(),
            ),
            _ if cpu.amx => (
                false,
                "u8×s8 AMX",
                "AMX-INT8 sums in int32: int8 weights are exact on the fastest kernel".to_string(),
            ),
            _ if cpu.vnni => (
                false,
                "u8×s8 VNNI (vpdpbusd)",
                "VNNI sums in int32: int8 weights are exact on the fastest kernel".to_string(),
            ),
            Int8Weights::ReduceRange => (
                false,
                "u8×s8 AVX2 (vpmaddubsw)",
                format!(
                    "{}: 7-bit weights cannot saturate the u8×s8 kernel's int16 pair sums",
                    cpu.describe()
                ),
            ),
            Int8Weights::FullRange => (
                true,
                "u8×u8 (session.x64quantprecision)",
                format!(
                    "{}: full-range int8 weights would saturate the u8×s8 kernel's int16 pair sums, \
                     so the slower exact u8×u8 kernel runs; re-quantize (7-bit weights, the default) \
                     for the u8×s8 kernel",
                    cpu.describe()
                ),
            ),
        };
        Int8Path {
            weights,
            precise_u8u8,
            kernel,
            why,
        }
    }

    /// The path of a graph entry on this CPU; `None` for graphs that are not dynamic INT8.
    pub fn of(entry: &GraphEntry) -> Option<Int8Path> {
        Int8Weights::of(entry).map(|w| Int8Path::choose(w, CpuInt8::detect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVX2: CpuInt8 = CpuInt8 {
        avx2: true,
        vnni: false,
        amx: false,
    };
    const VNNI: CpuInt8 = CpuInt8 {
        avx2: true,
        vnni: true,
        amx: false,
    };
    const AMX: CpuInt8 = CpuInt8 {
        avx2: true,
        vnni: true,
        amx: true,
    };

    #[test]
    fn exact_u8u8_only_for_full_range_weights_without_vnni() {
        use Int8Weights::*;
        let precise = |w, cpu| Int8Path::choose(w, cpu).precise_u8u8;
        assert!(precise(FullRange, AVX2));
        for cpu in [VNNI, AMX] {
            assert!(!precise(FullRange, cpu));
            assert!(!precise(ReduceRange, cpu));
        }
        assert!(!precise(ReduceRange, AVX2));
        assert!(!precise(Unsigned, AVX2));
        assert_eq!(Int8Path::choose(ReduceRange, AMX).kernel, "u8×s8 AMX");
        assert!(
            Int8Path::choose(FullRange, AVX2)
                .why
                .contains("AVX2, no VNNI")
        );
    }
}
