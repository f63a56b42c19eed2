use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::{CheckpointError, Result};

/// Which BLIP task head a checkpoint carries: the package contract's [`Head`]; what only a
/// checkpoint tells (architecture names, tensor names) is read by the functions below.
pub use blip_package::Head;

/// The head of a transformers architecture name (`architectures` in config.json).
pub fn head_from_architecture(a: &str) -> Option<Head> {
    match a {
        "BlipForConditionalGeneration" => Some(Head::Caption),
        "BlipForImageTextRetrieval" => Some(Head::Retrieval),
        "BlipForQuestionAnswering" => Some(Head::Vqa),
        _ => None,
    }
}

/// Guesses the head from tensor names (for `.pth` files and configs without `architectures`).
pub fn head_from_tensor_names<'a>(mut names: impl Iterator<Item = &'a str>) -> Option<Head> {
    let (mut itm, mut enc, mut dec) = (false, false, false);
    for n in names.by_ref() {
        itm |= n.starts_with("itm_head.");
        enc |= n.starts_with("text_encoder.");
        dec |= n.starts_with("text_decoder.");
    }
    match (itm, enc, dec) {
        (true, true, _) => Some(Head::Retrieval),
        (false, true, true) => Some(Head::Vqa),
        (false, false, true) => Some(Head::Caption),
        _ => None,
    }
}

/// `text_config` of a BLIP config.json; absent keys take transformers' defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub bos_token_id: i64,
    pub pad_token_id: i64,
    pub sep_token_id: i64,
}

/// `vision_config` of a BLIP config.json; absent keys take transformers' defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            vocab_size: 30524,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 512,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            bos_token_id: 30522,
            pad_token_id: 0,
            sep_token_id: 102,
        }
    }
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 384,
            patch_size: 16,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

/// Why a BLIP-2 captioning / VQA checkpoint is refused, in every door.
pub const BLIP2_GENERATION_NOT_CONVERTED: &str = "captioning and VQA (Blip2ForConditionalGeneration) are not converted yet; BLIP-2 image-text retrieval (Blip2ForImageTextRetrieval) is";

/// The error for a BLIP-2 or InstructBLIP config: names the model and its language model, and
/// says what is missing (BLIP-2 captioning and VQA are not converted yet; LLaMA/Vicuna language models and
/// InstructBLIP are not planned: docs/blip2-reference.md).
pub(crate) fn unsupported_family(
    path: &Path,
    text: &str,
    family: &str,
    architectures: &[String],
) -> CheckpointError {
    let language_model = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["text_config"]["model_type"].as_str().map(str::to_string))
        .unwrap_or_else(|| "an unnamed".to_string());
    let class = architectures
        .first()
        .cloned()
        .unwrap_or_else(|| family.to_string());
    let (model, reason) = if family.starts_with("instructblip") {
        (
            format!("InstructBLIP ({class}, {language_model} language model)"),
            "instruction-tuned BLIP-2, whose Q-Former also reads the prompt, is not converted"
                .to_string(),
        )
    } else if matches!(language_model.as_str(), "opt" | "t5") {
        (
            format!("BLIP-2 ({class}, {language_model} language model)"),
            BLIP2_GENERATION_NOT_CONVERTED.to_string(),
        )
    } else {
        (
            format!("BLIP-2 ({class}, {language_model} language model)"),
            "only OPT and Flan-T5 language models are planned for BLIP-2".to_string(),
        )
    };
    CheckpointError::UnsupportedModel {
        path: path.to_path_buf(),
        model,
        reason,
    }
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    text_config: Option<TextConfig>,
    #[serde(default)]
    vision_config: Option<VisionConfig>,
    /// ITC projection width (transformers' default 256).
    image_text_hidden_size: Option<usize>,
}

/// The parts of a BLIP configuration the converter needs.
#[derive(Debug, Clone, PartialEq)]
pub struct BlipConfig {
    pub head: Option<Head>,
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_text_hidden_size: usize,
}

