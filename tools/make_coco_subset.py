#!/usr/bin/env python
"""Write a small COCO-format data set (a seeded subset of a COCO root's images, optionally one category and smaller
images) in the layout the detection configs read: OUT/instances_train.json, OUT/instances_val.json, OUT/images/.

    python tools/make_coco_subset.py COCO_ROOT OUT --train-num 64 --val-num 16 --category person --max-side 320

COCO_ROOT holds the annotation files and the images; `--train-ann`, `--val-ann` and `--images` (paths relative to
COCO_ROOT) name them, defaulting to the layout written here (instances_train.json, instances_val.json, images/). The
2017 release's own layout is e.g. `--train-ann annotations/instances_train2017.json --val-ann
annotations/instances_val2017.json --train-images train2017 --val-images val2017`.

Our choices: images are drawn (with `--seed`) only among those with at least one annotation of the kept categories
(mmdet's filter_empty_gt drops the others from training anyway); with `--category` only that category's annotations
and entry are kept (its id unchanged). With `--max-side`, an image whose longer side exceeds it is resized (bilinear)
so that it fits, and its annotations are scaled with it: boxes, polygons and keypoints by the horizontal and vertical
factors, polygon areas by their product, RLE masks resized (nearest) and their area recounted. Smaller images are
copied as they are. The output is built in a temporary folder beside OUT and moved into place only when complete; an
existing non-empty OUT is refused unless --overwrite. Not for committing: COCO images stay out of the repository.
"""
import argparse
import json
import os
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plugin.errors import ToolParser, UserInputError, nonnegative_int, positive_int, tool_main  # noqa: E402


def read_coco(path):
    """A COCO annotation file as a dict with images, annotations and categories, or one clear error."""
    if not os.path.isfile(path):
        raise UserInputError(f"annotation file not found: {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path} is not JSON ({exc})") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise UserInputError(f"{path} is not a COCO annotation file (no {', '.join(missing)})")
    return data


def pick(data, num, rng, category_ids, split):
    """`num` images drawn with `rng` among those that have an annotation of `category_ids` (None: any), in id order,
    with their annotations of those categories."""
    anns = [a for a in data["annotations"] if category_ids is None or a["category_id"] in category_ids]
    annotated = {a["image_id"] for a in anns}
    pool = sorted((im for im in data["images"] if im["id"] in annotated), key=lambda im: im["id"])
    if num > len(pool):
        raise UserInputError(f"--{split}-num {num} exceeds the {len(pool)} {split} images with annotations"
                             + (" of the chosen category" if category_ids is not None else ""))
    images = sorted(rng.sample(pool, num), key=lambda im: im["id"])
    ids = {im["id"] for im in images}
    return images, [a for a in anns if a["image_id"] in ids]


def scale_rle(seg, width, height):
    """An RLE mask resized to width x height (nearest), as compressed RLE, and its new area."""
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils
    rle = mask_utils.frPyObjects(seg, *seg["size"]) if isinstance(seg["counts"], list) else seg
    mask = Image.fromarray(mask_utils.decode(rle) * 255).resize((width, height), Image.NEAREST)
    new = mask_utils.encode(np.asfortranarray((np.asarray(mask) > 127).astype(np.uint8)))
    return {"size": [height, width], "counts": new["counts"].decode("ascii")}, float(mask_utils.area(new))


def scale_annotation(ann, sx, sy, width, height):
    """A copy of `ann` for its image scaled by (sx, sy) to width x height."""
    ann = dict(ann)
    x, y, w, h = ann["bbox"]
    ann["bbox"] = [x * sx, y * sy, w * sx, h * sy]
    seg = ann.get("segmentation")
    if isinstance(seg, list):  # polygons [x0, y0, x1, y1, ...]
        ann["segmentation"] = [[v * (sx if i % 2 == 0 else sy) for i, v in enumerate(poly)] for poly in seg]
        ann["area"] = ann.get("area", w * h) * sx * sy
    elif isinstance(seg, dict):
        ann["segmentation"], ann["area"] = scale_rle(seg, width, height)
    else:
        ann["area"] = ann.get("area", w * h) * sx * sy
    if "keypoints" in ann:  # [x, y, visibility] triples; unlabelled points stay (0, 0, 0)
        kp = ann["keypoints"]
        ann["keypoints"] = [v * sx if i % 3 == 0 and kp[i + 2] else v * sy if i % 3 == 1 and kp[i + 1] else v
                            for i, v in enumerate(kp)]
    return ann


