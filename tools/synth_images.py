"""Synthetic benchmark photos: 640x480 JPEGs of random ellipses and rectangles on a random background,
image i drawn from seed i, so every run (and every machine) makes the same files.

  synth_images.py OUT_DIR COUNT
"""
import random
import sys

from PIL import Image, ImageDraw


def main(out, n):
    for i in range(n):
        rng = random.Random(i)
        img = Image.new("RGB", (640, 480), tuple(rng.randrange(256) for _ in range(3)))
        d = ImageDraw.Draw(img)
        for _ in range(rng.randrange(3, 9)):
            x, y = rng.randrange(560), rng.randrange(400)
            box = (x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200))
            fill = tuple(rng.randrange(256) for _ in range(3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
        img.save(f"{out}/img-{i:05d}.jpg", quality=90)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
