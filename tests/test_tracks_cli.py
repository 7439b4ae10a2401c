"""`gasp tracks` and `gasp bench` end to end through the real command-line entry point."""

import json
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from gasp_plugin.cli import main
from gasp_plugin.data import load_clip, open_scene
from gasp_plugin.geometry.tracks import Tracks, compute_tracks, load_tracks_metadata


def test_tracks_command_writes_rows_in_frames_order(hololens_path, tmp_path, capsys):
    out, png = tmp_path / "t.safetensors", tmp_path / "t.png"
    rc = main(["tracks", str(hololens_path), "--anchor", "10", "--frames", "12,9,11", "--grid", "8",
               "--out", str(out), "--png", str(png)])
    assert rc == 0
    t = Tracks.load(out)
    meta = load_tracks_metadata(out)
    assert t.num_frames == 3 and t.anchor is None and json.loads(meta["frame_ids"]) == [12, 9, 11]
    assert meta["anchor_frame"] == "10"
    clip = load_clip(open_scene(hololens_path), [10, 12, 9, 11])
    ref = compute_tracks(torch.from_numpy(clip.depth), torch.from_numpy(clip.intrinsics),
                         torch.from_numpy(clip.poses), anchor=0, grid=8)
    assert torch.equal(t.xy, ref.xy[1:]) and torch.equal(t.visible, ref.visible[1:])
    assert torch.equal(t.query_xy, ref.query_xy)
    seen = t.xy[t.visible]
    assert seen[:, 0].max() <= 540 - 5 and seen[:, 1].max() <= 360 - 5  # the scene's own pixels
    assert "frame 9:" in capsys.readouterr().out
    with Image.open(png) as im:
        assert im.size[0] > 600 and im.size[1] > 200


def test_tracks_command_with_anchor_listed_and_keep(hololens_path, tmp_path):
    out = tmp_path / "t.safetensors"
    assert main(["tracks", str(hololens_path), "--anchor", "3", "--frames", "2,3,4", "--grid", "6",
                 "--keep", "0.5", "--out", str(out)]) == 0
    t = Tracks.load(out)
    assert t.anchor == 1 and t.visible[1].all() and torch.allclose(t.xy[1], t.query_xy, atol=1e-4)
    clip = load_clip(open_scene(hololens_path), [2, 3, 4], anchor_row=1)
    full = compute_tracks(torch.from_numpy(clip.depth), torch.from_numpy(clip.intrinsics),
                          torch.from_numpy(clip.poses), anchor=1, grid=6)
    assert t.num_points == -(-full.num_points // 2)  # ceil(half) of the queries with valid depth


@pytest.mark.parametrize("argv, message", [
    (["--anchor", "0", "--frames", "1,99"], r"frame 99 out of range \[0, 24\)"),
    (["--anchor", "-1", "--frames", "1"], r"frame -1 out of range"),
    (["--anchor", "0", "--frames", "1,x"], r"--frames: expected comma-separated frame indices"),
    (["--anchor", "0", "--frames", "1", "--grid", "0"], r"grid must be an integer"),
])
def test_tracks_command_errors_name_the_problem(hololens_path, capsys, argv, message):
    assert main(["tracks", str(hololens_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gasp tracks: error:")
    assert re.search(message, err)


def test_tracks_command_unknown_layout(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["tracks", str(tmp_path / "x"), "--anchor", "0", "--frames", "1"]) == 2
    assert "unknown scene layout" in capsys.readouterr().err


def test_bench_registry_errors(capsys):
    from gasp_plugin.bench.cli import BENCHMARKS, register_benchmark

    assert main(["bench", "nope"]) == 2
    err = capsys.readouterr().err
    assert err == f"gasp bench: error: unknown benchmark 'nope'; known benchmarks: {sorted(BENCHMARKS)}\n"
    with pytest.raises(ValueError, match="already registered"):
        register_benchmark("tracks", "x")
    registry = dict(BENCHMARKS)
    register_benchmark("missing", "gasp_plugin.bench.no_such_module", registry=registry)
    from gasp_plugin.bench.cli import load_benchmark

    with pytest.raises(ImportError, match="registered as gasp_plugin.bench.no_such_module"):
        load_benchmark("missing", registry)


def test_bench_tracks_runs_small(tmp_path, capsys):
    assert main(["bench", "tracks", "--frames", "3", "--size", "64", "--grid", "4", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "decode images + depth" in out and "ratio to decode" in out
    record = json.loads((tmp_path / "bench_tracks.json").read_text())
    assert record["frames"] == 3 and record["decode_s"] > 0 and record["tracks_s"] > 0


def test_cli_help_does_not_import_torch():
    code = ("import sys; from gasp_plugin.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"
