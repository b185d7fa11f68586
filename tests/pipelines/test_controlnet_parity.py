"""ControlNet parity: sd_cli's txt2img with ControlNet units against diffusers' ControlNetModel and
StableDiffusionControlNetPipeline built from the same tiny files (support/controlnet_reference.py), for every
file format, strengths 1 and 0.5, guess mode, start/end, a user hint, canny at another detect resolution
and two ControlNets at once. DDIM, eta 0, float32."""

from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("cv2")
from controlnet_reference import ControlReference, canny_hint  # noqa: E402
from parity_reference import Generators  # noqa: E402
from tiny_controlnet import write_controlnet  # noqa: E402
from tiny_models import write_tiny_checkpoint  # noqa: E402

from sd_cli.control.steering import load_control_set  # noqa: E402
from sd_cli.control.units import ControlOptions, ControlUnit  # noqa: E402
from sd_cli.loading.loader import load_model  # noqa: E402
from sd_cli.loading.lora import LoraMerger  # noqa: E402
from sd_cli.pipelines.txt2img import txt2img_latents  # noqa: E402
from sd_cli.prompting.prompts import TextOptions  # noqa: E402
from sd_cli.run.session import Session  # noqa: E402
from sd_cli.sampling.denoising import SamplingParams  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.usefixtures("one_thread")]

SIZE, STEPS, SCALE, SEED = 64, 8, 5.0, 42
PROMPT = "a red circle on a blue square"
TOLERANCE = 1e-4  # max abs difference of the latents, float32


