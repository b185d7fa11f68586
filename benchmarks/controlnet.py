"""SD 1.5 + ControlNet on the CPU, sd_cli against diffusers: seconds per step, load to ready, peak RSS.

    python -m benchmarks --only controlnet --rounds 2 --json-out docs/bench-cpu-controlnet.json
    python -m benchmarks.controlnet --rounds 2       # the same, on its own

The files: the full-size random SD 1.5 fp16 file the other benchmarks use (sd15-random-fp16.safetensors)
and a full-size random ControlNet in lllyasviel's control_v11p_sd15_canny layout (control_model.* only,
fp16 .safetensors; every key and shape of cldm_v15.yaml's ControlNet), written once into the bench folder
tensor by tensor. Its zero convolutions are random, not zero, so that the residuals reach the UNet.
Both sides in bf16, 512x512, Euler, CFG 7.5, control strength 1, one fixed 512x512 hint image drawn here
(preprocess none). diffusers runs StableDiffusionControlNetPipeline with ControlNetModel.from_single_file
and local config folders, nothing downloaded. Method as benchmarks/peers.py: per round and side a 2-step
and an 8-step process, alternating; seconds per step is their difference over 6 steps, load is process
start to ready to sample, peak RSS the 8-step process's. The ratio is sd_cli over diffusers (target <= 0.8).
"""

import argparse
import json
import os
import sys
from pathlib import Path

from benchmarks import peers
from benchmarks.compare import BENCH_DIR, diffusers_config_dir, fp16_checkpoint
from benchmarks.stages import StageTimer

FILE = "control_v11p_sd15_canny-random-fp16.safetensors"
CONFIG_DIR = "diffusers-controlnet-config"
HINT = "controlnet-hint-512.png"
CONTROL_PREFIX = "control_model."
PACKAGED_YAML = "cldm_v15.yaml"
SIZE = 512
FIGURES = ("s_per_step", "load_to_ready_s", "image_20_steps_whole_process_s", "peak_rss_gb")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.controlnet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternating rounds of both sides' 2- and 8-step processes")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)

    def save(result):
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")

    result = bench_controlnet(args.rounds, save)
    print(json.dumps(result, indent=2))


def bench_controlnet(rounds: int, save=lambda result: None) -> dict:
    """Alternating rounds of sd_cli and diffusers; `save(result)` after every process pair (a run cut off keeps
    what it measured); a side whose process fails is reported with its error, never estimated."""
    base = fp16_checkpoint()
    net = controlnet_checkpoint()
    hint = hint_image()
    configs = diffusers_config_dir(base), controlnet_config_dir(net)
    commands = {"sd_cli": _sd_cli_command(base, net, hint), "diffusers": _diffusers_command(base, net, hint, *configs)}
    result = {"size": SIZE, "sampler": "euler", "scale": peers.SCALE, "precision": "bf16", "threads": peers.THREADS,
              "rounds": rounds, "controlnet_file_gb": round(net.stat().st_size / 1e9, 3),
              "load_average": [os.getloadavg()], "failed": {}, "tools": {}}
    def after_each(result):
        result["ratio"] = ratios(result["tools"])
        save(result)

    peers.alternate_rounds(commands, rounds, result, after_each)
    return result


def ratios(tools: dict) -> dict | None:
    """sd_cli's figures over diffusers' (below 1: sd_cli faster or smaller), once both are measured."""
    if not {"sd_cli", "diffusers"} <= set(tools):
        return None
    return {key: round(tools["sd_cli"][key] / tools["diffusers"][key], 3) for key in FIGURES}


# -- the files ---------------------------------------------------------------------------------------

def controlnet_checkpoint() -> Path:
    from benchmarks.sdxl import cached_random_file
    from sd_cli.loading.packaged import packaged_config

    return cached_random_file(FILE, lambda: controlnet_shapes(packaged_config(PACKAGED_YAML)))


def controlnet_shapes(yaml_path) -> dict:
    """key -> (shape, kind) of the ControlNet a ControlLDM YAML describes, under control_model.* as the v1.1
    files store it; built on the meta device. Kinds as benchmarks/sdxl.py's writer takes them: every weight
    of two or more dimensions random (std 1/sqrt(fan in): the zero convolutions too), norm scales 1, biases 0."""
    from benchmarks.sdxl import _kind
    from sd_cli.loading.config import load_control_config
    from sd_cli.models.controlnet import ControlNet
    from sd_cli.models.empty import empty_modules

    config = load_control_config(yaml_path)
    with empty_modules():
        state = ControlNet(**config.params).state_dict()
    return {CONTROL_PREFIX + key: (tuple(value.shape), _kind(key, value)) for key, value in state.items()}


