"""The probe end to end on tiny random models: report schema, files, token bookkeeping, CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gasp_plugin.assets import asset_path
from gasp_plugin.data.scene import Scene, open_scene
from gasp_plugin.models.registry import get_adapter
from gasp_plugin.models.tiny import build_tiny_model, save_tiny_model
from gasp_plugin.probe.pairs import select_pairs
from gasp_plugin.probe.runner import run_probe

SUMMARY_KEYS = {"peak_layer", "pck0", "pck1", "pck2", "chance_pck2", "rho", "robustness_max_gap",
                "max_gap", "covisible_max_gap"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_qwen():
    return build_tiny_model("qwen2_vl", hidden_size=64, num_layers=2, image_size=224)


@pytest.fixture(scope="module")
def hololens():
    return open_scene(asset_path("hololens-000"))


class StaticScene(Scene):
    """The same textured frame and pose repeated: every track stays on its pixel."""

    def __init__(self, n=4, h=224, w=224):
        self.name, self.n = "static", n
        rng = np.random.default_rng(0)
        self.img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        self.h, self.w = h, w

    def __len__(self):
        return self.n

    def image(self, i):
        return self.img

    def depth(self, i):
        return np.full((self.h, self.w), 2.0, np.float32)

    def intrinsics(self, i):
        return np.array([[200.0, 0, (self.w - 1) / 2], [0, 200.0, (self.h - 1) / 2], [0, 0, 1]])

    def pose(self, i):
        return np.eye(4)


class OneHotHeads(torch.nn.Module):
    """Oracle heads: token k of a frame gets the k-th unit vector, whatever the hidden state."""

    layers = [0, 1]

    def forward(self, hidden, layer):  # [..., n, d] -> [..., n, n]
        n = hidden.shape[-2]
        return torch.eye(n).expand(*hidden.shape[:-2], n, n)


def _check_fraction(v):
    assert v is None or (isinstance(v, float) and 0.0 <= v <= 1.0), v


def test_probe_json_schema_and_figures(tiny_qwen, hololens, tmp_path):
    model, processor = tiny_qwen
    report = run_probe(model, processor, [hololens], max_gap=4, pairs_per_gap=1, out_dir=tmp_path,
                       progress=False, model_name="tiny-qwen")
    data = json.loads((tmp_path / "probe.json").read_text())
    assert set(data["summary"]) == {"qk", "hidden"}  # no heads given
    for desc, s in data["summary"].items():
        assert set(s) == SUMMARY_KEYS
        for k in ("pck0", "pck1", "pck2", "chance_pck2", "covisible_max_gap"):
            _check_fraction(s[k])
        assert s["pck0"] <= s["pck1"] <= s["pck2"]
        assert s["max_gap"] == 4 and s["peak_layer"] in (0, 1)
        assert s["rho"] is None or -1.0 <= s["rho"] <= 1.0
    assert data["scenes"] == ["hololens-000"]
    assert data["meta"]["scene_frames"] == {"hololens-000": 24}
    assert data["meta"]["figures"] == ["pck_per_layer.png", "robustness.png", "matches.png"]
    assert [p["gap"] for p in data["pairs"]] == [1, 2, 3, 4]
    assert set(data["gaps"]) == {"1", "2", "3", "4"}
    for g in data["gaps"].values():
        assert set(g) == {"pairs", "rotation_deg", "translation_m", "covisible"}
        _check_fraction(g["covisible"])
    assert [r["layer"] for r in data["layers"]["qk"]] == [0, 1]
    rec = data["layers"]["qk"][0]
    assert sum(rec["queries_by_gap"].values()) == rec["queries"] == sum(p["visible_points"] for p in data["pairs"])
    # 224-pixel budget on a 540x360 frame: the processor's grid, recorded, with the exact chance
    gh, gw = data["token_grids"][0]
    assert gh * gw > 16
    # the per-layer table and the JSON agree
    assert report.summary()["qk"]["pck2"] == data["summary"]["qk"]["pck2"]
    for name in ("pck_per_layer.png", "robustness.png", "matches.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    from gasp_plugin.probe.plots import plot_conditions

    path = plot_conditions({"a": report, "b": report}, tmp_path / "compare.png")
    with Image.open(path) as im:
        assert im.size[0] > 500
    table = report.table()
    assert "chance" in table.splitlines()[2] and "hidden" in table.splitlines()[0]


def test_oracle_descriptor_is_perfect_on_a_static_scene(tiny_qwen):
    """With the target frame identical to the anchor, truth token == query token, so one-hot
    descriptors must score 1.0 at delta 0; this checks the runner's query/truth bookkeeping."""
    model, processor = tiny_qwen
    scene = StaticScene()
    model.train()  # probing runs in eval mode and gives the model back in the mode it came in
    report = run_probe(model, processor, [scene], heads=OneHotHeads(), max_gap=3, pairs_per_gap=1,
                       progress=False)
    assert model.training
    model.eval()
    s = report.summary()["head"]
    assert s["pck0"] == 1.0 and s["pck2"] == 1.0
    assert s["robustness_max_gap"] == 1.0 and s["covisible_max_gap"] == 1.0
    assert s["rho"] is None  # every match correct: the correlation is undefined
    assert s["chance_pck2"] < 0.5
    # hidden states of the second frame are not copies of the first's (context, positions)
    assert report.stats["hidden"][0].num_queries == report.stats["head"][0].num_queries


