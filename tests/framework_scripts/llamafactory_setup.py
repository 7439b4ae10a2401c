"""Inside the LLaMA-Factory venv: a tiny Qwen2-VL on disk, a small image-conversation dataset in
LLaMA-Factory's sharegpt layout, and the patched llamafactory package beside the installed one.

    python llamafactory_setup.py WORK PATCH
writes WORK/model, WORK/data (dataset_info.json + data.json + images), WORK/src/llamafactory
(the installed package with the patch applied) and prints nothing on success.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(work: Path, patch: Path) -> None:
    import llamafactory

    from gasp_plugin.models.tiny import save_tiny_model

    save_tiny_model("qwen2_vl", work / "model", image_size=112, num_layers=2, hidden_size=64)
    data = work / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(8):
        name = f"images/{i}.png"
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(data / name)
        records.append({"messages": [{"role": "user", "content": "<image>How many chairs are there?"},
                                     {"role": "assistant", "content": f"There are {i % 4} chairs."}],
                        "images": [name]})
    (data / "data.json").write_text(json.dumps(records))
    (data / "dataset_info.json").write_text(json.dumps({"chairs": {
        "file_name": "data.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }}))
    src = work / "src"
    shutil.copytree(Path(llamafactory.__file__).parent, src / "llamafactory",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # the patch targets the repository (src/llamafactory/...): -p2 maps it onto the package folder
    subprocess.run(["git", "apply", "-p2", "--include=llamafactory/*", str(patch)], cwd=src, check=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
