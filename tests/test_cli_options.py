"""Options: mismatched or invalid ones are config errors (exit 2) before any work; commands that do not
compute start without torch; help shows the defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner
from clirun import run

from flowkit.cli import main
from flowkit.errors import ConfigError
from flowkit.pipelines.frames import FramesConfig

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["--model", "c3d_test", "--random-weights"]

# (command, extra options, a word the error line must contain)
CONFIG_ERRORS = [
    ("sample-frames", ["--fps", "3"], "--fps"),
    ("sample-frames", ["--sampler", "fps", "--num-frames", "3"], "--num-frames"),
    ("sample-frames", ["--sampler", "tsn", "--step", "2"], "--step"),
    ("sample-frames", ["--size", "12"], "WxH"),
    ("sample-frames", ["--format", "npz", "--jpeg-quality", "80"], "--jpeg-quality"),
    ("sample-frames", ["--shard", "3/2"], "--shard"),
    ("sample-frames", ["--threads", "0"], "--threads"),
    ("extract-flow", ["--device", "cuda:99"], "cuda:99"),
    ("extract-flow", ["--algorithm", "farneback", "--tau", "0.3"], "do not apply"),
    ("extract-flow", ["--algorithm", "bogus"], "bogus"),
    ("features", [*FEATURES, "--device", "cuda:99"], "cuda:99"),
    ("features", ["--model", "i3d_test", "--stream", "flow", "--random-weights", "--flow-algorithm", "bogus"],
     "bogus"),
    ("features", [*FEATURES, "--flow-algorithm", "farneback"], "--flow-algorithm"),
    ("features", [*FEATURES, "--i3d-compat", "video_features"], "--i3d-compat"),
    ("features", ["--model", "i3d_test", "--random-weights", "--c3d-mode", "davidea"], "--c3d-mode"),
    ("features", ["--model", "nope", "--random-weights"], "nope"),
    ("features", [*FEATURES, "--flow-dir", "."], "--flow-dir"),
]


@pytest.mark.parametrize(("command", "extra", "word"), CONFIG_ERRORS,
                         ids=[f"{c}:{' '.join(e[-2:])}" for c, e, _ in CONFIG_ERRORS])
def test_config_errors_exit_2_before_any_work(make_video, tmp_path, command, extra, word):
    make_video("videos/a.mp4", n=4)
    out = tmp_path / "out"
    result = run(command, tmp_path / "videos", "-o", out, *extra)
    assert result.exit_code == 2, result.output
    assert word in result.output
    assert not out.exists()  # nothing started
    if word == "nope":  # test-only models are never offered to users
        assert "c3d_test" not in result.output and "i3d_test" not in result.output


def test_sampler_options_select_nothing_silently():
    with pytest.raises(ConfigError, match="--sampler all does not use --fps"):
        FramesConfig(fps=3.0)
    cfg = FramesConfig(sampler="dense")
    assert (cfg.clip_len, cfg.stride, cfg.frame_step, cfg.last, cfg.num_frames) == (16, 16, 1, "drop", None)
    slowfast = FramesConfig(sampler="slowfast")
    assert (slowfast.alpha, slowfast.tau, slowfast.num_slow) == (4, 16, 4)
    assert FramesConfig(sampler="tsn").segments == 3 and FramesConfig(sampler="uniform").num_frames == 8


def test_choice_names_match_the_library():
    from flowkit.choices import LAYOUT_NAMES
    from flowkit.outputs.rawframes import LAYOUTS

    assert tuple(LAYOUTS) == LAYOUT_NAMES


def test_help_shows_sampler_defaults():
    text = " ".join(run("sample-frames", "--help").output.split())
    for expected in ("uniform (8 frames)", "tsn (3 segments)", "dense (16-frame clips every 16)",
                     "slowfast (alpha 4, tau 16, 4 slow frames)", "tsn: K segments. [default: 3]"):
        assert expected in text


def _modules_after(*args: str) -> dict:
    """Run `flowkit ARGS` in a fresh interpreter; which heavy modules did it import?"""
    code = ("import sys\nfrom flowkit.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "print('MODULES', {m: m in sys.modules for m in ('torch', 'cv2')}, code)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=False)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MODULES"))
    modules = eval(line.split(" ", 1)[1].rsplit(" ", 1)[0])  # noqa: S307 - our own printed dict
    return {"modules": modules, "code": line.rsplit(" ", 1)[1], "out": proc.stdout}


def test_commands_that_do_not_compute_import_neither_torch_nor_cv2(make_video, tmp_path):
    make_video("videos/a.mp4", n=3)
    out = tmp_path / "frames"
    assert run("sample-frames", tmp_path / "videos", "-o", out).exit_code == 0
    shard = tmp_path / "f.h5"
    with h5py.File(shard, "w") as f:
        f.attrs["model"] = "c3d"
    for args in (["--help"], ["status", "--help"], ["features", "--help"], ["sample-frames", "--help"],
                 ["extract-flow", "--help"],
                 ["status", str(out)], ["merge", str(out)], ["inspect", str(shard)]):
        seen = _modules_after(*args)
        assert seen["modules"] == {"torch": False, "cv2": False}, (args, seen)
        assert seen["code"] in ("0", "None"), (args, seen["out"])


def test_doctor_prints_the_thread_budget_and_why():
    result = CliRunner().invoke(main, ["doctor", "--threads", "3", "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert "3 core(s) from --threads; 2 worker(s) x 1 compute thread(s)" in result.output
    assert "OMP_WAIT_POLICY=" in result.output
    assert "fused C kernel" in result.output  # the machine has a C compiler


def test_doctor_names_the_tvl1_fallback_without_a_compiler(monkeypatch, tmp_path):
    from flowkit.flow import tvl1_native

    monkeypatch.setenv("FLOWKIT_CACHE_DIR", str(tmp_path))  # nothing built here yet
    monkeypatch.setattr(tvl1_native, "_fallback_folder", lambda: tmp_path / "fallback")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    tvl1_native.forget()
    try:
        result = CliRunner().invoke(main, ["doctor"])
    finally:
        tvl1_native.forget()
    assert result.exit_code == 0, result.output
    assert "PyTorch fallback: no C compiler" in result.output


def test_run_summary_prints_the_threads_used(make_video, tmp_path):
    make_video("videos/a.mp4", n=3)
    result = run("sample-frames", tmp_path / "videos", "-o", tmp_path / "out", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "threads: 1 core(s) from --threads" in result.output
    assert json.loads((tmp_path / "out" / ".flowkit" / "job.json").read_text())  # the run happened
