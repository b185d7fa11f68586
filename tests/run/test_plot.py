"""--xy: X/Y/Z plots. The axes and their errors (no model), the labelled grid's layout in pixels, and
whole runs on the tiny SD 1 checkpoint: every combination written with its own parameters, each cell
reproducible alone with --from-png, one grid recording the axes."""

import json

import numpy as np
import pytest
from PIL import Image

from cli_helpers import cli
from sd_cli.cli.app import _one_xy_per_axis
from sd_cli.errors import UsageError
from sd_cli.files.infotext import parse_infotext
from sd_cli.files.plot_grid import GRID_GAP, MISSING_GREY, draw_plot_grid
from sd_cli.run.plot import parse_plot

FAST = ["--seed", "11", "--no-watermark", "--progress", "none"]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def recorded(path) -> dict:
    return parse_infotext(Image.open(path).text["parameters"])[2]


def plot(*axes, prompt="a red cat", negative="", mode="txt2img", per_cell=1):
    return parse_plot(list(axes), prompt, negative, mode, per_cell)


# -- the axes -------------------------------------------------------------------------------------

def test_axes_take_any_spelling_of_a_field_and_automatic1111_ranges():
    made = plot("steps=10-30 (+10)", "CFG scale=5, 7.5", "sampler_name=Euler a,DPM++ 2M Karras")
    assert [axis.field for axis in made.axes] == ["steps", "scale", "sampler"]
    assert [axis.values for axis in made.axes] == [(10, 20, 30), (5.0, 7.5), ("euler_a", "dpmpp_2m_karras")]
    assert made.shape == (3, 2, 2)
    assert made.cells()[-1] == (2, 1, 1) and len(made.cells()) == 12
    assert made.recorded() == {"Script": "X/Y/Z plot", "X Type": "Steps", "X Values": "10-30 (+10)",
                               "Y Type": "CFG scale", "Y Values": "5, 7.5",
                               "Z Type": "Sampler", "Z Values": "Euler a,DPM++ 2M Karras"}
    assert plot("seed=1-3").axes[0].values == (1, 2, 3)
    assert plot("seed=5-3").axes[0].values == (5, 4, 3)
    assert plot("cfg_scale=0.5-1.5 (+0.5)").axes[0].values == (0.5, 1.0, 1.5)
    assert plot("ddim_steps=4", "W=64,128").axes[1].values == (64, 128)


def test_cells_run_x_fastest_and_share_the_base_seed():
    made = plot("steps=1,2", "scale=3,4")
    assert made.cells() == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    values = [request.values for request in made.requests("a red cat", "", 42)]
    assert values == [{"prompt": "a red cat", "seed": 42, "steps": s, "scale": c} for c in (3.0, 4.0) for s in (1, 2)]
    seeds = plot("seed=7,9").requests("a red cat", "", 42)
    assert [r.values["seed"] for r in seeds] == [7, 9]  # the axis wins over the base seed
    batched = plot("steps=1,2", per_cell=2)
    assert [batched.cell_of(i) for i in range(6)] == [(0, 0, 0), (0, 0, 0), (1, 0, 0), (1, 0, 0), (0, 0, 0), (0, 0, 0)]


def test_prompt_search_and_replace_as_automatic1111():
    made = plot("Prompt S/R=red,blue,green", negative="red eyes")
    values = [r.values for r in made.requests("a red cat", "red eyes", 1)]
    assert [(v["prompt"], v["negative_prompt"]) for v in values] == [
        ("a red cat", "red eyes"), ("a blue cat", "blue eyes"), ("a green cat", "green eyes")]
    assert made.axes[0].labels() == ["red", "blue", "green"]
    assert made.recorded() == {"Script": "X/Y/Z plot", "X Type": "Prompt S/R", "X Values": "red,blue,green"}


def test_labels_name_the_field_and_its_value():
    made = plot("sampler=euler_a,dpmpp_2m", "steps=4,8")
    assert made.axes[0].labels() == ["Sampler: Euler a", "Sampler: DPM++ 2M"]
    assert made.axes[1].labels() == ["Steps: 4", "Steps: 8"]
    assert plot("width=64").axes[0].labels() == ["Width: 64"]


