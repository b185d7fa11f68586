"""A checkpoint's key names as the model reads them: a wrapper's prefix taken off, training leftovers set aside.

Both are decided by name only, before any config is chosen, so that detection, the EMA choice and
the strict load all see the keys the original model classes would.
"""

from sd_cli import log
from sd_cli.errors import CheckpointError

# Where the original LatentDiffusion's parts live in its state dict.
ROOT_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "model_ema.")
# Prefixes a wrapper puts before every key: DataParallel/DistributedDataParallel ("module."), a training
# wrapper holding the LatentDiffusion as `model` ("model."), torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
# Tensors only training uses, which released and fine-tuned files carry: the VAE's loss (LPIPS network,
# discriminator, logvar), saved under the VAE or, from a bare autoencoder training, at the root.
TRAINING_ONLY_PREFIXES = ("first_stage_model.loss.", "loss.")


def model_keys(state_dict: dict, name: str) -> dict:
    """The state dict with a uniform wrapper prefix stripped and the training-only tensors left out (said once)."""
    state_dict = _without_wrapper(state_dict, name)
    kept = {key: value for key, value in state_dict.items() if not key.startswith(TRAINING_ONLY_PREFIXES)}
    skipped = len(state_dict) - len(kept)
    if skipped:
        log.info(f"{name}: skipped {skipped} training-only tensors (the VAE's training loss, "
                 f"{' and '.join(p + '*' for p in TRAINING_ONLY_PREFIXES)}); inference does not use them")
    return kept


def wrapper_prefix(keys) -> str:
    """The prefix every key carries before the original names ("module.", "model.module.", ...), or ""."""
    keys = list(keys)
    prefix = ""
    for _ in range(len(WRAPPER_PREFIXES) + 1):  # wrappers nest at most once each
        if _has_root_keys(keys):
            return prefix
        step = next((p for p in WRAPPER_PREFIXES if keys and all(key.startswith(p) for key in keys)), None)
        if step is None:
            return ""
        keys = [key[len(step):] for key in keys]
        prefix += step
    return ""


def misplaced_prefix(keys) -> tuple[str, str] | None:
    """(prefix, part) when one part's keys carry a prefix that the others do not: ("module.", "model.diffusion_model.")."""
    keys = list(keys)
    for part in ROOT_PREFIXES[:3]:
        if any(key.startswith(part) for key in keys):
            continue
        for key in keys:
            at = key.find("." + part)
            if at != -1:
                return key[:at + 1], part
    return None


def _without_wrapper(state_dict: dict, name: str) -> dict:
    prefix = wrapper_prefix(state_dict)
    if not prefix:
        misplaced = misplaced_prefix(state_dict)
        if misplaced:
            raise CheckpointError(f"{name}: its {misplaced[1]}* keys carry the prefix {misplaced[0]!r} and the "
                                  "other keys do not, so no model can read them; save the file without that prefix")
        return state_dict
    log.info(f"{name}: every key carries the wrapper prefix {prefix!r} (saved from a wrapped model); reading it without")
    return {key[len(prefix):]: value for key, value in state_dict.items()}


def _has_root_keys(keys) -> bool:
    return any(key.startswith(ROOT_PREFIXES) for key in keys)
