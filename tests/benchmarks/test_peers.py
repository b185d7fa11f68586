"""benchmarks/peers.py's arithmetic: seconds per step from the 2- and 8-step processes, the ratios,
and a tool that is not installed is skipped with a note."""

import sys

from benchmarks import peers


def process(wall, load, rss_gb, **stages):
    return {"wall": wall, "load": load, "peak_rss": rss_gb * 1e9, **stages}


def test_step_whole_image_and_ratios():
    ours = {2: process(20.0, 5.0, 3.0), 8: process(41.0, 5.0, 3.2)}  # 6 steps: 21 s -> 3.5 s/step
    theirs = {2: process(30.0, 15.0, 7.0), 8: process(45.0, 16.0, 7.5)}  # (29 - 15) / 6
    tools = {"sd_cli": peers._summary([ours]), "openvino": peers._summary([theirs])}
    peers._add_ratios(tools)
    assert tools["sd_cli"]["s_per_step"] == 3.5
    assert tools["openvino"]["s_per_step"] == round(14 / 6, 3)
    assert tools["sd_cli"]["image_20_steps_whole_process_s"] == 41.0 + 12 * 3.5
    assert tools["sd_cli"]["peak_rss_gb"] == 3.2
    assert tools["openvino"]["ratio_to_sd_cli"]["s_per_step"] == round((14 / 6) / 3.5, 3)
    assert tools["sd_cli"]["ratio_to_openvino"]["load_to_ready_s"] == round(5.0 / 15.0, 3)


def test_sd_cli_stages_are_summarised():
    stages = dict(text=0.2, decode=4.0, steps=[5.0, 3.0, 3.2, 3.4])
    summary = peers._summary([{2: process(20.0, 5.0, 3.0, **stages), 8: process(41.0, 5.0, 3.2, **stages)}])
    assert summary["stages_s"] == {"text_encode": 0.2, "first_step": 5.0, "later_steps_median": 3.2, "decode": 4.0}


def test_stage_ratios_where_both_time_their_stages():
    ours = dict(text=0.5, decode=5.5, steps=[4.5, 4.0, 4.2, 3.9])
    theirs = dict(text=0.1, decode=5.0, steps=[4.4, 5.0, 4.8, 5.2])
    tools = {"sd_cli": peers._summary([{2: process(20.0, 5.0, 3.0, **ours), 8: process(41.0, 5.0, 3.2, **ours)}]),
             "openvino": peers._summary([{2: process(30.0, 15.0, 7.0, **theirs), 8: process(45.0, 16.0, 7.5, **theirs)}]),
             "sdcpp": peers._summary([{2: process(30.0, 2.0, 3.0), 8: process(60.0, 2.0, 3.0)}])}
    peers._add_ratios(tools)
    ratios = tools["sd_cli"]["ratio_to_openvino"]
    assert (ratios["stage_later_steps_median"], ratios["stage_decode"], ratios["stage_text_encode"]) == (0.8, 1.1, 5.0)
    assert "stage_decode" not in tools["sdcpp"]["ratio_to_openvino"]  # it times no stages


def test_a_missing_peer_is_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.delenv("SD_CLI_BENCH_OPENVINO_PYTHON", raising=False)
    monkeypatch.delenv("SD_CLI_BENCH_CPU_TORCH_PYTHON", raising=False)
    monkeypatch.setattr(peers, "_importable", lambda python, module: module == "diffusers")
    commands, notes = peers._available_tools(tmp_path / "x.safetensors", tmp_path, tmp_path)
    assert list(commands) == ["sd_cli", "diffusers"]
    assert set(notes) == {"sd_cli_openvino", "openvino", "sd_cli_cpu_torch", "sdcpp"}
    assert "SD_CLI_BENCH_OPENVINO_PYTHON" in notes["openvino"]
    assert commands["sd_cli"](2)[:2] == [sys.executable, "-c"]


def test_the_cpu_torch_python_runs_the_same_sd_cli_child(tmp_path, monkeypatch):
    monkeypatch.setenv("SD_CLI_BENCH_CPU_TORCH_PYTHON", "/venvs/cpu/bin/python")
    monkeypatch.setattr(peers, "_importable", lambda python, module: module == "sd_cli")
    commands, notes = peers._available_tools(tmp_path / "x.safetensors", tmp_path, tmp_path)
    assert "sd_cli_cpu_torch" not in notes
    ours, theirs = commands["sd_cli"](8), commands["sd_cli_cpu_torch"](8)
    assert theirs[0] == "/venvs/cpu/bin/python" and theirs[1:] == ours[1:]
