"""What ``gasp probe --model`` and ``--scenes`` accept, turned into a model, processor and scenes.

``--model`` forms (see :func:`load_probe_model`):

- a checkpoint folder loadable by plain transformers (``config.json`` + weights);
  ``gasp_heads.safetensors`` beside it (as training saves them) are used unless ``--heads`` is
  given, with the GASP config of the ``gasp_recipe.yaml`` beside it;
- a PEFT adapter folder (``adapter_config.json``): its base model (a local folder named by
  ``base_model_name_or_path``) is loaded and the adapter merged into it;
- ``tiny:<model_type>``: a tiny random-weight model built from a config (no files needed);
- a recipe YAML (or a shipped recipe's name): the model the recipe trained, when
  ``training.output_dir`` holds a saved model (with the GASP heads saved beside it), otherwise the
  model of its ``model`` section (what the recipe starts from).

Nothing is fetched from the Hugging Face hub.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gasp_plugin.constants import HEADS_FILE, RECIPE_FILE, TINY_PREFIX

__all__ = ["ProbeModel", "load_probe_model", "load_probe_heads", "open_scenes", "held_out"]

_log = logging.getLogger(__name__)


@dataclass
class ProbeModel:
    """What ``--model`` resolved to. ``heads_path``: the heads file found beside a trained model
    (self-describing: it holds its own GASP config)."""

    model: Any
    processor: Any
    name: str
    heads_path: Path | None = None
    source: str = ""
    training_scenes: list[Path] | None = None  # geometry scene folders of the training recipe, if known


def _load_checkpoint(path: Path):
    from transformers import AutoModelForImageTextToText

    from gasp_plugin.models.processing import load_processor
    from gasp_plugin.models.registry import check_checkpoint

    check_checkpoint(path)  # an unsupported family fails here, before its weights load
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    return model, load_processor(path)


def _load_peft(path: Path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from gasp_plugin.models.processing import load_processor

    base_dir = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_dir or not Path(base_dir).is_dir():
        raise FileNotFoundError(
            f"{path / 'adapter_config.json'}: base_model_name_or_path={base_dir!r} is not a local "
            "folder; merge the adapter into its base model first, or point it at the base checkpoint"
        )
    base = AutoModelForImageTextToText.from_pretrained(base_dir, local_files_only=True)
    model = PeftModel.from_pretrained(base, path).merge_and_unload()
    has_processor = any((path / f).exists() for f in ("preprocessor_config.json", "processor_config.json"))
    return model, load_processor(path if has_processor else base_dir)


def _training_scenes(recipe) -> list[Path]:
    """Scene folders (or folders of scenes) a recipe trains on."""
    g = recipe.data.geometry
    dirs = [Path(p) for p in g.scenes]
    if g.synthetic is not None:
        out = Path(recipe.training.output_dir)
        dirs.append(Path(g.synthetic.dir) if g.synthetic.dir else out / "data" / "scenes")
    return dirs


def held_out(scene_args, training_dirs) -> bool | None:
    """False when a ``--scenes`` path and a training scene folder contain one another (the probe
    would see training scenes); True when they are disjoint; None when the training data is unknown."""
    if training_dirs is None:
        return None
    probe = [Path(p).resolve() for p in scene_args]
    train = [Path(p).resolve() for p in training_dirs]
    return not any(a == b or a in b.parents or b in a.parents for a in probe for b in train)


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and ((path / "adapter_config.json").exists() or (path / "config.json").exists())


def _load_from_recipe(spec: str) -> ProbeModel:
    from gasp_plugin.recipe import load_recipe

    recipe = load_recipe(spec)
    name = Path(spec).stem
    out = Path(recipe.training.output_dir)
    if _is_checkpoint(out):
        pm = load_probe_model(out)
        heads = out / HEADS_FILE
        return ProbeModel(pm.model, pm.processor, name, heads if heads.is_file() else None,
                          f"trained model of {spec} in {out}", _training_scenes(recipe))
    m = recipe.model
    if m.tiny_type:
        from gasp_plugin.models.tiny import build_tiny_model

        model, processor = build_tiny_model(m.tiny_type, **m.tiny.sizes())
    else:
        pm = load_probe_model(m.path)
        model, processor = pm.model, pm.processor
    return ProbeModel(model, processor, name, source=f"starting model of {spec} ({out} holds no saved model)")


def load_probe_model(spec: str | Path) -> ProbeModel:
    """Resolve a ``--model`` value (see the module docstring); the model is in eval mode."""
    spec_s = str(spec)
    path = Path(spec_s)
    if spec_s.startswith(TINY_PREFIX):
        from gasp_plugin.models.tiny import build_tiny_model

        model, processor = build_tiny_model(spec_s[len(TINY_PREFIX):])
        pm = ProbeModel(model, processor, spec_s, source="tiny random model")
    elif path.is_dir() and (path / "adapter_config.json").exists():
        pm = ProbeModel(*_load_peft(path), path.name, source=f"PEFT adapter {path} merged into its base")
    elif path.is_dir() and (path / "config.json").exists():
        pm = ProbeModel(*_load_checkpoint(path), path.name, source=f"checkpoint {path}")
    elif path.suffix in (".yaml", ".yml") or (not path.exists() and "/" not in spec_s):
        pm = _load_from_recipe(spec_s)
    else:
        raise FileNotFoundError(
            f"--model {spec_s!r}: expected a checkpoint folder (with config.json), a PEFT adapter "
            "folder (with adapter_config.json), a recipe YAML, or tiny:<model_type>"
        )
    if path.is_dir() and pm.heads_path is None and (path / HEADS_FILE).is_file():
        pm.heads_path = path / HEADS_FILE
        if (path / RECIPE_FILE).is_file():
            from gasp_plugin.recipe import load_recipe

            recipe = load_recipe(path / RECIPE_FILE)
            pm.training_scenes = _training_scenes(recipe)
    pm.model.eval()
    return pm


def load_probe_heads(model, path: str | Path):
    """GASP heads for the probe, on the model's device, from a file written by
    :func:`gasp_plugin.core.attach.save_heads` or a trainer (self-describing)."""
    from gasp_plugin.core.attach import load_heads

    path = Path(path)
    heads = load_heads(path)
    hidden = int(model.config.get_text_config().hidden_size)
    if heads.d_model != hidden:
        raise ValueError(f"{path}: heads expect hidden size {heads.d_model}, the model has {hidden}")
    param = next(model.parameters())
    return heads.to(param.device).eval()


def open_scenes(paths) -> list:
    """Scenes for ``--scenes`` (see :func:`gasp_plugin.data.scene.open_scenes`)."""
    from gasp_plugin.data.scene import open_scenes as _open

    return _open(paths, what="--scenes")
