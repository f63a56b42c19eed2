"""The OpenAI-compatible routes of `blip-onnx serve`, driven by the real `openai` client and by
LangChain's ChatOpenAI (python/requirements-clients.txt pins both), against the real server on
loopback. Every answer is compared with the server's own routes (/v1/caption, /v1/vqa, /v1/embed,
/v1/itm), which the Rust suites hold equal to the CLI and the PyTorch goldens.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest

from conftest import CLI, SHAPES

import openai  # noqa: E402  (python/requirements-clients.txt; a missing client fails, not skips)


def start_server(args: List[str]) -> tuple:
    """`blip-onnx serve ARGS --port 0`; returns (process, base URL) once it listens."""
    proc = subprocess.Popen(
        [str(CLI), "serve", "--host", "127.0.0.1", "--port", "0", "--threads", "1", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "listening on http://" in line:
            base = line.strip().split("listening on ")[1]
            # Drain the rest of stderr so the server never blocks on a full pipe.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, base
    proc.kill()
    pytest.fail(f"the server did not start: exit {proc.wait()}")


def wait_ready(base: str) -> None:
    import time

    for _ in range(600):
        try:
            with urllib.request.urlopen(base + "/health/ready") as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.1)
    pytest.fail("the server never became ready")


def post(base: str, route: str, body: dict) -> dict:
    req = urllib.request.Request(
        base + route, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


class ImageHost(http.server.BaseHTTPRequestHandler):
    """Serves the test image at /img.png and redirects /away to another host name."""

    image = b""

    def do_GET(self):  # noqa: N802
        if self.path == "/img.png":
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.send_header("content-length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image)
        elif self.path == "/away":
            self.send_response(302)
            self.send_header("location", f"http://localhost:{self.server.server_port}/img.png")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_path() -> Path:
    return sorted((SHAPES / "test" / "images").glob("*.png"))[0]


@pytest.fixture(scope="module")
def data_uri(image_path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(image_path.read_bytes()).decode()


@pytest.fixture(scope="module")
def image_host(image_path: Path) -> Iterator[int]:
    ImageHost.image = image_path.read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHost)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_port
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(packages: dict) -> Iterator[str]:
    proc, base = start_server(
        [
            "--package", str(packages["caption"]),
            "--package", str(packages["retrieval"]),
            "--package", str(packages["vqa"]),
            "--served-model-name", "blip-caption",
            "--served-model-name", "blip-retrieval",
            "--served-model-name", "blip-vqa",
            "--allow-image-url-host", "127.0.0.1",
            "--allow-private-image-urls",
        ]
    )
    wait_ready(base)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server: str):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def image_message(url: str, text: str | None = None) -> list:
    parts: list = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def test_models_lists_the_served_ids(client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["blip-caption", "blip-retrieval", "blip-vqa"]
    assert client.models.retrieve("blip-vqa").id == "blip-vqa"


def test_chat_caption_equals_v1_caption(client, server, data_uri):
    b64 = data_uri.split(",", 1)[1]
    # Defaults: BLIP's beam 3, as /v1/caption.
    got = client.chat.completions.create(model="blip-caption", messages=image_message(data_uri))
    want = post(server, "/v1/caption", {"images": [b64]})["results"][0]
    assert got.choices[0].message.content == want["caption"]
    assert got.choices[0].finish_reason == "stop"
    # temperature 0 is greedy; max_tokens counts generated tokens (the prompt's 4 not counted).
    got = client.chat.completions.create(
        model="blip-caption", messages=image_message(data_uri), temperature=0, max_tokens=2
    )
    want = post(server, "/v1/caption", {"images": [b64], "beams": 1, "max_length": 4 + 2, "min_length": 5})[
        "results"
    ][0]
    assert got.choices[0].message.content == want["caption"]
    assert got.usage.completion_tokens == len(want["tokens"]) - 4 - (want["tokens"][-1] == 3)
    assert got.usage.prompt_tokens == 4
    # Seeded sampling: n choices from one request, repeatable.
    a = client.chat.completions.create(
        model="blip-caption", messages=image_message(data_uri), temperature=1.0, n=3, seed=7
    )
    b = client.chat.completions.create(
        model="blip-caption", messages=image_message(data_uri), temperature=1.0, n=3, seed=7
    )
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len(a.choices) == 3


def test_chat_question_equals_v1_vqa(client, server, data_uri):
    b64 = data_uri.split(",", 1)[1]
    for q in ["what color is the shape?", "what shape is it?"]:
        got = client.chat.completions.create(
            model="blip-vqa", messages=image_message(data_uri, q)
        )
        want = post(server, "/v1/vqa", {"image": b64, "questions": [q]})["results"][0]
        assert got.choices[0].message.content == want["answer"], q


def test_streaming_sends_tokens_that_join_to_the_answer(client, data_uri):
    for messages in [image_message(data_uri), image_message(data_uri, "what color is the shape?")]:
        whole = client.chat.completions.create(model="blip-caption", messages=messages)
        pieces, reasons, usage = [], [], None
        stream = client.chat.completions.create(
            model="blip-caption",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.content:
                    pieces.append(c.delta.content)
                if c.finish_reason:
                    reasons.append(c.finish_reason)
        assert "".join(pieces) == whole.choices[0].message.content
        assert reasons == [whole.choices[0].finish_reason]
        assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
        # One delta per generated token (each of the shapes vocabulary's tokens is a word).
        assert len(pieces) == whole.usage.completion_tokens


def test_stop_cuts_the_answer(client, data_uri):
    whole = client.chat.completions.create(model="blip-caption", messages=image_message(data_uri))
    text = whole.choices[0].message.content
    last_word = text.split()[-1]
    cut = client.chat.completions.create(
        model="blip-caption", messages=image_message(data_uri), stop=[last_word]
    )
    assert cut.choices[0].message.content == text[: text.index(last_word)]
    assert cut.choices[0].finish_reason == "stop"


def test_embeddings_equal_v1_embed(client, server, data_uri):
    texts = ["a red circle", "a blue square on the left"]
    got = client.embeddings.create(model="blip-retrieval", input=texts)
    want = post(server, "/v1/embed", {"texts": texts})
    want_t = np.array([e["embedding"] for e in want["texts"]], dtype=np.float32)
    got_t = np.array([d.embedding for d in got.data], dtype=np.float32)
    assert got_t.shape == want_t.shape
    assert np.abs(got_t - want_t).max() <= 1e-6
    # The client asks for base64 unless told (and decodes it itself); asked for floats, JSON
    # numbers come back; asked for base64 explicitly, the string (little-endian float32).
    got_f = client.embeddings.create(model="blip-retrieval", input=texts, encoding_format="float")
    assert np.abs(np.array([d.embedding for d in got_f.data], dtype=np.float32) - want_t).max() <= 1e-6
    got_b = client.embeddings.create(model="blip-retrieval", input=texts, encoding_format="base64")
    decoded = np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in got_b.data])
    assert np.abs(decoded - want_t).max() <= 1e-6
    # Images by Infinity's convention: "modality": "image", inputs as data URIs.
    got_i = client.embeddings.create(
        model="blip-retrieval", input=[data_uri], extra_body={"modality": "image"}
    )
    b64 = data_uri.split(",", 1)[1]
    want_i = np.array([e["embedding"] for e in post(server, "/v1/embed", {"images": [b64]})["images"]], dtype=np.float32)
    assert np.abs(np.array(got_i.data[0].embedding, dtype=np.float32) - want_i[0]).max() <= 1e-6


def test_rerank_scores_are_itm(server, data_uri):
    b64 = data_uri.split(",", 1)[1]
    texts = ["a red circle", "a purple triangle", "a green square"]
    itm = post(server, "/v1/itm", {"image": b64, "texts": texts})["results"]
    got = post(server, "/v1/rerank", {"model": "blip-retrieval", "query": {"image": data_uri},
                                       "documents": texts, "top_n": 2})
    probs = [r["match_probability"] for r in itm]
    order = sorted(range(3), key=lambda i: (-probs[i], i))[:2]
    assert [r["index"] for r in got["results"]] == order
    for r in got["results"]:
        assert abs(r["relevance_score"] - probs[r["index"]]) <= 1e-6
        assert r["document"] == texts[r["index"]]
    # A text query against image documents: the same ITM probability of that pair.
    got = post(server, "/v1/rerank", {"model": "blip-retrieval", "query": texts[1],
                                       "documents": [{"image": data_uri}]})
    assert abs(got["results"][0]["relevance_score"] - probs[1]) <= 1e-6


def test_image_urls_follow_the_rules(client, server, image_host, data_uri):
    url = f"http://127.0.0.1:{image_host}/img.png"
    by_url = client.chat.completions.create(model="blip-caption", messages=image_message(url))
    inline = client.chat.completions.create(model="blip-caption", messages=image_message(data_uri))
    assert by_url.choices[0].message.content == inline.choices[0].message.content
    # A redirect to another host name is not followed.
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(
            model="blip-caption", messages=image_message(f"http://127.0.0.1:{image_host}/away")
        )
    assert "another host" in e.value.body["message"]
    # A host not allowed is not fetched.
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(
            model="blip-caption", messages=image_message(f"http://localhost:{image_host}/img.png")
        )
    assert "not in --allow-image-url-host" in e.value.body["message"]
    assert e.value.body["param"] is None or "image_url" in e.value.body["message"]


def test_errors_in_openai_shape_name_the_field(client, data_uri):
    cases = [
        (dict(logprobs=True), "logprobs"),
        (dict(temperature=-1), "temperature"),
        (dict(n=2), "n"),
        (dict(max_tokens=999), "max_tokens"),
        (dict(extra_body={"frobnicate": 1}), "frobnicate"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.UnprocessableEntityError) as e:
            client.chat.completions.create(
                model="blip-caption", messages=image_message(data_uri), **kwargs
            )
        assert e.value.body["param"] == param, (kwargs, e.value.body)
        assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=image_message(data_uri))
    assert e.value.body["param"] == "model"


def test_a_question_without_a_vqa_package_names_the_head(packages, data_uri, image_host):
    proc, base = start_server(
        [
            "--package", str(packages["caption"]),
            # localhost is allowed but resolves to loopback, which this server does not let.
            "--allow-image-url-host", "localhost",
        ]
    )
    try:
        wait_ready(base)
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError) as e:
            c.chat.completions.create(
                model=Path(packages["caption"]).name,
                messages=image_message(data_uri, "what color is it?"),
            )
        assert "vqa" in e.value.body["message"]
        with pytest.raises(openai.UnprocessableEntityError) as e:
            c.chat.completions.create(
                model=Path(packages["caption"]).name,
                messages=image_message(f"http://localhost:{image_host}/img.png"),
            )
        assert "private or loopback" in e.value.body["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_langchain_chat_model(server, client, data_uri):
    """A second client of the ecosystem: LangChain's ChatOpenAI, invoke and stream."""
    import langchain_openai
    from langchain_core.messages import HumanMessage

    chat = langchain_openai.ChatOpenAI(
        model="blip-caption", base_url=server + "/v1", api_key="unused", max_retries=0
    )
    message = HumanMessage(content=[{"type": "image_url", "image_url": {"url": data_uri}}])
    want = client.chat.completions.create(model="blip-caption", messages=image_message(data_uri))
    assert chat.invoke([message]).content == want.choices[0].message.content
    streamed = "".join(str(c.content) for c in chat.stream([message]))
    assert streamed == want.choices[0].message.content
