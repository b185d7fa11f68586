"""The five subcommands as objects: what each reads, what size it renders at, which pipeline runs it,
and how its images are finished. render.py asks the run's Mode instead of testing its name.

A txt2img job that names an init image (a prompt-file line with init_img) renders as img2img, as
the original's prompt files allow.
"""

from sd_cli import log
from sd_cli.errors import UsageError


class Mode:
    name = ""

    def read_input(self, request, job):
        """The job's input (an init image [1, 3, h, w], an inpaint canvas) or None; checked here."""
        return _init_image(self.name, job)

    def size(self, job, family, init) -> tuple[int, int]:
        """(height, width) of the render: the input's when there is one, else the job's or the model's."""
        if init is not None:
            return tuple(init.shape[-2:])
        return job.height or family.native_size, job.width or family.native_size

    def passes(self, request, job) -> int:
        """Sampling passes of a batch (progress counts them): the refiner samples after the base."""
        return 2 if request.refining is not None else 1

    def encodes_input(self, init) -> bool:
        """Whether the VAE encodes the input (the memory check counts its encoder)."""
        return init is not None

    def unet_tile(self, request) -> int:
        """The side in latent cells of the UNet's tiles; 0: the whole latent at once."""
        return 0

    def announce(self, family) -> None:
        """What the run should say about how this mode will work with this model."""

    def control_mask(self, init):
        """The mask a ControlNet inpaint hint marks (bool [H, W] at the render size, True = repaint), or None."""
        return None

    def render(self, model, request, job, init, prompts, negatives, seeds, params, progress):
        if request.refining is not None:
            from sd_cli.pipelines.refine import img2img_refined

            return img2img_refined(model, model.refiner, init, prompts, negatives, seeds, params, job.strength,
                                   request.refining, progress)
        from sd_cli.pipelines.img2img import img2img

        return img2img(model, init, prompts, negatives, seeds, params, job.strength, progress,
                       aesthetic_scores=request.aesthetic_scores)

    def finish(self, request, batch, images: list) -> list:
        """The batch's uint8 images as they are written."""
        return images


class Txt2Img(Mode):
    name = "txt2img"

    def passes(self, request, job) -> int:
        return 2 if request.hires is not None and job.init_img is None else super().passes(request, job)

    def render(self, model, request, job, init, prompts, negatives, seeds, params, progress):
        if init is not None:
            return super().render(model, request, job, init, prompts, negatives, seeds, params, progress)
        height, width = self.size(job, model.family, None)
        if request.hires is not None:
            from sd_cli.pipelines.hires import txt2img_hires

            return txt2img_hires(model, prompts, negatives, seeds, params, height, width, request.hires, progress)
        if request.refining is not None:
            from sd_cli.pipelines.refine import txt2img_refined

            return txt2img_refined(model, model.refiner, prompts, negatives, seeds, params, height, width,
                                   request.refining, progress)
        from sd_cli.pipelines.txt2img import txt2img

        return txt2img(model, prompts, negatives, seeds, params, height, width, progress)


class Img2Img(Mode):
    name = "img2img"


class Inpaint(Mode):
    name = "inpaint"

    def read_input(self, request, job):
        return _inpaint_canvas(request, job)

    def size(self, job, family, init) -> tuple[int, int]:
        return init.padded_size

    def announce(self, family) -> None:
        log.info("inpaint method: " + ("mask and masked-image latent as extra UNet input (inpainting checkpoint)"
                                       if family.inpaint_method == "concat" else "known region blended back after "
                                       "every step (ordinary checkpoint; an inpainting checkpoint usually does better)"))

    def control_mask(self, init):
        return init.padded_mask() > 0.5  # the very mask the inpainting repaints

    def render(self, model, request, job, init, prompts, negatives, seeds, params, progress):
        from sd_cli.pipelines.inpaint import inpaint

        return inpaint(model, *init.tensors(), prompts, negatives, seeds, params, job.strength, progress)

    def finish(self, request, batch, images: list) -> list:
        """The padding cropped and the kept pixels pasted back, in uint8 so that they stay exact."""
        return [_inpaint_canvas(request, job).finish(image) for job, image in zip(batch, images)]


