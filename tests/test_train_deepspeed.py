"""The tiny recipe under real DeepSpeed ZeRO-2 and ZeRO-3 with LoRA, in 2 processes (gloo, CPU).

ZeRO-2 runs through ``bash recipes/qwen2vl_gasp.sh`` (which starts the deepspeed launcher), ZeRO-3
through ``deepspeed recipes/qwen2vl_gasp.sh`` directly, then resumes. Each run is bounded by a timeout.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 420


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Tiny model and data made once, reused by every run (the launcher's ready markers)."""
    from gasp_plugin.train.launch import train  # noqa: F401  (import check before spawning)

    root = tmp_path_factory.mktemp("ds")
    return root


def _overrides(root: Path, out: Path, steps: int, zero: int):
    return [
        f"training.output_dir={out}", f"training.max_steps={steps}", "training.logging_steps=1",
        f"training.save_steps={steps}", "training.trace_data=true", "training.use_cpu=true",
        "training.learning_rate=2e-3", "training.warmup_ratio=0.0", "training.lr_scheduler_type=constant",
        f"training.deepspeed=recipes/ds_zero{zero}.json",
        f"model.tiny.dir={root / 'model'}", "model.tiny.hidden_size=64", "model.tiny.num_layers=2",
        "lora.enabled=true", "lora.r=8", "lora.alpha=16", "gasp.embed_dim=32",
        "model.train_vision=false", "model.tiny.image_size=112", "data.geometry_ratio=0.5",
        f"data.geometry.synthetic.dir={root / 'scenes'}", "data.geometry.synthetic.count=1",
        "data.geometry.synthetic.config={height: 112, width: 112, num_frames: 12}",
        "data.geometry.min_frames=3", "data.geometry.max_frames=3",
        f"data.instruct.synthetic.dir={root / 'instruct'}", "data.instruct.synthetic.count=8",
    ]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", MASTER_PORT=str(_port()), NUM_GPUS="2", PYTHON=sys.executable,
               OMP_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def _run(cmd, env):
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return proc


