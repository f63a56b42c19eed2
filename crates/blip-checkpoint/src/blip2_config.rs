//! A Hugging Face BLIP-2 `config.json` (`model_type "blip-2"`): what the BLIP-2 converter needs,
//! with transformers' defaults for absent keys (`configuration_blip_2.py`; docs/blip2-reference.md §1).

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{VisionConfig, unsupported_family};
use crate::{CheckpointError, Result};

/// Which BLIP-2 model a checkpoint is, from `architectures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blip2Architecture {
    /// `Blip2ForImageTextRetrieval`: vision tower, Q-Former, ITC projections and the ITM head.
    Retrieval,
    /// `Blip2ForConditionalGeneration`: vision tower, Q-Former, projection and an OPT or Flan-T5
    /// language model (captioning and VQA).
    ConditionalGeneration,
}

impl Blip2Architecture {
    pub fn class_name(self) -> &'static str {
        match self {
            Blip2Architecture::Retrieval => "Blip2ForImageTextRetrieval",
            Blip2Architecture::ConditionalGeneration => "Blip2ForConditionalGeneration",
        }
    }
}

/// `qformer_config` of a BLIP-2 config.json.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct QFormerConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// Layers `i` with `i % cross_attention_frequency == 0` cross-attend to the image.
    pub cross_attention_frequency: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// True for retrieval: the layers carry a text FFN and the model text embeddings.
    pub use_qformer_text_input: bool,
    pub pad_token_id: i64,
}

impl Default for QFormerConfig {
    fn default() -> Self {
        QFormerConfig {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 512,
            cross_attention_frequency: 2,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            use_qformer_text_input: false,
            pad_token_id: 0,
        }
    }
}

impl QFormerConfig {
    /// Whether layer `i` cross-attends to the image.
    pub fn has_cross_attention(&self, layer: usize) -> bool {
        layer.is_multiple_of(self.cross_attention_frequency)
    }
}

#[derive(Debug, Deserialize)]
struct RawBlip2Config {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    vision_config: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    qformer_config: Option<QFormerConfig>,
    #[serde(default)]
    text_config: Option<Value>,
    num_query_tokens: Option<usize>,
    image_text_hidden_size: Option<usize>,
    image_token_index: Option<i64>,
}

/// The parts of a BLIP-2 configuration the converter needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Blip2Config {
    pub architecture: Blip2Architecture,
    pub vision: VisionConfig,
    pub qformer: QFormerConfig,
    pub num_query_tokens: usize,
    /// ITC projection width (retrieval).
    pub image_text_hidden_size: usize,
    /// `text_config.model_type`: `opt` or `t5` (a missing text_config is OPT, as in transformers).
    pub language_model: String,
    /// Set when the processor puts `<image>` placeholders before the text (newer Hub configs).
    pub image_token_index: Option<i64>,
}

/// `Blip2VisionConfig`'s defaults (EVA ViT-g/14), which differ from BLIP's ViT.
fn vision_defaults() -> Value {
    json!({
        "hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39,
        "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
        "hidden_act": "gelu", "layer_norm_eps": 1e-6,
    })
}

