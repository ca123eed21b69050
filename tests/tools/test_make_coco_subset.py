"""tools/make_coco_subset.py on a tiny COCO root made here (real JSON and JPEG files): layout, seeding, the category
filter, resizing with the annotations scaled, and bad input answered with one line, exit 2 and no output."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from repo_paths import REPO

spec = importlib.util.spec_from_file_location("make_coco_subset", os.path.join(REPO, "tools", "make_coco_subset.py"))
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 18, "name": "dog", "supercategory": "animal"}]


def person(ann_id, image_id, x, y, w, h, crowd_size=None):
    """A person annotation: a rectangle polygon and two keypoints (one unlabelled), or a crowd RLE mask."""
    ann = {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [x, y, w, h], "area": float(w * h),
           "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
           "keypoints": [x + 1, y + 2, 2, 0, 0, 0], "num_keypoints": 1}
    if crowd_size:  # uncompressed RLE (column-major runs) of the same rectangle
        from pycocotools import mask as mask_utils
        ih, iw = crowd_size
        m = np.zeros((ih, iw), np.uint8)
        m[y:y + h, x:x + w] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        counts = [len(list(g)) for g in _runs(m.flatten(order="F"))]
        ann.update(iscrowd=1, segmentation={"size": [ih, iw], "counts": counts}, area=float(mask_utils.area(rle)))
    return ann


def _runs(flat):
    """Runs of equal values, starting with a run of zeros (possibly empty), as COCO's uncompressed RLE counts them."""
    out, value, start = [], 0, 0
    for i, v in enumerate(flat):
        if v != value:
            out.append(flat[start:i])
            value, start = v, i
    out.append(flat[start:])
    return out


