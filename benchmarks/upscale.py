"""The SD 2 x4 upscaler on the CPU: a 512x512 input to a 2048x2048 image, time and peak memory per memory option.

    python -m benchmarks.upscale                       # writes the file once, then the four configurations
    python -m benchmarks.upscale --steps 3 --only tile-128,both --json-out docs/bench-cpu-upscale.json

The checkpoint is a full-size x4 upscaler in x4-upscaler-ema.ckpt's key names and shapes (x4-upscaling.yaml's
UNet, its factor-4 VAE, OpenCLIP ViT-H's text tower under cond_stage_model.model.*, the noise schedules as
float32 buffers), fp16 .safetensors, random weights (std 1/sqrt(fan in), norms 1, biases 0), written once into
the bench folder tensor by tensor. Each configuration runs in a fresh process, one after another: both
--tile 128 (docs/usage.md's advice for a 512 input) and --vae-tiling, each alone, then the whole latent with
a whole decode (the largest last); each
at the CLI's default CPU precision (fp32), DDIM, scale 9, noise level 20, --steps steps (default 3), through
sd_cli's API as `sd-cli upscale` runs it (the same memory check first: a configuration it refuses is reported
as refused). Figures: load (process start to ready to sample), the first step, the later steps' median,
decode, the whole process, peak RSS, and the 75-step total (the scripts' default) projected from them.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.compare import BENCH_DIR, ROOT
from benchmarks.peers import PROMPT, THREADS
from benchmarks.stages import StageTimer

FILE = "x4-upscaler-random-fp16.safetensors"
LOW_RES = "upscale-input-512.png"
PACKAGED_YAML = "x4-upscaling.yaml"
INPUT_SIDE = 512
SCALE, NOISE_LEVEL, SCRIPT_STEPS = 9.0, 20, 75
TILE = 128  # input pixels per UNet tile
# the most bounded first: a run cut off (or a machine short of memory) keeps the configurations that fit
CONFIGURATIONS = {"both": (TILE, True), "tile-128": (TILE, False), "vae-tiling": (0, True), "whole": (0, False)}
# OpenCLIP ViT-H/14's text tower, as x4-upscaler-ema.ckpt (and SD 2.x) carry it
OPENCLIP_H = dict(vocab_size=49408, context_length=77, width=1024, layers=24, mlp_width=4096)
LOW_SCALE_PREFIX = "low_scale_model."


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.upscale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="DDIM steps per process (at least 2: the first is apart)")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(CONFIGURATIONS)}")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step's time is reported apart from the others")
    names = args.only.split(",") if args.only else list(CONFIGURATIONS)
    unknown = sorted(set(names) - set(CONFIGURATIONS))
    if unknown:
        parser.error(f"unknown configuration {', '.join(unknown)}; choose from {', '.join(CONFIGURATIONS)}")

    def save(result):
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")

    result = bench_upscale(names, args.steps, save)
    print(json.dumps(result, indent=2))


def bench_upscale(names: list[str], steps: int, save=lambda result: None) -> dict:
    path, low_res = upscaler_checkpoint(), low_res_image()
    result = {"input": f"{INPUT_SIDE}x{INPUT_SIDE}", "output": f"{4 * INPUT_SIDE}x{4 * INPUT_SIDE}",
              "precision": "fp32 (the CLI's default on the CPU)", "sampler": "ddim", "scale": SCALE,
              "noise_level": NOISE_LEVEL, "steps": steps, "threads": THREADS,
              "file_gb": round(path.stat().st_size / 1e9, 3), "load_average": [os.getloadavg()], "configurations": {}}
    for name in names:
        tile, vae_tiling = CONFIGURATIONS[name]
        result["configurations"][name] = summary(run_child(path, low_res, steps, tile, vae_tiling), steps)
        result["load_average"].append(os.getloadavg())
        save(result)
    return result


def run_child(path: Path, low_res: Path, steps: int, tile: int, vae_tiling: bool, side: int = INPUT_SIDE) -> dict:
    """One configuration in a fresh process: its own report, the whole process's seconds, and its load."""
    code = "import sys; from benchmarks.upscale import child; child(*sys.argv[1:])"
    command = [sys.executable, "-c", code, str(path), str(low_res), str(steps), str(tile), str(int(vae_tiling))]
    started = time.time()
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": str(THREADS), "HF_HUB_OFFLINE": "1"})
    return parse_child(out.stdout, out.stderr, out.returncode, started, time.time())


