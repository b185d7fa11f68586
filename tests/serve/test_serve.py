"""`sd-cli serve` driven over HTTP as its real clients drive it: SillyTavern's and Open WebUI's
request shapes, the webuiapi package, and bad input; pixels checked against a CLI run."""

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd_cli.files.infotext import parse_infotext

REPO = Path(__file__).resolve().parents[2]
SMALL = {"width": 128, "height": 128, "steps": 3}


def png_of(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def txt2img(client, **body):
    answer = client.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    return data, json.loads(data["info"])


def cli_txt2img(tmp_path, *args) -> Image.Image:
    out = tmp_path / "cli.png"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "sd_cli", "txt2img", *map(str, args), "-o", str(out), "-q"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    image = Image.open(out)
    image.load()
    return image


def test_txt2img_gives_the_cli_image_and_parameters(server, tmp_path):
    with server.client() as client:
        data, info = txt2img(client, prompt="a red circle", negative_prompt="blurry", seed=7,
                             sampler_name="Euler a", cfg_scale=6.5)
    served = png_of(data["images"][0])
    local = cli_txt2img(tmp_path, "a red circle", "-n", "blurry", "--seed", 7, "--sampler", "Euler a", "--scale", 6.5,
                        "--steps", 3, "--W", 128, "--H", 128)
    assert np.array_equal(np.asarray(served), np.asarray(local))
    assert served.info["parameters"] == local.info["parameters"]
    assert info["infotexts"] == [served.info["parameters"]]
    assert (info["seed"], info["all_seeds"], info["sampler_name"], info["steps"]) == (7, [7], "Euler a", 3)
    assert (info["width"], info["height"], info["cfg_scale"]) == (128, 128, 6.5)
    assert data["parameters"]["prompt"] == "a red circle"


def test_sillytavern_flow(server):
    """Set the model by POST options, read the lists, render with SillyTavern's body, poll progress."""
    with server.client() as client:
        titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
        assert titles == ["sd-cli-tiny.safetensors", "other.safetensors"]
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "other.safetensors"}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "other.safetensors"
        assert "Euler a" in [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
        body = {"prompt": "a cat", "negative_prompt": "", "sampler_name": "DPM++ 2M", "scheduler": "Karras",
                "steps": 3, "cfg_scale": 7, "width": 128, "height": 128, "restore_faces": False, "enable_hr": False,
                "hr_upscaler": "Latent", "hr_scale": 2, "denoising_strength": 0.7, "hr_second_pass_steps": 0,
                "seed": -1, "override_settings": {"CLIP_stop_at_last_layers": 1},
                "override_settings_restore_afterwards": True, "save_images": True, "send_images": True,
                "do_not_save_grid": False, "do_not_save_samples": False, "n_iter": 1, "s_churn": 0.0,
                "s_min_uncond": 0.0, "s_noise": 1.0, "s_tmax": None, "s_tmin": 0.0,
                "url": server.url, "auth": ""}  # SillyTavern's server forwards its own url and auth too
        data, info = txt2img(client, **body)
        assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
        client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd-cli-tiny.safetensors"})
    fields = parse_infotext(png_of(data["images"][0]).info["parameters"])[2]
    assert (fields["Model"], fields["Sampler"], fields["Seed"]) == ("other", "DPM++ 2M Karras", str(info["seed"]))
    assert info["sd_model_name"] == "other"


def test_open_webui_flow(server):
    """Open WebUI: read the options, post them back with another sd_model_checkpoint, render its body."""
    with server.client() as client:
        options = client.get("/sdapi/v1/options").json()
        options["sd_model_checkpoint"] = "other.safetensors"
        assert client.post("/sdapi/v1/options", json=options, headers={"authorization": ""}).status_code == 200
        answer = client.post("/sdapi/v1/txt2img", json={"prompt": "a boat", "batch_size": 2, "width": 128,
                                                        "height": 128, "steps": 2, "negative_prompt": "fog"})
        options["sd_model_checkpoint"] = "sd-cli-tiny.safetensors"
        client.post("/sdapi/v1/options", json=options)
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert len(answer.json()["images"]) == 2 and info["all_seeds"] == [info["seed"], info["seed"] + 1]
    assert (info["sd_model_name"], info["negative_prompt"], info["sampler_name"]) == ("other", "fog", "Euler")


def test_batches_and_iterations_count_seeds_up(server):
    with server.client() as client:
        data, info = txt2img(client, prompt="a dog", batch_size=2, n_iter=2, seed=100)
    assert len(data["images"]) == 4
    assert info["all_seeds"] == [100, 101, 102, 103]
    seeds = [parse_infotext(png_of(b).info["parameters"])[2]["Seed"] for b in data["images"]]
    assert seeds == ["100", "101", "102", "103"]


def test_interrupt_returns_the_finished_images(server):
    with server.client() as client, server.client() as poller:
        answer = {}
        request = threading.Thread(target=lambda: answer.update(r=client.post(
            "/sdapi/v1/txt2img", json={**SMALL, "prompt": "x", "steps": 40, "n_iter": 3, "seed": 1})))
        request.start()
        for _ in range(600):
            state = poller.get("/sdapi/v1/progress").json()["state"]
            if state["job_no"] >= 1 and state["sampling_step"] >= 1:
                break
            time.sleep(0.05)
        assert poller.post("/sdapi/v1/interrupt").status_code == 200
        request.join(timeout=300)
        assert poller.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    info = json.loads(answer["r"].json()["info"])
    assert answer["r"].status_code == 200 and info["interrupted"] is True
    assert len(answer["r"].json()["images"]) == 1 and info["all_seeds"] == [1]


def test_webuiapi_client(server):
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.settings.port, sampler="Euler a", steps=3)
    result = api.txt2img(prompt="a red circle", seed=11, width=128, height=128, cfg_scale=7)
    with server.client() as client:
        data, _ = txt2img(client, prompt="a red circle", seed=11, sampler_name="Euler a", cfg_scale=7)
    assert np.array_equal(np.asarray(result.image.convert("RGB")), np.asarray(png_of(data["images"][0]).convert("RGB")))
    assert result.info["all_seeds"] == [11]
    assert "DDIM" in [s["name"] for s in api.get_samplers()]
    assert api.png_info(result.image).info.startswith("a red circle\n")


