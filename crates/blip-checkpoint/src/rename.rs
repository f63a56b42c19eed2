/// Renames a salesforce/BLIP state-dict key to the Hugging Face layout, as `rename_key` in
/// transformers' `convert_blip_original_pytorch_to_hf.py` does (text keys are already identical).
pub fn original_to_hf(key: &str) -> String {
    let mut k = key.to_string();
    if let Some(rest) = k.strip_prefix("visual_encoder.") {
        k = format!("vision_model.encoder.{rest}");
    } else {
        return k;
    }
    for (from, to) in [
        (".blocks.", ".layers."),
        (".attn.", ".self_attn."),
        (".norm1.", ".layer_norm1."),
        (".norm2.", ".layer_norm2."),
        ("vision_model.encoder.norm.", "vision_model.post_layernorm."),
        (
            "vision_model.encoder.patch_embed.proj.",
            "vision_model.embeddings.patch_embedding.",
        ),
        (
            "vision_model.encoder.pos_embed",
            "vision_model.embeddings.position_embedding",
        ),
        (
            "vision_model.encoder.cls_token",
            "vision_model.embeddings.class_embedding",
        ),
        (".self_attn.proj.", ".self_attn.projection."),
    ] {
        k = k.replace(from, to);
    }
    k
}

#[cfg(test)]
mod tests {
    use super::original_to_hf;

    #[test]
    fn renames_vision_keys_like_the_hf_conversion_script() {
        let cases = [
            (
                "visual_encoder.cls_token",
                "vision_model.embeddings.class_embedding",
            ),
            (
                "visual_encoder.pos_embed",
                "vision_model.embeddings.position_embedding",
            ),
            (
                "visual_encoder.patch_embed.proj.weight",
                "vision_model.embeddings.patch_embedding.weight",
            ),
            (
                "visual_encoder.blocks.3.attn.qkv.bias",
                "vision_model.encoder.layers.3.self_attn.qkv.bias",
            ),
            (
                "visual_encoder.blocks.3.attn.proj.weight",
                "vision_model.encoder.layers.3.self_attn.projection.weight",
            ),
            (
                "visual_encoder.blocks.11.norm1.weight",
                "vision_model.encoder.layers.11.layer_norm1.weight",
            ),
            (
                "visual_encoder.blocks.0.norm2.bias",
                "vision_model.encoder.layers.0.layer_norm2.bias",
            ),
            (
                "visual_encoder.blocks.0.mlp.fc1.weight",
                "vision_model.encoder.layers.0.mlp.fc1.weight",
            ),
            (
                "visual_encoder.norm.weight",
                "vision_model.post_layernorm.weight",
            ),
            (
                "text_decoder.bert.encoder.layer.0.attention.self.query.weight",
                "text_decoder.bert.encoder.layer.0.attention.self.query.weight",
            ),
            (
                "visual_encoder_m.blocks.0.attn.qkv.weight",
                "visual_encoder_m.blocks.0.attn.qkv.weight",
            ),
        ];
        for (from, to) in cases {
            assert_eq!(original_to_hf(from), to, "{from}");
        }
    }
}
