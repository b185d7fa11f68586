"""How the ControlNets steer the UNet: hints made at the render's size, residuals scaled and summed,
handed to the UNet at every call of the guided model (sampling/guidance.py).

lllyasviel/ControlNet's cldm.py (ControlLDM.apply_model): the ControlNet sees the UNet's x, t and text
context plus the hint; its residuals are scaled (control_scales) and the UNet adds them after its middle
block and to each skip. The unconditional branch gets the same control, except in guess mode, where it
runs the plain UNet (guidance.py). Several units add their residuals, as AUTOMATIC1111's extension and
diffusers' MultiControlNet do. --control-start/--control-end: a unit steers the steps whose fraction
done (step index / steps) lies between them, read from the sampler's progress after every step.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from sd_cli import log
from sd_cli.control.units import ControlOptions, active, control_scales, hint_path
from sd_cli.errors import UsageError
from sd_cli.sampling.steps import StepHooks


@dataclass
class SteeringUnit:
    net: torch.nn.Module  # models/controlnet.py's ControlNet
    hint: torch.Tensor  # [B, 3, H, W] in [0, 1] (inpaint's masked pixels -1), on the net's device and dtype
    scales: list[float]
    only_mid: bool = False
    pooling: bool = False

    def residuals(self, x, t, context) -> list[torch.Tensor | None]:
        # one hint per image; the batched guidance's [uncond, cond] halves each get them all
        hint = self.hint.repeat(x.shape[0] // self.hint.shape[0], 1, 1, 1)
        dtype = self.hint.dtype
        outs = self.net(x.to(dtype), hint, t, context.to(dtype))
        outs = [out * scale for out, scale in zip(outs, self.scales)]
        if self.pooling:  # v1.1 shuffle's global_average_pooling
            outs = [out.mean(dim=(2, 3), keepdim=True) for out in outs]
        if self.only_mid:
            outs = [None] * (len(outs) - 1) + outs[-1:]
        return outs


@dataclass
class Steering:
    """The control of one render: what GuidedModel asks for at every UNet call."""

    units: list[SteeringUnit]
    guess_mode: bool = False
    start: float = 0.0
    end: float = 1.0
    fraction: float = 0.0  # the steps done / steps, updated after every step

    def residuals(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> list | None:
        """The summed residuals for UNet input x [B, 4, h, w] (the latent only), or None outside start..end."""
        if not active(self.fraction, self.start, self.end):
            return None
        total = None
        for unit in self.units:
            outs = unit.residuals(x, t, context)
            total = outs if total is None else [_add(a, b) for a, b in zip(total, outs)]
        return total

    def tracking(self, hooks: StepHooks) -> StepHooks:
        """The sampler's hooks, also telling this steering how far the sampling is."""
        self.fraction = 0.0
        told = hooks.progress

        def progress(done: int, total: int) -> None:
            self.fraction = done / total
            if told is not None:
                told(done, total)

        return replace(hooks, progress=progress)


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + b


