"""The training recipe: one YAML file describes model, LoRA, GASP, data and training arguments.

A recipe is a tree of validated dataclasses (:class:`Recipe`). :func:`load_recipe` reads a YAML
file, applies ``key.path=value`` overrides (values parsed as YAML, so ``training.bf16=false`` and
``data.geometry.scenes=[a,b]`` work), and validates everything: an unknown key or a bad value is a
:class:`RecipeError` naming the key path and the file. Relative paths are relative to the current
directory, except ``training.deepspeed``, which is also looked up next to the recipe file.

Example::

    recipe = load_recipe("recipes/tiny_cpu.yaml", ["training.max_steps=10"])
    recipe.training.learning_rate  # 1e-3

Sections owned by a lower layer are that layer's own validated dataclasses: ``gasp`` is a
:class:`~gasp_plugin.core.config.GaspConfig`, ``data.geometry.synthetic.config`` a
:class:`~gasp_plugin.data.synthetic.SyntheticSceneConfig`, and ``data.geometry``'s clip keys are
checked by :class:`~gasp_plugin.data.clips.ClipSampling`, so every setting is validated once.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gasp_plugin.constants import TINY_PREFIX
from gasp_plugin.core.config import GaspConfig
from gasp_plugin.data.clips import ClipSampling, check_geometry_ratio
from gasp_plugin.data.synthetic import SyntheticSceneConfig
from gasp_plugin.recipe.schema import RecipeError, build, set_by_path, to_dict

__all__ = [
    "Recipe",
    "ModelRecipe",
    "TinyModelRecipe",
    "LoraRecipe",
    "DataRecipe",
    "GeometryDataRecipe",
    "SyntheticScenesRecipe",
    "InstructDataRecipe",
    "SyntheticInstructRecipe",
    "TrainingRecipe",
    "RecipeError",
    "load_recipe",
    "parse_overrides",
    "recipe_to_dict",
    "shipped_recipes",
    "resolve_recipe_path",
]

ATTN_CHOICES = ("auto", "flash_attention_2", "sdpa", "eager")
DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")
SCHEDULER_CHOICES = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
)


def _invalid(name: str, message: str) -> ValueError:
    """A ValueError whose ``field`` names the key, so the RecipeError names the full key path."""
    err = ValueError(message)
    err.field = name
    return err


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise _invalid(name, f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise _invalid(name, f"{name} must be >= {low}; got {value!r}")


@dataclass
class TinyModelRecipe:
    """Sizes of the tiny random model built when ``model.path`` is ``tiny:<model_type>``."""

    dir: str | None = None  # where the checkpoint folder is created; default <output_dir>/tiny-model
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    vision_depth: int = 2
    image_size: int = 224
    seed: int = 0

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "num_heads", "vision_depth", "image_size"):
            _at_least(name, getattr(self, name), 1)
        if self.hidden_size % self.num_heads:
            raise _invalid("hidden_size", f"hidden_size must be a multiple of num_heads ({self.num_heads}); "
                                          f"got {self.hidden_size}")

    def sizes(self) -> dict:
        """Keyword arguments of ``gasp_plugin.models.tiny.save_tiny_model`` / ``build_tiny_model``."""
        return {k: v for k, v in asdict(self).items() if k != "dir"}


@dataclass
class ModelRecipe:
    path: str = ""  # local checkpoint folder, or tiny:<model_type> (qwen2_vl, qwen2_5_vl, llava)
    attn_implementation: str = "auto"  # auto = flash_attention_2 if flash-attn and CUDA, else sdpa
    dtype: str = "auto"  # auto = bfloat16 if training.bf16, float16 if training.fp16, else float32
    # pixels per frame the processor resizes into (Qwen-VL; applied once, by the adapter, in the form
    # the installed transformers honours); null = the checkpoint processor's own
    min_pixels: int | None = None
    max_pixels: int | None = None
    # also train the vision encoder and projector (the paper keeps them frozen; a tiny model with
    # random weights has no pretrained visual features to keep). Under LoRA they are trained in
    # full through PEFT modules_to_save and saved in the adapter.
    train_vision: bool = False
    tiny: TinyModelRecipe = field(default_factory=TinyModelRecipe)

    def __post_init__(self):
        if not self.path:
            raise _invalid("path", "path is required: a local checkpoint folder or tiny:<model_type>")
        _choice("attn_implementation", self.attn_implementation, ATTN_CHOICES)
        _choice("dtype", self.dtype, DTYPE_CHOICES)
        if not isinstance(self.train_vision, bool):
            raise _invalid("train_vision", f"train_vision must be true or false; got {self.train_vision!r}")
        for name in ("min_pixels", "max_pixels"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise _invalid("min_pixels", f"min_pixels ({self.min_pixels}) must be <= max_pixels ({self.max_pixels})")

    @property
    def tiny_type(self) -> str | None:
        """The model type to build when the path is ``tiny:<model_type>``, else None."""
        return self.path[len(TINY_PREFIX):] if self.path.startswith(TINY_PREFIX) else None


@dataclass
class LoraRecipe:
    enabled: bool = True  # false = full fine-tuning of the language model
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    # modules to adapt, a regex on module paths; the default is the LLM's attention and MLP
    target: str = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"

    def __post_init__(self):
        _at_least("r", self.r, 1)
        _at_least("alpha", self.alpha, 1)
        if not 0.0 <= self.dropout < 1.0:
            raise _invalid("dropout", f"dropout must be in [0, 1); got {self.dropout!r}")
        try:
            re.compile(self.target)
        except re.error as err:
            raise _invalid("target", f"target is not a valid regex ({err}); got {self.target!r}") from err


@dataclass
class SyntheticScenesRecipe:
    """Synthetic RGB-D scenes generated once into ``dir`` (see gasp_plugin.data.synthetic)."""

    count: int = 4
    seed: int = 0
    dir: str | None = None  # default <output_dir>/data/scenes
    config: SyntheticSceneConfig = field(default_factory=SyntheticSceneConfig)

    def __post_init__(self):
        _at_least("count", self.count, 1)


_SAMPLING = ClipSampling()


@dataclass
class GeometryDataRecipe:
    """Geometry clips: the scenes, and how clips are drawn (the :class:`ClipSampling` fields)."""

    scenes: list[str] = field(default_factory=list)  # scene folders, or folders of scene folders
    synthetic: SyntheticScenesRecipe | None = None
    min_frames: int = _SAMPLING.min_frames  # paper: clips of 8..24 frames
    max_frames: int = _SAMPLING.max_frames
    window: int = _SAMPLING.window  # frames drawn from [anchor - window, anchor + window] (paper: 48)
    grid: int | list[int] = 8  # query grid(s) per side on the anchor frame (paper: [8, 24], coarse and fine)
    keep: float = _SAMPLING.keep  # keep the better-tracked fraction of queries (paper: 0.5)
    # tokens a geometry clip may hold: longer clips lose frames (never below min_frames) or are
    # refused (counted); null = the model's longest sequence (max_position_embeddings)
    max_tokens: int | None = None

    def __post_init__(self):
        _ = self.sampling  # ClipSampling validates the clip keys
        if self.max_tokens is not None:
            _at_least("max_tokens", self.max_tokens, 64)

    @property
    def sampling(self) -> ClipSampling:
        """The clip keys as a :class:`ClipSampling` (what ``ClipSampler`` takes)."""
        return ClipSampling(min_frames=self.min_frames, max_frames=self.max_frames, window=self.window,
                            grid=self.grid, keep=self.keep)


@dataclass
class SyntheticInstructRecipe:
    """A small instruction set (images + JSON) generated once into ``dir``."""

    count: int = 32
    seed: int = 0
    dir: str | None = None  # default <output_dir>/data/instruct

    def __post_init__(self):
        _at_least("count", self.count, 1)


@dataclass
class InstructDataRecipe:
    json: list[str] = field(default_factory=list)  # LLaVA/Qwen conversation JSON (or JSONL) files
    media_root: str | None = None  # image/video paths in the JSON are relative to this
    synthetic: SyntheticInstructRecipe | None = None
    max_length: int = 2048  # longer conversations are truncated (labels too)
    video_frames: int = 8  # frames sampled uniformly from each video

    def __post_init__(self):
        _at_least("max_length", self.max_length, 16)
        _at_least("video_frames", self.video_frames, 1)


@dataclass
class DataRecipe:
    geometry: GeometryDataRecipe = field(default_factory=GeometryDataRecipe)
    instruct: InstructDataRecipe = field(default_factory=InstructDataRecipe)
    geometry_ratio: float = 0.5  # fraction of global steps that are geometry steps

    def __post_init__(self):
        check_geometry_ratio(self.geometry_ratio)


@dataclass
class TrainingRecipe:
    """The subset of transformers.TrainingArguments a recipe sets, plus GASP's own knobs."""

    output_dir: str = "outputs/gasp"
    max_steps: int = 1000
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    head_lr_scale: float = 4.0  # heads train at learning_rate * head_lr_scale (paper: 4)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False  # trades compute (one more forward) for activation memory
    deepspeed: str | None = None  # DeepSpeed json; batch/accumulation/precision "auto" = from here
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = None
    seed: int = 42
    dataloader_num_workers: int = 0
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or "last" (newest in output_dir)
    report_to: list[str] = field(default_factory=list)
    trace_data: bool = False  # write data_trace_rank{r}.jsonl: what each rank trained on, per step
    use_cpu: bool = False  # required for DeepSpeed on CPU-only machines
    # torch threads when training on the CPU: null = torch's setting, an int, or "auto" = as many
    # as the cores while that is faster than one, measured as training runs (train.threads)
    cpu_threads: int | str | None = None

    def __post_init__(self):
        for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                     "logging_steps", "save_steps"):
            _at_least(name, getattr(self, name), 1)
        for name in ("learning_rate", "head_lr_scale", "max_grad_norm"):
            if getattr(self, name) <= 0:
                raise _invalid(name, f"{name} must be > 0; got {getattr(self, name)!r}")
        _choice("lr_scheduler_type", self.lr_scheduler_type, SCHEDULER_CHOICES)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise _invalid("warmup_ratio", f"warmup_ratio must be in [0, 1); got {self.warmup_ratio!r}")
        _at_least("weight_decay", self.weight_decay, 0.0)
        if self.bf16 and self.fp16:
            raise _invalid("fp16", "bf16 and fp16 cannot both be true")
        _at_least("dataloader_num_workers", self.dataloader_num_workers, 0)
        c = self.cpu_threads
        if not (c is None or c == "auto" or (isinstance(c, int) and not isinstance(c, bool) and c >= 1)):
            raise _invalid("cpu_threads", f"cpu_threads must be a positive integer, \"auto\" or null; got {c!r}")


