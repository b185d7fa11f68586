"""SDXL base side by side with diffusers on the CPU: load to first step, seconds per step at 1024x1024, peak RSS.

    python -m benchmarks.sdxl                        # writes the file once, then every figure
    python -m benchmarks.sdxl --only load --repeats 2 --json-out docs/bench-cpu-sdxl.json

The checkpoint is a full-size SDXL base in `sd_xl_base_1.0.safetensors`' key names and shapes (fp16,
6.9 GB) with random weights, written here tensor by tensor (never the whole model in memory) into
SD_CLI_BENCH_DIR. diffusers runs it as StableDiffusionXLPipeline.from_single_file with a local config
folder converted from the same file and the packaged YAML, so nothing is downloaded. Both run in bf16.
Every figure is taken in a fresh process per side, one at a time: sd_cli peaks at about 8 GB, diffusers at 15.
"""

import argparse
import json
import math
import os
import statistics
import struct
import sys
from pathlib import Path

from benchmarks.compare import BENCH_DIR, _child, _clip_tokenizer_files, _run_child, summarize

FILE = "sdxl-base-random-fp16.safetensors"
CONFIG_DIR = "diffusers-sdxl-config"
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              projection_dim=768, hidden_act="quick_gelu")
BIGG = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
            projection_dim=1280, hidden_act="gelu")
STEP_SIZE = 1024
LOAD_SIZE = 128  # the load figure's image: its first step is a small part of the time to it


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sdxl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated subset of load, cpu-step")
    parser.add_argument("--repeats", type=int, default=2, help="warm load runs per side (after one cold run)")
    parser.add_argument("--steps", type=int, default=4, help="steps per step run; the first one's time is left out")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else {"load", "cpu-step"}
    path = checkpoint()
    config_dir = diffusers_config_dir(path)
    # the machine may be shared: its load average says how much else ran beside the figures
    results = {"file_gb": round(path.stat().st_size / 1e9, 3), "precision": "bf16", "device": "cpu",
               "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    if "load" in only:
        results["load"] = bench_load(path, config_dir, args.repeats)
        _save(results, args.json_out)
    if "cpu-step" in only:
        results["cpu-step"] = bench_steps(path, config_dir, args.steps)
        _save(results, args.json_out)
    results["load_average_at_end"] = os.getloadavg()
    _save(results, args.json_out)
    print(json.dumps(results, indent=2))


def _save(results: dict, path) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2) + "\n")


# -- the checkpoint --------------------------------------------------------------------------------

def checkpoint() -> Path:
    return cached_random_file(FILE, sdxl_base_shapes)


def cached_random_file(name: str, shapes) -> Path:
    """BENCH_DIR/name, written once from shapes() (called only then); a run cut off while writing
    leaves a .partial file, never one that looks finished."""
    path = BENCH_DIR / name
    if not path.exists():
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        print(f"writing {path} ...", file=sys.stderr)
        partial = path.with_suffix(".partial")
        write_random_safetensors(partial, shapes())
        partial.rename(path)
    return path


def sdxl_base_shapes() -> dict:
    """key -> (shape, kind) of sd_xl_base_1.0: built on the meta device from the packaged YAML.

    kind: "weight" (random, std 1/sqrt(fan in)), "ones" (norm scales), "zeros" (biases), "sigmas" (float32),
    "positions" (CLIP-L's position_ids).
    """
    from sd_cli.loading.config import load_config
    from sd_cli.loading.packaged import packaged_config
    from sd_cli.models import text_encoder
    from sd_cli.models.empty import empty_modules
    from sd_cli.models.unet import UNetModel
    from sd_cli.models.vae import AutoencoderKL

    config = load_config(packaged_config("sd_xl_base.yaml"))
    tensors = {}
    with empty_modules():
        parts = [("model.diffusion_model.", UNetModel(**config.unet_params).state_dict()),
                 ("first_stage_model.", AutoencoderKL(**config.vae_params).state_dict())]
        clip_l = text_encoder.SDXLCLIPTextEncoder(vocab_size=49408, context_length=77, width=768, layers=12,
                                                  mlp_width=3072, layer="hidden", layer_idx=11)
        bigg = text_encoder.SDXLOpenCLIPTextEncoder(projection_dim=1280, vocab_size=49408, context_length=77,
                                                    width=1280, layers=32, mlp_width=5120, layer="penultimate")
        bigg.checkpoint_prefix = "conditioner.embedders.1.model."
        parts += [("", clip_l.checkpoint_state_dict()), ("", bigg.checkpoint_state_dict())]
    for prefix, state in parts:
        for key, value in state.items():
            tensors[prefix + key] = (tuple(value.shape), _kind(key, value))
    tensors["conditioner.embedders.1.model.logit_scale"] = ((), "ones")
    tensors["denoiser.sigmas"] = ((1000,), "sigmas")
    return tensors