@pytest.fixture
def coco(tmp_path):
    """COCO root: 4 train images (one 200x100 with a polygon person and a crowd RLE person, one with a dog only, one
    unannotated, one 80x60 person) and 2 val images, all JPEG."""
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    sizes = {1: (200, 100), 2: (120, 90), 3: (64, 64), 4: (80, 60), 5: (150, 150), 6: (90, 120)}
    rng = np.random.default_rng(0)
    for i, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(root / "images" / f"{i:012d}.jpg")
    images = {i: {"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h} for i, (w, h) in sizes.items()}
    train = {"info": {"description": "fixture"}, "images": [images[i] for i in (1, 2, 3, 4)], "categories": CATEGORIES,
             "annotations": [person(10, 1, 20, 10, 40, 60), person(11, 1, 100, 20, 60, 40, crowd_size=(100, 200)),
                             {"id": 12, "image_id": 2, "category_id": 18, "bbox": [5, 5, 30, 20], "area": 600.0,
                              "iscrowd": 0, "segmentation": [[5, 5, 35, 5, 35, 25, 5, 25]]},
                             person(13, 4, 10, 10, 20, 30)]}
    val = {"images": [images[5], images[6]], "categories": CATEGORIES,
           "annotations": [person(20, 5, 30, 30, 50, 80), person(21, 6, 10, 20, 30, 40)]}
    (root / "instances_train.json").write_text(json.dumps(train))
    (root / "instances_val.json").write_text(json.dumps(val))
    return root


def load(out, split):
    return json.loads((out / f"instances_{split}.json").read_text())


def test_subset_layout_is_coco_and_seeded(coco, tmp_path):
    from pycocotools.coco import COCO
    out = tmp_path / "sub"
    assert tool.main([str(coco), str(out), "--train-num", "2", "--val-num", "1"]) == 0
    assert sorted(os.listdir(out)) == ["images", "instances_train.json", "instances_val.json"]
    train, val = load(out, "train"), load(out, "val")
    assert len(train["images"]) == 2 and len(val["images"]) == 1
    assert {im["id"] for im in train["images"]} <= {1, 2, 4}  # never the unannotated image 3
    assert train["info"] == {"description": "fixture"} and train["categories"] == CATEGORIES
    names = sorted(im["file_name"] for im in train["images"] + val["images"])
    assert sorted(os.listdir(out / "images")) == names
    for im in train["images"] + val["images"]:
        assert Image.open(out / "images" / im["file_name"]).size == (im["width"], im["height"])
        assert (out / "images" / im["file_name"]).read_bytes() == (coco / "images" / im["file_name"]).read_bytes()
    ids = {im["id"] for im in train["images"]}
    assert {a["id"] for a in train["annotations"]} == {a["id"] for a in json.loads(
        (coco / "instances_train.json").read_text())["annotations"] if a["image_id"] in ids}
    COCO(str(out / "instances_train.json"))  # pycocotools reads it
    again = tmp_path / "again"
    assert tool.main([str(coco), str(again), "--train-num", "2", "--val-num", "1"]) == 0
    assert load(again, "train") == train and load(again, "val") == val
    draws = set()
    for seed in range(8):
        assert tool.main([str(coco), str(tmp_path / f"s{seed}"), "--train-num", "1", "--val-num", "1",
                          "--seed", str(seed)]) == 0
        draws.add(load(tmp_path / f"s{seed}", "train")["images"][0]["id"])
    assert len(draws) > 1  # the seed changes the draw


def test_category_keeps_only_its_annotations_and_images(coco, tmp_path):
    out = tmp_path / "sub"
    assert tool.main([str(coco), str(out), "--train-num", "2", "--val-num", "2", "--category", "person"]) == 0
    train = load(out, "train")
    assert train["categories"] == [CATEGORIES[0]]
    assert {im["id"] for im in train["images"]} == {1, 4}  # image 2 has a dog only
    assert {a["category_id"] for a in train["annotations"]} == {1}
    assert tool.main([str(coco), str(tmp_path / "dog"), "--train-num", "1", "--val-num", "1", "--category",
                      "dog"]) == 2  # no val image has a dog


def test_max_side_resizes_images_and_scales_annotations(coco, tmp_path):
    from pycocotools import mask as mask_utils
    out = tmp_path / "sub"
    assert tool.main([str(coco), str(out), "--train-num", "2", "--val-num", "2", "--category", "person",
                      "--max-side", "50"]) == 0
    train = load(out, "train")
    by_id = {im["id"]: im for im in train["images"]}
    assert (by_id[1]["width"], by_id[1]["height"]) == (50, 25) and (by_id[4]["width"], by_id[4]["height"]) == (50, 38)
    for im in train["images"] + load(out, "val")["images"]:
        assert Image.open(out / "images" / im["file_name"]).size == (im["width"], im["height"])
        assert max(im["width"], im["height"]) == 50
    anns = {a["id"]: a for a in train["annotations"]}
    poly = anns[10]  # 200x100 -> 50x25: a quarter in both directions
    assert poly["bbox"] == pytest.approx([5, 2.5, 10, 15])
    assert poly["segmentation"] == [pytest.approx([5, 2.5, 15, 2.5, 15, 17.5, 5, 17.5])]
    assert poly["area"] == pytest.approx(2400 / 16)
    assert poly["keypoints"] == pytest.approx([21 / 4, 12 / 4, 2, 0, 0, 0])  # the unlabelled point stays (0, 0, 0)
    crowd = anns[11]
    assert crowd["segmentation"]["size"] == [25, 50]
    mask = mask_utils.decode(crowd["segmentation"])
    assert mask.shape == (25, 50) and crowd["area"] == mask.sum()
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (25, 40, 5, 15)  # 100..160 x 20..60, scaled by 1/4
    sx, sy = 50 / 80, 38 / 60  # the 80x60 image: the factors of the rounded size
    assert anns[13]["bbox"] == pytest.approx([10 * sx, 10 * sy, 20 * sx, 30 * sy])
    assert anns[13]["area"] == pytest.approx(600 * sx * sy)


def test_overwrite_replaces_only_when_asked(coco, tmp_path, capsys):
    out = tmp_path / "sub"
    assert tool.main([str(coco), str(out), "--train-num", "1", "--val-num", "1"]) == 0
    before = load(out, "train")
    assert tool.main([str(coco), str(out), "--train-num", "3", "--val-num", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err and load(out, "train") == before
    # a failing run with --overwrite keeps the old subset
    assert tool.main([str(coco), str(out), "--train-num", "9", "--val-num", "1", "--overwrite"]) == 2
    assert load(out, "train") == before
    assert tool.main([str(coco), str(out), "--train-num", "3", "--val-num", "1", "--overwrite"]) == 0
    assert len(load(out, "train")["images"]) == 3
    assert sorted(os.listdir(tmp_path)) == ["coco", "sub"]  # no temporary folders left


def make_bad(coco):
    (coco / "broken.json").write_text("{not json")
    (coco / "other.json").write_text('{"images": []}')
    missing = json.loads((coco / "instances_val.json").read_text())
    missing["images"][0]["file_name"] = "gone.jpg"
    (coco / "missing_image.json").write_text(json.dumps(missing))
    (coco / "notes.txt").write_text("x")
    no_size = json.loads((coco / "instances_val.json").read_text())
    del no_size["images"][0]["width"]
    (coco / "no_size.json").write_text(json.dumps(no_size))


BAD = [
    (["{tmp}/nowhere", "{out}"], ["COCO root not found"]),
    (["{coco}", "{out}", "--train-ann", "nope.json"], ["annotation file not found", "nope.json"]),
    (["{coco}", "{out}", "--val-ann", "broken.json"], ["broken.json is not JSON"]),
    (["{coco}", "{out}", "--train-ann", "other.json"], ["not a COCO annotation file", "annotations, categories"]),
    (["{coco}", "{out}", "--train-num", "4"], ["--train-num 4 exceeds the 3 train images"]),
    (["{coco}", "{out}", "--category", "cat"], ["no category 'cat'", "dog, person"]),
    (["{coco}", "{out}", "--val-ann", "missing_image.json", "--val-num", "2"], ["image not found", "gone.jpg"]),
    (["{coco}", "{coco}/notes.txt"], ["not a folder"]),
    (["{coco}", "{out}", "--val-ann", "no_size.json", "--val-num", "2"], ["no_size.json: malformed COCO entry", "width"]),
    (["{coco}", "{out}", "--train-num", "0"], ["--train-num", "positive integer"]),
    (["{coco}", "{out}", "--max-side", "-5"], ["--max-side"]),
    (["{coco}"], ["required", "out"]),
]


@pytest.mark.parametrize("argv,words", BAD)
def test_bad_input_is_one_line_exit_2_and_no_output(coco, tmp_path, capsys, argv, words):
    make_bad(coco)
    out = tmp_path / "sub"
    argv = ["--train-num", "1", "--val-num", "1"] + [a.format(tmp=tmp_path, out=out, coco=coco) for a in argv]
    try:
        code = tool.main(argv)
    except SystemExit as exc:  # argparse's errors (ToolParser: one line, exit 2)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "error:" in err, err
    for word in words:
        assert word in err, err
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["coco"]

