"""The Python door of the request layer: every row of the shared option table
(fixtures/requests/caption-options.json, which the CLI, the server and the browser tests read too)
raises InputError naming its keyword argument (``top_p: ...``), and every good row gives the CLI's
tokens for the same options."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import blip_onnx
import pytest

from conftest import ROOT, cli_json

TABLE = json.loads((ROOT / "fixtures" / "requests" / "caption-options.json").read_text())


@pytest.mark.parametrize("row", TABLE["bad"], ids=lambda r: json.dumps(r["options"]))
def test_bad_options_name_their_keyword(models, images, row):
    with pytest.raises(blip_onnx.InputError) as err:
        models["caption"].caption(images[:1], **row["options"])
    assert str(err.value).startswith(row["field"] + ":"), str(err.value)


def _flags(options):
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        else:
            out.append(f"{flag}={value}")
    return out


@pytest.mark.parametrize("options", TABLE["good"], ids=json.dumps)
def test_good_options_give_the_clis_tokens(models, packages, images, options):
    got = models["caption"].caption(images[:1], **options)[0]
    want = cli_json("caption", "-p", packages["caption"], *_flags(options), images[0])[0]
    assert got.tokens == want["tokens"], options
    assert got.text == want["caption"]


def _expand(value):
    """``{"$list": [item, n]}`` and ``{"$string": [unit, n]}`` of task-options.json written out."""
    if isinstance(value, dict) and "$list" in value:
        item, n = value["$list"]
        return [_expand(item) for _ in range(n)]
    if isinstance(value, dict) and "$string" in value:
        unit, n = value["$string"]
        return unit * n
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


TASKS = _expand(json.loads((ROOT / "fixtures" / "requests" / "task-options.json").read_text()))


def _row_id(row):
    return json.dumps(row["request"])[:80]


def _refused_naming(err, row):
    assert str(err.value).startswith(row["field"] + ":"), str(err.value)


@pytest.mark.parametrize("row", TASKS["vqa"]["bad"], ids=_row_id)
def test_bad_vqa_requests_name_their_keyword(models, images, row):
    with pytest.raises(blip_onnx.InputError) as err:
        models["vqa"].answer(images[1], **row["request"])
    _refused_naming(err, row)


@pytest.mark.parametrize("row", TASKS["itm"]["bad"], ids=_row_id)
def test_bad_itm_texts_name_their_keyword(models, images, row):
    with pytest.raises(blip_onnx.InputError) as err:
        models["retrieval"].itm(images[1], **row["request"])
    _refused_naming(err, row)


@pytest.mark.parametrize("row", TASKS["search"]["bad"], ids=_row_id)
def test_bad_search_requests_name_their_keyword(models, images, row):
    model = models["retrieval"]
    embeddings = model.embed_images(images[:6])
    with pytest.raises(blip_onnx.InputError) as err:
        model.rank_images(embeddings=embeddings, images=images[:6], **row["request"])
    _refused_naming(err, row)


def _vqa_flags(request, tmp_path):
    out = list(request["questions"])
    if "answers" in request:
        path = tmp_path / "answers.txt"
        path.write_text("\n".join(request["answers"]) + "\n")
        out += ["--answers", path]
    if "k" in request:
        out += ["-k", request["k"]]
    if request.get("mask_question_padding"):
        out.append("--mask-question-padding")
    return out


@pytest.mark.parametrize("request_", TASKS["vqa"]["good"], ids=lambda r: json.dumps(r)[:80])
def test_good_vqa_requests_give_the_clis_answers(models, packages, images, tmp_path, request_):
    got = models["vqa"].answer(images[1], **request_)
    want = cli_json("vqa", "-p", packages["vqa"], images[1], *_vqa_flags(request_, tmp_path))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.answer == w["answer"], request_
        if "answers" in request_:
            assert [c for c, _ in g.candidates] == [c["answer"] for c in w["candidates"]], request_
            for (_, score), c in zip(g.candidates, w["candidates"]):
                assert abs(score - c["score"]) < 1e-4, (request_, c)
        else:
            assert g.tokens == w["tokens"], request_


@pytest.fixture(scope="module")
def shapes_index(packages, images, tmp_path_factory):
    """An index of shapes test images 0-5 made by the CLI, and the folder it indexes."""
    gallery = tmp_path_factory.mktemp("gallery")
    for path in images[:6]:
        shutil.copy(path, gallery / path.name)
    index = gallery.parent / "shapes.idx"
    cli_json("index", "-p", packages["retrieval"], gallery, "-o", index)
    return index, sorted(gallery.glob("*.png"))


@pytest.mark.parametrize("request_", TASKS["search"]["good"], ids=lambda r: json.dumps(r)[:80])
def test_good_search_requests_give_the_clis_hits(models, packages, shapes_index, request_):
    index, files = shapes_index
    model = models["retrieval"]
    # Python's rerank default is 0 (it keeps no rerank states); a row without one asks for the
    # request layer's default, which the CLI applies.
    options = {"rerank": 16, **request_}
    got = model.rank_images(embeddings=model.embed_images(files), images=files, **options)
    flags = ["-k", request_["k"]] if "k" in request_ else []
    flags += ["--rerank", request_["rerank"]] if "rerank" in request_ else []
    want = cli_json("search", "-p", packages["retrieval"], index, request_["text"], *flags)
    assert [files[h.index].name for h in got] == [Path(w["image"]).name for w in want], request_
    for h, w in zip(got, want):
        assert abs(h.score - w["score"]) < 1e-4, (request_, w)