@pytest.mark.parametrize("axes, message", [
    (["stepz=1,2"], "--xy 'stepz=1,2': unknown field 'stepz'; axes take prompt, negative_prompt, steps, sampler, scale,"),
    (["clip_skip=1,2"], "--xy 'clip_skip=1,2': clip_skip is set once per run, not per image, so it cannot be an axis"),
    (["hires-steps=1,2"], "hires-steps is set once per run, not per image"),
    (["n_samples=1,2"], "n_samples is not a per-image value"),
    (["steps=ten"], "--xy 'steps=ten': 'ten' is not an integer"),
    (["steps=0,5"], "--xy 'steps=0,5': steps 0 is out of range; use 1 to 1000"),
    (["width=100"], "width 100 is not a multiple of 64"),
    (["sampler=eular"], "--xy 'sampler=eular': sampler 'eular' is unknown (did you mean euler or euler_a?)"),
    (["steps="], "no values after '='"),
    (["steps=1,,2"], "an empty value between commas"),
    (["scale=1-2"], "the range '1-2' needs a step"),
    (["steps=1-5 (-1)"], "never reaches its end"),
    (["steps=1", "ddim_steps=2"], "Steps is already the axis 'steps=1'"),
    (["steps=1", "scale=2", "seed=3", "eta=0"], "--xy takes at most 3 axes (X, Y, Z), got 4"),
    (["prompt_sr=dog,cat"], "Prompt S/R's first value 'dog' is not in the prompt"),
    (["prompt_sr=red"], "needs the word to search and at least one replacement"),
    (["init_img=a.png,b.png"], "txt2img takes no --init-img"),
    (["seed=-1,3"], "seed -1 has no fixed value"),
])
def test_bad_axes_say_what_is_wrong(axes, message):
    with pytest.raises(UsageError) as raised:
        plot(*axes)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_axis_words_after_xy_each_get_their_own_flag():
    assert _one_xy_per_axis(["txt2img", "a cat", "--xy", "steps=1,2", "scale=5,7.5", "Prompt S/R=cat,dog", "-s", "1"]) == [
        "txt2img", "a cat", "--xy", "steps=1,2", "--xy", "scale=5,7.5", "--xy", "Prompt S/R=cat,dog", "-s", "1"]
    assert _one_xy_per_axis(["txt2img", "--xyz=steps=1", "seed=2", "a cat"]) == [
        "txt2img", "--xyz=steps=1", "--xy", "seed=2", "a cat"]
    # a word without FIELD= is the prompt, wherever it is
    assert _one_xy_per_axis(["txt2img", "--xy", "steps=1", "a cat with a=b"]) == ["txt2img", "--xy", "steps=1", "a cat with a=b"]


@pytest.mark.parametrize("extra, message", [
    (["--xy", "steps=1,x"], "error: --xy 'steps=1,x': 'x' is not an integer\n"),
    (["--xy", "steps=1", "-o", "one.png"], "error: --xy writes every cell and the plot's grid into --outdir; drop -o"),
])
def test_bad_axis_is_a_usage_error_before_the_model_loads(capsys, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "txt2img", "a cat", "--ckpt", tmp_path / "missing.ckpt", *extra)
    assert (code, out) == (2, "")
    assert err.startswith(message) and len(err.splitlines()) == 1  # the missing checkpoint is not reached
    assert list(tmp_path.iterdir()) == []


def test_xy_is_not_sent_to_a_server(capsys, tmp_path):
    code, out, err = cli(capsys, "txt2img", "a cat", "--xy", "steps=1,2", "--server", "http://127.0.0.1:9",
                         "--outdir", tmp_path / "o")
    assert (code, out) == (2, "")
    assert err == "error: --xy's labelled grid is drawn by a local run; drop --server (or --xy)\n"
    assert not (tmp_path / "o").exists()


