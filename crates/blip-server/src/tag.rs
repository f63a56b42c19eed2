//! `POST /v1/tag`: zero-shot tags of each image (retrieval package), by the task layer's
//! `zero_shot_tags` over the engine's image and label embeddings, as `blip-onnx tag` does.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use blip_package::Head;
use blip_runtime::request;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::admission;
use crate::engine::{Done, Work};
use crate::error::{ApiError, ItemError, TaskErrors};
use crate::input;
use crate::state::AppState;

/// Zero-shot tags: each label scored by the ITC similarity of the image to "a photo of {label}".
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagBody {
    /// Images as base64 or `data:image/...;base64,` URIs.
    #[serde(default)]
    pub images: Vec<String>,
    /// Labels to score (at most 1024, each non-empty and distinct).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Keep the `top_k` best labels (default 5); not with `threshold`.
    pub top_k: Option<usize>,
    /// Keep the labels scoring at least this (-1 to 1); not with `top_k`.
    pub threshold: Option<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct TagScore {
    pub label: String,
    /// ITC similarity (cosine of the image and label embeddings).
    pub score: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct TagsOk {
    /// By score, highest first; ties by label.
    pub tags: Vec<TagScore>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(untagged)]
pub enum TagItem {
    Ok(TagsOk),
    Err(ItemError),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TagResponse {
    /// One result per image, in request order.
    pub results: Vec<TagItem>,
}

#[utoipa::path(post, path = "/v1/tag", tag = "tasks",
    request_body(content((TagBody = "application/json"))),
    responses(
        (status = 200, body = TagResponse, description = "Tags per image; a bad image is a per-item error"),
        TaskErrors
    ),
    security((), ("bearer" = [])))]
pub async fn tag(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Json<TagResponse>, ApiError> {
    let served = state.served(Head::Retrieval)?;
    blip_index::image_embedding_width(&served.package)
        .map_err(|e| ApiError::validation(e.to_string()))?;
    state.check_ready()?;
    let deadline = state.deadline();
    let (body, files): (TagBody, _) = input::read(req).await?;
    let r = request::TagRequest {
        labels: body.labels,
        top_k: body.top_k,
        threshold: body.threshold,
    };
    let options = r.resolve()?;
    let labels = r.labels;
    let images = input::gather("images", &body.images, files);
    if images.is_empty() {
        return Err(ApiError::empty(
            "no images: give `images` (base64) or upload files",
        ));
    }
    let single = images.len() == 1;
    let held = images.len() as u64 * crate::routes::image_bytes(&state, Head::Retrieval)?
        + crate::routes::text_bytes(&labels);
    let _permit = state.admit(
        images.len() + 1,
        Head::Retrieval,
        admission::units("embed_images", images.len(), 0, 0),
        held,
    )?;
    let items = crate::routes::prepare(&state, Head::Retrieval, images).await?;
    let (pixels, slots) = crate::routes::stack(items);
    let image_job = async {
        if pixels.n == 0 {
            return Ok::<_, ApiError>(None);
        }
        match state
            .run(Head::Retrieval, Work::EmbedImages { pixels }, deadline)
            .await?
        {
            Done::ImageEmbeds { embeds, .. } => Ok(Some(embeds)),
            _ => Ok(None),
        }
    };
    let texts = labels
        .iter()
        .map(|l| blip_runtime::tag::tag_prompt(l))
        .collect();
    let text_job = async {
        match state
            .run(Head::Retrieval, Work::EmbedTexts { texts }, deadline)
            .await?
        {
            Done::TextEmbeds(e) => Ok::<_, ApiError>(e),
            _ => Err(ApiError::validation("no label embedding came back")),
        }
    };
    let (image_embeds, label_embeds) = tokio::join!(image_job, text_job);
    let (image_embeds, label_embeds) = (image_embeds?, label_embeds?);
    let tags = match &image_embeds {
        Some(e) => {
            blip_runtime::tag::zero_shot_tags(e.view(), label_embeds.view(), &labels, options)
                .map_err(|e| ApiError::validation(e.to_string()))?
        }
        None => Vec::new(),
    };
    let mut results = Vec::with_capacity(slots.len());
    for slot in slots {
        let row = slot.and_then(|i| {
            tags.get(i)
                .ok_or_else(|| ApiError::validation("no embedding came back"))
        });
        results.push(match row {
            Ok(t) => TagItem::Ok(TagsOk {
                tags: t
                    .iter()
                    .map(|t| TagScore {
                        label: t.label.clone(),
                        score: t.score,
                    })
                    .collect(),
            }),
            Err(e) if single => return Err(e),
            Err(e) => TagItem::Err((&e).into()),
        });
    }
    Ok(Json(TagResponse { results }))
}
