"""ms-swift's own entry point (``swift sft``) with the GASP plugin file, for real.

ms-swift 4.6.0 from the package registry in a venv of its own (tests/frameworks.py: it pins
transformers < 5.20 and peft < 0.21, and its Qwen2-VL processor needs torchvision; its Qwen2-VL
model loader needs qwen-vl-utils, which it does not declare), with this checkout installed
editable beside it. A tiny Qwen2-VL on disk, a small image-conversation dataset in ms-swift's
JSONL format, the bundled real RGB-D scene as geometry data, LoRA on every linear layer of the LLM.
``tests/framework_scripts/swift_tiny_template.py`` (a second ``--external_plugins`` file) registers
ms-swift's Qwen2-VL template with the tiny tokenizer's image token ids.

The main run makes every step a geometry step (``GASP_RATIO=1.0``; geometry batches carry no
labels), so whatever moves the LoRA weights is the GASP loss alone, through ms-swift's default
(gradient-checkpointed) model. No DeepSpeed run: ms-swift does not install DeepSpeed, and the
2-process ZeRO-2 path is covered by the TRL test.
"""

import json
import os
import subprocess
import types
from pathlib import Path

import pytest

from frameworks import REPO, TORCH_VISION, Framework, ensure_venv

FRAMEWORK = Framework("swift", TORCH_VISION, ("ms-swift==4.6.0", "qwen-vl-utils==0.0.14", "transformers==5.19.0",
                                             "peft==0.20.0"))
SCRIPTS = Path(__file__).parent / "framework_scripts"
SCENE = REPO / "gasp_plugin" / "assets" / "hololens-000"
PLUGIN = REPO / "gasp_plugin" / "integrations" / "swift.py"
MAX_PIXELS = 25088  # 32 merged 28x28 cells: twice the tiny processor's own budget (12544)
GASP_ENV = {"GASP_GEOMETRY_DATA": str(SCENE), "GASP_MIN_FRAMES": "2", "GASP_MAX_FRAMES": "3", "GASP_GRID": "4,8",
            "GASP_EMBED_DIM": "16", "MAX_PIXELS": str(MAX_PIXELS)}
TIMEOUT = 600


# ---- without ms-swift --------------------------------------------------------------------------------


def test_settings_come_from_gasp_environment_variables():
    from gasp_plugin.integrations.swift import gasp_arguments_from_env

    args = gasp_arguments_from_env({"GASP_GEOMETRY_DATA": "/a,/b", "GASP_RATIO": "1.0", "GASP_GRID": "8,24",
                                    "GASP_MAX_TOKENS": "none", "GASP_MIN_FRAMES": "2", "GASP_HEAD_LR_SCALE": "2"})
    assert args.gasp_enabled and args.gasp_scene_paths() == ["/a", "/b"] and args.gasp_ratio == 1.0
    assert args.gasp_grid == "8,24" and args.gasp_max_tokens is None and args.gasp_min_frames == 2
    assert args.gasp_head_lr_scale == 2.0 and not gasp_arguments_from_env({}).gasp_enabled
    with pytest.raises(ValueError, match=r"^GASP_RATIO must be .*got 2\.0"):
        gasp_arguments_from_env({"GASP_RATIO": "2"})
    with pytest.raises(ValueError, match=r"^GASP_MIN_FRAMES must be an int; got 'x'"):
        gasp_arguments_from_env({"GASP_MIN_FRAMES": "x"})
    with pytest.raises(ValueError, match="GASP_GRID"):
        gasp_arguments_from_env({"GASP_GRID": "a,b"})


def test_packing_padding_free_and_sequence_parallel_are_refused():
    from gasp_plugin.integrations.swift import check_template

    def template(**kw):
        return types.SimpleNamespace(**{"packing": False, "padding_free": False, "sequence_parallel_size": 1, **kw})

    check_template(template())
    with pytest.raises(ValueError, match=r"^--packing true cannot .* Set --packing false"):
        check_template(template(packing=True, padding_free=True))  # ms-swift sets both for --packing
    with pytest.raises(ValueError, match=r"^--padding_free true cannot .* Set --padding_free false"):
        check_template(template(padding_free=True))
    with pytest.raises(ValueError, match="--sequence_parallel_size 2 shards"):
        check_template(template(sequence_parallel_size=2))


