"""Image folder -> region features: splits, class file, resumable extraction, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ResNetConfig, ResNetModel

import modeling_scegg.data.images as images_module
from modeling_scegg.data.backbone import RegionFeatureExtractor
from modeling_scegg.data.images import DONE_FILE_NAME, WORK_DIR_NAME, load_image_folder
from modeling_scegg.data.store import RegionFeatureReader

CLASSES = ["cardinal", "heron", "wren"]
UNSEEN = {"wren"}
NUM_ATTRIBUTES = 5
IMAGES_PER_CLASS = 4
CROP = 64  # the tiny backbone's stride is 32: a 2 x 2 grid, R = 4


def column(dataset, name: str) -> np.ndarray:
    """A stored column as numpy; regions through the store's reader, which keeps float16."""
    if name == "region_features":
        return RegionFeatureReader(dataset).take(np.arange(len(dataset)))
    return np.asarray(dataset.with_format("numpy")[name])


def tiny_resnet(seed: int = 0) -> ResNetModel:
    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="bottleneck")
    return ResNetModel(config).eval()


def write_classes_csv(path: Path, rows: list[list[str]] | None = None) -> Path:
    rng = np.random.default_rng(1)
    header = "class_name,is_unseen," + ",".join(f"attr_{i}" for i in range(NUM_ATTRIBUTES))
    if rows is None:
        rows = [
            [name, "1" if name in UNSEEN else "0", *(f"{v:.3f}" for v in rng.uniform(0, 100, NUM_ATTRIBUTES))]
            for name in CLASSES
        ]
    path.write_text("\n".join([header, *(",".join(row) for row in rows)]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path) -> dict[str, Path]:
    """3 classes x 4 tiny random-colour images (40 x 50 and 50 x 40), plus the class CSV."""
    rng = np.random.default_rng(0)
    image_dir = tmp_path / "images"
    for name in CLASSES:
        (image_dir / name).mkdir(parents=True)
        for i in range(IMAGES_PER_CLASS):
            shape = (40, 50, 3) if i % 2 else (50, 40, 3)
            array = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(array).save(image_dir / name / f"img_{i}.{'png' if i % 2 else 'jpg'}")
    (image_dir / "cardinal" / "notes.txt").write_text("not an image")
    return {"images": image_dir, "classes": write_classes_csv(tmp_path / "classes.csv"), "root": tmp_path}


def run(folder, out_name="out", **kwargs):
    kwargs.setdefault("backbone_weights", tiny_resnet())
    kwargs.setdefault("crop_size", CROP)
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("batch_size", 3)
    return load_image_folder(folder["images"], folder["classes"], folder["root"] / out_name, **kwargs)


def test_end_to_end_splits_labels_features_and_semantics(folder):
    result = run(folder)
    assert set(result.splits) == {"train", "test_seen", "test_unseen"}
    assert [len(result.splits[s]) for s in ("train", "test_seen", "test_unseen")] == [6, 2, 4]
    assert result.class_names == CLASSES
    np.testing.assert_array_equal(result.seen_class_ids, [0, 1])
    np.testing.assert_array_equal(result.unseen_class_ids, [2])
    assert result.attributes.shape == (3, NUM_ATTRIBUTES) and result.attributes.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.attributes, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        result.attributes, result.original_attributes / np.linalg.norm(result.original_attributes, axis=1, keepdims=True),
        rtol=1e-6,
    )
    assert result.attribute_names == [f"attr_{i}" for i in range(NUM_ATTRIBUTES)]
    assert result.attribute_vectors is None
    # each seen class keeps 3 trainval / 1 test_seen image; the unseen class is all test_unseen
    train_labels = result.splits["train"]["label"]
    assert sorted(train_labels) == [0, 0, 0, 1, 1, 1]
    assert result.splits["test_unseen"]["label"] == [2, 2, 2, 2]
    assert result.splits["train"].features["label"].names == CLASSES
    # stored features are the extractor's, float16, in image_files order
    files = result.image_files["test_unseen"]
    reference = RegionFeatureExtractor(tiny_resnet(), crop_size=CROP, device="cpu")(
        [Image.open(folder["images"] / f) for f in files]
    )
    stored = column(result.splits["test_unseen"], "region_features")
    assert stored.shape == (4, 4, 32) and stored.dtype == np.float16
    # batches of 3 vs 4 images round differently in float32: compare at float16 precision
    np.testing.assert_allclose(stored, reference.regions, rtol=2e-3, atol=1e-3)
    pooled = column(result.splits["test_unseen"], "global_features")
    np.testing.assert_allclose(pooled, reference.global_, rtol=1e-5, atol=1e-6)
    assert [f.split("/")[0] for f in result.image_files["train"]] == [CLASSES[i] for i in train_labels]
    # shards are gone, the completion marker is there
    assert not (folder["root"] / "out" / WORK_DIR_NAME).exists()
    assert (folder["root"] / "out" / DONE_FILE_NAME).is_file()