@dataclass
class ControlSet:
    """The run's ControlNets, loaded once, and their images; steering() makes each render's hints."""

    options: ControlOptions
    nets: list  # controlnet_file.LoadedControlNet, one per unit
    images: list  # PIL images, one per unit
    device: str = "cpu"  # where the annotator networks run (the run's device)
    seeds: list = field(default_factory=lambda: [0])  # the batch's seeds: the shuffle hint draws from each
    mask: np.ndarray | None = None  # the inpaint command's mask at the render size (True = repaint), else None
    _hints: dict = field(default_factory=dict)  # (unit, height, width, seed) -> hint
    _saved: set = field(default_factory=set)  # the units whose hint --save-hint has written

    def use_mask(self, mask: np.ndarray | None) -> None:
        """The mask of the jobs rendered next; the inpaint hints made for another mask are made again."""
        if mask is self.mask or (mask is not None and self.mask is not None and np.array_equal(mask, self.mask)):
            return
        self.mask = mask
        self._hints = {key: hint for key, hint in self._hints.items()
                       if self.options.units[key[0]].preprocess != "inpaint"}

    def steering(self, height: int, width: int) -> Steering:
        units = []
        for index, (unit, loaded) in enumerate(zip(self.options.units, self.nets)):
            net = loaded.net
            dtype, device = next(net.parameters()).dtype, next(net.parameters()).device
            hints = torch.cat([_tensor(self._hint(index, height, width, seed)) for seed in self.seeds])
            units.append(SteeringUnit(net, hints.to(device, dtype),
                                      control_scales(unit.strength, self.options.guess_mode, len(net.zero_convs) + 1),
                                      loaded.config.only_mid_control, loaded.config.global_average_pooling))
        return Steering(units, self.options.guess_mode, self.options.start, self.options.end)

    def _hint(self, index: int, height: int, width: int, seed: int) -> np.ndarray:
        """Unit `index`'s hint at this size, made once; only the shuffle depends on the image's seed."""
        from sd_cli.control.preprocessors import NEEDS_WEIGHTS, hint_picture, make_hint

        o, unit = self.options, self.options.units[index]
        key = (index, height, width, seed if unit.preprocess == "shuffle" else 0)
        if key not in self._hints:
            weights = o.annotator_weights if unit.preprocess in NEEDS_WEIGHTS else None
            hint = make_hint(self.images[index], unit.preprocess, width, height, detect_resolution=o.detect_resolution,
                             canny_low=o.canny_low, canny_high=o.canny_high, weights=weights, seed=key[3],
                             mask=self.mask, device=self.device)
            # --save-hint writes each unit's first hint (the first size and image it is made for)
            if o.save_hint is not None and index not in self._saved:
                _save_hint(hint_picture(hint), hint_path(o.save_hint, index))
                self._saved.add(index)
            self._hints[key] = hint
        return self._hints[key]

    def infotext(self) -> dict[str, str]:
        """AUTOMATIC1111's extension's fields: "ControlNet 0": "Module: canny, Model: name [hash], Weight: 1, ..."."""
        o = self.options
        mode = "ControlNet is more important" if o.guess_mode else "Balanced"
        fields = {}
        for index, (unit, loaded) in enumerate(zip(o.units, self.nets)):
            parts = [("Module", unit.preprocess), ("Model", loaded.label), ("Weight", _number(unit.strength))]
            if o.detect_resolution is not None:
                parts.append(("Processor Res", o.detect_resolution))
            if unit.preprocess == "canny":
                parts += [("Threshold A", o.canny_low), ("Threshold B", o.canny_high)]
            parts += [("Guidance Start", _number(o.start)), ("Guidance End", _number(o.end)), ("Control Mode", mode)]
            fields[f"ControlNet {index}"] = ", ".join(f"{key}: {value}" for key, value in parts)
        return fields


def _number(value: float) -> str:
    return f"{value:g}"


def _tensor(hint: np.ndarray) -> torch.Tensor:
    from sd_cli.control.preprocessors import hint_tensor

    return hint_tensor(hint)


def _save_hint(hint: np.ndarray, path: Path) -> None:
    from sd_cli.files.output import save_image

    save_image(hint, path)  # atomic, never half-written, as every output
    log.info(f"wrote the hint the ControlNet sees to {path}")


def load_control_set(options: ControlOptions, model, checkpoint_path: Path) -> ControlSet:
    """Every unit's ControlNet (--control-net, or the --ckpt's own) and control image, before any rendering."""
    from sd_cli.loading.controlnet_file import load_controlnet, load_embedded

    loaded: dict = {}
    nets = []
    for unit in options.units:
        key = unit.net
        if key not in loaded:
            loaded[key] = (load_embedded(model, checkpoint_path) if unit.net is None
                           else load_controlnet(unit.net, options.net_config, model))
        nets.append(loaded[key])
    return ControlSet(options, nets, [read_control_image(unit.image) for unit in options.units],
                      device=str(model.device))


def read_control_image(path: Path):
    from sd_cli.files.images import open_image

    if not Path(path).is_file():
        raise UsageError(f"--control-image {path}: no such file; pass the image the ControlNet follows")
    return open_image(Path(path), "control image")
