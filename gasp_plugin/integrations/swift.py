"""GASP in ms-swift 4.x (``swift sft``), as a plugin file (checked with ms-swift 4.6.0, transformers 5.19).

This file *is* the plugin: ``swift sft --external_plugins "$(gasp integrations swift)" ...``. The
GASP settings are environment variables, one per :class:`GaspArguments` field, upper-cased
(``GASP_GEOMETRY_DATA``, ``GASP_RATIO``, ``GASP_LAYERS``, ``GASP_GRID``, ``GASP_MIN_FRAMES``,
``GASP_MAX_FRAMES``, ``GASP_EMBED_DIM``, ``GASP_HEAD_LR_SCALE``, ``GASP_MAX_TOKENS``, ...), plus
``GASP_TRACE_DIR`` (each rank appends what it trained on to ``data_trace_rank{r}.jsonl``). ms-swift
parses its own argument dataclass before it loads plugins and rejects unknown ``--`` options, so
environment variables are its way for extra settings (``MAX_PIXELS``, ``FPS_MAX_FRAMES``, ...);
``--model_kwargs '{"gasp_geometry_data": "/data/scenes"}'`` works too (ms-swift exports
``model_kwargs`` as upper-cased environment variables). GASP is on when ``GASP_GEOMETRY_DATA`` is
set; otherwise the plugin leaves ``swift sft`` exactly as it was::

    GASP_GEOMETRY_DATA=/data/scenes GASP_RATIO=0.5 swift sft --model Qwen/Qwen2-VL-2B-Instruct \\
        --tuner_type lora --dataset train.jsonl --external_plugins "$(gasp integrations swift)"

What the plugin does, through ms-swift's own registry:

- **Trainer.** Loading the file points every entry of ``TrainerFactory.TRAINER_MAPPING`` at a name
  in this module that is resolved when ``swift sft`` builds its trainer (after ``--model_kwargs``
  reached the environment): with GASP off, the trainer the entry named before; with GASP on, for
  ``causal_lm`` (``swift sft``; ``swift pt`` builds it too, untested) that trainer (``Seq2SeqTrainer``) with
  :class:`gasp_plugin.GaspTrainerMixin` mixed in first, and for every other entry (``swift rlhf``,
  embedding, reranker, ...) an error rather than a run that silently ignores GASP.
- **Heads.** Attached in the trainer's constructor to the model ms-swift hands it, i.e. after its
  LoRA wrap (a ``PeftModel``; LoRA's targets never reach the heads), then made trainable; saved
  beside the adapter as ``gasp_heads.safetensors`` (the adapter loads with plain PEFT).
- **Data.** ms-swift's encoded train dataset and its template collator serve the instruction
  steps unchanged; :func:`gasp_plugin.integrations.common.interleave` adds the geometry clips
  (``max_steps`` from the epochs when unset). The trainer reads batches in the order the
  interleaving needs (the Hugging Face data loader with a sequential sampler; ms-swift's own
  ``BatchSamplerShard`` shuffles and shards per sample).
- **Geometry batches** reach the model as the processor built them: ms-swift's post-encode hook
  (which rebuilds ``inputs_embeds`` and drops ``image_grid_thw``, so Qwen-VL's M-RoPE positions
  would silently become text positions) and its ``_prepare_inputs`` (``logits_to_keep`` from
  labels a geometry batch has none of) are skipped for them; instruction batches take ms-swift's
  path, its loss and its ``token_acc``.
- **Budgets.** Geometry frames go through a copy of the processor at ms-swift's pixel budget: the
  ``IMAGE_{MIN,MAX}_TOKEN_NUM`` values ms-swift resolved for qwen_vl_utils (``MIN_PIXELS`` /
  ``MAX_PIXELS`` map onto them), else the ``MIN_PIXELS`` / ``MAX_PIXELS`` environment variables,
  and at most ``--max_pixels``. A clip holds at most ``--max_length`` tokens unless
  ``GASP_MAX_TOKENS`` says otherwise (longer clips lose frames or are refused, counted).
- **Checkpointing.** ms-swift defaults to re-entrant activation checkpointing; on transformers
  releases that checkpoint a decoder layer's whole call (5.19, which ms-swift 4.6 installs, does)
  that leaves the captured hidden states without a graph, so GASP sets
  ``gradient_checkpointing_kwargs={"use_reentrant": false}`` (a log line says so).
- **Refused** with GASP on, naming the option, when the trainer is built (after the model is
  loaded and the data encoded, before any step): ``--packing true`` and ``--padding_free true``
  (one flattened row per batch, while geometry steps are padded multi-frame batches whose visual
  tokens are located by row; on a machine without flash attention ms-swift refuses both itself,
  before the plugin sees them), ``--sequence_parallel_size`` > 1, streaming datasets.

Loading the file changes nothing else in ms-swift; it takes its own folder off ``sys.path`` again
(ms-swift puts a plugin's folder first, and this one holds modules named ``trl`` and ``swift``)
and shows gasp-plugin's log lines (``[INFO:gasp] ...``) when nothing else configured logging.
``import gasp_plugin.integrations.swift`` does not import ms-swift; the trainer classes are
built on first use.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import sys
import typing

from gasp_plugin.integrations.common import GaspArguments, attach, interleave, trainer_class, with_length_budget

__all__ = ["GaspArguments", "ENV_PREFIX", "TRACE_DIR_ENV", "PLUGIN_FILE", "register", "gasp_arguments_from_env",
           "check_template", "pixel_budget", "geometry_processor", "gasp_swift_trainer_class"]

logger = logging.getLogger("gasp_plugin.integrations")

ENV_PREFIX = "GASP_"
#: environment variable naming the folder of the per-rank data traces (optional)
TRACE_DIR_ENV = "GASP_TRACE_DIR"
#: the file ``swift sft --external_plugins`` loads: this module's source
PLUGIN_FILE = os.path.abspath(__file__)
_MODULE = "gasp_plugin.integrations.swift"
_ATTR = "trainer_for_"  # TRAINER_MAPPING[key] -> f"{_MODULE}.{_ATTR}{key}"
_BASES: dict[str, str] = {}  # TRAINER_MAPPING entries as they were before register()
_GEOMETRY = "geometry"  # gasp_plugin.train.interleave.GEOMETRY (not imported here: it pulls numpy)


# ---- settings -------------------------------------------------------------------------------------


def _env_name(field_name: str) -> str:
    return field_name.upper()


def gasp_arguments_from_env(environ: typing.Mapping[str, str] | None = None) -> GaspArguments:
    """:class:`GaspArguments` from ``GASP_*`` environment variables (unset ones keep their defaults).

    Errors name the variable: ``ValueError: GASP_RATIO must be ...``."""
    import dataclasses

    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(GaspArguments)
    values = {}
    for f in dataclasses.fields(GaspArguments):
        name = _env_name(f.name)
        if name not in environ:
            continue
        raw = environ[name].strip()
        kind = hints[f.name]
        optional = type(None) in typing.get_args(kind)
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        if optional and raw.lower() in ("", "none", "null"):
            values[f.name] = None
            continue
        try:
            values[f.name] = base(raw)
        except ValueError:
            raise ValueError(f"{name} must be {'an int' if base is int else 'a number' if base is float else 'text'}"
                             f"{' or unset' if optional else ''}; got {raw!r}") from None
    known = {_env_name(f.name) for f in dataclasses.fields(GaspArguments)} | {TRACE_DIR_ENV}
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
    try:
        args = GaspArguments(**values)
    except ValueError as err:  # the messages name --gasp_x: say GASP_X here
        message = str(err)
        for f in dataclasses.fields(GaspArguments):
            message = message.replace(f"--{f.name}", _env_name(f.name))
        raise ValueError(message) from err
    if args.gasp_enabled and unknown:
        logger.warning("GASP: ignoring environment variables that are no GASP setting: %s (settings: %s)",
                       ", ".join(unknown), ", ".join(sorted(known)))
    return args


# ---- registration ---------------------------------------------------------------------------------


def register() -> None:
    """Point every ``TrainerFactory.TRAINER_MAPPING`` entry at this module (idempotent); what each
    entry named before is kept and used when GASP is off."""
    from swift.trainers import TrainerFactory

    for key, target in list(TrainerFactory.TRAINER_MAPPING.items()):
        ours = f"{_MODULE}.{_ATTR}{key}"
        if target == ours:
            continue
        _BASES[key] = target
        TrainerFactory.TRAINER_MAPPING[key] = ours


def _import_path(path: str) -> type:
    import importlib

    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def __getattr__(name: str):
    if not name.startswith(_ATTR) or name[len(_ATTR):] not in _BASES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    key = name[len(_ATTR):]
    base = _import_path(_BASES[key])
    if not gasp_arguments_from_env().gasp_enabled:
        return base
    if key != "causal_lm":
        raise ValueError(f"GASP_GEOMETRY_DATA is set, but GASP trains with swift sft (task_type causal_lm) only; this "
                         f"run builds the {key!r} trainer ({_BASES[key]}). Unset GASP_GEOMETRY_DATA for it.")
    return gasp_swift_trainer_class(base)


# ---- checks and budgets -----------------------------------------------------------------------------


def check_template(template) -> None:
    """Raise ValueError naming the ms-swift option GASP cannot train with, and the fix."""
    if getattr(template, "packing", False):
        option = "--packing true"
    elif getattr(template, "padding_free", False):
        option = "--padding_free true"
    else:
        option = None
    if option:
        raise ValueError(
            f"{option} cannot be combined with GASP_GEOMETRY_DATA: it flattens each batch into one row without "
            "padding for a varlen (flash-attention) kernel, while GASP geometry steps are padded multi-frame batches "
            f"whose visual tokens are located by row. Set {option.split()[0]} false (or unset GASP_GEOMETRY_DATA).")
    if int(getattr(template, "sequence_parallel_size", 1) or 1) > 1:
        raise ValueError(f"--sequence_parallel_size {template.sequence_parallel_size} shards each sequence across "
                         "ranks, so no rank sees a geometry clip's visual tokens whole: set it to 1 to train with "
                         "GASP_GEOMETRY_DATA")


def _env_int(environ, name: str) -> int | None:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an int (pixels); got {raw!r}") from None


def pixel_budget(template, environ: typing.Mapping[str, str] | None = None) -> tuple[int | None, int | None]:
    """``(min_pixels, max_pixels)`` per frame that ms-swift applies to this template's images
    (``None``: no bound of its own). See the module docstring."""
    environ = os.environ if environ is None else environ
    processor = template.processor
    resolved = dict(getattr(processor, "global_vars", None) or {})  # what ms-swift set on qwen_vl_utils
    image_processor = getattr(processor, "image_processor", None)
    cell = int(getattr(image_processor, "patch_size", 0) or 0) * int(getattr(image_processor, "merge_size", 1) or 1)
    if resolved:
        low, high = resolved.get("min_pixels"), resolved.get("max_pixels")
        if low is None and resolved.get("image_min_token_num") is not None and cell:
            low = int(resolved["image_min_token_num"]) * cell * cell
        if high is None and resolved.get("image_max_token_num") is not None and cell:
            high = int(resolved["image_max_token_num"]) * cell * cell
    else:
        low, high = _env_int(environ, "MIN_PIXELS"), _env_int(environ, "MAX_PIXELS")
    cap = getattr(template, "max_pixels", None)  # --max_pixels: images are scaled down to it first
    if cap:
        high = min(int(high), int(cap)) if high else int(cap)
    if low is not None and high is not None and low > high:
        low = high
    return (None if low is None else int(low)), (None if high is None else int(high))


def geometry_processor(template, adapter, environ: typing.Mapping[str, str] | None = None):
    """A copy of ``template.processor`` with ms-swift's pixel budget (the template's is untouched)."""
    processor = template.processor
    if not hasattr(processor, "image_processor"):
        raise ValueError(f"GASP needs the model's multimodal processor (it builds the geometry clips' image inputs); "
                         f"ms-swift's template holds a {type(processor).__name__}: is --model a vision-language model?")
    low, high = pixel_budget(template, environ)
    copied = copy.deepcopy(processor)
    if low is None and high is None:
        return copied
    if not hasattr(adapter, "pixel_budget"):  # a family that resizes every frame to one fixed size
        logger.info("GASP: %s resizes frames to a fixed size; ms-swift's pixel budget does not apply",
                    type(adapter).__name__)
        return copied
    adapter.apply_pixel_budget(copied, low, high)
    logger.info("GASP geometry frames at ms-swift's pixel budget: min_pixels=%s max_pixels=%s", low, high)
    return copied


def _length_budget(gasp_args: GaspArguments, template) -> GaspArguments:
    """``gasp_args`` with ``gasp_max_tokens`` = ``--max_length`` when only the latter is set."""
    return with_length_budget(gasp_args, getattr(template, "max_length", None), "--max_length")


# ---- the trainer ------------------------------------------------------------------------------------


def _non_reentrant_checkpointing(args) -> None:
    """``gradient_checkpointing_kwargs["use_reentrant"] = False`` on ms-swift's training arguments.

    ms-swift defaults to re-entrant checkpointing (single process, DeepSpeed), and transformers
    releases before 5.2x (ms-swift 4.6 runs on 5.19) checkpoint a decoder layer's whole call, hooks
    included: re-entrant checkpointing then leaves the captured hidden states without a graph, and
    GASP would train its heads alone (the first geometry step raises ``GaspGradientError``)."""
    import json

    kwargs = args.gradient_checkpointing_kwargs
    kwargs = dict(json.loads(kwargs) if isinstance(kwargs, str) else (kwargs or {}))
    if kwargs.get("use_reentrant") is False:
        return
    if kwargs.get("use_reentrant"):
        logger.warning("GASP: gradient_checkpointing_kwargs use_reentrant=true replaced by false (re-entrant "
                       "checkpointing can cut the LLM off the GASP loss)")
    else:
        logger.info("GASP: gradient checkpointing set to non-re-entrant (use_reentrant=false)")
    kwargs["use_reentrant"] = False
    args.gradient_checkpointing_kwargs = kwargs


class _PlainForward:
    """Inside the block, ms-swift's post-encode hook passes a batch through unchanged (the hook
    calls ``template._post_encode``; an instance attribute shadows the method)."""

    def __init__(self, template):
        self.template = template

    def __enter__(self):
        self.had = "_post_encode" in vars(self.template)
        self.saved = vars(self.template).get("_post_encode")
        self.template._post_encode = lambda model, inputs: inputs

    def __exit__(self, *exc):
        if self.had:
            self.template._post_encode = self.saved
        else:
            del self.template._post_encode


@functools.cache
def gasp_swift_trainer_class(base: type) -> type:
    """``base`` (ms-swift's ``Seq2SeqTrainer`` or what the mapping named) with GASP; see the module doc."""
    import transformers

    mixed = trainer_class(base)

    class GaspSwiftTrainer(mixed):
        __doc__ = f"ms-swift's ``{base.__name__}`` with GASP; see :mod:`{_MODULE}`."

        def __init__(self, model, args, template, train_dataset, eval_dataset=None, **kwargs):
            gasp_args = gasp_arguments_from_env()
            if not gasp_args.gasp_enabled:
                raise ValueError("GaspSwiftTrainer needs GASP_GEOMETRY_DATA; without it the plugin builds "
                                 f"{base.__name__} itself")
            check_template(template)
            _non_reentrant_checkpointing(args)  # before ms-swift's trainer patches torch's checkpoint with it
            handle = attach(model, gasp_args)
            try:
                super().__init__(model=model, args=args, template=template, train_dataset=train_dataset,
                                 eval_dataset=eval_dataset, gasp_handle=handle,
                                 head_lr_scale=gasp_args.gasp_head_lr_scale,
                                 trace_dir=os.environ.get(TRACE_DIR_ENV) or None, **kwargs)
                processor = geometry_processor(template, handle.adapter)
                self.gasp_args = _length_budget(gasp_args, template)
                self.train_dataset, self.data_collator = interleave(
                    self.train_dataset, self.data_collator, handle, processor, self.args, self.gasp_args)
            except BaseException:
                handle.detach()  # heads and hooks come off the model again
                raise

        def get_train_dataloader(self, skip_batches: int = 0):
            # the Hugging Face loader: the mixin's sequential sampler, batches sharded by accelerate
            loader = transformers.Trainer.get_train_dataloader(self)
            if skip_batches > 0:  # ms-swift's resume path asks its own loader to skip
                from accelerate import skip_first_batches

                loader = skip_first_batches(loader, skip_batches)
            return loader

        def _prepare_inputs(self, inputs):
            if inputs.get("gasp_kind") == _GEOMETRY:
                return transformers.Trainer._prepare_inputs(self, inputs)  # device placement only
            return super()._prepare_inputs(inputs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if inputs.get("gasp_kind") != _GEOMETRY:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            inputs["use_cache"] = False
            with _PlainForward(self.template):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)

    GaspSwiftTrainer.__name__ = GaspSwiftTrainer.__qualname__ = f"GaspSwift{base.__name__}"
    GaspSwiftTrainer.__module__ = _MODULE
    return GaspSwiftTrainer


# ---- loaded as a plugin file ------------------------------------------------------------------------

if __name__ != _MODULE:
    # ``--external_plugins`` runs this file as a module of another name, after putting its folder first
    # on sys.path; that folder holds modules named like packages (trl.py, swift.py): take it off again,
    # and register through the installed module, the one the trainer mapping names
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    _gasp_logger = logging.getLogger("gasp_plugin")
    if not _gasp_logger.handlers and not logging.getLogger().handlers:  # show GASP's lines as ms-swift shows its own
        _handler = logging.StreamHandler()
        _handler.setFormatter(logging.Formatter("[%(levelname)s:gasp] %(message)s"))
        _gasp_logger.addHandler(_handler)
        _gasp_logger.setLevel(logging.INFO)
    import importlib as _importlib

    _importlib.import_module(_MODULE).register()
