"""An approximation of the `cub100` photos from the official CUB-200-2011 release
(docs/data-and-weights.md): the same 100 species, renumbered 1..100 in the official order,
each photo cropped to its official bounding box and resized to 227x227, the official
train/test flags kept, written in the CUB_200_2011 file layout the `cub200` loader reads.

    python docs/tools/cub100_from_official.py path/to/CUB_200_2011 path/to/cub100

Not the committed copy: that one comes from github.com/serizba/vision (docs/tools/build_cub100.py),
whose crops were made in a way its source does not state, and whose photos were never matched to
official image ids.  The resampling filter and the JPEG quality below are this script's choice.
A rebuilt copy has other pixels (and may hold other photos), so its numbers are not the committed
run's: the committed checkpoint loads with a warning that it was trained on other data.
"""
import sys
from pathlib import Path

from PIL import Image

#: the official CUB-200-2011 class ids of the 100 species, in the order of the subset's classes 1..100
OFFICIAL_IDS = [
    1, 4, 7, 10, 12, 13, 14, 15, 16, 18, 19, 22, 24, 26, 28, 34, 35, 41, 42, 46,
    47, 48, 50, 51, 52, 53, 54, 55, 56, 57, 58, 60, 61, 63, 67, 68, 69, 70, 73, 75,
    77, 79, 80, 81, 83, 85, 86, 87, 88, 89, 90, 93, 94, 95, 96, 97, 98, 100, 101, 105,
    106, 109, 110, 114, 120, 123, 124, 132, 134, 136, 138, 139, 140, 151, 152, 158, 159, 163, 164, 165,
    166, 169, 170, 172, 176, 180, 181, 184, 185, 186, 187, 188, 189, 190, 191, 192, 194, 195, 198, 200,
]
SIZE = 227


def rows(root: Path, name: str) -> list[list[str]]:
    return [line.split() for line in (root / name).read_text().splitlines() if line.strip()]


def build(src: Path, out: Path) -> int:
    new_id = {c: k + 1 for k, c in enumerate(OFFICIAL_IDS)}
    names = {int(i): n.split(".", 1)[1] for i, n in rows(src, "classes.txt")}
    label = {i: int(c) for i, c in rows(src, "image_class_labels.txt")}
    is_train = dict(rows(src, "train_test_split.txt"))
    box = {i: tuple(float(v) for v in b) for i, *b in rows(src, "bounding_boxes.txt")}
    folder = {k: f"{k:03d}.{names[c]}" for c, k in new_id.items()}
    kept = []
    for i, rel in rows(src, "images.txt"):
        if label[i] not in new_id:
            continue
        k = new_id[label[i]]
        x, y, w, h = box[i]
        with Image.open(src / "images" / rel) as im:
            crop = im.convert("RGB").crop((round(x), round(y), round(x + w), round(y + h)))
        dst = out / "images" / folder[k] / Path(rel).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        crop.resize((SIZE, SIZE), Image.BILINEAR).save(dst, quality=90)
        kept.append((f"{folder[k]}/{dst.name}", k, is_train[i]))

    def write(name, lines):
        (out / name).write_text("".join(f"{line}\n" for line in lines))

    write("images.txt", [f"{n} {p}" for n, (p, _, _) in enumerate(kept, 1)])
    write("image_class_labels.txt", [f"{n} {k}" for n, (_, k, _) in enumerate(kept, 1)])
    write("train_test_split.txt", [f"{n} {t}" for n, (_, _, t) in enumerate(kept, 1)])
    write("classes.txt", [f"{k} {folder[k]}" for k in sorted(folder)])
    return len(kept)


if __name__ == "__main__":
    n = build(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {n} photos of {len(OFFICIAL_IDS)} species to {sys.argv[2]}")