def test_img2img_gives_the_cli_image(server, tmp_path):
    with server.client() as client:
        data, _ = txt2img(client, prompt="start", seed=3)
        init = tmp_path / "init.png"
        init.write_bytes(base64.b64decode(data["images"][0]))
        answer = client.post("/sdapi/v1/img2img", json={"prompt": "changed", "init_images": [data["images"][0]],
                                                         "denoising_strength": 0.5, "seed": 4, "steps": 4,
                                                         "sampler_name": "DDIM", "cfg_scale": 7.5})
    assert answer.status_code == 200, answer.text
    served = png_of(answer.json()["images"][0])
    out = tmp_path / "cli.png"
    done = subprocess.run([sys.executable, "-m", "sd_cli", "img2img", "changed", "--init-img", init, "--strength", "0.5",
                           "--seed", "4", "--steps", "4", "--sampler", "ddim", "-o", out, "-q"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(served), np.asarray(Image.open(out)))


def _b64_png(size) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


BAD_REQUESTS = [
    ("malformed JSON", "/sdapi/v1/txt2img", b'{"prompt": "x",', 422),
    ("wrong type", "/sdapi/v1/txt2img", {"prompt": "x", "steps": "many"}, 422),
    ("negative size", "/sdapi/v1/txt2img", {"prompt": "x", "width": -128, "height": 128}, 422),
    ("past the pixel limit", "/sdapi/v1/txt2img", {"prompt": "x", "width": 19968, "height": 19968}, 422),
    ("20000x20000", "/sdapi/v1/txt2img", {"prompt": "x", "width": 20000, "height": 20000}, 422),
    ("too many steps", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 100000}, 422),
    ("unknown sampler", "/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "Warp 9"}, 422),
    ("unhonoured field", "/sdapi/v1/txt2img", {"prompt": "x", "restore_faces": True}, 422),
    ("checkpoint path", "/sdapi/v1/options", {"sd_model_checkpoint": "../other.safetensors"}, 404),
    ("absolute checkpoint", "/sdapi/v1/options", {"sd_model_checkpoint": "/etc/passwd"}, 404),
    ("checkpoint in override", "/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "../../x"}}, 404),
    ("lora path", "/sdapi/v1/txt2img", {"prompt": "x <lora:../../secret:1>"}, 422),
    ("oversized body", "/sdapi/v1/img2img", {"prompt": "x", "init_images": ["A" * (3 * 1024 * 1024)]}, 413),
    ("image past the pixel limit", "/sdapi/v1/img2img", {"prompt": "x", "init_images": [_b64_png((2048, 1024))]}, 413),
    ("not an image", "/sdapi/v1/img2img", {"prompt": "x", "init_images": [base64.b64encode(b"hello").decode()]}, 422),
    ("no init image", "/sdapi/v1/img2img", {"prompt": "x"}, 422),
]


@pytest.mark.parametrize("path, body, status", [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_is_a_json_4xx_and_the_server_keeps_serving(server, path, body, status):
    with server.client() as client:
        if isinstance(body, bytes):
            answer = client.post(path, content=body, headers={"content-type": "application/json"})
        else:
            answer = client.post(path, json=body)
        assert answer.status_code == status, answer.text
        error = answer.json()
        assert set(error) == {"error", "detail"} and "Traceback" not in answer.text
        assert client.get("/").status_code == 200


def test_concurrent_clients_lose_and_duplicate_nothing(server):
    """8 clients x 5 requests at once: every answer carries the image of its own request."""
    def client_requests(number: int) -> list[tuple[int, str]]:
        with server.client() as client:
            got = []
            for k in range(5):
                seed = 1000 + 10 * number + k
                data, info = txt2img(client, prompt=f"client {number}", seed=seed, steps=1, width=64, height=64)
                recorded = parse_infotext(png_of(data["images"][0]).info["parameters"])
                got.append((seed, recorded[2]["Seed"], recorded[0]))
            return got

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client_requests, range(8)))
    for number, result in enumerate(results):
        assert result == [(1000 + 10 * number + k, str(1000 + 10 * number + k), f"client {number}") for k in range(5)]


def test_save_images_writes_inside_the_outdir_only(server):
    before = set(server.settings.outdir.rglob("*"))
    with server.client() as client:
        txt2img(client, prompt="kept", seed=5, save_images=True)
    written = [p for p in server.settings.outdir.rglob("*") if p not in before and p.is_file()]
    assert len(written) == 1 and written[0].parent == server.settings.outdir / "txt2img-images" / "samples"
    assert parse_infotext(Image.open(written[0]).info["parameters"])[2]["Seed"] == "5"
    assert [p.name for p in server.settings.outdir.iterdir() if p.name.startswith(".")] == []


def test_a_client_that_goes_away_cancels_its_render(server):
    import httpx

    samples = server.settings.outdir / "txt2img-images" / "samples"
    before = set(samples.glob("*.png"))
    with pytest.raises(httpx.ReadTimeout):
        with httpx.Client(base_url=server.url, timeout=httpx.Timeout(5.0, read=1.0)) as leaving:
            leaving.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "x", "steps": 150, "n_iter": 16,
                                                    "save_images": True})
    with server.client() as client:
        data, info = txt2img(client, prompt="after", seed=2)  # queued behind the cancelled render
    assert info["all_seeds"] == [2]
    assert len(set(samples.glob("*.png")) - before) < 16


