"""Seeded synthetic scenes for a small BLIP that really works: 1-3 coloured shapes on varied
backgrounds, each with template captions, retrieval texts and VQA pairs.

Scenes are a pure function of (split, index), so the training script draws them on the fly and
`write` puts a split on disk in COCO layout (images + captions) and VQAv2 layout (questions,
annotations). Only Pillow and numpy are needed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 96
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
# Backgrounds stay clear of the shape colours: light or dark greys and tints, plain or graded.
BACKGROUNDS = [(245, 245, 245), (200, 200, 200), (60, 60, 60), (225, 235, 250), (250, 240, 220), (30, 40, 50)]
SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}
PROMPT = "a picture of "


@dataclass
class Obj:
    shape: str
    color: str
    x: int  # centre
    y: int
    r: int  # half size


@dataclass
class Scene:
    image: Image.Image
    objects: list[Obj]  # left to right
    captions: list[str]  # the first is canonical (what the captioner learns)
    qa: list[tuple[str, str]]


def _draw(draw: ImageDraw.ImageDraw, o: Obj) -> None:
    c = COLORS[o.color]
    box = [o.x - o.r, o.y - o.r, o.x + o.r, o.y + o.r]
    if o.shape == "circle":
        draw.ellipse(box, fill=c)
    elif o.shape == "square":
        draw.rectangle(box, fill=c)
    else:
        draw.polygon([(o.x, o.y - o.r), (o.x - o.r, o.y + o.r), (o.x + o.r, o.y + o.r)], fill=c)


def _background(rng: random.Random) -> Image.Image:
    a = rng.choice(BACKGROUNDS)
    img = Image.new("RGB", (SIZE, SIZE), a)
    if rng.random() < 0.5:  # a vertical grade towards a second background tone
        b = rng.choice(BACKGROUNDS)
        draw = ImageDraw.Draw(img)
        for y in range(SIZE):
            t = y / (SIZE - 1)
            draw.line([(0, y), (SIZE, y)], fill=tuple(int(a[i] * (1 - t) + b[i] * t) for i in range(3)))
    return img


def phrase(o: Obj) -> str:
    article = "an" if o.color[0] in "aeiou" else "a"
    return f"{article} {o.color} {o.shape}"


def captions_for(objs: list[Obj]) -> list[str]:
    p = [phrase(o) for o in objs]
    if len(objs) == 1:
        return [p[0], f"{p[0]} in the picture", f"there is {p[0]}"]
    if len(objs) == 2:
        return [f"{p[0]} to the left of {p[1]}", f"{p[1]} to the right of {p[0]}", f"{p[0]} and {p[1]}"]
    return [f"{p[0]} , {p[1]} and {p[2]}", f"{p[0]} to the left of {p[1]} and {p[2]}",
            f"three shapes : {p[0]} , {p[1]} and {p[2]}"]


def questions_for(objs: list[Obj], rng: random.Random) -> list[tuple[str, str]]:
    qa = [("how many shapes are there?", COUNT_WORDS[len(objs)])]
    shapes = [o.shape for o in objs]
    colors = [o.color for o in objs]
    for o in objs:
        if shapes.count(o.shape) == 1:
            qa.append((f"what color is the {o.shape}?", o.color))
        if colors.count(o.color) == 1:
            qa.append((f"what shape is the {o.color} object?", o.shape))
    # One yes and one no question about a colour-shape pair.
    present = {(o.color, o.shape) for o in objs}
    yes = rng.choice(sorted(present))
    qa.append((f"is there {phrase(Obj(yes[1], yes[0], 0, 0, 0))}?", "yes"))
    while True:
        no = (rng.choice(sorted(COLORS)), rng.choice(SHAPES))
        if no not in present:
            break
    qa.append((f"is there {phrase(Obj(no[1], no[0], 0, 0, 0))}?", "no"))
    return qa


def scene(split: str, index: int) -> Scene:
    rng = random.Random(SPLIT_SEEDS[split] * 1_000_003 + index)
    n = rng.choice([1, 2, 2, 3, 3])
    img = _background(rng)
    draw = ImageDraw.Draw(img)
    # Horizontal slots keep shapes apart, so "to the left of" is always true.
    slot = SIZE // n
    objs = []
    for i in range(n):
        r = rng.randint(9, 14) if n == 3 else rng.randint(10, 18)
        x = rng.randint(i * slot + r + 1, (i + 1) * slot - r - 1)
        y = rng.randint(r + 2, SIZE - r - 3)
        objs.append(Obj(rng.choice(SHAPES), rng.choice(sorted(COLORS)), x, y, r))
    for o in objs:
        _draw(draw, o)
    return Scene(img, objs, captions_for(objs), questions_for(objs, rng))


def vocabulary() -> list[str]:
    """Every word the captions, prompt, questions and answers use (the tokenizer's vocabulary)."""
    words = set(PROMPT.split()) | set(COLORS) | set(SHAPES) | set(COUNT_WORDS.values())
    words |= set("a an to the left of right and in picture there is three shapes how many are what color shape "
                 "object yes no".split())
    words |= {",", ":", "?", "."}
    return sorted(words)


def unique_scenes(split: str, count: int) -> list[tuple[int, Scene]]:
    """The first `count` scenes of a split whose canonical captions differ (so text-to-image
    retrieval has one right answer)."""
    out, seen, i = [], set(), 0
    while len(out) < count:
        s = scene(split, i)
        if s.captions[0] not in seen:
            seen.add(s.captions[0])
            out.append((i, s))
        i += 1
    return out


def write(split: str, count: int, out: Path) -> None:
    """Images + COCO captions (`captions.json`) + VQAv2 questions/annotations."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, caps, questions, annotations = [], [], [], []
    for image_id, (index, s) in enumerate(unique_scenes(split, count)):
        name = f"{split}_{index:05d}.png"
        s.image.save(out / "images" / name, optimize=True)
        images.append({"id": image_id, "file_name": name, "width": SIZE, "height": SIZE})
        for c in s.captions:
            caps.append({"id": len(caps), "image_id": image_id, "caption": c})
        for q, a in s.qa:
            qid = len(questions)
            questions.append({"image_id": image_id, "question": q, "question_id": qid})
            annotations.append({"question_id": qid, "image_id": image_id, "question_type": q.split()[0],
                                "answer_type": "yes/no" if a in ("yes", "no") else "other",
                                "multiple_choice_answer": a,
                                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                            for k in range(10)]})
    info = {"description": f"blip-onnx shapes, {split} split", "version": "1"}
    (out / "captions.json").write_text(json.dumps({"info": info, "images": images, "annotations": caps}) + "\n")
    (out / "vqa_questions.json").write_text(json.dumps({"info": info, "task_type": "Open-Ended",
                                                        "data_type": "shapes", "data_subtype": split,
                                                        "questions": questions}) + "\n")
    (out / "vqa_annotations.json").write_text(json.dumps({"info": info, "data_type": "shapes",
                                                          "data_subtype": split, "annotations": annotations}) + "\n")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="write a split of the shapes dataset (COCO + VQAv2 layout)")
    ap.add_argument("--split", choices=sorted(SPLIT_SEEDS), default="test")
    ap.add_argument("--count", type=int, default=300, help="images (distinct canonical captions)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    write(a.split, a.count, Path(a.out))
