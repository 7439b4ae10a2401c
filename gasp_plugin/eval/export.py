"""``gasp export RUN --out DIR``: a trained run to a plain checkpoint folder that ``from_pretrained``
(and so lmms-eval, vLLM, any harness) loads without gasp-plugin.

RUN is the output folder of ``gasp train`` or of an integration (LLaMA-Factory, TRL, ms-swift,
qwen-vl-finetune), or one of its ``checkpoint-N`` folders:

- a LoRA adapter (``adapter_config.json``): its base model (the local folder named by
  ``base_model_name_or_path``, or ``--base``) is loaded in its saved dtype, the adapter merged into
  it (``modules_to_save`` copies, e.g. a trained vision tower, included);
- a full checkpoint (``config.json``): loaded and saved again.

Either way the GASP heads (``gasp_heads.safetensors``, and any ``gasp_heads.*`` weight) are left
out: after training the model is a plain VLM. The processor, tokenizer and chat template are copied
byte for byte from RUN when it holds them (trainers save them there), else from the base model; a
folder with no chat template is refused (evaluation harnesses build prompts with it). ``README.md``
says in one line how the model was trained. The folder is written beside DIR and moved into place
when complete; an existing DIR is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path

from gasp_plugin.constants import HEADS_ATTR, HEADS_FILE, RECIPE_FILE

__all__ = ["export_run", "add_arguments", "run", "PROCESSOR_FILES"]

logger = logging.getLogger(__name__)

#: files of a processor, tokenizer and chat template, copied as they are
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a gasp train (or integration) output folder, or a checkpoint-N in it")
    parser.add_argument("--out", required=True, help="the checkpoint folder to write")
    parser.add_argument("--base", default=None, help="base model folder of a LoRA run (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")


def run(args: argparse.Namespace) -> int:
    out = export_run(args.run_dir, args.out, base=args.base, overwrite=args.overwrite)
    print(f"exported {args.run_dir} to {out}: {(out / 'README.md').read_text().splitlines()[-1]}")
    return 0


def _check_out(run_dir: Path, out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty: pass --overwrite to replace it, or choose another folder")
    r, o = run_dir.resolve(), out.resolve()
    if r == o or o in r.parents or r in o.parents:
        raise ValueError(f"--out {out} and the run {run_dir} contain one another: export to a folder outside the run")


def _base_of(run_dir: Path, base: str | None) -> Path:
    named = json.loads((run_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    path = Path(base or named or "")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{run_dir / 'adapter_config.json'}: base model {str(base or named)!r} is not a local checkpoint folder "
            "(no config.json): download it and pass --base DIR")
    return path


def _load_merged(run_dir: Path, base: Path | None):
    import torch
    from transformers import AutoModelForImageTextToText

    if base is None:
        return AutoModelForImageTextToText.from_pretrained(run_dir, dtype="auto", local_files_only=True)
    from peft import PeftModel

    model = AutoModelForImageTextToText.from_pretrained(base, dtype="auto", local_files_only=True)
    with torch.no_grad():
        return PeftModel.from_pretrained(model, run_dir).merge_and_unload()


def _processor_source(run_dir: Path, base: Path | None) -> Path:
    if any((run_dir / f).is_file() for f in _TOKENIZER_FILES) or base is None:
        return run_dir
    return base


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    for name in ("tokenizer_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file() and json.loads(path.read_text()).get("chat_template"):
            return True
    return False


def _training_line(run_dir: Path, base: Path | None, adapter: dict | None) -> str:
    """One sentence: what was trained, from what, how."""
    import gasp_plugin

    parts = []
    recipe = run_dir / RECIPE_FILE
    if not recipe.is_file() and (run_dir.parent / RECIPE_FILE).is_file():
        recipe = run_dir.parent / RECIPE_FILE
    if recipe.is_file():
        import yaml

        r = yaml.safe_load(recipe.read_text()) or {}
        g, t = r.get("gasp") or {}, r.get("training") or {}
        parts.append(f"gasp train ({RECIPE_FILE} beside the run: layers {g.get('layers', '?')}, "
                     f"corr {g.get('corr_weight', '?')}, depth {g.get('depth_weight', '?')}, "
                     f"{t.get('max_steps', '?')} steps, lr {t.get('learning_rate', '?')})")
    else:
        parts.append("a training framework with gasp-plugin's GASP loss")
    states = sorted(run_dir.glob("checkpoint-*/trainer_state.json")) + [run_dir / "trainer_state.json"]
    states = [p for p in states if p.is_file()]
    if states:
        step = max(json.loads(p.read_text()).get("global_step", 0) for p in states)
        parts.append(f"{step} optimizer steps")
    how = (f"LoRA r={adapter.get('r')} alpha={adapter.get('lora_alpha')} merged into {base}" if adapter
           else "full fine-tuning")
    return (f"Trained with gasp-plugin {gasp_plugin.__version__}: GASP correspondence heads on the visual tokens of every LLM "
            f"layer, trained with the language model by {'; '.join(parts)}; {how}. The GASP heads were discarded: "
            "this is a plain transformers checkpoint.")


def export_run(run_dir, out, *, base: str | None = None, overwrite: bool = False) -> Path:
    """Write the merged, head-free checkpoint of ``run_dir`` to ``out`` (see the module docstring)."""
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir}: no such run folder")
    _check_out(run_dir, out, overwrite)
    adapter = None
    if (run_dir / "adapter_config.json").is_file():
        adapter = json.loads((run_dir / "adapter_config.json").read_text())
        base_dir = _base_of(run_dir, base)
    elif (run_dir / "config.json").is_file():
        base_dir = None
    else:
        newest = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
        hint = f" (its newest checkpoint: {newest[-1]})" if newest else ""
        raise FileNotFoundError(f"{run_dir}: neither adapter_config.json nor config.json: not a trained run{hint}")
    source = _processor_source(run_dir, base_dir)
    if not _has_chat_template(source):
        raise FileNotFoundError(f"{source}: no chat template (chat_template.jinja, or chat_template in "
                                "tokenizer_config.json): copy the base model's processor files into the run first")
    model = _load_merged(run_dir, base_dir)
    heads = [n for n, _ in model.named_parameters() if HEADS_ATTR in n]
    if heads:
        raise RuntimeError(f"the merged model still holds GASP head weights ({heads[:2]} ...)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        for name in PROCESSOR_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        base_name = str(base_dir) if base_dir is not None else str(getattr(model.config, "_name_or_path", run_dir))
        line = _training_line(run_dir, base_dir, adapter)
        (tmp / "README.md").write_text(f"---\nbase_model: {json.dumps(base_name)}\nlibrary_name: transformers\n"
                                       f"tags:\n- gasp\n- gasp-plugin\n---\n\n# {out.name}\n\n{line}\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    left = [p.name for p in (run_dir / HEADS_FILE,) if p.is_file()]
    logger.info("exported %s to %s%s", run_dir, out, f" (left out: {', '.join(left)})" if left else "")
    return out