def _files(folder: Path) -> dict:
    """{relative path: (pixels, parameters)} of every PNG under a folder."""
    found = {}
    for path in sorted(folder.rglob("*.png")):
        with Image.open(path) as image:
            found[path.relative_to(folder).as_posix()] = (np.asarray(image).tobytes(), image.info.get("parameters"))
    return found


def test_cli_with_server_writes_the_files_of_a_local_run(server, run_cli, tmp_path):
    args = ["txt2img", "a red circle", "--seed", 21, "--steps", 3, "--W", 128, "--H", 128, "--n-samples", 2,
            "--n-iter", 2, "--sampler", "euler", "--json"]
    local = run_cli(*args, "--outdir", tmp_path / "local")
    remote = run_cli(*args, "--outdir", tmp_path / "remote", "--server", server.url)
    assert (local.code, remote.code) == (0, 0), remote.stderr
    assert _files(tmp_path / "remote") == _files(tmp_path / "local")
    assert sorted(_files(tmp_path / "local")) == ["grid-0000.png", "samples/00000.png", "samples/00001.png",
                                                  "samples/00002.png", "samples/00003.png"]

    def records(out: str, folder: Path) -> list:
        rows = [json.loads(line) for line in out.splitlines()]
        return [{**row, "path": Path(row["path"]).relative_to(folder).as_posix(), "timings": None} for row in rows]

    assert records(remote.stdout, tmp_path / "remote") == records(local.stdout, tmp_path / "local")


