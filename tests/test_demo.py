"""A short `gasp demo` run: the trained model beats the untrained one on held-out scenes, and
demo.json has the documented schema."""

import json
import os
import re
import subprocess
import sys
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


# deepspeed's own line when it finds no GPU (it is imported by accelerate/transformers, not by us);
# transformers' deprecation of gradient_checkpointing and our processor fallback are ours, and must not show
THIRD_PARTY_WARNINGS = (
    re.compile(r"\[WARNING\] \[real_accelerator\.py:\d+:get_accelerator\] Setting accelerator to CPU"),
)


def test_short_demo_prints_no_warning_of_ours(tmp_path):
    """`gasp demo` as a user runs it (default warning filters), shrunk to a few seconds of work."""
    argv = ["--out", tmp_path / "demo", "--steps", "2", "--heldout-scenes", "1", "--max-gap", "1",
            "--pairs-per-gap", "1", "--no-real", "model.tiny.image_size=112", "data.geometry.synthetic.count=1",
            "data.geometry.synthetic.config={height: 112, width: 112, num_frames: 8}",
            "data.instruct.synthetic.count=2"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run([sys.executable, "-m", "gasp_plugin.cli", "demo", *map(str, argv)], capture_output=True,
                          text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + "\n" + proc.stderr.replace("\r", "\n")).splitlines()
    warnings = [line for line in lines if re.search(r"warning", line, re.I)
                and not any(p.search(line) for p in THIRD_PARTY_WARNINGS)]
    assert not warnings, "\n".join(warnings)
    # the processor fallback is said once, at INFO level
    assert sum("without the video processor" in line for line in lines) <= 1
    assert "GASP demo: held-out point matching" in proc.stdout


def test_processor_fallback_is_one_info_line(tmp_path, caplog):
    """Without torchvision the Qwen-VL processor falls back to its image processor and tokenizer, and
    says so once per process at INFO level (the demo loads a processor three times)."""
    import logging

    from gasp_plugin.models import processing
    from gasp_plugin.models.tiny import save_tiny_model

    path = save_tiny_model("qwen2_vl", tmp_path / "tiny", image_size=112)
    processing._explain_fallback.cache_clear()
    with caplog.at_level(logging.DEBUG, logger="gasp_plugin.models.processing"):
        kinds = {type(processing.load_processor(path)).__name__ for _ in range(3)}
    records = [r for r in caplog.records if r.name == "gasp_plugin.models.processing"]
    if kinds == {"ProcessorParts"}:
        assert [r.levelname for r in records] == ["INFO"]
        assert "without the video processor" in records[0].getMessage()
    else:  # torchvision works here: the full processor loads, nothing to say
        assert not records


@pytest.mark.parametrize("checkpointing", [False, True])
def test_training_arguments_use_the_undeprecated_checkpointing_name(tmp_path, checkpointing):
    import warnings

    from gasp_plugin.recipe import load_recipe
    from gasp_plugin.train.assemble import training_arguments

    recipe = load_recipe("tiny_cpu", [f"training.output_dir={tmp_path}",
                                      f"training.gradient_checkpointing={str(checkpointing).lower()}"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = training_arguments(recipe, None, progress=False)
    assert not [w for w in caught if "checkpointing" in str(w.message)], [str(w.message) for w in caught]
    assert args.gradient_checkpointing is checkpointing  # transformers mirrors the old name
    assert getattr(args, "activation_checkpointing", checkpointing) is checkpointing
    expected_kwargs = {"use_reentrant": False} if checkpointing else None
    kwargs = getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs
    assert kwargs == expected_kwargs


# a family's tiny model trained and probed by `gasp demo --model-type FAMILY` (the README's table
# has the full runs); OneVision at 112 px here, a quarter of its 224 px tokens, to stay short
FAMILY_DEMOS = {"llava_next_video": [], "llava_onevision": ["model.tiny.image_size=112"], "qwen3_vl": []}


@pytest.mark.parametrize("model_type", list(FAMILY_DEMOS))
def test_short_demo_per_family(model_type, tmp_path):
    import argparse

    from gasp_plugin.demo import _model_type_overrides, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model-type", model_type])
    overrides = _model_type_overrides(args.model_type)
    assert overrides[0] == f"model.path=tiny:{model_type}"
    cfg = DemoConfig(out=str(tmp_path / "demo"), steps=200, heldout_scenes=2, heldout_frames=12, max_gap=4,
                     real=False, overrides=overrides + SHORT + FAMILY_DEMOS[model_type])
    result = run_demo(cfg)
    before, after = result["summary"]["untrained"]["synthetic"], result["summary"]["trained"]["synthetic"]
    assert after["qk"]["pck2"] > before["qk"]["pck2"] + 0.15, (before["qk"], after["qk"])
    assert after["head"]["pck2"] > 2 * after["head"]["chance_pck2"]
    assert result["training"]["trained"]["counters"].get("skipped_samples", 0) == 0
    with pytest.raises(ValueError, match="--model-type 'gpt2': expected one of"):
        _model_type_overrides("gpt2")


def test_demo_runs_one_torch_thread_and_renders_training_scenes_beside(demo):
    """The demo's speed settings: one torch thread (restored after), the training scenes rendered
    by a second process while the held-out scenes and the untrained probe run."""
    import torch

    out, result = demo
    assert result["threads"] == 1 and torch.get_num_threads() >= 1
    assert set(result["phases"]) == {"before_training_s", "waited_for_scenes_s"}
    scenes = [p for p in (out / "train" / "data" / "scenes").iterdir() if (p / "scene.json").is_file()]
    assert len(scenes) == 4
    with pytest.raises(ValueError, match="threads"):
        DemoConfig(threads=0)
