"""The scene index: walking mixed layouts, parallel and resumable indexing, the summary table, and
open_scenes / the sampler reading scenes lazily from the index."""

import argparse
import json
import pickle

import numpy as np
import pytest

from formats import CONFIG, SEED, write_arkitscenes, write_nerfstudio, write_sens
from gasp_plugin.data import ClipSampler, ClipSampling, load_clip, open_scenes
from gasp_plugin.data.index import IndexedScene, build_index, read_index, reason_kind, summary_table
from gasp_plugin.data.synthetic import make_synthetic_scene, write_scene


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    synth = make_synthetic_scene(CONFIG, seed=SEED)
    root = tmp_path_factory.mktemp("data")
    write_scene(synth, root / "holo" / "a")
    write_scene(synth, root / "holo" / "b")
    poses = np.stack([synth.pose(i) for i in range(len(synth))])
    poses[[2, 3, 6]] = -np.inf
    write_sens(root / "scannet" / "scans" / "scene0000_00" / "scene0000_00.sens", synth, poses=poses)
    write_arkitscenes(root / "arkit" / "raw" / "Training" / "41069025", synth)
    write_nerfstudio(root / "dl3dv" / "nodepth", synth, depth=None)  # opens with an error: no depth
    (root / "empty" / "deeper").mkdir(parents=True)
    return root


def run_cli(argv):
    from gasp_plugin.data import index_cli

    parser = argparse.ArgumentParser(prog="gasp data")
    index_cli.add_arguments(parser)
    return index_cli.run(parser.parse_args(argv))


def test_index_records_every_layout_in_parallel_and_resumes(root, tmp_path, capsys):
    out = tmp_path / "index.jsonl"
    assert run_cli(["index", str(root), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    table = capsys.readouterr().out
    recs = {r["path"].split("/data")[-1].split("/", 2)[-1]: r for r in read_index(out, errors=True)}
    by_layout = {r["layout"]: r for r in recs.values()}
    assert set(by_layout) == {"hololens", "scannet-sens", "arkitscenes", "nerfstudio"} and len(recs) == 5
    sens = by_layout["scannet-sens"]
    assert sens["name"] == "scene0000_00" and sens["frames"] == 8 and sens["usable"] == 5
    assert sens["image_size"] == [96, 72] and sens["dropped"] == {"pose contains NaN or inf": [[2, 3], [6, 6]]}
    assert by_layout["arkitscenes"]["usable"] == 8 and "no depth" in by_layout["nerfstudio"]["error"]
    for needle in ("scannet-sens", "arkitscenes", "total", "dropped frames by reason:", "pose contains NaN or inf",
                   "scenes not indexed:", "indexed 5 scenes"):
        assert needle in table
    assert [r["path"] for r in read_index(out)] == sorted(r["path"] for r in read_index(out))  # sorted, no errors
    # a second run finds everything indexed
    assert run_cli(["index", str(root), "--out", str(out), "--no-progress"]) == 0
    again = capsys.readouterr().out
    assert "indexed 0 scenes" in again and "5 already in the index" in again
    assert len(out.read_text().splitlines()) == 6  # header + 5 records
    # an interrupted run: two records and half of a third line; the rerun completes it once
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    summary = build_index([root], out, workers=1, progress=False)
    assert summary.resumed == 2 and len(summary.records) == 3
    assert len(out.read_text().splitlines()) == 6 and len(read_index(out, errors=True)) == 5


def test_open_scenes_reads_an_index_lazily(root, tmp_path):
    out = tmp_path / "index.jsonl"
    build_index([root / "holo", root / "scannet"], out, progress=False)
    scenes = open_scenes([out])
    assert [type(s) for s in scenes] == [IndexedScene] * 3
    assert [s.name for s in scenes] == ["a", "b", "scene0000_00"]
    sens = scenes[2]
    assert len(sens) == 8 and sens.valid_frames == [0, 1, 4, 5, 7] and sens._scene is None  # nothing opened
    assert "recorded in the index" in sens.skipped[2]
    clone = pickle.loads(pickle.dumps(sens))  # e.g. into a DataLoader worker
    clip = load_clip(clone, [0, 4, 7])
    assert clip.images.shape == (3, 72, 96, 3) and clone._scene is not None
    assert np.array_equal(clip.depth[1], open_scenes([root / "scannet" / "scans" / "scene0000_00"])[0].depth(4))
    sampler = ClipSampler(scenes, ClipSampling(min_frames=2, max_frames=3, window=4, grid=4), seed=0)
    clip, tracks = sampler.sample(0)
    assert tracks.num_points > 0
    # training and the integrations take the same list
    from gasp_plugin.train.assemble import open_scenes as train_open_scenes

    assert [s.name for s in train_open_scenes([str(out)])] == ["a", "b", "scene0000_00"]


def test_a_scene_changed_since_indexing_says_to_reindex(root, tmp_path):
    out = tmp_path / "index.jsonl"
    build_index([root / "holo" / "a"], out, progress=False)
    rec = read_index(out)[0]
    rec["frames"] = 9
    out.write_text(json.dumps({"format": "gasp-scene-index/1"}) + "\n" + json.dumps(rec) + "\n")
    s = open_scenes([out])[0]
    with pytest.raises(ValueError, match=r"has 8 frames, the index recorded 9; .*re-run gasp data index"):
        s.image(0)


def test_bad_index_input(tmp_path, root):
    assert run_cli(["index", str(tmp_path / "nowhere"), "--out", str(tmp_path / "i.jsonl"), "--no-progress"]) == 2
    (tmp_path / "notes.jsonl").write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="exists and is not a scene index"):
        build_index([root / "holo"], tmp_path / "notes.jsonl", progress=False)
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        build_index([root / "holo"], tmp_path / "x.jsonl", workers=0, progress=False)
    (tmp_path / "empty.jsonl").write_text(json.dumps({"format": "gasp-scene-index/1"}) + "\n")
    with pytest.raises(ValueError, match="lists no readable scene"):
        open_scenes([tmp_path / "empty.jsonl"])


def test_reason_kind_counts_reasons_without_paths_and_numbers():
    assert reason_kind("missing depth file /data/s/depth/000123.png") == "missing depth file FILE"
    assert (reason_kind("no pose in /x/lowres_wide.traj within 0.005 s of timestamp 6251.683 (nearest 0.021 s away)")
            == "no pose in FILE within N s of timestamp N (nearest N s away)")
    assert summary_table([]).startswith("layout")
