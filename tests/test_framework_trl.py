"""TRL's own ``SFTTrainer.train()`` with GASP (``GaspSFTTrainer``), for real.

TRL 1.16 from the package registry in a venv of its own (tests/frameworks.py), with this checkout
installed editable beside it. The venv has torch 2.14.1 + torchvision 0.29.1: SFTTrainer's
vision-language path needs the model's full processor (a ``ProcessorMixin``), and transformers'
``Qwen2VLProcessor`` cannot be built without torchvision (its video processor needs it), so the
CPU torch 2.13.0 on this machine cannot serve it. Each run is tests/framework_scripts/trl_sft.py in
that venv: a tiny Qwen2-VL saved to disk, a small image-conversation dataset in TRL's format, the
bundled real RGB-D scene as geometry data, LoRA with ``target_modules="all-linear"`` through
SFTTrainer's ``peft_config``.

What the runs show: geometry steps log ``corr`` / ``depth`` and instruction steps SFTTrainer's own
``mean_token_accuracy`` / ``entropy``; every LoRA tensor of the LLM moved over the steps before the
first instruction batch, i.e. under the GASP loss alone (with TRL's default checkpointing, with
re-entrant checkpointing, and under DeepSpeed ZeRO-2 and ZeRO-3 in 2 processes); the heads are saved beside
an adapter that plain transformers + PEFT load to the trained model's logits.
"""

import json
import os
import socket
import subprocess
import sys
import types

import pytest

from frameworks import REPO, TORCH_VISION, Framework, ensure_venv

FRAMEWORK = Framework("trl", TORCH_VISION, ("trl==1.16.0", "transformers==5.24.0", "peft==0.21.2",
                                           "deepspeed==0.19.8"))
SCRIPT = REPO / "tests" / "framework_scripts" / "trl_sft.py"
SCENE = REPO / "gasp_plugin" / "assets" / "hololens-000"
TIMEOUT = 600
ZERO2 = {"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
         "gradient_clipping": "auto", "bf16": {"enabled": False}, "fp16": {"enabled": False},
         "zero_optimization": {"stage": 2}, "steps_per_print": 1000000000}
ZERO3 = {**ZERO2, "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}


# ---- without TRL -------------------------------------------------------------------------------


def test_check_sft_config_names_the_option():
    from gasp_plugin.integrations.common import GaspArguments
    from gasp_plugin.integrations.trl import check_sft_config

    on = GaspArguments(gasp_geometry_data="/scenes")
    for name in ("packing", "padding_free"):
        args = types.SimpleNamespace(**{"packing": False, "padding_free": False, name: True})
        with pytest.raises(ValueError, match=rf"SFTConfig\({name}=True\) cannot .* Set {name}=False"):
            check_sft_config(args, on)
        check_sft_config(args, GaspArguments())  # GASP off: SFTTrainer's own behaviour
    check_sft_config(types.SimpleNamespace(packing=False, padding_free=False), on)


def test_lora_all_linear_leaves_the_heads_alone():
    """``exclude_modules`` is set to the heads when the PEFT config has none; a config that still
    adapts them is refused, naming the fix."""
    from peft import LoraConfig, get_peft_model

    from gasp_plugin.core.attach import attach_gasp
    from gasp_plugin.core.config import GaspConfig
    from gasp_plugin.integrations import trl as gasp_trl
    from gasp_plugin.models.tiny import build_tiny_model

    def wrapped(config):
        model, _ = build_tiny_model("qwen2_vl", image_size=112, num_layers=2)
        handle = attach_gasp(model, GaspConfig(embed_dim=16))
        return handle, get_peft_model(model, config)

    user = LoraConfig(r=4, target_modules="all-linear")
    config = gasp_trl._exclude_heads(user)
    assert config is not user and user.exclude_modules is None and config.exclude_modules == gasp_trl.HEADS_EXCLUDE
    handle, model = wrapped(config)
    gasp_trl._check_heads_not_adapted(handle, config)
    gasp_trl._restore_exclude(model, user)
    assert model.peft_config["default"].exclude_modules is None  # what adapter_config.json will say
    handle, _ = wrapped(LoraConfig(r=4, target_modules="all-linear"))
    with pytest.raises(ValueError, match="layers of the GASP heads .* add .* to exclude_modules"):
        gasp_trl._check_heads_not_adapted(handle, None)
    own = LoraConfig(r=4, target_modules="all-linear", exclude_modules=["lm_head"])
    assert gasp_trl._exclude_heads(own) is own  # the user's choice is kept (and checked after wrapping)


# ---- TRL's SFTTrainer.train(), in TRL's venv -----------------------------------------------------


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trl_env(tmp_path_factory):
    from gasp_plugin.models.tiny import save_tiny_model

    python = ensure_venv(FRAMEWORK)
    root = tmp_path_factory.mktemp("trl")
    model = save_tiny_model("qwen2_vl", root / "tiny-qwen2-vl", image_size=112, num_layers=2)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=str(python.parents[1] / "torch_extensions"))  # rebuilt with the venv
    env.pop("PYTHONPATH", None)
    return python, root, model, env


