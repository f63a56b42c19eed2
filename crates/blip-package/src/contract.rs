//! The package contract in one place: which task heads there are, which graphs each head has, and
//! the names of every graph input and output. The converter writes these names, the engines
//! (native ONNX Runtime, the browser) feed and read them, and the checks compare against them;
//! each value is spelled here once. Every string is part of the on-disk format (manifest keys,
//! file stems, ONNX value names): changing one breaks every package already written.

use std::fmt;
use std::str::FromStr;

use crate::Package;

/// `Serialize`/`Deserialize` of a manifest enum through its `name()` and `ALL` ([`named`]).
macro_rules! serde_by_name {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                named(d, &<$t>::ALL, |v| v.name())
            }
        }
    };
}

/// Which model family a package holds (`family` in `blip.json`; absent means BLIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Family {
    /// BLIP (`model_type "blip"`).
    #[default]
    Blip,
    /// BLIP-2 (`model_type "blip-2"`): a Q-Former of learned queries between the vision tower and
    /// the text side; retrieval embeds an image as one vector per query.
    Blip2,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Blip, Family::Blip2];

    /// The manifest's spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Family::Blip => "blip",
            Family::Blip2 => "blip-2",
        }
    }

    /// The token an ITM text starts with (`tokens.enc` in the manifest): BLIP's own [ENC];
    /// BLIP-2's Q-Former reads the text as tokenized, [CLS] first.
    pub const fn itm_first_token(self) -> &'static str {
        match self {
            Family::Blip => "[ENC]",
            Family::Blip2 => "[CLS]",
        }
    }

    /// For `skip_serializing_if`: BLIP manifests stay as they were before the field existed.
    pub fn is_blip(&self) -> bool {
        *self == Family::Blip
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

serde_by_name!(Family);

/// Which BLIP task head a package (or a checkpoint) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Head {
    /// `BlipForConditionalGeneration`: vision encoder + text decoder.
    Caption,
    /// `BlipForImageTextRetrieval`: vision encoder + text encoder + ITC projections + ITM head.
    Retrieval,
    /// `BlipForQuestionAnswering`: vision encoder + question encoder + answer decoder.
    Vqa,
}

impl Head {
    /// Every head, in the order error messages list them.
    pub const ALL: [Head; 3] = [Head::Caption, Head::Retrieval, Head::Vqa];

    /// The manifest's spelling (`head` in `blip.json`).
    pub const fn name(self) -> &'static str {
        match self {
            Head::Caption => "caption",
            Head::Retrieval => "retrieval",
            Head::Vqa => "vqa",
        }
    }

    /// A head by name, accepting `itm` for retrieval (the name users also know it by).
    pub fn from_name(s: &str) -> Option<Head> {
        match s {
            "itm" => Some(Head::Retrieval),
            _ => Head::from_manifest_name(s),
        }
    }

    /// A head by the manifest's spelling only ([`Head::name`], no aliases): what a `blip.json`
    /// may say.
    pub fn from_manifest_name(s: &str) -> Option<Head> {
        Head::ALL.into_iter().find(|h| h.name() == s)
    }

    /// The graphs a package of this head has, in the order the converter writes them.
    pub const fn graphs(self) -> &'static [Graph] {
        match self {
            Head::Caption => &[Graph::VisionEncoder, Graph::CrossKv, Graph::Decoder],
            Head::Retrieval => &[Graph::VisionEncoder, Graph::TextEncoder, Graph::Itm],
            Head::Vqa => &[
                Graph::VisionEncoder,
                Graph::VqaQuestionEncoder,
                Graph::CrossKv,
                Graph::Decoder,
            ],
        }
    }
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown head {0:?} (expected caption, retrieval or vqa)")]
pub struct UnknownHead(pub String);

// In `blip.json` a head is its manifest name (`Head::name`); any other string is refused when
// the manifest is parsed, naming the heads there are.
serde_by_name!(Head);

/// The value of `all` that `name_of` spells as the string `d` holds; an error naming the string
/// and every spelling otherwise (the manifest's enums: [`Head`], [`Precision`]).
fn named<'de, D: serde::Deserializer<'de>, T: Copy>(
    d: D,
    all: &[T],
    name_of: fn(&T) -> &'static str,
) -> Result<T, D::Error> {
    let name = <String as serde::Deserialize>::deserialize(d)?;
    all.iter()
        .find(|v| name_of(v) == name)
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(name_of).collect();
            serde::de::Error::custom(format!("{name:?} is not one of {}", names.join(", ")))
        })
}

impl FromStr for Head {
    type Err = UnknownHead;

    /// As [`Head::from_name`] (`itm` is retrieval).
    fn from_str(s: &str) -> Result<Head, UnknownHead> {
        Head::from_name(s).ok_or_else(|| UnknownHead(s.to_string()))
    }
}

