"""`scegg extract`: the public pictures listed in xlsa17's res101.mat -> the region-feature HDF5.

Each benchmark's tree is generated in its public archive's folder style, with a res101.mat whose
image_files carry the authors' absolute path prefixes (as xlsa17 ships them, AWA2's "//"
included); the backbone is a tiny random ResNet saved as a torchvision-layout file, as a
timm-style Hub folder served by the local Hub stand-in, and in transformers' layout.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from conftest import TINY_BACKBONE, TINY_CROP, tiny_image_processor, tiny_resnet, torchvision_state_dict
from hub_server import HubStandIn, hub_endpoint, hub_server, run_client  # noqa: F401 - fixtures are used by name
from PIL import Image
from safetensors.torch import save_file
from test_data_xlsa17 import write_standard_layout
from test_training_pipeline import tiny_argv
from transformers import ResNetConfig

from modeling_scegg import SCEGGModel
from modeling_scegg.data import extraction, load_zsl_dataset
from modeling_scegg.data.backbone import RegionFeatureExtractor, backbone_id
from modeling_scegg.data.extraction import extract_region_features, feature_file, find_benchmark_files, work_folder
from modeling_scegg.errors import UserError
from modeling_scegg.export import attach_backbone
from modeling_scegg.training import parse_training_args, run_pipeline

# what xlsa17's res101.mat puts before the paths inside each public archive
AUTHORS_PREFIX = {"CUB": "/BS/Deep_Fragments/work/MSc/CUB_200_2011/", "SUN": "/BS/Deep_Fragments/work/MSc/data/SUN/",
                  "AWA2": "/BS/xian/work/data/"}
CLASS_NAMES = {
    "CUB": [f"{i + 1:03d}.{name}" for i, name in enumerate(
        ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani", "Crested_Auklet",
         "Least_Auklet"])],
    "SUN": ["abbey", "airport_terminal", "apartment_building/outdoor", "badlands", "bakery/shop", "ballroom"],
    "AWA2": ["antelope", "grizzly+bear", "killer+whale", "beaver", "dalmatian", "persian+cat"],
}
ARCHITECTURE = ResNetConfig(**TINY_BACKBONE)
PER_CLASS = 4


@dataclass
class Benchmark:
    data_dir: Path
    image_dir: Path
    pictures: list[str]  # paths under image_dir, in res101.mat order
    labels: np.ndarray


def _archive_path(dataset: str, class_name: str, index: int) -> tuple[str, str]:
    """(path inside the public archive, as res101.mat lists it) of one picture."""
    if dataset == "CUB":
        inside = f"CUB_200_2011/images/{class_name}/{class_name.split('.')[1]}_{index:04d}_{index + 100}.jpg"
        return inside, AUTHORS_PREFIX[dataset] + inside
    if dataset == "SUN":
        inside = f"images/{class_name[0]}/{class_name}/sun_{class_name[:3]}{index:04d}.jpg"
        return inside, AUTHORS_PREFIX[dataset] + inside
    inside = f"JPEGImages/{class_name}/{class_name}_{10001 + index}.jpg"
    return f"Animals_with_Attributes2/{inside}", AUTHORS_PREFIX[dataset] + f"Animals_with_Attributes2//{inside}"


def make_benchmark(root: Path, dataset: str = "CUB") -> Benchmark:
    """xlsa17 files, w2v and the pictures of a 6-class benchmark (4 seen, 2 unseen)."""
    data_dir, image_dir = root / "data", root / "pictures"
    names = CLASS_NAMES[dataset]
    toy = write_standard_layout(data_dir, dataset, num_classes=len(names), num_unseen=2, num_attributes=5,
                                feature_dim=TINY_BACKBONE["hidden_sizes"][-1], per_class=PER_CLASS, with_val=False,
                                names=names)
    feature_file(data_dir, dataset).unlink()  # what the extraction writes
    rng = np.random.default_rng(1)
    inside, listed = [], []
    for number, label in enumerate(toy.labels):
        path, listed_path = _archive_path(dataset, names[label], number)
        picture = Image.fromarray(rng.integers(0, 255, (48 + number, 70, 3), dtype=np.uint8))
        (image_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (picture.convert("L") if number == 3 else picture).save(image_dir / path)  # CUB holds grey pictures too
        inside.append(path)
        listed.append(listed_path)
    cell = np.empty((len(listed), 1), dtype=object)
    cell[:, 0] = listed
    scipy.io.savemat(data_dir / "xlsa17" / "data" / dataset / "res101.mat",
                     {"features": toy.pooled.T, "labels": (toy.labels + 1).reshape(-1, 1).astype(np.float64),
                      "image_files": cell})
    return Benchmark(data_dir, image_dir, inside, toy.labels)


def _expected_maps(bench: Benchmark, model, crop: int = TINY_CROP) -> np.ndarray:
    """The maps one picture at a time, as the authors' per-image loop computes them."""
    extractor = RegionFeatureExtractor(model, crop_size=crop, device="cpu")
    regions = np.concatenate([extractor([Image.open(bench.image_dir / p).convert("RGB")]).regions
                              for p in bench.pictures])
    side = int(np.sqrt(regions.shape[1]))
    return regions.transpose(0, 2, 1).reshape(len(regions), -1, side, side)