def parse_child(stdout: str, stderr: str, returncode: int, started: float, ended: float) -> dict:
    """A child's printed lines -> its figures: "READY <epoch>", then "DONE <json>" or "REFUSED <message>"."""
    lines = stdout.splitlines()
    ready = [float(line.split()[1]) for line in lines if line.startswith("READY ")]
    done = [json.loads(line[5:]) for line in lines if line.startswith("DONE ")]
    refused = [line[8:] for line in lines if line.startswith("REFUSED ")]
    if returncode == 0 and ready and refused:
        return {"refused": refused[-1], "load_s": round(ready[0] - started, 3)}
    if returncode != 0 or not ready or not done:
        return {"failed": f"exit {returncode}: {stderr[-2000:]}"}
    return {"wall": ended - started, "load": ready[0] - started, **done[-1]}


def summary(measured: dict, steps: int) -> dict:
    """Seconds and GB of one configuration, with the 75-step total projected from its own per-step time."""
    if "refused" in measured or "failed" in measured:
        return measured
    per_step = statistics.median(measured["steps"][1:])
    projected = measured["load"] + measured["steps"][0] + (SCRIPT_STEPS - 1) * per_step + measured["decode"]
    return {"load_s": round(measured["load"], 3), "text_encode_s": round(measured["text"], 3),
            "first_step_s": round(measured["steps"][0], 3), "s_per_step": round(per_step, 3),
            "steps_s": [round(s, 3) for s in measured["steps"]], "decode_s": round(measured["decode"], 3),
            "whole_process_s": round(measured["wall"], 3), "peak_rss_gb": round(measured["peak_rss"] / 1e9, 3),
            f"projected_{SCRIPT_STEPS}_steps_total_s": round(projected, 1),
            "projection": (f"computed, not measured: load + first step + {SCRIPT_STEPS - 1} x the measured later "
                           f"steps' median + decode ({steps}-step process)")}


# -- the files ---------------------------------------------------------------------------------------

def upscaler_checkpoint() -> Path:
    from benchmarks.sdxl import cached_random_file
    from sd_cli.loading.packaged import packaged_config

    return cached_random_file(FILE, lambda: x4_shapes(packaged_config(PACKAGED_YAML)))


def x4_shapes(yaml_path, text: dict = OPENCLIP_H) -> dict:
    """key -> (shape, kind) of the x4 upscaler a YAML describes, built on the meta device, plus the text
    tower's unused projection and logit scale (the released file has them) and the float32 schedules
    (LatentDiffusion's at the root, the low-res augmentation's under low_scale_model.*) with their values."""
    from benchmarks.sdxl import _kind
    from sd_cli.loading.config import load_config
    from sd_cli.models.empty import empty_modules
    from sd_cli.models.text_encoder import OpenCLIPTextEncoder
    from sd_cli.models.unet import UNetModel
    from sd_cli.models.vae import AutoencoderKL

    config = load_config(yaml_path)
    tensors = {}
    with empty_modules():
        tower = OpenCLIPTextEncoder(layer="penultimate", **text)
        parts = [("model.diffusion_model.", UNetModel(**config.unet_params).state_dict()),
                 ("first_stage_model.", AutoencoderKL(**config.vae_params).state_dict()),
                 ("", tower.checkpoint_state_dict())]
    for prefix, state in parts:
        for key, value in state.items():
            tensors[prefix + key] = (tuple(value.shape), _kind(key, value))
    tensors[tower.checkpoint_prefix + "text_projection"] = ((text["width"], text["width"]), "weight")
    tensors[tower.checkpoint_prefix + "logit_scale"] = ((), "ones")
    low_scale = config.low_scale_params["noise_schedule_config"]
    for prefix, start, end, keys in (("", config.linear_start, config.linear_end, ROOT_SCHEDULE),
                                     (LOW_SCALE_PREFIX, low_scale["linear_start"], low_scale["linear_end"],
                                      LOW_SCALE_SCHEDULE)):
        for key, value in schedule_buffers(start, end, config.timesteps).items():
            if key in keys:
                tensors[prefix + key] = (tuple(value.shape), value)
    return tensors