def _run(trl_env, name: str, *args: str, processes: int = 1) -> dict:
    python, root, model, env = trl_env
    out = root / name
    cmd = [str(SCRIPT), "--model", str(model), "--scene", str(SCENE), "--out", str(out), *args]
    if processes > 1:
        cmd = [str(python), "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(_port()), *cmd]
    else:
        cmd = [str(python), *cmd]
    run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return json.loads((out / "result.json").read_text())


def _check_gasp_reached_the_llm(result: dict) -> None:
    assert result["geometry_prefix_steps"] >= 2 and result["llm_lora_tensors"] > 0
    assert len(result["llm_lora_moved_by_gasp_alone"]) == result["llm_lora_tensors"]
    assert result["heads_moved"] and result["heads_shapes_equal"]


def _check_saved(result: dict) -> None:
    assert result["heads_file"] and any(k.endswith("fc1.weight") for k in result["heads_keys"])
    assert result["adapter_gasp_keys"] == [] and result["adapter_lora_keys"] > 0
    assert result["max_logit_diff"] < 1e-5  # plain transformers + PEFT reproduce the trained model


def _steps(result: dict) -> tuple[list, list]:
    logs = [h for h in result["log_history"] if "loss" in h]
    return [h for h in logs if "corr" in h], [h for h in logs if "lm" in h]


def test_import_does_not_import_trl(trl_env):
    python, _, _, env = trl_env
    code = ("import sys, gasp_plugin.integrations.trl as m; assert 'trl' not in sys.modules; "
            "m.GaspSFTTrainer; assert 'trl' in sys.modules; print(m.GaspSFTTrainer.__mro__[2].__name__)")
    run = subprocess.run([str(python), "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "SFTTrainer", run.stderr[-3000:]


def test_sft_trainer_keeps_its_metrics_and_saves_a_plain_adapter(trl_env):
    """TRL's defaults (activation checkpointing on, transformers' default kind), half geometry steps."""
    result = _run(trl_env, "mixed", "--ratio", "0.5", "--max-steps", "8", "--preflight")
    counters = result["counters"]
    assert counters["geometry_batches"] >= 2 and counters["instruct_batches"] >= 1
    assert counters["geometry_batches"] + counters["instruct_batches"] == result["global_step"] == 8
    geometry, instruct = _steps(result)
    assert len(geometry) == counters["geometry_batches"] and len(instruct) == counters["instruct_batches"]
    assert all(h["corr"] > 0 and h["depth"] > 0 and "mean_token_accuracy" not in h for h in geometry)
    assert all(0 <= h["mean_token_accuracy"] <= 1 and h["entropy"] > 0 and h["num_tokens"] > 0 for h in instruct)
    assert result["checkpointing"]["on"] and result["gasp_max_tokens"] == 1024  # SFTConfig's max_length
    _check_gasp_reached_the_llm(result)
    _check_saved(result)
    refused = result["refused"]
    assert "Set packing=False" in refused["packing"] and "Set padding_free=False" in refused["padding_free"]
    assert "vision-language model" in refused["tokenizer_only"]  # SFTTrainer's own error ...
    assert not any(refused[f"{case}_left_heads"] for case in ("packing", "padding_free", "tokenizer_only"))
    assert refused["off_is_plain_sft"]  # ... and the model is left without heads; GASP off: plain SFTTrainer


def test_gasp_alone_trains_the_llm_under_reentrant_checkpointing(trl_env):
    """Every step a geometry step, re-entrant checkpointing (what TRL asks for with PEFT + ZeRO-3)."""
    result = _run(trl_env, "reentrant", "--ratio", "1.0", "--max-steps", "3", "--checkpointing", "reentrant")
    assert result["checkpointing"] == {"on": True, "kwargs": {"use_reentrant": True}}
    assert result["counters"].get("instruct_batches", 0) == 0 and result["counters"]["geometry_batches"] == 3
    assert result["geometry_prefix_steps"] == 3
    _check_gasp_reached_the_llm(result)
    _check_saved(result)


@pytest.mark.skipif(sys.platform != "linux", reason="DeepSpeed's CPU accelerator is checked on Linux")
@pytest.mark.parametrize("stage,config", [(2, ZERO2), (3, ZERO3)], ids=["zero2", "zero3"])
def test_deepspeed_two_processes(trl_env, stage, config):
    """SFTConfig(deepspeed=..., use_cpu=True) under torchrun, 2 processes (gloo). ZeRO-3 shards the
    parameters (the heads too): GASP still moves every LLM LoRA tensor on its own, the heads train
    and are saved whole, and the saved adapter loads with plain PEFT to the trained logits."""
    _, root, _, _ = trl_env
    path = root / f"zero{stage}.json"
    path.write_text(json.dumps(config))
    result = _run(trl_env, f"zero{stage}", "--ratio", "0.5", "--max-steps", "6", "--deepspeed", str(path), processes=2)
    assert result["world_size"] == 2 and result["deepspeed_zero_stage"] == stage
    geometry, instruct = _steps(result)
    assert geometry and instruct and "mean_token_accuracy" in instruct[0]
    _check_gasp_reached_the_llm(result)
    _check_saved(result)