def test_finished_result_is_reused_without_extracting(folder, monkeypatch):
    first = run(folder)

    def fail(*args, **kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(images_module, "_extract_chunk", fail)
    again = run(folder)
    assert again.image_files == first.image_files
    np.testing.assert_array_equal(
        column(again.splits["train"], "region_features"), column(first.splits["train"], "region_features")
    )
    with pytest.raises(ValueError, match="other settings.*crop_size"):
        run(folder, crop_size=96)
    monkeypatch.undo()
    assert len(run(folder, crop_size=96, resume=False).splits["train"][0]["region_features"]) == 9


def _counting_extract(monkeypatch, fail_after: int | None = None) -> list[list[str]]:
    """Record the files of every chunk computed; raise after ``fail_after`` chunks (an interruption)."""
    calls: list[list[str]] = []
    original = images_module._extract_chunk

    def wrapped(extractor, images, *args, **kwargs):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(list(images.files))
        return original(extractor, images, *args, **kwargs)

    monkeypatch.setattr(images_module, "_extract_chunk", wrapped)
    return calls


def test_interrupted_extraction_resumes_and_matches_an_uninterrupted_run(folder, monkeypatch):
    # chunk_size 4: trainval 6 -> 2 chunks, test_seen 2 -> 1, test_unseen 4 -> 1
    reference = run(folder, out_name="reference", chunk_size=4)

    first_calls = _counting_extract(monkeypatch, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        run(folder, chunk_size=4)
    work_dir = folder["root"] / "out" / WORK_DIR_NAME
    assert sorted(p.name for p in work_dir.glob("*.npy")) == ["trainval-00000.global.npy", "trainval-00000.regions.npy"]
    assert not list(work_dir.glob(".*tmp*"))
    assert not (folder["root"] / "out" / "train").exists()
    assert len(first_calls) == 1

    monkeypatch.undo()
    second_calls = _counting_extract(monkeypatch)
    resumed = run(folder, chunk_size=4)
    assert len(second_calls) == 3
    assert first_calls[0] not in second_calls
    for split in ("train", "test_seen", "test_unseen"):
        for name in ("region_features", "global_features", "label"):
            np.testing.assert_array_equal(
                column(resumed.splits[split], name), column(reference.splits[split], name)
            )


def test_resume_refuses_shards_of_another_backbone(folder, monkeypatch):
    _counting_extract(monkeypatch, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        run(folder, chunk_size=4)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="backbone_sha256.*resume=False"):
        run(folder, chunk_size=4, backbone_weights=tiny_resnet(seed=1))
    calls = _counting_extract(monkeypatch)
    run(folder, chunk_size=4, backbone_weights=tiny_resnet(seed=1), resume=False)
    assert len(calls) == 4


def test_splits_file_is_followed(folder):
    mapping = {}
    for name in CLASSES:
        for i in range(IMAGES_PER_CLASS):
            file = f"{name}/img_{i}.{'png' if i % 2 else 'jpg'}"
            mapping[file] = "test_unseen" if name in UNSEEN else ("test_seen" if i < 2 else "trainval")
    path = folder["root"] / "splits.json"
    path.write_text(json.dumps(mapping))
    result = run(folder, splits_file=path)
    assert result.image_files["test_seen"] == sorted(f for f, s in mapping.items() if s == "test_seen")
    assert len(result.splits["train"]) == 4


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda m: m.update({"cardinal/img_0.jpg": "val"}), "unknown split names"),
        (lambda m: m.pop("heron/img_1.png"), "found but not listed.*heron/img_1.png"),
        (lambda m: m.update({"heron/img_1.png": "test_unseen"}), "contradict is_unseen"),
    ],
)
def test_bad_splits_file(folder, change, message):
    mapping = {
        f"{name}/img_{i}.{'png' if i % 2 else 'jpg'}": "test_unseen" if name in UNSEEN else "trainval"
        for name in CLASSES
        for i in range(IMAGES_PER_CLASS)
    }
    change(mapping)
    path = folder["root"] / "splits.json"
    path.write_text(json.dumps(mapping))
    with pytest.raises(ValueError, match=message):
        run(folder, splits_file=path)


