"""Full-size SD 1.5 checkpoints with random weights, in the original key layout.

Speed and memory do not depend on the values of the weights, so the benchmarks and CI's
installed-wheel check use these instead of downloaded models (none can be downloaded here).

    python -m benchmarks.random_checkpoint OUT.safetensors [--fp16]
"""

import argparse
from pathlib import Path

# CLIP ViT-L/14's text tower (SD 1.x); transformers' CLIPTextConfig defaults are a smaller model.
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                   projection_dim=768, hidden_act="quick_gelu")


def random_sd15_weights() -> dict:
    """The state dict of v1-inference.yaml's model (UNet, VAE, CLIP ViT-L/14 text), seeded."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from sd_cli.loading.config import load_config
    from sd_cli.loading.packaged import packaged_config
    from sd_cli.models.unet import UNetModel
    from sd_cli.models.vae import AutoencoderKL

    config = load_config(packaged_config("v1-inference.yaml"))
    torch.manual_seed(0)
    weights = {}
    for prefix, module in (("model.diffusion_model.", UNetModel(**config.unet_params)),
                           ("first_stage_model.", AutoencoderKL(**config.vae_params))):
        weights.update({prefix + k: v for k, v in module.state_dict().items()})
        del module
    text = CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT))
    for key, value in text.state_dict().items():
        weights["cond_stage_model.transformer.text_model." + key.removeprefix("text_model.")] = value
    return weights


def write_safetensors(path: Path, fp16: bool) -> None:
    from safetensors.torch import save_file

    weights = random_sd15_weights()
    save_file({k: (v.half() if fp16 else v).contiguous() for k, v in weights.items()}, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.random_checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--fp16", action="store_true", help="store the weights in float16 (half the size)")
    args = parser.parse_args()
    write_safetensors(args.out, args.fp16)
    print(args.out)


if __name__ == "__main__":
    main()
