"""`gasp bench data` (stages, loader, JSON schema) and `gasp train` serving geometry through the
recipe's DataLoader workers, deterministically and with one batch kind per global step."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gasp_plugin.bench.cli import BENCHMARKS, load_benchmark  # noqa: E402
from gasp_plugin.recipe import load_recipe  # noqa: E402


def test_bench_data_writes_the_documented_json(tmp_path):
    import argparse

    module = load_benchmark("data")
    assert BENCHMARKS["data"][0] == "gasp_plugin.bench.data"
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    out = tmp_path / "data.json"
    args = parser.parse_args(["--sizes", "96x64", "--frames", "4", "--repeats", "1", "--workers", "1",
                              "--loader-clips", "2", "--loader-size", "96x64", "--scenes-dir", str(tmp_path),
                              "--json", str(out), "--no-real"])
    assert module.run(args) == 0
    record = json.loads(out.read_text())
    size = record["sizes"]["96x64"]
    assert set(size["stages_ms"]) == set(module.GASP_STAGES) | set(module.BASE_STAGES)
    assert size["gasp_ms"] == pytest.approx(sum(size["stages_ms"][k] for k in module.GASP_STAGES))
    assert size["base_ms"] == pytest.approx(sum(size["stages_ms"][k] for k in module.BASE_STAGES))
    assert size["total_ms"] == pytest.approx(size["gasp_ms"] + size["base_ms"])
    assert size["ratio"] == pytest.approx(size["gasp_ms"] / size["base_ms"])
    loader = record["loader"]["workers"]["1"]
    assert loader["clips"] == 2 and loader["clips_per_s"] > 0
    assert (tmp_path / "96x64" / "synthetic-0-000" / "scene.json").is_file()  # rendered once, reused
    with pytest.raises(ValueError, match="not WIDTHxHEIGHT"):
        module.parse_size("96-64")


SMALL = [
    "training.max_steps=6", "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.image_size=112",
    "gasp.embed_dim=16", "model.train_vision=false", "data.geometry.synthetic.count=2",
    "data.geometry.synthetic.config={height: 112, width: 112, num_frames: 12}", "data.geometry.grid=[4, 8]",
    "data.geometry.min_frames=3", "data.geometry.max_frames=4", "data.instruct.synthetic.count=4",
    "data.geometry_ratio=0.7",
]


def _batches(tmp_path, workers: int) -> tuple[list[dict], int]:
    from gasp_plugin.train.assemble import build_run

    recipe = load_recipe("tiny_cpu", [*SMALL, f"training.output_dir={tmp_path}",
                                      f"training.dataloader_num_workers={workers}"])
    trainer = build_run(recipe, deepspeed_json=None, progress=False).trainer
    loader = trainer.get_train_dataloader()
    return list(loader), loader.num_workers


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if hasattr(a, "__dataclass_fields__"):
        return all(_same(getattr(a, k), getattr(b, k)) for k in a.__dataclass_fields__)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_gasp_train_serves_geometry_through_dataloader_workers_deterministically(tmp_path):
    """The Trainer's own DataLoader with the recipe's dataloader_num_workers (2) serves the same
    batches, in the same order, as without workers: the kind is fixed per global step and each
    clip is a pure function of (seed, stream index), whichever worker builds it."""
    from gasp_plugin.train.interleave import GEOMETRY, InterleavePlan

    with_workers, n = _batches(tmp_path / "w2", 2)
    without, n0 = _batches(tmp_path / "w0", 0)
    assert (n, n0) == (2, 0)
    assert len(with_workers) == len(without) == 6
    plan = InterleavePlan(seed=0, geometry_ratio=0.7, world_size=1, batch_size=1, num_steps=6)
    kinds = [b["gasp_kind"] for b in with_workers]
    assert kinds == [plan.kind(step) for step in range(6)] and GEOMETRY in kinds
    for step, (a, b) in enumerate(zip(with_workers, without)):
        assert _same(a, b), f"step {step} ({a['gasp_kind']}) differs with DataLoader workers"
