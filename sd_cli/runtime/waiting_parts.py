"""On the CPU, the parts that a denoising step does not use wait in the checkpoint file.

The text encoder runs once per batch and the VAE encoder only for an init image (img2img,
inpainting, a pixel-space hires pass), yet held beside the UNet they are a ninth of an SD 1.5 model
in bf16 (docs/performance.md), memory of the process's own, since the file's fp16 tensors are cast. So
the loader leaves them in the file (loading/deferred.py) and the model asks for a part before it
runs it (`use`):

- the text encoder is read from the file for each encoding and given back when the UNet or the
  VAE runs: one read of its weights per batch (their cost is in docs/performance.md);
- the VAE encoder is read at its first use and then kept.

The token embedding stays in memory: embeddings (textual inversion) and the prompt parser look at
it between encodings. A merged LoRA, merged in place, pins the waiting parts in memory for good (DeferredWeights.pin),
and --vae, whose weights replace the VAE's after loading, keeps the VAE encoder loaded. Only the CPU:
there the weights are host memory; a GPU run keeps them on the device (or uses --offload).
"""

from __future__ import annotations

from typing import Callable

from sd_cli.loading.loader import TEXT_PREFIX, VAE_PREFIX

TOKEN_EMBEDDING_PREFIX = TEXT_PREFIX + "token_embedding."
VAE_ENCODER_PREFIXES = (VAE_PREFIX + "encoder.", VAE_PREFIX + "quant_conv.")

TEXT_ENCODER = "text encoder"  # the model's part names, as model._ready and --offload use them
VAE_ENCODER = "VAE encoder"


def waiting_keys(vae_encoder: bool = True) -> Callable[[str], bool]:
    """The loader's `defer`: the text encoder's keys but its token embedding, and the VAE encoder's
    unless `vae_encoder` is False (a --vae file replaces them after loading)."""
    def waits(key: str) -> bool:
        if key.startswith(TEXT_PREFIX):
            return not key.startswith(TOKEN_EMBEDDING_PREFIX)
        return vae_encoder and key.startswith(VAE_ENCODER_PREFIXES)

    return waits


class WaitingParts:
    """Reads a waiting part from the file when the model is about to run it, and gives the text
    encoder back once another part runs."""

    def __init__(self, model, deferred):
        self.deferred = deferred
        self.text = model.cond_stage_model
        self.vae = model.first_stage_model
        deferred.parts[TEXT_PREFIX] = self.text  # pinned with the rest when a LoRA is merged
        deferred.parts[VAE_PREFIX] = self.vae
        self.text_resident = False

    def use(self, part: str) -> None:
        if part == TEXT_ENCODER:
            if not self.text_resident:
                self.deferred.materialise(self.text, TEXT_PREFIX)
                self.text_resident = True
            return
        if part == VAE_ENCODER:
            self.deferred.materialise(self.vae, VAE_PREFIX)  # no-op once read
        if self.text_resident:
            self.deferred.free(self.text, TEXT_PREFIX)
            self.text_resident = False


def wait_in_file(model) -> None:
    """Attach the policy to a model whose loader deferred waiting_keys() (an SDXL-family model is
    loaded whole: nothing is deferred there, and nothing waits)."""
    if model.deferred is not None:
        model.waiting = WaitingParts(model, model.deferred)
