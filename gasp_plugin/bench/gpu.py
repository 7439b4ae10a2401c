"""``gasp bench gpu``: the GPU check at the real operating point, ready to run on one CUDA device.

Builds Qwen2.5-VL with the 7B config (random weights, bf16, all 28 LLM layers and the 32-block
vision tower; built on the device, nothing downloaded), wraps it in LoRA (r = 128 on the LLM's
q/k/v/o projections, the paper's) with non-re-entrant activation checkpointing, and times training
steps (forward, backward, AdamW step) on one geometry clip of ``--frames`` frames (default 24) of a
448x448 synthetic scene rendered on the host (about 6k visual tokens): ``plain`` (LM loss only),
``gasp`` (+ the paper's two GASP terms on all 28 layers) and ``qk`` (+ the q/k alignment term),
with sdpa and, where flash-attn is installed, flash_attention_2. Prints, side by side per
attention implementation: median step time, tokens/s and peak allocated memory, their ratios to
``plain``, the attention implementation the model reports in use, and the attach time (heads +
randomized SVD init on the device). Nothing in it needs the network; it needs torch with CUDA,
transformers, peft, accelerate and this package (``PYTHONPATH=<checkout>`` is enough).

On one H200, all of it is sized to finish well under 8 minutes (``--steps 3`` timed steps per
variant after one warm-up). ``--json FILE`` writes the figures. ``--tiny`` runs the same code on a
tiny model (for a CPU smoke test of the script itself).

    PYTHONPATH=$PWD python3 -m gasp_plugin.bench.gpu --json gpu.json     # or: gasp bench gpu
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from gasp_plugin.bench.report import write_json

__all__ = ["add_arguments", "run", "QWEN25_VL_7B"]

# Qwen2.5-VL-7B-Instruct's config.json (text and vision), the sizes that set cost
QWEN25_VL_7B = {
    "hidden_size": 3584, "num_layers": 28, "num_heads": 28, "vision_depth": 32,
    "text_num_key_value_heads": 4, "text_intermediate_size": 18944, "text_vocab_size": 152064,
    "text_rms_norm_eps": 1e-6, "text_max_position_embeddings": 128000,
    "vision_hidden_size": 1280, "vision_intermediate_size": 3420, "vision_num_heads": 16,
    "vision_fullatt_block_indexes": [7, 15, 23, 31], "vision_window_size": 112,
}
TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "vision_depth": 1}
VARIANTS = ("plain", "gasp", "qk")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=24, help="frames per clip")
    parser.add_argument("--size", type=int, default=448, help="frame side in pixels (the 448x448 pixel budget)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant, after one warm-up")
    parser.add_argument("--lora-r", type=int, default=128, help="LoRA rank on the LLM's attention projections")
    parser.add_argument("--attn", nargs="*", default=["sdpa", "flash_attention_2"],
                        help="attention implementations to time (ones not installed are reported and skipped)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of the 7B config (smoke test)")
    parser.add_argument("--json", default=None, help="write the figures to this file")


def _available(impl: str, device: str) -> str | None:
    """Why ``impl`` cannot run here, or None."""
    import importlib.util

    if impl == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            return "flash-attn is not installed"
        if not device.startswith("cuda"):
            return "needs CUDA"
    return None


def _model(args, dtype):
    """``(model, processor)``: the 7B config (or a tiny one) built directly on the device."""
    import torch
    from transformers import AutoModelForImageTextToText

    from gasp_plugin.models.tiny import build_tiny_model

    sizes = TINY if args.tiny else QWEN25_VL_7B
    # the processor and a config of the right family from a one-layer build, then the real sizes
    small, processor = build_tiny_model("qwen2_5_vl", image_size=args.size)
    config = _config(small.config, sizes)
    del small
    with torch.device(args.device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model, processor


def _config(config, sizes: dict):
    """``config`` with the text / vision sizes of ``sizes`` (tiny.py's override names)."""
    d = config.to_dict()
    text, vision = d["text_config"], d["vision_config"]
    text.pop("layer_types", None)  # derived from the layer count
    text.update(hidden_size=sizes["hidden_size"], num_hidden_layers=sizes["num_layers"],
                num_attention_heads=sizes["num_heads"])
    vision.update(depth=sizes["vision_depth"], out_hidden_size=sizes["hidden_size"])
    for key, value in sizes.items():
        if key.startswith("text_"):
            text[key[5:]] = value
        elif key.startswith("vision_"):
            vision[key[7:]] = value
    if "vision_fullatt_block_indexes" not in sizes:
        vision["fullatt_block_indexes"] = [sizes["vision_depth"] - 1]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    rope = dict(text.get("rope_parameters") or {})
    if "mrope_section" in rope:
        rope["mrope_section"] = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]  # 7B: [16, 24, 24]
        text["rope_parameters"] = rope
    d.pop("text_config"), d.pop("vision_config")
    return type(config)(text_config=text, vision_config=vision, **{k: v for k, v in d.items()
                                                                    if k in ("image_token_id", "video_token_id",
                                                                             "vision_start_token_id",
                                                                             "vision_end_token_id")})


