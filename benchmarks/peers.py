"""sd_cli against the CPU tools a user would pick for speed, on the same full-size random SD 1.5 weights.

    python -m benchmarks --only peers --rounds 2 --json-out docs/bench-cpu-peers.json

The tools: sd_cli (eager, bf16; also beside torch's CPU build where SD_CLI_BENCH_CPU_TORCH_PYTHON names a
Python that has it and sd_cli), sd_cli --backend openvino (bf16), diffusers (bf16), OpenVINO
through optimum-intel's OVStableDiffusionPipeline (exported offline from the same weights; its own
default precision, bf16 on CPUs with AVX-512 BF16) and stable-diffusion.cpp
(stable-diffusion-cpp-python, which reads the original file). Every run is a fresh process at
512x512, Euler, CFG 7.5, batch 1, on SD_CLI_BENCH_THREADS (2) threads; the tools alternate within
each round. Per tool and round: a 2-step and an 8-step image, whole process timed from outside;
seconds per step is their difference over 6 steps; load is process start to ready to sample;
whole image is the 8-step process plus 12 steps (20 steps); peak RSS is the 8-step process's.
Ratios are each tool's median over sd_cli's (eager); below 1 the tool is faster or smaller.

optimum-intel needs an older transformers than sd_cli's environment: it runs from a virtual
environment of its own, named by SD_CLI_BENCH_OPENVINO_PYTHON (docs/benchmarks.md has the commands).
A tool that is not installed is skipped with a note, never replaced by an estimate.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE, STEPS, SCALE, PROMPT = 512, (2, 8), 7.5, "a photo of a cat"
THREADS = int(os.environ.get("SD_CLI_BENCH_THREADS", "2"))
TOOLS = ("sd_cli", "sd_cli_openvino", "diffusers", "openvino", "sdcpp")

# Each child prints "READY <epoch seconds>" when it can sample and, at the end,
# "DONE <json: stage seconds, peak RSS>"; the parent measures the whole process from outside.
_SD_CLI_CHILD = """
import sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
from sd_cli.loading.loader import load_model
from sd_cli.pipelines.txt2img import txt2img
from sd_cli.sampling.denoising import SamplingParams
if sys.argv[3] == "openvino":  # loaded as sd-cli --backend openvino loads it: the graphs' parts left in the file
    from sd_cli.loading.checkpoint import model_hash
    from sd_cli.runtime.openvino_backend import deferred_keys, use_openvino
    model = load_model(sys.argv[1], dtype=torch.bfloat16, defer=deferred_keys()).model
    key = model_hash(sys.argv[1])
    use_openvino(model, lambda: key)
else:  # as sd-cli loads it on the CPU: the text and VAE encoders wait in the file (runtime/waiting_parts.py)
    from sd_cli.runtime.waiting_parts import wait_in_file, waiting_keys
    model = load_model(sys.argv[1], dtype=torch.bfloat16, defer=waiting_keys()).model
    wait_in_file(model)
