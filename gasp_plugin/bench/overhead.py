"""``gasp bench overhead``: one training step with GASP on all layers vs the same step without.

Same model, same batch, same process: forward + backward of the LM loss (``plain``) against
forward + backward of LM loss + GASP loss with the paper's two terms (``gasp``) and with the q/k
alignment term as well (``qk``). Each round runs the three steps in a rotating order (after one
warm-up round); GASP is attached before its step and detached after it (random head init: the
init does not change the step). Prints median step time, peak memory, their ratios to ``plain``
with the spread of the per-round time ratios, and the FLOP ratio of heads + loss (+ the q/k
projections recomputed on the visual span) to the model: the floor any implementation pays
(target: time and memory ratios at most 1.05 at 7B width).

7B width: ``--hidden 3584 --heads 28 --kv-heads 4 --layers 2`` (Qwen2.5-VL-7B's text config, two
of its 28 layers; MLP ``--intermediate`` defaults to 2 x hidden to fit a CPU), 4 frames of 448x448
(1k visual tokens), e = 256, bf16 where the device has fast bf16 products (``--dtype auto``).

Memory: on CUDA the allocator's peak (``max_memory_allocated``); on CPU, where no allocator peak
is exposed, parameters + gradients + the bytes saved for backward (unique storages, so views of
layer outputs count once), which is what the step's peak is made of.

``--json FILE`` writes ``time_ratio``, ``memory_ratio``, ``flop_floor`` and the same with a
``qk_`` prefix, the per-round time ratios and their spread, and the step figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

from gasp_plugin.bench.report import load_average, write_json

__all__ = ["add_arguments", "run", "VARIANTS", "TARGET"]

VARIANTS = ("plain", "gasp", "qk")
TARGET = 1.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-type", default="qwen2_vl", help="tiny model family (qwen2_vl, qwen2_5_vl, llava)")
    parser.add_argument("--hidden", type=int, default=512, help="LLM hidden size")
    parser.add_argument("--layers", type=int, default=8, help="LLM decoder layers (all supervised)")
    parser.add_argument("--heads", type=int, default=8, help="attention heads")
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    parser.add_argument("--intermediate", type=int, default=None, help="MLP width (default: 2 x hidden)")
    parser.add_argument("--frames", type=int, default=4, help="frames per clip")
    parser.add_argument("--size", type=int, default=448, help="frame side in pixels")
    parser.add_argument("--points", type=int, default=256, help="anchor points")
    parser.add_argument("--embed-dim", type=int, default=256, help="GASP head embedding size e")
    parser.add_argument("--head-checkpoint", action="store_true", help="recompute heads in backward")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                        help="model dtype (auto: bfloat16 where the device has fast bf16 products, else float32)")
    parser.add_argument("--no-qk", action="store_true", help="skip the step with the q/k alignment term")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--json", default=None, help="write the figures to this file")
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


def _flops(model, inputs, targets, cfg, layers: int) -> tuple[float, float, float]:
    """Forward FLOPs of the model, of heads + loss, and of the q/k term (``q_proj`` recomputed at
    the anchor points, ``k_proj`` on the visual span, and its loss); backward scales all alike."""
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
    kv = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    # q_proj at the anchor points only, k_proj over the span (core.capture.ProjectedSpan)
    qk = 2 * b * p * d * d + 2 * span * d * (kv * d // text.num_attention_heads) + 2 * b * t * p * n * d
    return float(model_flops), float(layers * (head + loss)), float(layers * qk)


def _dtype(name: str, device: str):
    import torch

    if name != "auto":
        return getattr(torch, name)
    fast_bf16 = device.startswith("cuda") or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.bfloat16 if fast_bf16 else torch.float32


def _build(args):
    import torch

    from gasp_plugin.models.registry import get_adapter
    from gasp_plugin.models.tiny import build_tiny_model

    extra = {}
    if args.kv_heads is not None:
        extra["text_num_key_value_heads"] = args.kv_heads
    if args.intermediate is not None:
        extra["text_intermediate_size"] = args.intermediate
    torch.manual_seed(0)
    model, processor = build_tiny_model(args.model_type, hidden_size=args.hidden, num_layers=args.layers,
                                        num_heads=args.heads, image_size=args.size, **extra)
    dtype = _dtype(args.dtype, args.device)
    model.to(device=args.device, dtype=dtype).train()
    return model, processor, get_adapter(model), dtype


def _spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def run(args) -> int:
    import torch

    from gasp_plugin.core.attach import attach_gasp, detach_gasp
    from gasp_plugin.core.config import GaspConfig

    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    model, processor, adapter, dtype = _build(args)
    inputs, targets = _batch(model, processor, adapter, args, args.device)
    configs = {"gasp": GaspConfig(embed_dim=args.embed_dim, head_checkpoint=args.head_checkpoint, init="random"),
               "qk": GaspConfig(embed_dim=args.embed_dim, head_checkpoint=args.head_checkpoint, init="random",
                                qk_weight=1.0)}
    variants = [v for v in VARIANTS if not (args.no_qk and v == "qk")]
    results = {v: [] for v in variants}
    from tqdm import tqdm

    for i in tqdm(range(args.repeats + 1), desc="overhead rounds"):
        for name in variants[i % len(variants):] + variants[: i % len(variants)]:
            handle = attach_gasp(model, configs[name]) if name != "plain" else None
            try:
                res = _step(model, inputs, handle, targets, args.device)
            finally:
                if handle is not None:
                    detach_gasp(model)
            if i > 0:  # the first round warms up
                results[name].append(res)
    model_flops, gasp_flops, qk_flops = _flops(model, inputs, targets, configs["gasp"], args.layers)
    summary = {
        name: {"time_s": statistics.median(r[0] for r in rs), "peak_mb": max(r[1] for r in rs) / 2**20,
               "times_s": [r[0] for r in rs]}
        for name, rs in results.items()
    }
    plain = summary["plain"]
    record = {"args": vars(args), "dtype": str(dtype).replace("torch.", ""), "summary": summary,
              "seq": int(inputs["input_ids"].shape[1]), "target": TARGET,
              "memory_measure": "allocator peak" if args.device.startswith("cuda") else "params+grads+saved",
              "load_average": load_average(),
              "torch_threads": torch.get_num_threads()}
    for name, extra in (("gasp", gasp_flops), ("qk", gasp_flops + qk_flops)):
        if name not in summary:
            continue
        prefix = "" if name == "gasp" else "qk_"
        rounds = [g[0] / p[0] for g, p in zip(results[name], results["plain"])]
        record[f"{prefix}time_ratio"] = statistics.median(rounds)
        record[f"{prefix}time_ratio_rounds"] = rounds
        record[f"{prefix}time_ratio_spread"] = [min(rounds), max(rounds)]
        record[f"{prefix}memory_ratio"] = summary[name]["peak_mb"] / plain["peak_mb"]
        record[f"{prefix}flop_floor"] = 1 + extra / model_flops
    _print(args, record, summary, model_flops, gasp_flops, qk_flops)
    write_json(args.json, record)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_overhead.json").write_text(json.dumps(record, indent=2))
        _plot(out / "bench_overhead.png", record)
    return 0


def _print(args, record, summary, model_flops, gasp_flops, qk_flops) -> None:
    print(f"model {args.model_type}: hidden {args.hidden}, heads {args.heads}/{args.kv_heads or args.heads} kv, "
          f"{args.layers} layers, {args.frames} frames of {args.size}x{args.size}, seq {record['seq']}, "
          f"e={args.embed_dim}, {record['dtype']}, device {args.device}, torch threads {record['torch_threads']}, "
          f"{args.repeats} rounds; load average {record['load_average']}")
    names = list(summary)
    print(f"{'':10s}" + "".join(f"{n:>12s}" for n in names) + "".join(f"{n + '/plain':>13s}" for n in names[1:])
          + f"{'target':>8s}")
    plain = summary["plain"]
    time_cells = "".join(f"{summary[n]['time_s']:12.3f}" for n in names)
    ratio_cells = "".join(f"{record[('' if n == 'gasp' else 'qk_') + 'time_ratio']:13.3f}" for n in names[1:])
    print(f"{'time s':10s}{time_cells}{ratio_cells}{TARGET:8.2f}")
    mem_cells = "".join(f"{summary[n]['peak_mb']:12.1f}" for n in names)
    mratio = "".join(f"{summary[n]['peak_mb'] / plain['peak_mb']:13.3f}" for n in names[1:])
    print(f"{'peak MB':10s}{mem_cells}{mratio}{TARGET:8.2f}   ({record['memory_measure']})")
    flops = {"plain": model_flops, "gasp": model_flops + gasp_flops, "qk": model_flops + gasp_flops + qk_flops}
    print(f"{'FLOPs':10s}" + "".join(f"{flops[n]:12.3g}" for n in names)
          + "".join(f"{flops[n] / model_flops:13.3f}" for n in names[1:]) + "   (floor)")
    for n in names[1:]:
        prefix = "" if n == "gasp" else "qk_"
        print(f"{n}: time ratio per round {_spread(record[prefix + 'time_ratio_rounds'])} (median "
              f"{record[prefix + 'time_ratio']:.3f}), memory {record[prefix + 'memory_ratio']:.3f}, "
              f"FLOP floor {record[prefix + 'flop_floor']:.3f}")


def _plot(path: Path, record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("time_ratio", "memory_ratio", "flop_floor", "qk_time_ratio", "qk_memory_ratio",
                        "qk_flop_floor") if k in record]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(keys, [record[k] for k in keys], color=["C0", "C1", "C7"] * 2)
    ax.axhline(TARGET, color="r", ls="--", label=f"target {TARGET}")
    ax.set_ylabel("GASP / plain")
    ax.set_ylim(0.9, max(1.3, *(record[k] for k in keys)) + 0.05)
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
