"""Side-by-side benchmark: sd_cli against diffusers on the same full-size checkpoint.

    python -m benchmarks                      # build random SD 1.5 checkpoints in ~/.cache/sd_cli/bench (SD_CLI_BENCH_DIR), run everything
    python -m benchmarks --only load,cpu-step --repeats 3
    python -m benchmarks --only gpu-step --device cuda
    python -m benchmarks --only attention --precision bf16   # CPU attention candidates (bench_attention.py)
    python -m benchmarks --only unet-call --device cuda --rounds 8 --groupnorm-variants   # bench_unet_call.py
    python -m benchmarks --only peers --rounds 2   # CPU: sd_cli, its OpenVINO backend, diffusers, OpenVINO, sd.cpp (peers.py)
    python -m benchmarks --only controlnet --rounds 2   # CPU: SD 1.5 + a full-size ControlNet (controlnet.py)

Speed does not depend on weight values, so the checkpoints are full-size SD 1.5 layouts with
random weights: a 4 GB fp32 `.ckpt` (Lightning-style pickle) and a 2 GB fp16 `.safetensors`.
Each figure repeats sd_cli and diffusers runs and prints medians and the sd_cli/diffusers ratio
(below 1 means sd_cli is faster or smaller). Load figures alternate the two sides in fresh
processes, from process start to the first denoising step, with peak RSS; step figures run each
side in a process of its own, one after the other; memory-modes times sd_cli's memory options.
diffusers is a test-only dependency; it is built offline from local config files.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.random_checkpoint import CLIP_L_TEXT, random_sd15_weights

ROOT = Path(__file__).resolve().parent.parent
# Full-size random checkpoints take gigabytes: they live in the user's cache, not in the checkout.
BENCH_DIR = Path(os.environ.get("SD_CLI_BENCH_DIR", Path.home() / ".cache" / "sd_cli" / "bench"))
FIGURES = ("startup", "load", "cpu-step", "gpu-step", "unet-call", "attention", "gpu-precision", "batch",
           "memory-modes", "peers", "controlnet")


def main(argv=None) -> None:
    args = _parse(argv)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    results = {}
    only = set(args.only.split(",")) if args.only else set(FIGURES)
    if "startup" in only:
        results["startup"] = bench_startup(args.repeats)
    if "attention" in only:  # random q, k and v: no checkpoint needed
        from benchmarks.attention import bench_attention

        results["attention"] = bench_attention(args.precision or "bf16", args.repeats)
    if only & set(FIGURES) - {"startup", "attention", "peers", "controlnet"}:
        ckpt, st = full_size_checkpoints()
        diffusers_config_dir(st)
    elif "peers" in only:  # the fp16 file alone
        st = fp16_checkpoint()
    if "load" in only:
        results["load"] = bench_load(ckpt, st, args.repeats)
    if "cpu-step" in only:
        results["cpu-step"] = bench_steps(st, "cpu", args.precision or "fp32", args.repeats, args.steps, 512,
                                          compile_unet=args.compile, rounds=args.rounds)
    if "batch" in only:
        results["batch"] = bench_batches(st, args.device, args.precision or "auto", args.steps, args.size)
        _save(results, args.json_out)
    if "memory-modes" in only:
        results["memory-modes"] = bench_memory_modes(st, args.device, args.precision or "auto", args.size, args.steps)
        _save(results, args.json_out)
    if "unet-call" in only:
        from benchmarks.unet_call import bench_unet_calls

        results["unet-call"] = bench_unet_calls(st, args.device, args.precision or "auto", max(args.rounds, 2),
                                                groupnorm_variants=args.groupnorm_variants)
        _save(results, args.json_out)
    if "gpu-precision" in only:
        results["gpu-precision"] = bench_precision(st, args.device)
        _save(results, args.json_out)
    if "peers" in only:
        from benchmarks.peers import bench_peers

        def save(peers):
            results["peers"] = peers
            _save(results, args.json_out)

        save(bench_peers(st, BENCH_DIR, max(args.rounds, 1), diffusers_config_dir(st), save))
    if "controlnet" in only:  # its own files: the fp16 SD 1.5 file and a random ControlNet beside it
        from benchmarks.controlnet import bench_controlnet

        def save_controlnet(figures):
            results["controlnet"] = figures
            _save(results, args.json_out)

        save_controlnet(bench_controlnet(max(args.rounds, 1), save_controlnet))
    if "gpu-step" in only:
        results["gpu-step"] = bench_steps(st, args.device, args.precision or "fp16", args.repeats, args.steps, 512,
                                          compile_unet=args.compile, rounds=args.rounds)
    print(json.dumps(results, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


def _save(results: dict, path) -> None:
    """Write what is measured so far (a long run that is cut off keeps its earlier figures)."""
    if path:
        Path(path).write_text(json.dumps(results, indent=2))


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(FIGURES)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps timed per run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", help="fp32, fp16 or bf16 for the step figures")
    parser.add_argument("--compile", action="store_true", help="also time sd_cli with --compile")
    parser.add_argument("--rounds", type=int, default=1,
                        help="step figures: fresh processes per variant, alternating (each runs --repeats)")
    parser.add_argument("--groupnorm-variants", action="store_true",
                        help="unet-call: also time sd_cli with GroupNorm's other candidates")
    parser.add_argument("--size", type=int, default=512, help="image side for the batch and memory-modes figures")
    parser.add_argument("--json-out")
    return parser.parse_args(argv)


def summarize(ours: list[float], theirs: list[float], unit: str) -> dict:
    a, b = statistics.median(ours), statistics.median(theirs)
    return {"sd_cli": round(a, 4), "diffusers": round(b, 4), "ratio": round(a / b, 3), "unit": unit,
            "runs": {"sd_cli": [round(x, 4) for x in ours], "diffusers": [round(x, 4) for x in theirs]}}


# -- start-up ------------------------------------------------------------------------------------

def bench_startup(repeats: int) -> dict:
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sd_cli", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    probe = "import sys, sd_cli.cli.app; print('torch' in sys.modules)"
    imports_torch = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    return {"help_seconds_median": round(statistics.median(times[1:]), 3), "cli_import_loads_torch": imports_torch == "True"}


# -- checkpoints ---------------------------------------------------------------------------------

def full_size_checkpoints() -> tuple[Path, Path]:
    """SD 1.5-layout checkpoints with random weights (built once, kept in ~/.cache/sd_cli/bench (SD_CLI_BENCH_DIR))."""
    ckpt, st = BENCH_DIR / "sd15-random.ckpt", BENCH_DIR / "sd15-random-fp16.safetensors"
    if ckpt.exists() and st.exists():
        return ckpt, st
    import torch

    weights = random_sd15_weights()
    print(f"writing {ckpt} and {st} ...", file=sys.stderr)
    torch.save({"state_dict": weights, "global_step": 0}, ckpt)
    from safetensors.torch import save_file

    save_file({k: v.half().contiguous() for k, v in weights.items()}, str(st))
    return ckpt, st


def fp16_checkpoint() -> Path:
    """The 2 GB fp16 .safetensors alone (what the peers figure reads), built once."""
    st = BENCH_DIR / "sd15-random-fp16.safetensors"
    if not st.exists():
        from benchmarks.random_checkpoint import write_safetensors

        write_safetensors(st, fp16=True)
    return st


def diffusers_config_dir(st: Path) -> Path:
    """A local diffusers config folder for from_single_file(config=...), so nothing is downloaded."""
    folder = BENCH_DIR / "diffusers-sd15-config"
    if (folder / "model_index.json").exists():
        return folder
    from diffusers import DDIMScheduler
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm, create_vae_diffusers_config_from_ldm
    from omegaconf import OmegaConf
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTokenizer
    from sd_cli.loading.packaged import packaged_config

    original = OmegaConf.to_container(OmegaConf.load(packaged_config("v1-inference.yaml")))
    with safe_open(str(st), "pt") as f:
        shapes = {k: f.get_slice(k) for k in f.keys() if k.startswith(("model.diffusion_model.input_blocks.0", "first_stage_model.encoder.conv_in"))}
        sample = {k: f.get_tensor(k) for k in shapes}
    for name, cfg in (("unet", create_unet_diffusers_config_from_ldm(original, sample)),
                      ("vae", create_vae_diffusers_config_from_ldm(original, sample))):
        (folder / name).mkdir(parents=True, exist_ok=True)
        cls = "UNet2DConditionModel" if name == "unet" else "AutoencoderKL"
        (folder / name / "config.json").write_text(json.dumps({"_class_name": cls, **cfg}))
    CLIPTextConfig(**CLIP_L_TEXT).save_pretrained(folder / "text_encoder")
    _clip_tokenizer_files(folder / "tokenizer", CLIPTokenizer)
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None], "safety_checker": [None, None],
        "requires_safety_checker": False, "image_encoder": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}))
    return folder


def _clip_tokenizer_files(folder: Path, tokenizer_class) -> None:
    """CLIP's vocab.json/merges.txt rebuilt from open_clip's bundled BPE file (same vocabulary)."""
    import gzip

    from open_clip.tokenizer import default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    byte_chars = _bytes_to_unicode()
    vocab = list(byte_chars) + [c + "</w>" for c in byte_chars] + ["".join(p) for p in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n")
    tokenizer_class(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                    pad_token="<|endoftext|>").save_pretrained(folder)


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet, in CLIP's vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


# -- load: process start to first denoising step -------------------------------------------------

_SD_CLI_CHILD = """
import resource, sys, time
import torch
from sd_cli.loading.loader import load_model
from sd_cli.sampling.denoising import SamplingParams
from sd_cli.pipelines.txt2img import txt2img
class FirstStep(Exception): pass
def progress(done, total):
    raise FirstStep
