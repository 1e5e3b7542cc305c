"""SCEGGImageProcessor: torchvision-exact resize / crop / normalisation at the default 448, RGB
conversion of every PIL mode, saving as preprocessor_config.json and AutoImageProcessor."""
import json

import numpy as np
import pytest
from PIL import Image
from transformers import AutoImageProcessor

from modeling_scegg import SCEGGImageProcessor

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


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "CMYK", "RGBA", "I;16"])
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
