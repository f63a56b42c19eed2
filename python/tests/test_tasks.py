"""The wheel's task outputs against the native CLI's on the shapes packages."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

import blip_onnx
from conftest import SHAPES, cli_json, run_cli


def test_caption_defaults_come_from_the_library():
    d = blip_onnx.caption_defaults()
    assert (d["prompt"], d["beams"], d["max_length"], d["min_length"]) == ("a picture of ", 3, 20, 5)


@pytest.mark.parametrize(
    "options,cli_args",
    [
        ({}, []),
        ({"beams": 1}, ["--beams", "1"]),
        ({"beams": 4, "length_penalty": 0.6, "max_length": 12}, ["--beams", "4", "--length-penalty", "0.6", "--max-length", "12"]),
        ({"prompt": "", "min_length": 8, "repetition_penalty": 1.3}, ["--prompt", "", "--min-length", "8", "--repetition-penalty", "1.3"]),
        ({"sample": True, "seed": 7, "top_k": 20, "temperature": 0.8}, ["--sample", "--seed", "7", "--top-k", "20", "--temperature", "0.8"]),
    ],
    ids=["beam-default", "greedy", "beam4", "no-prompt", "sample"],
)
def test_caption_matches_cli_token_for_token(models, packages, images, options, cli_args):
    expected = cli_json("caption", "-p", packages["caption"], *cli_args, *images)
    got = models["caption"].caption(images, **options)
    assert [c.tokens for c in got] == [e["tokens"] for e in expected]
    assert [c.text for c in got] == [e["caption"] for e in expected]
    for c, e in zip(got, expected):
        if e["score"] is None:
            assert c.score is None
        else:
            assert c.score == pytest.approx(e["score"], abs=1e-5)


def test_caption_accepts_bytes_pil_and_numpy_like_paths(models, images):
    pngs = images[:4]
    by_path = [c.tokens for c in models["caption"].caption(pngs, beams=1)]
    as_bytes = [p.read_bytes() for p in pngs]
    as_pil = [Image.open(p) for p in pngs]
    as_numpy = [np.asarray(Image.open(p).convert("RGB")) for p in pngs]
    # A non-contiguous view must be read in logical order.
    as_numpy[1] = np.ascontiguousarray(as_numpy[1][:, ::-1])[:, ::-1]
    for variant in (as_bytes, as_pil, as_numpy):
        assert [c.tokens for c in models["caption"].caption(variant, beams=1)] == by_path


def test_embeddings_match_cli(models, packages, images):
    texts = ["a red circle", "two blue squares and a triangle"]
    expected = cli_json("embed", "-p", packages["retrieval"], "--image", *images, "--text", *texts)
    want_images = np.array([e["embedding"] for e in expected[: len(images)]], dtype=np.float32)
    want_texts = np.array([e["embedding"] for e in expected[len(images) :]], dtype=np.float32)
    got_images = models["retrieval"].embed_images(images)
    got_texts = models["retrieval"].embed_texts(texts)
    assert got_images.dtype == np.float32 and got_images.shape == want_images.shape
    assert np.abs(got_images - want_images).max() <= 1e-6
    assert got_texts.dtype == np.float32 and got_texts.shape == want_texts.shape
    assert np.abs(got_texts - want_texts).max() <= 1e-6


def test_itm_matches_cli(models, packages, images):
    texts = ["a red circle", "a green triangle", "nothing at all"]
    expected = cli_json("itm", "-p", packages["retrieval"], images[0], *texts)
    got = models["retrieval"].itm(images[0], texts)
    for g, e in zip(got, expected, strict=True):
        assert g.text == e["text"]
        assert g.match_probability == pytest.approx(e["match_probability"], abs=1e-6)
        assert g.itm_logits == pytest.approx(tuple(e["itm_logits"]), abs=1e-5)
        assert g.itc_similarity == pytest.approx(e["itc_similarity"], abs=1e-6)


def _questions(image_id: int):
    qs = json.loads((SHAPES / "test" / "vqa_questions.json").read_text())["questions"]
    return [q["question"] for q in qs if q["image_id"] == image_id]


def test_vqa_generated_answers_match_cli(models, packages, images):
    questions = _questions(0)
    assert len(questions) >= 3
    expected = cli_json("vqa", "-p", packages["vqa"], images[0], *questions)
    got = models["vqa"].answer(images[0], questions)
    assert [a.answer for a in got] == [e["answer"] for e in expected]
    assert [a.question for a in got] == questions


def test_vqa_rank_mode_matches_cli(models, packages, images, tmp_path):
    questions = _questions(1)
    annotations = json.loads((SHAPES / "test" / "vqa_annotations.json").read_text())["annotations"]
    answers = sorted({a["answer"] for ann in annotations for a in ann["answers"]})
    answer_file = tmp_path / "answers.txt"
    answer_file.write_text("\n".join(answers))
    expected = cli_json("vqa", "-p", packages["vqa"], images[1], *questions, "--answers", answer_file, "-k", "5")
    got = models["vqa"].answer(images[1], questions, answers, k=5)
    assert [a.answer for a in got] == [e["answer"] for e in expected]
    for g, e in zip(got, expected):
        assert [c[0] for c in g.candidates] == [c["answer"] for c in e["candidates"]]
        assert [c[1] for c in g.candidates] == pytest.approx([c["score"] for c in e["candidates"]], abs=1e-4)


def test_rank_images_matches_cli_search(models, packages, images, tmp_path):
    folder = tmp_path / "gallery"
    folder.mkdir()
    for p in images[:6]:
        (folder / p.name).symlink_to(p)
    run_cli("index", "-p", packages["retrieval"], folder, "-o", tmp_path / "index.bin", "--threads", "1")
    query = "a red circle"
    expected = cli_json("search", "-p", packages["retrieval"], tmp_path / "index.bin", query, "--rerank", "3", "-k", "6")
    paths = sorted(folder.iterdir())
    model = models["retrieval"]
    hits = model.rank_images(query, model.embed_images(paths), k=6, rerank=3, images=paths)
    assert [paths[h.index].name for h in hits] == [e["image"].rsplit("/", 1)[-1] for e in expected]
    # The CLI's index keeps the candidates' vision states as f16 for the rerank (never re-encoded at
    # query time); here they are encoded in FP32: scores agree to the FP32 tolerance, not to 1e-5.
    assert [h.score for h in hits] == pytest.approx([e["score"] for e in expected], abs=1e-4)
    assert [h.itm is not None for h in hits] == [True] * 3 + [False] * 3
    # ITC only needs no images.
    itc = model.rank_images(query, model.embed_images(paths), k=6)
    assert [h.score for h in itc] == sorted((h.itc for h in hits), reverse=True)


def test_convert_and_quantize_write_the_cli_packages(packages, tmp_path):
    report = blip_onnx.convert(SHAPES / "models" / "shapes-caption", tmp_path / "caption")
    assert report["head"] == "caption" and {g["role"] for g in report["graphs"]} == {"vision_encoder", "cross_kv", "decoder"}

    def graphs(path):
        return {r: g["sha256"] for r, g in json.loads((path / "blip.json").read_text())["graphs"].items()}

    assert graphs(tmp_path / "caption") == graphs(packages["caption"])
    stats = blip_onnx.quantize(tmp_path / "caption", tmp_path / "int4", precision="int4")
    matmuls = {s["role"]: s["quantized_matmuls"] for s in stats}
    assert matmuls["decoder"] > 0 and matmuls["vision_encoder"] == matmuls["cross_kv"] == 0
    run_cli("quantize", packages["caption"], "-o", tmp_path / "cli-int4", "--precision", "int4")
    assert graphs(tmp_path / "int4") == graphs(tmp_path / "cli-int4")
    with pytest.raises(blip_onnx.QuantizeError, match="already exists"):
        blip_onnx.quantize(tmp_path / "caption", tmp_path / "int4", precision="int4")


def test_blip2_retrieval_converts_and_scores_as_the_cli(tmp_path):
    """A BLIP-2 retrieval checkpoint through the wheel: the package the CLI writes, the CLI's ITM
    and ITC (best query) scores, and raw one-per-image embeddings refused by name."""
    from conftest import ROOT

    checkpoint = ROOT / "fixtures" / "models" / "tiny-blip2-retrieval"
    report = blip_onnx.convert(checkpoint, tmp_path / "blip2")
    assert report["head"] == "retrieval"
    run_cli("convert", checkpoint, "-o", tmp_path / "cli-blip2")
    manifest = json.loads((tmp_path / "blip2" / "blip.json").read_text())
    cli_manifest = json.loads((tmp_path / "cli-blip2" / "blip.json").read_text())
    assert manifest["family"] == "blip-2" and manifest["model"]["query_tokens"] == 8
    assert {r: g["sha256"] for r, g in manifest["graphs"].items()} == {
        r: g["sha256"] for r, g in cli_manifest["graphs"].items()
    }
    image = ROOT / "fixtures" / "images" / "grace_hopper.jpg"
    texts = ["a red circle", "a woman in a uniform"]
    model = blip_onnx.BlipModel.open(tmp_path / "blip2", threads=1)
    expected = cli_json("itm", "-p", tmp_path / "blip2", image, *texts)
    got = model.itm(image, texts)
    for g, e in zip(got, expected, strict=True):
        assert g.itm_logits == pytest.approx(tuple(e["itm_logits"]), abs=1e-5)
        assert g.itc_similarity == pytest.approx(e["itc_similarity"], abs=1e-6)
    with pytest.raises(blip_onnx.InputError, match=r"8 vectors \(BLIP-2"):
        model.embed_images([image])
