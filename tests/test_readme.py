"""The README's training-loop example runs as written, on a tiny model and a real synthetic clip, and
trains both the heads and the LoRA weights from the GASP loss alone."""

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
    code = _loop_example()
    train, detach = code[: code.index("detach_gasp(handle)")], code[code.index("detach_gasp(handle)"):]
    exec(compile(train, str(README), "exec"), namespace)
    assert torch.isfinite(namespace["gasp"].total) and namespace["gasp"].num_pairs > 0
    assert "labels" not in namespace["batch"]  # the gradients below come from the GASP loss alone
    grads = {n: p.grad for n, p in namespace["model"].named_parameters() if p.requires_grad}
    heads = [g for n, g in grads.items() if "gasp_heads" in n]
    lora = [g for n, g in grads.items() if "lora_" in n]
    assert heads and all(g is not None and g.abs().sum() > 0 for g in heads)
    # every LoRA B is zero at init, so A gets no gradient at step 0; the B matrices must get one
    lora_b = [g for n, g in grads.items() if "lora_B" in n]
    assert lora and lora_b and all(g is not None and g.abs().sum() > 0 for g in lora_b)
    assert (tmp_path / "gasp_heads.safetensors").is_file()
    exec(compile(detach, str(README), "exec"), namespace)
    assert not hasattr(model, "gasp_heads")  # detached
