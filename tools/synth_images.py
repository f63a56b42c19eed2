"""Synthetic benchmark photos: 640x480 JPEGs of random ellipses and rectangles on a random background,
image i drawn from seed i, so every run (and every machine) makes the same files. With DISTINCT < COUNT,
image i is a hard link to image i % DISTINCT (the same bytes under another name).

  synth_images.py OUT_DIR COUNT [DISTINCT]
"""
import os
import random
import sys

from PIL import Image, ImageDraw


def main(out, n, distinct):
    for i in range(min(n, distinct)):
        rng = random.Random(i)
        img = Image.new("RGB", (640, 480), tuple(rng.randrange(256) for _ in range(3)))
        d = ImageDraw.Draw(img)
        for _ in range(rng.randrange(3, 9)):
            x, y = rng.randrange(560), rng.randrange(400)
            box = (x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200))
            fill = tuple(rng.randrange(256) for _ in range(3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
        img.save(f"{out}/img-{i:05d}.jpg", quality=90)
    for i in range(distinct, n):
        os.link(f"{out}/img-{i % distinct:05d}.jpg", f"{out}/img-{i:05d}.jpg")


if __name__ == "__main__":
    count = int(sys.argv[2])
    main(sys.argv[1], count, int(sys.argv[3]) if len(sys.argv) > 3 else count)