def test_probe_bad_inputs(tiny_qwen, hololens):
    model, processor = tiny_qwen
    with pytest.raises(ValueError, match="out of range"):
        run_probe(model, processor, [hololens], layers=[5], max_gap=1, pairs_per_gap=1, progress=False)
    from gasp_plugin.core.head import GaspHeads

    with pytest.raises(ValueError, match="unknown distance"):
        run_probe(model, processor, [hololens], distance="manhattan", max_gap=1, progress=False)
    with pytest.raises(ValueError, match="hidden size 32"):
        run_probe(model, processor, [hololens], heads=GaspHeads(32, [0]), max_gap=1, progress=False)


def main(argv):
    """``gasp probe ...`` through the probe command's own parser (the registry entry is checked
    separately, so these tests do not depend on other commands' modules)."""
    import argparse

    from gasp_plugin.probe import cli

    assert argv[0] == "probe"
    parser = argparse.ArgumentParser(prog="gasp probe")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv[1:]))


def test_probe_is_registered_and_cheap_to_import():
    import subprocess
    import sys

    from gasp_plugin.cli import COMMANDS

    assert COMMANDS["probe"][0] == "gasp_plugin.probe.cli"
    code = "import sys, gasp_plugin.probe.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_probe_cli_on_a_saved_checkpoint_and_a_peft_adapter(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    ckpt = save_tiny_model("qwen2_vl", tmp_path / "ckpt", hidden_size=64, num_layers=2, image_size=112)
    scene_dir = str(asset_path("hololens-000"))
    out = tmp_path / "probe"
    rc = main(["probe", "--model", str(ckpt), "--scenes", scene_dir, "--max-gap", "2", "--grid", "6",
               "--pairs-per-gap", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "peak layers" in printed and "probe.json" in printed
    data = json.loads((out / "probe.json").read_text())
    assert data["query_grid"] == 6 and data["max_gap"] == 2

    # a LoRA adapter folder: base loaded from base_model_name_or_path, adapter merged
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(ckpt)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=r".*language_model.*\.(q|k)_proj"))
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(ckpt)
    rc = main(["probe", "--model", str(adapter_dir), "--scenes", scene_dir, "--max-gap", "1",
               "--pairs-per-gap", "1", "--out", str(tmp_path / "probe2"), "--no-progress", "--distance", "chebyshev"])
    assert rc == 0
    data2 = json.loads((tmp_path / "probe2" / "probe.json").read_text())
    assert data2["distance"] == "chebyshev distance in token cells"  # the flag, not the default


