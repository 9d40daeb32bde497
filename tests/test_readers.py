"""Dataset readers on tiny fixtures written here in each dataset's real on-disk format, and their errors."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from xaiimg.data.readers import (
    VOC_CLASSES,
    COCOInstances,
    DatasetLayoutError,
    ImageNetSegmentation,
    ImageNetVal,
    VOCDetection,
)

WNIDS = [f"n{index:08d}" for index in range(1000)]


def _write_jpeg(path, width=12, height=8, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


# ------------------------------------------------------------------------------------------ ImageNet val
@pytest.fixture
def imagenet_flat(tmp_path):
    root = tmp_path / "val"
    for i in (1, 2, 3):
        _write_jpeg(root / f"ILSVRC2012_val_{i:08d}.JPEG", value=40 * i)
    (tmp_path / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {i}, alias\n" for i, w in enumerate(WNIDS)))
    return root


def test_imagenet_loc_solution(imagenet_flat, tmp_path):
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n"
                   f"ILSVRC2012_val_00000002,{WNIDS[7]} 1 2 5 6 {WNIDS[7]} 3 3 9 7\n"
                   f"ILSVRC2012_val_00000001,{WNIDS[999]} 0 0 11 7\n"
                   f"ILSVRC2012_val_00000003,{WNIDS[0]} 2 2 4 4\n")
    dataset = ImageNetVal(imagenet_flat, csv)  # synsets found beside the CSV
    assert [p.path.name for p in dataset.items] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]
    assert dataset.labels == [999, 7, 0]
    image, label = dataset[1]
    assert image.size == (12, 8) and label == 7 and np.asarray(image)[0, 0, 0] == 80


def test_imagenet_val_txt_and_csv(imagenet_flat, tmp_path):
    txt = tmp_path / "val.txt"
    txt.write_text("ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000003.JPEG 970\n")
    dataset = ImageNetVal(imagenet_flat, txt)
    assert [(p.path.name[-7:-5], p.label) for p in dataset.items] == [("01", 65), ("03", 970)]
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\nILSVRC2012_val_00000002.JPEG,12\n")
    assert [(p.path.name, p.label) for p in ImageNetVal(imagenet_flat, csv).items] == \
        [("ILSVRC2012_val_00000002.JPEG", 12)]


def test_imagenet_class_folders(tmp_path):
    root = tmp_path / "val"
    _write_jpeg(root / WNIDS[5] / "ILSVRC2012_val_00000009.JPEG")
    _write_jpeg(root / WNIDS[900] / "ILSVRC2012_val_00000004.JPEG")
    with pytest.raises(DatasetLayoutError, match="2 class folders, not 1000"):
        ImageNetVal(root)
    synsets = tmp_path / "synset_words.txt"
    synsets.write_text("\n".join(f"{w} name" for w in WNIDS))
    assert ImageNetVal(root, synsets=synsets).labels == [5, 900]
    for wnid in WNIDS:  # all 1000 folders: sorted order is the index order
        (root / wnid).mkdir(exist_ok=True)
    assert ImageNetVal(root).labels == [5, 900]


def test_imagenet_errors(imagenet_flat, tmp_path):
    with pytest.raises(DatasetLayoutError, match="ImageNet val images: folder not found.*README"):
        ImageNetVal(tmp_path / "nowhere", tmp_path / "val.txt")
    with pytest.raises(DatasetLayoutError, match="labels: file not found"):
        ImageNetVal(imagenet_flat, tmp_path / "val.txt")
    with pytest.raises(DatasetLayoutError, match="no class folders and no labels"):
        ImageNetVal(imagenet_flat)
    txt = tmp_path / "val.txt"
    txt.write_text("ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000077.JPEG 3\n")
    with pytest.raises(DatasetLayoutError, match="1 labelled images missing.*00000077"):
        ImageNetVal(imagenet_flat, txt)
    txt.write_text("ILSVRC2012_val_00000001.JPEG 1000\n")
    with pytest.raises(ValueError, match=r"val.txt:1: expected"):
        ImageNetVal(imagenet_flat, txt)
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n99999999 0 0 1 1\n")
    with pytest.raises(ValueError, match="LOC_val_solution.csv:2"):
        ImageNetVal(imagenet_flat, csv)
    (tmp_path / "LOC_synset_mapping.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="synset list: file not found"):
        ImageNetVal(imagenet_flat, csv)


# -------------------------------------------------------------------------------------------- VOC 2007
def _voc_xml(width, height, objects):
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>{truncated}</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1), difficult, truncated in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>x.jpg</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size><segmented>0</segmented>{body}</annotation>")


@pytest.fixture
def voc_root(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000001\n000004\n")
    _write_jpeg(voc / "JPEGImages" / "000001.jpg", width=20, height=10)
    _write_jpeg(voc / "JPEGImages" / "000004.jpg", width=6, height=5)
    (voc / "Annotations" / "000001.xml").write_text(_voc_xml(20, 10, [
        ("dog", (1, 1, 4, 3), 0, 0),      # pixels x 0..3, y 0..2
        ("dog", (3, 2, 6, 5), 1, 0),      # overlaps the first box; difficult
        ("person", (20, 10, 20, 10), 0, 1),  # the bottom-right pixel only
    ]))
    (voc / "Annotations" / "000004.xml").write_text(_voc_xml(6, 5, [("cat", (2, 2, 3, 3), 1, 0)]))
    return tmp_path


def test_voc_annotations_and_masks(voc_root):
    dataset = VOCDetection(voc_root)
    assert len(dataset) == 2 and dataset.image_ids == ["000001", "000004"]
    image, annotation = dataset[0]
    assert image.size == (20, 10) and (annotation.width, annotation.height) == (20, 10)
    dog, person = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")
    assert annotation.classes == sorted([dog, person])
    assert [o.box for o in annotation.objects] == [(0, 0, 4, 3), (2, 1, 6, 5), (19, 9, 20, 10)]
    assert [o.difficult for o in annotation.objects] == [False, True, False]
    assert [o.truncated for o in annotation.objects] == [False, False, True]
    expected = np.zeros((10, 20), bool)
    expected[0:3, 0:4] = True
    expected[1:5, 2:6] = True
    assert np.array_equal(annotation.class_mask(dog), expected)
    assert annotation.class_mask(dog).sum() == 12 + 16 - 4  # the union counts the overlap once
    easy = np.zeros((10, 20), bool)
    easy[0:3, 0:4] = True
    assert np.array_equal(annotation.class_mask(dog, include_difficult=False), easy)
    only_corner = annotation.class_mask(person)
    assert only_corner.sum() == 1 and only_corner[9, 19]
    assert not annotation.class_mask(VOC_CLASSES.index("cat")).any()
    assert not annotation.all_difficult(dog)
    cat_annotation = dataset.annotation(1)
    assert cat_annotation.all_difficult(VOC_CLASSES.index("cat"))
    # the folder itself and VOCdevkit also work as root
    assert VOCDetection(voc_root / "VOCdevkit" / "VOC2007").image_ids == dataset.image_ids
    assert VOCDetection(voc_root / "VOCdevkit").image_ids == dataset.image_ids


def test_voc_errors(voc_root, tmp_path):
    with pytest.raises(DatasetLayoutError, match="VOC2007: folder not found.*VOCdevkit/VOC2007.*README"):
        VOCDetection(tmp_path / "empty")
    with pytest.raises(DatasetLayoutError, match="VOC2007 trainval list: file not found.*trainval.txt"):
        VOCDetection(voc_root, split="trainval")
    annotations = voc_root / "VOCdevkit" / "VOC2007" / "Annotations"
    (annotations / "000004.xml").write_text(_voc_xml(6, 5, [("unicorn", (1, 1, 2, 2), 0, 0)]))
    with pytest.raises(ValueError, match="unknown VOC class 'unicorn'"):
        VOCDetection(voc_root).annotation(1)
    (annotations / "000004.xml").write_text(_voc_xml(6, 5, [("cat", (0, 1, 2, 2), 0, 0)]))
    with pytest.raises(ValueError, match="outside the 1-based image"):
        VOCDetection(voc_root).annotation(1)
    (annotations / "000004.xml").write_text("<annotation><size>")
    with pytest.raises(ValueError, match="not a valid VOC annotation XML"):
        VOCDetection(voc_root).annotation(1)
    (annotations / "000004.xml").unlink()
    with pytest.raises(DatasetLayoutError, match="VOC annotation of 000004: file not found"):
        VOCDetection(voc_root).annotation(1)


# ------------------------------------------------------------------------------------------------ COCO
def _uncompressed_rle(mask):
    """COCO's uncompressed RLE: lengths of alternating runs of 0s and 1s over the column-major pixels."""
    runs, current, length = [], 0, 0
    for value in mask.flatten(order="F"):
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    return runs + [length]


