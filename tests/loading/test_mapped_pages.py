"""Giving back a memory-mapped checkpoint's pages after its tensors were copied (sd_cli/mapped_pages.py)."""

import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sd_cli.loading.loader import load_model
from sd_cli.loading.mapped_pages import MappedFile

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps is Linux's")
MIB = 2**20


def resident_file_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.fixture
def fp16_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    generator = torch.Generator().manual_seed(0)
    save_file({f"w{i}": torch.randn(1024, 4096, generator=generator).half() for i in range(8)}, str(path))  # 64 MiB
    return path


def test_release_gives_back_the_pages_and_the_values_stay_readable(fp16_file):
    with safe_open(str(fp16_file), framework="pt", device="cpu") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    before = resident_file_bytes()
    copies = {key: tensor.float() for key, tensor in tensors.items()}  # reads every page of the file
    assert resident_file_bytes() - before > 56 * MIB
    mapped = MappedFile(fp16_file)
    for tensor in tensors.values():
        mapped.release(tensor)
    assert resident_file_bytes() - before < 8 * MIB
    for key, tensor in tensors.items():  # read back from the file: the same values
        assert torch.equal(tensor.float(), copies[key])


def test_release_leaves_memory_that_is_not_the_files_alone(fp16_file):
    mapped = MappedFile(fp16_file)
    assert mapped.ranges == []  # nothing of the file is mapped yet
    with safe_open(str(fp16_file), framework="pt", device="cpu") as f:
        mapped = MappedFile(fp16_file)
        assert len(mapped.ranges) >= 1
        anonymous = torch.randn(1024, 1024)
        kept = anonymous.clone()
        mapped.release(anonymous)
        assert torch.equal(anonymous, kept)
        del f


def test_a_cast_load_holds_the_files_values(sd1_safetensors):
    """The cast copies are taken before the pages go: the model holds the file's values."""
    loaded = load_model(sd1_safetensors, dtype=torch.bfloat16)
    with safe_open(str(sd1_safetensors), framework="pt", device="cpu") as f:
        key = "model.diffusion_model.input_blocks.0.0.weight"
        expected = f.get_tensor(key).to(torch.bfloat16)
    actual = loaded.model.model.diffusion_model.input_blocks[0][0].weight
    assert actual.dtype == torch.bfloat16
    assert torch.equal(actual, expected)


def resident_bytes_of(path) -> int:
    """Resident bytes of this process's mappings of `path` (/proc/self/smaps)."""
    ranges = MappedFile(path).ranges
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            low, high = (int(part, 16) for part in fields[0].split("-"))
            inside = (low, high) in ranges
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def test_with_parts_left_in_the_file_no_page_the_load_read_stays_resident(sd1_safetensors):
    """The file stays mapped while parts wait in it. The pages the load read for the tensors it copied, and
    the neighbours the kernel mapped with them (fault-around: the parts left in the file included), are
    given back; without that a third of this file stayed resident."""
    from sd_cli.runtime.waiting_parts import waiting_keys

    model = load_model(sd1_safetensors, dtype=torch.bfloat16, defer=waiting_keys()).model
    assert model.deferred is not None and len(MappedFile(sd1_safetensors).ranges) >= 1  # still mapped
    assert resident_bytes_of(sd1_safetensors) < sd1_safetensors.stat().st_size / 50