print("READY", time.time(), flush=True)
from benchmarks.stages import StageTimer
timer = StageTimer(model)
params = SamplingParams(sampler="euler", steps=int(sys.argv[2]), scale=7.5)
txt2img(model, ["a photo of a cat"], [""], [0], params, 512, 512, timer.progress)
timer.report()
"""

# The diffusers-style pipelines' own stages, timed as sd_cli's StageTimer times sd_cli's: both text
# encoder calls, every step (the first from the end of text encoding), the VAE decode.
_PIPELINE_STAGES = """
import json, resource, time
class Stages:
    def __init__(self, pipe):
        self.stages = {"text": 0.0, "decode": 0.0, "steps": []}
        self._wrap(pipe.text_encoder, "forward", "text")
        self._wrap(pipe.vae, "decode", "decode")
    def _wrap(self, owner, attr, name):
        call = getattr(owner, attr)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            out = call(*args, **kwargs)
            self.stages[name] += time.perf_counter() - started
            self._last = time.perf_counter()
            return out
        setattr(owner, attr, timed)
    def on_step_end(self, pipe, index, timestep, kwargs):
        now = time.perf_counter()
        self.stages["steps"].append(now - self._last)
        self._last = now
        return kwargs
    def report(self):
        self.stages["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print("DONE", json.dumps(self.stages), flush=True)
"""

_DIFFUSERS_CHILD = _PIPELINE_STAGES + """
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_single_file(sys.argv[1], config=sys.argv[3], local_files_only=True,
                                                torch_dtype=torch.bfloat16, safety_checker=None)
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
print("READY", time.time(), flush=True)
stages = Stages(pipe)
pipe("a photo of a cat", num_inference_steps=int(sys.argv[2]), height=512, width=512, guidance_scale=7.5,
     callback_on_step_end=stages.on_step_end)
stages.report()
"""

# Run by the OpenVINO environment's Python: its own default precision and threads set as the others'.
_OPENVINO_CHILD = _PIPELINE_STAGES + """
import json, resource, sys, time
from optimum.intel import OVStableDiffusionPipeline
from diffusers import EulerDiscreteScheduler
pipe = OVStableDiffusionPipeline.from_pretrained(sys.argv[1], ov_config={"INFERENCE_NUM_THREADS": int(sys.argv[3])},
                                                 compile=False, local_files_only=True)
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
pipe.reshape(batch_size=1, height=512, width=512, num_images_per_prompt=1)
pipe.compile()
print("READY", time.time(), flush=True)
stages = Stages(pipe)
pipe("a photo of a cat", num_inference_steps=int(sys.argv[2]), height=512, width=512, guidance_scale=7.5,
     callback_on_step_end=stages.on_step_end)
stages.report()
"""

_OPENVINO_EXPORT = """
import sys
from optimum.intel import OVStableDiffusionPipeline
OVStableDiffusionPipeline.from_pretrained(sys.argv[1], export=True, compile=False).save_pretrained(sys.argv[2])
"""

_SDCPP_CHILD = """
import json, resource, sys, time
from stable_diffusion_cpp import StableDiffusion
sd = StableDiffusion(model_path=sys.argv[1], n_threads=int(sys.argv[3]))
print("READY", time.time(), flush=True)
sd.generate_image(prompt="a photo of a cat", width=512, height=512, sample_steps=int(sys.argv[2]), cfg_scale=7.5,
                  sample_method="euler", seed=0)
print("DONE", json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def bench_peers(st: Path, bench_dir: Path, rounds: int, config_dir: Path, save=lambda result: None) -> dict:
    """Alternating rounds of every available tool; medians, ratios to sd_cli, and the skipped tools' notes.

    `save(result)` is called after every process, so a run cut off keeps what it measured; a tool
    whose process fails is reported with its error and left out of later rounds."""
    commands, notes = _available_tools(st, bench_dir, config_dir)
    result = {"size": SIZE, "sampler": "euler", "scale": SCALE, "threads": THREADS, "rounds": rounds,
              "load_average": [os.getloadavg()], "skipped": notes, "failed": {}, "cold_first_run": {}, "tools": {}}
    if "sd_cli_openvino" in commands:  # the first run converts and fills the cache; the rounds read it
        result["cold_first_run"]["sd_cli_openvino"] = _one_round(commands["sd_cli_openvino"], steps=(STEPS[0],))
        save(result)
    result["file_gb"] = round(st.stat().st_size / 1e9, 3)

    def after_each(result):
        _add_ratios(result["tools"])
        for summary in result["tools"].values():  # issue 22's memory goal: at most 1.3x the file
            summary["peak_rss_over_file"] = round(summary["peak_rss_gb"] / result["file_gb"], 3)
        save(result)

    alternate_rounds(commands, rounds, result, after_each)
    return result


def alternate_rounds(commands: dict, rounds: int, result: dict, after_each) -> None:
    """`rounds` rounds of every tool's processes, one tool after the other; result's "tools" (medians so
    far), "failed" (a failed tool leaves the later rounds) and "load_average" fill as they come, and
    after_each(result) runs after every tool's round (ratios, saving: a run cut off keeps what it took)."""
    runs = {tool: [] for tool in commands}
    for _ in range(rounds):
        for tool, command in commands.items():
            if tool in result["failed"]:
                continue
            try:
                runs[tool].append(_one_round(command))
            except RuntimeError as err:
                result["failed"][tool] = str(err)[-2000:]
                continue
            result["tools"][tool] = _summary(runs[tool])
            result["load_average"].append(os.getloadavg())
            after_each(result)


def _available_tools(st: Path, bench_dir: Path, config_dir: Path) -> tuple[dict, dict]:
    """Each tool's child command (steps are appended per run); why each missing tool is skipped."""
    threads = str(THREADS)
    # The OpenVINO pair first, so that a run cut off keeps the comparison issue 22 is about.
    commands, notes = {}, {}
    if _importable(sys.executable, "openvino"):
        commands["sd_cli_openvino"] = lambda n: [sys.executable, "-c", _SD_CLI_CHILD, str(st), str(n), "openvino", threads]
    else:
        notes["sd_cli_openvino"] = "openvino is not installed here (pip install -e '.[openvino]')"
    ov_python = os.environ.get("SD_CLI_BENCH_OPENVINO_PYTHON")
    if ov_python and _importable(ov_python, "optimum.intel"):
        ov_dir = openvino_pipeline_dir(st, bench_dir, config_dir, ov_python)
        commands["openvino"] = lambda n: [ov_python, "-c", _OPENVINO_CHILD, str(ov_dir), str(n), threads]
    else:
        notes["openvino"] = ("SD_CLI_BENCH_OPENVINO_PYTHON does not name a Python with optimum-intel "
                             "(docs/benchmarks.md: its own venv)")
    commands["sd_cli"] = lambda n: [sys.executable, "-c", _SD_CLI_CHILD, str(st), str(n), "torch", threads]
    cpu_python = os.environ.get("SD_CLI_BENCH_CPU_TORCH_PYTHON")
    if cpu_python and _importable(cpu_python, "sd_cli"):  # the same child beside torch's CPU build (README's CPU install)
        commands["sd_cli_cpu_torch"] = lambda n: [cpu_python, "-c", _SD_CLI_CHILD, str(st), str(n), "torch", threads]
    else:
        notes["sd_cli_cpu_torch"] = ("SD_CLI_BENCH_CPU_TORCH_PYTHON does not name a Python with torch's CPU build "
                                     "and sd_cli (docs/benchmarks.md)")
    if _importable(sys.executable, "diffusers"):
        commands["diffusers"] = lambda n: [sys.executable, "-c", _DIFFUSERS_CHILD, str(st), str(n), str(config_dir), threads]
    else:
        notes["diffusers"] = "diffusers is not installed (pip install -e '.[bench-peers]')"
    if _importable(sys.executable, "stable_diffusion_cpp"):
        commands["sdcpp"] = lambda n: [sys.executable, "-c", _SDCPP_CHILD, str(st), str(n), threads]
    else:
        notes["sdcpp"] = "stable-diffusion-cpp-python is not installed (CMAKE_ARGS=-DGGML_NATIVE=ON pip install stable-diffusion-cpp-python)"
    return commands, notes


def _importable(python: str, module: str) -> bool:
    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


def openvino_pipeline_dir(st: Path, bench_dir: Path, config_dir: Path, ov_python: str) -> Path:
    """The same weights as an optimum-intel OpenVINO pipeline (built once: diffusers folder, then export)."""
    ov_dir = bench_dir / "openvino-sd15"
    if (ov_dir / "model_index.json").exists():
        return ov_dir
    diffusers_dir = bench_dir / "diffusers-sd15"
    if not (diffusers_dir / "model_index.json").exists():
        import torch
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_single_file(str(st), config=str(config_dir), local_files_only=True,
                                                        torch_dtype=torch.float32, safety_checker=None)
        pipe.save_pretrained(diffusers_dir)
        del pipe
    print(f"exporting {ov_dir} with optimum-intel ...", file=sys.stderr)
    subprocess.run([ov_python, "-c", _OPENVINO_EXPORT, str(diffusers_dir), str(ov_dir)], check=True)
    return ov_dir


def _one_round(command, steps=STEPS) -> dict:
    """One tool's 2-step and 8-step processes: whole seconds, seconds to ready, what the child reported."""
    measured = {}
    for steps in steps:
        started = time.time()
        out = subprocess.run(command(steps), capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": str(THREADS), "HF_HUB_OFFLINE": "1"})
        wall = time.time() - started
        ready = [float(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("READY ")]
        done = [json.loads(line[5:]) for line in out.stdout.splitlines() if line.startswith("DONE ")]
        if out.returncode != 0 or not ready or not done:
            raise RuntimeError(f"benchmark child failed ({command(steps)[:3]}):\n{out.stderr[-3000:]}")
        measured[steps] = {"wall": wall, "load": ready[0] - started, **done[0]}
    return measured


def _summary(rounds_of_tool: list[dict]) -> dict:
    low, high = STEPS
    per_step = [(r[high]["wall"] - r[high]["load"] - (r[low]["wall"] - r[low]["load"])) / (high - low)
                for r in rounds_of_tool]
    image_20 = [r[high]["wall"] + (20 - high) * s for r, s in zip(rounds_of_tool, per_step)]
    summary = {"s_per_step": _median(per_step), "load_to_ready_s": _median([r[low]["load"] for r in rounds_of_tool]),
               "image_8_steps_whole_process_s": _median([r[high]["wall"] for r in rounds_of_tool]),
               "image_20_steps_whole_process_s": _median(image_20),
               "peak_rss_gb": _median([r[high]["peak_rss"] / 1e9 for r in rounds_of_tool]),
               "runs": rounds_of_tool}
    stages = [r[high] for r in rounds_of_tool if "text" in r[high]]
    if stages:  # sd_cli's, diffusers' and OpenVINO's children time their stages
        summary["stages_s"] = {"text_encode": _median([s["text"] for s in stages]),
                               "first_step": _median([s["steps"][0] for s in stages]),
                               "later_steps_median": _median([statistics.median(s["steps"][1:]) for s in stages]),
                               "decode": _median([s["decode"] for s in stages])}
    return summary


def _add_ratios(tools: dict) -> None:
    """Each tool over sd_cli eager, and over OpenVINO (the figure issue 22 is about), where measured."""
    for base_name in ("sd_cli", "openvino"):
        base = tools.get(base_name)
        if base is None:
            continue
        for summary in tools.values():
            ratios = {key: round(summary[key] / base[key], 3) for key in
                      ("s_per_step", "load_to_ready_s", "image_20_steps_whole_process_s", "peak_rss_gb")}
            for stage in ("later_steps_median", "decode", "text_encode"):  # where both time their stages
                if stage in summary.get("stages_s", {}) and stage in base.get("stages_s", {}):
                    ratios[f"stage_{stage}"] = round(summary["stages_s"][stage] / base["stages_s"][stage], 3)
            summary[f"ratio_to_{base_name}"] = ratios


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)
