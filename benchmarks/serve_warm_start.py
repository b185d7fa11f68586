"""Time to the first image: a fresh `sd-cli txt2img` (which loads the model) against the same job
sent to a running `sd-cli serve` with `--server` (which does not).

    python -m benchmarks.serve_warm_start                 # full-size random SD 1.5 (benchmarks/compare.py's), CPU
    python -m benchmarks.serve_warm_start --tiny --steps 2   # sd_cli's built-in model: a quick check

Every figure is a whole command, from process start to the PNG written, in fresh processes:
- cold: `sd-cli txt2img ... --ckpt C -o cold.png`;
- server start: `sd-cli serve --ckpt C` until it answers (it loads the model before listening), paid once;
- warm: `sd-cli txt2img ... --server URL -o warm.png` (the same command with --server) and the same job
  as one HTTP request, each repeated; the warm figures should carry no load at all.
It also checks that the warm image has the cold one's pixels.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> None:
    args = _parse(argv)
    ckpt = _checkpoint(args)
    job = ["a lighthouse at dusk", "--seed", "1", "--steps", str(args.steps), "--W", str(args.size),
           "--H", str(args.size), "--device", "cpu", "-q"] if not args.tiny else \
          ["a lighthouse at dusk", "--seed", "1", "--steps", str(args.steps), "-q"]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        cold = [_timed_cli([*job, "--ckpt", str(ckpt), "-o", str(out / "cold.png")]) for _ in range(args.repeats)]
        port = _free_port()
        started = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "sd_cli", "serve", "--ckpt", str(ckpt), "--port", str(port),
                                   "--models-dir", str(ckpt.parent), "--device", "cpu", "-q"], cwd=ROOT, env=_env())
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for(url, server)
            server_start = time.perf_counter() - started
            job_remote = [a for a in job if a not in ("--device", "cpu")]
            warm = [_timed_cli([*job_remote, "--ckpt", str(ckpt), "-o", str(out / "warm.png"), "--server", url])
                    for _ in range(args.repeats)]
            http = [_timed_http(url, ckpt, args) for _ in range(args.repeats)]
        finally:
            server.terminate()
            server.wait(timeout=30)
        same = np.array_equal(np.asarray(Image.open(out / "cold.png")), np.asarray(Image.open(out / "warm.png")))
    report = {"checkpoint": str(ckpt), "steps": args.steps, "size": None if args.tiny else args.size,
              "cold_cli_s": _median(cold), "server_start_s": round(server_start, 2),
              "warm_cli_with_server_s": _median(warm), "warm_http_request_s": _median(http),
              "runs": {"cold": cold, "warm_cli": warm, "warm_http": http}, "same_pixels": bool(same)}
    print(json.dumps(report, indent=2))


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_warm_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, help="checkpoint to time (default: full-size random SD 1.5, fp16 safetensors)")
    parser.add_argument("--tiny", action="store_true", help="use sd_cli's built-in model at its native size")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    return parser.parse_args(argv)


def _checkpoint(args) -> Path:
    if args.ckpt is not None:
        return args.ckpt.resolve()
    if args.tiny:
        from sd_cli.loading.packaged import builtin_checkpoint

        return builtin_checkpoint()
    from benchmarks.compare import full_size_checkpoints

    return full_size_checkpoints()[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _timed_cli(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sd_cli", "txt2img", *args], cwd=ROOT, env=_env(), check=True,
                   stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - started, 3)


def _timed_http(url: str, ckpt: Path, args) -> float:
    body = {"prompt": "a lighthouse at dusk", "seed": 1, "steps": args.steps, "sampler_name": "DDIM",
            "cfg_scale": 7.5, "override_settings": {"sd_model_checkpoint": ckpt.name}}
    if not args.tiny:
        body.update(width=args.size, height=args.size)
    request = urllib.request.Request(url + "/sdapi/v1/txt2img", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=3600) as answer:
        base64.b64decode(json.loads(answer.read())["images"][0])
    return round(time.perf_counter() - started, 3)


def _wait_for(url: str, server: subprocess.Popen) -> None:
    while server.poll() is None:
        try:
            urllib.request.urlopen(url + "/", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the server exited with code {server.returncode}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


if __name__ == "__main__":
    main()
