"""The seed range: every image's seed is one torch can tell apart and --from-png reads back."""

import pytest
import torch

from sd_cli.errors import UsageError
from sd_cli.fields import MAX_SEED
from sd_cli.run import jobs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_seeds_past_32_bits_draw_the_same_noise():
    """Why MAX_SEED is 2**32 - 1: torch's CPU generator keeps a seed's low 32 bits."""
    def noise(seed):
        return torch.randn(8, generator=torch.Generator("cpu").manual_seed(seed))

    assert MAX_SEED == 2**32 - 1
    assert torch.equal(noise(5), noise(5 + 2**32))
    assert not torch.equal(noise(5), noise(6))


def test_the_last_seed_is_allowed():
    built = jobs.build_jobs([jobs.Request({"prompt": "a"})], jobs.Defaults({"seed": MAX_SEED - 1}, count=2))
    assert [job.seed for job in built] == [MAX_SEED - 1, MAX_SEED]


def test_base_seed_plus_image_number_past_the_range_is_refused():
    with pytest.raises(UsageError) as err:
        jobs.build_jobs([jobs.Request({"prompt": "a"})], jobs.Defaults({"seed": MAX_SEED}, count=3))
    assert str(err.value) == (f"image 1 would get seed {MAX_SEED + 1}, above the largest seed {MAX_SEED} "
                              "(image seeds count up from the base seed); use a seed 2 lower")


def test_a_lines_own_seed_past_the_range_names_the_line():
    requests = [jobs.Request({"prompt": "a"}, line=1), jobs.Request({"prompt": "b", "seed": MAX_SEED, "n_samples": 2}, line=4)]
    with pytest.raises(UsageError, match=rf"^line 4: image 2 would get seed {MAX_SEED + 1},"):
        jobs.build_jobs(requests, jobs.Defaults({"seed": 0}))


def test_cli_refuses_an_overflowing_run_before_loading(run_cli, tmp_path):
    result = run_cli("txt2img", "a cat", "--seed", MAX_SEED, "--n-samples", 2, "--ckpt", tmp_path / "missing.ckpt",
                     "--outdir", tmp_path)
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: image 1 would get seed {MAX_SEED + 1}, above the largest seed {MAX_SEED} "
        "(image seeds count up from the base seed); use a seed 1 lower"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", [MAX_SEED + 1, 2**63 - 1])
def test_cli_refuses_a_seed_above_the_range(run_cli, tmp_path, seed):
    result = run_cli("txt2img", "a cat", "--seed", seed, "--ckpt", tmp_path / "missing.ckpt", "--outdir", tmp_path)
    assert result.code == 2
    assert f"--seed {seed} is out of range; use 0 to {MAX_SEED}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_random_seeds_leave_room_for_the_run(monkeypatch):
    from sd_cli.cli import request_builder

    drawn = []
    monkeypatch.setattr(request_builder.secrets, "randbelow", lambda n: drawn.append(n) or n - 1)
    assert request_builder._random_seed() == 2**31 - 1
    assert drawn == [2**31] and 2**31 - 1 + 2**31 <= MAX_SEED


def test_from_png_with_a_seed_past_the_range_blames_the_image(run_cli, tmp_path):
    import numpy as np

    from sd_cli.files.output import save_image

    png = save_image(np.zeros((64, 64, 3), np.uint8), tmp_path / "old.png",
                     "a cat\nSteps: 2, Sampler: DDIM, CFG scale: 7.5, Seed: 9223372036854775808, Size: 64x64")
    result = run_cli("txt2img", "--from-png", png, "--ckpt", tmp_path / "missing.ckpt", "-o", tmp_path / "again.png")
    assert result.code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {png}: recorded Seed 9223372036854775808 is out of range; use 0 to {MAX_SEED} (or -1 for the run's seed)")
    given = run_cli("txt2img", "--from-png", png, "--seed", 5, "--ckpt", tmp_path / "missing.ckpt", "-o", tmp_path / "again.png")
    assert "out of range" not in given.stderr and "checkpoint not found" in given.stderr
