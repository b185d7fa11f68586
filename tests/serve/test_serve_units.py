"""The parts of `sd-cli serve` that need no render: flags, auth, the queue, names, limits."""

import base64
import threading
from concurrent.futures import Future

import pytest

from sd_cli.errors import UsageError
from sd_cli.serve.settings import Limits, Settings, check_exposure, parse_credentials


def test_loopback_needs_no_auth_and_other_hosts_do():
    check_exposure("127.0.0.1", {}, no_auth=False)
    check_exposure("::1", {}, no_auth=False)
    check_exposure("0.0.0.0", {"me": "pw"}, no_auth=False)
    check_exposure("0.0.0.0", {}, no_auth=True)
    with pytest.raises(UsageError, match="--host 0.0.0.0 is reachable beyond this machine: add --api-auth"):
        check_exposure("0.0.0.0", {}, no_auth=False)
    with pytest.raises(UsageError, match="beyond this machine"):
        check_exposure("myhost.lan", {}, no_auth=False)


def test_credentials_are_user_password_pairs():
    assert parse_credentials(["a:1,b:2:3", "c:4"]) == {"a": "1", "b": "2:3", "c": "4"}
    with pytest.raises(UsageError, match="'a' is not USER:PASSWORD"):
        parse_credentials(["a"])


def test_serve_refuses_an_open_host_with_exit_2(capsys):
    from sd_cli.cli.app import main

    with pytest.raises(SystemExit) as done:
        main(["serve", "--host", "0.0.0.0"])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --host 0.0.0.0 is reachable beyond this machine: add --api-auth USER:PASSWORD, "
        "or --no-auth to serve it to anyone who can reach it"]