impl Blip2Config {
    /// Whether the config.json at `path` is a BLIP-2 one (`model_type "blip-2"`), which
    /// [`Blip2Config::from_file`] reads; anything else is left to the BLIP reader.
    pub fn claims(path: &Path) -> Result<bool> {
        #[derive(Deserialize)]
        struct ModelType {
            model_type: Option<String>,
        }
        let text = crate::read_json_text(path)?;
        let raw: ModelType =
            serde_json::from_str(&text).map_err(|e| CheckpointError::BadConfig {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(matches!(
            raw.model_type.as_deref(),
            Some("blip-2" | "blip_2")
        ))
    }

    /// Reads a Hugging Face BLIP-2 `config.json`. InstructBLIP, a language model other than OPT or
    /// Flan-T5, and a vision tower without q/v biases are refused by name.
    pub fn from_file(path: &Path) -> Result<Blip2Config> {
        let text = crate::read_json_text(path)?;
        let bad = |message: String| CheckpointError::BadConfig {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawBlip2Config = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let family = raw.model_type.as_deref().unwrap_or("<missing>");
        match family {
            "blip-2" | "blip_2" => {}
            "instructblip" | "instructblipvideo" => {
                return Err(unsupported_family(path, &text, family, &raw.architectures));
            }
            other => {
                return Err(bad(format!(
                    "model_type is {other:?}, not \"blip-2\" (a BLIP-2 checkpoint)"
                )));
            }
        }
        let language_model = raw
            .text_config
            .as_ref()
            .and_then(|t| t["model_type"].as_str())
            .unwrap_or("opt")
            .to_string();
        if !matches!(language_model.as_str(), "opt" | "t5") {
            return Err(unsupported_family(path, &text, family, &raw.architectures));
        }
        let architecture = match raw.architectures.first().map(String::as_str) {
            Some("Blip2ForImageTextRetrieval") => Blip2Architecture::Retrieval,
            Some("Blip2ForConditionalGeneration") | None => {
                Blip2Architecture::ConditionalGeneration
            }
            Some(other) => {
                return Err(bad(format!(
                    "architecture {other:?} is not a BLIP-2 model blip-onnx converts \
                     (Blip2ForImageTextRetrieval, Blip2ForConditionalGeneration)"
                )));
            }
        };
        let mut vision = vision_defaults();
        if let (Some(map), Value::Object(into)) = (raw.vision_config, &mut vision) {
            for (k, v) in map {
                into.insert(k, v);
            }
        }
        if vision["qkv_bias"] == Value::Bool(false) {
            return Err(bad(
                "vision_config.qkv_bias is false; every BLIP-2 vision tower has q/v biases".into(),
            ));
        }
        let vision: VisionConfig =
            serde_json::from_value(vision).map_err(|e| bad(format!("vision_config: {e}")))?;
        let cfg = Blip2Config {
            architecture,
            vision,
            qformer: raw.qformer_config.unwrap_or_default(),
            num_query_tokens: raw.num_query_tokens.unwrap_or(32),
            image_text_hidden_size: raw.image_text_hidden_size.unwrap_or(256),
            language_model,
            image_token_index: raw.image_token_index,
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Internal consistency that the graphs rely on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let (v, q) = (&self.vision, &self.qformer);
        for (what, n) in [
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_hidden_layers", v.num_hidden_layers),
            ("vision_config.image_size", v.image_size),
            ("qformer_config.hidden_size", q.hidden_size),
            ("qformer_config.intermediate_size", q.intermediate_size),
            ("qformer_config.num_hidden_layers", q.num_hidden_layers),
            ("qformer_config.vocab_size", q.vocab_size),
            (
                "qformer_config.max_position_embeddings",
                q.max_position_embeddings,
            ),
            (
                "qformer_config.cross_attention_frequency",
                q.cross_attention_frequency,
            ),
            ("num_query_tokens", self.num_query_tokens),
            ("image_text_hidden_size", self.image_text_hidden_size),
        ] {
            if n == 0 {
                return Err(format!("{what} is 0"));
            }
        }
        for (what, d, h) in [
            ("vision_config", v.hidden_size, v.num_attention_heads),
            ("qformer_config", q.hidden_size, q.num_attention_heads),
        ] {
            if h == 0 || !d.is_multiple_of(h) {
                return Err(format!(
                    "{what}.hidden_size {d} is not divisible by num_attention_heads {h}"
                ));
            }
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        for (what, act) in [
            ("vision_config", &v.hidden_act),
            ("qformer_config", &q.hidden_act),
        ] {
            if act != "gelu" {
                return Err(format!(
                    "{what}.hidden_act {act:?} is not supported (BLIP-2 uses exact \"gelu\")"
                ));
            }
        }
        if self.architecture == Blip2Architecture::Retrieval && !q.use_qformer_text_input {
            return Err(
                "qformer_config.use_qformer_text_input is false, but Blip2ForImageTextRetrieval \
                 encodes text through the Q-Former"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Result<Blip2Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        Blip2Config::from_file(&path)
    }

    #[test]
    fn absent_keys_take_blip2_defaults_not_blip_ones() {
        let cfg = read(r#"{"model_type": "blip-2", "architectures": ["Blip2ForConditionalGeneration"], "text_config": {"model_type": "opt"}}"#).unwrap();
        assert_eq!(cfg.architecture, Blip2Architecture::ConditionalGeneration);
        assert_eq!(
            (
                cfg.vision.hidden_size,
                cfg.vision.num_hidden_layers,
                cfg.vision.patch_size
            ),
            (1408, 39, 14)
        );
        assert_eq!(cfg.vision.layer_norm_eps, 1e-6);
        assert_eq!((cfg.qformer.hidden_size, cfg.num_query_tokens), (768, 32));
        assert!(cfg.qformer.has_cross_attention(10) && !cfg.qformer.has_cross_attention(11));
    }

    #[test]
    fn unsupported_models_and_bad_configs_are_refused_by_name() {
        for (json, expected) in [
            (
                r#"{"model_type": "blip-2", "architectures": ["Blip2ForConditionalGeneration"], "text_config": {"model_type": "llama"}}"#,
                "BLIP-2 (Blip2ForConditionalGeneration, llama language model) is not supported: only OPT and Flan-T5",
            ),
            (
                r#"{"model_type": "instructblip", "architectures": ["InstructBlipForConditionalGeneration"], "text_config": {"model_type": "t5"}}"#,
                "InstructBLIP (InstructBlipForConditionalGeneration, t5 language model) is not supported",
            ),
            (
                r#"{"model_type": "blip", "architectures": ["BlipForImageTextRetrieval"]}"#,
                "model_type is \"blip\", not \"blip-2\"",
            ),
            (
                r#"{"model_type": "blip-2", "architectures": ["Blip2ForImageTextRetrieval"], "qformer_config": {"use_qformer_text_input": false}}"#,
                "qformer_config.use_qformer_text_input is false",
            ),
            (
                r#"{"model_type": "blip-2", "architectures": ["Blip2ForImageTextRetrieval"], "qformer_config": {"use_qformer_text_input": true}, "vision_config": {"qkv_bias": false}}"#,
                "vision_config.qkv_bias is false",
            ),
            (
                r#"{"model_type": "blip-2", "architectures": ["Blip2ForImageTextRetrieval"], "qformer_config": {"use_qformer_text_input": true, "num_attention_heads": 5}}"#,
                "qformer_config.hidden_size 768 is not divisible by num_attention_heads 5",
            ),
            (
                r#"{"model_type": "blip-2", "architectures": ["Blip2Model"]}"#,
                "architecture \"Blip2Model\" is not a BLIP-2 model blip-onnx converts",
            ),
        ] {
            let e = read(json).unwrap_err().to_string();
            assert!(e.contains(expected), "{json}\n→ {e}");
        }
    }
}
