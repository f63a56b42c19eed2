//! Zero-shot tagging: each label scored against an image by ITC similarity, the label prompted as
//! CLIP-style zero-shot classification does ([`TAG_PROMPT`]), defined once for every door.

use ndarray::{ArrayView2, ArrayView3};

use crate::{Result, TaskError};

/// The text a label is embedded as: `{label}` is replaced by the label.
pub const TAG_PROMPT: &str = "a photo of {label}";

/// The text embedded for `label` ([`TAG_PROMPT`] filled in).
pub fn tag_prompt(label: &str) -> String {
    TAG_PROMPT.replace("{label}", label)
}

/// Which labels a tagging keeps (resolved by [`crate::request::TagRequest::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TagOptions {
    /// The `k` best labels.
    TopK(usize),
    /// Every label whose similarity is at least this.
    Threshold(f32),
}

/// One label of an image's tags: the label and its ITC similarity (cosine of the embeddings).
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    pub label: String,
    pub score: f32,
}

/// The tags of each image: ITC similarity ([`crate::itc_similarity`]) of image `i`'s embedding
/// (`image_embeds [n, V, E]`, L2-normalised) to each label's text embedding (`label_embeds` row `j` for `labels[j]`, embedded as
/// [`tag_prompt`]), kept by `options`, sorted by score descending, ties by label.
pub fn zero_shot_tags(
    image_embeds: ArrayView3<'_, f32>,
    label_embeds: ArrayView2<'_, f32>,
    labels: &[String],
    options: TagOptions,
) -> Result<Vec<Vec<Tag>>> {
    if label_embeds.nrows() != labels.len() {
        return Err(TaskError::Input(format!(
            "{} label embeddings for {} labels",
            label_embeds.nrows(),
            labels.len()
        )));
    }
    let sims = crate::itc_similarities(image_embeds, label_embeds, "label")?;
    Ok(sims
        .rows()
        .into_iter()
        .map(|row| {
            let mut tags: Vec<Tag> = labels
                .iter()
                .zip(row.iter())
                .map(|(label, &score)| Tag {
                    label: label.clone(),
                    score,
                })
                .collect();
            tags.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.label.cmp(&b.label)));
            match options {
                TagOptions::TopK(k) => tags.truncate(k),
                TagOptions::Threshold(t) => tags.retain(|tag| tag.score >= t),
            }
            tags
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn sorted_by_score_then_label_and_kept_by_the_options() {
        let images = array![[[1.0f32, 0.0]], [[0.0, 1.0]]];
        let labels: Vec<String> = ["b", "a", "c"].map(String::from).to_vec();
        let text = array![[0.6f32, 0.8], [0.6, 0.8], [1.0, 0.0]];
        let tags =
            zero_shot_tags(images.view(), text.view(), &labels, TagOptions::TopK(3)).unwrap();
        let order: Vec<&str> = tags[0].iter().map(|t| t.label.as_str()).collect();
        assert_eq!(order, ["c", "a", "b"]);
        assert_eq!(tags[1][0].score, 0.8);
        let kept = zero_shot_tags(
            images.view(),
            text.view(),
            &labels,
            TagOptions::Threshold(0.7),
        )
        .unwrap();
        assert_eq!(kept[0].len(), 1);
        assert_eq!(kept[1].len(), 2);
        assert_eq!(tag_prompt("cat"), "a photo of cat");
    }
}
