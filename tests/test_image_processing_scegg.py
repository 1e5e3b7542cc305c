"""SCEGGImageProcessor: torchvision-exact resize / crop / normalisation at the default 448, RGB
conversion of every PIL mode, saving as preprocessor_config.json and AutoImageProcessor; and
load_picture, the one picture reader of every path, against hostile and unlucky files (the
generators below are shared with the tests of the paths that use it)."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from transformers import AutoImageProcessor

from modeling_scegg import SCEGGImageProcessor
from modeling_scegg.image_processing_scegg import (
    MAX_PICTURE_ASPECT,
    MAX_PROCESSOR_SIDE,
    UnusableImage,
    load_picture,
)

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
       b"newpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n")


def text_bomb_png(path: Path) -> Path:
    """A small PNG whose compressed text chunk inflates to 8 MB (over PIL's MAX_TEXT_CHUNK)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * 8_000_000, zip=True)
    Image.new("RGB", (64, 64), (20, 120, 200)).save(path, "PNG", pnginfo=info)
    return path


def strip_png(path: Path, width: int = 100_000, height: int = 32) -> Path:
    """A few-KB PNG that a shortest-edge resize would blow up to gigabytes."""
    Image.new("L", (width, height), 128).save(path, "PNG")
    return path


def grey16_png(path: Path, level: int = 32768) -> Path:
    """A 16-bit greyscale PNG of one level (mid-grey by default): PIL opens it in mode I;16."""
    Image.fromarray(np.full((48, 64), level, dtype=np.uint16)).save(path, "PNG")
    return path


def rotated_jpeg(path: Path, orientation: int = 6, size=(96, 64)) -> Path:
    """A JPEG stored sideways with the EXIF orientation that says how to turn it upright."""
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


def tga_named_jpg(path: Path) -> Path:
    """A Targa file with a .jpg name: a format PIL knows but no camera or dataset uses."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, "TGA")
    path.write_bytes(buffer.getvalue())
    return path

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _torchvision_pixels(image: Image.Image, crop: int = 448) -> np.ndarray:
    """Resize(crop) / CenterCrop(crop) / ToTensor / Normalize written out, on convert("RGB")."""
    width, height = image.size
    new_long = int(crop * max(width, height) / min(width, height))
    size = (crop, new_long) if width <= height else (new_long, crop)
    resized = np.asarray(image.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    top, left = int(round((resized.shape[0] - crop) / 2.0)), int(round((resized.shape[1] - crop) / 2.0))
    return ((resized[top:top + crop, left:left + crop] - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def _image(mode: str, size=(451, 600), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "RGBA":
        rgb.putalpha(Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)))
        return rgb
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "CMYK", "RGBA"])
def test_every_pil_mode_gives_torchvision_pixels(mode):
    """451 x 600 -> 448 x 595 after the resize: a margin of 147, where torchvision crops from
    column 74 (round half to even of 73.5 is 74) and a floor division from 73."""
    image = _image(mode)
    pixels = SCEGGImageProcessor()(image, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 448, 448) and str(pixels.dtype) == "torch.float32"
    np.testing.assert_allclose(pixels[0].numpy(), _torchvision_pixels(image), atol=1e-5)


def test_transparency_is_dropped_not_composited_onto_white():
    image = _image("RGBA")
    expected = _torchvision_pixels(image.convert("RGB"))
    np.testing.assert_allclose(SCEGGImageProcessor()(image)["pixel_values"][0], expected, atol=1e-5)


def test_saved_as_preprocessor_config_and_reloaded_by_auto_image_processor(tmp_path):
    processor = SCEGGImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56})
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "SCEGGImageProcessor"
    assert saved["auto_map"]["AutoImageProcessor"] == "image_processing_scegg.SCEGGImageProcessor"
    assert (tmp_path / "image_processing_scegg.py").is_file()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is SCEGGImageProcessor
    image = _image("RGB", size=(80, 70))
    np.testing.assert_array_equal(loaded(image)["pixel_values"][0], processor(image)["pixel_values"][0])
    assert loaded(image)["pixel_values"][0].shape == (3, 56, 56)


def test_a_crop_larger_than_the_resized_image_is_refused():
    processor = SCEGGImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 48, "width": 48})
    with pytest.raises(ValueError, match="crop_size 48 x 48 is larger than the resized image"):
        processor(_image("RGB", size=(40, 60)))


def test_sixteen_bit_modes_are_scaled_not_clipped():
    """PIL's convert("RGB") clips I;16 at 255, so mid-grey 32768 would come out white."""
    grey = Image.fromarray(np.full((40, 50), 32768, dtype=np.uint16))
    assert grey.mode == "I;16"
    pixels = SCEGGImageProcessor(do_normalize=False)(grey, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(pixels, 128 / 255, atol=1e-6)


def test_a_sixteen_bit_grey_png_decodes_to_mid_grey(tmp_path):
    picture = np.asarray(load_picture(grey16_png(tmp_path / "grey.png")))
    assert picture.shape == (48, 64, 3) and picture.dtype == np.uint8
    assert set(np.unique(picture)) == {128}
    assert set(np.unique(np.asarray(load_picture(grey16_png(tmp_path / "white.png", 65535))))) == {255}


def test_thirty_two_bit_integer_and_float_pictures(tmp_path):
    Image.fromarray(np.full((40, 40), 65535 // 4, dtype=np.int32)).save(tmp_path / "int.tif")
    assert np.asarray(load_picture(tmp_path / "int.tif")).max() == 64
    Image.fromarray(np.full((40, 40), 70_000, dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(UnusableImage, match="outside 0..65535"):
        load_picture(tmp_path / "wide.tif")
    Image.fromarray(np.full((40, 40), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(UnusableImage, match="floating-point pixels"):
        load_picture(tmp_path / "float.tif")


def test_a_text_chunk_bomb_is_an_unusable_picture(tmp_path):
    path = text_bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 20_000
    with pytest.raises(UnusableImage, match="unreadable image data .*MAX_TEXT_CHUNK"):
        load_picture(path)


def test_a_thin_strip_is_refused_on_its_header(tmp_path):
    path = strip_png(tmp_path / "strip.png")
    assert path.stat().st_size < 20_000
    with pytest.raises(UnusableImage, match=f"too elongated: 100000 x 32 .*{MAX_PICTURE_ASPECT} times"):
        load_picture(path)
    assert load_picture(strip_png(tmp_path / "panorama.png", 32 * MAX_PICTURE_ASPECT, 32)).size == (640, 32)


@pytest.mark.parametrize("size", [(1, 1), (31, 31), (31, 400)])
def test_too_small_pictures_are_refused(tmp_path, size):
    Image.new("RGB", size).save(tmp_path / "small.png")
    with pytest.raises(UnusableImage, match=f"too small: {size[0]} x {size[1]}"):
        load_picture(tmp_path / "small.png")


def test_formats_are_checked_on_the_content_not_the_name(tmp_path):
    (tmp_path / "figure.eps").write_bytes(EPS)
    assert Image.open(tmp_path / "figure.eps").format == "EPS", "PIL itself would open it (and load it with Ghostscript)"
    for path in (tmp_path / "figure.eps", tga_named_jpg(tmp_path / "photo.jpg")):
        with pytest.raises(UnusableImage, match="not a picture in an accepted format"):
            load_picture(path)
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "really_a_png.jpg", "PNG")
    assert np.asarray(load_picture(tmp_path / "really_a_png.jpg"))[0, 0].tolist() == [1, 2, 3]
    with pytest.raises(UnusableImage, match="EPS pictures are not accepted"):
        load_picture(Image.open(tmp_path / "figure.eps"))


def test_exif_orientation_is_applied_from_every_kind_of_source(tmp_path):
    path = rotated_jpeg(tmp_path / "rotated.jpg")
    with Image.open(path) as stored:
        upright = np.asarray(stored.convert("RGB").transpose(Image.Transpose.ROTATE_270))
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), Image.open(path)):
        picture = load_picture(source)
        assert picture.size == (64, 96) and picture.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(picture), upright)
    assert load_picture(load_picture(path)).size == (64, 96), "applying it twice must not turn it again"


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_a_large_picture_is_decoded_near_the_resize_size_with_the_same_pixels(tmp_path, suffix):
    """JPEG at a reduced scale while decoding (short side at least 2x the resize size), PNG reduced
    right after (at least 4x): pixels after preprocessing within a fraction of a grey level of the
    full picture's."""
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((2400, 1800), Image.BICUBIC)
    smooth.save(tmp_path / f"big.{suffix}", quality=90)
    processor = SCEGGImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    reduced = load_picture(tmp_path / f"big.{suffix}", processor.decode_size)
    assert reduced.size == {"jpg": (300, 225), "png": (600, 450)}[suffix]
    full = load_picture(tmp_path / f"big.{suffix}")
    assert full.size == (2400, 1800)
    difference = processor(reduced)["pixel_values"][0] - processor(full)["pixel_values"][0]
    assert np.abs(difference).mean() < 0.01 and np.abs(difference).max() < 0.1


def test_absurd_processor_sizes_are_refused_when_loaded(tmp_path):
    SCEGGImageProcessor().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    config["size"] = {"shortest_edge": 1_000_000}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"size\\['shortest_edge'\\] = 1000000 is outside 1..{MAX_PROCESSOR_SIDE}"):
        SCEGGImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="crop_size\\['height'\\] = 0"):
        SCEGGImageProcessor(crop_size={"height": 0, "width": 448})