def control_image(size: int = SIZE) -> np.ndarray:
    """A uint8 RGB image with hard edges (a disc, a bar) and a gradient, so canny finds edges."""
    ys, xs = np.mgrid[0:size, 0:size]
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 2] = (xs * 255 // (size - 1)).astype(np.uint8)
    image[(xs - size // 2) ** 2 + (ys - size // 2) ** 2 < (size // 4) ** 2] = (250, 40, 40)
    image[size // 8:size // 4, size // 8: size - size // 8, 1] = 200
    return image


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("controlnet")
    from PIL import Image

    Image.fromarray(control_image()).save(folder / "control.png")
    return {
        "folder": folder,
        "image": folder / "control.png",
        "base": write_tiny_checkpoint("sd1", folder, fmt="safetensors"),
        "full": write_controlnet(folder, "full", seed=10, suffix="safetensors"),
        "control": write_controlnet(folder, "control", seed=11),
        "fp16": write_controlnet(folder, "control", seed=12, suffix="safetensors", fp16=True, stem="fp16"),
        "diffusers": write_controlnet(folder, "diffusers", seed=13, suffix="safetensors"),
        "difference": write_controlnet(folder, "difference", seed=14),
        "difference-source": write_controlnet(folder, "control", seed=14, stem="difference-source"),
        "second": write_controlnet(folder, "control", seed=15, stem="second", prefix=""),
    }


@pytest.fixture(scope="module")
def reference(files):
    return ControlReference(files["base"], files["base"].with_suffix(".yaml"))


@pytest.fixture(scope="module")
def base(files):
    return load_model(files["base"])


def ours(loaded, units, **options) -> torch.Tensor:
    """sd_cli's denoised latents with these ControlNet units, through the run's Session."""
    control = load_control_set(ControlOptions(tuple(units), **options), loaded.model, loaded.checkpoint_path)
    session = Session(loaded, TextOptions(), LoraMerger(loaded.model, False), control=control)
    params = SamplingParams(sampler="ddim", steps=STEPS, scale=SCALE, eta=0.0)
    return txt2img_latents(session, [PROMPT], [""], [SEED], params, SIZE, SIZE)


def start_latents() -> torch.Tensor:
    return Generators([SEED]).draw()


def assert_close(mine: torch.Tensor, theirs: torch.Tensor, plain: torch.Tensor | None = None) -> float:
    assert mine.shape == theirs.shape == (1, 4, SIZE // 8, SIZE // 8)
    diff = (mine - theirs).abs().max().item()
    print(f"max abs diff {diff:.2e}")
    assert diff < TOLERANCE, diff
    if plain is not None:  # the control changed the result: the comparison is not blind to it
        assert (mine - plain).abs().max().item() > 100 * TOLERANCE
    return diff


@pytest.fixture(scope="module")
def plain(base):
    params = SamplingParams(sampler="ddim", steps=STEPS, scale=SCALE, eta=0.0)
    from sd_cli.pipelines.txt2img import txt2img_latents as plain_latents

    return plain_latents(base.model, [PROMPT], [""], [SEED], params, SIZE, SIZE)


def test_v10_full_file_canny_strength_1(files, reference, plain):
    loaded = load_model(files["full"])  # its own base weights (seed 0, as the base's) and control_model.*
    mine = ours(loaded, [ControlUnit(None, files["image"], "canny", 1.0)])
    net = reference.controlnet(files["full"])
    theirs = reference.pipeline_latents([net], [canny_hint(control_image())], PROMPT, start_latents(), STEPS, SCALE, [1.0])
    assert_close(mine, theirs, plain)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_v11_control_only_file_on_a_separate_base_user_hint(files, reference, base, plain, strength):
    mine = ours(base, [ControlUnit(files["control"], files["image"], "none", strength)])
    net = reference.controlnet(files["control"])
    theirs = reference.pipeline_latents([net], [control_image()], PROMPT, start_latents(), STEPS, SCALE, [strength])
    assert_close(mine, theirs, plain)


def test_fp16_safetensors(files, reference, base, plain):
    mine = ours(base, [ControlUnit(files["fp16"], files["image"], "canny", 1.0)])
    net = reference.controlnet(files["fp16"])
    theirs = reference.pipeline_latents([net], [canny_hint(control_image())], PROMPT, start_latents(), STEPS, SCALE, [1.0])
    assert_close(mine, theirs, plain)


def test_diffusers_format_file(files, reference, base, plain):
    mine = ours(base, [ControlUnit(files["diffusers"], files["image"], "none", 1.0)])
    net = reference.controlnet(files["diffusers"], diffusers_format=True)
    theirs = reference.pipeline_latents([net], [control_image()], PROMPT, start_latents(), STEPS, SCALE, [1.0])
    assert_close(mine, theirs, plain)


def test_difference_file_adds_the_base_unet(files, reference, base, plain):
    mine = ours(base, [ControlUnit(files["difference"], files["image"], "none", 1.0)])
    net = reference.controlnet(files["difference-source"])  # the same ControlNet before the UNet was taken off
    theirs = reference.pipeline_latents([net], [control_image()], PROMPT, start_latents(), STEPS, SCALE, [1.0])
    assert_close(mine, theirs, plain)


def test_two_controlnets_at_once(files, reference, base, plain):
    mine = ours(base, [ControlUnit(files["control"], files["image"], "canny", 1.0),
                       ControlUnit(files["second"], files["image"], "none", 0.5)])
    nets = [reference.controlnet(files["control"]), reference.controlnet(files["second"])]
    theirs = reference.pipeline_latents(nets, [canny_hint(control_image()), control_image()], PROMPT,
                                        start_latents(), STEPS, SCALE, [1.0, 0.5])
    assert_close(mine, theirs, plain)
    one = ours(base, [ControlUnit(files["control"], files["image"], "canny", 1.0)])
    assert (mine - one).abs().max().item() > 100 * TOLERANCE  # the second unit counts


def test_canny_detected_at_another_resolution(files, reference, base, plain):
    """v1.1's gradio_canny.py: canny on the image resized to the detect resolution, then INTER_LINEAR back."""
    import cv2

    mine = ours(base, [ControlUnit(files["control"], files["image"], "canny", 1.0)], detect_resolution=128)
    enlarged = cv2.resize(control_image(), (128, 128), interpolation=cv2.INTER_LANCZOS4)
    hint = cv2.resize(canny_hint(enlarged), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    net = reference.controlnet(files["control"])
    theirs = reference.pipeline_latents([net], [hint], PROMPT, start_latents(), STEPS, SCALE, [1.0])
    assert_close(mine, theirs, plain)
    at_output = ours(base, [ControlUnit(files["control"], files["image"], "canny", 1.0)])
    assert (mine - at_output).abs().max().item() > 100 * TOLERANCE


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_guess_mode_scales_and_plain_unconditional_branch(files, reference, base, plain, strength):
    mine = ours(base, [ControlUnit(files["control"], files["image"], "none", strength)], guess_mode=True)
    net = reference.controlnet(files["control"])
    theirs = reference.loop_latents(net, control_image(), PROMPT, start_latents(), STEPS, SCALE, strength,
                                    guess_mode=True)
    assert_close(mine, theirs, plain)


def test_control_start_and_end(files, reference, base, plain):
    """Steps 2..4 of 8 steered (2/8 = 0.25 <= i/8 <= 0.5): AUTOMATIC1111's extension's rule."""
    mine = ours(base, [ControlUnit(files["control"], files["image"], "none", 1.0)], start=0.25, end=0.5)
    net = reference.controlnet(files["control"])
    theirs = reference.loop_latents(net, control_image(), PROMPT, start_latents(), STEPS, SCALE, 1.0,
                                    start=0.25, end=0.5)
    assert_close(mine, theirs, plain)
    # the written-out loop is the pipeline's at start 0, end 1 (the loop itself checked once)
    full = reference.loop_latents(net, control_image(), PROMPT, start_latents(), STEPS, SCALE, 1.0)
    assert_close(full, reference.pipeline_latents([net], [control_image()], PROMPT, start_latents(), STEPS,
                                                  SCALE, [1.0]))


def test_strength_0_is_the_plain_model(files, base, plain):
    mine = ours(base, [ControlUnit(files["control"], files["image"], "none", 0.0)])
    assert (mine - plain).abs().max().item() < 1e-6