@dataclass
class Recipe:
    model: ModelRecipe
    lora: LoraRecipe = field(default_factory=LoraRecipe)
    gasp: GaspConfig = field(default_factory=GaspConfig)
    data: DataRecipe = field(default_factory=DataRecipe)
    training: TrainingRecipe = field(default_factory=TrainingRecipe)
    source: str = field(default="<recipe>", compare=False)  # the file it came from


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=[x, y]"]`` -> ``[("a.b", 1), ("c", ["x", "y"])]``; values parsed as YAML
    (a float field then also accepts YAML 1.1's string ``"1e-4"``: see ``schema._convert``)."""
    parsed = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {item!r}: expected key.path=value, e.g. training.max_steps=10")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise RecipeError(f"override {item!r}: the value is not valid YAML ({err})") from err
        parsed.append((key.strip(), value))
    return parsed


def _repo_recipes_dir() -> Path:
    """``recipes/`` of the source tree, else the copy installed as ``gasp_plugin.recipes``."""
    package = Path(__file__).resolve().parents[1]
    source = package.parent / "recipes"
    return source if source.is_dir() else package / "recipes"


def shipped_recipes() -> list[Path]:
    """The recipe YAML files shipped in the source tree's ``recipes/`` folder."""
    return sorted(_repo_recipes_dir().glob("*.yaml"))


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file path, or the name of a shipped recipe (``tiny_cpu`` -> ``recipes/tiny_cpu.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = _repo_recipes_dir() / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and path.parent == Path(".") and shipped.is_file():
        return shipped
    known = ", ".join(p.stem for p in shipped_recipes()) or "none found"
    raise RecipeError(f"recipe {str(name_or_path)!r} not found: give a YAML file path or a shipped name ({known})")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe YAML; see the module docstring."""
    path = resolve_recipe_path(path)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RecipeError(f"{source} is not valid YAML: {err}") from err
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: the top level must be a mapping (model:, lora:, gasp:, data:, training:)")
    for key, value in parse_overrides(overrides):
        set_by_path(raw, key, value, source=f"override {key}={value!r}")
    if "source" in raw:
        raise RecipeError(f"unknown key 'source' in {source}")
    recipe = build(Recipe, raw, source=source)
    recipe.source = source
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain data (saved next to checkpoints as ``gasp_recipe.yaml``)."""
    out = to_dict(recipe)
    out.pop("source", None)
    return out