def test_cli_with_server_from_the_environment_reports_a_refusal(server, run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SD_CLI_SERVER", server.url)
    done = run_cli("txt2img", "x", "--seed", 1, "--steps", 500, "-o", tmp_path / "x.png")
    assert done.code == 2 and not (tmp_path / "x.png").exists()
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: the server at {server.url} answered 422: steps 500 is past this server's limit of 150")


def test_cli_with_an_unreachable_server_is_one_line(run_cli, tmp_path):
    from conftest import free_port  # tests/serve/conftest.py

    url = f"http://127.0.0.1:{free_port()}"
    done = run_cli("txt2img", "x", "--seed", 1, "-o", tmp_path / "x.png", "--server", url)
    assert done.code == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach the server at {url} (") and last.endswith(
        "start it with `sd-cli serve` or check --server / SD_CLI_SERVER")


def test_cli_with_server_refuses_what_the_server_cannot_be_told(run_cli, tmp_path):
    done = run_cli("txt2img", "x", "--no-watermark", "--vae-tiling", "-o", tmp_path / "x.png",
                   "--server", "http://127.0.0.1:9")
    assert done.code == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --vae-tiling, --no-watermark: the server renders with its own settings and cannot be told this; "
        "drop it or run locally (drop --server)")


def test_hires_fix_gives_the_cli_image(server, tmp_path):
    with server.client() as client:
        data, info = txt2img(client, prompt="a tower", seed=8, width=64, height=64, steps=2, sampler_name="DDIM",
                             cfg_scale=7.5, enable_hr=True, hr_scale=2, hr_second_pass_steps=2, denoising_strength=0.6,
                             hr_upscaler="Latent (nearest)")
    served = png_of(data["images"][0])
    local = cli_txt2img(tmp_path, "a tower", "--seed", 8, "--W", 64, "--H", 64, "--steps", 2, "--hires-scale", 2,
                        "--hires-steps", 2, "--hires-strength", 0.6, "--hires-upscaler", "latent-nearest")
    assert served.size == (128, 128) and (info["width"], info["height"]) == (64, 64)
    assert np.array_equal(np.asarray(served), np.asarray(local))
    assert served.info["parameters"] == local.info["parameters"]


