"""A real `sd-cli serve` on a free loopback port (uvicorn in a thread), with the built-in model."""

import shutil
import socket
import threading
import time
from dataclasses import replace

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RunningServer:
    def __init__(self, settings):
        import uvicorn

        from sd_cli.serve.app import create_app

        self.settings = replace(settings, port=free_port())
        self.app = create_app(self.settings)
        self.url = f"http://127.0.0.1:{self.settings.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.settings.port, log_level="warning")
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.uvicorn.started:
                return
            time.sleep(0.05)
        raise RuntimeError("the test server did not start")

    def client(self, **kwargs) -> "httpx.Client":
        return httpx.Client(base_url=self.url, timeout=300, **kwargs)

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A model folder with a second name for the built-in model (and its config beside it)."""
    from sd_cli.loading.packaged import builtin_checkpoint

    folder = tmp_path_factory.mktemp("models")
    builtin = builtin_checkpoint()
    shutil.copy(builtin, folder / "other.safetensors")
    shutil.copy(builtin.parent / "configs" / "sd-cli-tiny.yaml", folder / "other.yaml")
    (folder / "lora").mkdir()
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    from sd_cli.serve.settings import Limits, Settings

    limits = Limits(max_body_bytes=2 * 1024 * 1024, max_image_pixels=1024 * 1024, max_pixels=512 * 512)
    running = RunningServer(Settings(model_dirs=(models_dir,), lora_dir=models_dir / "lora",
                                     outdir=tmp_path_factory.mktemp("serve-out"), limits=limits))
    yield running
    running.stop()