def _tiny_file(folder: Path, seed: int = 0) -> Path:
    """A tiny random ResNet as a torchvision-layout safetensors file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tiny-resnet-{seed}.safetensors"
    save_file(torchvision_state_dict(tiny_resnet(seed)), path)
    return path


@pytest.mark.parametrize("dataset", ["CUB", "SUN", "AWA2"])
def test_pictures_are_found_as_the_authors_script_finds_them(tmp_path, dataset):
    bench = make_benchmark(tmp_path, dataset)
    files = find_benchmark_files(dataset, bench.image_dir, bench.data_dir)
    assert files.images == bench.pictures and np.array_equal(files.labels, bench.labels)
    deeper = bench.image_dir / bench.pictures[0].split("/")[0]  # the user pointed into the archive's folder
    assert find_benchmark_files(dataset, deeper, bench.data_dir).images == [p.split("/", 1)[1] for p in bench.pictures]


def test_extract_train_and_attach_the_same_backbone(tmp_path):
    bench = make_benchmark(tmp_path)
    weights = _tiny_file(tmp_path / "weights")
    path = extract_region_features("CUB", bench.image_dir, bench.data_dir, weights, crop_size=TINY_CROP,
                                   batch_size=3, chunk_size=5, device="cpu", autocast=None, architecture=ARCHITECTURE)
    assert path == bench.data_dir / "CUB" / "feature_map_ResNet_101_CUB.hdf5"
    assert not work_folder(bench.data_dir, "CUB").exists() and not list(path.parent.glob(".*.tmp"))
    with h5py.File(path, "r") as h5:
        np.testing.assert_allclose(h5["feature_map"][:], _expected_maps(bench, tiny_resnet(0)), rtol=1e-4, atol=1e-5)
        assert np.array_equal(h5["labels"][:], bench.labels)
        assert h5["w2v_att"].shape == (5, 7) and h5["att"].shape == (6, 5)
        assert h5.attrs["feature_backbone"] == backbone_id(tiny_resnet(0))
        assert h5.attrs["feature_backbone_name"] == weights.name and h5.attrs["crop_size"] == TINY_CROP
    data = load_zsl_dataset("CUB", data_dir=bench.data_dir, cache_dir=tmp_path / "cache")
    assert (data.num_regions, data.feature_dim, data.feature_backbone) == (4, 12, backbone_id(tiny_resnet(0)))

    argv = tiny_argv(tmp_path / "out", tmp_path / "cache", "--dataset", "CUB", "--data_dir", str(bench.data_dir),
                     "--plots", "false", "--stage3_epochs", "1")
    results = run_pipeline(parse_training_args(argv[:argv.index("--synthetic_overrides")]
                                               + argv[argv.index("--model_overrides"):]))
    assert results["num_test_unseen"] == 2 * PER_CLASS
    model = SCEGGModel.from_pretrained(tmp_path / "out")
    assert model.config.feature_backbone == backbone_id(tiny_resnet(0))
    assert model.config.feature_backbone_name == weights.name
    image_model = attach_backbone(model, tiny_resnet(0), tiny_image_processor())
    assert image_model.config.feature_backbone == model.config.feature_backbone
    with pytest.raises(UserError, match="trained on region features of the backbone sha256:"):
        attach_backbone(model, tiny_resnet(1), tiny_image_processor())


def test_a_killed_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    bench = make_benchmark(tmp_path)
    model = tiny_resnet(0)
    options = dict(crop_size=TINY_CROP, batch_size=2, chunk_size=5, device="cpu", autocast=None)
    computed = []
    original = extraction._extract_chunk

    def dies_after_two_chunks(extractor, images, shard, *args):
        if len(computed) == 2:
            raise KeyboardInterrupt("killed")
        computed.append(shard.name)
        return original(extractor, images, shard, *args)

    monkeypatch.setattr(extraction, "_extract_chunk", dies_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        extract_region_features("CUB", bench.image_dir, bench.data_dir, model, **options)
    target = feature_file(bench.data_dir, "CUB")
    assert not target.exists()
    assert sorted(p.name for p in work_folder(bench.data_dir, "CUB").glob("chunk-*")) == ["chunk-00000.npy",
                                                                                        "chunk-00001.npy"]
    (target.parent / f".{target.name}.999.deadbeef.tmp").write_bytes(b"a half-written file of a killed run")
    computed.append("resumed")  # let the rerun through
    extract_region_features("CUB", bench.image_dir, bench.data_dir, model, **options)
    assert computed == ["chunk-00000.npy", "chunk-00001.npy", "resumed", "chunk-00002.npy", "chunk-00003.npy",
                        "chunk-00004.npy"]
    assert not list(target.parent.glob(".*.tmp"))
    with h5py.File(target, "r") as h5:
        np.testing.assert_allclose(h5["feature_map"][:], _expected_maps(bench, model), rtol=1e-4, atol=1e-5)
    work_folder(bench.data_dir, "CUB").mkdir()  # killed between the rename and the cleanup
    with pytest.raises(UserError, match="already exists"):
        extract_region_features("CUB", bench.image_dir, bench.data_dir, model, **options)
    assert not work_folder(bench.data_dir, "CUB").exists()


def test_other_settings_do_not_mix_with_unfinished_shards(tmp_path):
    bench = make_benchmark(tmp_path)
    work = work_folder(bench.data_dir, "CUB")
    work.mkdir(parents=True)
    (work / "manifest.json").write_text(json.dumps({"crop_size": 448}))
    with pytest.raises(UserError, match="other settings") as caught:
        extract_region_features("CUB", bench.image_dir, bench.data_dir, tiny_resnet(), crop_size=TINY_CROP, device="cpu")
    assert str(work) in caught.value.remedy


def test_missing_pictures_are_listed_before_any_work(tmp_path):
    bench = make_benchmark(tmp_path)
    for picture in bench.pictures[-7:]:
        (bench.image_dir / picture).unlink()
    with pytest.raises(UserError) as caught:
        extract_region_features("CUB", bench.image_dir, bench.data_dir, tiny_resnet(), crop_size=TINY_CROP, device="cpu")
    assert "7 of the 24 pictures listed in" in caught.value.cause
    assert str(bench.image_dir / bench.pictures[-7]) in caught.value.cause and ", ..." in caught.value.cause
    assert "CUB_200_2011/images/<class>/<file>.jpg" in caught.value.remedy
    assert not work_folder(bench.data_dir, "CUB").exists()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_unreadable_picture_stops_the_run_with_its_path(tmp_path, num_workers):
    bench = make_benchmark(tmp_path, "AWA2")
    broken = bench.image_dir / bench.pictures[9]
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=re.escape(f"cannot read image {broken}")):
        extract_region_features("AWA2", bench.image_dir, bench.data_dir, tiny_resnet(), crop_size=TINY_CROP,
                                chunk_size=4, device="cpu", num_workers=num_workers)
    assert not feature_file(bench.data_dir, "AWA2").exists()
    assert sorted(p.name for p in work_folder(bench.data_dir, "AWA2").glob("*.npy")) == ["chunk-00000.npy",
                                                                                       "chunk-00001.npy"]


def test_weights_that_are_no_resnet101_are_refused_by_name(tmp_path):
    bench = make_benchmark(tmp_path)
    weights = _tiny_file(tmp_path / "weights")
    with pytest.raises(UserError, match=f"the backbone {weights} does not hold ResNet-101 weights"):
        extract_region_features("CUB", bench.image_dir, bench.data_dir, weights, device="cpu")


def test_a_smaller_crop_gives_a_smaller_grid(tmp_path):
    bench = make_benchmark(tmp_path, "SUN")
    path = extract_region_features("SUN", bench.image_dir, bench.data_dir, tiny_resnet(), crop_size=96, device="cpu",
                                   autocast=None)
    with h5py.File(path, "r") as h5:
        assert h5["feature_map"].shape == (24, 12, 3, 3) and h5.attrs["crop_size"] == 96
        # a ResNetModel built in Python has no name to record: its fingerprint alone says which it is
        assert "feature_backbone_name" not in h5.attrs and h5.attrs["feature_backbone"].startswith("sha256:")
        np.testing.assert_allclose(h5["feature_map"][:], _expected_maps(bench, tiny_resnet(), 96), rtol=1e-4, atol=1e-5)


HUB_CLIENT = """
import json, sys
import huggingface_hub.constants
from transformers import ResNetConfig
from modeling_scegg.data.backbone import backbone_id, build_resnet101
from modeling_scegg.data.extraction import extract_region_features
from modeling_scegg.errors import UserError
import h5py