def test_pixel_budget_is_ms_swifts():
    """qwen_vl_utils' token counts ms-swift resolved (MAX_PIXELS maps onto them), capped by
    --max_pixels; without them the MIN/MAX_PIXELS variables; on a processor copy only."""
    from gasp_plugin.core.attach import attach_gasp
    from gasp_plugin.core.config import GaspConfig
    from gasp_plugin.integrations.swift import geometry_processor, pixel_budget
    from gasp_plugin.models.tiny import build_tiny_model

    model, processor = build_tiny_model("qwen2_vl", image_size=112, num_layers=2)
    adapter = attach_gasp(model, GaspConfig(embed_dim=16)).adapter
    own = adapter.pixel_budget(processor)
    processor.global_vars = {"image_min_token_num": 4, "image_max_token_num": 32}  # what ms-swift sets
    template = types.SimpleNamespace(processor=processor, max_pixels=None)
    assert pixel_budget(template, {}) == (4 * 28 * 28, 32 * 28 * 28)
    copied = geometry_processor(template, adapter, {})
    assert adapter.pixel_budget(copied) == (3136, 25088) and adapter.pixel_budget(processor) == own
    template.max_pixels = 20000  # --max_pixels scales images down first
    assert pixel_budget(template, {}) == (3136, 20000)
    processor.global_vars = {}
    template.max_pixels = None
    assert pixel_budget(template, {"MAX_PIXELS": "50176", "MIN_PIXELS": "1000"}) == (1000, 50176)
    assert pixel_budget(template, {}) == (None, None)
    assert adapter.pixel_budget(geometry_processor(template, adapter, {})) == own
    with pytest.raises(ValueError, match="MAX_PIXELS must be an int"):
        pixel_budget(template, {"MAX_PIXELS": "big"})


def test_gasp_integrations_swift_prints_the_plugin_file(capsys):
    from gasp_plugin.cli import main

    assert main(["integrations", "swift"]) == 0
    assert Path(capsys.readouterr().out.strip()) == PLUGIN.resolve()


