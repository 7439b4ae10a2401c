"""``gasp bench overhead``: one training step with GASP on all layers vs the same step without.

Same model, same batch, same process, steps alternated: forward + backward of the LM loss
(``plain``) against forward + backward of LM loss + GASP loss (``gasp``). Prints median step
time, peak memory and their ratios, and the FLOP ratio of heads + loss to the model: the floor
any implementation pays (target: time and memory ratios at most 1.10).

Memory: on CUDA the allocator's peak (``max_memory_allocated``); on CPU, where no allocator peak
is exposed, parameters + gradients + the bytes saved for backward (unique storages, so views of
layer outputs count once), which is what the step's peak is made of.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-type", default="qwen2_vl", help="tiny model family (qwen2_vl, qwen2_5_vl, llava)")
    parser.add_argument("--hidden", type=int, default=512, help="LLM hidden size")
    parser.add_argument("--layers", type=int, default=8, help="LLM decoder layers (all supervised)")
    parser.add_argument("--heads", type=int, default=8, help="attention heads")
    parser.add_argument("--frames", type=int, default=4, help="frames per clip")
    parser.add_argument("--size", type=int, default=448, help="frame side in pixels")
    parser.add_argument("--points", type=int, default=256, help="anchor points")
    parser.add_argument("--embed-dim", type=int, default=256, help="GASP head embedding size e")
    parser.add_argument("--head-checkpoint", action="store_true", help="recompute heads in backward")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--out", default=None, help="folder for bench_overhead.json and bench_overhead.png")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _batch(model, processor, adapter, args, device):
    import numpy as np
    import torch

    from gasp_plugin.core.targets import GaspTargets

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.frames)]
    inputs = adapter.build_frame_inputs(processor, frames)
    pos = adapter.frame_token_positions(inputs)
    n, t, p = pos.shape[-1], args.frames - 1, args.points
    gen = torch.Generator().manual_seed(0)
    targets = GaspTargets(
        pos, torch.tensor([0]), torch.randint(0, n, (1, p), generator=gen), torch.arange(1, args.frames)[None],
        torch.randint(0, n, (1, t, p), generator=gen), torch.rand(1, t, p, generator=gen) > 0.3,
        torch.rand(1, t, p, generator=gen) + 1, torch.rand(1, t, n, generator=gen) + 1,
    )
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return inputs, targets.to(device)


class _SavedBytes:
    """Counts unique storages saved for backward (CPU stand-in for the allocator peak)."""

    def __init__(self):
        import torch

        self.storages: dict[int, int] = {}
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda x: x)

    def pack(self, x):
        s = x.untyped_storage()
        self.storages[s.data_ptr()] = s.nbytes()
        return x

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def _step(model, inputs, handle, targets, device):
    import torch

    model.zero_grad(set_to_none=True)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    saved = None if cuda else _SavedBytes()  # CPU stand-in only: no Python hook in a timed CUDA step
    start = time.perf_counter()
    with contextlib.nullcontext() if cuda else saved.ctx:
        out = model(**inputs, labels=inputs["input_ids"])
        loss = out.loss if handle is None else out.loss + handle.compute_loss(targets).total
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
        peak = params + grads + saved.total
    return time.perf_counter() - start, peak


def _flops(model, inputs, targets, cfg, layers: int) -> tuple[float, float]:
    """Forward FLOPs of the model and of heads + loss (backward scales both alike)."""
    text = model.config.get_text_config()
    d, seq = text.hidden_size, inputs["input_ids"].shape[1]
    llm = sum(p.numel() for n, p in model.named_parameters() if "language_model.layers" in n)
    vision = sum(p.numel() for n, p in model.named_parameters() if "visual" in n or "vision_tower" in n)
    patches = inputs["pixel_values"].shape[0] if inputs["pixel_values"].dim() == 2 else inputs["pixel_values"].shape[0] * (
        (inputs["pixel_values"].shape[-1] // model.config.vision_config.patch_size) ** 2)
    lm_head = text.hidden_size * text.vocab_size
    model_flops = 2 * (llm * seq + vision * patches + lm_head * seq) + 4 * layers * seq * seq * d
    tp = targets.token_positions[targets.token_positions >= 0]
    span = int(tp.max() - tp.min() + 1)
    e, hid = cfg.embed_dim, cfg.hidden_mult * cfg.embed_dim
    b, t, p = targets.pos_tokens.shape
    n = targets.token_positions.shape[-1]
    head = 2 * span * (d * hid + hid * e)
    loss = 2 * 2 * b * t * p * n * e
    return float(model_flops), float(layers * (head + loss))


def run(args) -> int:
    import torch

    from gasp_plugin.core.attach import attach_gasp, detach_gasp
    from gasp_plugin.core.config import GaspConfig
    from gasp_plugin.models.registry import get_adapter
    from gasp_plugin.models.tiny import build_tiny_model

    torch.manual_seed(0)
    model, processor = build_tiny_model(
        args.model_type, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads, image_size=args.size
    )
    model.to(args.device).train()
    adapter = get_adapter(model)
    inputs, targets = _batch(model, processor, adapter, args, args.device)
    cfg = GaspConfig(embed_dim=args.embed_dim, head_checkpoint=args.head_checkpoint)
    handle = attach_gasp(model, cfg)
    results = {"plain": [], "gasp": []}
    try:
        from tqdm import tqdm

        for i in tqdm(range(args.repeats + 1), desc="overhead steps"):
            for name in ("plain", "gasp") if i % 2 == 0 else ("gasp", "plain"):
                if name == "plain":
                    handle.capture.stop()
                    res = _step(model, inputs, None, targets, args.device)
                    handle.capture.start()
                else:
                    res = _step(model, inputs, handle, targets, args.device)
                if i > 0:  # the first round warms up
                    results[name].append(res)
        model_flops, gasp_flops = _flops(model, inputs, targets, cfg, args.layers)
    finally:
        detach_gasp(model)
    summary = {
        name: {"time_s": statistics.median(r[0] for r in rs), "peak_mb": max(r[1] for r in rs) / 2**20}
        for name, rs in results.items()
    }
    ratio_t = summary["gasp"]["time_s"] / summary["plain"]["time_s"]
    ratio_m = summary["gasp"]["peak_mb"] / summary["plain"]["peak_mb"]
    floor = 1 + gasp_flops / model_flops
    mem_kind = "allocator peak" if args.device.startswith("cuda") else "params+grads+saved"
    print(f"model {args.model_type}: hidden {args.hidden}, {args.layers} layers, {args.frames} frames of "
          f"{args.size}x{args.size}, seq {inputs['input_ids'].shape[1]}, e={args.embed_dim}, device {args.device}")
    print(f"{'':10s}{'plain':>12s}{'gasp':>12s}{'ratio':>9s}{'target':>9s}")
    print(f"{'time s':10s}{summary['plain']['time_s']:12.3f}{summary['gasp']['time_s']:12.3f}{ratio_t:9.3f}{1.10:9.2f}")
    print(f"{'peak MB':10s}{summary['plain']['peak_mb']:12.1f}{summary['gasp']['peak_mb']:12.1f}{ratio_m:9.3f}{1.10:9.2f}"
          f"   ({mem_kind})")
    print(f"{'FLOPs':10s}{model_flops:12.3g}{model_flops + gasp_flops:12.3g}{floor:9.3f}   (floor: heads + loss)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        record = {"args": vars(args), "summary": summary, "time_ratio": ratio_t, "memory_ratio": ratio_m,
                  "flop_ratio_floor": floor, "memory_measure": mem_kind}
        (out / "bench_overhead.json").write_text(json.dumps(record, indent=2))
        _plot(out / "bench_overhead.png", ratio_t, ratio_m, floor)
    return 0


def _plot(path: Path, ratio_t: float, ratio_m: float, floor: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["time", "memory", "FLOP floor"], [ratio_t, ratio_m, floor], color=["C0", "C1", "C7"])
    ax.axhline(1.10, color="r", ls="--", label="target 1.10")
    ax.set_ylabel("GASP / plain")
    ax.set_ylim(0.9, max(1.3, ratio_t, ratio_m, floor) + 0.05)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