def _coco_fixture(tmp_path):
    from pycocotools import mask as mask_utils

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    _write_jpeg(root / "val2014" / "COCO_val2014_000000000042.jpg", width=16, height=12)
    _write_jpeg(root / "val2014" / "COCO_val2014_000000000007.jpg", width=8, height=8)
    rle_mask = np.zeros((12, 16), np.uint8)
    rle_mask[5:9, 10:15] = 1
    rle_mask[0, 0] = 1
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode("ascii")
    crowd = np.zeros((12, 16), np.uint8)
    crowd[10:12, 0:3] = 1
    runs = _uncompressed_rle(crowd)
    data = {
        "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "width": 16, "height": 12},
                   {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "width": 8, "height": 8}],
        "categories": [{"id": 18, "name": "dog", "supercategory": "animal"},
                       {"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 3, "name": "car", "supercategory": "vehicle"}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 18, "iscrowd": 0, "area": 24.0, "bbox": [2, 3, 6, 4],
             "segmentation": [[2.0, 3.0, 8.0, 3.0, 8.0, 7.0, 2.0, 7.0]]},
            {"id": 2, "image_id": 42, "category_id": 18, "iscrowd": 0, "area": 21.0, "bbox": [0, 0, 15, 9],
             "segmentation": rle},
            {"id": 3, "image_id": 42, "category_id": 1, "iscrowd": 1, "area": 6.0, "bbox": [0, 10, 3, 2],
             "segmentation": {"size": [12, 16], "counts": runs}},
        ],
    }
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    return root, rle_mask.astype(bool), crowd.astype(bool)


