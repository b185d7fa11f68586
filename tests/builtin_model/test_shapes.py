"""The procedural dataset and its detectors: detectors against ground truth, captions against
the prompt parser."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from builtin_model import shapes


def scenes(n, seed):
    rng = np.random.default_rng(seed)
    return [shapes.sample_scene(rng) for _ in range(n)]


def accuracies(pairs):
    """Fraction right per attribute over (scene, detection) pairs; position for single shapes."""
    pairs = list(pairs)
    single = [(s, d) for s, d in pairs if s.count == 1]
    return {
        "background": np.mean([d.background == s.background for s, d in pairs]),
        "shape_colour": np.mean([d.shape_colour == s.colour for s, d in pairs]),
        "shape_class": np.mean([d.shape_class == s.shape for s, d in pairs]),
        "count": np.mean([d.count == s.count for s, d in pairs]),
        "position": np.mean([d.position == s.position for s, d in single]),
    }


def blur_and_noise(image, rng, radius=1.5, sigma=20.0):
    """Soft edges and pixel noise, roughly what a decoder adds to a generated image."""
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)), np.float64)
    return np.clip(blurred + rng.normal(0, sigma, blurred.shape), 0, 255).astype(np.uint8)


def test_palette_is_well_separated():
    rgb = np.array(list(shapes.PALETTE.values()), np.float64)
    distance = np.sqrt(((rgb[:, None] - rgb[None]) ** 2).sum(-1))
    assert distance[~np.eye(len(rgb), dtype=bool)].min() > 90


def test_scene_invariants():
    for scene in scenes(300, seed=1):
        assert scene.colour != scene.background
        assert len(scene.boxes) == scene.count
        assert (scene.position is None) == (scene.count == 2)
        for cx, cy, half in scene.boxes:
            assert half <= cx <= 1 - half and half <= cy <= 1 - half  # inside the image


def test_render_is_flat_palette_colours():
    scene = scenes(1, seed=2)[0]
    image = shapes.render(scene, size=64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert colours == {shapes.PALETTE[scene.background], shapes.PALETTE[scene.colour]}


def test_sample_scene_is_deterministic():
    assert scenes(20, seed=3) == scenes(20, seed=3)


@pytest.mark.parametrize("size", [128, 64])
def test_detectors_on_ground_truth(size):
    pairs = [(s, shapes.detect(shapes.render(s, size))) for s in scenes(300, seed=size)]
    for name, accuracy in accuracies(pairs).items():
        assert accuracy >= 0.98, (name, accuracy)


def test_detectors_on_blurred_noisy_images():
    rng = np.random.default_rng(4)
    pairs = [(s, shapes.detect(blur_and_noise(shapes.render(s), rng))) for s in scenes(200, seed=5)]
    for name, accuracy in accuracies(pairs).items():
        assert accuracy >= 0.95, (name, accuracy)


def test_detect_empty_image():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:] = shapes.PALETTE["blue"]
    detection = shapes.detect(image)
    assert detection == shapes.Detection("blue", None, None, None, 0)


def test_label_components_counts_separate_blobs():
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True
    mask[6:9, 5:9] = True
    mask[5, 0] = True
    labels = shapes.label_components(mask)
    assert len(np.unique(labels[mask])) == 3
    assert (labels[~mask] == -1).all()


def test_caption_round_trip():
    rng = np.random.default_rng(6)
    for scene in scenes(300, seed=7):
        text = shapes.caption(scene, rng)
        expected = shapes.parse_prompt(text)
        assert expected.shape_colour == scene.colour, text
        assert expected.shape_class == scene.shape, text
        assert expected.count == scene.count, text
        assert expected.background in (None, scene.background), text
        assert expected.position in (None, scene.position), text
        assert expected.size in (None, scene.size), text


def test_full_caption_names_everything():
    for scene in scenes(50, seed=8):
        expected = shapes.parse_prompt(shapes.full_caption(scene))
        assert expected.background == scene.background
        assert expected.position == scene.position
        if scene.count == 1:
            assert expected.size == scene.size


def test_captions_vary():
    rng = np.random.default_rng(9)
    scene = scenes(1, seed=10)[0]
    assert len({shapes.caption(scene, rng) for _ in range(50)}) >= 4


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a red circle on a blue background", shapes.Expected("blue", "red", "circle", None, 1)),
        (
            "a small yellow triangle in the top left corner",
            shapes.Expected(None, "yellow", "triangle", "top left", 1, "small"),
        ),
        ("two green squares", shapes.Expected(None, "green", "square", None, 2)),
        (
            "a large purple square on a white background",
            shapes.Expected("white", "purple", "square", None, 1, "large"),
        ),
        ("on a black background, an orange circle", shapes.Expected("black", "orange", "circle", None, 1)),
    ],
)
def test_parse_prompt(prompt, expected):
    assert shapes.parse_prompt(prompt) == expected


def test_captions_use_an_before_vowels():
    rng = np.random.default_rng(11)
    texts = [shapes.caption(s, rng) for s in scenes(300, seed=12)]
    assert not any("a orange" in t for t in texts)
    assert any("an orange" in t for t in texts)
