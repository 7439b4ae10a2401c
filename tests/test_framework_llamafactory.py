"""LLaMA-Factory's own entry point (``llamafactory-cli train``) with our patch, for real.

LLaMA-Factory 0.9.5 from the package registry, in a venv of its own (it pins transformers 5.6
and peft 0.18, and its Qwen2-VL processor needs torchvision), with this checkout installed
editable beside it; the installed llamafactory package is copied and patched with
``patches/llamafactory-gasp.patch`` (``-p2``: the patch targets the repository's ``src/``).
A tiny Qwen2-VL on disk, a small image-conversation dataset in LLaMA-Factory's sharegpt layout,
the bundled real RGB-D scene as geometry data. Every step is a geometry step
(``gasp_ratio: 1.0``; geometry batches carry no labels), so whatever moves the LoRA weights is
the GASP loss alone, through LLaMA-Factory's default (gradient-checkpointed) model.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from frameworks import REPO, TORCH_VISION, Framework, ensure_venv

FRAMEWORK = Framework("llamafactory", TORCH_VISION, ("llamafactory==0.9.5",))
SCRIPTS = Path(__file__).parent / "framework_scripts"
SCENE = REPO / "gasp_plugin" / "assets" / "hololens-000"


@pytest.fixture(scope="module")
def lf(tmp_path_factory):
    python = ensure_venv(FRAMEWORK)
    work = tmp_path_factory.mktemp("llamafactory")
    subprocess.run([str(python), str(SCRIPTS / "llamafactory_setup.py"), str(work), str(REPO / "patches" /
                    "llamafactory-gasp.patch")], check=True, capture_output=True, timeout=600)
    return python, work


def _config(work: Path, out: Path, **extra) -> Path:
    cfg = {
        "model_name_or_path": str(work / "model"), "image_max_pixels": 12544, "stage": "sft", "do_train": True,
        "finetuning_type": "lora", "lora_rank": 4, "lora_target": "all", "dataset": "chairs",
        "dataset_dir": str(work / "data"), "template": "qwen2_vl", "cutoff_len": 512, "output_dir": str(out),
        "logging_steps": 1, "save_strategy": "no", "report_to": "none", "overwrite_output_dir": True,
        "per_device_train_batch_size": 1, "learning_rate": 1.0e-3, "max_steps": 4, "lr_scheduler_type": "constant",
        "gasp_geometry_data": str(SCENE), "gasp_ratio": 1.0, "gasp_min_frames": 2, "gasp_max_frames": 3,
        "gasp_grid": "4,8", "gasp_embed_dim": 16, **extra,
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def _cli(python, work, config, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(work / "src"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               DISABLE_VERSION_CHECK="1")
    return subprocess.run([str(python), "-m", "llamafactory.cli", "train", str(config)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_llamafactory_cli_trains_the_llm_with_gasp(lf):
    python, work = lf
    out = work / "gasp"
    run = _cli(python, work, _config(work, out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "corr" in h]
    assert len(steps) == 4 and all(h["depth"] > 0 and h["corr"] > 0 for h in steps)
    assert history[-1]["geometry_batches"] == 4 and history[-1]["skipped_samples"] == 0
    assert (out / "gasp_heads.safetensors").is_file()
    check = work / "check.json"
    subprocess.run([str(python), str(SCRIPTS / "peft_check.py"), str(work / "model"), str(out), str(check)],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(check.read_text())
    # the GASP loss alone moved every LoRA B (zero at init) of the LLM; the adapter loads with plain PEFT
    assert result["lora_b"] > 0 and result["lora_b_nonzero"] == result["lora_b"]
    assert result["finite"] and result["max_logit_change"] > 0 and result["gasp_keys"] == []


def test_llamafactory_refuses_gasp_outside_sft(lf):
    python, work = lf
    run = _cli(python, work, _config(work, work / "pt", stage="pt"))
    assert run.returncode != 0 and "gasp_geometry_data is supported in stage: sft only" in run.stderr


def test_patched_llamafactory_needs_no_gasp_plugin_without_gasp(lf):
    """Every command of the patched repository works without gasp-plugin when GASP is off."""
    python, work = lf
    code = ("import sys; sys.modules['gasp_plugin'] = None\n"
            "from llamafactory.hparams import get_train_args\n"
            f"args = get_train_args({{'model_name_or_path': '{work / 'model'}', 'stage': 'sft', 'do_train': True,"
            f" 'finetuning_type': 'lora', 'dataset': 'chairs', 'dataset_dir': '{work / 'data'}',"
            f" 'template': 'qwen2_vl', 'output_dir': '{work / 'off'}', 'report_to': 'none'}})\n"
            "print('parsed', type(args[3]).__name__)\n")
    env = dict(os.environ, PYTHONPATH=str(work / "src"), HF_HUB_OFFLINE="1", DISABLE_VERSION_CHECK="1")
    run = subprocess.run([str(python), "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "parsed FinetuningArguments" in run.stdout, run.stderr[-3000:]