def test_coco_union_masks(tmp_path):
    root, rle_mask, crowd = _coco_fixture(tmp_path)
    dataset = COCOInstances(root)
    assert dataset.image_ids == [7, 42] and dataset.category_ids == [1, 3, 18]
    assert dataset.class_names == ["person", "car", "dog"]
    image, masks = dataset[1]
    assert image.size == (16, 12) and sorted(masks) == [0, 2]
    assert np.array_equal(masks[0], crowd)  # person: the crowd region from the uncompressed RLE
    dog = masks[2]
    assert dog.shape == (12, 16) and dog.dtype == bool
    assert np.array_equal(dog & ~_rectangle_region(), rle_mask & ~_rectangle_region())  # RLE part exact
    polygon = dog & ~rle_mask
    rectangle = np.zeros((12, 16), bool)
    rectangle[3:7, 2:8] = True  # the polygon (2,3)-(8,7) covers pixel centres x 2..7, y 3..6
    iou = (polygon & rectangle).sum() / (polygon | rectangle).sum()
    assert iou > 0.7 and not (polygon & ~_rectangle_region()).any()
    assert dataset.class_masks(0) == {}  # an image without annotations
    assert sorted(COCOInstances(root, include_crowd=False).class_masks(1)) == [2]


def _rectangle_region():
    """Pixels within one pixel of the polygon (2,3)-(8,7): where the rasterised polygon may lie."""
    region = np.zeros((12, 16), bool)
    region[2:8, 1:9] = True
    return region


def test_coco_errors(tmp_path):
    root, _, _ = _coco_fixture(tmp_path)
    with pytest.raises(DatasetLayoutError, match="COCO val2017 annotations: file not found.*instances_val2017"):
        COCOInstances(root, split="val2017")
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps({"images": [{"id": 1}]}))
    with pytest.raises(ValueError, match="not a COCO instances file"):
        COCOInstances(root)
    (root / "val2014" / "COCO_val2014_000000000042.jpg").unlink()
    (root / "val2014" / "COCO_val2014_000000000007.jpg").unlink()
    (root / "val2014").rmdir()
    with pytest.raises(DatasetLayoutError, match="COCO val2014 images: folder not found"):
        COCOInstances(root)


