//! The one ITC ranking rule. An image's ITC embedding is `V` L2-normalised vectors (`[V, E]`):
//! one for BLIP, one per learned query for BLIP-2. Its similarity to a text embedding is the
//! best of its vectors' dot products — for BLIP the one cosine, for BLIP-2 the best query, as
//! `Blip2ForImageTextRetrieval` scores (docs/blip2-reference.md §9).

use ndarray::{Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis};

use crate::{Result, TaskError};

/// The ITC similarity of one image's vectors (`[V, E]`) and one text embedding (`[E]`).
pub fn itc_similarity(image: ArrayView2<'_, f32>, text: ArrayView1<'_, f32>) -> f32 {
    image
        .outer_iter()
        .map(|v| v.dot(&text))
        .fold(f32::NEG_INFINITY, f32::max)
}

/// ITC similarities `[images, texts]` of images' vectors (`[n, V, E]`) and text embeddings
/// (`[m, E]`); an error when their widths differ (`what` names the texts).
pub fn itc_similarities(
    images: ArrayView3<'_, f32>,
    texts: ArrayView2<'_, f32>,
    what: &str,
) -> Result<Array2<f32>> {
    let (width, text_width) = (images.shape()[2], texts.ncols());
    if width != text_width {
        return Err(TaskError::Input(format!(
            "image embeddings are {width} wide but the {what} embeddings are {text_width}"
        )));
    }
    Ok(Array2::from_shape_fn(
        (images.shape()[0], texts.nrows()),
        |(i, t)| itc_similarity(images.index_axis(Axis(0), i), texts.row(t)),
    ))
}

/// Image embeddings as one vector per image (`[n, E]`), for what returns or stores raw
/// vectors one per image; a package that embeds an image as several vectors (BLIP-2) is refused,
/// naming how many.
pub fn one_vector_per_image(embeds: Array3<f32>) -> Result<Array2<f32>> {
    let (n, v, e) = embeds.dim();
    if v != 1 {
        return Err(TaskError::Input(format!(
            "this package embeds an image as {v} vectors (BLIP-2: one per learned query); \
             raw image embeddings are returned one vector per image (BLIP). Rank, score and \
             tag images instead, which use all {v}"
        )));
    }
    embeds
        .into_shape_with_order((n, e))
        .map_err(|err| TaskError::Input(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn an_image_scores_its_best_vector() {
        let image = array![[1.0f32, 0.0], [0.0, 1.0], [0.6, 0.8]];
        assert_eq!(
            itc_similarity(image.view(), array![0.0f32, 1.0].view()),
            1.0
        );
        let best = itc_similarity(image.view(), array![0.8f32, 0.6].view());
        assert!((best - 0.96).abs() < 1e-6, "{best}");
        // One vector: the plain dot product, as BLIP.
        let one = array![[0.6f32, 0.8]];
        assert_eq!(itc_similarity(one.view(), array![1.0f32, 0.0].view()), 0.6);
    }

    #[test]
    fn several_vectors_per_image_are_refused_where_one_is_expected() {
        let two = Array3::<f32>::zeros((3, 2, 4));
        let e = one_vector_per_image(two).unwrap_err().to_string();
        assert!(e.contains("2 vectors"), "{e}");
        let one = Array3::<f32>::ones((3, 1, 4));
        assert_eq!(one_vector_per_image(one).unwrap().dim(), (3, 4));
        let e = itc_similarities(
            Array3::<f32>::zeros((1, 1, 4)).view(),
            Array2::<f32>::zeros((1, 3)).view(),
            "label",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("4 wide but the label embeddings are 3"), "{e}");
    }
}
