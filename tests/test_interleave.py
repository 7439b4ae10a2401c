"""Interleaving: per-step kinds all ranks agree on, disjoint rank streams, bad-sample replacement."""

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard

from gasp_plugin.data.instruct import BadSample
from gasp_plugin.train.interleave import (
    KeepForwardKeys,
    forward_keys,
    GEOMETRY,
    INSTRUCT,
    InterleavedCollator,
    InterleavedDataset,
    InterleavePlan,
    PermutedSource,
    step_kinds,
    step_uniform,
)


def test_step_kinds_are_a_pure_function_of_seed_and_step():
    a = step_kinds(7, 0.3, 20000)
    assert np.array_equal(a[:500], step_kinds(7, 0.3, 500))  # prefix-stable: no dependence on length
    assert not np.array_equal(a, step_kinds(8, 0.3, 20000))
    assert abs(a.mean() - 0.3) < 0.015
    assert step_kinds(1, 0.0, 100).sum() == 0 and step_kinds(1, 1.0, 100).all()
    u = step_uniform(3, np.arange(100000, dtype=np.uint64))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    # a reference: the kind of step k alone equals the vectorised answer
    assert all(bool(step_uniform(7, k) < 0.3) == a[k] for k in (0, 1, 17, 19999))


def _shard_batches(n_items, batch_size, world):
    """The indices each rank gets from a sequential sampler sharded the way accelerate does it."""
    base = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(range(n_items)), batch_size, False)
    return [list(BatchSamplerShard(base, num_processes=world, process_index=r)) for r in range(world)]


@pytest.mark.parametrize("world, batch", [(1, 1), (2, 1), (2, 3), (4, 2)])
def test_ranks_agree_on_kind_and_read_disjoint_stream_items(world, batch):
    plan = InterleavePlan(seed=5, geometry_ratio=0.4, world_size=world, batch_size=batch, num_steps=50)
    seen = {GEOMETRY: [], INSTRUCT: []}
    per_rank = _shard_batches(len(plan), batch, world)
    for step in range(plan.num_steps):
        kinds = set()
        for rank in range(world):
            for index in per_rank[rank][step]:
                s, r, _ = plan.locate(index)
                assert (s, r) == (step, rank)
                kind, item = plan.stream_index(s, r, index % batch)
                kinds.add(kind)
                seen[kind].append(item)
        assert kinds == {plan.kind(step)}  # every rank, every sample of the step: one kind
    for kind, items in seen.items():  # each stream read exactly once, no gaps, no overlap
        assert sorted(items) == list(range(len(items)))
    assert len(seen[GEOMETRY]) == int(step_kinds(5, 0.4, 50).sum()) * world * batch


def test_bad_samples_are_replaced_and_counted():
    plan = InterleavePlan(seed=0, geometry_ratio=0.5, world_size=1, batch_size=1, num_steps=20)

    def geometry(i):
        if i % 2 == 0:
            raise BadSample(f"clip {i} has no visible tracks")
        return {"g": i}

    ds = InterleavedDataset(plan, {GEOMETRY: geometry, INSTRUCT: lambda i: {"t": i}})
    items = [ds[i] for i in range(len(ds))]
    geo = [it for it in items if it["kind"] == GEOMETRY]
    assert geo and all(it["sample"]["g"] % 2 == 1 for it in geo)
    first = next(it for it in geo if it["trace"]["stream"] != 1)
    assert first["skipped"] >= 1 and "no visible tracks" in first["reasons"][0]
    assert [ds[i]["sample"] for i in range(len(ds))] == [it["sample"] for it in items]  # deterministic

    always_bad = InterleavedDataset(plan, {GEOMETRY: lambda i: (_ for _ in ()).throw(BadSample("x")),
                                           INSTRUCT: lambda i: {}}, max_tries=3)
    geo_index = next(i for i in range(len(ds)) if plan.kind(i) == GEOMETRY)
    with pytest.raises(RuntimeError, match="3 consecutive unusable geometry samples"):
        always_bad[geo_index]


def test_missing_source_for_a_drawn_kind_is_an_error():
    plan = InterleavePlan(seed=0, geometry_ratio=0.5, world_size=1, batch_size=1, num_steps=4)
    with pytest.raises(ValueError, match="needs .*instruct"):
        InterleavedDataset(plan, {GEOMETRY: lambda i: {}})
    only_geo = InterleavePlan(seed=0, geometry_ratio=1.0, world_size=1, batch_size=1, num_steps=4)
    InterleavedDataset(only_geo, {GEOMETRY: lambda i: {}})
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        InterleavePlan(seed=0, geometry_ratio=0.5, world_size=1, batch_size=0, num_steps=4)


def test_permuted_source_visits_every_item_once_per_epoch():
    src = PermutedSource(lambda i: i, length=7, seed=1)
    epoch0, epoch1 = [src(i) for i in range(7)], [src(i) for i in range(7, 14)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(7)) and epoch0 != epoch1


def test_collator_keeps_one_kind_and_filters_keys():
    keep = KeepForwardKeys(lambda s: {"x": torch.stack(s), "junk": 1}, frozenset({"x"}))
    coll = InterleavedCollator({GEOMETRY: keep, INSTRUCT: lambda s: {"y": 0}})
    item = {"kind": GEOMETRY, "sample": torch.zeros(2), "skipped": 1, "reasons": ["r"], "trace": {"step": 0}}
    batch = coll([item, {**item, "skipped": 0, "reasons": []}])
    assert set(batch) == {"x", "gasp_kind", "gasp_skipped", "gasp_skip_reasons", "gasp_trace"}
    assert batch["gasp_skipped"] == 1 and batch["x"].shape == (2, 2)
    with pytest.raises(RuntimeError, match="mixes kinds"):
        coll([item, {**item, "kind": INSTRUCT}])


def test_forward_keys_one_reading_for_plain_and_peft_models():
    """The named arguments of the unwrapped model's forward; ``**kwargs`` is not a key; the targets
    always survive the filter (the trainer pops them)."""
    from peft import LoraConfig, get_peft_model

    from gasp_plugin.models.tiny import build_tiny_model

    model, _ = build_tiny_model("qwen2_vl", image_size=112, num_layers=1)
    keys = forward_keys(model)
    assert {"input_ids", "pixel_values", "image_grid_thw", "mm_token_type_ids", "labels"} <= keys
    assert "kwargs" not in keys
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert forward_keys(wrapped) == keys
    class AnyKeys(torch.nn.Module):
        def forward(self, **kwargs):
            return kwargs

    assert forward_keys(AnyKeys()) is None
    keep = KeepForwardKeys(lambda s: {"input_ids": 1, "junk": 2, "gasp_targets": 3}, keys)
    assert keep([]) == {"input_ids": 1, "gasp_targets": 3}
