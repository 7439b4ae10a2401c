"""What every repository patch needs: ``--gasp_*`` arguments, heads, interleaved data, trainer.

A patched training script does four things, each one call here:

    handle = attach(model, gasp_args)                   # None when --gasp_geometry_data is unset
    ...  get_peft_model(model, ...) / freezing ...
    unfreeze_heads(handle)                              # handle.ensure_trainable(), None-safe
    train_dataset, collator = interleave(train_dataset, collator, handle, processor,
                                         training_args, gasp_args)
    trainer = make_trainer(TheirTrainer, handle, gasp_args, model=model, args=training_args, ...)

Without ``--gasp_geometry_data`` every call is a no-op and the script trains as before.

The heads follow the one rule of :mod:`gasp_plugin.core.attach`: not in PEFT ``modules_to_save``,
made trainable by ``handle.ensure_trainable()`` after the script wrapped or froze the model, and
saved on their own by :class:`gasp_plugin.GaspTrainerMixin` (``gasp_heads.safetensors``), so the
adapter loads with plain PEFT.

Epochs: with GASP, a geometry step takes the place of an instruction step, so when the script
gives ``num_train_epochs`` rather than ``max_steps``, :func:`interleave` sets ``max_steps`` to
cover that many epochs of the instruction data at the geometry ratio (:func:`plan_steps`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

__all__ = [
    "GaspArguments",
    "parse_layers",
    "attach",
    "unfreeze_heads",
    "plan_steps",
    "geometry_source",
    "interleave",
    "TrainEvalCollator",
    "framework_budgets",
    "with_length_budget",
    "trainer_class",
    "make_trainer",
]

logger = logging.getLogger("gasp_plugin.integrations")

_ITEM_KEYS = frozenset({"kind", "sample", "skipped", "reasons", "trace"})  # InterleavedDataset items


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class GaspArguments:
    """The ``--gasp_*`` arguments (``transformers.HfArgumentParser`` reads them).

    GASP is on when ``gasp_geometry_data`` is set. All names start with ``gasp_`` so the class can
    also be mixed into a repository's own argument dataclass without clashes; there its
    ``__post_init__`` may be shadowed, so the helpers call :meth:`validate_gasp` themselves.
    """

    gasp_geometry_data: Optional[str] = field(
        default=None, metadata=_help("Comma-separated posed RGB-D scene folders (or folders of scene folders); "
                                     "setting it turns GASP on."))
    gasp_ratio: float = field(default=0.5, metadata=_help("Fraction of global steps that are geometry steps."))
    gasp_layers: str = field(default="all", metadata=_help('Supervised LLM layers: "all", "0,4,-1" or "start:stop".'))
    gasp_embed_dim: int = field(default=256, metadata=_help("Correspondence head output size."))
    gasp_tau: float = field(default=0.07, metadata=_help("InfoNCE / soft-argmax temperature."))
    gasp_corr_weight: float = field(default=0.3, metadata=_help("Weight of the correspondence term."))
    gasp_depth_weight: float = field(default=1.0, metadata=_help("Weight of the depth-consistency term."))
    gasp_qk_weight: float = field(default=0.0, metadata=_help(
        "Weight of the query/key alignment term (0 = the paper's two losses; see GaspConfig.qk_weight)."))
    gasp_head_lr_scale: float = field(default=4.0, metadata=_help("Heads train at learning_rate times this."))
    gasp_min_frames: int = field(default=8, metadata=_help("Fewest frames per geometry clip."))
    gasp_max_frames: int = field(default=24, metadata=_help("Most frames per geometry clip."))
    gasp_window: int = field(default=48, metadata=_help("Clip frames come from [anchor - window, anchor + window]."))
    gasp_grid: str = field(default="8", metadata=_help(
        'Query points per side on the anchor frame: one grid ("8") or several ("8,24": the paper\'s coarse and fine).'))
    gasp_keep: float = field(default=0.5, metadata=_help("Fraction of best-tracked query points kept."))
    gasp_max_tokens: Optional[int] = field(default=None, metadata=_help(
        "Most tokens a geometry clip may hold: longer clips lose frames (not below --gasp_min_frames) or are "
        "refused and counted. Unset: no budget; set it to the script's sequence budget (e.g. model_max_length)."))

    def __post_init__(self):
        self.validate_gasp()

    @property
    def gasp_enabled(self) -> bool:
        return bool(self.gasp_geometry_data and self.gasp_geometry_data.strip())

    def gasp_scene_paths(self) -> list[str]:
        return [p.strip() for p in (self.gasp_geometry_data or "").split(",") if p.strip()]

    def validate_gasp(self) -> None:
        """Raise ValueError naming the ``--gasp_*`` argument, what is allowed and what was given.

        The clip settings and the ratio are checked by the same code as a recipe's
        (:class:`gasp_plugin.data.ClipSampling`, :func:`gasp_plugin.data.clips.check_geometry_ratio`)."""
        from gasp_plugin.data.clips import check_geometry_ratio

        check_geometry_ratio(self.gasp_ratio, "--gasp_ratio")
        self.gasp_clip_sampling()
        checks = [
            ("gasp_embed_dim", self.gasp_embed_dim >= 1, "an int >= 1"),
            ("gasp_tau", self.gasp_tau > 0, "a number > 0"),
            ("gasp_corr_weight", self.gasp_corr_weight >= 0, "a number >= 0"),
            ("gasp_depth_weight", self.gasp_depth_weight >= 0, "a number >= 0"),
            ("gasp_qk_weight", self.gasp_qk_weight >= 0, "a number >= 0"),
            ("gasp_head_lr_scale", self.gasp_head_lr_scale > 0, "a number > 0"),
            ("gasp_max_tokens", self.gasp_max_tokens is None or self.gasp_max_tokens >= 64, "an int >= 64 or unset"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"--{name} must be {allowed}; got {getattr(self, name)!r}")
        parse_layers(self.gasp_layers)

    def gasp_clip_sampling(self):
        """The :class:`gasp_plugin.data.ClipSampling` of ``--gasp_{min_frames,max_frames,window,grid,keep}``."""
        from gasp_plugin.data.clips import ClipSampling

        try:
            grid = tuple(int(g) for g in str(self.gasp_grid).split(","))
        except ValueError:
            raise ValueError(f'--gasp_grid must be an int or comma-separated ints ("8" or "8,24"); '
                             f"got {self.gasp_grid!r}") from None
        try:
            return ClipSampling(min_frames=self.gasp_min_frames, max_frames=self.gasp_max_frames,
                                window=self.gasp_window, grid=grid, keep=self.gasp_keep)
        except ValueError as err:
            field_name = getattr(err, "field", "")
            raise ValueError(str(err).replace(f"ClipSampling.{field_name}", f"--gasp_{field_name}")) from err

    def gasp_config(self):
        """The :class:`gasp_plugin.GaspConfig` these arguments describe."""
        from gasp_plugin.core.config import GaspConfig

        return GaspConfig(layers=parse_layers(self.gasp_layers), embed_dim=self.gasp_embed_dim, tau=self.gasp_tau,
                          corr_weight=self.gasp_corr_weight, depth_weight=self.gasp_depth_weight,
                          qk_weight=self.gasp_qk_weight)


def parse_layers(text: str) -> str | list[int]:
    """``"all"`` -> ``"all"``; ``"0,4,-1"`` -> ``[0, 4, -1]``; ``"2:5"`` -> ``[2, 3, 4]``."""
    value = str(text).strip()
    if value == "all":
        return "all"
    try:
        if ":" in value:
            start, stop = (int(v) for v in value.split(":"))
            layers = list(range(start, stop))
        else:
            layers = [int(v) for v in value.split(",")]
    except ValueError:
        layers = []
    if not layers:
        raise ValueError(f'--gasp_layers must be "all", comma-separated ints ("0,4,-1") or "start:stop" '
                         f'with start < stop ("8:16"); got {text!r}')
    return layers


def attach(model, args: GaspArguments):
    """:func:`gasp_plugin.attach_gasp` with the arguments' config; ``None`` when GASP is off."""
    args.validate_gasp()
    if not args.gasp_enabled:
        return None
    from gasp_plugin.core.attach import attach_gasp

    handle = attach_gasp(model, args.gasp_config())
    logger.info("GASP heads attached to %d decoder layers (%s)", len(handle.layers), type(model).__name__)
    return handle