impl BlipConfig {
    /// Reads a Hugging Face BLIP `config.json`.
    pub fn from_file(path: &Path) -> Result<BlipConfig> {
        let text = crate::read_json_text(path)?;
        let raw: RawConfig =
            serde_json::from_str(&text).map_err(|e| CheckpointError::BadConfig {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        match raw.model_type.as_deref() {
            Some("blip") => {}
            Some(family @ ("blip-2" | "blip_2" | "instructblip" | "instructblipvideo")) => {
                return Err(unsupported_family(path, &text, family, &raw.architectures));
            }
            other => {
                return Err(CheckpointError::UnknownModelType {
                    path: path.to_path_buf(),
                    found: other.unwrap_or("<missing>").to_string(),
                });
            }
        }
        let cfg = BlipConfig {
            head: raw
                .architectures
                .iter()
                .find_map(|a| head_from_architecture(a)),
            text: raw.text_config.unwrap_or_default(),
            vision: raw.vision_config.unwrap_or_default(),
            image_text_hidden_size: raw.image_text_hidden_size.unwrap_or(256),
        };
        cfg.validate()
            .map_err(|message| CheckpointError::BadConfig {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(cfg)
    }

    /// Internal consistency that the graphs rely on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.text;
        let v = &self.vision;
        for (what, n) in [
            ("text hidden_size", t.hidden_size),
            ("text intermediate_size", t.intermediate_size),
            ("text num_hidden_layers", t.num_hidden_layers),
            ("text vocab_size", t.vocab_size),
            ("text max_position_embeddings", t.max_position_embeddings),
            ("vision hidden_size", v.hidden_size),
            ("vision intermediate_size", v.intermediate_size),
            ("vision num_hidden_layers", v.num_hidden_layers),
            ("vision image_size", v.image_size),
            ("image_text_hidden_size", self.image_text_hidden_size),
        ] {
            if n == 0 {
                return Err(format!("{what} is 0"));
            }
        }
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(format!(
                "text hidden_size {} is not divisible by num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(format!(
                "vision hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        for (what, act) in [("text", &t.hidden_act), ("vision", &v.hidden_act)] {
            if act != "gelu" {
                return Err(format!(
                    "{what} hidden_act {act:?} is not supported (BLIP uses exact \"gelu\")"
                ));
            }
        }
        Ok(())
    }
}

/// Infers the configuration of an original salesforce/BLIP checkpoint (already renamed to HF keys) from
/// its tensor shapes, with BLIP's fixed choices: 64-wide attention heads (ViT-B 12, ViT-L 16, BERT-base 12),
/// ViT LayerNorm eps 1e-6 (timm), BERT eps 1e-12, and the grid the position embedding was trained at.
pub fn infer_config_from_shapes(
    shapes: &BTreeMap<String, Vec<usize>>,
    head: Head,
) -> std::result::Result<BlipConfig, String> {
    let get = |k: &str| shapes.get(k).ok_or_else(|| format!("missing tensor {k}"));
    let count_layers = |prefix: &str, suffix: &str| {
        (0..)
            .take_while(|i| shapes.contains_key(&format!("{prefix}{i}{suffix}")))
            .count()
    };
    let patch = get("vision_model.embeddings.patch_embedding.weight")?;
    let pos = get("vision_model.embeddings.position_embedding")?;
    let fc1 = get("vision_model.encoder.layers.0.mlp.fc1.weight")?;
    if patch.len() != 4 || pos.len() != 3 || fc1.len() != 2 {
        return Err("unexpected vision tensor ranks".into());
    }
    let v_hidden = patch[0];
    let grid = (pos[1].saturating_sub(1) as f64).sqrt().round() as usize;
    if pos[1] < 2 || grid * grid + 1 != pos[1] {
        return Err(format!(
            "position embedding has {} rows, not a square grid + 1",
            pos[1]
        ));
    }
    let heads_for = |hidden: usize, what: &str| {
        if hidden.is_multiple_of(64) {
            Ok(hidden / 64)
        } else {
            Err(format!(
                "{what} width {hidden} is not a multiple of 64; pass --config with the model's config.json"
            ))
        }
    };
    let vision = VisionConfig {
        hidden_size: v_hidden,
        intermediate_size: fc1[0],
        num_hidden_layers: count_layers("vision_model.encoder.layers.", ".mlp.fc1.weight"),
        num_attention_heads: heads_for(v_hidden, "vision")?,
        image_size: grid * patch[2],
        patch_size: patch[2],
        hidden_act: "gelu".into(),
        layer_norm_eps: 1e-6,
    };
    let text_prefix = match head {
        Head::Caption => "text_decoder.bert.",
        Head::Retrieval | Head::Vqa => "text_encoder.",
    };
    let words = get(&format!("{text_prefix}embeddings.word_embeddings.weight"))?;
    let positions = get(&format!(
        "{text_prefix}embeddings.position_embeddings.weight"
    ))?;
    let inter = get(&format!(
        "{text_prefix}encoder.layer.0.intermediate.dense.weight"
    ))?;
    for (what, t) in [
        ("word embeddings", words),
        ("position embeddings", positions),
        ("intermediate dense weight", inter),
    ] {
        if t.len() != 2 || t.contains(&0) {
            return Err(format!(
                "text {what} have shape {t:?}, expected 2 non-zero dims"
            ));
        }
    }
    let t_hidden = words[1];
    let text = TextConfig {
        vocab_size: words[0],
        hidden_size: t_hidden,
        intermediate_size: inter[0],
        num_hidden_layers: count_layers(
            &format!("{text_prefix}encoder.layer."),
            ".intermediate.dense.weight",
        ),
        num_attention_heads: heads_for(t_hidden, "text")?,
        max_position_embeddings: positions[0],
        ..TextConfig::default()
    };
    let image_text_hidden_size = shapes
        .get("vision_proj.weight")
        .and_then(|s| s.first().copied())
        .unwrap_or(256);
    let cfg = BlipConfig {
        head: Some(head),
        text,
        vision,
        image_text_hidden_size,
    };
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BLIP-2 and InstructBLIP configs are refused by name, with their language model.
    #[test]
    fn blip_2_and_instructblip_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let cases = [
            (
                r#"{"model_type": "blip-2", "architectures": ["Blip2ForConditionalGeneration"], "text_config": {"model_type": "opt"}}"#,
                "BLIP-2 (Blip2ForConditionalGeneration, opt language model) is not supported: captioning and VQA",
            ),
            (
                r#"{"model_type": "blip-2", "architectures": ["Blip2ForConditionalGeneration"], "text_config": {"model_type": "llama"}}"#,
                "BLIP-2 (Blip2ForConditionalGeneration, llama language model) is not supported: only OPT and Flan-T5",
            ),
            (
                r#"{"model_type": "instructblip", "architectures": ["InstructBlipForConditionalGeneration"], "text_config": {"model_type": "llama"}}"#,
                "InstructBLIP (InstructBlipForConditionalGeneration, llama language model) is not supported",
            ),
            (
                r#"{"model_type": "clip"}"#,
                "model_type is \"clip\", not \"blip\"",
            ),
        ];
        for (config, want) in cases {
            std::fs::write(&path, config).unwrap();
            let err = BlipConfig::from_file(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{config}: {err}");
            assert!(err.contains("config.json"), "{err}");
        }
    }

    #[test]
    fn absent_keys_take_transformers_defaults() {
        let dir = std::env::temp_dir().join(format!("blip-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, r#"{"model_type": "blip", "text_config": {"num_attention_heads": 12}, "architectures": ["BlipForImageTextRetrieval"]}"#).unwrap();
        let cfg = BlipConfig::from_file(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cfg.head, Some(Head::Retrieval));
        assert_eq!(
            (
                cfg.text.num_attention_heads,
                cfg.text.vocab_size,
                cfg.text.layer_norm_eps
            ),
            (12, 30524, 1e-12)
        );
        assert_eq!(
            (cfg.vision.image_size, cfg.vision.layer_norm_eps),
            (384, 1e-5)
        );
        assert_eq!(cfg.image_text_hidden_size, 256);
        assert_eq!(
            TextConfig::default().num_attention_heads,
            8,
            "transformers' (wrong for base) default"
        );
    }
}