# ---- ms-swift 4.6, in its venv --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swift_env(tmp_path_factory):
    python = ensure_venv(FRAMEWORK)
    work = tmp_path_factory.mktemp("swift")
    subprocess.run([str(python), str(SCRIPTS / "swift_setup.py"), str(work)], check=True, capture_output=True,
                   timeout=600)
    env = dict(os.environ, HF_HUB_OFFLINE="1", USE_HF="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for key in [k for k in env if k.startswith("GASP_") or k in ("MAX_PIXELS", "MIN_PIXELS", "PYTHONPATH")]:
        env.pop(key)
    return python, work, env


def _sft_args(work: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(work / "model"), "--model_type", "qwen2_vl", "--template", "tiny_qwen2_vl",
            "--external_plugins", str(SCRIPTS / "swift_tiny_template.py"), str(SCRIPTS / "swift_probe.py"), str(PLUGIN),
            "--tuner_type", "lora", "--lora_rank", "4", "--target_modules", "all-linear",
            "--dataset", str(work / "data" / "train.jsonl"), "--split_dataset_ratio", "0",
            "--output_dir", str(out), "--add_version", "false", "--per_device_train_batch_size", "1",
            "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3", "--logging_steps", "1",
            "--report_to", "none", "--check_model", "false", "--dataset_num_proc", "1",
            "--dataloader_num_workers", "0", "--torch_dtype", "float32", "--max_length", "512", *extra]


def _swift_sft(swift_env, out: Path, *extra: str, env: dict | None = None):
    python, work, base_env = swift_env
    swift = python.parent / "swift"
    return subprocess.run([str(swift), "sft", *_sft_args(work, out, *extra)], cwd=work, env={**base_env, **(env or {})},
                          capture_output=True, text=True, timeout=TIMEOUT)


def _train_logs(out: Path) -> list[dict]:
    lines = (out / "logging.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"loss"' in line and '"train_runtime"' not in line]


def test_swift_sft_trains_the_llm_with_the_gasp_loss_alone(swift_env):
    python, work, _ = swift_env
    out, trace, probe = work / "gasp", work / "trace", work / "probe.jsonl"
    run = _swift_sft(swift_env, out, "--max_steps", "4", "--lr_scheduler_type", "constant",
                     env={**GASP_ENV, "GASP_RATIO": "1.0", "GASP_TRACE_DIR": str(trace), "GASP_TEST_PROBE": str(probe)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    assert "use_reentrant: False" in run.stderr  # ms-swift's default (re-entrant) replaced
    steps = _train_logs(out)
    assert len(steps) == 4 and all(h["corr"] > 0 and h["depth"] > 0 and "lm" not in h for h in steps)
    assert steps[-1]["geometry_batches"] == 4 and steps[-1]["skipped_samples"] == 0
    checkpoint = out / "checkpoint-4"
    assert (checkpoint / "gasp_heads.safetensors").is_file()
    # geometry frames at MAX_PIXELS (24 visual tokens + 2 markers per 1296x968 frame; the tiny
    # processor's own budget gives 12), clips within --max_length
    clips = [json.loads(line) for line in (trace / "data_trace_rank0.jsonl").read_text().splitlines()]
    assert len(clips) == 4 and all(c["kind"] == "geometry" and c["pairs"] > 0 for c in clips)
    assert all(26 * c["frames"] <= c["tokens"] < 26 * c["frames"] + 16 <= 512 for c in clips)
    # geometry batches reached the LLM with Qwen2-VL's M-RoPE positions (ms-swift's post-encode hook,
    # which would give them text positions, is skipped for them)
    forwards = [json.loads(line) for line in probe.read_text().splitlines()]
    training = [f for f in forwards if f["training"]]
    assert [f["tokens"] for f in training] == [c["tokens"] for c in clips] and all(f["mrope"] for f in training)
    check = work / "check.json"
    subprocess.run([str(python), str(SCRIPTS / "peft_check.py"), str(work / "model"), str(checkpoint), str(check)],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(check.read_text())
    # the GASP loss alone moved every LoRA B (zero at init) of the LLM; the adapter loads with plain PEFT
    assert result["lora_b"] == 14 and result["lora_b_nonzero"] == result["lora_b"]
    assert result["finite"] and result["max_logit_change"] > 0 and result["gasp_keys"] == []


def test_instruction_steps_keep_ms_swifts_loss_and_metrics(swift_env):
    """Half geometry steps (seed 4: steps 1, 3, 6); instruction steps log ms-swift's token_acc."""
    _, work, _ = swift_env
    out = work / "mixed"
    probe = work / "mixed_probe.jsonl"
    run = _swift_sft(swift_env, out, "--max_steps", "6", "--seed", "4", "--save_strategy", "no",
                     env={**GASP_ENV, "GASP_RATIO": "0.5", "GASP_TEST_PROBE": str(probe)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    forwards = [json.loads(line) for line in probe.read_text().splitlines()]
    assert len(forwards) == 6 and all(f["training"] and f["mrope"] for f in forwards)  # both kinds of step
    steps = _train_logs(out)
    geometry, instruct = [h for h in steps if "corr" in h], [h for h in steps if "lm" in h]
    assert len(geometry) == 3 and len(instruct) == 3 and len(steps) == 6
    assert all(h["depth"] > 0 and "token_acc" not in h for h in geometry)
    assert all(h["lm"] > 0 and 0 <= h["token_acc"] <= 1 for h in instruct)
    assert steps[-1]["geometry_batches"] == 3 and steps[-1]["instruct_batches"] == 3


def test_plugin_without_gasp_leaves_swift_sft_as_it_was(swift_env):
    _, work, _ = swift_env
    out = work / "off"
    run = _swift_sft(swift_env, out, "--max_steps", "1", "--save_strategy", "no")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    (step,) = _train_logs(out)
    assert "token_acc" in step and not any(k in step for k in ("corr", "lm", "geometry_batches"))


@pytest.mark.parametrize("option", ["--packing", "--padding_free"])
def test_packing_and_padding_free_are_refused(swift_env, option):
    """Through ms-swift's sft pipeline (model loaded, data encoded and packed) to the trainer,
    where the plugin refuses; swift_refuse.py lifts ms-swift's own flash-attention check first."""
    python, work, env = swift_env
    cmd = [str(python), str(SCRIPTS / "swift_refuse.py"), *_sft_args(work, work / "refused", "--max_steps", "2",
                                                                     option, "true")]
    run = subprocess.run(cmd, cwd=work, env={**env, **GASP_ENV}, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 3, run.stdout[-3000:] + run.stderr[-6000:]
    assert f"REFUSED: {option} true cannot be combined with GASP_GEOMETRY_DATA" in run.stdout
    assert f"Set {option} false" in run.stdout


def test_trainer_registry(swift_env):
    """Loading the file: every trainer-mapping entry points at the plugin; GASP off builds ms-swift's
    own trainers, GASP on the mixed-in Seq2SeqTrainer for sft and an error for any other trainer."""
    python, _, env = swift_env
    run = subprocess.run([str(python), str(SCRIPTS / "swift_registry.py"), str(PLUGIN)], env=env,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert not result["swift_imported_by_module"]  # import gasp_plugin.integrations.swift imports no ms-swift
    assert not result["plugin_folder_on_sys_path"]  # its trl.py / swift.py must not shadow the packages
    assert result["mapping_keys_kept"]
    assert all(v.startswith("gasp_plugin.integrations.swift.trainer_for_") for v in result["mapping"].values())
    assert result["off"] == {"sft": "Seq2SeqTrainer", "dpo": "DPOTrainer"}
    assert result["on"]["sft"] == "GaspSwiftSeq2SeqTrainer"
    assert result["on"]["mro"][2:] == ["GaspTrainerMixin", "Seq2SeqTrainer"]
    assert "GASP trains with swift sft (task_type causal_lm) only" in result["on"]["dpo"]
    assert result["bad_env"].startswith("GASP_RATIO must be")


def test_gasp_terms_stay_a_mean_over_accumulated_micro_batches_under_loss_type(swift_env):
    """``--loss_type`` makes ms-swift's loss a ``compute_loss_func``, after which the Trainer no
    longer divides by the accumulation steps: the GASP terms must still come out as their mean over
    the micro-batches (the logged loss of a geometry-only step equals the weighted logged terms)."""
    from gasp_plugin.core.config import GaspConfig

    _, work, _ = swift_env
    out = work / "loss_type"
    run = _swift_sft(swift_env, out, "--max_steps", "2", "--gradient_accumulation_steps", "2",
                     "--loss_type", "cross_entropy", env={**GASP_ENV, "GASP_RATIO": "1.0"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    steps = _train_logs(out)
    assert len(steps) == 2 and steps[-1]["geometry_batches"] == 4
    cfg = GaspConfig()
    for h in steps:
        assert h["loss"] == pytest.approx(cfg.corr_weight * h["corr"] + cfg.depth_weight * h["depth"], rel=0.02)
