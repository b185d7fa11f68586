"""The depth annotator of ControlNet v1.1 (its MidasDetector): MiDaS DPT-Hybrid from a local weights file.

The image at the detect resolution, scaled to [-1, 1], through the same DPT-Hybrid that depth2img
runs (models/midas.py); the relative inverse depth is min-max scaled to 0..255 (uint8, truncated).
The file is dpt_hybrid-midas-501f0c75.pt (keys `pretrained.*`, `scratch.*`), or an SD 2 depth
checkpoint, whose `depth_model.model.*` are the same weights.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from sd_cli.loading.checkpoint import read_checkpoint
from sd_cli.loading.strict import compare

DEPTH_CHECKPOINT_PREFIX = "depth_model.model."


@torch.inference_mode()
def depth_map(pixels: np.ndarray, weights: Path, device: str = "cpu") -> np.ndarray:
    """(H, W) uint8 depth, white = near, of an RGB uint8 image (H, W, 3) whose sides are multiples of 32."""
    estimator = load_midas(Path(weights)).to(device)
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float() / 127.5 - 1.0
    depth = estimator(x.permute(2, 0, 1).unsqueeze(0).to(device))[0].cpu()
    depth = depth - depth.min()
    depth = depth / depth.max()
    return (depth.numpy() * 255.0).clip(0, 255).astype(np.uint8)


def load_midas(path: Path) -> torch.nn.Module:
    stat = path.stat() if path.is_file() else None
    return _cached_midas(str(path), stat.st_mtime_ns if stat else None)


@functools.lru_cache(maxsize=1)  # the same file for every hint of a run: read it once
def _cached_midas(path: str, _mtime: int | None) -> torch.nn.Module:
    weights = read_checkpoint(path).state_dict
    if any(key.startswith(DEPTH_CHECKPOINT_PREFIX) for key in weights):
        weights = {key[len(DEPTH_CHECKPOINT_PREFIX):]: value for key, value in weights.items()
                   if key.startswith(DEPTH_CHECKPOINT_PREFIX)}
    estimator = _build(weights, path)
    compare(estimator.state_dict(), weights).raise_if_any(f"{path} is not a MiDaS DPT-Hybrid", noun="")
    estimator.load_state_dict({key: value.float() for key, value in weights.items()}, strict=True, assign=True)
    return estimator.eval()


def _build(weights: dict, path: str) -> torch.nn.Module:
    from sd_cli.errors import CheckpointError
    from sd_cli.models.midas import build_dpt_hybrid

    try:
        return build_dpt_hybrid(weights)
    except KeyError as missing:  # the shapes are read from named tensors: a file without them is something else
        raise CheckpointError(f"{path} is not a MiDaS DPT-Hybrid (no tensor {missing})") from missing
