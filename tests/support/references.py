"""Independent reference pieces shared by the parity tests."""

import functools
import gzip
import importlib.resources


@functools.cache
def hf_clip_tokenizer():
    """transformers' (Rust) CLIP BPE over open_clip's bundled merges: an independent tokenizer.

    The original SD 1.x used transformers' CLIPTokenizer; open_clip ships the same vocabulary as
    merges only, so vocab.json is rebuilt here in CLIP's order: byte characters, the same with
    "</w>", the merges, then the start and end tokens.
    """
    import transformers

    with gzip.open(importlib.resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz") as f:
        merges = [tuple(line.split()) for line in f.read().decode("utf-8").split("\n")[1:48895]]
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]  # bytes that stand for themselves
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return transformers.CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)


def smooth_image(size: int = 64):
    """A smooth, non-trivial [1, 3, size, size] image in [-1, 1] (sines and a product of ramps)."""
    import torch

    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return torch.stack([torch.sin(3 * xs), torch.cos(2 * ys), xs * ys]).unsqueeze(0)
