"""LLaVA-NeXT-Video (geometry as video), LLaVA-OneVision and Qwen3-VL under real DeepSpeed ZeRO-3
with LoRA, 2 processes on CPU (gloo): the tiny recipe trains a few steps of both batch kinds and
saves the adapter and the heads. Each run is bounded by a timeout."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600
STEPS = 4


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("model_type", ["llava_next_video", "llava_onevision", "qwen3_vl"])
def test_zero3_two_processes(model_type, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHON=sys.executable)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    port = str(_port())
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", port,
           "recipes/qwen2vl_gasp.sh", "--recipe", "recipes/tiny_cpu.yaml",
           f"model.path=tiny:{model_type}", f"model.tiny.dir={tmp_path / 'model'}", "model.tiny.hidden_size=64",
           "model.tiny.num_layers=2", "model.tiny.image_size=112", "model.train_vision=false",
           "lora.enabled=true", "lora.r=8", "lora.alpha=16", "gasp.embed_dim=32",
           f"training.output_dir={out}", f"training.max_steps={STEPS}", "training.logging_steps=1",
           f"training.save_steps={STEPS}", "training.trace_data=true", "training.use_cpu=true",
           "training.deepspeed=recipes/ds_zero3.json", "training.learning_rate=2e-3", "training.warmup_ratio=0.0",
           "data.geometry_ratio=0.5", f"data.geometry.synthetic.dir={tmp_path / 'scenes'}",
           "data.geometry.synthetic.count=1", "data.geometry.synthetic.config={height: 112, width: 112, num_frames: 12}",
           "data.geometry.min_frames=4", "data.geometry.max_frames=4",
           f"data.instruct.synthetic.dir={tmp_path / 'instruct'}", "data.instruct.synthetic.count=8",
           "data.instruct.max_length=2048"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    assert (proc.stdout + proc.stderr).count("ZeRO-3 partitioned q_proj weights") >= 2  # heads' SVD init gathered
    traces = {r: [json.loads(line) for line in (out / "trace" / f"data_trace_rank{r}.jsonl").read_text().splitlines()]
              for r in (0, 1)}
    kinds = [[t["kind"] for t in sorted(traces[r], key=lambda t: t["step"])] for r in (0, 1)]
    assert kinds[0] == kinds[1] and set(kinds[0]) == {"geometry", "instruct"}
    ckpt = out / f"checkpoint-{STEPS}"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "gasp_heads.safetensors").is_file()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    corr = [h["corr"] for h in state["log_history"] if "corr" in h]
    assert corr and all(c == c for c in corr)  # finite GASP terms on every geometry step
