"""--refiner: the SDXL refiner beside its base, loaded as --ckpt is and checked before either loads.

Its YAML is found as the checkpoint's (loading/loader.py's choose_config): --refiner-config, else a
YAML beside it with its stem, else detected from its weights. The base must be SDXL and the file the
refiner; either mistake is a one-line error before any weight is read.

Where the two models go (docs/usage.md, "The SDXL refiner"):
- --offload: both wait in host memory, one part of one model on the GPU at a time;
- on a GPU without --offload, both stay on the GPU where the refiner's weights fit in what the base
  leaves free; else both wait in host memory and run one after the other, as with --offload;
- on the CPU both are in host memory (an fp32 .safetensors file is used in place, memory-mapped).
"""

from sd_cli import log
from sd_cli.errors import UsageError

BASE_FAMILY = "sdxl"
REFINER_FAMILY = "sdxl-refiner"


def prepare_refiner(request, base):
    """The refiner file opened and its config chosen (loading.loader.PreparedCheckpoint), after checking
    that `base` (the prepared --ckpt) is an SDXL base and the file a refiner."""
    from sd_cli.loading.loader import prepare_checkpoint
    from sd_cli.loading.locations import resolve_checkpoint

    if base.family.name != BASE_FAMILY:
        raise UsageError(f"--refiner finishes an SDXL base's images, and {base.path.name} is "
                         f"{base.family.description}: pass an SDXL base with --ckpt, or drop --refiner")
    refiner = prepare_checkpoint(resolve_checkpoint(request.refiner), request.refiner_config)
    if refiner.family.name != REFINER_FAMILY:
        raise UsageError(f"--refiner {refiner.path.name} is {refiner.family.description}, not the SDXL refiner "
                         "(sd_xl_refiner_1.0): pass the refiner's file")
    return refiner


def load_refiner(request, prepared, base_session, device, dtype, offload: bool):
    """The refiner's run.session.Session, with the run's text options; the base is moved to host
    memory first where the two cannot share the GPU."""
    import time

    from sd_cli.loading.loader import load_prepared
    from sd_cli.loading.lora import LoraMerger
    from sd_cli.prompting.prompts import text_options
    from sd_cli.run.session import Session
    from sd_cli.runtime.compiling import compile_if_asked

    if not offload and not fits_beside_base(prepared, device, dtype):
        from sd_cli.runtime.offload import enable_offload

        if request.compile:  # compiled GPU code keeps the weights where they were (request_builder's rule)
            raise UsageError(f"the refiner does not fit on {device} beside the base, and --compile keeps the base "
                             "there; drop --compile (both then run one after the other)")
        log.info(f"the refiner does not fit on {device} beside the base: both wait in host memory and run "
                 "one after the other (as with --offload)")
        enable_offload(base_session.model, device)
        offload = True
    started = time.perf_counter()
    loaded = load_prepared(prepared, device=device, dtype=dtype, offload=offload)
    log.info(f"loaded refiner {prepared.path} in {time.perf_counter() - started:.1f}s")
    weights_frozen = compile_if_asked(loaded.model, request.compile)
    text = text_options(loaded.model.text_towers[0], request.emphasis, request.clip_skip, request.embeddings)
    return Session(loaded, text, LoraMerger(loaded.model, weights_frozen), vae_tiling=request.vae_tiling)


def weight_bytes(prepared, dtype) -> int:
    """The bytes the refiner's weights take once loaded: the run's dtype, its VAE in float32."""
    from sd_cli.loading.loader import VAE_PREFIX

    return sum(tensor.numel() * (4 if key.startswith(VAE_PREFIX) else dtype.itemsize)
               for key, tensor in prepared.weights.items() if tensor.is_floating_point())


def fits_beside_base(prepared, device, dtype) -> bool:
    """Whether the refiner's weights fit in what the loaded base leaves free on a GPU (always on the
    CPU and where the free memory cannot be known)."""
    from sd_cli.runtime import memory

    if device.type != "cuda":
        return True
    free = memory.available_bytes(device)
    return free is None or weight_bytes(prepared, dtype) <= memory.USABLE * free