architecture = ResNetConfig(**{backbone})
path = extract_region_features("CUB", {images!r}, {data!r}, "scegg-test/tiny-resnet.tv_in1k", crop_size=64,
                               device="cpu", architecture=architecture)
with h5py.File(path, "r") as h5:
    attrs = dict(h5.attrs)
hf_layout = backbone_id(build_resnet101("scegg-test/tiny-resnet-hf", architecture=architecture))
huggingface_hub.constants.HF_HUB_OFFLINE = True  # from here on, only the cache
cached = backbone_id(build_resnet101("scegg-test/tiny-resnet.tv_in1k", architecture=architecture))
try:
    build_resnet101("scegg-test/never-downloaded", architecture=architecture)
    offline = None
except UserError as error:
    offline = str(error)
print(json.dumps({{"fingerprint": attrs["feature_backbone"], "name": attrs["feature_backbone_name"],
                  "hf_layout": hf_layout, "cached": cached, "offline": offline}}))
"""


def test_backbone_by_hub_id_through_the_hub_cache(hub_endpoint: HubStandIn, tmp_path):
    bench = make_benchmark(tmp_path)
    timm_style = tmp_path / "timm-style"
    _tiny_file(timm_style)
    hub_endpoint.add_files("model", "scegg-test/tiny-resnet.tv_in1k", {
        "config.json": json.dumps({"architecture": "resnet101", "num_classes": 1000}).encode(),
        "model.safetensors": (timm_style / "tiny-resnet-0.safetensors").read_bytes()})
    tiny_resnet(0).save_pretrained(tmp_path / "hf-layout")
    hub_endpoint.add_files("model", "scegg-test/tiny-resnet-hf",
                           {p.name: p.read_bytes() for p in (tmp_path / "hf-layout").iterdir()})
    code = HUB_CLIENT.format(backbone=TINY_BACKBONE, images=str(bench.image_dir), data=str(bench.data_dir))
    report = json.loads(run_client(code, hub_endpoint.endpoint, tmp_path / "client").stdout.strip().splitlines()[-1])
    expected = backbone_id(tiny_resnet(0))
    assert report["fingerprint"] == report["hf_layout"] == report["cached"] == expected
    assert report["name"] == "scegg-test/tiny-resnet.tv_in1k"
    assert "hf download scegg-test/never-downloaded" in report["offline"]


def test_extract_command_line(tmp_path, capsys):
    from modeling_scegg.cli import build_parser

    args = build_parser().parse_args(["extract", "SUN", "pics", "--data_dir", "data", "--backbone",
                                      "timm/resnet101.tv_in1k", "--crop_size", "224", "--autocast", "no"])
    assert (args.dataset, args.backbone, args.crop_size, args.autocast) == ("SUN", "timm/resnet101.tv_in1k", 224, "no")
    bench = make_benchmark(tmp_path)
    shutil.rmtree(bench.image_dir / bench.pictures[0].split("/")[0] / "images" / CLASS_NAMES["CUB"][5])
    from modeling_scegg.cli import run

    with pytest.raises(UserError, match="4 of the 24 pictures"):
        run(["extract", "CUB", str(bench.image_dir), "--data_dir", str(bench.data_dir), "--backbone", "random"])


def test_a_transformers_checkpoint_of_another_resnet_is_refused_by_name(tmp_path):
    bench = make_benchmark(tmp_path)
    tiny_resnet().save_pretrained(tmp_path / "resnet-tiny")
    with pytest.raises(UserError, match=r"resnet-tiny is not the expected ResNet\(-101\): .*'depths': \[1, 1, 1, 1\]"):
        extract_region_features("CUB", bench.image_dir, bench.data_dir, str(tmp_path / "resnet-tiny"), device="cpu")


def test_a_hub_id_backbone_becomes_the_cards_base_model(tiny_model, tmp_path):
    from modeling_scegg.hub import build_model_card

    results = {"czsl_acc": 50.0, "gzsl_unseen": 40.0, "gzsl_seen": 60.0, "gzsl_h": 48.0}
    for name, base_model in (("timm/resnet101.tv_in1k", "timm/resnet101.tv_in1k"), ("resnet101-63fe2227.pth", None)):
        tiny_model.config.feature_backbone_name = name
        tiny_model.save_pretrained(tmp_path / "model")
        card = build_model_card(tmp_path / "model", results, dataset_name="CUB", training_args={},
                                feature_extractor="ResNet-101", protocol="fixed")
        assert card.data.base_model == base_model


def test_non_finite_features_stop_the_run(tmp_path):
    bench = make_benchmark(tmp_path)
    model = tiny_resnet()
    with torch.no_grad():
        model.embedder.embedder.convolution.weight.fill_(float("nan"))
    with pytest.raises(UserError, match=re.escape(f"NaN or Inf features for the batch from {bench.image_dir}")):
        extract_region_features("CUB", bench.image_dir, bench.data_dir, model, crop_size=TINY_CROP, device="cpu")
    assert not feature_file(bench.data_dir, "CUB").exists()