def test_attribute_vectors_npy_and_wrong_shape(folder):
    good = folder["root"] / "w2v.npy"
    np.save(good, np.random.default_rng(0).normal(size=(NUM_ATTRIBUTES, 7)))
    assert run(folder, attribute_vectors_file=good).attribute_vectors.shape == (NUM_ATTRIBUTES, 7)
    bad = folder["root"] / "w2v_bad.npy"
    np.save(bad, np.zeros((NUM_ATTRIBUTES + 1, 7)))
    with pytest.raises(ValueError, match=r"expected shape \(5, dv\), got \(6, 7\)"):
        run(folder, attribute_vectors_file=bad)


def test_unreadable_image_is_named(folder):
    broken = folder["images"] / "heron" / "broken.jpg"
    broken.write_bytes(b"definitely not a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*heron/broken.jpg"):
        run(folder)


def test_class_folder_missing_from_attributes_file(folder):
    (folder["images"] / "owl").mkdir()
    Image.new("RGB", (8, 8)).save(folder["images"] / "owl" / "a.png")
    with pytest.raises(ValueError, match=r"class folders \['owl'\].*not listed"):
        run(folder)


def test_listed_class_without_folder(folder):
    rows = [[name, "1" if name in UNSEEN else "0", *["1"] * NUM_ATTRIBUTES] for name in [*CLASSES, "owl"]]
    write_classes_csv(folder["classes"], rows)
    with pytest.raises(ValueError, match=r"classes \['owl'\].*have no folder"):
        run(folder)


def test_empty_class_folder(folder):
    for file in (folder["images"] / "heron").iterdir():
        file.unlink()
    with pytest.raises(ValueError, match="heron holds no images"):
        run(folder)


def test_attribute_row_of_wrong_length(folder):
    rows = [[name, "1" if name in UNSEEN else "0", *["1"] * NUM_ATTRIBUTES] for name in CLASSES]
    rows[1] = rows[1][:-1]
    write_classes_csv(folder["classes"], rows)
    with pytest.raises(ValueError, match=r"line 3 \(class 'heron'\): expected 5 attribute values.*got 4"):
        run(folder)


@pytest.mark.parametrize(
    "header,row,message",
    [
        ("name,unseen,a", "cardinal,0,1", "header must start with 'class_name,is_unseen'"),
        ("class_name,is_unseen,a", "cardinal,maybe,1", "is_unseen must be 0/1"),
        ("class_name,is_unseen,a", "cardinal,0,abc", "attribute values must be numbers"),
    ],
)
def test_malformed_class_file(folder, header, row, message):
    folder["classes"].write_text(f"{header}\n{row}\nheron,0,1\nwren,1,1\n")
    with pytest.raises(ValueError, match=message):
        run(folder)


def test_all_zero_attribute_row_is_refused(folder):
    rows = [[name, "1" if name in UNSEEN else "0", *["0" if name == "heron" else "1"] * NUM_ATTRIBUTES] for name in CLASSES]
    write_classes_csv(folder["classes"], rows)
    zero = r"classes.csv: field 'attributes' has all-zero class vectors at rows \[\d\] \(classes \['heron'\]\)"
    with pytest.raises(ValueError, match=zero):
        run(folder)


def test_overflowing_features_are_refused_before_storage(folder):
    model = tiny_resnet()
    with torch.no_grad():
        model.encoder.stages[-1].layers[-1].layer[-1].normalization.bias.fill_(1e6)
    with pytest.raises(ValueError, match="exceed the float16 storage range"):
        run(folder, backbone_weights=model)