def test_missing_server_packages_name_the_extra(monkeypatch, capsys):
    import builtins

    from sd_cli.cli.app import main

    real_import = builtins.__import__

    def without_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError("No module named 'uvicorn'", name="uvicorn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_uvicorn)
    with pytest.raises(SystemExit) as done:
        main(["serve"])
    assert done.value.code == 1
    assert capsys.readouterr().err.strip() == ('error: sd-cli serve needs uvicorn, which is not installed: '
                                               'pip install "sd-cli[serve]"')


def test_the_queue_runs_in_order_and_refuses_past_its_length():
    from sd_cli.serve.worker import QueueFull, Worker

    worker, release, order = Worker(max_queue=2), threading.Event(), []
    first = worker.submit(lambda state: release.wait(10) and order.append(1))
    while not first.running():
        pass
    waiting = [worker.submit(lambda state, n=n: order.append(n)) for n in (2, 3)]
    with pytest.raises(QueueFull):
        worker.submit(lambda state: order.append(4))
    release.set()
    for future in [first, *waiting]:
        future.result(timeout=10)
    assert order == [1, 2, 3]


def test_interrupt_stops_the_running_work_at_its_next_step():
    from sd_cli.serve.worker import Interrupted, Worker

    worker, started = Worker(max_queue=1), threading.Event()

    def steps(state):
        state.begin("txt2img", 1)
        started.set()
        for done in range(1, 10**6):
            state.step(done, 10**6)

    future: Future = worker.submit(steps)
    started.wait(10)
    worker.state.interrupt()
    with pytest.raises(Interrupted):
        future.result(timeout=10)
    assert worker.state.progress()["state"]["job_count"] == 0


def test_progress_is_automatic1111s_fraction():
    from sd_cli.serve.worker import RenderState

    state = RenderState()
    state.begin("txt2img", 4)
    state.next_batch(1)
    state.step(5, 10)
    assert state.progress()["progress"] == pytest.approx(0.01 + 1 / 4 + 0.5 / 4)
    assert state.progress()["state"]["job_count"] == 4


def test_checkpoints_are_found_by_listed_name_only(tmp_path):
    from sd_cli.serve.models import ModelCatalogue, UnknownModel

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.safetensors").write_bytes(b"x")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "style.safetensors").write_bytes(b"x")
    catalogue = ModelCatalogue(Settings(model_dirs=(tmp_path,), lora_dir=tmp_path / "lora"))
    assert [c.title for c in catalogue.all()] == ["sd-cli-tiny.safetensors", "sub/mine.safetensors"]
    assert catalogue.find("sub/mine.safetensors [0123abcd]").path == tmp_path / "sub" / "mine.safetensors"
    assert catalogue.find("mine").title == "sub/mine.safetensors"
    for name in ("../sub/mine.safetensors", str(tmp_path / "sub" / "mine.safetensors"), "lora/style.safetensors"):
        with pytest.raises(UnknownModel, match="no checkpoint named"):
            catalogue.find(name)


def _client(**settings):
    from fastapi.testclient import TestClient

    from sd_cli.serve.app import create_app

    return TestClient(create_app(Settings(**settings)))


def test_missing_or_wrong_auth_is_401_without_detail():
    client = _client(credentials={"me": "secret"})
    for auth in (None, ("me", "wrong"), ("you", "secret")):
        answer = client.get("/sdapi/v1/options", auth=auth)
        assert (answer.status_code, answer.json()) == (401, {"error": "Unauthorized", "detail": ""})
        assert answer.headers["www-authenticate"] == "Basic"
    assert client.get("/sdapi/v1/options", auth=("me", "secret")).status_code == 200


def test_a_chunked_body_past_the_limit_is_413():
    client = _client(limits=Limits(max_body_bytes=1024))
    answer = client.post("/sdapi/v1/txt2img", content=iter([b'{"prompt": "', b"x" * 2048, b'"}']),
                         headers={"content-type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"] == "Request Entity Too Large"


def test_unhonoured_fields_are_named():
    from sd_cli.serve.schemas import Img2ImgRequest, Txt2ImgRequest
    from sd_cli.serve.refusal import Refused
    from sd_cli.serve.translate import plan

    with pytest.raises(Refused, match="cannot honour tiling, styles, override_settings.sd_vae_overrides"):
        plan(Txt2ImgRequest(tiling=True, styles=["s"], override_settings={"sd_vae_overrides": 1}), Limits())
    with pytest.raises(Refused, match="eta 0.5: sd_cli runs Euler a with η = 1"):
        plan(Txt2ImgRequest(sampler_name="Euler a", eta=0.5), Limits())
    image = base64.b64encode(_png((128, 128))).decode()
    with pytest.raises(Refused, match="inpainting_fill .*inpaint_full_res"):
        plan(Img2ImgRequest(init_images=[image], mask=image, inpainting_fill=0, inpaint_full_res=True), Limits())


def test_translation_uses_automatic1111s_defaults():
    from sd_cli.serve.schemas import Txt2ImgRequest
    from sd_cli.serve.translate import plan

    planned = plan(Txt2ImgRequest(prompt="p", seed=9, enable_hr=True, hr_scale=1.5,
                                  override_settings={"CLIP_stop_at_last_layers": 2}), Limits())
    assert planned.values == {"prompt": "p", "negative_prompt": "", "steps": 50, "scale": 7.0, "seed": 9,
                              "sampler": "euler"}
    assert (planned.clip_skip, planned.hires.scale, planned.hires.strength, planned.hires.upscaler) == (2, 1.5, 0.7, "latent")


def _png(size) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_skip_drops_the_current_batch_only():
    from sd_cli.serve.worker import RenderState, Skipped

    state = RenderState()
    state.start_work()
    state.begin("txt2img", 2)
    state.skip()
    with pytest.raises(Skipped):
        state.step(1, 10)
    state.next_batch(1)
    state.step(1, 10)  # the next batch runs
    assert state.progress()["state"]["sampling_step"] == 1


def test_posting_back_the_options_read_loads_nothing():
    client = _client()
    answer = client.post("/sdapi/v1/options", json=client.get("/sdapi/v1/options").json())
    assert answer.status_code == 200
    assert client.app.state.server.cache.loaded() == []


def test_malformed_json_says_so_and_head_answers():
    client = _client()
    answer = client.post("/sdapi/v1/txt2img", content=b'{"prompt": "x",', headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("the body is not valid JSON (")
    assert client.head("/").status_code == 200
    assert client.get("/").json()["api"] == "/sdapi/v1"


def test_serve_help_imports_neither_torch_nor_the_server_packages():
    import subprocess
    import sys
    from pathlib import Path

    probe = ("import sys, io, contextlib\nfrom sd_cli.cli.app import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n    main(['serve', '--help'])\n"
             "print('torch' in sys.modules, 'fastapi' in sys.modules, 'uvicorn' in sys.modules)\n")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False False"


def test_img2img_resizes_only_with_just_resize():
    import io

    from PIL import Image

    from sd_cli.serve.refusal import Refused
    from sd_cli.serve.schemas import Img2ImgRequest
    from sd_cli.serve.translate import plan

    image = base64.b64encode(_png((64, 64))).decode()
    planned = plan(Img2ImgRequest(init_images=[image], width=128, height=192), Limits())
    assert Image.open(io.BytesIO(planned.init_image)).size == (128, 192)
    assert planned.mode == "img2img" and planned.values["strength"] == 0.75
    assert plan(Img2ImgRequest(init_images=[image]), Limits()).init_image == base64.b64decode(image)
    with pytest.raises(Refused, match="resize_mode 1: sd_cli resizes with 0"):
        plan(Img2ImgRequest(init_images=[image], width=128, height=128, resize_mode=1), Limits())


def test_server_url_credentials_become_basic_auth():
    from sd_cli.serve.client import _Connection

    connection = _Connection("http://me:p%40ss@127.0.0.1:7860/")
    assert connection.base == "http://127.0.0.1:7860"
    assert connection.auth == "Basic " + base64.b64encode(b"me:p@ss").decode()
    assert _Connection("127.0.0.1:7860").base == "http://127.0.0.1:7860"
    with pytest.raises(UsageError, match="is not an http"):
        _Connection("ftp://host/")


def test_a_full_queue_is_429_and_the_server_keeps_serving():
    client = _client(limits=Limits(max_queue=1))
    worker, release = client.app.state.server.worker, threading.Event()
    running = worker.submit(lambda state: release.wait(10))
    while not running.running():
        pass
    waiting = worker.submit(lambda state: None)
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x"})
    assert (answer.status_code, answer.json()) == (429, {"error": "Too Many Requests",
                                                         "detail": "the render queue is full; retry later"})
    release.set()
    waiting.result(timeout=10)
    assert client.get("/sdapi/v1/progress").status_code == 200


def test_a_checkpoint_that_fails_to_load_is_a_500_with_its_message(tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    client = _client(model_dirs=(tmp_path,))
    answer = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "broken"})
    assert answer.status_code == 500 and set(answer.json()) == {"error", "detail"}
    assert "broken.safetensors" in answer.json()["detail"] and "Traceback" not in answer.text
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "sd-cli-tiny.safetensors"


def test_a_port_in_use_is_one_line_before_any_load():
    import socket

    from sd_cli.errors import SdCliError
    from sd_cli.serve.command import check_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SdCliError, match=rf"cannot listen on 127.0.0.1:{port} \(.*\); stop what uses it"):
            check_port_free("127.0.0.1", port)
