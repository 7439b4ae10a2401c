"""The README's training-loop example runs as written, on a tiny model and a real synthetic clip."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _loop_example() -> str:
    text = README.read_text()
    section = text[text.index("### In your own training loop"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_loop_example_runs(tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from gasp_plugin.data import load_clip
    from gasp_plugin.data.synthetic import SyntheticSceneConfig, make_synthetic_scene
    from gasp_plugin.geometry.tracks import tracks_for_clip
    from gasp_plugin.models.tiny import build_tiny_model

    model, processor = build_tiny_model("qwen2_vl", image_size=112)
    clip = load_clip(make_synthetic_scene(SyntheticSceneConfig(height=112, width=112, num_frames=4), seed=1), [0, 1, 2])
    namespace = {
        "model": model, "processor": processor, "clip": clip, "tracks": tracks_for_clip(clip, grid=4, keep=1.0),
        "get_peft_model": get_peft_model,
        "lora_config": LoraConfig(r=4, target_modules=r".*language_model\.layers\.\d+\.self_attn\.(q|k)_proj"),
    }
    monkeypatch.chdir(tmp_path)
    exec(compile(_loop_example(), str(README), "exec"), namespace)
    assert torch.isfinite(namespace["gasp"].total) and namespace["gasp"].num_pairs > 0
    assert (tmp_path / "gasp_heads.safetensors").is_file()
    assert not hasattr(model, "gasp_heads")  # detached