def test_probe_cli_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder"):
        main(["probe", "--model", str(tmp_path), "--scenes", str(asset_path("hololens-000"))])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["probe", "--model", "tiny:qwen2_vl", "--scenes", str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a scene nor a folder of scenes"):
        main(["probe", "--model", "tiny:qwen2_vl", "--scenes", str(tmp_path / "empty")])


def test_probe_on_llava_with_center_crop(hololens):
    """LLaVA's processor resizes and centre-crops: tracks falling outside the crop are left out,
    the others are scored on its 14-pixel token grid."""
    model, processor = build_tiny_model("llava", hidden_size=64, num_layers=2, image_size=112)
    report = run_probe(model, processor, [hololens], max_gap=2, pairs_per_gap=1, progress=False)
    assert report.token_grids == [(8, 8)]
    st = report.stats["qk"][0]
    visible = sum(int(p.tracks.visible[1].sum()) for p in report.pair_set.pairs)
    assert 0 < st.num_queries < visible  # the crop removes the side columns of the 3:2 frame
    assert st.chance_pck(0) == pytest.approx(1 / 64)


def test_model_from_recipe_before_and_after_training(tmp_path):
    """A recipe gives its starting model until its output_dir holds a saved model; then the trained
    model, with the heads training saved beside it (a self-describing heads file)."""
    from gasp_plugin.core.attach import save_heads
    from gasp_plugin.core.config import GaspConfig
    from gasp_plugin.core.head import GaspHeads
    from gasp_plugin.probe.loading import load_probe_heads, load_probe_model

    out = tmp_path / "run"
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(
        "model:\n  path: tiny:qwen2_vl\n  tiny: {hidden_size: 64, num_layers: 2, image_size: 112}\n"
        "gasp: {embed_dim: 16, init: random, layers: [0, 1]}\n"
        f"training: {{output_dir: {out}}}\n"
    )
    pm = load_probe_model(recipe)
    assert pm.name == "mine" and pm.heads_path is None and "starting model" in pm.source
    assert len(get_adapter(pm.model).decoder_layers(pm.model)) == 2

    save_tiny_model("qwen2_vl", out, hidden_size=64, num_layers=2, image_size=112, seed=7)
    trained = GaspHeads(64, [0, 1], GaspConfig(embed_dim=16, init="random", seed=5))
    save_heads(trained, out / "gasp_heads.safetensors")
    pm = load_probe_model(recipe)
    assert "trained model" in pm.source and pm.heads_path == out / "gasp_heads.safetensors"
    heads = load_probe_heads(pm.model, pm.heads_path)
    x = torch.randn(3, 64)
    torch.testing.assert_close(heads(x, 1), trained(x, 1))
    plain = tmp_path / "plain.safetensors"  # a bare state dict is not a heads file
    from safetensors.torch import save_file

    save_file(dict(trained.state_dict()), str(plain), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="is not a GASP heads file"):
        load_probe_heads(pm.model, plain)
    # the output folder itself, with the recipe training writes beside the model
    (out / "gasp_recipe.yaml").write_text(recipe.read_text())
    pm = load_probe_model(out)
    assert pm.heads_path == out / "gasp_heads.safetensors"
    from gasp_plugin.probe.loading import held_out

    assert pm.training_scenes == []  # this recipe names no geometry data
    assert held_out([tmp_path / "a"], [tmp_path / "a" / "scene-1"]) is False
    assert held_out([tmp_path / "a" / "scene-1"], [tmp_path / "a"]) is False
    assert held_out([tmp_path / "b"], [tmp_path / "a"]) is True
    assert held_out([tmp_path / "b"], None) is None
    heads = load_probe_heads(pm.model, pm.heads_path)
    torch.testing.assert_close(heads(x, 0), trained(x, 0))


def test_probe_cli_with_heads_on_a_synthetic_scene(tmp_path, capsys, caplog):
    """A written synthetic scene read back by the scene reader, a saved tiny checkpoint and a
    saved heads file: the ``head`` descriptor appears for the layers the heads supervise."""
    from gasp_plugin.core.attach import save_heads
    from gasp_plugin.core.config import GaspConfig
    from gasp_plugin.core.head import GaspHeads
    from gasp_plugin.data.synthetic import SyntheticSceneConfig, make_synthetic_scene, write_scene

    scene = make_synthetic_scene(SyntheticSceneConfig(height=112, width=112, num_frames=5), seed=3)
    scenes_dir = tmp_path / "held_out"
    write_scene(scene, scenes_dir / "scene-a")
    (scenes_dir / "notes").mkdir()  # not a scene: skipped with a warning
    ckpt = save_tiny_model("qwen2_vl", tmp_path / "ckpt", hidden_size=64, num_layers=2, image_size=112)
    heads = GaspHeads(64, layers=[1], config=GaspConfig(embed_dim=16, init="random"))
    heads_file = save_heads(heads, tmp_path / "gasp_heads.safetensors")
    rc = main(["probe", "--model", str(ckpt), "--scenes", str(scenes_dir), "--heads", str(heads_file),
               "--max-gap", "24", "--pairs-per-gap", "1", "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    data = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert set(data["summary"]) == {"qk", "hidden", "head"}
    assert data["summary"]["head"]["peak_layer"] == 1
    assert [r["layer"] for r in data["layers"]["head"]] == [1]
    assert data["max_gap"] == 4 and data["scenes"] == ["scene-a"]
    assert data["token_grids"] == [[4, 4]]
    assert data["summary"]["qk"]["chance_pck2"] > 0.5  # a 4x4 grid: most cells lie within 2
    assert "head" in capsys.readouterr().out
    assert "skipping" in caplog.text and "notes" in caplog.text
    assert data["meta"]["heads"] == str(heads_file) and data["meta"]["scene_args"] == [str(scenes_dir)]


@pytest.mark.parametrize("model_type,overrides", [
    ("qwen2_vl", {}),
    ("qwen2_5_vl", {"text_num_key_value_heads": 2}),  # grouped-query attention: 4 q heads, 2 kv heads
    ("llava", {}),
])
def test_batching_pairs_changes_nothing(model_type, overrides, hololens):
    model, processor = build_tiny_model(model_type, hidden_size=64, num_layers=2, image_size=112, **overrides)
    pairs = select_pairs([hololens], max_gap=5, pairs_per_gap=1)
    one = run_probe(model, processor, [hololens], pairs=pairs, batch_size=1, progress=False)
    many = run_probe(model, processor, [hololens], pairs=pairs, batch_size=3, progress=False)
    assert one.meta["forwards"] == 5 and many.meta["forwards"] == 2
    for desc in ("qk", "hidden"):
        for layer in (0, 1):
            a, b = one.stats[desc][layer], many.stats[desc][layer]
            assert torch.equal(torch.cat(a.distance), torch.cat(b.distance))
            torch.testing.assert_close(torch.cat(a.confidence), torch.cat(b.confidence), rtol=1e-4, atol=1e-5)
