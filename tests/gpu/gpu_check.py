"""The GPU check at the paper's operating point: Qwen2.5-VL with the real 7B config (random weights,
bf16, all 28 LLM layers), LoRA r=128 on the LLM as in recipes/qwen2vl_gasp.yaml, non-re-entrant
gradient checkpointing, one 24-frame clip at 448x448 (24 x 256 = 6144 visual tokens); a plain
training step against the same step with GASP on every layer (and with the q/k term), side by
side: step time, tokens/s, peak memory, the attention implementation in use.

    python tests/gpu/gpu_check.py [--attn sdpa|flash_attention_2] [--steps 3] [--frames 24] [--json FILE]

Needs a CUDA GPU with about 60 GB free, torch, transformers >= 5.4, peft; nothing from the
network (the inputs are built directly: pixel patches, grids and placeholder ids, the way the
Qwen-VL processor lays them out). Not a unit test: pytest does not collect this folder's script.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
IMAGE_TOKEN, VISION_START, VISION_END = 151655, 151652, 151653


def build_model(attn: str):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(text_config=TEXT, vision_config=VISION, image_token_id=IMAGE_TOKEN,
                           video_token_id=151656, vision_start_token_id=VISION_START,
                           vision_end_token_id=VISION_END)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16, attn_implementation=attn)
    return model


def build_inputs(frames: int, side: int = 448, device: str = "cuda"):
    """Inputs of ``frames`` images of side x side as the Qwen-VL processor lays them out."""
    patch, merge, tps = 14, 2, 2
    g = side // patch  # patches per side
    per_frame = (g // merge) ** 2  # LLM tokens per frame
    ids = [1, 2, 3]
    for _ in range(frames):
        ids += [VISION_START] + [IMAGE_TOKEN] * per_frame + [VISION_END]
    ids += [4, 5, 6, 7]
    input_ids = torch.tensor([ids], device=device)
    pixel_values = torch.randn(frames * g * g, 3 * tps * patch * patch, device=device, dtype=torch.bfloat16)
    grid = torch.tensor([[1, g, g]] * frames, device=device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values,
            "image_grid_thw": grid, "mm_token_type_ids": (input_ids == IMAGE_TOKEN).long(),
            "labels": input_ids.clone()}


def random_targets(adapter, inputs, points: int = 320, seed: int = 0):
    from gasp_plugin.core.targets import GaspTargets

    pos = adapter.frame_token_positions(inputs).cpu()  # [1, f, n]
    f, n = pos.shape[1:]
    gen = torch.Generator().manual_seed(seed)
    t = f - 1
    return GaspTargets(pos, torch.tensor([0]), torch.randint(0, n, (1, points), generator=gen),
                       torch.arange(1, f)[None], torch.randint(0, n, (1, t, points), generator=gen),
                       torch.rand(1, t, points, generator=gen) > 0.3, torch.rand(1, t, points, generator=gen) + 1,
                       torch.rand(1, t, n, generator=gen) + 1)


def run(condition: str, attn: str, frames: int, steps: int) -> dict:
    from peft import LoraConfig, get_peft_model

    from gasp_plugin.core.attach import attach_gasp
    from gasp_plugin.core.config import GaspConfig
    from gasp_plugin.models.registry import get_adapter

    torch.cuda.empty_cache()
    model = build_model(attn)
    adapter = get_adapter(model)
    handle = None
    if condition != "plain":
        t0 = time.perf_counter()
        handle = attach_gasp(model, GaspConfig(qk_weight=1.0 if condition == "gasp+qk" else 0.0))
        attach_s = time.perf_counter() - t0
    lora = LoraConfig(r=128, lora_alpha=256, lora_dropout=0.05,
                      target_modules=r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)")
    model = get_peft_model(model, lora)
    if handle is not None:
        handle.ensure_trainable()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    inputs = build_inputs(frames)
    targets = random_targets(adapter, inputs) if handle is not None else None
    in_use = getattr(model.config, "_attn_implementation", None)
    times = []
    torch.cuda.reset_peak_memory_stats()
    for step in range(steps + 1):  # step 0 warms up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(**inputs)
        loss = out.loss
        if handle is not None:
            gasp = handle.compute_loss(targets)
            loss = loss + gasp.total
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - t0)
    tokens = int(inputs["input_ids"].numel())
    result = {"condition": condition, "attn_in_use": in_use, "step_s": sum(times) / len(times),
              "step_s_all": times, "tokens": tokens, "visual_tokens": int((inputs["input_ids"] == IMAGE_TOKEN).sum()),
              "tokens_per_s": tokens / (sum(times) / len(times)),
              "peak_gb": torch.cuda.max_memory_allocated() / 2**30, "loss": float(loss.detach())}
    if handle is not None:
        result["attach_s"] = attach_s
        result["gasp_total"] = float(gasp.total.detach())
    del model, opt, handle
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--conditions", default="plain,gasp,gasp+qk")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = []
    for condition in args.conditions.split(","):
        row = run(condition, args.attn, args.frames, args.steps)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "step_s_all"}), flush=True)
    base = rows[0]
    print(f"\n{'condition':10s} {'attn':8s} {'step s':>8s} {'x plain':>8s} {'tokens/s':>9s} {'peak GB':>8s} {'x plain':>8s}")
    for r in rows:
        print(f"{r['condition']:10s} {r['attn_in_use']:8s} {r['step_s']:8.3f} {r['step_s'] / base['step_s']:8.3f} "
              f"{r['tokens_per_s']:9.0f} {r['peak_gb']:8.1f} {r['peak_gb'] / base['peak_gb']:8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