def _kind(key: str, value) -> str:
    if key.endswith("position_ids"):
        return "positions"
    if value.ndim == 1:  # a 1-D weight is a norm's scale
        return "ones" if key.endswith("weight") else "zeros"
    return "weight"


def write_random_safetensors(path: Path, shapes: dict, seed: int = 0) -> None:
    """The safetensors format written directly: an 8-byte header length, the JSON header, then each
    tensor's bytes in header order, generated one at a time (peak memory: the largest tensor).
    A kind may also be a float32 tensor of the shape: a fixed buffer (a noise schedule), stored as it is."""
    import torch

    header, offset = {}, 0
    for key, (shape, kind) in shapes.items():
        fixed = isinstance(kind, torch.Tensor)
        dtype, width = ("I64", 8) if kind == "positions" else ("F32", 4) if fixed or kind == "sigmas" else ("F16", 2)
        size = math.prod(shape) * width
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    generator = torch.Generator().manual_seed(seed)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        for key, (shape, kind) in shapes.items():
            out.write(_random_tensor(shape, kind, generator).numpy().tobytes())


def _random_tensor(shape, kind: str, generator):
    import torch

    if isinstance(kind, torch.Tensor):
        return kind.float().reshape(shape)
    if kind == "positions":
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    if kind == "sigmas":
        from sd_cli.sampling import sgm

        return sgm.sigma_table(0.00085, 0.012, 1000).float()
    if kind == "ones":
        return torch.ones(shape, dtype=torch.float16)
    if kind == "zeros":
        return torch.zeros(shape, dtype=torch.float16)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    return (torch.randn(shape, generator=generator) / math.sqrt(fan_in)).half()


def diffusers_config_dir(path: Path) -> Path:
    """A local StableDiffusionXLPipeline folder (configs and tokenizers, no weights), so from_single_file
    downloads nothing; the UNet and VAE configs are diffusers' conversion of the YAML and the file."""
    folder = BENCH_DIR / CONFIG_DIR
    if (folder / "model_index.json").exists():
        return folder
    from diffusers import EulerDiscreteScheduler
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm, create_vae_diffusers_config_from_ldm
    from omegaconf import OmegaConf
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTokenizer

    from sd_cli.loading.packaged import packaged_config

    original = OmegaConf.to_container(OmegaConf.load(packaged_config("sd_xl_base.yaml")))
    with safe_open(str(path), "pt") as f:
        sample = {k: f.get_tensor(k) for k in f.keys()
                  if k.startswith(("model.diffusion_model.input_blocks.0", "first_stage_model.encoder.conv_in"))}
    for name, config in (("unet", create_unet_diffusers_config_from_ldm(original, sample)),
                         ("vae", create_vae_diffusers_config_from_ldm(original, sample))):
        (folder / name).mkdir(parents=True, exist_ok=True)
        cls = "UNet2DConditionModel" if name == "unet" else "AutoencoderKL"
        (folder / name / "config.json").write_text(json.dumps({"_class_name": cls, **config}))
    CLIPTextConfig(**CLIP_L).save_pretrained(folder / "text_encoder")
    CLIPTextConfig(**BIGG).save_pretrained(folder / "text_encoder_2")
    _clip_tokenizer_files(folder / "tokenizer", CLIPTokenizer)
    _clip_tokenizer_files(folder / "tokenizer_2", CLIPTokenizer)
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           timestep_spacing="leading", steps_offset=1).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
        "feature_extractor": [None, None], "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}))
    return folder


# -- load: process start to the end of the first step -------------------------------------------------

_SD_CLI_LOAD = """
import resource, sys, time
import torch
from sd_cli.loading.loader import load_model
from sd_cli.sampling.denoising import SamplingParams
from sd_cli.pipelines.txt2img import txt2img_latents
class FirstStep(Exception): pass
def progress(done, total):
    raise FirstStep
loaded = load_model(sys.argv[1], device="cpu", dtype=torch.bfloat16)
size = int(sys.argv[2])
try:
    txt2img_latents(loaded.model, ["a photo"], [""], [0], SamplingParams("euler", 2, 5.0), size, size, progress)
except FirstStep:
    pass
print("MARK", time.time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

_DIFFUSERS_LOAD = """
import resource, sys, time
import torch
from diffusers import StableDiffusionXLPipeline
class FirstStep(Exception): pass
def on_step(pipe, i, t, kwargs):
    raise FirstStep
