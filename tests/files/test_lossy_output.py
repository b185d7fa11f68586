"""JPEG and WebP output where the name asks for it, parameters in EXIF UserComment as AUTOMATIC1111 writes them."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from sd_cli.errors import OutputError, SdCliError, UsageError
from sd_cli.files import infotext, output, reading

IMAGE = np.dstack([np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))] * 3)
TEXT = "a cat, 猫\nNegative prompt: blurry\nSteps: 2, Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 64x64"
# piexif.dump of a UserComment made with piexif.helper.UserComment.dump(..., encoding="unicode"): the
# bytes AUTOMATIC1111 inserts into its JPEG and WebP files.
A1111_EXIF = bytes.fromhex(
    "4578696600004d4d002a00000008000187690004000000010000001a000000000001928600070000009200000028554e49434f4445"
    "0000610020006300610074000a00530074006500700073003a002000320030002c002000530061006d0070006c00650072003a0020"
    "00450075006c0065007200200061002c00200043004600470020007300630061006c0065003a00200037002c002000530065006500"
    "64003a00200035002c002000530069007a0065003a002000360034007800360034")


@pytest.mark.parametrize("name, expected", [
    ("x.jpg", ["x.jpg"]), ("x.JPEG", ["x.JPEG"]), ("x.webp", ["x.webp"]), ("d/o-{index}.webp", ["d/o-0.webp", "d/o-1.webp"]),
    ("o.jpg", ["o-0.jpg", "o-1.jpg"]),
])
def test_lossy_names_are_kept(name, expected):
    assert output.output_paths(name, len(expected)) == [output.Path(e) for e in expected]


@pytest.mark.parametrize("name", ["x.gif", "x.tif", "x.bmp"])
def test_other_image_suffixes_are_refused(name):
    with pytest.raises(UsageError, match=f"^-o {name}: sd-cli writes PNG, JPEG and WebP files; use a .png, .jpg or .webp name$"):
        output.output_paths(name, 1)


@pytest.mark.parametrize("suffix, image_format", [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP")])
def test_save_image_writes_the_format_with_the_parameters(tmp_path, suffix, image_format):
    path = output.save_image(IMAGE, tmp_path / f"x{suffix}", TEXT)
    with Image.open(path) as image:
        assert image.format == image_format
        assert infotext.user_comment_text(image) == TEXT
        decoded = np.asarray(image.convert("RGB")).astype(int)
    assert np.abs(decoded - IMAGE).mean() < 3  # lossy, at quality 80
    assert reading.read_infotext(path) == TEXT
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"x{suffix}"]


def test_exif_block_is_the_one_piexif_reads():
    """Big-endian TIFF, UserComment of type UNDEFINED (7) with the UNICODE code and UTF-16BE text."""
    block = infotext.exif_with_infotext("hi")
    assert block == (b"Exif\0\0MM\0*\0\0\0\x08" + b"\0\x01\x87\x69\0\x04\0\0\0\x01\0\0\0\x1a\0\0\0\0"
                     + b"\0\x01\x92\x86\0\x07\0\0\0\x0c\0\0\0\x2c\0\0\0\0" + b"UNICODE\0\0h\0i")


def test_reads_an_automatic1111_jpeg(tmp_path):
    path = tmp_path / "a1111.jpg"
    Image.fromarray(IMAGE).save(path, quality=80, exif=A1111_EXIF)
    record = reading.info_record(path)
    assert (record["prompt"], record["seed"], record["steps"], record["sampler"]) == ("a cat", 5, 20, "euler_a")


def test_little_endian_exif_unicode_is_read_in_its_byte_order(tmp_path):
    comment = b"UNICODE\0" + "a dog".encode("utf_16_le")
    block = (b"Exif\0\0II*\0\x08\0\0\0" + b"\x01\0\x69\x87\x04\0\x01\0\0\0\x1a\0\0\0\0\0\0\0"
             + b"\x01\0\x86\x92\x07\0" + len(comment).to_bytes(4, "little") + b"\x2c\0\0\0\0\0\0\0" + comment)
    buffer = io.BytesIO()
    Image.fromarray(IMAGE).save(buffer, "JPEG", exif=block)
    assert infotext.user_comment_text(Image.open(buffer)) == "a dog"


def test_a_jpeg_without_parameters_is_one_error(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.fromarray(IMAGE).save(path)
    with pytest.raises(SdCliError, match="has no recorded parameters \\(no 'parameters' text chunk or EXIF UserComment\\)"):
        reading.read_infotext(path)


def test_parameters_too_long_for_a_jpeg_leave_nothing(tmp_path):
    target = tmp_path / "long.jpg"
    with pytest.raises(OutputError) as err:
        output.save_image(IMAGE, target, "x" * 40000)
    assert str(err.value) == (f"cannot write {target}: its parameters do not fit a JPEG's 64 KiB EXIF block; "
                              "use a .png or .webp name")
    assert list(tmp_path.iterdir()) == []
    longest = "x" * ((output.JPEG_MAX_EXIF - len(infotext.exif_with_infotext(""))) // 2)  # UTF-16: 2 bytes a character
    assert output.save_image(IMAGE, target, longest) == target and reading.read_infotext(target) == longest


@pytest.mark.usefixtures("one_thread")
def test_cli_jpeg_and_webp_round_trip(run_cli, sd1_ckpt, tmp_path):
    first = tmp_path / "a.jpg"
    result = run_cli("txt2img", "a red circle", "--ckpt", sd1_ckpt, "--steps", "2", "--seed", "9", "-o", first)
    assert result.code == 0, result.stderr
    assert Image.open(first).format == "JPEG"
    info = run_cli("info", first, "--json")
    assert info.code == 0, info.stderr
    record = json.loads(info.stdout)
    assert (record["prompt"], record["seed"], record["steps"], record["sampler"]) == ("a red circle", 9, 2, "ddim")

    again = tmp_path / "b.webp"
    result = run_cli("txt2img", "--from-png", first, "--ckpt", sd1_ckpt, "-o", again)
    assert result.code == 0, result.stderr
    assert Image.open(again).format == "WEBP"
    assert reading.info_record(again)["seed"] == 9 and reading.read_infotext(again) == reading.read_infotext(first)


@pytest.mark.usefixtures("one_thread")
def test_cli_name_template_with_webp(run_cli, sd1_ckpt, tmp_path):
    result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, "--steps", "1", "--seed", "3", "--n-samples", "2",
                     "--outdir", tmp_path, "--name", "{index}-{seed}.webp")
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0-3.webp", "1-4.webp"]
    assert all(Image.open(tmp_path / n).format == "WEBP" for n in os.listdir(tmp_path))
