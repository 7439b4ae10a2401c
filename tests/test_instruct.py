"""Instruction data: record parsing, chat-template rendering, assistant-only labels, media loading."""

import json

import numpy as np
import pytest
import torch

from gasp_plugin.data.instruct import (
    BadSample,
    InstructionCollator,
    InstructionDataset,
    load_records,
    make_synthetic_instructions,
    mm_token_type_ids,
    parse_record,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForImageTextToText

    from gasp_plugin.models.processing import load_processor
    from gasp_plugin.models.tiny import save_tiny_model

    out = {}
    for model_type in ("qwen2_vl", "llava"):
        path = save_tiny_model(model_type, tmp_path_factory.mktemp(model_type), image_size=112)
        out[model_type] = (AutoModelForImageTextToText.from_pretrained(path), load_processor(path))
    return out


def _dataset(model, processor, records, root, **kw):
    cfg = model.config
    return InstructionDataset(records, root, processor, image_token_id=cfg.image_token_id,
                              video_token_id=getattr(cfg, "video_token_id", None), **kw)


def test_parse_both_forms_and_placeholders():
    a = parse_record({"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                          {"from": "gpt", "value": "Yo"}]})
    b = parse_record({"images": ["x.png"], "messages": [{"role": "user", "content": "Hi"},
                                                        {"role": "assistant", "content": "Yo"}]})
    assert a.images == b.images == ["x.png"]
    assert a.messages == b.messages == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Yo"}]},
    ]
    with pytest.raises(BadSample, match=r"2 <image> .* 1 images"):
        parse_record({"image": "x.png", "conversations": [{"from": "human", "value": "<image><image>"},
                                                          {"from": "gpt", "value": "a"}]}, "f.json[3]")
    with pytest.raises(BadSample, match="no assistant turn"):
        parse_record({"conversations": [{"from": "human", "value": "a"}]})
    with pytest.raises(BadSample, match="role 'robot'"):
        parse_record({"conversations": [{"from": "robot", "value": "a"}]})


@pytest.mark.parametrize("model_type, answer_suffix", [("qwen2_vl", "<|im_end|>\n"), ("llava", " ")])
def test_labels_cover_exactly_the_assistant_turns(tiny, tmp_path, model_type, answer_suffix):
    model, processor = tiny[model_type]
    from PIL import Image

    Image.fromarray(np.full((112, 112, 3), 90, np.uint8)).save(tmp_path / "a.png")
    rec = {"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Grey."},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes, grey."}]}
    ds = _dataset(model, processor, [("r", rec)], tmp_path)
    sample = ds.encode(0)
    tok = getattr(processor, "tokenizer", processor)
    labels = sample["labels"]
    kept = sample["input_ids"][labels != -100]
    text = tok.decode(kept)
    # the learned text is the two answers (with the template's end of turn) and nothing else
    assert text.replace(" ", "") == f"Grey.{answer_suffix}Yes, grey.{answer_suffix}".replace(" ", "")
    assert (labels[labels != -100] == sample["input_ids"][labels != -100]).all()
    # the model itself checks that image tokens match the image features
    batch = InstructionCollator(tok.pad_token_id)([sample])
    if model_type == "llava":
        batch.pop("mm_token_type_ids")
    else:
        n_img = int((batch["mm_token_type_ids"] == 1).sum())
        merge = processor.image_processor.merge_size
        assert n_img == int(batch["image_grid_thw"].prod(-1).sum()) // merge**2
    loss = model(**batch).loss
    assert torch.isfinite(loss)


def test_missing_image_is_a_bad_sample_naming_the_file(tiny, tmp_path):
    model, processor = tiny["qwen2_vl"]
    rec = {"image": "nope.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"}]}
    ds = _dataset(model, processor, [("data.json[0]", rec)], tmp_path)
    with pytest.raises(BadSample, match="nope.png"):
        ds.encode(0)


def test_too_long_is_a_bad_sample(tiny, tmp_path):
    model, processor = tiny["qwen2_vl"]
    path = make_synthetic_instructions(tmp_path, 1, seed=0)
    ds = _dataset(model, processor, load_records([path]), tmp_path, max_length=16)
    with pytest.raises(BadSample, match="max_length=16"):
        ds.encode(0)


def test_video_becomes_frames_without_a_video_processor(tiny, tmp_path):
    av = pytest.importorskip("av")
    pytest.importorskip("decord")
    model, processor = tiny["qwen2_vl"]
    with av.open(str(tmp_path / "v.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 112
        stream.pix_fmt = "yuv420p"
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(np.full((112, 112, 3), 20 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    rec = {"video": "v.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat happens?"},
                                               {"from": "gpt", "value": "It gets brighter."}]}
    ds = _dataset(model, processor, [("r", rec)], tmp_path, video_frames=3)
    sample = ds.encode(0)
    assert sample["image_grid_thw"].shape[0] == 3  # three frames, each an image
    batch = InstructionCollator(processor.tokenizer.pad_token_id)([sample])
    assert torch.isfinite(model(**batch).loss)


def test_synthetic_instructions_are_deterministic_and_load(tmp_path):
    a = make_synthetic_instructions(tmp_path / "a", 6, seed=3)
    b = make_synthetic_instructions(tmp_path / "b", 6, seed=3)
    assert a.read_text() == b.read_text()
    assert (a.parent / "images/00004.png").read_bytes() == (b.parent / "images/00004.png").read_bytes()
    records = load_records([a])
    assert len(records) == 6 and {"conversations", "messages"} <= {k for _, r in records for k in r}
    for where, rec in records:
        assert parse_record(rec, where).images
    (tmp_path / "lines.jsonl").write_text("\n".join(json.dumps(r) for _, r in records))
    assert len(load_records([tmp_path / "lines.jsonl"])) == 6
    with pytest.raises(FileNotFoundError, match="data.instruct.json"):
        load_records([tmp_path / "missing.json"])


def test_collator_pads_with_ignore_index():
    s1 = {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7]),
          "attention_mask": torch.ones(3, dtype=torch.long), "mm_token_type_ids": torch.zeros(3, dtype=torch.long)}
    s2 = {k: v[:1] for k, v in s1.items()}
    b = InstructionCollator(pad_token_id=0)([s1, s2])
    assert b["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_mm_token_type_ids_mark_image_and_video_tokens():
    from gasp_plugin.constants import IMAGE_TOKEN_TYPE, VIDEO_TOKEN_TYPE

    ids = torch.tensor([[5, 7, 7, 9, 8, 8, 5]])
    assert mm_token_type_ids(ids, 7, 8).tolist() == [[0, 1, 1, 0, 2, 2, 0]]
    assert mm_token_type_ids(ids, 7).tolist() == [[0, 1, 1, 0, 0, 0, 0]]
    assert (IMAGE_TOKEN_TYPE, VIDEO_TOKEN_TYPE) == (1, 2)  # the values Qwen-VL's rope index reads
    assert mm_token_type_ids(ids, 7, 8).dtype == ids.dtype
