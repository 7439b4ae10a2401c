"""Recipe loading: every shipped YAML parses; overrides; errors name the key path and the file."""

import json
import re
from pathlib import Path

import pytest

from gasp_plugin.core.config import GaspConfig
from gasp_plugin.data import ClipSampling
from gasp_plugin.data.synthetic import SyntheticSceneConfig
from gasp_plugin.recipe import RecipeError, load_recipe, parse_overrides, recipe_to_dict, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]


def test_every_shipped_recipe_loads_and_documents_its_launch_line():
    recipes = shipped_recipes()
    names = {p.name for p in recipes}
    assert {"qwen2vl_gasp.yaml", "tiny_cpu.yaml", "llava_video_gasp.yaml"} <= names
    for path in recipes:
        recipe = load_recipe(path)  # gasp: is a GaspConfig, validated with the rest
        header = path.read_text().split("\n\n")[0]
        assert header.startswith("#") and "Launch" in path.read_text(), path
        if recipe.training.deepspeed:
            assert (ROOT / recipe.training.deepspeed).is_file(), path


def test_paper_recipe_values():
    r = load_recipe(ROOT / "recipes/qwen2vl_gasp.yaml")
    assert (r.lora.r, r.training.learning_rate, r.training.head_lr_scale) == (128, 1e-4, 4.0)
    assert (r.training.max_grad_norm, r.training.bf16, r.training.gradient_checkpointing) == (1.0, True, True)
    assert r.model.attn_implementation == "flash_attention_2"
    assert r.training.lr_scheduler_type == "cosine"
    ds = json.loads((ROOT / r.training.deepspeed).read_text())
    assert ds["zero_optimization"]["stage"] == 2


@pytest.mark.parametrize("name", ["ds_zero2.json", "ds_zero3.json"])
def test_deepspeed_configs_leave_batch_and_precision_to_the_recipe(name):
    ds = json.loads((ROOT / "recipes" / name).read_text())
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps"):
        assert ds[key] == "auto"
    assert ds["bf16"]["enabled"] == "auto" and ds["fp16"]["enabled"] == "auto"
    assert "optimizer" not in ds  # the Trainer's torch optimizer (with the head param group) is used


def test_overrides_are_parsed_as_yaml_and_applied():
    r = load_recipe("tiny_cpu", ["training.max_steps=7", "training.bf16=false", "data.geometry.scenes=[a, b]",
                                 "model.tiny.hidden_size=64"])
    assert r.training.max_steps == 7 and r.data.geometry.scenes == ["a", "b"] and r.model.tiny.hidden_size == 64
    assert r.model.tiny_type == "qwen2_vl"
    assert parse_overrides(["a.b=1e-4"]) == [("a.b", "1e-4")]  # converted by the field's type
    typed = load_recipe("tiny_cpu", ["training.learning_rate=1e-4", "training.output_dir=1e3", "gasp.tau=5e-2"])
    assert typed.training.learning_rate == 1e-4 and typed.training.output_dir == "1e3"
    assert isinstance(typed.gasp, GaspConfig) and typed.gasp.tau == 0.05
    assert recipe_to_dict(r)["training"]["max_steps"] == 7