def test_dataloader_workers_give_the_same_features(folder):
    serial = run(folder, out_name="serial")
    parallel = run(folder, out_name="parallel", num_workers=2)
    np.testing.assert_array_equal(
        column(parallel.splits["train"], "region_features"), column(serial.splits["train"], "region_features")
    )


def test_no_backbone_weights_is_an_error_not_a_random_network(folder):
    with pytest.raises(ValueError, match="no backbone weights given"):
        run(folder, backbone_weights=None)


def test_pictures_are_read_by_the_one_reader(folder, tmp_path):
    """Image-folder extraction refuses what predict refuses, with the reason, and scales 16 bits."""
    from test_image_processing_scegg import EPS, grey16_png, strip_png, text_bomb_png

    from modeling_scegg.data.backbone import ImagePreprocessor

    preprocess = ImagePreprocessor(CROP)
    (tmp_path / "figure.jpg").write_bytes(EPS)
    Image.new("RGB", (31, 31)).save(tmp_path / "small.png")
    bad = {"bomb.png": "unreadable image data", "strip.png": "too elongated",
           "figure.jpg": "not a picture in an accepted format", "small.png": "too small: 31 x 31"}
    text_bomb_png(tmp_path / "bomb.png")
    strip_png(tmp_path / "strip.png")
    images = images_module._ImageFiles(tmp_path, [*bad, grey16_png(tmp_path / "grey.png").name], preprocess)
    for index, (name, reason) in enumerate(bad.items()):
        with pytest.raises(ValueError, match=f"cannot read image .*{name}: {reason}.*rerun"):
            images[index]
    Image.new("RGB", (64, 48), (128, 128, 128)).save(tmp_path / "grey8.png")
    torch.testing.assert_close(images[len(bad)], preprocess([Image.open(tmp_path / "grey8.png")])[0])


def test_image_options_from_the_command_line_are_typed_and_checked(tmp_path):
    splits = tmp_path / "splits.json"
    splits.write_text("{}")
    options = images_module.parse_image_options(
        ["crop_size=224", "resize_size=256", "test_seen_fraction=0.3", f"splits_file={splits}", "autocast=bf16"])
    assert options == {"crop_size": 224, "resize_size": 256, "test_seen_fraction": 0.3, "splits_file": str(splits),
                       "autocast": "bf16"}
    processor = images_module.image_options_processor(options)
    assert processor.crop_size.height == 224 and processor.size.shortest_edge == 256
    assert images_module.image_options_processor({}).crop_size.height == 448


@pytest.mark.parametrize("items, message", [
    (["crop=224"], r"'crop=224' is not key=value with one of the image options \(crop_size, "),
    (["crop_size"], "is not key=value"),
    (["crop_size=big"], "crop_size takes a whole number, got 'big'"),
    (["test_seen_fraction=x"], "test_seen_fraction takes a number"),
    (["crop_size=0"], "crop_size must be at least 1, got 0"),
    (["num_workers=-1"], "num_workers must be at least 0"),
    (["crop_size=224", "resize_size=200"], r"resize_size=200 is smaller than the crop \(224\)"),
    (["test_seen_fraction=1"], r"test_seen_fraction must lie in \[0, 1\), got 1.0"),
    (["autocast=fp8"], r"autocast must be one of \['bf16', 'fp16'\]"),
    (["splits_file=/no/such/splits.json"], "files not found"),
])
def test_bad_image_options_are_refused_by_name(items, message):
    from modeling_scegg.errors import UserError

    with pytest.raises(UserError, match=message) as refused:
        images_module.parse_image_options(items)
    assert "crop_size" in refused.value.remedy or "resize" in refused.value.remedy or "share" in refused.value.remedy \
        or "float32" in refused.value.remedy or "paths" in refused.value.remedy


def test_image_options_given_in_python_are_checked_too():
    from modeling_scegg.errors import UserError

    assert images_module.check_image_options({"crop_size": 64, "device": torch.device("cpu"), "seed": 3})
    assert images_module.check_image_options({"resize_size": None, "splits_file": None})  # the defaults, spelt out
    with pytest.raises(UserError, match="unknown image option 'crops'"):
        images_module.check_image_options({"crops": 64})
    with pytest.raises(UserError, match="crop_size takes a whole number, got '64'"):
        images_module.check_image_options({"crop_size": "64"})
