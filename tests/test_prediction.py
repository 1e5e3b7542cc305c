"""`scegg predict` on pictures: batching, a progress bar, one error row per unusable picture
(empty, unreadable, truncated, 1 x 1, 100 megapixels, missing, and the hostile files of
test_image_processing_scegg) while the rest go on, CSV and JSON lines output, exit statuses 0 / 1 /
2; region-feature files too, bad ones each getting their row; finished rows kept when a run dies;
options and empty inputs refused before the model loads."""
import csv
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_image_processor, tiny_resnet
from PIL import Image
from safetensors.numpy import save_file
from test_export import region_model
from test_image_processing_scegg import EPS, grey16_png, strip_png, text_bomb_png, tga_named_jpg

from modeling_scegg import prediction
from modeling_scegg.cli import main, run
from modeling_scegg.errors import UserError
from modeling_scegg.export import attach_backbone, save_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    return save_model(attach_backbone(region_model(), tiny_resnet(), tiny_image_processor()), folder,
                      tiny_image_processor())


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def _pictures(folder: Path, count: int = 5) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"good_{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(rng.integers(0, 256, (64 + 7 * i, 90, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _bad_pictures(folder: Path) -> dict[str, str]:
    """file name -> the reason its row must give."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image at all")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "dot.png")
    _png_header_only(folder / "huge.png", 10_000, 10_000)
    text_bomb_png(folder / "bomb.png")
    strip_png(folder / "strip.png")
    (folder / "figure.jpg").write_bytes(EPS)
    tga_named_jpg(folder / "targa.jpg")
    return {"empty.jpg": "empty file (0 bytes)", "notes.png": "not a picture in an accepted format",
            "bomb.png": "unreadable image data (Decompressed data too large", "strip.png": "too elongated: 100000 x 32",
            "figure.jpg": "not a picture in an accepted format", "targa.jpg": "not a picture in an accepted format",
            "truncated.jpg": "unreadable image data (image file is truncated", "dot.png": "too small: 1 x 1 pixels",
            "huge.png": "too large: 10000 x 10000 = 100 megapixels"}


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_unusable_picture_gets_its_own_row_and_the_rest_go_on(model_dir, tmp_path, capsys):
    good = _pictures(tmp_path / "in")
    reasons = _bad_pictures(tmp_path / "in")
    missing = tmp_path / "gone.jpg"
    code = main(["predict", str(model_dir), str(tmp_path / "in"), str(missing), "--top_k", "2",
                 "--batch_size", "2", "--output", str(tmp_path / "out" / "preds.csv")])
    assert code == 1, "the exit status must say that some pictures failed"
    rows = {Path(r["file"]).name: r for r in _csv_rows(tmp_path / "out" / "preds.csv")}
    assert set(rows) == {p.name for p in good} | set(reasons) | {"gone.jpg"}
    for name, reason in reasons.items():
        assert rows[name]["error"].startswith(reason), (name, rows[name]["error"])
        assert rows[name]["label_1"] == ""
    assert rows["gone.jpg"]["error"] == "no such file"
    for path in good:
        row = rows[path.name]
        assert row["error"] == "" and row["label_1"].startswith("bird_") and row["label_2"].startswith("bird_")
        assert 1.0 >= float(row["score_1"]) >= float(row["score_2"]) > 0
    err = capsys.readouterr().err
    assert "predict: 100%" in err and "15 rows, 10 rows failed" in err
    assert not list((tmp_path / "out").glob(".*tmp")), "no temporary file may be left behind"


def test_all_good_pictures_exit_zero_and_batching_does_not_change_predictions(model_dir, tmp_path, capsys):
    good = _pictures(tmp_path / "in")
    outputs = []
    for batch_size in ("1", "4"):
        out = tmp_path / f"preds_{batch_size}.jsonl"
        assert main(["predict", str(model_dir), *map(str, good), "--batch_size", batch_size, "--output", str(out)]) == 0
        outputs.append([json.loads(line) for line in out.read_text().splitlines()])
    assert [r["file"] for r in outputs[0]] == [str(p) for p in good]
    for one, four in zip(*outputs):
        assert [p["label"] for p in one["predictions"]] == [p["label"] for p in four["predictions"]]
        np.testing.assert_allclose([p["score"] for p in one["predictions"]], [p["score"] for p in four["predictions"]],
                                   atol=1e-5)
    capsys.readouterr()
    assert main(["predict", str(model_dir), str(good[0]), "--czsl", "--top_k", "5"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert {p["label"] for p in line["predictions"]} == {"bird_1", "bird_4"}


def test_pictures_and_the_pipeline_agree(model_dir, tmp_path, capsys):
    from transformers import pipeline

    picture = _pictures(tmp_path / "in", count=1)[0]
    assert main(["predict", str(model_dir), str(picture), "--top_k", "3"]) == 0
    ours = json.loads(capsys.readouterr().out.strip())["predictions"]
    theirs = pipeline("image-classification", model=str(model_dir), trust_remote_code=True)(str(picture), top_k=3)
    assert [p["label"] for p in ours] == [p["label"] for p in theirs]
    np.testing.assert_allclose([p["score"] for p in ours], [p["score"] for p in theirs], atol=1e-6)


def test_a_model_without_backbone_needs_an_explicit_one(tmp_path):
    region_model().save_pretrained(tmp_path / "features_only")
    picture = _pictures(tmp_path / "in", count=1)[0]
    with pytest.raises(UserError, match="(?s)no region backbone.*--image_backbone WEIGHTS.*scegg attach-backbone"):
        run(["predict", str(tmp_path / "features_only"), str(picture)])
    tiny_resnet().save_pretrained(tmp_path / "resnet")
    (tmp_path / "features_only" / "preprocessor_config.json").unlink(missing_ok=True)
    tiny_image_processor().save_pretrained(tmp_path / "features_only")
    assert main(["predict", str(tmp_path / "features_only"), str(picture), "--image_backbone", str(tmp_path / "resnet")]) == 0


def test_region_feature_files_are_still_accepted(model_dir, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((3, 4, 12)).astype(np.float32))
    assert main(["predict", str(model_dir), str(tmp_path / "x.npy"), "--top_k", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["file"] for r in rows] == [f"{tmp_path / 'x.npy'}[{i}]" for i in range(3)]
    assert all(len(r["predictions"]) == 2 for r in rows)


def _bad_feature_files(folder: Path) -> dict[str, str]:
    """file name -> the reason its row must give; the model reads (B, 4, 12) region features."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(folder / "shape.npy", rng.random((2, 5, 12)).astype(np.float32))
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(folder / "whole.npy", rng.random((64, 4, 12)).astype(np.float32))
    (folder / "truncated.npy").write_bytes((folder / "whole.npy").read_bytes()[:1000])
    (folder / "whole.npy").unlink()
    save_file({"other": rng.random((2, 4, 12)).astype(np.float32)}, folder / "missing.safetensors")
    (folder / "huge_header.safetensors").write_bytes(struct.pack("<Q", 37_000_000_000) + b"{}")
    save_file({"region_features": rng.random((64, 4, 12)).astype(np.float32)}, folder / "cut.safetensors")
    data = (folder / "cut.safetensors").read_bytes()
    (folder / "cut.safetensors").write_bytes(data[: len(data) // 2])
    return {"shape.npy": "region features of shape (2, 5, 12), expected (B, 4, 12)",
            "objects.npy": "holds Python objects (a pickle), which are never loaded",
            "truncated.npy": "ValueError: mmap length is greater than file size",
            "missing.safetensors": "no tensor 'region_features' (found ['other'])",
            "huge_header.safetensors": "corrupt safetensors header: it claims 37000000000 bytes",
            "cut.safetensors": "truncated safetensors file"}


def test_every_bad_feature_file_gets_its_row_and_nan_rows_theirs(model_dir, tmp_path, capsys):
    reasons = _bad_feature_files(tmp_path / "in")
    features = np.random.default_rng(1).random((3, 4, 12)).astype(np.float32)
    features[1, 2, 3] = np.nan
    save_file({"region_features": features}, tmp_path / "in" / "good.safetensors")
    picture = _pictures(tmp_path / "in", count=1)[0]
    assert main(["predict", str(model_dir), str(tmp_path / "in"), "--output", str(tmp_path / "out.jsonl")]) == 1
    rows = {Path(r["file"]).name: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert set(rows) == set(reasons) | {"good.safetensors[0]", "good.safetensors[1]", "good.safetensors[2]", picture.name}
    for name, reason in reasons.items():
        assert rows[name]["error"].startswith(reason), (name, rows[name]["error"])
    assert rows["good.safetensors[1]"]["error"] == "region features hold NaN or infinite values"
    assert rows["good.safetensors[0]"]["predictions"] and rows["good.safetensors[2]"]["predictions"]
    assert rows[picture.name]["predictions"] and not rows[picture.name]["error"]
    assert "10 rows, 7 rows failed" in capsys.readouterr().err


def test_a_sixteen_bit_picture_is_classified_as_the_grey_it_is(model_dir, tmp_path, capsys):
    grey16_png(tmp_path / "grey16.png")
    Image.new("RGB", (64, 48), (128, 128, 128)).save(tmp_path / "grey8.png")
    assert main(["predict", str(model_dir), str(tmp_path / "grey16.png"), str(tmp_path / "grey8.png")]) == 0
    first, second = (json.loads(line)["predictions"] for line in capsys.readouterr().out.strip().splitlines())
    assert first == second


def test_finished_rows_are_kept_when_the_run_dies(model_dir, tmp_path, monkeypatch):
    pictures = _pictures(tmp_path / "in", count=5)
    rank_batch, calls = prediction._rank_batch, []

    def dies_on_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("out of memory")
        return rank_batch(*args, **kwargs)

    monkeypatch.setattr(prediction, "_rank_batch", dies_on_the_second_batch)
    out = tmp_path / "preds.csv"
    with pytest.raises(UserError, match="the run stopped after 2 rows: MemoryError") as stopped:
        run(["predict", str(model_dir), *map(str, pictures), "--batch_size", "2", "--output", str(out)])
    assert "holds the 2 finished rows" in stopped.value.remedy
    assert [Path(r["file"]).name for r in _csv_rows(out)] == [p.name for p in pictures[:2]]


@pytest.mark.parametrize("top_k, batch_size, message", [(0, 16, "--top_k must be at least 1, got 0"),
                                                        (-1, 16, "--top_k must be at least 1, got -1"),
                                                        (5, 0, "--batch_size must be at least 1, got 0")])
def test_bad_counts_are_refused_before_the_model_loads(top_k, batch_size, message):
    """In Python as on the command line (where the parser refuses them first, exit status 2)."""
    with pytest.raises(UserError, match=message):
        prediction.check_options(top_k, batch_size, None)


@pytest.mark.parametrize("flags", [["--top_k", "0"], ["--top-k", "-1"], ["--batch_size", "0"]])
def test_the_command_line_refuses_bad_counts_with_status_2(tmp_path, flags, capsys):
    picture = _pictures(tmp_path / "in", count=1)[0]
    with pytest.raises(SystemExit) as refused:
        main(["predict", str(tmp_path / "no_such_model"), str(picture), *flags])
    assert refused.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_a_bad_output_suffix_is_refused_before_the_model_loads(tmp_path):
    picture = _pictures(tmp_path / "in", count=1)[0]
    with pytest.raises(UserError, match="--output must end in .csv or .jsonl"):
        run(["predict", str(tmp_path / "no_such_model"), str(picture), "--output", "x.txt"])


def test_a_folder_with_nothing_usable_is_an_error_not_an_empty_result(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "IMG_0001.HEIC").write_bytes(b"\0" * 64)
    (tmp_path / "in" / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=r"no pictures or feature files in .*in \(skipped: .heic, .txt\)") as refused:
        run(["predict", str(tmp_path / "no_such_model"), str(tmp_path / "in")])
    assert "HEIC" in refused.value.remedy


def test_attributes_explain_every_row_as_the_pipeline_does(model_dir, tmp_path, capsys):
    """--attributes K: JSON lines carry the pipeline's return_attributes=K evidence, the CSV its
    columns (empty on error rows), --attention_maps one PNG per picture and attribute."""
    from transformers import pipeline

    good = _pictures(tmp_path / "in", count=3)
    (tmp_path / "in" / "notes.png").write_text("not an image at all")
    maps = tmp_path / "maps"
    args = ["predict", str(model_dir), str(tmp_path / "in"), "--top_k", "2", "--attributes", "3", "--batch_size", "2"]
    assert main(args + ["--attention_maps", str(maps), "--output", str(tmp_path / "p.jsonl")]) == 1
    rows = {Path(r["file"]).name: r for r in map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines())}
    explained = pipeline("image-classification", model=str(model_dir), trust_remote_code=True)(
        str(good[1]), top_k=2, return_attributes=3)
    ours = rows[good[1].name]
    assert [a["attribute"] for a in ours["attributes"]] == [a["attribute"] for a in explained["attributes"]]
    for mine, theirs in zip(ours["predictions"], explained["predictions"]):
        assert mine["label"] == theirs["label"]
        assert [e["attribute"] for e in mine["supporting"]] == [e["attribute"] for e in theirs["supporting"]]
        assert [e["attribute"] for e in mine["contradicting"]] == [e["attribute"] for e in theirs["contradicting"]]
    assert sorted(p.name for p in maps.iterdir()) == sorted(
        f"{path.stem}.{a['attribute']}.png" for path in good for a in rows[path.name]["attributes"])
    assert Image.open(next(maps.iterdir())).size == (64, 64)

    assert main(args + ["--output", str(tmp_path / "p.csv")]) == 1
    table = {Path(r["file"]).name: r for r in _csv_rows(tmp_path / "p.csv")}
    seen = table[good[1].name]["attributes"].split(";")
    assert [entry.split(":")[0] for entry in seen] == [a["attribute"] for a in ours["attributes"]]
    assert table[good[1].name]["supporting_1"].split(";")[0].split(":")[0] == ours["predictions"][0]["supporting"][0]["attribute"]
    assert table["notes.png"]["attributes"] == "" and table["notes.png"]["supporting_1"] == ""
    capsys.readouterr()
    with pytest.raises(UserError, match="(?s)attention maps are drawn for .*--attributes K"):
        run(["predict", str(model_dir), str(good[0]), "--attention_maps", str(maps)])
    with pytest.raises(UserError, match="--attributes must be .* got -2"):
        run(["predict", str(model_dir), str(good[0]), "--attributes", "-2"])


def test_without_attributes_nothing_is_added(model_dir, tmp_path, capsys):
    picture = _pictures(tmp_path / "in", count=1)[0]
    assert main(["predict", str(model_dir), str(picture), "--output", str(tmp_path / "p.csv")]) == 0
    assert list(_csv_rows(tmp_path / "p.csv")[0]) == ["file", "error"] + [
        f"{what}_{k}" for k in range(1, 6) for what in ("label", "score")]


def test_attentions_are_asked_for_and_kept_only_to_draw_maps(model_dir, tmp_path):
    """Explained rows carry the attribute evidence; the (A, R) attention is computed only when
    maps are drawn, and no row keeps it once they are."""
    from modeling_scegg.hub import load_image_processor, load_model

    pictures = _pictures(tmp_path / "in", count=2)
    model, processor = load_model(model_dir, for_images=True).eval(), load_image_processor(model_dir)
    asked = []
    model.register_forward_pre_hook(lambda module, args, kwargs: asked.append(kwargs["output_attentions"]),
                                    with_kwargs=True)
    rows = list(prediction.predict_inputs(model, processor, pictures, attributes=2))
    assert asked == [False] and all(r.attributes and r.attentions is None for r in rows)
    rows = list(prediction.predict_inputs(model, processor, pictures, attributes=2, attention_maps=tmp_path / "maps"))
    assert asked[1:] == [True] and all(r.attributes and r.attentions is None for r in rows)
    assert len(list((tmp_path / "maps").iterdir())) == 4