# ------------------------------------------------------------------------------- ImageNet-Segmentation
def _write_gtsegs(path, items):
    """An HDF5 file laid out as MATLAB v7.3 saves the ``value`` struct of gtsegs_ijcv.mat: value/img, value/gt and
    value/id are [N,1] object references; arrays are stored transposed (column-major)."""
    import h5py

    with h5py.File(path, "w") as file:
        refs = file.create_group("#refs#")
        image_refs, gt_refs, id_refs = [], [], []
        for i, (image, mask, wnid) in enumerate(items):
            image_refs.append(refs.create_dataset(f"img{i}", data=image.transpose(2, 1, 0)).ref)
            mask_ref = refs.create_dataset(f"mask{i}", data=mask.transpose(1, 0)).ref
            cell = refs.create_dataset(f"cell{i}", shape=(1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = mask_ref
            gt_refs.append(cell.ref)
            chars = np.array([ord(c) for c in wnid], np.uint16).reshape(-1, 1)
            id_refs.append(refs.create_dataset(f"id{i}", data=chars).ref)
        value = file.create_group("value")
        for name, column in (("img", image_refs), ("gt", gt_refs), ("id", id_refs)):
            dataset = value.create_dataset(name, shape=(len(items), 1), dtype=h5py.ref_dtype)
            for i, ref in enumerate(column):
                dataset[i, 0] = ref


def test_imagenet_segmentation(tmp_path):
    rng = np.random.default_rng(0)
    image0 = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # H=5, W=7: a wrong transpose changes the shape
    mask0 = np.zeros((5, 7), np.uint8)
    mask0[1:4, 2:6] = 1
    image1 = rng.integers(0, 256, (9, 4, 3), dtype=np.uint8)
    mask1 = (rng.random((9, 4)) > 0.5).astype(np.uint8)
    path = tmp_path / "gtsegs_ijcv.mat"
    _write_gtsegs(path, [(image0, mask0, "n01440764"), (image1, mask1, "n02123045")])
    with ImageNetSegmentation(path) as dataset:
        assert len(dataset) == 2
        image, mask = dataset[0]
        assert np.array_equal(np.asarray(image), image0) and np.array_equal(mask, mask0)
        image, mask = dataset[-1]
        assert np.array_equal(np.asarray(image), image1) and np.array_equal(mask, mask1)
        assert dataset.wnid(1) == "n02123045"
        resized_image, resized_mask = dataset.resized(0, size=14)
        assert resized_image.shape == (3, 14, 14) and 0 <= resized_image.min() and resized_image.max() <= 1
        expected = np.asarray(Image.fromarray(mask0).resize((14, 14), Image.NEAREST)) > 0
        assert np.array_equal(resized_mask.numpy(), expected) and resized_mask.any()
        with pytest.raises(IndexError, match="out of range"):
            dataset[2]
        clone = pickle.loads(pickle.dumps(dataset))  # DataLoader workers get an unopened copy
        assert np.array_equal(clone[0][1], mask0)
        clone.close()


def test_imagenet_segmentation_errors(tmp_path):
    import h5py

    with pytest.raises(DatasetLayoutError, match="ImageNet-Segmentation: file not found.*gtsegs_ijcv.mat.*README"):
        ImageNetSegmentation(tmp_path / "gtsegs_ijcv.mat")
    not_hdf5 = tmp_path / "old.mat"
    not_hdf5.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(ValueError, match="not an HDF5"):
        ImageNetSegmentation(not_hdf5)
    wrong = tmp_path / "wrong.mat"
    with h5py.File(wrong, "w") as file:
        file.create_dataset("value/img", data=np.zeros((1, 1)))
    with pytest.raises(ValueError, match="no dataset 'value/gt'"):
        ImageNetSegmentation(wrong)