def unfreeze_heads(handle) -> int:
    """``handle.ensure_trainable()`` (0 when GASP is off): the patches call it after the script's
    PEFT wrapping / freezing."""
    return 0 if handle is None else handle.ensure_trainable()


def plan_steps(*, max_steps: int, num_train_epochs: float, num_instruct: int, world_size: int,
               batch_size: int, accumulation: int, ratio: float) -> tuple[int, int]:
    """``(micro_steps, optimizer_steps)`` of the interleaved run.

    ``max_steps > 0`` wins. Otherwise the run is long enough that its instruction steps (a
    ``1 - ratio`` share, in expectation) cover ``num_train_epochs`` passes over ``num_instruct``
    samples at ``world_size * batch_size`` samples per step.
    """
    if max_steps > 0:
        return max_steps * accumulation, max_steps
    if ratio >= 1.0:
        raise ValueError("--gasp_ratio 1 trains on geometry only: set --max_steps (epochs count instruction data)")
    if num_instruct < 1 or num_train_epochs <= 0:
        raise ValueError(f"cannot size the run from epochs: {num_instruct} instruction samples, "
                         f"num_train_epochs={num_train_epochs}; set --max_steps")
    instruct_steps = math.ceil(num_train_epochs * num_instruct / (world_size * batch_size))
    optimizer_steps = math.ceil(instruct_steps / (1.0 - ratio) / accumulation)
    return optimizer_steps * accumulation, optimizer_steps