def test_unknown_key_names_the_path_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  path: tiny:qwen2_vl\ntraining:\n  lerning_rate: 0.1\n")
    with pytest.raises(RecipeError, match=r"training\.lerning_rate.*bad\.yaml.*learning_rate"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match=r"unknown key 'lora\.rank'"):
        load_recipe("tiny_cpu", ["lora.rank=4"])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("training.max_steps=zero", r"training\.max_steps.*expected int"),
        ("training.max_steps=0", r"max_steps must be >= 1"),
        ("training.lr_scheduler_type=cosin", r"lr_scheduler_type must be one of .*cosine.*'cosin'"),
        ("model.attn_implementation=flash", r"attn_implementation must be one of"),
        ("data.geometry_ratio=1.5", r"'data\.geometry_ratio'.*geometry_ratio must be a number in \[0, 1\]; got 1\.5"),
        ("lora.target=(", r"target is not a valid regex"),
        ("training.bf16=true", None),
        ("gasp.no_such_field=1", r"gasp\.no_such_field"),
        ("gasp.negatives=frame", r"unknown key 'gasp\.negatives'"),
        ("gasp.tau=0", r"'gasp\.tau'.*tau must be a positive number"),
        ("gasp.layers=3", r"'gasp\.layers'.*expected str \| list\[int\]"),
        ("gasp.layers=[0, 0]", r"'gasp\.layers'.*duplicates"),
        ("data.geometry.synthetic.config.height=8", r"'data\.geometry\.synthetic\.config\.height'.*\[16, 4096\]"),
        ("data.geometry.synthetic.config.room_size=[3, 3]", r"'data\.geometry\.synthetic\.config\.room_size'"),
        ("data.geometry.min_frames=1", r"'data\.geometry\.min_frames'.*an int >= 2; got 1"),
        ("data.geometry.max_frames=3", r"'data\.geometry\.max_frames'.*>= min_frames \(4\); got 3"),
        ("data.geometry.keep=0", r"'data\.geometry\.keep'.*\(0, 1\]; got 0"),
        ("model.tiny.num_heads=0", r"'model\.tiny\.num_heads'.*>= 1"),
        ("training", r"expected key\.path=value"),
    ],
)
def test_bad_values_are_errors_naming_the_field(override, pattern):
    if pattern is None:
        load_recipe("tiny_cpu", [override])
        return
    with pytest.raises(RecipeError, match=pattern):
        load_recipe("tiny_cpu", [override])


def test_missing_recipe_lists_shipped_names():
    with pytest.raises(RecipeError, match="tiny_cpu"):
        load_recipe("no_such_recipe")


def _recipe_file(tmp_path, body: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  path: tiny:qwen2_vl\n" + body)
    return path


def test_misspelt_gasp_key_names_the_path_and_file(tmp_path):
    path = _recipe_file(tmp_path, "gasp:\n  tua: 0.1\n")
    with pytest.raises(RecipeError, match=r"unknown key 'gasp\.tua' in .*bad\.yaml.*tau"):
        load_recipe(path)


def test_misspelt_synthetic_config_key_names_the_path_and_file(tmp_path):
    path = _recipe_file(tmp_path, "data:\n  geometry:\n    synthetic:\n      config: {heigth: 112}\n")
    with pytest.raises(RecipeError, match=r"unknown key 'data\.geometry\.synthetic\.config\.heigth' in .*bad\.yaml"):
        load_recipe(path)


def test_tiny_hidden_size_must_divide_by_heads():
    with pytest.raises(RecipeError, match=r"'model\.tiny\.hidden_size' in .*tiny_cpu\.yaml: .*multiple of num_heads \(4\); got 66"):
        load_recipe("tiny_cpu", ["model.tiny.hidden_size=66", "model.tiny.num_heads=4"])
    assert load_recipe("tiny_cpu", ["model.tiny.hidden_size=68", "model.tiny.num_heads=4"]).model.tiny.hidden_size == 68


def test_sections_are_the_lower_layers_dataclasses():
    r = load_recipe("tiny_cpu", ["data.geometry.synthetic.config={height: 112, width: 96, num_boxes: [1, 2]}"])
    cfg = r.data.geometry.synthetic.config
    assert isinstance(cfg, SyntheticSceneConfig) and (cfg.height, cfg.width, cfg.num_boxes) == (112, 96, (1, 2))
    g = r.data.geometry
    assert g.sampling == ClipSampling(g.min_frames, g.max_frames, g.window, g.grid, g.keep)


def test_resolved_recipe_round_trips(tmp_path):
    import yaml

    r = load_recipe("tiny_cpu", ["gasp.layers=[0, -1]", "data.geometry.synthetic.config.speed_deg=2.0"])
    saved = tmp_path / "gasp_recipe.yaml"
    saved.write_text(yaml.safe_dump(recipe_to_dict(r)))
    again = load_recipe(saved)
    assert again == r and again.gasp.layers == [0, -1] and again.data.geometry.synthetic.config.speed_deg == 2.0


def test_recipe_errors_come_before_any_model_is_built(monkeypatch):
    import gasp_plugin.train.assemble as assemble
    from gasp_plugin.train.launch import train

    def no_model(*args, **kwargs):
        raise AssertionError("build_run reached: the recipe error came too late")

    monkeypatch.setattr(assemble, "build_run", no_model)
    for override in ("data.geometry.synthetic.config.heigth=112", "model.tiny.hidden_size=66"):
        with pytest.raises(RecipeError, match=re.escape(override.split("=")[0])):
            train("tiny_cpu", [override])
