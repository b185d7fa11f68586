"""The family of every packaged config, and the refusals that name the subcommand to use instead."""

import pytest

from sd_cli.errors import UsageError
from sd_cli.loading.config import load_config
from sd_cli.loading.packaged import packaged_config
from sd_cli.models.families import family_of


@pytest.mark.parametrize("yaml, name, subcommands, inpaint, native", [
    ("v1-inference.yaml", "sd1", ("txt2img", "img2img", "inpaint"), "blend", 512),
    ("v1-inpainting-inference.yaml", "sd1-inpaint", ("inpaint",), "concat", 512),
    ("v2-inference.yaml", "sd2", ("txt2img", "img2img", "inpaint"), "blend", 512),
    ("v2-inference-v.yaml", "sd2-v", ("txt2img", "img2img", "inpaint"), "blend", 512),  # the YAML says 64 latents
    ("v2-inpainting-inference.yaml", "sd2-inpaint", ("inpaint",), "concat", 512),
    ("v2-midas-inference.yaml", "sd2-depth", ("depth2img",), None, 512),
    ("sd-cli-tiny.yaml", "sd1", ("txt2img", "img2img", "inpaint"), "blend", 128),
])
def test_each_packaged_config_has_its_family(yaml, name, subcommands, inpaint, native):
    family = family_of(load_config(packaged_config(yaml)))
    assert (family.name, family.subcommands, family.inpaint_method, family.native_size) == (
        name, subcommands, inpaint, native)
    assert family.needs_depth == (name == "sd2-depth")


@pytest.mark.parametrize("yaml, mode, hint", [
    ("v1-inpainting-inference.yaml", "txt2img", "use sd-cli inpaint"),
    ("v2-midas-inference.yaml", "inpaint", "use depth2img for it"),
    ("v1-inpainting-inference.yaml", "depth2img", "use inpaint for it"),
    ("v1-inference.yaml", "depth2img", "use img2img for it"),
])
def test_refusals_name_the_subcommand_to_use(yaml, mode, hint):
    with pytest.raises(UsageError, match=hint):
        family_of(load_config(packaged_config(yaml))).check_serves(mode)