loaded = load_model(sys.argv[1], device="cpu", dtype=getattr(torch, sys.argv[2]))
try:
    txt2img(loaded.model, ["a photo"], [""], [0], SamplingParams(steps=2), 64, 64, progress)
except FirstStep:
    pass
print("MARK", time.time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

_DIFFUSERS_CHILD = """
import resource, sys, time
import torch
from diffusers import StableDiffusionPipeline
class FirstStep(Exception): pass
def on_step(pipe, i, t, kwargs):
    raise FirstStep
pipe = StableDiffusionPipeline.from_single_file(sys.argv[1], config=sys.argv[2], local_files_only=True,
                                                torch_dtype=getattr(torch, sys.argv[3]), safety_checker=None)
try:
    pipe("a photo", num_inference_steps=2, height=64, width=64, callback_on_step_end=on_step)
except FirstStep:
    pass
print("MARK", time.time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def bench_load(ckpt: Path, st: Path, repeats: int) -> dict:
    config_dir = diffusers_config_dir(st)
    results = {}
    # An fp16 file run in fp32 must end up twice its size in memory; run in bf16 it shows whether
    # loading keeps a second copy.
    series = (("ckpt_fp32", ckpt, "float32"), ("safetensors_fp16", st, "float32"),
              ("safetensors_fp16_as_bf16", st, "bfloat16"))
    for label, path, dtype in series:
        ours, theirs, rss_ours, rss_theirs = [], [], [], []
        for attempt in range(repeats + 1):
            seconds, rss = _child(_SD_CLI_CHILD, [str(path), dtype])
            their_seconds, their_rss = _child(_DIFFUSERS_CHILD, [str(path), str(config_dir), dtype])
            if attempt == 0:
                continue  # the cold run: it reads the file into the page cache for both
            ours.append(seconds)
            rss_ours.append(rss)
            theirs.append(their_seconds)
            rss_theirs.append(their_rss)
        size = path.stat().st_size
        results[label] = {"to_first_step": summarize(ours, theirs, "s"),
                          "peak_rss_gb": summarize([r / 1e9 for r in rss_ours], [r / 1e9 for r in rss_theirs], "GB"),
                          "file_gb": round(size / 1e9, 3),
                          "sd_cli_peak_rss_over_file": round(statistics.median(rss_ours) / size, 3)}
    return results


def _child(code: str, args: list[str]) -> tuple[float, int]:
    """(seconds from process start to its MARK, its peak RSS in bytes) of a load child."""
    started = time.time()
    stamp, peak_rss = _run_child(code, args, "MARK").split()
    return float(stamp) - started, int(peak_rss)


def _run_child(code: str, args: list[str], marker: str) -> str:
    """Run `code` in a fresh Python; what follows `marker ` on the last line it printed so marked."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    marked = [line[len(marker) + 1:] for line in out.stdout.splitlines() if line.startswith(marker + " ")]
    if out.returncode != 0 or not marked:
        raise RuntimeError(f"benchmark child ({' '.join(args[:1])}) failed:\n{out.stderr[-3000:]}")
    return marked[-1]


# -- per-step time -------------------------------------------------------------------------------

# Each variant runs in a process of its own, so that nothing one leaves behind in the process
# (allocator state, kernel caches, memory) helps or hurts the next.
_STEP_CHILD = """
import json, sys
from benchmarks.compare import time_steps_here
print("TIMES", json.dumps(time_steps_here(*sys.argv[1:])))
"""


def bench_steps(st: Path, device: str, precision: str, repeats: int, steps: int, size: int,
                compile_unet: bool = False, rounds: int = 1) -> dict:
    """Seconds per denoising step, whole pipeline, CFG batch of 2, DDIM, size x size.

    Besides diffusers as it runs by default, the CPU figure times diffusers with sd_cli's allocator
    setting, which shows how much of the ratio is that setting and how much is sd_cli's model code.

    Each of `rounds` starts every variant in a fresh process, alternating: an eager GPU step is
    bound by the host's kernel launches, and on a shared machine one process can run 40% slower
    than the next for its whole life, so one process per variant can decide a ratio by chance.
    `process_medians` shows that spread.
    """
    variants = ["sd_cli", "diffusers"]
    if device == "cpu":
        variants.append("diffusers_reusing_memory")
    if compile_unet:
        variants.append("sd_cli_compiled")
    runs = {name: {"seconds": [], "process_medians": []} for name in variants}
    for _ in range(rounds):
        for name in variants:
            child = _step_child(name, st, device, precision, steps, size, repeats)
            runs[name]["seconds"] += child["seconds"]
            runs[name]["process_medians"].append(round(statistics.median(child["seconds"]), 4))
            runs[name].update(peak_vram_gb=child["peak_vram_gb"], device=child["device"])
    result = {"eager": summarize(runs["sd_cli"]["seconds"], runs["diffusers"]["seconds"], "s/step"),
              "precision": precision, "device": runs["sd_cli"]["device"], "size": size,
              "it_per_s": {name: round(1 / statistics.median(r["seconds"]), 2) for name, r in runs.items()}}
    if "diffusers_reusing_memory" in runs:
        result["eager_against_diffusers_reusing_memory"] = summarize(
            runs["sd_cli"]["seconds"], runs["diffusers_reusing_memory"]["seconds"], "s/step")
    if compile_unet:
        result["compiled"] = summarize(runs["sd_cli_compiled"]["seconds"], runs["diffusers"]["seconds"], "s/step")
        result["compiled_it_per_s"] = round(1 / statistics.median(runs["sd_cli_compiled"]["seconds"]), 1)
    if rounds > 1:
        result["process_medians"] = {name: r["process_medians"] for name, r in runs.items()}
    if runs["sd_cli"].get("peak_vram_gb") is not None:
        result["peak_vram_gb"] = {name: r["peak_vram_gb"] for name, r in runs.items()}
    return result


def _step_child(variant: str, st: Path, device: str, precision: str, steps: int, size: int, repeats: int) -> dict:
    args = [variant, str(st), device, precision, str(steps), str(size), str(repeats)]
    return json.loads(_run_child(_STEP_CHILD, args, "TIMES"))


def time_steps_here(variant: str, st: str, device: str, precision: str, steps: str, size: str, repeats: str) -> dict:
    """In a benchmark child: one warm-up run (kernels, compilation, allocator), then `repeats` timed runs."""
    import torch

    from sd_cli.runtime.allocator import reusing_freed_memory
    from sd_cli.runtime.device import resolve_dtype
    from sd_cli.loading.loader import load_model

    dev = torch.device(device)
    dtype = resolve_dtype(precision, dev)
    steps, size = int(steps), int(size)
    if variant == "diffusers":
        pipe = _diffusers_pipeline(Path(st), dev, dtype)
        run = lambda: _time_diffusers(pipe, steps, size, dev)  # noqa: E731
    elif variant == "diffusers_reusing_memory":  # diffusers' denoising loop under sd_cli's setting
        pipe = _diffusers_pipeline(Path(st), dev, dtype)

        def run():
            with reusing_freed_memory(dev):
                return _time_diffusers(pipe, steps, size, dev)
    else:
        model = load_model(st, device=dev, dtype=dtype).model
        if variant == "sd_cli_compiled":
            from sd_cli.runtime.compiling import compile_model

            model = compile_model(model)
        run = lambda: _time_sd_cli(model, steps, size, dev)  # noqa: E731
    run()
    seconds = [run() for _ in range(int(repeats))]
    peak = round(torch.cuda.max_memory_allocated() / 1e9, 2) if dev.type == "cuda" else None
    return {"seconds": seconds, "peak_vram_gb": peak, "device": _device_name(dev)}


def alternate(runs: dict, rounds: int, calls: int, sync) -> dict[str, list[float]]:
    """Seconds of each call of each run: one warm-up call each, then per round `calls` of each in turn."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            for _ in range(calls):
                sync()
                started = time.perf_counter()
                run()
                sync()
                times[name].append(time.perf_counter() - started)
    return times


def bench_batches(st: Path, device: str, precision: str, steps: int, size: int) -> dict:
    """sd_cli images/s (sampling + decoding) for growing batch sizes, until memory runs out."""
    import torch

    from sd_cli.sampling.denoising import SamplingParams
    from sd_cli.pipelines.txt2img import txt2img
    from sd_cli.runtime.device import resolve_device, resolve_dtype
    from sd_cli.loading.loader import load_model

    dev = resolve_device(device)
    model = load_model(st, device=dev, dtype=resolve_dtype(precision, dev)).model
    params = SamplingParams(steps=steps)
    rates = {}
    for batch in (1, 2, 4, 8, 16):
        try:
            txt2img(model, ["a photo"] * batch, [""] * batch, list(range(batch)), params, size, size)  # warm-up
            _sync(dev)
            started = time.perf_counter()
            txt2img(model, ["a photo"] * batch, [""] * batch, list(range(batch)), params, size, size)
            _sync(dev)
        except torch.OutOfMemoryError:
            rates[batch] = "out of memory"
            break
        rates[batch] = round(batch / (time.perf_counter() - started), 3)
    return {"images_per_s": rates, "steps": steps, "size": size, "device": str(dev), "precision": precision}


def bench_memory_modes(st: Path, device: str, precision: str, size: int, steps: int) -> dict:
    """What the memory options cost: --vae-tiling and the NaN guard on one decode; --offload on a GPU.

    Peaks are what the step adds above the memory held before it: host RSS on the CPU (Linux),
    allocated VRAM on a GPU, where --offload's figure is the whole peak (its point is the total).
    """
    import torch

    from sd_cli.runtime.device import resolve_device, resolve_dtype
    from sd_cli.loading.loader import load_model

    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    model = load_model(st, device=dev, dtype=dtype).model
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    result = {"device": str(dev), "precision": precision, "size": size}
    with torch.inference_mode():
        for tiled in (False, True):
            seconds, added, decoded = _timed_with_peak(lambda: model.decode_latents(latents, tiled=tiled), dev)
            result["decode_tiled" if tiled else "decode_whole"] = {"seconds": seconds, "peak_added_gb": added}
            if not tiled:
                images = decoded  # the NaN guard below checks the whole decode's image
        guard, _, _ = _timed_with_peak(lambda: bool(torch.isfinite(images).all()), dev, runs=5)
        result["nan_guard_seconds"] = guard
    result["tiling_time_ratio"] = round(result["decode_tiled"]["seconds"] / result["decode_whole"]["seconds"], 3)
    del model, images
    if dev.type == "cuda":
        result["offload"] = _offload_costs(st, dev, dtype, size, steps)
    return result


def _offload_costs(st: Path, dev, dtype, size: int, steps: int) -> dict:
    """One txt2img image with the whole model on the GPU, then with --offload: seconds and peak VRAM."""
    import torch

    from sd_cli.sampling.denoising import SamplingParams
    from sd_cli.pipelines.txt2img import txt2img
    from sd_cli.loading.loader import load_model

    params = SamplingParams(steps=steps)
    costs = {}
    for offload in (False, True):
        model = load_model(st, device=dev, dtype=dtype, offload=offload).model
        torch.cuda.empty_cache()
        seconds, _, _ = _timed_with_peak(lambda: txt2img(model, ["a photo"], [""], [0], params, size, size),
                                         dev)
        costs["offload" if offload else "whole_model_on_gpu"] = {
            "seconds_per_image": seconds, "peak_vram_gb": round(_peak(dev) / 1e9, 3)}
        del model
    return costs


def _timed_with_peak(work, dev, runs: int = 2):
    """(median seconds of `work` after one warm-up, the memory its last run added at its peak in GB,
    what its last run returned)."""
    work()
    times, added, result = [], None, None
    for _ in range(runs):
        before = _reset_peak(dev)
        _sync(dev)
        started = time.perf_counter()
        result = work()
        _sync(dev)
        times.append(time.perf_counter() - started)
        peak = _peak(dev)
        added = None if peak is None or before is None else round((peak - before) / 1e9, 3)
    return round(statistics.median(times), 4), added, result


def _reset_peak(dev) -> int | None:
    """Reset the peak-memory counter; the bytes held now (None where it cannot be read)."""
    import torch

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return torch.cuda.memory_allocated(dev)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
        return _proc_status_bytes("VmRSS")
    except OSError:
        return None


def _peak(dev) -> int | None:
    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev)
    try:
        return _proc_status_bytes("VmHWM")
    except OSError:
        return None


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def bench_precision(st: Path, device: str) -> dict:
    """fp16/bf16 against fp32 on the same device: relative error of latents and images after 10 steps."""
    import torch

    from sd_cli.sampling.denoising import SamplingParams
    from sd_cli.pipelines.txt2img import txt2img_latents
    from sd_cli.loading.loader import load_model

    outputs = {}
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        model = load_model(st, device=device, dtype=dtype).model
        latents = txt2img_latents(model, ["a photo of a cat"], [""], [0], SamplingParams(steps=10), 512, 512)
        image = model.decode_latents(latents).float()
        outputs[name] = (latents.float().cpu(), image.cpu())
        del model
        torch.cuda.empty_cache()
    ref_latents, ref_image = outputs["fp32"]
    report = {}
    for name in ("fp16", "bf16"):
        latents, image = outputs[name]
        report[name] = {"latents_rel_err": round(float((latents - ref_latents).norm() / ref_latents.norm()), 5),
                        "image_mean_abs_err": round(float((image - ref_image).abs().mean()), 5),
                        "finite": bool(torch.isfinite(image).all())}
    return report


def _diffusers_pipeline(st: Path, dev, dtype):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(str(st), config=str(diffusers_config_dir(st)), local_files_only=True,
                                                    torch_dtype=dtype, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


def _device_name(dev) -> str:
    import torch

    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def _time_sd_cli(model, steps: int, size: int, dev) -> float:
    """Median seconds between consecutive step callbacks (excludes text encoding and decoding)."""
    from sd_cli.pipelines.txt2img import txt2img_latents
    from sd_cli.sampling.denoising import SamplingParams

    stamps = []

    def progress(done, total):
        _sync(dev)
        stamps.append(time.perf_counter())

    txt2img_latents(model, ["a photo of a cat"], [""], [0], SamplingParams(steps=steps), size, size, progress)
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def _time_diffusers(pipe, steps: int, size: int, dev) -> float:
    stamps = []

    def on_step(p, i, t, kwargs):
        _sync(dev)
        stamps.append(time.perf_counter())
        return kwargs

    pipe("a photo of a cat", num_inference_steps=steps, height=size, width=size, guidance_scale=7.5,
         callback_on_step_end=on_step, output_type="latent")
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


if __name__ == "__main__":
    main()
