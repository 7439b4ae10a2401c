"""`gasp bench overhead`, `gasp bench attach` and `gasp bench gpu` on tiny sizes: each runs, prints,
and writes the documented JSON keys (figures are measured by running them, not here)."""

import argparse
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gasp_plugin.bench.cli import BENCHMARKS, load_benchmark  # noqa: E402


def _run(name: str, argv: list[str]) -> int:
    module = load_benchmark(name)
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_overhead_reports_ratios_with_their_spread_and_the_qk_variant(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    assert _run("overhead", ["--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--frames", "2",
                             "--size", "112", "--points", "16", "--embed-dim", "16", "--repeats", "2",
                             "--dtype", "float32", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    for prefix in ("", "qk_"):
        for key in ("time_ratio", "memory_ratio", "flop_floor"):
            assert record[prefix + key] > 0, prefix + key
        assert len(record[prefix + "time_ratio_rounds"]) == 2
        low, high = record[prefix + "time_ratio_spread"]
        assert low <= record[prefix + "time_ratio"] <= high
    assert record["qk_flop_floor"] > record["flop_floor"] > 1
    assert record["memory_ratio"] > 1 and record["dtype"] == "float32"
    printed = capsys.readouterr().out
    assert "qk/plain" in printed and "time ratio per round" in printed


def test_attach_bench_times_the_init_against_the_full_svd(tmp_path):
    out = tmp_path / "attach.json"
    assert _run("attach", ["--hidden", "256", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--embed-dim", "16",
                           "--intermediate", "32", "--dtype", "float32", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["layers"] == 2 and record["rows"] == 32 and record["attach_s"] > 0
    assert record["exact_layer_s"] > 0 and 0.5 < record["energy_captured"] <= 1.0 + 1e-6


def test_gpu_check_runs_its_code_on_a_tiny_model(tmp_path):
    """The GPU check is only run on a CUDA machine; its code path runs here on a tiny model."""
    assert set(BENCHMARKS) >= {"gpu", "attach", "overhead", "data"}
    out = tmp_path / "gpu.json"
    assert _run("gpu", ["--tiny", "--device", "cpu", "--frames", "4", "--size", "112", "--steps", "1",
                        "--lora-r", "4", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    sdpa = record["results"]["sdpa"]
    assert set(sdpa) == {"plain", "gasp", "qk"} and all(v["step_s"] > 0 for v in sdpa.values())
    assert record["attention_in_use"]["sdpa"] == "sdpa" and record["visual_tokens"] == 4 * 16
    flash = record["results"].get("flash_attention_2", {})
    assert "skipped" in flash or "plain" in flash


def test_gpu_check_refuses_cuda_without_a_device():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        _run("gpu", [])


def test_demo_bench_runs_the_demo_and_both_step_rates(tmp_path):
    out = tmp_path / "bench.json"
    small = ["model.tiny.image_size=112", "model.tiny.hidden_size=64", "model.tiny.num_layers=2",
             "gasp.embed_dim=16", "training.max_steps=20", "data.geometry.synthetic.count=1",
             "data.geometry.synthetic.config={height: 112, width: 112, num_frames: 12}",
             "data.instruct.synthetic.count=4"]
    assert _run("demo", ["--out", str(tmp_path / "work"), "--rate-steps", "16", "--warmup", "4", "--json", str(out),
                         *small]) == 0
    record = json.loads(out.read_text())
    assert record["demo"]["seconds"] > 0 and set(record["demo"]["pck2"]) == {"qk", "hidden", "head"}
    rates = record["rates"]
    assert rates["alone_steps_per_s"] > 0 and rates["busy_steps_per_s"] > 0
    assert rates["slowdown"] == pytest.approx(rates["alone_steps_per_s"] / rates["busy_steps_per_s"])
    for name in ("alone", "busy"):  # tiny_cpu's cpu_threads: auto: the governor ran every step
        assert sum(rates[f"threads_{name}"]["steps_at_threads"].values()) == 16
