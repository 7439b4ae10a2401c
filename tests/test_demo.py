"""A short `gasp demo` run: the trained model beats the untrained one on held-out scenes, and
demo.json has the documented schema."""

import json
from pathlib import Path

import pytest

from gasp_plugin.demo import DemoConfig, format_summary, run_demo

SUMMARY_KEYS = {"peak_layer", "pck0", "pck1", "pck2", "chance_pck2", "rho", "robustness_max_gap", "max_gap",
                "covisible_max_gap"}

SHORT = [  # the tiny recipe, smaller: 4 scenes of 16 frames, 300 steps (about a minute on 2 cores)
    "data.geometry.synthetic.count=4",
    "data.geometry.synthetic.config={height: 224, width: 224, num_frames: 16}",
    "data.instruct.synthetic.count=8",
    "training.logging_steps=50",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(out=str(out), steps=300, heldout_scenes=2, heldout_frames=12, max_gap=4, overrides=SHORT)
    return out, run_demo(cfg)


def test_trained_beats_untrained_on_held_out_scenes(demo):
    _, result = demo
    before, after = result["summary"]["untrained"]["synthetic"], result["summary"]["trained"]["synthetic"]
    assert after["qk"]["pck2"] > before["qk"]["pck2"] + 0.2, (before["qk"], after["qk"])
    assert after["hidden"]["pck2"] > before["hidden"]["pck2"] + 0.05, (before["hidden"], after["hidden"])
    assert after["head"]["pck2"] > 2 * after["head"]["chance_pck2"]
    # untrained attention matches at chance level
    assert before["qk"]["pck2"] < before["qk"]["chance_pck2"] + 0.15


def test_demo_json_schema(demo):
    out, result = demo
    on_disk = json.loads((out / "demo.json").read_text())
    assert on_disk["summary"] == result["summary"]
    assert set(on_disk["summary"]) == {"untrained", "trained"}
    for condition, by_set in on_disk["summary"].items():
        assert set(by_set) == {"synthetic", "real"}
        for set_name, by_desc in by_set.items():
            expected = {"qk", "hidden"} | ({"head"} if condition != "untrained" else set())
            assert set(by_desc) == expected, (condition, set_name)
            for row in by_desc.values():
                assert set(row) == SUMMARY_KEYS
                for key in ("pck0", "pck1", "pck2", "chance_pck2", "covisible_max_gap"):
                    assert 0.0 <= row[key] <= 1.0
                assert row["pck0"] <= row["pck1"] <= row["pck2"]
                assert row["max_gap"] == 4
    # held-out scenes are not the training scenes
    train_scenes = {p.name for p in (out / "train" / "data" / "scenes").iterdir() if p.is_dir()}
    assert not train_scenes & set(on_disk["heldout"]["synthetic"])
    for fig in on_disk["figures"]:
        assert fig.endswith(".png") and Path(fig).is_file()
    assert (out / "probe" / "trained" / "synthetic" / "probe.json").is_file()
    assert "synthetic" in format_summary(on_disk["summary"])


def test_demo_refuses_to_overwrite_a_finished_run(demo):
    out, _ = demo
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_demo(DemoConfig(out=str(out)))


def test_demo_config_errors():
    with pytest.raises(ValueError, match="heldout_frames"):
        DemoConfig(heldout_frames=4, max_gap=8)
    with pytest.raises(ValueError, match="steps"):
        DemoConfig(steps=0)
