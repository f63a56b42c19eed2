//! Iteration-level batching over the real engine: requests with different decoding settings,
//! joining a running decode batch at different steps and leaving it when done, get exactly the
//! tokens they get decoded alone (the trained shapes captioner and VQA model, and the tiny fixture).

use blip_convert::ConvertOptions;
use blip_runtime::{
    BlipModel, CaptionOptions, DecodeBatch, Generated, Graphs, ImageInput, SessionOptions,
    Strategy, VqaOptions, ready,
};
use blip_testkit::{convert_fixture, fixture};

fn open(checkpoint: &str) -> (blip_testkit::Converted, BlipModel) {
    let c = convert_fixture(&fixture(checkpoint), &ConvertOptions::default());
    let m = BlipModel::open(
        &c.pkg.dir,
        &SessionOptions {
            intra_threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    (c, m)
}

fn shapes_image(i: usize) -> ImageInput {
    ImageInput::Path(fixture(&format!("shapes/test/images/test_{i:05}.png")))
}

fn settings() -> Vec<CaptionOptions> {
    let base = CaptionOptions::default();
    vec![
        base.clone(),
        CaptionOptions {
            strategy: Strategy::Greedy,
            ..base.clone()
        },
        CaptionOptions {
            strategy: Strategy::Sample {
                temperature: 0.9,
                top_k: 20,
                top_p: 0.9,
                seed: 7,
            },
            min_length: 0,
            ..base.clone()
        },
        CaptionOptions {
            strategy: Strategy::Beam {
                num_beams: 2,
                length_penalty: 0.6,
                early_stopping: true,
            },
            prompt: String::new(),
            repetition_penalty: 1.3,
            max_length: 14,
            ..base
        },
    ]
}

/// Requests `i` (image i, settings i % 4) join one at a time, one step apart, with up to two
/// images per request; returns each request's captions in request order.
fn batched(m: &mut BlipModel, requests: &[(Vec<ImageInput>, CaptionOptions)]) -> Vec<Vec<i64>> {
    let mut batch = DecodeBatch::new();
    let mut done: Vec<Option<Generated>> = vec![None; requests.len()];
    let mut max_rows = 0;
    let mut shared = false;
    for (r, (images, opts)) in requests.iter().enumerate() {
        let pixels: Vec<f32> = images
            .iter()
            .flat_map(|img| m.pixel_values(img).unwrap())
            .collect();
        let vision = m.vision(&pixels, images.len()).unwrap();
        let tasks = m.tasks();
        let (generation, _) = tasks.caption_generation(images.len(), opts).unwrap();
        let beams = generation.rows() / images.len();
        let cross = ready(tasks.graphs.cross_kv(vision.hidden.view(), None, beams)).unwrap();
        if let Some((tag, g)) = ready(batch.join(&mut tasks.graphs, r, generation, cross)).unwrap()
        {
            done[tag] = Some(g);
        }
        max_rows = max_rows.max(batch.rows());
        // Beams share their image's cross K/V: the batch holds it once per image.
        let cross = batch.cross().unwrap();
        assert_eq!(cross.rows().rows(), batch.rows());
        assert_eq!(cross.held(), cross.rows().images());
        shared |= cross.rows().images() < cross.rows().rows();
        for (tag, g) in ready(batch.step(&mut tasks.graphs)).unwrap() {
            done[tag] = Some(g);
        }
        if let Some(cross) = batch.cross() {
            assert_eq!(cross.held(), cross.rows().images());
        }
    }
    assert!(shared, "no image was read by several beams");
    while !batch.is_empty() {
        for (tag, g) in ready(batch.step(&mut m.tasks().graphs)).unwrap() {
            done[tag] = Some(g);
        }
    }
    assert!(
        max_rows > 6,
        "requests never decoded together ({max_rows} rows at most)"
    );
    done.into_iter()
        .flat_map(|g| g.unwrap().sequences)
        .collect()
}

fn alone(m: &mut BlipModel, requests: &[(Vec<ImageInput>, CaptionOptions)]) -> Vec<Vec<i64>> {
    requests
        .iter()
        .flat_map(|(images, opts)| {
            m.caption(images, opts)
                .unwrap()
                .into_iter()
                .map(|c| c.unwrap().ids)
        })
        .collect()
}

fn requests(
    image: impl Fn(usize) -> ImageInput,
    n: usize,
) -> Vec<(Vec<ImageInput>, CaptionOptions)> {
    let settings = settings();
    (0..n)
        .map(|i| {
            let images = if i % 3 == 1 {
                vec![image(i), image(i + 1)]
            } else {
                vec![image(i)]
            };
            (images, settings[i % settings.len()].clone())
        })
        .collect()
}

#[test]
fn captions_decoded_in_one_running_batch_equal_captions_decoded_alone() {
    let (_c, mut m) = open("shapes/models/shapes-caption");
    let requests = requests(shapes_image, 8);
    let want = alone(&mut m, &requests);
    assert!(want.iter().all(|ids| ids.len() > 6), "{want:?}");
    assert_eq!(batched(&mut m, &requests), want);
}

#[test]
fn tiny_fixture_batches_equal_alone_too() {
    let (_c, mut m) = open("models/tiny-caption");
    let image = |i: usize| {
        let names = ["synthetic_a.png", "synthetic_b.png", "grace_hopper.jpg"];
        ImageInput::Path(fixture(&format!("images/{}", names[i % 3])))
    };
    let requests = requests(image, 6);
    assert_eq!(batched(&mut m, &requests), alone(&mut m, &requests));
}

#[test]
fn vqa_questions_of_different_lengths_share_a_batch() {
    // Question states of different lengths: the shorter cross K/V are padded and masked.
    let (_c, mut m) = open("shapes/models/shapes-vqa");
    let opts = VqaOptions::default();
    let questions = [
        "how many shapes are there?",
        "what color is the circle?",
        "is there a red square in the top left of the picture?",
    ];
    let mut want = Vec::new();
    let mut batch = DecodeBatch::new();
    let mut got: Vec<Option<Vec<i64>>> = vec![None; questions.len()];
    for (q, question) in questions.iter().enumerate() {
        let image = shapes_image(q);
        want.push(
            m.answer(std::slice::from_ref(&image), &[question], &opts)
                .unwrap()[0]
                .ids
                .clone(),
        );
        let pixels = m.pixel_values(&image).unwrap();
        let tasks = m.tasks();
        let (generation, states, mask) =
            ready(tasks.answer_generation(&pixels, 1, &[question], &opts)).unwrap();
        let beams = generation.rows();
        let cross = ready(tasks.graphs.cross_kv(states.view(), mask.as_deref(), beams)).unwrap();
        if let Some((tag, g)) = ready(batch.join(&mut tasks.graphs, q, generation, cross)).unwrap()
        {
            got[tag] = Some(g.sequences[0].clone());
        }
        // Later questions join rows that have decoded a step further.
        for (tag, g) in ready(batch.step(&mut tasks.graphs)).unwrap() {
            got[tag] = Some(g.sequences[0].clone());
        }
    }
    while !batch.is_empty() {
        for (tag, g) in ready(batch.step(&mut m.tasks().graphs)).unwrap() {
            got[tag] = Some(g.sequences[0].clone());
        }
    }
    let got: Vec<Vec<i64>> = got.into_iter().map(Option::unwrap).collect();
    assert_eq!(got, want);
}
