"""`--backend openvino`: the UNet, the VAE decoder and the text encoder run as OpenVINO graphs on the CPU.

Each part is converted from sd_cli's own torch module (`openvino.convert_model`, traced with the
run's first inputs of a shape, so every graph is static) and compiled for the CPU. A compiled
graph is exported to a file in the user's cache, keyed by what decides its numbers: the
checkpoint's hash, --ema, --vae, the LoRAs merged at conversion, --clip-skip, the input shapes
and the precision; the next run with the same key imports it and skips converting and
compiling. Numerics: fp32 runs with OpenVINO's f32 inference precision (the eager path's results
to float32 rounding); bf16 runs with its bf16 hint, which the CPU plugin honours only on CPUs
with AVX-512 BF16 or AMX (performance.md has the figures, fidelity.md the tolerances).

The converted weights are those of the first batch (as with --compile on the CPU), so lora.py
refuses a later change of LoRAs (run.render passes weights_frozen).

Memory: the parts' torch weights stay in the checkpoint file while their graphs run (the loader
defers them, loading/deferred.py): a cache hit never reads them, a conversion reads them and
frees them after. A cached graph is imported from a mapping of its file, whose pages are given
back as the plugin repacks them (performance.md has the figures).
"""

import hashlib
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from sd_cli import log
from sd_cli.errors import UsageError

INSTALL_HINT = "pip install openvino (or pip install 'sd-cli[openvino]')"
# Precisions the CPU plugin can run, by the capability it lists for them.
# Changes whenever the way a part is converted changes, so older cached graphs are not read.
CONVERSION = "float32-trace-static-f16-2"
_HINTS = {torch.float32: ("f32", "FP32"), torch.bfloat16: ("bf16", "BF16"), torch.float16: ("f16", "FP16")}


def import_openvino():
    """The openvino module, or the one-line error that says how to install it."""
    try:
        import openvino
    except ImportError:
        raise UsageError(f"--backend openvino needs the openvino package, which is not installed: {INSTALL_HINT}") from None
    return openvino


def cache_root() -> Path:
    """Where compiled graphs are kept: $SD_CLI_CACHE_DIR/openvino, else ~/.cache/sd_cli/openvino."""
    cache_dir = os.environ.get("SD_CLI_CACHE_DIR")
    return (Path(cache_dir) if cache_dir else Path.home() / ".cache" / "sd_cli") / "openvino"


def check_device(device: torch.device, dtype: torch.dtype) -> None:
    """OpenVINO runs here on the CPU, in a precision the CPU can compute; refuse anything else before loading."""
    if device.type != "cpu":
        raise UsageError(f"--backend openvino runs on the CPU; drop --device {device} or --backend openvino")
    ov = import_openvino()
    hint, capability = _HINTS[dtype]
    if capability not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise UsageError(f"--backend openvino: this CPU cannot compute in {hint}; use --precision fp32")


