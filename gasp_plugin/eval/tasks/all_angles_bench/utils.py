"""All-Angles Bench for lmms-eval: prompts, images and scores of the released data.json records.

A record (as released): ``index``, ``folder``, ``category``, ``pair_idx``, ``sourced_dataset``,
``image_path`` (the views, in order, relative to the data folder), ``question``, the option texts
``A``, ``B``, ``C``, and ``answer`` (a letter).

Prompt (the benchmark's own evaluation, VLMEvalKit's multiple-choice prompt, with lmms-eval's usual
instruction after it): the views in order, then ``Question: <question>``, ``Options:``, one line
per option ``A. <text>``, and ``post_prompt``. The question text is kept as released.

lmms-eval loads this file by its path (not as part of gasp_plugin), so the scoring rules are read
from ``gasp_plugin/eval/scoring.py`` by path too: this task runs in any Python with lmms-eval,
with or without gasp-plugin installed there.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

_SCORING_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "scoring.py")
OPTIONS = ("A", "B", "C")


@lru_cache(maxsize=1)
def _scoring():
    spec = importlib.util.spec_from_file_location("gasp_eval_scoring", os.path.normpath(_SCORING_FILE))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kwargs(lmms_eval_specific_kwargs) -> dict:
    kwargs = dict(lmms_eval_specific_kwargs or {})
    kwargs.update({k: v for k, v in (kwargs.get("default") or {}).items() if k not in kwargs})
    return kwargs


def _options(doc) -> list[str]:
    return [k for k in OPTIONS if doc.get(k) not in (None, "")]


def all_angles_doc_to_visual(doc, lmms_eval_specific_kwargs=None):
    """The views of a record, as RGB PIL images, in the released order."""
    from PIL import Image

    root = _kwargs(lmms_eval_specific_kwargs).get("data_root")
    if not root:
        raise ValueError("all_angles_bench: lmms_eval_specific_kwargs.default.data_root is not set: write the "
                         "task file with `gasp eval --data all_angles_bench=DIR` (it points data_root at DIR)")
    images = []
    for rel in doc["image_path"]:
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"all_angles_bench record {doc.get('index')}: image {path} is missing")
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def all_angles_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = _kwargs(lmms_eval_specific_kwargs)
    lines = [f"Question: {doc['question']}", "Options:"]
    lines += [f"{k}. {doc[k]}" for k in _options(doc)]
    post = kwargs.get("post_prompt") or ""
    if post:
        lines.append(post)
    return (kwargs.get("pre_prompt") or "") + "\n".join(lines)


def all_angles_doc_to_messages(doc, lmms_eval_specific_kwargs=None):
    content = [{"type": "image", "url": image} for image in all_angles_doc_to_visual(doc, lmms_eval_specific_kwargs)]
    content.append({"type": "text", "text": all_angles_doc_to_text(doc, lmms_eval_specific_kwargs)})
    return [{"role": "user", "content": content}]


METRICS = ("overall", "category_mean", "attribute_identification", "camera_pose_estimation", "counting",
           "manipulation", "relative_direction", "relative_distance")


def all_angles_process_results(doc, results):
    scoring = _scoring()
    letters = "".join(_options(doc)) or "ABC"
    response = results[0] if results else ""
    record = {
        "index": doc.get("index"),
        "category": doc["category"],
        "answer": str(doc["answer"]).strip(),
        "parsed": scoring.extract_choice(response, letters),
        "score": scoring.exact_match(response, str(doc["answer"]), letters),
    }
    return {metric: record for metric in METRICS}


def _accuracy(results) -> dict:
    return _scoring().category_accuracy((r["category"], r["score"]) for r in results)


def aggregate_overall(results):
    return _accuracy(results)["overall"]


def aggregate_category_mean(results):
    return _accuracy(results)["category_mean"]


def _category(name):
    def aggregate(results):
        return _accuracy(results)["categories"].get(name, float("nan"))

    aggregate.__name__ = f"aggregate_{name}"
    return aggregate


aggregate_attribute_identification = _category("attribute_identification")
aggregate_camera_pose_estimation = _category("camera_pose_estimation")
aggregate_counting = _category("counting")
aggregate_manipulation = _category("manipulation")
aggregate_relative_direction = _category("relative_direction")
aggregate_relative_distance = _category("relative_distance")
