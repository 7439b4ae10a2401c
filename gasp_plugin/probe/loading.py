"""What ``gasp probe --model`` and ``--scenes`` accept, turned into a model, processor and scenes.

``--model`` forms (see :func:`load_probe_model`):

- a checkpoint folder loadable by plain transformers (``config.json`` + weights);
- a PEFT adapter folder (``adapter_config.json``): its base model (a local folder named by
  ``base_model_name_or_path``) is loaded and the adapter merged into it;
- ``tiny:<model_type>``: a tiny random-weight model built from a config (no files needed);
- a recipe YAML (or a shipped recipe's name): its ``model`` section, i.e. the model the recipe
  starts training from.

Nothing is fetched from the Hugging Face hub.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["load_probe_model", "open_scenes"]

_TINY = "tiny:"


def _load_checkpoint(path: Path):
    from transformers import AutoModelForImageTextToText

    from gasp_plugin.models.processing import load_processor

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


def _load_from_recipe(spec: str):
    from gasp_plugin.train.recipe import load_recipe

    recipe = load_recipe(spec, validate_gasp=False)  # the probe needs only the model section
    m = recipe.model
    if m.tiny_type:
        from gasp_plugin.models.tiny import build_tiny_model

        t = m.tiny
        return build_tiny_model(m.tiny_type, hidden_size=t.hidden_size, num_layers=t.num_layers,
                                num_heads=t.num_heads, vision_depth=t.vision_depth,
                                image_size=t.image_size, seed=t.seed)
    return load_probe_model(m.path)[:2]


def load_probe_model(spec: str | Path):
    """``(model, processor, name)`` for a ``--model`` value; the model is in eval mode."""
    spec_s = str(spec)
    path = Path(spec_s)
    if spec_s.startswith(_TINY):
        from gasp_plugin.models.tiny import build_tiny_model

        model, processor = build_tiny_model(spec_s[len(_TINY):])
    elif path.is_dir() and (path / "adapter_config.json").exists():
        model, processor = _load_peft(path)
    elif path.is_dir() and (path / "config.json").exists():
        model, processor = _load_checkpoint(path)
    elif path.suffix in (".yaml", ".yml") or (not path.exists() and "/" not in spec_s):
        model, processor = _load_from_recipe(spec_s)
    else:
        raise FileNotFoundError(
            f"--model {spec_s!r}: expected a checkpoint folder (with config.json), a PEFT adapter "
            "folder (with adapter_config.json), a recipe YAML, or tiny:<model_type>"
        )
    return model.eval(), processor, path.name if path.name else spec_s


def _try_open(path: Path):
    from gasp_plugin.data.scene import open_scene

    try:
        return open_scene(path), None
    except (ValueError, FileNotFoundError) as err:
        return None, err


def open_scenes(paths) -> list:
    """Scenes for ``--scenes``: a path a scene reader recognises is one scene; otherwise each of
    its immediate sub-folders that a reader recognises is (sorted by name)."""
    scenes = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"--scenes: {p} does not exist")
        scene, err = _try_open(p)
        if scene is not None:
            scenes.append(scene)
            continue
        subs = sorted(q for q in p.iterdir() if q.is_dir()) if p.is_dir() else []
        inner = [s for s in (_try_open(q)[0] for q in subs) if s is not None]
        if not inner:
            raise ValueError(f"--scenes: {p} is neither a scene nor a folder of scenes ({err})")
        scenes.extend(inner)
    return scenes