class OpenVinoPart:
    """One part of the model (UNet, decoder, text encoder) as compiled OpenVINO graphs, one per input shape.

    `module` computes the part in torch from float32 (or integer) inputs; `weights_key()` names
    the weights it holds now (they are read at conversion); outputs come back in `out_dtype`,
    the dtype the eager part returns, so what follows computes as it does on the torch path.
    `weights` reads the part's torch weights from the file for a conversion and frees them after.
    """

    def __init__(self, name: str, module: nn.Module, weights_key: Callable[[], str], dtype: torch.dtype,
                 out_dtype: torch.dtype, weights: "TorchWeights | None" = None):
        self.name = name
        self.module = module
        self.weights_key = weights_key
        self.dtype = dtype
        self.out_dtype = out_dtype
        self.weights = weights or TorchWeights(None, module, "")
        self.compiled: dict[tuple, object] = {}
        self._blobs: dict[tuple, "_MappedBlob"] = {}  # the imported blob of each graph, mapped while it runs

    def __call__(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        while inputs and inputs[-1] is None:  # an optional input left out (a UNet without the vector y)
            inputs = inputs[:-1]
        inputs = tuple(_ov_input(x) for x in inputs)
        signature = tuple((tuple(x.shape), str(x.dtype)) for x in inputs)
        compiled = self.compiled.get(signature)
        if compiled is None:
            compiled = self.compiled[signature] = self._load_or_compile(inputs, signature)
        result = compiled([x.numpy() for x in inputs])[0]
        # The plugin has made its own copies of the constants it computes with by now (bf16, blocked):
        # the blob's pages are given back (clean file pages: what reads them again gets the file's bytes).
        self._blobs[signature].release()
        # The result is OpenVINO's output buffer, which the next call overwrites: copy it out.
        return torch.from_numpy(result).to(self.out_dtype, copy=True)

    def _load_or_compile(self, inputs: tuple, signature: tuple):
        ov = import_openvino()
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": _HINTS[self.dtype][0], "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        blob = cache_root() / f"{self.name}-{self._key(ov, signature, config)}.blob"
        started = time.perf_counter()
        if blob.is_file():
            try:
                compiled = self._import(ov, core, blob, signature, config)
                log.info(f"openvino: {self.name} {_shapes(signature)} from the cache in {time.perf_counter() - started:.1f}s")
                return compiled
            except RuntimeError as err:  # a blob of another OpenVINO build or a cut-off file: convert again
                log.warn(f"openvino: the cached {self.name} graph cannot be read ({str(err).splitlines()[0]}); converting again")
        self.weights.materialise()
        try:
            compiled = _convert_and_compile(ov, core, config, self.module, inputs, blob.parent)
        finally:
            self.weights.free()
        log.info(f"openvino: {self.name} {_shapes(signature)} converted and compiled in {time.perf_counter() - started:.1f}s")
        if not _write_atomically(blob, compiled.export_model().getbuffer()):
            self._blobs[signature] = _MappedBlob(None)
            return compiled
        # Run from the written blob, as a cached run does: one way of holding a graph's memory.
        del compiled
        return self._import(ov, core, blob, signature, config)

    def _import(self, ov, core, blob: Path, signature: tuple, config: dict):
        mapped = _MappedBlob(blob)
        with mapped.releasing():
            compiled = core.import_model(mapped.tensor(ov), "CPU", config)
        self._blobs[signature] = mapped
        return compiled

    def release_memory(self) -> None:
        """Give back the graphs' intermediate buffers (another part runs next; the next call allocates them again)."""
        for compiled in self.compiled.values():
            compiled.release_memory()

    def _key(self, ov, signature: tuple, config: dict) -> str:
        text = "|".join([CONVERSION, self.weights_key(), repr(signature), repr(sorted(config.items())), ov.__version__,
                         str(self.dtype), _cpu_flags()])
        return hashlib.sha256(text.encode()).hexdigest()[:24]


class TorchWeights:
    """A part's torch weights while its graphs run: in the checkpoint file (deferred, loading/deferred.py)
    and read from it only to convert a new shape; a model loaded whole (deferred None) keeps them."""

    def __init__(self, deferred, module: nn.Module, prefix: str):
        self.deferred = deferred
        self.module = module
        self.prefix = prefix
        if deferred is not None:
            deferred.parts[prefix] = module

    def materialise(self) -> None:
        if self.deferred is not None:
            self.deferred.materialise(self.module, self.prefix)

    def free(self) -> None:
        if self.deferred is not None:
            self.deferred.free(self.module, self.prefix)


class _MappedBlob:
    """A cached graph's file, memory-mapped for import_model: the plugin reads the constants from the
    mapping instead of a copy in memory, and the mapping lives as long as the compiled graph."""

    def __init__(self, path: Path | None):
        import numpy as np

        self.path = path
        # copy-on-write: import_model wants a writable buffer; nothing writes it, so the pages stay the file's
        self.array = np.memmap(path, dtype=np.uint8, mode="c") if path is not None else None
        self.released = path is None

    def tensor(self, ov):
        return ov.Tensor(self.array, shared_memory=True)

    @contextmanager
    def releasing(self, every_s: float = 0.2):
        """While the plugin reads the blob and repacks its constants into memory of its own, the pages it
        has read are given back every `every_s`: otherwise the file's pages and the repacked copy are
        resident together (the full UNet: 1.7 + 1.8 GB). Dropping a page it still reads costs a
        re-read from the page cache, never other data (nothing writes the mapping: its Private_Dirty
        stays 0)."""
        from sd_cli.loading.mapped_pages import MappedFile

        pages, done = MappedFile(self.path), threading.Event()

        def give_back():
            while not done.wait(every_s):
                pages.release_all()

        thread = threading.Thread(target=give_back, name="openvino-blob-pages", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def release(self) -> None:
        if not self.released:
            from sd_cli.loading.mapped_pages import MappedFile

            MappedFile(self.path).release_all()
            self.released = True


def _convert_and_compile(ov, core, config: dict, module: "_FromFloat32", inputs: tuple, scratch: Path):
    """Trace `module` in float32, fix the input shapes, and compile it, with sd_cli's oneDNN linear
    layers and bf16 CPU attention switched off.

    Float32: the inference precision hint then decides the precision, so bf16 is OpenVINO's own
    lowering of the float32 graph (the one it is tuned for: GroupNorm, convolution and SiLU fused,
    bf16 between them) rather than a graph with a cast around every float32 GroupNorm; a bf16 or
    fp16 module goes to float32 for the trace and back after it, which is exact. The oneDNN and
    attention ops are ones OpenVINO cannot read; their ATen forms (F.linear,
    scaled_dot_product_attention) compute the same, and OpenVINO's kernels replace both.

    Static shapes: a trace's inputs are dynamic, and the CPU plugin then picks kernels and
    repacks weights at the first inference of each shape; reshaped to the run's shapes it does
    both while compiling. A bf16 or fp16 run keeps its constants in f16 (weights outside f16's
    range stay f32): the cached graph is half the size, and the graph computes in bf16 anyway."""
    from sd_cli.models import cpu_attention, linear

    switches = (linear.ONEDNN_LINEAR, cpu_attention.AVAILABLE)
    linear.ONEDNN_LINEAR = cpu_attention.AVAILABLE = False
    dtype, module.dtype = module.dtype, torch.float32
    module.owner.float()
    try:
        with torch.inference_mode(False), torch.no_grad():
            model = ov.convert_model(module, example_input=inputs)
        model.reshape({index: ov.PartialShape(list(x.shape)) for index, x in enumerate(inputs)})
        if dtype != torch.float32:
            model = _with_f16_constants(ov, core, model, scratch)
        # The converted model shares the float32 weights with the module: compile before they go.
        return core.compile_model(model, "CPU", config)
    finally:
        module.owner.to(dtype)
        module.dtype = dtype
        linear.ONEDNN_LINEAR, cpu_attention.AVAILABLE = switches


def _with_f16_constants(ov, core, model, scratch: Path):
    """The model with its float constants stored as f16, through OpenVINO's own IR writer
    (save_model's compress_to_fp16) and read back."""
    scratch.mkdir(parents=True, exist_ok=True)
    xml = scratch / f"convert-{os.getpid()}.xml"
    try:
        ov.save_model(model, xml, compress_to_fp16=True)
        return core.read_model(xml)
    finally:
        # read_model has the weights mapped by now: the names can go, the data stays until unmapped
        for path in (xml, xml.with_suffix(".bin")):
            path.unlink(missing_ok=True)


def _ov_input(x: torch.Tensor) -> torch.Tensor:
    """Inputs cross as float32 (numpy has no bfloat16) or as the integers they are."""
    x = x.detach().cpu()
    return x.float().contiguous() if x.is_floating_point() else x.contiguous()


def _shapes(signature: tuple) -> str:
    return ", ".join("x".join(map(str, shape)) for shape, _ in signature)


def _cpu_flags() -> str:
    """The CPU's feature flags: a graph compiled for one CPU may use instructions another lacks."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return hashlib.sha256(line.encode()).hexdigest()[:12]
    except OSError:
        pass
    import platform

    return platform.processor()


def _write_atomically(path: Path, data) -> bool:
    """A cache that cannot be written costs the next run its conversion, nothing else."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(path)
        return True
    except OSError as err:
        log.warn(f"openvino: cannot write the compiled graph to {path.parent} ({err.strerror or err}); "
                 "the next run converts again")
        return False


# -- the parts, as torch modules taking what crosses to OpenVINO ------------------------------------

class _FromFloat32(nn.Module):
    """`call` (a computation of `owner`) with its floating inputs cast from float32 to the part's
    dtype, output in float32. `owner` is a submodule so that tracing sees its weights as parameters."""

    def __init__(self, owner: nn.Module, call: Callable, dtype: torch.dtype):
        super().__init__()
        self.owner = owner
        self.call = call
        self.dtype = dtype

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        cast = [x.to(self.dtype) if x.is_floating_point() else x for x in inputs]
        return self.call(*cast).float()


# The model's keys each part's graph replaces: the loader leaves them in the file (loading/deferred.py).
UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model."
_DECODER_KEYS = (VAE_PREFIX + "decoder.", VAE_PREFIX + "post_quant_conv.")
_TOKEN_EMBEDDING = TEXT_PREFIX + "token_embedding."  # looked up in torch, before the text graph


def deferred_keys(decoder: bool = True) -> Callable[[str], bool]:
    """Which module keys the loader leaves in the file: the UNet's, the text encoder's (but its token
    embedding) and, unless `decoder` is False (--vae replaces the VAE's weights after loading), the decoder's."""
    def deferred(key: str) -> bool:
        if key.startswith(UNET_PREFIX) or (decoder and key.startswith(_DECODER_KEYS)):
            return True
        return key.startswith(TEXT_PREFIX) and not key.startswith(_TOKEN_EMBEDDING)

    return deferred


def use_openvino(model, weights_key: Callable[[], str]) -> None:
    """Route the model's UNet, VAE decoder and text encoder through OpenVINO (SD 1.x and 2.x)."""
    from sd_cli.models.diffusion_engine import DiffusionEngine

    import_openvino()
    if isinstance(model, DiffusionEngine):  # its conditioner and vector y are not routed or tested yet
        raise UsageError("--backend openvino runs SD 1.x and 2.x checkpoints; this is an SDXL-family model "
                         "(generative-models): drop --backend openvino")
    dtype = model.dtype
    deferred = getattr(model, "deferred", None)
    unet = _route_unet(model, weights_key, dtype, deferred)
    _route_decoder(model, weights_key, deferred, before=unet.release_memory)
    for index, tower in enumerate(model.text_towers):
        _route_text_tower(tower, index, weights_key, deferred)
    log.info("openvino: the UNet, VAE decoder and text encoder run on OpenVINO; each new shape is "
             f"converted once and kept in {cache_root()}")


def _route_unet(model, weights_key, dtype, deferred) -> None:
    unet = model.model.diffusion_model
    part = OpenVinoPart("unet", _FromFloat32(unet, unet, dtype), weights_key, dtype, dtype,
                        TorchWeights(deferred, unet, UNET_PREFIX))
    model.model.diffusion_model = _PartModule(part, unet)
    return part


def _route_decoder(model, weights_key, deferred, before: Callable[[], None]) -> None:
    """The VAE's decode (post_quant_conv + decoder); the float32 retry after a NaN runs in torch.
    `before()` runs first: the UNet's buffers go while the decoder's are in use (docs/performance.md)."""
    vae = model.first_stage_model
    dtype = next(vae.parameters()).dtype
    eager_decode = vae.decode
    weights = TorchWeights(deferred, vae, VAE_PREFIX)
    part = OpenVinoPart("vae-decoder", _FromFloat32(vae, eager_decode, dtype), weights_key, dtype, dtype, weights)

    def decode(z: torch.Tensor) -> torch.Tensor:
        # vae.float() for the NaN retry changes the weights' dtype: that run is the eager one, from the file's weights.
        before()
        if next(vae.parameters()).dtype == dtype:
            return part(z)
        weights.materialise()
        try:
            return eager_decode(z)
        finally:
            weights.free()

    vae.decode = decode


def _route_text_tower(tower, index: int, weights_key, deferred) -> None:
    """encode_embedded (embeddings in, hidden states out), one graph per --clip-skip."""
    dtype = tower.token_embedding.weight.dtype
    eager = tower.encode_embedded
    weights = TorchWeights(deferred, tower, TEXT_PREFIX) if index == 0 else TorchWeights(None, tower, "")
    parts: dict = {}

    def encode_embedded(embedded: torch.Tensor, clip_skip: int | None = None) -> torch.Tensor:
        if clip_skip not in parts:
            call = lambda x, skip=clip_skip: eager(x, skip)  # noqa: E731
            parts[clip_skip] = OpenVinoPart(f"text{index}", _FromFloat32(tower, call, dtype),
                                            lambda skip=clip_skip: f"{weights_key()}|clip_skip={skip}", dtype, dtype,
                                            weights)
        return parts[clip_skip](embedded)

    tower.encode_embedded = encode_embedded


class _PartModule(nn.Module):
    """Where the UNet was: calls go to OpenVINO; the torch UNet stays beside it (for its dtype and
    device, LoRA's parameter names and the conversion of new shapes), its weights in the file while
    the loader deferred them (TorchWeights)."""

    def __init__(self, part: OpenVinoPart, eager: nn.Module):
        super().__init__()
        self.part = part
        # torch.compile's attribute name: lora.py reads parameters under their checkpoint names with it taken out.
        self._orig_mod = eager

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.part(*inputs)
