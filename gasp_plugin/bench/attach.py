"""``gasp bench attach``: how long ``attach_gasp`` takes at 7B width, and what the randomized SVD
init saves against the full SVD it replaces.

Builds a Qwen2-VL text stack from a config with random weights (default: Qwen2.5-VL-7B's attention
shapes, ``--hidden 3584 --heads 28 --kv-heads 4``, all ``--layers 28``; the MLP is narrow,
``--intermediate``, because attaching never reads it), in bf16 where the device has fast bf16
products, and times ``attach_gasp`` with the default ``svd_q`` init (heads built, each layer's
``q_proj`` SVD, hooks), on ``--threads`` torch threads (default: all of this machine's cores).
Side by side: one layer's init with the randomized SVD and with the full SVD
(``torch.linalg.svd`` of the fp32 weight, the previous init) on ``--exact-layers`` layers, and the
share of the top directions' energy the randomized rows capture there (1 = the full SVD's).
Target: <= 15 s for 28 layers at hidden 3584 on 2 CPU cores. ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from gasp_plugin.bench.report import load_average, write_json

__all__ = ["add_arguments", "run", "TARGET_S"]

TARGET_S = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hidden", type=int, default=3584, help="LLM hidden size")
    parser.add_argument("--layers", type=int, default=28, help="decoder layers (all supervised)")
    parser.add_argument("--heads", type=int, default=28, help="attention heads")
    parser.add_argument("--kv-heads", type=int, default=4, help="key/value heads")
    parser.add_argument("--intermediate", type=int, default=256, help="MLP width (attaching never reads it)")
    parser.add_argument("--embed-dim", type=int, default=256, help="GASP head embedding size e (2e directions)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                        help="model dtype (auto: bfloat16 where the device has fast bf16 products)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    parser.add_argument("--exact-layers", type=int, default=1, help="layers to time with the full SVD (0: skip)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the figures to this file")


def run(args) -> int:
    import torch

    from gasp_plugin.bench.overhead import _dtype
    from gasp_plugin.core.attach import attach_gasp, detach_gasp
    from gasp_plugin.core.config import GaspConfig
    from gasp_plugin.core.head import CorrespondenceHead, svd_init_, top_singular
    from gasp_plugin.models.registry import get_adapter
    from gasp_plugin.models.tiny import build_tiny_model

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = _dtype(args.dtype, args.device)
    print(f"building a {args.layers}-layer text stack at hidden {args.hidden} ({dtype}) ...")
    model, _ = build_tiny_model("qwen2_5_vl", hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                                text_num_key_value_heads=args.kv_heads, text_intermediate_size=args.intermediate)
    model.to(device=args.device, dtype=dtype)
    adapter = get_adapter(model)
    config = GaspConfig(embed_dim=args.embed_dim)
    t0 = time.perf_counter()
    handle = attach_gasp(model, config)
    attach_s = time.perf_counter() - t0
    detach_gasp(handle)
    q_weights = [adapter.attention_projections(layer)[0].weight for _, layer in adapter.decoder_layers(model)]
    rows = config.hidden_mult * config.embed_dim
    per_layer = []
    for q in q_weights[:3]:
        t0 = time.perf_counter()
        svd_init_(CorrespondenceHead(args.hidden, config.embed_dim, config.hidden_mult), q)
        per_layer.append(time.perf_counter() - t0)
    exact, energy = [], []
    for q in q_weights[: args.exact_layers]:
        w = q.detach().float()
        t0 = time.perf_counter()
        _, s, _ = torch.linalg.svd(w, full_matrices=False)
        exact.append(time.perf_counter() - t0)
        _, vh = top_singular(q, rows)
        energy.append(float((w @ vh.T.to(w.device)).pow(2).sum() / s[:rows].pow(2).sum()))
    load = load_average()
    record = {"attach_s": attach_s, "layers": args.layers, "hidden": args.hidden, "rows": rows,
              "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "load_average": load, "target_s": TARGET_S,
              "randomized_layer_s": statistics.median(per_layer),
              "exact_layer_s": statistics.median(exact) if exact else None,
              "energy_captured": statistics.fmean(energy) if energy else None}
    print(f"\nattach_gasp, {args.layers} layers at hidden {args.hidden} ({args.heads}/{args.kv_heads} heads), "
          f"{rows} directions per layer, {record['dtype']}, torch threads {record['threads']} of "
          f"{record['cpu_count']} cores; load average {load}")
    print(f"{'':28s}{'randomized':>12s}{'full SVD':>12s}{'ratio':>8s}")
    if exact:
        ratio = record["exact_layer_s"] / record["randomized_layer_s"]
        print(f"{'one layer init, s':28s}{record['randomized_layer_s']:12.2f}{record['exact_layer_s']:12.2f}{ratio:8.1f}")
        print(f"{'all layers (full: x layers)':28s}{attach_s:12.1f}{record['exact_layer_s'] * args.layers:12.1f}"
              f"{record['exact_layer_s'] * args.layers / attach_s:8.1f}")
        print(f"top-{rows} energy captured: {record['energy_captured']:.4f} of the full SVD's (random weights: "
              "a flat spectrum, the worst case)")
    else:
        print(f"{'one layer init, s':28s}{record['randomized_layer_s']:12.2f}")
    verdict = "meets" if attach_s <= TARGET_S else "MISSES"
    print(f"target: attach_gasp <= {TARGET_S:.0f} s -> {verdict} ({attach_s:.1f} s)")
    write_json(args.json, record)
    return 0