def geometry_source(args: GaspArguments, processor, adapter, seed: int) -> Callable[[int], dict]:
    """``stream_index -> geometry example`` over the scenes of ``--gasp_geometry_data``.

    Unusable clips raise :class:`gasp_plugin.data.instruct.BadSample` (replaced and counted by
    :class:`gasp_plugin.train.interleave.InterleavedDataset`).
    """
    from gasp_plugin.data import ClipSampler
    from gasp_plugin.train.assemble import geometry_examples, open_scenes

    sampler = ClipSampler(open_scenes(args.gasp_scene_paths()), args.gasp_clip_sampling(), seed=seed)
    return geometry_examples(sampler, processor, adapter, args.gasp_max_tokens)


def _instruct_source(dataset) -> Callable[[int], Any]:
    from gasp_plugin.data.instruct import BadSample

    def source(index: int):
        try:
            return dataset[index]
        except (OSError, ValueError, KeyError) as err:  # unreadable media, malformed record
            raise BadSample(f"instruction sample {index}: {type(err).__name__}: {err}") from err

    return source


@dataclass
class TrainEvalCollator:
    """Interleaved training items go to ``train``; anything else (evaluation) to ``plain``."""

    train: Callable[[list], dict]
    plain: Callable[[list], dict]

    def __call__(self, items: list) -> dict:
        if items and all(isinstance(it, dict) and _ITEM_KEYS <= set(it) for it in items):
            return self.train(items)
        return self.plain(items)