class Depth2Img(Mode):
    name = "depth2img"

    def render(self, model, request, job, init, prompts, negatives, seeds, params, progress):
        from sd_cli.pipelines.depth2img import depth2img

        depth = _depth_source(request).for_image(model.model, job.init_img, init)
        return depth2img(model, init, depth, prompts, negatives, seeds, params, job.strength, progress)


# -- upscale: the SD 2 x4 upscaler (#21) --
class Upscale(Mode):
    """The input, fitted to multiples of 64, is the UNet's low-res channels; the output is 4x its size."""

    name = "upscale"

    def read_input(self, request, job):
        return _low_res_image(request, job)

    def size(self, job, family, init) -> tuple[int, int]:
        return tuple(side * family.vae_downsampling for side in init.shape[-2:])

    def encodes_input(self, init) -> bool:
        return False  # the low-res image joins the UNet in pixel space

    def unet_tile(self, request) -> int:
        return request.upscale.tile

    def render(self, model, request, job, init, prompts, negatives, seeds, params, progress):
        from sd_cli.pipelines.upscale import upscale

        options = request.upscale
        return upscale(model, init, prompts, negatives, seeds, params, options.noise_level, progress, options.tile)
# -- end of upscale --


MODES = {mode.name: mode for mode in (Txt2Img(), Img2Img(), Inpaint(), Depth2Img(), Upscale())}


def mode_of(request) -> Mode:
    return MODES[request.mode]


# -- the inputs, each read once per run -------------------------------------------------------------

_init_cache: dict = {}
_canvas_cache: dict = {}
_depth_sources: dict = {}


def forget_inputs() -> None:
    """A file may have changed since an earlier run in this process."""
    _init_cache.clear()


def _init_image(mode: str, job):
    """The job's init image ([1, 3, h, w]), or None for txt2img; the last one read is kept."""
    if job.mask is not None:
        raise UsageError(f"a mask ({job.mask}) needs the inpaint subcommand; {mode} takes none")
    if job.init_img is None:
        if mode != "txt2img":
            raise UsageError(f"{mode} needs an input image: pass --init-img PATH (or init_img on the line)")
        return None
    from sd_cli.files.images import load_init_image

    if job.init_img not in _init_cache:
        _init_cache.clear()
        _init_cache[job.init_img] = load_init_image(job.init_img)
    return _init_cache[job.init_img]


def _inpaint_canvas(request, job):
    """The job's image and mask prepared for inpaint (masks.InpaintCanvas); the last one made is kept."""
    if job.init_img is None:
        raise UsageError("inpaint needs an input image: pass --image PATH (or init_img on the line)")
    from sd_cli.files.masks import load_inpaint_canvas

    key = (job.init_img, job.mask, request.inpaint)
    if key not in _canvas_cache:
        _canvas_cache.clear()
        _canvas_cache[key] = load_inpaint_canvas(job.init_img, job.mask, request.inpaint)
    return _canvas_cache[key]


def _low_res_image(request, job):
    """The upscaler's input ([1, 3, h, w], files/low_res.py); the last one read is kept."""
    if job.mask is not None:
        raise UsageError(f"a mask ({job.mask}) needs the inpaint subcommand; upscale takes none")
    if job.init_img is None:
        raise UsageError("upscale needs an input image: pass --image PATH (or init_img on the line)")
    from sd_cli.files.low_res import load_low_res

    key = ("low-res", job.init_img, request.upscale.fit)
    if key not in _init_cache:
        _init_cache.clear()
        _init_cache[key] = load_low_res(job.init_img, request.upscale.fit)
    return _init_cache[key]


def _depth_source(request):
    """depth2img's depth maps (depth2img.DepthSource), one per run: MiDaS runs once per input image."""
    from sd_cli.pipelines.depth2img import DepthSource

    if request.depth not in _depth_sources:
        _depth_sources.clear()
        _depth_sources[request.depth] = DepthSource(request.depth)
    return _depth_sources[request.depth]