# ldm's DDPM.register_schedule buffers: all of them at the root, the first eight in the augmentation
ROOT_SCHEDULE = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2")
LOW_SCALE_SCHEDULE = ROOT_SCHEDULE[:8]


def schedule_buffers(linear_start: float, linear_end: float, timesteps: int) -> dict:
    """The "linear" schedule's buffers as register_schedule computes them (float64, stored float32)."""
    import numpy as np
    import torch

    betas = np.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    cumprod = np.cumprod(alphas)
    previous = np.append(1.0, cumprod[:-1])
    variance = betas * (1.0 - previous) / (1.0 - cumprod)
    arrays = {"betas": betas, "alphas_cumprod": cumprod, "alphas_cumprod_prev": previous,
              "sqrt_alphas_cumprod": np.sqrt(cumprod), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - cumprod),
              "log_one_minus_alphas_cumprod": np.log(1.0 - cumprod),
              "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / cumprod),
              "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / cumprod - 1.0), "posterior_variance": variance,
              "posterior_log_variance_clipped": np.log(np.maximum(variance, 1e-20)),
              "posterior_mean_coef1": betas * np.sqrt(previous) / (1.0 - cumprod),
              "posterior_mean_coef2": (1.0 - previous) * np.sqrt(alphas) / (1.0 - cumprod)}
    return {key: torch.tensor(value, dtype=torch.float32) for key, value in arrays.items()}


def low_res_image(side: int = INPUT_SIDE) -> Path:
    """A fixed side x side input: smooth colour gradients with a few hard edges (the tiles' seams cross them)."""
    path = BENCH_DIR / (LOW_RES if side == INPUT_SIDE else f"upscale-input-{side}.png")
    if not path.exists():
        import numpy as np
        from PIL import Image

        ys, xs = np.mgrid[0:side, 0:side] / side
        picture = np.stack([xs, ys, 0.5 + 0.5 * np.sin(8 * math.pi * xs * ys)], axis=2)
        picture[(xs - 0.5) ** 2 + (ys - 0.5) ** 2 < 0.05] = (0.9, 0.2, 0.1)
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        Image.fromarray((picture * 255).astype(np.uint8)).save(path)
    return path


# -- the child -----------------------------------------------------------------------------------------

def child(path: str, low_res: str, steps: str, tile: str, vae_tiling: str, config: str | None = None) -> None:
    """In a fresh process: the upscale command's path through sd_cli's API (its session, its memory check).
    Prints "READY <epoch>" when it can sample, then "DONE <json>" (stage seconds, peak RSS) or "REFUSED <why>"."""
    import torch

    torch.set_num_threads(THREADS)
    from sd_cli.errors import UsageError
    from sd_cli.files.low_res import load_low_res
    from sd_cli.loading.loader import load_model
    from sd_cli.loading.lora import LoraMerger
    from sd_cli.pipelines.upscale import upscale
    from sd_cli.prompting.prompts import text_options
    from sd_cli.run.session import Session
    from sd_cli.runtime import memory
    from sd_cli.runtime.device import resolve_dtype
    from sd_cli.sampling.denoising import SamplingParams

    device = torch.device("cpu")
    loaded = load_model(path, config, device=device, dtype=resolve_dtype("auto", device))
    session = Session(loaded, text_options(loaded.model.text_towers[0], "original", None, None),
                      LoraMerger(loaded.model, False), vae_tiling=vae_tiling == "1")
    image = load_low_res(low_res, "floor")
    print("READY", time.time(), flush=True)
    height, width = (side * session.family.vae_downsampling for side in image.shape[-2:])
    try:
        memory.check_fits(session, 1, height, width, guided=True, vae_tiling=session.vae_tiling, unet_tile=int(tile))
    except UsageError as err:
        print("REFUSED", err, flush=True)
        return
    timer = StageTimer(session)
    params = SamplingParams(sampler="ddim", steps=int(steps), scale=SCALE)
    upscale(session, image, [PROMPT], [""], [0], params, NOISE_LEVEL, timer.progress, int(tile))
    timer.report()


if __name__ == "__main__":
    main()