def write_image(src, dst, image, max_side):
    """Copy or shrink one image file; returns the (sx, sy) applied to its annotations, or None if unchanged."""
    from PIL import Image, UnidentifiedImageError
    if not os.path.isfile(src):
        raise UserInputError(f"image not found: {src} (listed in the annotations as {image['file_name']!r})")
    w, h = image["width"], image["height"]
    if not max_side or max(w, h) <= max_side:
        shutil.copyfile(src, dst)
        return None
    s = max_side / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    try:
        with Image.open(src) as im:
            if im.size != (w, h):
                raise UserInputError(f"{src} is {im.size[0]}x{im.size[1]}, the annotations say {w}x{h}")
            fmt = im.format
            small = im.convert("RGB" if im.mode not in ("RGB", "L") else im.mode).resize((nw, nh), Image.BILINEAR)
    except (UnidentifiedImageError, OSError) as exc:
        raise UserInputError(f"cannot read image {src} ({exc})") from None
    small.save(dst, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    image["width"], image["height"] = nw, nh
    return nw / w, nh / h


def build_split(root, ann_path, image_dir, out_images, num, rng, category, max_side, split):
    """One split's subset: images written to `out_images`, the annotation dict returned."""
    data = read_coco(os.path.join(root, ann_path))
    category_ids = None
    categories = data["categories"]
    if category is not None:
        categories = [c for c in data["categories"] if c.get("name") == category]
        if not categories:
            names = ", ".join(sorted(str(c.get("name")) for c in data["categories"]))
            raise UserInputError(f"no category {category!r} in {ann_path} (it has: {names})")
        category_ids = {c["id"] for c in categories}
    images, anns = pick(data, num, rng, category_ids, split)
    images = [dict(im) for im in images]
    scales = {}
    for im in images:
        dst = os.path.join(out_images, os.path.basename(im["file_name"]))
        if os.path.exists(dst):
            raise UserInputError(f"two images named {os.path.basename(im['file_name'])!r} (train and val share "
                                 "the output images/ folder)")
        scales[im["id"]] = write_image(os.path.join(root, image_dir, im["file_name"]), dst, im, max_side)
        im["file_name"] = os.path.basename(im["file_name"])
    sizes = {im["id"]: (im["width"], im["height"]) for im in images}
    anns = [a if scales[a["image_id"]] is None else scale_annotation(a, *scales[a["image_id"]], *sizes[a["image_id"]])
            for a in anns]
    out = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    out.update(images=images, annotations=anns, categories=categories)
    return out


def parse_args(argv):
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="COCO root folder")
    p.add_argument("out", help="output folder (created; refused if it exists and is not empty, unless --overwrite)")
    p.add_argument("--train-num", type=positive_int, default=64, help="training images (default 64)")
    p.add_argument("--val-num", type=positive_int, default=16, help="validation images (default 16)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--category", help="keep only this category (by name), e.g. person")
    p.add_argument("--max-side", type=positive_int, help="shrink images whose longer side exceeds this many pixels")
    p.add_argument("--train-ann", default="instances_train.json")
    p.add_argument("--val-ann", default="instances_val.json")
    p.add_argument("--images", default="images", help="image folder of both splits (default images)")
    p.add_argument("--train-images", help="image folder of the training split (default --images)")
    p.add_argument("--val-images", help="image folder of the validation split (default --images)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT")
    return p.parse_args(argv)


@tool_main
def main(argv=None):
    args = parse_args(argv)
    if not os.path.isdir(args.root):
        raise UserInputError(f"COCO root not found: {args.root}")
    out = os.path.abspath(args.out)
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise UserInputError(f"{args.out} exists and is not empty (pass --overwrite to replace it)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserInputError(f"{args.out} exists and is not a folder")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".coco_subset-", dir=parent)  # same file system: the final move is a rename
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the result is a data set others may read
        os.mkdir(os.path.join(tmp, "images"))
        rng = random.Random(args.seed)
        counts = {}
        for split, ann, num, images in (("train", args.train_ann, args.train_num, args.train_images),
                                        ("val", args.val_ann, args.val_num, args.val_images)):
            try:
                data = build_split(args.root, ann, images or args.images, os.path.join(tmp, "images"), num, rng,
                                   args.category, args.max_side, split)
            except (KeyError, TypeError, ValueError, IndexError) as exc:  # an entry without id, bbox, width, ...
                raise UserInputError(f"{ann}: malformed COCO entry ({type(exc).__name__}: {exc})") from None
            with open(os.path.join(tmp, f"instances_{split}.json"), "w") as f:
                json.dump(data, f)
            counts[split] = (len(data["images"]), len(data["annotations"]))
        if os.path.exists(out):  # --overwrite (or an empty folder): the old one goes only once the new one is complete
            old = tempfile.mkdtemp(prefix=".coco_subset-old-", dir=parent)
            os.rename(out, os.path.join(old, "x"))
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    (tn, ta), (vn, va) = counts["train"], counts["val"]
    print(f"wrote {args.out}: {tn} train images ({ta} annotations), {vn} val images ({va} annotations), seed "
          f"{args.seed}" + (f", category {args.category}" if args.category else "")
          + (f", longer side <= {args.max_side} px" if args.max_side else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
