"""Tiny local copies of VSI-Bench, BLINK (multi-view reasoning) and All-Angles Bench, each in the
layout and record format its publisher releases, with synthetic images and videos.

``python lmms_eval_data.py ROOT`` writes ROOT/VSI-Bench, ROOT/BLINK, ROOT/All-Angles-Bench and
ROOT/expected.json (record counts and answers). Run in the lmms-eval venv (needs datasets, av, PIL).

- VSI-Bench (the nyu-visionx/VSI-Bench dataset repository): README.md whose YAML declares the
  ``full`` config over ``test*.parquet``, ``test-00000-of-00001.parquet`` with the released fields
  (id, dataset, scene_name, question_type, question, options, ground_truth, pruned), and the videos as
  the released zips unpack them (``<dataset>/<scene_name>.mp4``). One question of each of the ten
  question types (lmms-eval's vsibench aggregation needs all three rel-direction levels).
- BLINK (BLINK-Benchmark/BLINK): README.md declaring the ``Multi-view_Reasoning`` config,
  ``Multi-view_Reasoning/{val,test}-00000-of-00001.parquet`` with idx, question, sub_task,
  image_1..image_4 (datasets Image, absent ones null), choices, answer ``(A)``, prompt, explanation.
- All-Angles Bench (ch-chenyu/All-Angles-Bench): data.json, a list of records with index, folder,
  category, pair_idx, sourced_dataset, image_path (relative), question, A, B, C, answer; the views
  under the same folder.
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = ("attribute_identification", "camera_pose_estimation", "counting", "manipulation",
              "relative_direction", "relative_distance")
VSI = [  # question_type, options, ground truth
    ("object_counting", None, "4"), ("object_abs_distance", None, "2.5"), ("object_size_estimation", None, "80"),
    ("room_size_estimation", None, "20.0"),
    ("object_rel_direction_easy", ["A. left", "B. right"], "A"),
    ("object_rel_direction_medium", ["A. left", "B. right", "C. back"], "B"),
    ("object_rel_direction_hard", ["A. front-left", "B. front-right", "C. back-left", "D. back-right"], "C"),
    ("object_rel_distance", ["A. chair", "B. table", "C. lamp", "D. sofa"], "D"),
    ("route_planning", ["A. Turn Left, Go forward", "B. Turn Right, Go forward"], "A"),
    ("obj_appearance_order", ["A. chair, table, lamp", "B. lamp, chair, table"], "B"),
]
README_VSI = """---
license: apache-2.0
configs:
  - config_name: full
    data_files:
      - split: test
        path: "test*.parquet"
    default: true
---
Tiny synthetic stand-in for VSI-Bench, in its released layout.
"""
README_BLINK = """---
configs:
- config_name: Multi-view_Reasoning
  data_files:
  - split: val
    path: Multi-view_Reasoning/val-*
  - split: test
    path: Multi-view_Reasoning/test-*
---
Tiny synthetic stand-in for BLINK's Multi-view_Reasoning subset, in its released layout.
"""
BLINK_QUESTION = ("The images are frames from a video. The video is shooting a static scene. The camera is either "
                  "moving clockwise (left) or counter-clockwise (right) around the object. The first image is from "
                  "the beginning of the video and the second image is from the end. Is the camera moving left or "
                  "right when shooting the video?")


def _image(seed: int, size=(112, 112)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _video(path: Path, seed: int, frames: int = 8, size: int = 112) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def vsibench(root: Path) -> list:
    import datasets

    root.mkdir(parents=True)
    (root / "README.md").write_text(README_VSI)
    scenes = [("arkitscenes", "41069025"), ("scannet", "scene0011_00"), ("scannetpp", "0a5c013435")]
    rows = []
    for i, (qtype, options, gt) in enumerate(VSI):
        dataset, scene = scenes[i % len(scenes)]
        rows.append({"id": i, "dataset": dataset, "scene_name": scene, "question_type": qtype,
                     "question": f"Synthetic {qtype.replace('_', ' ')} question {i}?", "options": options,
                     "ground_truth": gt, "pruned": bool(i % 2)})
    for k, (dataset, scene) in enumerate(scenes):
        _video(root / dataset / f"{scene}.mp4", seed=k)
    features = datasets.Features({"id": datasets.Value("int64"), "dataset": datasets.Value("string"),
                                  "scene_name": datasets.Value("string"), "question_type": datasets.Value("string"),
                                  "question": datasets.Value("string"),
                                  "options": datasets.Sequence(datasets.Value("string")),
                                  "ground_truth": datasets.Value("string"), "pruned": datasets.Value("bool")})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(root / "test-00000-of-00001.parquet"))
    return rows


def blink(root: Path, count: int = 4) -> list:
    import datasets

    folder = root / "Multi-view_Reasoning"
    folder.mkdir(parents=True)
    (root / "README.md").write_text(README_BLINK)
    features = datasets.Features({
        "idx": datasets.Value("string"), "question": datasets.Value("string"), "sub_task": datasets.Value("string"),
        **{f"image_{k}": datasets.Image() for k in range(1, 5)},
        "choices": datasets.Sequence(datasets.Value("string")), "answer": datasets.Value("string"),
        "prompt": datasets.Value("string"), "explanation": datasets.Value("string")})
    rows = []
    for i in range(count):
        answer = "(A)" if i % 2 == 0 else "(B)"
        rows.append({"idx": f"val_Multi-view_Reasoning_{i + 1}", "question": BLINK_QUESTION, "sub_task": "Multi-view_Reasoning",
                     "image_1": _image(100 + i), "image_2": _image(200 + i), "image_3": None, "image_4": None,
                     "choices": ["left", "right"], "answer": answer,
                     "prompt": BLINK_QUESTION + "\nSelect from the following choices.\n(A) left\n(B) right",
                     "explanation": ""})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(folder / "val-00000-of-00001.parquet"))
    test = [dict(r, idx=r["idx"].replace("val_", "test_"), answer="") for r in rows]
    datasets.Dataset.from_list(test, features=features).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    return [{k: v for k, v in r.items() if not k.startswith("image_")} for r in rows]


def all_angles(root: Path, per_category: int = 2) -> list:
    records = []
    for c, category in enumerate(CATEGORIES):
        for j in range(per_category):
            index = len(records)
            folder = f"egohumans/scene_{c:02d}"
            views = [f"{folder}/cam{v + 1:02d}/{index:05d}.jpg" for v in range(2 + j)]
            for v, rel in enumerate(views):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                _image(1000 * index + v, size=(128, 96)).save(root / rel)
            records.append({"index": index, "folder": folder, "category": category,
                            "pair_idx": str(index + 1 if j == 0 else index - 1), "sourced_dataset": "EgoHumans",
                            "image_path": views, "question": f"Synthetic {category.replace('_', ' ')} question {index}?",
                            "A": "first option", "B": "second option", "C": "third option",
                            "answer": "ABC"[index % 3]})
    (root / "data.json").write_text(json.dumps(records, indent=1))
    return records


def main(root: str) -> None:
    root = Path(root)
    expected = {"vsibench": vsibench(root / "VSI-Bench"), "blink": blink(root / "BLINK"),
                "all_angles_bench": all_angles(root / "All-Angles-Bench")}
    (root / "expected.json").write_text(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
