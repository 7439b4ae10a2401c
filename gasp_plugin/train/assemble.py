"""Assembling a run from a recipe: arguments, model (+ LoRA + heads), data streams, trainer.

Each piece is a small function of the recipe; :func:`build_run` wires them. Files that every rank
needs (a tiny model, generated scenes and instructions) are made once by the local main process;
the others wait for its ``.gasp_ready`` marker (:func:`ensure_once`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["ensure_once", "build_run", "Run", "training_arguments", "apply_lora", "open_scenes", "geometry_examples",
           "resolve_attention", "resolve_dtype", "resolve_model_path"]

logger = logging.getLogger("gasp_plugin.train")
_READY = ".gasp_ready"


def ensure_once(target: Path, is_main: bool, make: Callable[[Path], Any], timeout_s: float = 1800) -> Path:
    """``make(target)`` once (by the local main process); other processes wait for it."""
    target = Path(target)
    marker = target / _READY
    if marker.is_file():
        return target
    if is_main:
        make(target)
        marker.write_text("ok")
        return target
    deadline = time.monotonic() + timeout_s
    while not marker.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for the main process to create {target}")
        time.sleep(0.5)
    return target


def resolve_attention(requested: str) -> str:
    """``flash_attention_2`` only with flash-attn and CUDA; otherwise sdpa with a warning."""
    if requested not in ("auto", "flash_attention_2"):
        return requested
    import importlib.util

    import torch

    have_flash = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
    if have_flash:
        return "flash_attention_2"
    if requested == "flash_attention_2":
        logger.warning("flash_attention_2 requested but flash-attn/CUDA is not available: using sdpa")
    return "sdpa"


def resolve_dtype(recipe):
    """The torch dtype of ``model.dtype``; ``auto`` follows ``training.bf16`` / ``training.fp16``."""
    import torch

    name = recipe.model.dtype
    if name == "auto":
        name = "bfloat16" if recipe.training.bf16 else "float16" if recipe.training.fp16 else "float32"
    return getattr(torch, name)


def resolve_model_path(recipe, output_dir: Path, is_main: bool = True) -> Path:
    """The local model folder a recipe trains: its model.path, or a tiny model built once there."""
    tiny = recipe.model.tiny_type
    if tiny is None:
        path = Path(recipe.model.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.path={recipe.model.path!r} in {recipe.source} is not a local checkpoint folder "
                "(no config.json). Download the weights first (e.g. `huggingface-cli download "
                "Qwen/Qwen2.5-VL-7B-Instruct --local-dir DIR`) and set model.path=DIR, or try the "
                "pipeline on a tiny model: gasp train --recipe tiny_cpu"
            )
        from gasp_plugin.models.registry import check_checkpoint

        check_checkpoint(path)  # an unsupported family fails here, before its weights load
        return path
    from gasp_plugin.models.tiny import save_tiny_model

    t = recipe.model.tiny
    target = Path(t.dir) if t.dir else output_dir / "tiny-model"
    return ensure_once(target, is_main, lambda out: save_tiny_model(tiny, out, **t.sizes()))


def training_arguments(recipe, deepspeed_json: str | None, progress: bool):
    """The TrainingArguments of a recipe. ``training.gradient_checkpointing`` is passed under the
    name the installed transformers reads without a deprecation warning: ``activation_checkpointing``
    where TrainingArguments has that field (5.24 does), else ``gradient_checkpointing``."""
    from dataclasses import fields

    from transformers import TrainingArguments

    t = recipe.training
    names = {f.name for f in fields(TrainingArguments)}
    ckpt = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return TrainingArguments(
        output_dir=t.output_dir, max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type, warmup_steps=int(t.warmup_ratio * t.max_steps),
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, bf16=t.bf16, fp16=t.fp16,
        **{ckpt: t.gradient_checkpointing,
           f"{ckpt}_kwargs": {"use_reentrant": False} if t.gradient_checkpointing else None},
        deepspeed=deepspeed_json, logging_steps=t.logging_steps, save_steps=t.save_steps,
        save_total_limit=t.save_total_limit, seed=t.seed, data_seed=t.seed,
        dataloader_num_workers=t.dataloader_num_workers, report_to=list(t.report_to) or "none",
        remove_unused_columns=False, use_cpu=t.use_cpu, disable_tqdm=not progress,
        logging_first_step=True,
    )


def _vision_module_names(model, adapter) -> list[str]:
    """Names of the top vision modules (e.g. ``visual``; ``vision_tower``, ``multi_modal_projector``)."""
    pattern = re.compile(adapter.vision_pattern)
    return sorted({pattern.search(name).group(0).strip(".") for name, _ in adapter.vision_parameters(model)})


def apply_lora(model, recipe, handle, adapter):
    """Wrap with PEFT LoRA (``recipe.lora``) or freeze all but the language model, then
    ``handle.ensure_trainable()`` (the heads train and are saved on their own, not in the adapter);
    ``model.train_vision`` also trains the vision encoder and projector."""
    train_vision = recipe.model.train_vision
    if recipe.lora.enabled:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                         target_modules=recipe.lora.target, task_type="CAUSAL_LM",
                         modules_to_save=_vision_module_names(model, adapter) if train_vision else None)
        model = get_peft_model(model, cfg)
    else:
        vision = {n for n, _ in adapter.vision_parameters(model)} if train_vision else set()
        for name, p in model.named_parameters():
            p.requires_grad_("language_model" in name or name in vision)
    handle.ensure_trainable()
    return model


def open_scenes(paths: list[str]):
    """Scenes of ``data.geometry`` (see :func:`gasp_plugin.data.scene.open_scenes`)."""
    from gasp_plugin.data.scene import open_scenes as _open

    return _open(paths, what="data.geometry.scenes")


def geometry_token_budget(recipe, model_config) -> int:
    """``data.geometry.max_tokens``, or the longest sequence the model takes
    (``max_position_embeddings`` of its text config) when the recipe leaves it null."""
    if recipe.data.geometry.max_tokens is not None:
        return recipe.data.geometry.max_tokens
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return int(text.max_position_embeddings)


def _geometry_source(recipe, processor, adapter, output_dir: Path, is_main: bool):
    from gasp_plugin.data import ClipSampler

    g = recipe.data.geometry
    paths = list(g.scenes)
    if g.synthetic is not None:
        from gasp_plugin.data.synthetic import generate_scenes

        cfg = g.synthetic.config
        folder = Path(g.synthetic.dir) if g.synthetic.dir else output_dir / "data" / "scenes"
        ensure_once(folder, is_main, lambda out: generate_scenes(out, g.synthetic.count, g.synthetic.seed, cfg))
        paths.append(str(folder))
    if not paths:
        return None
    sampler = ClipSampler(open_scenes(paths), g.sampling, seed=recipe.training.seed)
    return geometry_examples(sampler, processor, adapter, geometry_token_budget(recipe, adapter.config))


def geometry_examples(sampler, processor, adapter, max_tokens: int | None = None) -> Callable[[int], dict]:
    """``stream_index -> geometry example`` (model inputs + targets) from a ``ClipSampler``.

    Token budget: a clip whose frames would not fit in ``max_tokens`` is cut to the frames that
    do (the anchor and a seeded choice of the others), never below the sampler's ``min_frames``;
    a clip that cannot fit that many is refused, and so is any example whose exact sequence is
    longer than ``max_tokens``: no clip over budget reaches the model. Each example carries
    ``gasp_notes`` (frames drawn and kept, tokens) for the run's summary.

    Unusable clips (no acceptable draw, a bad frame, no visible track, over budget) raise
    :class:`gasp_plugin.data.instruct.BadSample`, which the interleaved dataset replaces and counts.
    """
    from gasp_plugin.core.batch import TARGETS_KEY, build_geometry_example
    from gasp_plugin.data import ClipSamplingError
    from gasp_plugin.data.clips import cut_clip, frames_within_budget
    from gasp_plugin.data.instruct import BadSample
    from gasp_plugin.train.interleave import NOTES_KEY

    def fit(clip, tracks, index: int):
        layout = adapter.video_frame_layout if adapter.geometry_as_video else adapter.frame_layout
        per_frame = layout(processor, clip.images.shape[1:3]).num_tokens  # the form the example takes
        fits = frames_within_budget(per_frame, max_tokens)
        if fits >= len(clip.frame_ids):
            return clip, tracks
        if fits < sampler.sampling.min_frames:
            raise BadSample(f"token budget: clip {clip.scene!r} has {per_frame} visual tokens per frame, so "
                            f"max_tokens={max_tokens} holds {fits} frames < min_frames={sampler.sampling.min_frames}; "
                            "lower model.max_pixels or min_frames, or raise data.geometry.max_tokens")
        return cut_clip(clip, tracks, fits, seed=index)

    def source(index: int) -> dict:
        try:
            clip, tracks = sampler.sample(index)
        except ClipSamplingError as err:
            raise BadSample(str(err)) from err
        drawn = len(clip.frame_ids)
        if max_tokens is not None:
            clip, tracks = fit(clip, tracks, index)
        try:
            example = build_geometry_example(clip, tracks, processor, adapter)
        except ValueError as err:
            raise BadSample(f"clip {clip.scene!r} frames {clip.frame_ids}: {err}") from err
        tokens = int(example["input_ids"].shape[-1])
        if max_tokens is not None and tokens > max_tokens:
            raise BadSample(f"token budget: clip {clip.scene!r} frames {clip.frame_ids} is {tokens} tokens > "
                            f"max_tokens={max_tokens}")
        if example[TARGETS_KEY].num_visible == 0:
            raise BadSample(f"clip {clip.scene!r} frames {clip.frame_ids}: no visible tracks")
        example[NOTES_KEY] = {"frames": len(clip.frame_ids), "drawn_frames": drawn, "tokens": tokens,
                              "pairs": int(example[TARGETS_KEY].num_visible)}
        return example

    return source


def _instruct_source(recipe, processor, config, output_dir: Path, is_main: bool):
    from gasp_plugin.data.instruct import InstructionDataset, load_records, make_synthetic_instructions
    from gasp_plugin.train.interleave import PermutedSource

    d = recipe.data.instruct
    files, root = list(d.json), Path(d.media_root) if d.media_root else None
    if d.synthetic is not None:
        folder = Path(d.synthetic.dir) if d.synthetic.dir else output_dir / "data" / "instruct"
        ensure_once(folder, is_main, lambda out: make_synthetic_instructions(out, d.synthetic.count, d.synthetic.seed))
        files.append(str(folder / "data.json"))
        root = root or folder
    if not files:
        return None, None
    ds = InstructionDataset(load_records(files), root or Path("."), processor,
                            image_token_id=config.image_token_id,
                            video_token_id=getattr(config, "video_token_id", None),
                            max_length=d.max_length, video_frames=d.video_frames)
    return ds, PermutedSource(ds.encode, len(ds), recipe.training.seed)


@dataclass
class Run:
    trainer: Any
    attn_implementation: str
    reference_batch: Callable[[], dict]

    def write_reference_outputs(self) -> Path:
        """Logits of the trained model on one fixed batch (all ranks run it; rank 0 writes
        ``reference_outputs.pt``), so an exported model can be checked against the trained one."""
        import torch

        trainer = self.trainer
        batch = self.reference_batch()
        inputs = {k: v.to(trainer.args.device) if hasattr(v, "to") else v for k, v in batch.items()}
        module = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
        module.eval()
        with torch.no_grad():
            logits = module(**inputs).logits.float().cpu()
        path = Path(trainer.args.output_dir) / "reference_outputs.pt"
        if trainer.args.should_save:
            torch.save({"inputs": {k: v.cpu() for k, v in batch.items()}, "logits": logits}, path)
        return path


def build_run(recipe, *, deepspeed_json, progress) -> Run:
    from transformers import AutoModelForImageTextToText

    from gasp_plugin.constants import TARGETS_KEY
    from gasp_plugin.core.attach import attach_gasp
    from gasp_plugin.core.batch import GeometryCollator
    from gasp_plugin.data.instruct import InstructionCollator
    from gasp_plugin.models.processing import load_processor
    from gasp_plugin.models.registry import get_adapter
    from gasp_plugin.train.interleave import (GEOMETRY, INSTRUCT, InterleavedCollator, InterleavedDataset,
                                              InterleavePlan, KeepForwardKeys, forward_keys)
    from gasp_plugin.train.trainer import GaspTrainer

    output_dir = Path(recipe.training.output_dir)
    is_main = int(os.environ.get("LOCAL_RANK", "0")) == 0
    # a tiny model is built before any ZeRO-3 config is alive: zero.Init would make its
    # construction a collective that the waiting ranks never join
    model_path = resolve_model_path(recipe, output_dir, is_main)
    args = training_arguments(recipe, deepspeed_json, progress)  # before the model: ZeRO-3 init
    if deepspeed_json:
        import deepspeed

        deepspeed.init_distributed()  # zero.Init (ZeRO-3 loading) needs the real world size
    attn = resolve_attention(recipe.model.attn_implementation)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=resolve_dtype(recipe), attn_implementation=attn)
    in_use = getattr(model.config, "_attn_implementation", None)
    logger.info("attention implementation in use: %s (recipe asked for %s)", in_use, recipe.model.attn_implementation)
    if in_use != attn:
        raise RuntimeError(f"asked for {attn} attention but the model runs {in_use}")
    processor = load_processor(model_path)
    adapter = get_adapter(model)
    adapter.apply_pixel_budget(processor, recipe.model.min_pixels, recipe.model.max_pixels)
    keys = forward_keys(model)
    handle = attach_gasp(model, recipe.gasp)
    model = apply_lora(model, recipe, handle, adapter)

    geometry = _geometry_source(recipe, processor, adapter, output_dir, is_main)
    instruct_ds, instruct = _instruct_source(recipe, processor, model.config, output_dir, is_main)
    sources = {k: v for k, v in ((GEOMETRY, geometry), (INSTRUCT, instruct)) if v is not None}
    t = recipe.training
    plan = InterleavePlan(seed=t.seed, geometry_ratio=recipe.data.geometry_ratio, world_size=args.world_size,
                          batch_size=t.per_device_train_batch_size,
                          num_steps=t.max_steps * t.gradient_accumulation_steps)
    tokenizer = getattr(processor, "tokenizer", processor)
    collator = InterleavedCollator({GEOMETRY: KeepForwardKeys(GeometryCollator(processor), keys),
                                    INSTRUCT: KeepForwardKeys(InstructionCollator(tokenizer.pad_token_id), keys)})
    trainer = GaspTrainer(
        model=model, args=args, train_dataset=InterleavedDataset(plan, sources), data_collator=collator,
        processing_class=processor, gasp_handle=handle, head_lr_scale=t.head_lr_scale,
        trace_dir=str(output_dir / "trace") if t.trace_data else None,
    )
    from gasp_plugin.train.threads import thread_callback

    threads = thread_callback(t.cpu_threads, on_cpu=args.device.type == "cpu")
    if threads is not None:
        trainer.add_callback(threads)
    if progress:  # one short loss line per logging step instead of a dict of every term
        from transformers.trainer_callback import ProgressCallback

        from gasp_plugin.train.progress import LossReadout

        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LossReadout)

    def reference_batch():
        sample = instruct(0) if instruct is not None else geometry(0)
        kind = INSTRUCT if instruct is not None else GEOMETRY
        batch = collator.collators[kind]([sample])
        return {k: v for k, v in batch.items() if k not in ("labels", TARGETS_KEY)}

    return Run(trainer=trainer, attn_implementation=in_use, reference_batch=reference_batch)