/// The number format of a graph's weights (`precision` of a graph in `blip.json`), or of a
/// package: its graphs' one precision, or [`Precision::Mixed`] when they differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Precision {
    /// What the converter writes.
    Fp32,
    /// Dynamic INT8 (`blip-onnx quantize --precision int8`).
    Int8,
    /// Weight-only INT4 (`--precision int4`).
    Int4,
    /// FP16 weights and activations (`--precision fp16`).
    Fp16,
    /// A package whose graphs differ (each graph's entry says which); never a graph's.
    Mixed,
}

impl Precision {
    pub const ALL: [Precision; 5] = [
        Precision::Fp32,
        Precision::Int8,
        Precision::Int4,
        Precision::Fp16,
        Precision::Mixed,
    ];

    /// The manifest's spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
            Precision::Int4 => "int4",
            Precision::Fp16 => "fp16",
            Precision::Mixed => "mixed",
        }
    }

    /// A package's precision from its graphs': theirs when they share one, else mixed (and
    /// FP32 for a package without graphs).
    pub fn of_package(graphs: impl IntoIterator<Item = Precision>) -> Precision {
        let mut graphs = graphs.into_iter();
        let Some(first) = graphs.next() else {
            return Precision::Fp32;
        };
        if graphs.all(|p| p == first) {
            first
        } else {
            Precision::Mixed
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// In `blip.json` a precision is its name (`Precision::name`); any other string is refused when
// the manifest is parsed, naming the precisions there are.
serde_by_name!(Precision);

/// One graph of a package: its role, the manifest's key under `graphs` and the stem of the file
/// the converter writes (`{name}.onnx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Graph {
    /// `pixel_values` → image states (and ITC image embeddings for retrieval).
    VisionEncoder,
    /// Retrieval: unimodal text encoder → ITC text embeddings.
    TextEncoder,
    /// Retrieval: image-grounded text encoder → ITM logits.
    Itm,
    /// VQA: image-grounded question encoder → question states.
    VqaQuestionEncoder,
    /// Every decoder layer's cross-attention K/V, once per image (or question).
    CrossKv,
    /// One KV-cached decoding step.
    Decoder,
}

impl Graph {
    /// Every graph, in the order a package lists them.
    pub const ALL: [Graph; 6] = [
        Graph::VisionEncoder,
        Graph::TextEncoder,
        Graph::Itm,
        Graph::VqaQuestionEncoder,
        Graph::CrossKv,
        Graph::Decoder,
    ];

    /// The manifest key and file stem.
    pub const fn name(self) -> &'static str {
        match self {
            Graph::VisionEncoder => "vision_encoder",
            Graph::TextEncoder => "text_encoder",
            Graph::Itm => "itm",
            Graph::VqaQuestionEncoder => "vqa_question_encoder",
            Graph::CrossKv => "cross_kv",
            Graph::Decoder => "decoder",
        }
    }

    pub fn from_name(s: &str) -> Option<Graph> {
        Graph::ALL.into_iter().find(|g| g.name() == s)
    }
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown graph {0:?} (expected vision_encoder, text_encoder, itm, vqa_question_encoder, cross_kv or decoder)"
)]
pub struct UnknownGraph(pub String);

impl FromStr for Graph {
    type Err = UnknownGraph;

    fn from_str(s: &str) -> Result<Graph, UnknownGraph> {
        Graph::from_name(s).ok_or_else(|| UnknownGraph(s.to_string()))
    }
}

/// Graph input and output names.
pub mod io {
    /// Vision encoder input `[batch, 3, S, S]`.
    pub const PIXEL_VALUES: &str = "pixel_values";
    /// Text token ids `[batch, sequence]` (text encoders, the decoder).
    pub const INPUT_IDS: &str = "input_ids";
    /// Text padding mask `[batch, sequence]`; the decoder's covers past + fed positions.
    pub const ATTENTION_MASK: &str = "attention_mask";
    /// Decoder position ids `[batch, sequence]`.
    pub const POSITION_IDS: &str = "position_ids";
    /// States cross-attended to `[batch, encoder_sequence, D]` (grounded encoders, cross K/V).
    pub const ENCODER_HIDDEN_STATES: &str = "encoder_hidden_states";
    /// Decoder mask over the cross-attended states, once per image `[images, encoder_sequence]`.
    pub const ENCODER_ATTENTION_MASK: &str = "encoder_attention_mask";
    /// Decoder input `[images, group]`: the decoder rows that cross-attend to each image's K/V,
    /// side by side (a beam per column; a short group repeats one of its rows).
    pub const CROSS_GROUPS: &str = "cross_groups";
    /// Decoder input `[rows]`: each row's place in [`CROSS_GROUPS`], flattened
    /// (`image · group + j`).
    pub const CROSS_SLOTS: &str = "cross_slots";

