"""``gasp export``: a real ``gasp train`` run (tiny recipe, LoRA, 2 steps) to a plain checkpoint that
transformers loads without gasp-plugin, with the adapter's logits.

About 45 s on 2 CPU cores: the training run (about 25 s, most of it process start), one export,
and a plain-transformers check in a process that cannot import gasp_plugin.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gasp_plugin.constants import HEADS_FILE
from gasp_plugin.eval.export import export_run

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "tests" / "framework_scripts" / "export_check.py"
TINY_LORA = [
    "training.max_steps=2", "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.image_size=112",
    "lora.enabled=true", "lora.r=4", "gasp.embed_dim=16", "model.train_vision=false", "training.learning_rate=5.0e-3",
    "data.geometry.synthetic.count=1", "data.geometry.synthetic.config={height: 112, width: 112, num_frames: 12}",
    "data.geometry.min_frames=3", "data.geometry.max_frames=3", "data.instruct.synthetic.count=4",
    "data.geometry_ratio=0.5", "training.trace_data=true",
]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    cmd = [sys.executable, "-m", "gasp_plugin.cli", "train", "--recipe", "tiny_cpu", f"training.output_dir={out}", *TINY_LORA]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (out / "adapter_config.json").is_file() and (out / HEADS_FILE).is_file()
    return out


@pytest.fixture(scope="module")
def exported(trained) -> Path:
    return export_run(trained, trained.parent / "export")


def test_export_is_a_plain_checkpoint(exported, trained):
    names = sorted(p.name for p in exported.iterdir())
    assert HEADS_FILE not in names and "adapter_config.json" not in names and "adapter_model.safetensors" not in names
    for needed in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                   "tokenizer_config.json", "preprocessor_config.json", "chat_template.jinja", "README.md"):
        assert needed in names, f"{needed} missing from {names}"
    assert (exported / "chat_template.jinja").read_bytes() == (trained / "chat_template.jinja").read_bytes()
    from safetensors import safe_open

    with safe_open(str(exported / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "gasp" in k or "lora" in k]
    card = (exported / "README.md").read_text()
    assert "Trained with gasp-plugin" in card and "LoRA r=4" in card and "2 optimizer steps" in card
    assert "heads were discarded" in card and not [p for p in exported.parent.iterdir() if p.name.startswith(".export.")]


def test_export_loads_with_plain_transformers_and_matches_the_adapter(exported, trained, tmp_path):
    base = json.loads((trained / "adapter_config.json").read_text())["base_model_name_or_path"]
    out = tmp_path / "check.json"
    cmd = [sys.executable, str(CHECK), str(exported), base, str(trained), str(trained / "reference_outputs.pt"), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["export_class"] == "Qwen2VLForConditionalGeneration" and r["param_names_with_gasp"] == []
    assert r["export_vs_adapter"] < 1e-4 and r["export_vs_trained"] < 1e-4, r
    assert r["export_vs_base"] > 1e-3, r  # the merged LoRA changed the model
    assert r["chat_template"]


def test_export_refuses_to_overwrite_unless_asked(exported, trained):
    before = (exported / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_run(trained, exported)
    assert (exported / "model.safetensors").stat().st_mtime_ns == before
    (exported / "stale.txt").write_text("from an earlier export")
    export_run(trained, exported, overwrite=True)
    assert not (exported / "stale.txt").exists() and (exported / "config.json").is_file()


def test_export_refuses_a_folder_inside_the_run_and_a_missing_base(trained, tmp_path):
    with pytest.raises(ValueError, match="contain one another"):
        export_run(trained, trained / "export")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = json.loads((trained / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(dict(config, base_model_name_or_path="Qwen/Qwen2.5-VL-7B-Instruct")))
    with pytest.raises(FileNotFoundError, match="--base DIR"):
        export_run(adapter, tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="not a trained run"):
        export_run(empty, tmp_path / "out3")


def test_full_fine_tune_run_drops_the_heads_file(tmp_path):
    from safetensors.torch import save_file

    from gasp_plugin.models.tiny import save_tiny_model

    run = save_tiny_model("qwen2_vl", tmp_path / "run", image_size=112, num_layers=2)
    import torch

    save_file({"heads.0.fc1.weight": torch.zeros(2, 2)}, str(run / HEADS_FILE))
    out = export_run(run, tmp_path / "export")
    assert not (out / HEADS_FILE).exists() and (out / "model.safetensors").is_file()
    assert "full fine-tuning" in (out / "README.md").read_text()


def test_cli_reports_an_existing_folder_in_one_line(exported, trained):
    done = subprocess.run([sys.executable, "-m", "gasp_plugin.cli", "export", str(trained), "--out", str(exported)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("gasp export: error: --out") and "Traceback" not in done.stderr
