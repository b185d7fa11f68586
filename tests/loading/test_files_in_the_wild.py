"""Checkpoint variants as they circulate, and the broken ones named for what they are.

Each file is a tiny checkpoint's state dict rewritten the way the variant differs: bf16 weights,
training leftovers, nesting, an EMA-only save, a wrapper's key prefix, another model family.
"""

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from sd_cli.errors import CheckpointError, UsageError
from sd_cli.loading.checkpoint import read_checkpoint
from sd_cli.loading.loader import load_model
from sd_cli.loading.locations import resolve_checkpoint
from sd_cli.sampling.schedule import alphas_cumprod
from tiny_models import tiny_config, tiny_state_dict

UNET_KEY = "model.diffusion_model.out.2.weight"


@pytest.fixture(scope="module")
def sd1():
    """(weights with EMA shadows, raw tiny config) of a tiny SD 1.x checkpoint."""
    return tiny_state_dict("sd1", ema=True)


def save(folder, stem, weights, config=None, fmt="safetensors", wrap=None):
    """Write <stem>.<fmt> (and <stem>.yaml beside it when a config is given); `wrap` shapes a .ckpt's dict."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.{fmt}"
    if fmt == "safetensors":
        save_file({key: value.contiguous() for key, value in weights.items()}, str(path))
    else:
        torch.save(wrap(weights) if wrap else {"state_dict": weights}, path)
    if config is not None:
        OmegaConf.save(OmegaConf.create(config), folder / f"{stem}.yaml")
    return path


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises((CheckpointError, UsageError)) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


# --- 1. bf16 files: the schedule comes from the config -------------------------------------------


def config_schedule(config: dict) -> torch.Tensor:
    params = config["model"]["params"]
    return alphas_cumprod(params["linear_start"], params["linear_end"], params["timesteps"])


@pytest.mark.parametrize("family, fmt", [("sd1", "safetensors"), ("sd2", "ckpt")])
def test_a_bf16_files_schedule_is_the_configs(tmp_path, family, fmt):
    weights, config = tiny_state_dict(family)
    bf16 = {key: value.bfloat16() if value.is_floating_point() else value for key, value in weights.items()}
    assert bf16["alphas_cumprod"][0] == 1.0  # what bf16 rounding does to ᾱ near t = 0
    model = load_model(save(tmp_path, "bf16", bf16, config, fmt)).model
    assert torch.equal(model.alphas_cumprod, config_schedule(config))


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m_karras", "ddim"])
def test_a_bf16_file_renders_in_fp32_and_bf16(tmp_path, sd1, sampler):
    from sd_cli.pipelines.txt2img import txt2img
    from sd_cli.sampling.denoising import SamplingParams

    weights, config = sd1
    bf16 = {key: value.bfloat16() if value.is_floating_point() else value for key, value in weights.items()}
    path = save(tmp_path, "bf16", bf16, config)
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(path, dtype=dtype).model
        images = txt2img(model, ["a"], [""], [3], SamplingParams(sampler=sampler, steps=3), 64, 64)
        assert torch.isfinite(images).all(), (sampler, dtype)


def test_an_fp16_files_schedule_is_used_as_stored(tmp_path, sd1):
    weights, config = sd1
    fp16 = {key: value.half() if value.is_floating_point() else value for key, value in weights.items()}
    model = load_model(save(tmp_path, "fp16", fp16, config)).model
    assert torch.equal(model.alphas_cumprod, fp16["alphas_cumprod"].float())
    assert not torch.equal(model.alphas_cumprod, config_schedule(config))


def test_a_schedule_that_is_not_the_configs_is_warned_about_and_replaced(tmp_path, sd1, capsys):
    weights, config = sd1
    other = dict(weights, alphas_cumprod=alphas_cumprod(0.0001, 0.02))  # the x4 upscaler's numbers
    model = load_model(save(tmp_path, "other", other, config)).model
    assert torch.equal(model.alphas_cumprod, config_schedule(config))
    err = capsys.readouterr().err
    assert "warning: other.safetensors: its noise schedule (alphas_cumprod) is not the one config" in err
    assert "linear_start 0.00085, linear_end 0.012, 1000 timesteps); using the config's" in err


def test_nan_advice_names_fp32_only_when_it_did_not_run_in_fp32():
    from types import SimpleNamespace

    from sd_cli.errors import NumericsError
    from sd_cli.models.latent_diffusion import LatentDiffusion

    nan = torch.full((1, 4, 2, 2), float("nan"))
    messages = {}
    for dtype in (torch.float32, torch.bfloat16):
        with pytest.raises(NumericsError) as err:
            LatentDiffusion.decode_latents(SimpleNamespace(dtype=dtype), nan)
        messages[dtype] = str(err.value)
    assert "--precision fp32" not in messages[torch.float32]
    assert "It ran in float32 already" in messages[torch.float32]
    assert "Try --precision fp32" in messages[torch.bfloat16]


# --- 2. training leftovers are skipped by name, counted once ------------------------------------


def test_training_loss_tensors_are_skipped_and_counted_once(tmp_path, sd1, capsys):
    weights, config = sd1
    junk = {"first_stage_model.loss.logvar": torch.zeros(()),
            "first_stage_model.loss.discriminator.main.0.weight": torch.ones(8, 3, 4, 4),
            "loss.logvar": torch.zeros(()), "loss.perceptual_loss.net.slice1.0.weight": torch.ones(4, 3, 3, 3)}
    model = load_model(save(tmp_path, "junk", dict(weights, **junk), config)).model
    assert torch.equal(model.state_dict()[UNET_KEY], weights[UNET_KEY])
    lines = [line for line in capsys.readouterr().err.splitlines() if "training-only" in line]
    assert lines == ["junk.safetensors: skipped 4 training-only tensors (the VAE's training loss, "
                     "first_stage_model.loss.* and loss.*); inference does not use them"]


def test_the_schedule_buffers_forks_persist_are_ignored(tmp_path, sd1):
    weights, config = sd1
    extra = {"lvlb_weights": torch.ones(1000), "logvar": torch.zeros(1000),
             "posterior_variance": torch.zeros(1000), "log_one_minus_alphas_cumprod": torch.zeros(1000)}
    model = load_model(save(tmp_path, "fork", dict(weights, **extra), config)).model
    assert torch.equal(model.state_dict()[UNET_KEY], weights[UNET_KEY])


def test_an_unknown_extra_tensor_is_still_refused(tmp_path, sd1):
    weights, config = sd1
    message = error_of(load_model, save(tmp_path, "extra", dict(weights, **{"lossy.w": torch.ones(1)}), config))
    assert "1 unexpected tensors: lossy.w" in message


# --- 3. nested state dicts -----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [2, 3])
def test_a_state_dict_nested_twice_or_more_is_unwrapped(tmp_path, depth):
    weights = {"model.diffusion_model.w": torch.arange(3.0)}
    saved = {"state_dict": weights, "global_step": 7}
    for _ in range(depth - 1):
        saved = {"state_dict": saved}
    path = tmp_path / "nested.ckpt"
    torch.save(saved, path)
    checkpoint = read_checkpoint(path)
    assert list(checkpoint.state_dict) == ["model.diffusion_model.w"] and checkpoint.global_step == 7


# --- 4. EMA-only files ---------------------------------------------------------------------------


def ema_only(weights: dict) -> dict:
    return {key: value for key, value in weights.items() if not key.startswith("model.diffusion_model.")}


def test_an_ema_only_file_runs_with_ema(tmp_path, sd1):
    weights, config = sd1
    path = save(tmp_path, "ema-only", ema_only(weights), config)
    model = load_model(path, use_ema=True).model
    assert torch.equal(model.state_dict()[UNET_KEY], weights["model_ema.diffusion_modelout2weight"])


def test_an_ema_only_file_is_detected_without_a_yaml(tmp_path):
    from sd_cli.loading.detection import detect_family

    weights, _ = tiny_state_dict("sd1-inpaint", ema=True)
    assert detect_family(ema_only(weights), "m").description == "SD 1.x inpainting"


def test_an_ema_only_file_without_ema_says_to_pass_it(tmp_path, sd1):
    weights, config = sd1
    message = error_of(load_model, save(tmp_path, "ema-only", ema_only(weights), config))
    assert message == ("ema-only.safetensors: holds only the EMA weights of the UNet (model_ema.*, no "
                       "model.diffusion_model.*); run it with --ema")


def test_ema_on_a_file_without_ema_weights(tmp_path):
    weights, config = tiny_state_dict("sd1")
    message = error_of(load_model, save(tmp_path, "plain", weights, config), use_ema=True)
    assert "--ema asked for EMA weights but the file has none" in message and "run without --ema" in message


# --- 5. a wrapper's key prefix -------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["module.", "model.", "_orig_mod.", "module.model."])
def test_a_uniform_wrapper_prefix_is_stripped(tmp_path, sd1, capsys, prefix):
    weights, config = sd1
    wrapped = {prefix + key: value for key, value in weights.items()}
    model = load_model(save(tmp_path, "wrapped", wrapped, config)).model
    assert torch.equal(model.state_dict()[UNET_KEY], weights[UNET_KEY])
    assert f"every key carries the wrapper prefix {prefix!r}" in capsys.readouterr().err


def test_a_unet_only_file_keeps_its_model_prefix():
    from sd_cli.loading.keys import wrapper_prefix

    assert wrapper_prefix(["model.diffusion_model.a", "model.diffusion_model.b"]) == ""
    assert wrapper_prefix(["model.model.diffusion_model.a", "model.first_stage_model.b"]) == "model."


def test_a_prefix_on_some_keys_is_named(tmp_path, sd1):
    weights, config = sd1
    partly = {("module." + key if key.startswith("model.diffusion_model.") else key): value
              for key, value in weights.items()}
    message = error_of(load_model, save(tmp_path, "partly", partly))
    assert message == ("partly.safetensors: its model.diffusion_model.* keys carry the prefix 'module.' and the "
                       "other keys do not, so no model can read them; save the file without that prefix")


# --- 6. a checkpoint of another family -----------------------------------------------------------


def test_sd1_weights_with_an_sd2_yaml_beside(tmp_path, sd1):
    weights, _ = sd1
    message = error_of(load_model, save(tmp_path, "sd1", weights, tiny_config("sd2")))
    assert message.startswith("sd1.safetensors holds SD 1.x weights, UNet with 4 input channels, but config ")
    assert ("is for SD 2.x (UNet with 4 input channels); the YAML named after the checkpoint is for another "
            "model: rename or remove sd1.yaml") in message
    assert "(sd_cli's own is v1-inference.yaml)" in message


def test_sd2_weights_with_an_sd1_config_flag(tmp_path):
    weights, config = tiny_state_dict("sd2")
    OmegaConf.save(OmegaConf.create(tiny_config("sd1")), tmp_path / "v1.yaml")
    message = error_of(load_model, save(tmp_path, "sd2", weights), tmp_path / "v1.yaml")
    assert message.startswith("sd2.safetensors holds SD 2.x weights, UNet with 4 input channels, but config ")
    assert "is for SD 1.x (UNet with 4 input channels); drop --config" in message


def test_inpainting_weights_with_an_ordinary_yaml(tmp_path):
    weights, _ = tiny_state_dict("sd1-inpaint")
    message = error_of(load_model, save(tmp_path, "inpaint", weights, tiny_config("sd1")))
    assert "holds SD 1.x inpainting weights, UNet with 9 input channels, but config" in message
    assert "is for SD 1.x (UNet with 4 input channels)" in message
    assert "(sd_cli's own is v1-inpainting-inference.yaml)" in message


@pytest.mark.parametrize("keys, expected", [
    ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (6, 2)}, "is a Stable Diffusion 3 checkpoint"),
    ({"double_blocks.0.img_attn.qkv.weight": (6, 2)}, "is a Flux checkpoint"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 8)}, "is a LoRA, not a checkpoint"),
    ({"encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_in.weight": (8, 4, 3, 3)}, "is a VAE file"),
    ({"emb_params": (2, 8)}, "is a textual-inversion embedding"),
])
def test_a_file_of_another_kind_is_named_for_what_it_is(tmp_path, keys, expected):
    weights = {key: torch.zeros(shape) for key, shape in keys.items()}
    config = tmp_path / "v1.yaml"
    OmegaConf.save(OmegaConf.create(tiny_config("sd1")), config)
    for config_path in (None, config):  # with a YAML or without, the file's kind is what the error names
        message = error_of(load_model, save(tmp_path, "other", weights), config_path)
        assert message.startswith("other.safetensors: " + expected), message


def test_a_unet_only_file_is_not_sent_to_look_for_a_yaml(tmp_path, sd1):
    weights, config = sd1
    unet = {key: value for key, value in weights.items() if key.startswith("model.diffusion_model.")}
    assert error_of(load_model, save(tmp_path, "unet", unet)) == (
        "unet.safetensors: holds a UNet but no text encoder (no cond_stage_model.* or conditioner.embedders.* token "
        "embedding), so it is not "
        "a whole Stable Diffusion checkpoint; pass the full checkpoint")
    OmegaConf.save(OmegaConf.create(config), tmp_path / "v1.yaml")
    assert "has no text encoder weights" in error_of(load_model, tmp_path / "unet.safetensors", tmp_path / "v1.yaml")


# --- 7. directories ------------------------------------------------------------------------------


def test_a_diffusers_folder_is_named_as_one(tmp_path):
    folder = tmp_path / "stable-diffusion-v1-5"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    for call in (resolve_checkpoint, read_checkpoint):
        message = error_of(call, folder)
        assert message.startswith(f"{folder}: is a diffusers folder (model_index.json), not a single-file checkpoint")
        assert "convert_diffusers_to_original_stable_diffusion.py" in message


def test_a_diffusers_component_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    assert error_of(read_checkpoint, tmp_path) == (
        f"{tmp_path}: is one component of a diffusers folder (config.json, diffusion_pytorch_model.safetensors), "
        f"not a checkpoint file; --vae takes {weights} itself, --ckpt a whole single-file checkpoint")


def test_a_folder_of_checkpoints_names_one_of_them(tmp_path):
    (tmp_path / "b.safetensors").write_bytes(b"")
    (tmp_path / "a.ckpt").write_bytes(b"")
    message = error_of(resolve_checkpoint, tmp_path)
    assert message == (f"{tmp_path}: is a directory; give the path of a checkpoint file in it, "
                       f"e.g. {tmp_path / 'a.ckpt'} (and 1 more)")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_of(resolve_checkpoint, empty).endswith("is a directory, not a checkpoint file; give the path of a "
                                                        ".ckpt or .safetensors file")


# --- 8. the content decides, not the suffix ------------------------------------------------------

LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 4265380512\n"
HTML = b"<!DOCTYPE html><html><body>Sign in</body></html>"
JSON_ERROR = b'{"error": "Unauthorized", "status": 401}'


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt", ".pt", ".bin"])
@pytest.mark.parametrize("data, expected", [(LFS, "is a Git LFS pointer, not the weights; run `git lfs pull`"),
                                            (HTML, "is a web page, not a checkpoint"),
                                            (JSON_ERROR, "is a text file, not a checkpoint")])
def test_pointer_page_or_text_is_named_whatever_the_suffix(tmp_path, suffix, data, expected):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(data)
    assert error_of(read_checkpoint, path).startswith(f"{path}: {expected}")


@pytest.mark.parametrize("data, expected", [
    (b"\xef\xbb\xbf<!doctype html><title>404</title>", "is a web page"),  # behind a byte-order mark
    ("Fehler: Zugriff verweigert. Bitte melden Sie sich an, um die Datei zu laden.".encode(), "is a text file"),
    ("ошибка доступа: войдите в систему".encode(), "is a text file"),  # UTF-8 beyond ASCII
])
def test_text_in_other_shapes_is_named(tmp_path, data, expected):
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    assert error_of(read_checkpoint, path).startswith(f"{path}: {expected}")


def test_a_zip_archive_that_is_not_a_torch_file(tmp_path):
    import zipfile

    path = tmp_path / "download.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/README.txt", "weights inside")
        archive.writestr("model/v1-5.safetensors", b"\0" * 16)
    assert error_of(read_checkpoint, path) == (f"{path}: is a zip archive (holding model/README.txt and more), not a "
                                               "PyTorch checkpoint; unpack it and pass the checkpoint inside")


def test_a_real_safetensors_header_is_never_taken_for_text(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    assert torch.equal(read_checkpoint(path).state_dict["w"], torch.ones(2))


# --- 10. a checkpoint that cannot serve the subcommand is refused before its weights are read ------


@pytest.mark.parametrize("family, mode, expected", [
    ("sd1", "depth2img", "depth2img needs the SD 2 depth model"),
    ("sd1-inpaint", "txt2img", "this checkpoint's UNet takes 9 input channels (SD 1.x inpainting): use sd-cli inpaint"),
    ("sd1-inpaint", "img2img", "use sd-cli inpaint"),
])
def test_a_model_that_cannot_serve_the_mode_is_refused_before_loading(tmp_path, monkeypatch, family, mode, expected):
    from sd_cli.loading import loader

    weights, config = tiny_state_dict(family)
    path = save(tmp_path, family, weights, config)

    def must_not_build(*args, **kwargs):
        raise AssertionError("the weights were read")

    monkeypatch.setattr(loader, "build_and_load", must_not_build)
    assert expected in error_of(load_model, path, mode=mode)