    /// Hidden states (vision encoder, text encoder, VQA question encoder).
    pub const LAST_HIDDEN_STATE: &str = "last_hidden_state";
    /// Retrieval vision encoder: normalised ITC image embeddings `[batch, E]`.
    pub const IMAGE_EMBEDS: &str = "image_embeds";
    /// Retrieval text encoder: normalised ITC text embeddings `[batch, E]`.
    pub const TEXT_EMBEDS: &str = "text_embeds";
    /// ITM graph: `[batch, 2]` (no match, match).
    pub const ITM_LOGITS: &str = "itm_logits";
    /// Decoder: `[batch, sequence, vocab]`.
    pub const LOGITS: &str = "logits";

    /// Prefix of the decoder's self-attention cache inputs ([`past_key`], [`past_value`]).
    pub const PAST_PREFIX: &str = "past_key_values.";
    /// Prefix of the decoder's self-attention cache outputs ([`present_key`], [`present_value`]).
    pub const PRESENT_PREFIX: &str = "present.";
    /// Prefix of the cross K/V (outputs of `cross_kv`, inputs of the decoder).
    pub const CROSS_PREFIX: &str = "cross_key_values.";

    /// Decoder input: layer `i`'s cached self-attention keys.
    pub fn past_key(i: usize) -> String {
        format!("{PAST_PREFIX}{i}.key")
    }

    /// Decoder input: layer `i`'s cached self-attention values.
    pub fn past_value(i: usize) -> String {
        format!("{PAST_PREFIX}{i}.value")
    }

    /// Decoder output: layer `i`'s keys after this step (the next step's [`past_key`]).
    pub fn present_key(i: usize) -> String {
        format!("{PRESENT_PREFIX}{i}.key")
    }

    /// Decoder output: layer `i`'s values after this step (the next step's [`past_value`]).
    pub fn present_value(i: usize) -> String {
        format!("{PRESENT_PREFIX}{i}.value")
    }

    /// `cross_kv` output and decoder input: layer `i`'s cross-attention keys.
    pub fn cross_key(i: usize) -> String {
        format!("{CROSS_PREFIX}{i}.key")
    }

    /// `cross_kv` output and decoder input: layer `i`'s cross-attention values.
    pub fn cross_value(i: usize) -> String {
        format!("{CROSS_PREFIX}{i}.value")
    }
}

/// The decoder's sizes, from the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderShape {
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

impl DecoderShape {
    pub fn of(package: &Package) -> DecoderShape {
        let m = &package.manifest.model;
        DecoderShape {
            layers: m.text_layers,
            heads: m.text_heads,
            head_dim: m.text_hidden_size / m.text_heads.max(1),
            vocab: m.vocab_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values are the on-disk format: written down here once more, literally.
    #[test]
    fn names_are_the_package_format() {
        let heads: Vec<&str> = Head::ALL.iter().map(|h| h.name()).collect();
        assert_eq!(heads, ["caption", "retrieval", "vqa"]);
        let graphs: Vec<&str> = Graph::ALL.iter().map(|g| g.name()).collect();
        assert_eq!(
            graphs,
            [
                "vision_encoder",
                "text_encoder",
                "itm",
                "vqa_question_encoder",
                "cross_kv",
                "decoder"
            ]
        );
        assert_eq!(io::past_key(3), "past_key_values.3.key");
        assert_eq!(io::past_value(0), "past_key_values.0.value");
        assert_eq!(io::present_key(11), "present.11.key");
        assert_eq!(io::present_value(2), "present.2.value");
        assert_eq!(io::cross_key(1), "cross_key_values.1.key");
        assert_eq!(io::cross_value(1), "cross_key_values.1.value");
    }

    #[test]
    fn heads_parse() {
        for h in Head::ALL {
            assert_eq!(h.name().parse::<Head>(), Ok(h));
            assert_eq!(Head::from_manifest_name(h.name()), Some(h));
            assert_eq!(h.to_string(), h.name());
        }
        assert_eq!(Head::from_name("itm"), Some(Head::Retrieval));
        assert_eq!("itm".parse::<Head>(), Ok(Head::Retrieval));
        assert_eq!(Head::from_manifest_name("itm"), None);
        let err = "vqa2".parse::<Head>().unwrap_err().to_string();
        assert!(
            err.contains("\"vqa2\"") && err.contains("retrieval"),
            "{err}"
        );
        for g in Graph::ALL {
            assert_eq!(g.name().parse::<Graph>(), Ok(g));
        }
        assert!("question_encoder".parse::<Graph>().is_err());
    }

    #[test]
    fn every_head_has_the_vision_encoder_first() {
        for h in Head::ALL {
            assert_eq!(h.graphs().first(), Some(&Graph::VisionEncoder), "{h}");
        }
        assert_eq!(
            Head::Caption.graphs(),
            [Graph::VisionEncoder, Graph::CrossKv, Graph::Decoder]
        );
    }
}