def interleave(train_dataset, data_collator, handle, processor, training_args, args: GaspArguments):
    """``(dataset, collator)`` mixing ``train_dataset`` with geometry clips, decided per global step.

    The repository's own dataset and collator serve the instruction steps unchanged. Sets
    ``training_args.max_steps`` when it was not given (:func:`plan_steps`) and
    ``remove_unused_columns=False`` (the batches carry GASP targets). A no-op when ``handle`` is None.
    """
    if handle is None:
        return train_dataset, data_collator
    from gasp_plugin.core.batch import GeometryCollator
    from gasp_plugin.train.interleave import (GEOMETRY, INSTRUCT, InterleavedCollator, InterleavedDataset,
                                              InterleavePlan, KeepForwardKeys, PermutedSource, forward_keys)

    args.validate_gasp()
    if not hasattr(train_dataset, "__len__") or not hasattr(train_dataset, "__getitem__"):
        raise ValueError(f"GASP interleaving needs a map-style training dataset (len and indexing); got "
                         f"{type(train_dataset).__name__} (streaming datasets are not supported)")
    ta = training_args
    n = len(train_dataset)
    micro, optimizer_steps = plan_steps(max_steps=ta.max_steps, num_train_epochs=ta.num_train_epochs, num_instruct=n,
                                        world_size=ta.world_size, batch_size=ta.per_device_train_batch_size,
                                        accumulation=ta.gradient_accumulation_steps, ratio=args.gasp_ratio)
    if ta.max_steps <= 0:
        logger.info("GASP: %s epochs of %d instruction samples at geometry ratio %.2f -> max_steps=%d",
                    ta.num_train_epochs, n, args.gasp_ratio, optimizer_steps)
        ta.max_steps = optimizer_steps
    ta.remove_unused_columns = False
    plan = InterleavePlan(seed=ta.seed, geometry_ratio=args.gasp_ratio, world_size=ta.world_size,
                          batch_size=ta.per_device_train_batch_size, num_steps=micro)
    sources = {GEOMETRY: geometry_source(args, processor, handle.adapter, ta.seed)}
    if n > 0:
        sources[INSTRUCT] = PermutedSource(_instruct_source(train_dataset), n, ta.seed)
    geometry_collator = KeepForwardKeys(GeometryCollator(processor), forward_keys(handle.model))
    collator = InterleavedCollator({GEOMETRY: geometry_collator, INSTRUCT: data_collator})
    return InterleavedDataset(plan, sources), TrainEvalCollator(collator, data_collator)


def framework_budgets(processor, handle, gasp_args: GaspArguments, *, min_pixels: int | None = None,
                      max_pixels: int | None = None, max_length: int | None = None):
    """The processor geometry clips use under a framework's own budgets: a copy of ``processor``
    (the framework's instruction data keeps its own) at the framework's pixel budget, applied by
    the model family's adapter; and ``gasp_args.gasp_max_tokens`` set to the framework's sequence
    length when the user left it unset (set in place: framework argument classes may mix
    :class:`GaspArguments` in, and cannot be rebuilt)."""
    import copy

    geometry_processor = copy.deepcopy(processor)
    if min_pixels is not None or max_pixels is not None:
        handle.adapter.apply_pixel_budget(geometry_processor, min_pixels, max_pixels)
    if gasp_args.gasp_max_tokens is None and max_length:
        gasp_args.gasp_max_tokens = int(max_length)
    return geometry_processor


def with_length_budget(gasp_args: GaspArguments, max_length, what: str) -> GaspArguments:
    """``gasp_args`` with ``gasp_max_tokens`` = the framework's sequence length ``max_length``
    (named ``what`` in messages) when only the latter is set; a copy, the input is left as is."""
    import dataclasses

    if gasp_args.gasp_max_tokens is not None or not max_length:
        return gasp_args
    if max_length < 64:
        raise ValueError(f"{what}={max_length} is too short for a geometry clip; set gasp_max_tokens (>= 64) "
                         f"or a larger {what}")
    logger.info("GASP geometry clips use %s=%d as their token budget", what, max_length)
    return dataclasses.replace(gasp_args, gasp_max_tokens=int(max_length))


def trainer_class(base: type) -> type:
    """``base`` with :class:`gasp_plugin.GaspTrainerMixin` mixed in first (``base`` if it has it)."""
    from gasp_plugin.train.trainer import GaspTrainerMixin

    if issubclass(base, GaspTrainerMixin):
        return base
    doc = f"``{base.__name__}`` with GASP terms, head learning rate and head saving (GaspTrainerMixin)."
    return type(f"Gasp{base.__name__}", (GaspTrainerMixin, base), {"__doc__": doc, "__module__": base.__module__})


def make_trainer(trainer_cls: type, handle, gasp_args: GaspArguments, /, **kwargs):
    """``trainer_cls(**kwargs)``, with GASP mixed in when ``handle`` is not None.

    The first three are positional-only, so ``kwargs`` may hold the Trainer's own ``args``.
    """
    if handle is None:
        return trainer_cls(**kwargs)
    return trainer_class(trainer_cls)(gasp_handle=handle, head_lr_scale=gasp_args.gasp_head_lr_scale, **kwargs)
