"""Pixels, watermark, infotext and output files: sd_cli.files.images, .watermark, .metadata, .output."""

import errno
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from sd_cli.files import images
from sd_cli.files import infotext as metadata
from sd_cli.files import output
from sd_cli.files import watermark
from sd_cli.errors import SdCliError, UsageError


def natural_image(h, w, seed=0):
    """Smooth colour gradients plus sensor-like noise: a stand-in for a decoded sample."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    phase = rng.uniform(0, 6, 3)
    rgb = np.stack([120 + 80 * np.sin(3 * x + y + phase[0]),
                    100 + 90 * np.cos(2 * y - x + phase[1]),
                    140 + 60 * np.sin(4 * x * y + phase[2])], axis=-1)
    return np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)


def one_line(error):
    return "\n" not in str(error) and str(error).strip() == str(error)


# -- to_uint8 ----------------------------------------------------------------------------------

def test_to_uint8_truncates_and_clamps():
    values = [-1.0, 0.0, 0.999, 1.0, -2.0, 2.0, 0.5, -0.99]
    x = torch.tensor(values).view(1, 1, 1, -1).expand(1, 3, 1, len(values))
    (out,) = images.to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, len(values), 3)
    # 0.999 -> 1.999/2*255 = 254.87 -> 254 (truncated); 0 -> 127.5 -> 127; -0.99 -> 1.275 -> 1
    assert out[0, :, 0].tolist() == [0, 127, 254, 255, 0, 255, 191, 1]


def test_to_uint8_layout_and_batch():
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 5).view(2, 3, 4, 5)
    out = images.to_uint8(x)
    assert len(out) == 2 and all(o.shape == (4, 5, 3) for o in out)
    expected = (255.0 * torch.clamp((x + 1) / 2, 0, 1).permute(0, 2, 3, 1).numpy()).astype(np.uint8)
    assert np.array_equal(np.stack(out), expected)


def test_to_uint8_fp16_is_computed_in_float32():
    x = torch.tensor([0.999, 0.3, -0.7], dtype=torch.float16).view(1, 1, 1, 3).repeat(1, 3, 1, 1)
    (out,) = images.to_uint8(x)
    x32 = x.float()  # fp16 0.999 is 0.99902344 -> 254.875 -> 254
    expected = (255.0 * torch.clamp((x32 + 1) / 2, 0, 1).permute(0, 2, 3, 1).numpy()).astype(np.uint8)
    assert np.array_equal(out, expected[0])
    assert out[0, 0, 0] == 254


def test_to_uint8_nan_becomes_black_with_warning(capsys):
    x = torch.zeros(1, 3, 2, 2)
    x[0, :, 0, 0] = float("nan")
    (out,) = images.to_uint8(x)
    assert out[0, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == [127, 127, 127]
    assert "NaN" in capsys.readouterr().err


# -- make_grid ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n, per_row", [(1, 1), (1, 3), (3, 2), (4, 4), (5, 2), (2, 5)])
def test_make_grid_matches_torchvision(n, per_row):
    from torchvision.utils import make_grid as tv_make_grid

    x = torch.rand(n, 3, 6, 10, generator=torch.Generator().manual_seed(n)) * 2.2 - 1.1
    # The original: make_grid on the clamped [0, 1] tensor, then 255. * ... .astype(uint8).
    tv = tv_make_grid(torch.clamp((x + 1) / 2, 0, 1), nrow=per_row, padding=2)
    expected = (255.0 * tv.permute(1, 2, 0).numpy()).astype(np.uint8)
    grid = images.make_grid(images.to_uint8(x), per_row)
    assert grid.shape == expected.shape
    assert np.array_equal(grid, expected)


def test_make_grid_size_rule():
    tiles = [np.full((6, 10, 3), 200, np.uint8)] * 3
    grid = images.make_grid(tiles, 2)  # 2 columns, 2 rows of (6+2)x(10+2) cells + 2 px border
    assert grid.shape == (2 * 8 + 2, 2 * 12 + 2, 3)
    assert grid[:2].max() == 0 and grid[:, :2].max() == 0  # black gutters
    assert grid[10:16, 14:24].max() == 0  # the missing fourth cell stays black


# -- load_init_image ---------------------------------------------------------------------------

def test_load_init_image_floors_to_multiples_of_64(tmp_path, capsys):
    path = tmp_path / "init.png"
    Image.fromarray(natural_image(300, 500)).save(path)
    x = images.load_init_image(path)
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 3, 256, 448)
    resized = np.asarray(Image.open(path).convert("RGB").resize((448, 256), Image.LANCZOS))
    expected = torch.from_numpy(resized.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    assert torch.allclose(x, expected, atol=1e-6, rtol=0)
    assert "resized 500x300 -> 448x256 (multiples of 64)" in capsys.readouterr().err


def test_load_init_image_keeps_exact_sizes(tmp_path, capsys):
    path = tmp_path / "init.png"
    rgba = np.dstack([natural_image(128, 192), np.full((128, 192), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(path)
    x = images.load_init_image(path)
    expected = torch.from_numpy(rgba[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    assert torch.equal(x, expected)
    assert "resized" not in capsys.readouterr().err


def test_load_init_image_errors(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(SdCliError) as e:
        images.load_init_image(missing)
    assert type(e.value) is SdCliError and str(missing) in str(e.value) and one_line(e.value)

    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    with pytest.raises(SdCliError) as e:
        images.load_init_image(text)
    assert type(e.value) is SdCliError and str(text) in str(e.value) and one_line(e.value)

    with pytest.raises(SdCliError) as e:
        images.load_init_image(tmp_path)
    assert type(e.value) is SdCliError and one_line(e.value)

    small = tmp_path / "small.png"
    Image.fromarray(natural_image(40, 100)).save(small)
    with pytest.raises(UsageError) as e:
        images.load_init_image(small)
    assert "100x40" in str(e.value) and one_line(e.value)


def test_load_init_image_truncated_file(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(natural_image(128, 128)).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(SdCliError) as e:
        images.load_init_image(path)
    assert str(path) in str(e.value) and one_line(e.value)


# -- watermark ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [watermark.WATERMARK_V2, watermark.WATERMARK_V1])
def test_watermark_round_trip(text):
    rgb = natural_image(512, 512, seed=len(text))
    marked = watermark.add_watermark(rgb, text)
    assert marked.shape == rgb.shape and marked.dtype == np.uint8
    assert not np.array_equal(marked, rgb)
    found, score = watermark.identify_watermark(marked)
    assert found == text and score >= watermark.MATCH_THRESHOLD


def test_watermark_same_bytes_as_original_pipeline():
    cv2 = pytest.importorskip("cv2")
    from imwatermark import WatermarkEncoder

    rgb = natural_image(320, 256, seed=3)
    encoder = WatermarkEncoder()
    encoder.set_watermark("bytes", b"SDV2")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    expected = encoder.encode(bgr, "dwtDct")[:, :, ::-1]
    assert np.array_equal(watermark.add_watermark(rgb, "SDV2"), expected)


def test_unmarked_image_is_not_identified():
    for seed in range(3):
        found, score = watermark.identify_watermark(natural_image(512, 512, seed=seed))
        assert found is None and score < watermark.MATCH_THRESHOLD
    flat = np.full((256, 256, 3), 128, np.uint8)
    assert watermark.identify_watermark(flat)[0] is None


def test_small_image_is_saved_without_watermark(capsys):
    from sd_cli import log

    rgb = natural_image(128, 128)
    with log.run_scope(quiet=False):
        out = watermark.add_watermark(rgb, "SDV2")
        assert np.array_equal(out, rgb)
        err = capsys.readouterr().err
        assert "too small for the invisible watermark" in err and "256x256" in err
        watermark.add_watermark(rgb, "SDV2")
        assert capsys.readouterr().err == ""  # once per run
    assert watermark.identify_watermark(rgb) == (None, 0.0)


def test_modules_import_nothing_heavy():
    code = ("import sys, sd_cli.files.images, sd_cli.files.watermark, sd_cli.files.infotext, sd_cli.files.output;"
            "print(sorted(m for m in ('torch', 'imwatermark', 'cv2', 'PIL') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- infotext ----------------------------------------------------------------------------------

FIELDS = {"Steps": 50, "Sampler": "DDIM", "CFG scale": 7.5, "Seed": 7, "Size": "512x512",
          "Model hash": "abc", "Model": "v2-1_512, ema", "Note": 'say "hi": now'}


def test_infotext_format():
    text = metadata.format_infotext("a cat", "blurry", {"Steps": 50, "Sampler": "DDIM", "Seed": 7})
    assert text == "a cat\nNegative prompt: blurry\nSteps: 50, Sampler: DDIM, Seed: 7"
    assert metadata.format_infotext("a cat", "", {"Steps": 5}) == "a cat\nSteps: 5"
    line = metadata.format_infotext("p", "", FIELDS).split("\n")[-1]
    assert 'Model: "v2-1_512, ema", Note: "say \\"hi\\": now"' in line


@pytest.mark.parametrize("prompt, negative", [
    ("a cat\nwearing a hat,\n  in the rain: watercolor", ""),
    ("", "blurry\nlow quality"),
    ("style: oil", ""),
    ("trailing newline\n", "x"),
])
def test_infotext_round_trip(prompt, negative):
    text = metadata.format_infotext(prompt, negative, FIELDS)
    assert ("Negative prompt:" in text) == bool(negative)
    assert metadata.parse_infotext(text) == (prompt, negative, {k: str(v) for k, v in FIELDS.items()})


def test_infotext_without_fields_round_trip():
    for prompt in ["style: oil", "a\nb: c", "x, Steps: 1, Seed: 2, Size: 3"]:
        assert metadata.parse_infotext(metadata.format_infotext(prompt, "", {})) == (prompt, "", {})


def test_parse_a1111_infotext():
    text = ('masterpiece, 1girl\nNegative prompt: bad hands\nSteps: 20, Sampler: Euler a, '
            'CFG scale: 7, Seed: 123, Size: 512x768, Lora hashes: "x: 1, y: 2", Version: v1.6.0')
    prompt, negative, fields = metadata.parse_infotext(text)
    assert (prompt, negative) == ("masterpiece, 1girl", "bad hands")
    assert fields["Lora hashes"] == "x: 1, y: 2" and fields["Version"] == "v1.6.0"
    assert list(fields)[:2] == ["Steps", "Sampler"]
    assert metadata.parse_infotext("just a prompt: really") == ("just a prompt: really", "", {})


@pytest.mark.parametrize("prompt", ["a red fox", "猫 in the snow — ünïcode"])
def test_png_carries_parameters_chunk(tmp_path, prompt):
    text = metadata.format_infotext(prompt, "", FIELDS)
    path = output.save_image(natural_image(64, 64), tmp_path / "x.png", text)
    with Image.open(path) as image:
        assert image.text["parameters"] == text
    assert metadata.parse_infotext(text)[0] == prompt


# -- output files ------------------------------------------------------------------------------

def touch(path, content=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def read_png(path):
    with Image.open(path) as image:
        return np.asarray(image)


def test_sample_numbering_continues_from_count_and_highest(tmp_path):
    for i in range(3):
        touch(tmp_path / "samples" / f"{i:05}.png")
    touch(tmp_path / "samples" / "notes.txt")
    plan = output.OutputPlan(tmp_path)
    # The original counts every entry (4); the highest number + 1 is 3: the larger wins.
    assert plan.next_sample_path() == tmp_path / "samples" / "00004.png"
    img = natural_image(8, 8)
    assert plan.save_sample(img) == tmp_path / "samples" / "00004.png"
    assert plan.save_sample(img) == tmp_path / "samples" / "00005.png"
    assert np.array_equal(read_png(tmp_path / "samples" / "00005.png"), img)


def test_sample_numbering_never_overwrites_after_a_gap(tmp_path):
    touch(tmp_path / "samples" / "00000.png", b"keep0")
    touch(tmp_path / "samples" / "00002.png", b"keep2")
    plan = output.OutputPlan(tmp_path)  # the original would count 2 and overwrite 00002.png
    assert plan.save_sample(natural_image(8, 8)).name == "00003.png"
    assert (tmp_path / "samples" / "00002.png").read_bytes() == b"keep2"


def test_sample_name_taken_meanwhile_is_skipped(tmp_path):
    plan = output.OutputPlan(tmp_path)
    assert plan.next_sample_path().name == "00000.png"
    touch(tmp_path / "samples" / "00000.png", b"other run")  # written by another process
    assert plan.save_sample(natural_image(8, 8)).name == "00001.png"
    assert (tmp_path / "samples" / "00000.png").read_bytes() == b"other run"


def test_fresh_outdir_and_grid_numbering(tmp_path):
    out = tmp_path / "new" / "dir"
    plan = output.OutputPlan(out)
    assert not out.exists()  # nothing is created before the first save
    assert plan.save_sample(natural_image(8, 8)) == out / "samples" / "00000.png"
    assert plan.save_grid(natural_image(8, 8)) == out / "grid-0000.png"
    assert plan.save_grid(natural_image(8, 8)) == out / "grid-0001.png"

    touch(tmp_path / "g" / "samples" / "00000.png")
    touch(tmp_path / "g" / "grid-0000.png")
    touch(tmp_path / "g" / "grid-0003.png")
    touch(tmp_path / "g" / "other.txt")
    # Entries besides samples/: 3; highest grid + 1: 4.
    assert output.OutputPlan(tmp_path / "g").grid_path().name == "grid-0004.png"
    touch(tmp_path / "h" / "grid-0000.png")
    touch(tmp_path / "h" / "a.txt")
    touch(tmp_path / "h" / "b.txt")
    assert output.OutputPlan(tmp_path / "h").grid_path().name == "grid-0003.png"


def test_concurrent_runs_share_an_outdir(tmp_path):
    plans = [output.OutputPlan(tmp_path) for _ in range(4)]  # all start counting at 00000
    written = []

    def run(plan, value):
        for _ in range(5):
            written.append((plan.save_sample(np.full((8, 8, 3), value, np.uint8)), value))

    threads = [threading.Thread(target=run, args=(p, 10 * i)) for i, p in enumerate(plans)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    paths = [p for p, _ in written]
    assert len(set(paths)) == 20
    assert sorted(p.name for p in paths) == [f"{i:05}.png" for i in range(20)]
    for path, value in written:
        assert read_png(path)[0, 0, 0] == value
    assert sorted(os.listdir(tmp_path / "samples")) == sorted(p.name for p in paths)


def test_numbering_without_hard_links(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    touch(tmp_path / "samples" / "00001.png", b"keep")
    plan = output.OutputPlan(tmp_path)
    plan._next_sample = 0
    assert plan.save_sample(natural_image(8, 8)).name == "00000.png"
    assert plan.save_sample(natural_image(8, 8)).name == "00002.png"
    assert (tmp_path / "samples" / "00001.png").read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path / "samples")) == ["00000.png", "00001.png", "00002.png"]


def test_output_pattern_rules(tmp_path):
    p = output.output_paths
    assert p("out.png", 1) == [output.Path("out.png")]
    assert p("out.png", 2) == [output.Path("out-0.png"), output.Path("out-1.png")]
    assert p("out", 1) == [output.Path("out.png")]
    assert p("out", 2) == [output.Path("out-0.png"), output.Path("out-1.png")]
    assert p("d/x.PNG", 2) == [output.Path("d/x-0.PNG"), output.Path("d/x-1.PNG")]
    assert p("run.v1.5", 1) == [output.Path("run.v1.5.png")]
    assert p("d/out-{index:03}.png", 2) == [output.Path("d/out-000.png"), output.Path("d/out-001.png")]
    assert p("{seed}", 2, seeds=[7, 8]) == [output.Path("7.png"), output.Path("8.png")]
    assert p("img-{seed}-{index}.png", 1, seeds=[42]) == [output.Path("img-42-0.png")]
    for bad, kwargs in [("out.gif", {}), ("{name}.png", {}), ("out-{index.png", {}),
                        ("s-{seed}.png", {"seeds": [5, 5]}), ("{index:q}.png", {})]:
        with pytest.raises(UsageError) as e:
            p(bad, 2, **kwargs)
        assert one_line(e.value)


def test_save_image_creates_parents_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "b" / "out.png"
    img = natural_image(16, 24)
    assert output.save_image(img, path) == path
    assert np.array_equal(read_png(path), img)
    output.save_image(img[::-1].copy(), path)  # -o names replace what is there
    assert np.array_equal(read_png(path), img[::-1])
    assert os.listdir(path.parent) == ["out.png"]


def test_save_image_failure_keeps_target_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    path.write_bytes(b"previous")

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(SdCliError) as e:
        output.save_image(natural_image(16, 16), path, "a prompt\nSteps: 1")
    assert str(path) in str(e.value) and "No space left on device" in str(e.value)
    assert one_line(e.value)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["out.png"]


def test_numbered_save_failure_cleans_up(tmp_path, monkeypatch):
    def failing_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    plan = output.OutputPlan(tmp_path)
    with pytest.raises(SdCliError) as e:
        plan.save_sample(natural_image(8, 8))
    assert "00000.png" in str(e.value) and one_line(e.value)
    assert os.listdir(tmp_path / "samples") == []


def test_save_image_into_unwritable_place(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SdCliError) as e:
        output.save_image(natural_image(8, 8), blocker / "out.png")
    assert str(blocker / "out.png") in str(e.value) and "not a folder" in str(e.value)
    assert one_line(e.value)


def test_output_pattern_that_is_a_folder(tmp_path):
    for folder in [str(tmp_path), str(tmp_path / "new") + "/"]:
        with pytest.raises(UsageError) as e:
            output.output_paths(folder, 1)
        assert "--outdir" in str(e.value) and one_line(e.value)
