#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/ from the project's fixtures (standard library only).

Run from the repository root: python3 fuzz/seeds/make_seeds.py. The output is committed; rerun it
only when a seed should change.
"""
import io, json, os, shutil, struct, zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
FIX = os.path.join(ROOT, "fixtures")


def out(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# Images: the decoder fixtures (every supported format, 16-bit, palette, CMYK, EXIF rotation).
formats = os.path.join(FIX, "images", "formats")
for name in sorted(os.listdir(formats)):
    with open(os.path.join(formats, name), "rb") as f:
        out("image_preprocess", name, f.read())


# safetensors: 8-byte little-endian header length, JSON header, data.
def safetensors(tensors, metadata=None):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


out("safetensors_header", "f32_f16.safetensors", safetensors({
    "text_decoder.bert.embeddings.word_embeddings.weight": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
    "vision_model.embeddings.class_embedding": ("F16", [1, 1, 3], b"\x00\x3c\x00\x40\x00\x42"),
}, {"format": "pt"}))
out("safetensors_header", "bf16_f64_i64.safetensors", safetensors({
    "a": ("BF16", [2], b"\x80\x3f\x00\x40"),
    "b": ("F64", [1], struct.pack("<d", 0.5)),
    "c": ("I64", [0], b""),
}))


# torch zip: rewrite the committed bad-pth fixture (state dict under "state_dict", one 1x1x4
# FloatStorage) into the layouts the reader accepts.
with zipfile.ZipFile(os.path.join(FIX, "models", "bad-pth-no-model-key.pth")) as z:
    members = {n: z.read(n) for n in z.namelist()}
pkl_name = next(n for n in members if n.endswith("/data.pkl"))
pkl = members[pkl_name]
outer = b"X\n\x00\x00\x00state_dictq\x01"
assert outer in pkl and pkl.endswith(b"ss.")
nested = pkl.replace(outer, b"X\x05\x00\x00\x00modelq\x01")
top_level = pkl.replace(b"}q\x00" + outer, b"")[:-2] + b"."
strided = nested.replace(b"K\x01K\x01K\x04\x87", b"K\x02K\x02\x86").replace(b"K\x04K\x04K\x01\x87", b"K\x01K\x02\x86")


def torch_zip(pickle_bytes):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, pickle_bytes if n == pkl_name else data)
    return buf.getvalue()


out("torch_zip", "state_dict_key.pth", torch_zip(pkl))
out("torch_zip", "model_key.pth", torch_zip(nested))
out("torch_zip", "top_level.bin", torch_zip(top_level))
out("torch_zip", "strided.pth", torch_zip(strided))
out("torch_pickle", "model_key.pkl", nested)
out("torch_pickle", "top_level.pkl", top_level)
out("torch_pickle", "strided.pkl", strided)
out("torch_pickle", "deflated_storage.pkl", nested.replace(b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x001"))


# Manifest: the shape `blip-onnx convert` writes for the tiny caption fixture.
spec = lambda name, dtype, dims: {"name": name, "dtype": dtype, "dims": dims}
manifest = {
    "format": "blip-onnx-package", "format_version": 1,
    "producer": {"name": "blip-onnx", "version": "0.1.0"},
    "source": {"name": "tiny-caption", "format": "hf-safetensors", "sha256": "0" * 64,
               "files": ["model.safetensors"]},
    "head": "caption",
    "model": {"vision_hidden_size": 32, "vision_layers": 2, "vision_heads": 2, "patch_size": 16,
              "image_size": 32, "image_tokens": 5, "text_hidden_size": 32, "text_layers": 2,
              "text_heads": 2, "vocab_size": 30524, "max_position_embeddings": 64},
    "preprocess": {"image_size": 32, "resample": "bicubic", "crop": False, "rescale": 1 / 255,
                   "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    "tokens": {"bos": 30522, "enc": 30523, "cls": 101, "sep": 102, "eos": 102, "pad": 0, "max_text_tokens": 35},
    "opset": 17, "precision": "fp32", "tokenizer": "tokenizer.json",
    "graphs": {"vision_encoder": {
        "file": "vision_encoder.onnx", "sha256": "0" * 64, "bytes": 0, "precision": "fp32",
        "inputs": [spec("pixel_values", "float32", ["batch", 3, 32, 32])],
        "outputs": [spec("image_embeds", "float32", ["batch", 5, 32])]}},
}
out("manifest", "caption.json", json.dumps(manifest, indent=2).encode())
manifest["graphs"]["decoder"] = dict(manifest["graphs"]["vision_encoder"], file="../decoder.onnx",
                                     data_file="decoder.onnx.data", quantization="int8")
out("manifest", "two_graphs.json", json.dumps(manifest).encode())


# Tokenizer: the fixture's tokenizer.json with its vocabulary cut to the specials and a few words,
# so mutations stay small.
with open(os.path.join(FIX, "models", "tiny-caption", "tokenizer.json")) as f:
    tok = json.load(f)
keep = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture", "of", "dog", "##s", "the", "cat"]
tok["model"]["vocab"] = {w: i for i, w in enumerate(keep)}
tok["added_tokens"] = [dict(t, id=keep.index(t["content"])) for t in tok["added_tokens"] if t["content"] in keep]
tok["post_processor"] = {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]}
out("tokenizer_file", "wordpiece.json", json.dumps(tok).encode())
out("tokenizer_file", "bpe.json", json.dumps({
    "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
    "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
    "post_processor": None, "decoder": {"type": "BPEDecoder", "suffix": "</w>"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "</w>": 3}, "merges": ["a b"]}}).encode())

# Text: byte 0 is the control byte of the target (first token, truncation).
out("tokenizer_encode", "caption", b"\x00a picture of a dog")
out("tokenizer_encode", "batch_truncated", b"\x29a woman sitting on the beach\x00two cats\x00")
out("tokenizer_encode", "unicode", "\x01naïve café 漢字 emoji 🐕 [SEP] [DEC]\u0301".encode())


# Index files (crates/blip-index): magic, u64 header length, JSON header, f32 embeddings.
import hashlib


def index_file(magic, header, embeddings):
    h = json.dumps(header).encode()
    return magic + struct.pack("<Q", len(h)) + h + struct.pack(f"<{len(embeddings)}f", *embeddings)


def entry(i, state=True):
    e = {"id": f"img{i}", "path": f"/data/img{i}.png", "stamp": {"size": 100 + i, "mtime_ns": 1700000000000000000 + i},
         "metadata": {"caption": f"shape {i}"}}
    if state:
        e["state"] = hashlib.sha256(e["id"].encode()).hexdigest()[:32] + ".f16"
    return e


out("index_file", "v2_states.idx", index_file(b"BLIPIDX2", {
    "package": "src:vision", "dim": 4, "states": {"tokens": 2, "width": 4},
    "entries": [entry(0), entry(1)]}, [0.5, -0.5, 0.25, 1.0, 0.0, 1.0, -1.0, 0.125]))
out("index_file", "v2_plain.idx", index_file(b"BLIPIDX2", {
    "package": "src:vision", "dim": 3, "entries": [entry(0, False)]}, [1.0, 2.0, 3.0]))
out("index_file", "v1.idx", index_file(b"BLIPIDX1", {
    "package": "src:vision", "dim": 2,
    "entries": [["/data/a.png", {"size": 1, "mtime_ns": 2}]]}, [0.5, 0.5]))


# Server request bodies (fuzz_targets/server_request.rs): byte 0 picks the route (caption, embed,
# itm, vqa, search, index), byte 1 the content type (0 JSON, 1 multipart with boundary
# "fuzzboundary").
import base64

with open(os.path.join(FIX, "images", "synthetic_a.png"), "rb") as f:
    png = f.read()
b64 = base64.b64encode(png).decode()
bodies = {
    "caption": (0, {"images": [b64, "data:image/png;base64," + b64], "beams": 2, "max_length": 8, "repetition_penalty": 1.2}),
    "caption_sampling": (0, {"images": [b64], "sample": True, "top_k": 5, "top_p": 0.9, "temperature": 0.7, "seed": 1}),
    "embed": (1, {"images": [b64], "texts": ["a red square", "two circles"]}),
    "itm": (2, {"image": b64, "texts": ["a red square"]}),
    "vqa": (3, {"image": b64, "questions": ["what shape is it?"], "answers": ["square", "circle"], "k": 1}),
    "search": (4, {"text": "a red square", "k": 3, "rerank": 2}),
    "index": (5, {"images": [{"id": "a", "image": b64, "metadata": {"k": 1}}]}),
}
for name, (route, body) in bodies.items():
    out("server_request", f"{name}.json", bytes([route, 0]) + json.dumps(body).encode())
part = lambda name, value, extra="": (
    f"--fuzzboundary\r\nContent-Disposition: form-data; name=\"{name}\"{extra}\r\n\r\n").encode() + value + b"\r\n"
multipart = (part("images", png, "; filename=\"a.png\"\r\nContent-Type: image/png")
             + part("prompt", b"a picture of") + part("beams", b"2") + b"--fuzzboundary--\r\n")
out("server_request", "caption.multipart", bytes([0, 1]) + multipart)