def _traces(out: Path):
    return {r: [json.loads(l) for l in (out / "trace" / f"data_trace_rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)}


def _check_run(out: Path, root: Path, steps: int):
    traces = _traces(out)
    by_step = {r: {t["step"]: t for t in traces[r]} for r in (0, 1)}
    assert sorted(by_step[0]) == sorted(by_step[1])
    kinds = set()
    for step in by_step[0]:
        a, b = by_step[0][step], by_step[1][step]
        assert a["kind"] == b["kind"]  # every rank took the same kind of batch
        assert a["stream"] != b["stream"]  # ...with different data
        kinds.add(a["kind"])
    assert kinds == {"geometry", "instruct"}
    assert [p.name for p in out.glob("checkpoint-*")] == [f"checkpoint-{steps}"]  # exactly one
    ckpt = out / f"checkpoint-{steps}"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "gasp_heads.safetensors").is_file()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    return state, traces


def _reload_matches_reference(out: Path, root: Path):
    """The saved adapter loads with plain transformers + PEFT and gives the trained model's logits."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    adapter_keys = load_file(out / "adapter_model.safetensors").keys()
    assert adapter_keys and not any("gasp" in k for k in adapter_keys)
    base = AutoModelForImageTextToText.from_pretrained(root / "model")
    model = PeftModel.from_pretrained(base, out).eval()
    ref = torch.load(out / "reference_outputs.pt")
    with torch.no_grad():
        logits = model(**ref["inputs"]).logits
    torch.testing.assert_close(logits, ref["logits"], atol=1e-4, rtol=1e-4)
    plain = AutoModelForImageTextToText.from_pretrained(root / "model").eval()
    with torch.no_grad():
        assert not torch.allclose(plain(**ref["inputs"]).logits, ref["logits"], atol=1e-4)  # training changed it

    from gasp_plugin.core.attach import attach_gasp
    from gasp_plugin.core.config import GaspConfig

    handle = attach_gasp(plain, GaspConfig(embed_dim=32))
    fresh = {k: v.clone() for k, v in handle.heads.state_dict().items()}
    heads = load_file(out / "gasp_heads.safetensors")
    handle.heads.load_state_dict(heads)  # strict: same keys and shapes
    assert any(not torch.equal(fresh[k], heads[k]) for k in heads)  # trained, not the initialisation
    from gasp_plugin.core.attach import load_heads

    described = load_heads(out / "gasp_heads.safetensors")  # self-describing: no recipe needed
    assert described.layers == handle.heads.layers and described.config.embed_dim == 32


def _losses_fell(state):
    lm = [h["lm"] for h in state["log_history"] if "lm" in h]
    corr = [h["corr"] for h in state["log_history"] if "corr" in h]
    assert len(lm) >= 2 and len(corr) >= 2
    assert lm[-1] < lm[0] and corr[-1] < corr[0], (lm, corr)


def _indexed_scenes(root: Path) -> Path:
    """Two synthetic scenes written and recorded in a scene index (what a multi-node job reads)."""
    from gasp_plugin.data.index import build_index
    from gasp_plugin.data.synthetic import SyntheticSceneConfig, generate_scenes

    folder = root / "indexed-scenes"
    generate_scenes(folder, 2, seed=5, config=SyntheticSceneConfig(height=112, width=112, num_frames=12),
                    progress=False)
    build_index([folder], root / "index.jsonl", workers=1, progress=False)
    return root / "index.jsonl"


def test_zero2_two_processes_via_bash_launcher(shared):
    """Geometry scenes from a scene index, as a multi-node job reads them: each rank's clip
    stream is its own (checked per step in _check_run)."""
    out = shared / "zero2"
    index = _indexed_scenes(shared)
    overrides = [o for o in _overrides(shared, out, 8, 2) if not o.startswith("data.geometry.synthetic")]
    cmd = ["bash", "recipes/qwen2vl_gasp.sh", "--recipe", "recipes/tiny_cpu.yaml", *overrides,
           f"data.geometry.scenes=[{index}]", "data.geometry.synthetic=null"]
    _run(cmd, _env())
    state, traces = _check_run(out, shared, 8)
    assert state["global_step"] == 8
    geometry = {r: {t["stream"] for t in traces[r] if t["kind"] == "geometry"} for r in (0, 1)}
    assert geometry[0] and geometry[1] and not geometry[0] & geometry[1]  # disjoint clip streams
    _losses_fell(state)
    _reload_matches_reference(out, shared)


def test_zero3_two_processes_via_deepspeed_launcher_then_resume(shared):
    out = shared / "zero3"
    env = _env()
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                "--master_port", env["MASTER_PORT"], "recipes/qwen2vl_gasp.sh", "--recipe", "recipes/tiny_cpu.yaml"]
    proc = _run(launcher + _overrides(shared, out, 8, 3), env)
    # the model loads partitioned, so the heads' SVD init gathers q_proj first (on both ranks)
    assert (proc.stdout + proc.stderr).count("SVD init from 2 ZeRO-3 partitioned q_proj weights") >= 2
    state, first = _check_run(out, shared, 8)
    _losses_fell(state)
    _reload_matches_reference(out, shared)

    # resume: 2 more steps from checkpoint-8; the data continues where it stopped
    shutil.rmtree(out / "trace")
    env["MASTER_PORT"] = str(_port())
    launcher[launcher.index("--master_port") + 1] = env["MASTER_PORT"]
    _run(launcher + _overrides(shared, out, 10, 3) + ["training.resume_from_checkpoint=last",
                                                      "training.save_total_limit=1"], env)
    resumed = _traces(out)
    assert min(t["global_step"] for t in resumed[0]) == 8
    assert sorted(t["step"] for t in resumed[0]) == [8, 9]
    done = json.loads((out / "checkpoint-10" / "trainer_state.json").read_text())
    assert done["global_step"] == 10
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-10"]


def test_zero3_one_rank_skips_a_non_finite_step_without_a_hang_and_saves_without_gathering(shared, tmp_path):
    """Rank 1's LM loss is NaN at step 1: it counts the skip and contributes zero gradients while
    rank 0 trains on, both finish (no rank left waiting in a collective, bounded by the timeout);
    with stage3_gather_16bit_weights_on_model_save false the heads are still saved, finite."""
    from gasp_plugin.core.attach import load_heads

    config = json.loads((ROOT / "recipes" / "ds_zero3.json").read_text())
    config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    ds_json = tmp_path / "ds_zero3_nogather.json"
    ds_json.write_text(json.dumps(config))
    out = tmp_path / "skip"
    overrides = [o for o in _overrides(shared, out, 3, 3) if not o.startswith(("training.deepspeed",
                                                                               "training.output_dir"))]
    overrides = [o for o in overrides if not o.startswith("data.geometry_ratio")] + ["data.geometry_ratio=0.0"]
    env = _env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           env["MASTER_PORT"], str(ROOT / "tests" / "framework_scripts" / "zero3_skip.py"), str(ds_json), str(out),
           *overrides]
    _run(cmd, env)
    ranks = {r: json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert ranks[0]["step"] == ranks[1]["step"] == 3
    assert ranks[1]["counters"].get("skipped_nonfinite", 0) >= 1 and ranks[0]["counters"].get("skipped_nonfinite", 0) == 0
    heads = load_heads(out / "gasp_heads.safetensors")
    assert all(torch.isfinite(p).all() for p in heads.parameters())
