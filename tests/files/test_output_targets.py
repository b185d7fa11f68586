"""-o onto things that are not regular files: refused up front and at write time, links written through."""

import os
import stat

import numpy as np
import pytest
from PIL import Image

from sd_cli.errors import OutputError, UsageError
from sd_cli.files import output

IMAGE = np.full((8, 8, 3), 77, np.uint8)
REFUSAL = "sd-cli writes regular files only, so give a file name"


def test_a_fifo_named_without_suffix_is_refused_not_suffixed(tmp_path):
    fifo = tmp_path / "full"
    os.mkfifo(fifo)
    with pytest.raises(UsageError) as err:
        output.output_paths(str(fifo), 1)
    assert str(err.value) == f"-o {fifo}: {fifo} is a named pipe (FIFO); {REFUSAL}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_a_device_is_refused(device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    with pytest.raises(UsageError, match=f"^-o {device}: {device} is a character device; {REFUSAL}$"):
        output.output_paths(device, 1)


def test_a_symlink_to_a_device_is_refused_and_kept(tmp_path):
    link = tmp_path / "out.png"
    link.symlink_to("/dev/null")
    with pytest.raises(UsageError, match=f"out.png is a symbolic link to /dev/null, which is a character device; {REFUSAL}$"):
        output.output_paths(str(link), 1)
    with pytest.raises(OutputError, match="which is a character device"):
        output.save_image(IMAGE, link)
    assert link.is_symlink() and os.readlink(link) == "/dev/null"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_symlink_to_a_pipe_descriptor_is_refused(tmp_path):
    """As -o through a link to /proc/self/fd/1 when stdout is a pipe."""
    read_end, write_end = os.pipe()
    link = tmp_path / "stdout.png"
    link.symlink_to(f"/proc/self/fd/{write_end}")
    try:
        with pytest.raises(UsageError, match=rf"stdout\.png is a symbolic link to /proc/self/fd/{write_end}, "
                                             rf"which is a named pipe \(FIFO\); {REFUSAL}$"):
            output.output_paths(str(link), 1)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert link.is_symlink()


def test_a_dangling_symlink_is_refused(tmp_path):
    link = tmp_path / "out.png"
    link.symlink_to(tmp_path / "nowhere" / "x.png")
    with pytest.raises(UsageError, match="which is missing; give a file name, or create the link's target first$"):
        output.output_paths(str(link), 1)


def test_pattern_names_are_checked_each(tmp_path):
    os.mkfifo(tmp_path / "out-1.png")
    with pytest.raises(UsageError, match=r"out-1\.png is a named pipe"):
        output.output_paths(str(tmp_path / "out-{index}.png"), 2)


def test_a_symlink_to_a_regular_file_is_written_through(tmp_path):
    target = tmp_path / "real" / "target.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert output.output_paths(str(link), 1) == [link]
    assert output.save_image(IMAGE, link, "a cat\nSteps: 1") == target
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert np.array_equal(np.asarray(Image.open(target)), IMAGE)
    assert sorted(p.name for p in target.parent.iterdir()) == ["target.png"]  # temp file went next to the target


def test_save_image_refuses_a_fifo_that_appeared_after_planning(tmp_path):
    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="late.png is a named pipe"):
        output.save_image(IMAGE, fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["late.png"]


@pytest.mark.usefixtures("one_thread")
def test_cli_refuses_a_fifo_before_loading(run_cli, tmp_path):
    fifo = tmp_path / "full"
    os.mkfifo(fifo)
    result = run_cli("txt2img", "a cat", "--seed", "1", "--ckpt", tmp_path / "missing.ckpt", "-o", fifo)
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [f"error: -o {fifo}: {fifo} is a named pipe (FIFO); {REFUSAL}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_save_depth_is_written_like_every_output(tmp_path):
    """--save-depth: atomic, refused onto a pipe, a PNG even without a suffix."""
    import torch

    from sd_cli.pipelines.depth2img import DepthOptions, DepthSource

    given = tmp_path / "given.png"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(given)
    fifo = tmp_path / "depth-pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="depth-pipe is a named pipe"):
        DepthSource(DepthOptions(depth_map=given, save_depth=fifo)).for_image(None, "a", torch.zeros(1, 3, 64, 64))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    DepthSource(DepthOptions(depth_map=given, save_depth=tmp_path / "out" / "depth")).for_image(None, "a", torch.zeros(1, 3, 64, 64))
    with Image.open(tmp_path / "out" / "depth") as saved:
        assert (saved.format, saved.mode, saved.size) == ("PNG", "L", (64, 64))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["depth"]


@pytest.mark.usefixtures("one_thread")
def test_cli_refuses_a_named_file_that_is_a_pipe_before_loading(run_cli, tmp_path):
    os.mkfifo(tmp_path / "cat.png")
    result = run_cli("txt2img", "a cat", "--seed", "1", "--ckpt", tmp_path / "missing.ckpt", "--outdir", tmp_path,
                     "--name", "cat")
    assert result.code == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'cat.png'} is a named pipe (FIFO); {REFUSAL}"]


def test_dash_is_not_stdout_nor_a_file_named_dash():
    with pytest.raises(UsageError, match=r"^-o -: sd-cli does not write images to stdout \(it prints the written paths there\); "
                                         "give a file name$"):
        output.output_paths("-", 1)