pipe = StableDiffusionXLPipeline.from_single_file(sys.argv[1], config=sys.argv[2], local_files_only=True,
                                                  torch_dtype=torch.bfloat16)
size = int(sys.argv[3])
try:
    pipe("a photo", num_inference_steps=2, height=size, width=size, guidance_scale=5.0, callback_on_step_end=on_step)
except FirstStep:
    pass
print("MARK", time.time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def bench_load(path: Path, config_dir: Path, repeats: int) -> dict:
    """Alternating fresh processes; the first pair is the cold run that fills the page cache for both."""
    ours, theirs, rss_ours, rss_theirs = [], [], [], []
    for attempt in range(repeats + 1):
        seconds, rss = _child(_SD_CLI_LOAD, [str(path), str(LOAD_SIZE)])
        their_seconds, their_rss = _child(_DIFFUSERS_LOAD, [str(path), str(config_dir), str(LOAD_SIZE)])
        print(f"load {attempt}: sd_cli {seconds:.1f}s {rss / 1e9:.2f} GB, diffusers {their_seconds:.1f}s "
              f"{their_rss / 1e9:.2f} GB", file=sys.stderr)
        if attempt == 0:
            continue
        ours.append(seconds)
        theirs.append(their_seconds)
        rss_ours.append(rss)
        rss_theirs.append(their_rss)
    size = path.stat().st_size
    return {"to_first_step": summarize(ours, theirs, "s"), "image_size": LOAD_SIZE,
            "peak_rss_gb": summarize([r / 1e9 for r in rss_ours], [r / 1e9 for r in rss_theirs], "GB"),
            "sd_cli_peak_rss_over_file": round(statistics.median(rss_ours) / size, 3),
            "diffusers_peak_rss_over_file": round(statistics.median(rss_theirs) / size, 3)}


# -- seconds per step at 1024x1024 ----------------------------------------------------------------------

_STEP_CHILD = """
import json, sys
from benchmarks.sdxl import step_times_here
print("TIMES", json.dumps(step_times_here(*sys.argv[1:])))
"""


def bench_steps(path: Path, config_dir: Path, steps: int) -> dict:
    """Seconds between consecutive step callbacks (CFG batch of 2, Euler), the first step left out."""
    runs = {}
    for variant in ("sd_cli", "diffusers"):
        runs[variant] = json.loads(_run_child(_STEP_CHILD, [variant, str(path), str(config_dir), str(steps)], "TIMES"))
        print(f"{variant}: {runs[variant]}", file=sys.stderr)
    return {"eager": summarize(runs["sd_cli"], runs["diffusers"], "s/step"), "size": STEP_SIZE, "steps": steps}


def step_times_here(variant: str, path: str, config_dir: str, steps: str) -> list[float]:
    """In a step child: the intervals between step callbacks after the first step."""
    import time

    import torch

    stamps = []
    steps = int(steps)
    if variant == "sd_cli":
        from sd_cli.loading.loader import load_model
        from sd_cli.pipelines.txt2img import txt2img_latents
        from sd_cli.sampling.denoising import SamplingParams

        model = load_model(path, device="cpu", dtype=torch.bfloat16).model
        txt2img_latents(model, ["a photo of a cat"], [""], [0], SamplingParams("euler", steps, 5.0), STEP_SIZE,
                        STEP_SIZE, lambda done, total: stamps.append(time.perf_counter()))
    else:
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_single_file(path, config=config_dir, local_files_only=True,
                                                          torch_dtype=torch.bfloat16)
        pipe.set_progress_bar_config(disable=True)

        def on_step(pipe, i, t, kwargs):
            stamps.append(time.perf_counter())
            return kwargs

        pipe("a photo of a cat", num_inference_steps=steps, height=STEP_SIZE, width=STEP_SIZE, guidance_scale=5.0,
             callback_on_step_end=on_step, output_type="latent")
    return [round(b - a, 3) for a, b in zip(stamps, stamps[1:])]


if __name__ == "__main__":
    main()