def hint_image() -> Path:
    """A fixed 512x512 hint in the spirit of a canny map: white rings and lines on black."""
    path = BENCH_DIR / HINT
    if not path.exists():
        import numpy as np
        from PIL import Image

        ys, xs = np.mgrid[0:SIZE, 0:SIZE]
        radius = np.hypot(xs - 256, ys - 240)
        lines = (np.abs(radius % 64 - 32) < 2) | (np.abs(xs - ys) < 2) | (np.abs(xs + ys - 700) < 2)
        picture = np.where(lines[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(path)
    return path


def controlnet_config_dir(net: Path) -> Path:
    """ControlNetModel's config.json from cldm_v15.yaml, so from_single_file downloads nothing."""
    folder = BENCH_DIR / CONFIG_DIR
    if (folder / "config.json").exists():
        return folder
    from omegaconf import OmegaConf
    from safetensors import safe_open

    from sd_cli.loading.packaged import packaged_config

    original = OmegaConf.to_container(OmegaConf.load(packaged_config(PACKAGED_YAML)))
    with safe_open(str(net), "pt") as f:
        sample = {key: f.get_tensor(key) for key in f.keys() if key.startswith(CONTROL_PREFIX + "time_embed")}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel",
                                                    **diffusers_controlnet_config(original, sample)}))
    return folder


# ControlNetModel's settings that diffusers takes from its UNet conversion of the YAML
_FROM_UNET = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
              "attention_head_dim", "use_linear_projection", "class_embed_type", "addition_embed_type",
              "addition_time_embed_dim", "projection_class_embeddings_input_dim", "transformer_layers_per_block")


def diffusers_controlnet_config(original: dict, sample: dict) -> dict:
    """diffusers 0.42's create_controlnet_diffusers_config_from_ldm, which itself fails there (it calls the UNet
    conversion without its checkpoint argument): the UNet conversion's fields plus the hint's channels."""
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    unet = create_unet_diffusers_config_from_ldm(original, sample)
    hint_channels = original["model"]["params"]["control_stage_config"]["params"]["hint_channels"]
    return {"conditioning_channels": hint_channels, **{key: unet[key] for key in _FROM_UNET}}


# -- the children ------------------------------------------------------------------------------------

_CHILD = "import sys; from benchmarks.controlnet import {name}; {name}(*sys.argv[1:])"


def _sd_cli_command(base: Path, net: Path, hint: Path):
    code = _CHILD.format(name="sd_cli_child")
    return lambda steps: [sys.executable, "-c", code, str(base), str(net), str(hint), str(steps), str(peers.THREADS)]


def _diffusers_command(base: Path, net: Path, hint: Path, config_dir: Path, net_config_dir: Path):
    code = _CHILD.format(name="diffusers_child")
    return lambda steps: [sys.executable, "-c", code, str(base), str(net), str(hint), str(steps), str(peers.THREADS),
                          str(config_dir), str(net_config_dir)]


def sd_cli_child(base: str, net: str, hint: str, steps: str, threads: str, size: str = str(SIZE)) -> None:
    """In a fresh process: sd_cli's own API, as a run with --control-net NET --control-image HINT does.
    Prints "READY <epoch>" when it can sample and "DONE <json>" (stage seconds, peak RSS) at the end."""
    import time

    import torch

    torch.set_num_threads(int(threads))
    from sd_cli.control.steering import ControlSet, read_control_image
    from sd_cli.control.units import ControlOptions, ControlUnit
    from sd_cli.loading.controlnet_file import load_controlnet
    from sd_cli.loading.loader import load_model
    from sd_cli.pipelines.txt2img import txt2img
    from sd_cli.sampling.denoising import SamplingParams

    model = load_model(base, dtype=torch.bfloat16).model
    unit = ControlUnit(Path(net), Path(hint), "none", 1.0)
    # what run/render.py attaches to a session; the pipelines read it from the model they are given
    model.control = ControlSet(ControlOptions((unit,)), [load_controlnet(Path(net), None, model)],
                               [read_control_image(Path(hint))])
    print("READY", time.time(), flush=True)
    timer = StageTimer(model)
    side = int(size)
    txt2img(model, [peers.PROMPT], [""], [0], SamplingParams(sampler="euler", steps=int(steps), scale=peers.SCALE),
            side, side, timer.progress)
    timer.report()


def diffusers_child(base: str, net: str, hint: str, steps: str, threads: str, config_dir: str, net_config_dir: str,
                    size: str = str(SIZE)) -> None:
    """In a fresh process: StableDiffusionControlNetPipeline on the same files, bf16, the same prints."""
    import resource
    import time

    import torch

    torch.set_num_threads(int(threads))
    from diffusers import (ControlNetModel, EulerDiscreteScheduler, StableDiffusionControlNetPipeline,
                           StableDiffusionPipeline)
    from PIL import Image

    sd = StableDiffusionPipeline.from_single_file(base, config=config_dir, local_files_only=True,
                                                  torch_dtype=torch.bfloat16, safety_checker=None)
    controlnet = ControlNetModel.from_single_file(net, config=net_config_dir, local_files_only=True,
                                                  torch_dtype=torch.bfloat16)
    components = {key: value for key, value in sd.components.items() if key != "safety_checker"}
    pipe = StableDiffusionControlNetPipeline(**components, controlnet=controlnet, safety_checker=None,
                                             requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(hint).convert("RGB")
    print("READY", time.time(), flush=True)
    side = int(size)
    pipe(peers.PROMPT, image=image, num_inference_steps=int(steps), height=side, width=side,
         guidance_scale=peers.SCALE, controlnet_conditioning_scale=1.0)
    print("DONE", json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)


if __name__ == "__main__":
    main()