def test_xy_refuses_a_prompt_file(capsys, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    code, _, err = cli(capsys, "txt2img", "--from-file", prompts, "--xy", "steps=1,2", "--outdir", tmp_path / "o")
    assert code == 2 and err == "error: --xy plots one prompt; drop --from-file (or plot each prompt in its own run)\n"


# -- the grid ---------------------------------------------------------------------------------------

def flat(value, size=32):
    return np.full((size, size, 3), value, dtype=np.uint8)


def test_grid_layout_labels_and_missing_cells():
    cells = {(0, 0, 0): flat(10), (1, 0, 0): flat(20), (0, 1, 0): flat(30)}  # (1, 1) missing
    grid = draw_plot_grid(cells, (2, 2, 1), (["Steps: 1", "Steps: 2"], ["A", "B"], []))
    height, width = grid.shape[:2]
    top, left = height - 2 * 32, width - 2 * 32
    assert top > 0 and left > 0
    assert (grid[top:top + 32, left:left + 32] == 10).all()
    assert (grid[top:top + 32, left + 32:] == 20).all()
    assert (grid[top + 32:, left:left + 32] == 30).all()
    assert (grid[top + 32:, left + 32:] == MISSING_GREY).all()
    for column in range(2):  # each X label leaves dark pixels above its own column
        assert grid[:top, left + column * 32:left + (column + 1) * 32].min() < 100
    for row in range(2):
        assert grid[top + row * 32:top + (row + 1) * 32, :left].min() < 100
    assert (grid[:top, :left] == 255).all()  # the corner has no label


def test_grid_without_y_axis_has_no_left_margin_and_z_grids_sit_side_by_side():
    one_axis = draw_plot_grid({(0, 0, 0): flat(1), (1, 0, 0): flat(2)}, (2, 1, 1), (["a", "b"], [], []))
    assert one_axis.shape[1] == 64 and one_axis.shape[0] > 32
    cells = {(x, 0, z): flat(50 + x + z) for x in range(2) for z in range(3)}
    three = draw_plot_grid(cells, (2, 1, 3), (["a", "b"], [], ["z0", "z1", "z2"]))
    assert three.shape[1] == 3 * 64 + 2 * GRID_GAP
    assert (three[:, 64:64 + GRID_GAP] == 255).all()
    assert (three[-32:, 64 + GRID_GAP:64 + GRID_GAP + 32] == 51).all()  # z=1, x=0


def test_cells_of_different_sizes_take_the_largest():
    grid = draw_plot_grid({(0, 0, 0): flat(9, 32), (1, 0, 0): flat(9, 64)}, (2, 1, 1), (["small", "large"], [], []))
    assert grid.shape[1] == 128
    top = grid.shape[0] - 64
    assert (grid[top:top + 32, :32] == 9).all() and (grid[top:top + 32, 32:64] == 255).all()  # white beside it
    assert (grid[top + 32:, :64] == 255).all() and (grid[top:, 64:] == 9).all()


# -- whole runs -------------------------------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
def test_txt2img_plot_writes_every_combination_and_a_labelled_grid(run_cli, sd1_ckpt, tmp_path):
    out = tmp_path / "out"
    result = run_cli("txt2img", "a red cat", "--ckpt", sd1_ckpt, *FAST, "--outdir", out, "--json",
                     "--xy", "steps=1,2", "scale=1,7.5")
    assert result.code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    samples = sorted((out / "samples").iterdir())
    assert [p.name for p in samples] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert sorted(p.name for p in out.iterdir()) == ["grid-0000.png", "samples"]
    assert [(r["steps"], r["scale"], r["seed"]) for r in records[:4]] == [(1, 1.0, 11), (2, 1.0, 11), (1, 7.5, 11), (2, 7.5, 11)]
    assert records[4] == {"path": str(out / "grid-0000.png"), "grid": True}
    for path, (steps, scale) in zip(samples, [("1", "1.0"), ("2", "1.0"), ("1", "7.5"), ("2", "7.5")]):
        assert (recorded(path)["Steps"], recorded(path)["CFG scale"], recorded(path)["Seed"]) == (steps, scale, "11")
    grid = pixels(out / "grid-0000.png")
    top, left = grid.shape[0] - 2 * 64, grid.shape[1] - 2 * 64
    assert top > 0 and left > 0
    for k, path in enumerate(samples):  # each cell is its image, X along the top, Y down the side
        y, x = divmod(k, 2)
        assert np.array_equal(grid[top + 64 * y:top + 64 * (y + 1), left + 64 * x:left + 64 * (x + 1)], pixels(path))
    assert grid[:top, left:].min() < 100 and grid[top:, :left].min() < 100  # labels drawn
    axes = recorded(out / "grid-0000.png")
    assert (axes["Script"], axes["X Type"], axes["X Values"], axes["Y Type"], axes["Y Values"]) == (
        "X/Y/Z plot", "Steps", "1,2", "CFG scale", "1,7.5")


@pytest.mark.usefixtures("one_thread")
def test_a_plot_cell_renders_again_alone_from_its_png(run_cli, sd1_ckpt, tmp_path):
    out = tmp_path / "out"
    result = run_cli("txt2img", "a red cat", "--ckpt", sd1_ckpt, *FAST, "--outdir", out,
                     "--xy", "sampler=euler,ddim", "Prompt S/R=red,blue")
    assert result.code == 0, result.stderr
    cell = out / "samples" / "00002.png"  # euler, "a blue cat"
    assert parse_infotext(Image.open(cell).text["parameters"])[0] == "a blue cat"
    assert recorded(cell)["Sampler"] == "Euler"
    again = run_cli("txt2img", "--from-png", cell, "--ckpt", sd1_ckpt, "--no-watermark", "-o", tmp_path / "again.png")
    assert again.code == 0, again.stderr
    assert np.array_equal(pixels(cell), pixels(tmp_path / "again.png"))


@pytest.mark.usefixtures("one_thread")
def test_img2img_plot_over_strength_with_named_cells(run_cli, sd1_ckpt, tmp_path):
    init = tmp_path / "init.png"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3))).save(init)
    out = tmp_path / "out"
    result = run_cli("img2img", "a cat", "-i", init, "--ckpt", sd1_ckpt, *FAST, "--steps", "2", "--outdir", out,
                     "--name", "{index}-{steps}.png", "--xy", "strength=0.5,1.0", "--n-samples", "2")
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["0-2.png", "1-2.png", "2-2.png", "3-2.png", "grid-0000.png"]
    assert [recorded(out / f"{i}-2.png")["Denoising strength"] for i in range(4)] == ["0.5", "0.5", "1.0", "1.0"]
    assert [recorded(out / f"{i}-2.png")["Seed"] for i in range(4)] == ["11", "12", "11", "12"]
    grid = pixels(out / "grid-0000.png")
    # each cell holds its two images as a plain grid (2 px gutters): 2 * (64 + 2) + 2 wide
    assert grid.shape[1] == 2 * (2 * 66 + 2)
    top = grid.shape[0] - (64 + 4)
    assert np.array_equal(grid[top + 2:top + 66, 2:66], pixels(out / "0-2.png"))
