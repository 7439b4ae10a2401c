"""Inside the ms-swift venv: a tiny Qwen2-VL on disk and a small image-conversation dataset in
ms-swift's own JSONL format (``messages`` + ``images``).

    python swift_setup.py WORK
writes WORK/model and WORK/data/train.jsonl (+ WORK/data/images) and prints nothing on success.
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(work: Path) -> None:
    from gasp_plugin.models.tiny import save_tiny_model

    save_tiny_model("qwen2_vl", work / "model", image_size=112, num_layers=2, hidden_size=64)
    data = work / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with (data / "train.jsonl").open("w") as f:
        for i in range(8):
            image = data / "images" / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(image)
            f.write(json.dumps({"messages": [{"role": "user", "content": "<image>How many chairs are there?"},
                                             {"role": "assistant", "content": f"There are {i % 4} chairs."}],
                                "images": [str(image)]}) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