def _clip_batch(args, processor, adapter):
    """One collated geometry batch of a synthetic ``--size`` scene's first ``--frames`` frames."""
    from gasp_plugin.core.batch import GeometryCollator, build_geometry_example
    from gasp_plugin.data import load_clip, open_scene
    from gasp_plugin.data.synthetic import SyntheticSceneConfig, generate_scenes
    from gasp_plugin.geometry.tracks import tracks_for_clip

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SyntheticSceneConfig(height=args.size, width=args.size, num_frames=args.frames)
        scene = open_scene(generate_scenes(tmp, 1, 0, cfg, progress=False)[0])
        clip = load_clip(scene, list(range(args.frames)), anchor_row=0)
    tracks = tracks_for_clip(clip, grid=(8, 24), keep=0.5)
    example = build_geometry_example(clip, tracks, processor, adapter)
    return GeometryCollator(processor)([example])


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_variant(model, handle, batch, targets, optimizer, device: str, steps: int) -> dict:
    import torch

    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items() if k != "gasp_targets"}
    cuda = device.startswith("cuda")
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 1):  # the first step of each variant warms up (optimizer state, capture)
        _sync(device)
        t0 = time.perf_counter()
        out = model(**inputs, labels=inputs["input_ids"])
        loss = out.loss if handle is None else out.loss + handle.compute_loss(targets).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
        del out, loss
    if not times:
        return {}
    step = statistics.median(times)
    return {"step_s": step, "steps_s": times, "tokens_per_s": inputs["input_ids"].shape[1] / step,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def run(args) -> int:
    import torch
    from peft import LoraConfig, get_peft_model

    from gasp_plugin.core.attach import attach_gasp, detach_gasp
    from gasp_plugin.core.config import GaspConfig
    from gasp_plugin.models.registry import get_adapter

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device (use --tiny --device cpu for a smoke test)")
    t_start = time.perf_counter()
    dtype = torch.bfloat16 if args.device.startswith("cuda") or not args.tiny else torch.float32
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, processor = _model(args, dtype)
    build_s = time.perf_counter() - t0
    adapter = get_adapter(model)
    batch = _clip_batch(args, processor, adapter)
    targets = batch["gasp_targets"].to(args.device)
    seq = int(batch["input_ids"].shape[1])
    # attach before PEFT, as the trainers do; time the init on the device (randomized SVD)
    _sync(args.device)
    t0 = time.perf_counter()
    handle = attach_gasp(model, GaspConfig())
    _sync(args.device)
    attach_s = time.perf_counter() - t0
    detach_gasp(handle)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                      target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)")
    if hasattr(model, "activation_checkpointing_enable"):  # the name transformers >= 5.2x reads without a warning
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lora)
    model.train()
    results, in_use = {}, {}
    for impl in args.attn:
        why = _available(impl, args.device)
        if why:
            results[impl] = {"skipped": why}
            print(f"{impl}: skipped ({why})")
            continue
        base = model.base_model.model
        if hasattr(base, "set_attn_implementation"):
            base.set_attn_implementation(impl)
        else:  # older transformers: the config attribute the attention modules read
            base.config._attn_implementation = impl
        in_use[impl] = getattr(model.config, "_attn_implementation", None)
        if in_use[impl] != impl:
            raise RuntimeError(f"asked for {impl} attention but the model runs {in_use[impl]}")
        per = {}
        warm = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        _time_variant(model, None, batch, targets, warm, args.device, 0)  # kernels, allocator: once per implementation
        del warm
        for name in VARIANTS:
            handle = None
            if name != "plain":
                handle = attach_gasp(model.base_model.model, GaspConfig(qk_weight=1.0 if name == "qk" else 0.0,
                                                                         init="random"))
                handle.ensure_trainable()
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-5)
            try:
                per[name] = _time_variant(model, handle, batch, targets, optimizer, args.device, args.steps)
            finally:
                if handle is not None:
                    detach_gasp(model.base_model.model)
                del optimizer
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
            print(f"{impl} {name}: {per[name]['step_s']:.3f} s/step")
        results[impl] = per
    record = {"model": "tiny" if args.tiny else "Qwen2.5-VL-7B config (random weights)", "dtype": str(dtype),
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
              "torch": torch.__version__, "frames": args.frames, "size": args.size, "seq": seq,
              "visual_tokens": int((targets.token_positions >= 0).sum()), "lora_r": args.lora_r,
              "layers": len(adapter.decoder_layers(model)), "build_s": build_s, "attach_s": attach_s,
              "attention_in_use": in_use, "results": results,
              "total_s": time.perf_counter() - t_start}
    _print(record)
    write_json(args.json, record)
    return 0


def _print(record: dict) -> None:
    print(f"\n{record['model']}, {record['dtype']}, {record['device']}, torch {record['torch']}; "
          f"{record['frames']} frames of {record['size']}x{record['size']}: seq {record['seq']} "
          f"({record['visual_tokens']} visual tokens); LoRA r={record['lora_r']}, activation checkpointing")
    print(f"model built in {record['build_s']:.1f} s; attach_gasp ({record['layers']} heads, randomized SVD init on "
          f"the device) {record['attach_s']:.2f} s")
    head = f"{'attention':20s}{'variant':8s}{'s/step':>9s}{'tokens/s':>11s}{'peak GiB':>10s}{'time x':>8s}{'mem x':>8s}"
    print(head + "\n" + "-" * len(head))
    for impl, per in record["results"].items():
        if "skipped" in per:
            print(f"{impl:20s}skipped: {per['skipped']}")
            continue
        plain = per["plain"]
        for name, r in per.items():
            peak = r["peak_gib"]
            mem = f"{peak / plain['peak_gib']:8.3f}" if peak and plain["peak_gib"] else f"{'n/a':>8s}"
            label = f"{impl} ({record['attention_in_use'][impl]})"
            print(f"{label:20s}{name:8s}{r['step_s']:9.3f}{r['tokens_per_s']:11.0f}"
                  f"{peak if peak is not None else float('nan'):10.1f}{r['step_s'] / plain['step_s']:8.3f}{mem}")
    print(f"total {record['total_s']:.0f} s")


if __name__ == "__main__":  # python3 -m gasp_plugin.bench.gpu: no other command's imports needed
    import sys

    _parser = argparse.ArgumentParser(prog="python3 -m gasp_plugin.bench.gpu", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