def test_inpaint_gives_the_cli_image(server, tmp_path):
    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(image)
    mask_pixels = np.zeros((128, 128), dtype=np.uint8)
    mask_pixels[32:96, 32:96] = 255
    Image.fromarray(mask_pixels).save(mask)
    encode = lambda path: base64.b64encode(path.read_bytes()).decode()  # noqa: E731
    with server.client() as client:
        answer = client.post("/sdapi/v1/img2img", json={
            "prompt": "a window", "init_images": [encode(image)], "mask": encode(mask), "mask_blur": 2,
            "inpainting_fill": 1, "inpaint_full_res": False, "denoising_strength": 0.8, "seed": 6, "steps": 3,
            "sampler_name": "DDIM", "cfg_scale": 7.5})
    assert answer.status_code == 200, answer.text
    served = png_of(answer.json()["images"][0])
    out = tmp_path / "cli.png"
    done = subprocess.run([sys.executable, "-m", "sd_cli", "inpaint", "a window", "--image", image, "--mask", mask,
                           "--mask-blur", "2", "--strength", "0.8", "--seed", "6", "--steps", "3", "-o", out, "-q"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(served), np.asarray(Image.open(out)))
    assert served.info["parameters"] == Image.open(out).info["parameters"]


def _text_encoder_lora(path: Path) -> None:
    """A kohya LoRA on the built-in model's first text-encoder MLP (enough to change the image)."""
    import torch
    from safetensors.torch import save_file

    from sd_cli.loading.loader import load_model
    from sd_cli.loading.packaged import builtin_checkpoint

    weight = dict(load_model(builtin_checkpoint()).model.named_parameters())[
        "cond_stage_model.transformer.resblocks.0.mlp.c_fc.weight"]
    g = torch.Generator().manual_seed(0)
    stem = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    save_file({f"{stem}.lora_down.weight": torch.randn(4, weight.shape[1], generator=g),
               f"{stem}.lora_up.weight": torch.randn(weight.shape[0], 4, generator=g),
               f"{stem}.alpha": torch.tensor(4.0)}, str(path))


def test_lora_in_the_prompt_gives_the_cli_image_and_is_undone_after(server, run_cli, tmp_path):
    lora_dir = server.settings.lora_dir
    _text_encoder_lora(lora_dir / "style.safetensors")
    with server.client() as client:
        plain_before, _ = txt2img(client, prompt="a house", seed=4)
        with_lora, _ = txt2img(client, prompt="a house <lora:style:0.8>", seed=4)
        plain_after, _ = txt2img(client, prompt="a house", seed=4)
        assert [entry["name"] for entry in client.get("/sdapi/v1/loras").json()] == ["style"]
    local = run_cli("txt2img", "a house <lora:style:0.8>", "--seed", 4, "--steps", 3, "--W", 128, "--H", 128,
                    "--sampler", "euler", "--scale", 7, "--lora-dir", lora_dir, "-o", tmp_path / "cli.png")
    assert local.code == 0, local.stderr
    served = png_of(with_lora["images"][0])
    assert np.array_equal(np.asarray(served), np.asarray(Image.open(tmp_path / "cli.png")))
    assert served.info["parameters"] == Image.open(tmp_path / "cli.png").info["parameters"]
    assert not np.array_equal(np.asarray(served), np.asarray(png_of(plain_before["images"][0])))
    assert plain_after["images"][0] == plain_before["images"][0]


def test_cli_img2img_with_server_writes_the_local_file(server, run_cli, tmp_path):
    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (128, 192, 3), dtype=np.uint8)).save(init)
    args = ["img2img", "a bridge", "--init-img", init, "--strength", 0.6, "--seed", 9, "--steps", 3, "--json"]
    local = run_cli(*args, "-o", tmp_path / "local.png")
    remote = run_cli(*args, "-o", tmp_path / "remote.png", "--server", server.url)
    assert (local.code, remote.code) == (0, 0), remote.stderr
    with Image.open(tmp_path / "local.png") as a, Image.open(tmp_path / "remote.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b)) and a.info["parameters"] == b.info["parameters"]
    drop_path = lambda out: {k: v for k, v in json.loads(out).items() if k not in ("path", "timings")}  # noqa: E731
    assert drop_path(remote.stdout) == drop_path(local.stdout)


def test_cli_inpaint_with_server_writes_the_local_file(server, run_cli, tmp_path):
    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(image)
    mask_pixels = np.zeros((128, 128), dtype=np.uint8)
    mask_pixels[:, 64:] = 255
    Image.fromarray(mask_pixels).save(mask)
    args = ["inpaint", "a door", "--image", image, "--mask", mask, "--invert-mask", "--mask-blur", 3, "--seed", 5,
            "--steps", 3]
    local = run_cli(*args, "-o", tmp_path / "local.png")
    remote = run_cli(*args, "-o", tmp_path / "remote.png", "--server", server.url)
    assert (local.code, remote.code) == (0, 0), remote.stderr
    with Image.open(tmp_path / "local.png") as a, Image.open(tmp_path / "remote.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b)) and a.info["parameters"] == b.info["parameters"]


def test_depth2img_renders_locally_when_only_the_environment_names_a_server(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SD_CLI_SERVER", "http://127.0.0.1:9")
    done = run_cli("depth2img", "x", "--init-img", tmp_path / "missing.png", "-o", tmp_path / "x.png")
    assert "SD_CLI_SERVER is set, but depth2img renders here" in done.stderr
    explicit = run_cli("depth2img", "x", "--init-img", tmp_path / "missing.png", "--server", "http://127.0.0.1:9")
    assert explicit.code == 2 and explicit.stderr.strip().splitlines()[-1] == (
        "error: --server renders txt2img, img2img, inpaint; run depth2img locally (drop --server)")
