"""Instruction data: LLaVA/Qwen conversation JSON rendered with the model's chat template.

Accepted records (a JSON list, or JSONL with one record per line)::

    {"image": "a.jpg" | ["a.jpg", "b.jpg"], "video": "v.mp4", "images": [...], "videos": [...],
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"},
                       {"from": "gpt", "value": "A chair."}]}
    {"images": [...], "messages": [{"role": "user", "content": "<image>\\nWhat is this?"},
                                   {"role": "assistant", "content": "A chair."}]}

``<image>`` / ``<video>`` placeholders mark where media go; without any, all media go at the start
of the first user turn. ``content`` may also be a list of ``{"type": "text"|"image"|"video"}`` items.
Media paths are relative to ``media_root``. Videos are decoded with decord (imported lazily).

Encoding: the conversation is rendered with the processor's chat template, tokenized, media
placeholders expanded to the model's visual tokens (by the full processor where it can be built,
else by an expansion rule for the processor class, see :data:`EXPANSIONS`), and labels are
``-100`` everywhere except the assistant turns (found from the template itself: the text each
assistant message adds when rendered after its prefix). Token ids come from the model config.

Shape notation: ``l`` sequence length, ``m`` media items.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from gasp_plugin.constants import IGNORE_INDEX, IMAGE_TOKEN_TYPE, VIDEO_TOKEN_TYPE

__all__ = [
    "BadSample",
    "InstructionDataset",
    "InstructionCollator",
    "EXPANSIONS",
    "parse_record",
    "load_records",
    "encode_conversation",
    "mm_token_type_ids",
    "make_synthetic_instructions",
]

logger = logging.getLogger(__name__)
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class BadSample(ValueError):
    """One sample cannot be used (missing media, malformed record, too long); it is skipped."""


@dataclass
class Record:
    """A parsed conversation: media paths and chat messages with typed content items."""

    images: list[str]
    videos: list[str]
    messages: list[dict]


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _content_items(text: str) -> list[dict]:
    """Split ``"<image>\\nabc<video>"`` into typed content items."""
    items, rest = [], text
    while rest:
        cut = [(rest.find(tag), kind) for tag, kind in (("<image>", "image"), ("<video>", "video"))]
        cut = [(pos, kind) for pos, kind in cut if pos >= 0]
        if not cut:
            items.append({"type": "text", "text": rest})
            break
        pos, kind = min(cut)
        if rest[:pos].strip():
            items.append({"type": "text", "text": rest[:pos].rstrip("\n")})
        items.append({"type": kind})
        rest = rest[pos + len(f"<{kind}>"):].lstrip("\n")
    return items


def parse_record(record: dict, where: str = "record") -> Record:
    """Normalise one JSON record to :class:`Record`; raises :class:`BadSample` naming ``where``."""
    if not isinstance(record, dict):
        raise BadSample(f"{where}: expected a JSON object, got {type(record).__name__}")
    images = _as_list(record.get("image")) + _as_list(record.get("images"))
    videos = _as_list(record.get("video")) + _as_list(record.get("videos"))
    if "conversations" in record:
        turns = [(t.get("from"), t.get("value")) for t in record["conversations"]]
    elif "messages" in record:
        turns = [(t.get("role"), t.get("content")) for t in record["messages"]]
    else:
        raise BadSample(f"{where}: needs 'conversations' (from/value) or 'messages' (role/content)")
    messages = []
    for k, (role, value) in enumerate(turns):
        if role not in _ROLES:
            raise BadSample(f"{where}: turn {k} has role {role!r}; known: {', '.join(_ROLES)}")
        content = _content_items(value) if isinstance(value, str) else list(value or [])
        messages.append({"role": _ROLES[role], "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise BadSample(f"{where}: no assistant turn to learn from")
    n_img = sum(c.get("type") == "image" for m in messages for c in m["content"])
    n_vid = sum(c.get("type") == "video" for m in messages for c in m["content"])
    if n_img == 0 and n_vid == 0 and (images or videos):
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise BadSample(f"{where}: media given but no user turn to put them in")
        first_user["content"] = (
            [{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos] + first_user["content"]
        )
    elif (n_img, n_vid) != (len(images), len(videos)):
        raise BadSample(
            f"{where}: {n_img} <image> and {n_vid} <video> placeholders but {len(images)} images and "
            f"{len(videos)} videos"
        )
    return Record(images=[str(p) for p in images], videos=[str(p) for p in videos], messages=messages)


def load_records(paths: list[str | Path]) -> list[tuple[str, dict]]:
    """``(where, record)`` pairs from JSON list files or JSONL files, in file order."""
    out = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"instruction data file {path} does not exist (data.instruct.json)")
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        if isinstance(data, dict):
            data = [data]
        out.extend((f"{path}[{i}]", rec) for i, rec in enumerate(data))
    return out


def _load_image(path: Path) -> np.ndarray:
    from gasp_plugin.data.readers.common import read_rgb

    try:
        return read_rgb(path)
    except ValueError as err:
        raise BadSample(f"image {path} is missing or unreadable ({err})") from err


def _load_video(path: Path, num_frames: int) -> np.ndarray:
    """``uint8 [t, h, w, 3]``: ``num_frames`` frames sampled uniformly."""
    if not path.is_file():
        raise BadSample(f"video {path} is missing")
    try:
        from decord import VideoReader, cpu
    except ImportError as err:
        raise ImportError("video instruction data needs decord: pip install 'gasp-plugin[video]'") from err
    try:
        reader = VideoReader(str(path), ctx=cpu(0))
        idx = np.linspace(0, len(reader) - 1, num_frames).round().astype(int).tolist()
        return reader.get_batch(idx).asnumpy()
    except Exception as err:  # decord raises its own DECORDError types
        raise BadSample(f"video {path} is unreadable ({err})") from err


# ---- encoding --------------------------------------------------------------------------------


def _assistant_char_spans(render: Callable[..., str], messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans that the assistant messages add to it."""
    full = render(messages, add_generation_prompt=False)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = render(messages[:i], add_generation_prompt=True) if i else ""
        through = render(messages[: i + 1], add_generation_prompt=False)
        if not (full.startswith(through) and through.startswith(before)):
            raise BadSample("the chat template does not render conversations prefix by prefix")
        spans.append((len(before), len(through)))
    return full, spans


def _text_label_mask(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = [any(a <= start < b for a, b in spans) for start, _ in enc["offset_mapping"]]
    return ids, mask


def _qwen_expansion(parts, images: list[np.ndarray]) -> tuple[dict, list[int]]:
    """Qwen-VL: each image becomes ``t * h * w / merge**2`` tokens (grid from its image processor)."""
    ip = parts.image_processor
    out = ip(images=images, return_tensors="pt")
    merge = int(ip.merge_size)
    counts = [int(g.prod()) // (merge * merge) for g in out["image_grid_thw"]]
    return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}, counts


# processor class -> (image processor parts, images) -> (model image inputs, tokens per image)
EXPANSIONS: dict[str, Callable] = {
    "Qwen2VLProcessor": _qwen_expansion,
    "Qwen2_5_VLProcessor": _qwen_expansion,
}


def _expand(ids: list[int], mask: list[bool], token_id: int, counts: list[int]) -> tuple[list[int], list[bool]]:
    if ids.count(token_id) != len(counts):
        raise BadSample(f"{ids.count(token_id)} media placeholders in the text but {len(counts)} media items")
    out_ids, out_mask, k = [], [], 0
    for tok, flag in zip(ids, mask):
        if tok == token_id:
            out_ids.extend([tok] * counts[k])
            out_mask.extend([False] * counts[k])
            k += 1
        else:
            out_ids.append(tok)
            out_mask.append(flag)
    return out_ids, out_mask


def _align_mask(expanded: list[int], ids: list[int], mask: list[bool], media_ids: set[int]) -> list[bool]:
    """Carry the text-token label flags over to the processor's expanded ids (media rows: False)."""
    text = [(t, f) for t, f in zip(ids, mask) if t not in media_ids]
    out, j = [], 0
    for tok in expanded:
        if tok not in media_ids and j < len(text) and text[j][0] == tok:
            out.append(text[j][1])
            j += 1
        else:
            out.append(False)
    if j != len(text):
        raise BadSample("the processor's tokenization differs from the tokenizer's; cannot place labels")
    return out


def mm_token_type_ids(input_ids: torch.Tensor, image_token_id: int, video_token_id: int | None = None) -> torch.Tensor:
    """``mm_token_type_ids`` of ``input_ids [...]``: :data:`~gasp_plugin.constants.IMAGE_TOKEN_TYPE`
    at image tokens, :data:`~gasp_plugin.constants.VIDEO_TOKEN_TYPE` at video tokens (when
    ``video_token_id`` is given), 0 elsewhere; same shape and dtype as ``input_ids``."""
    types = torch.zeros_like(input_ids)
    types[input_ids == image_token_id] = IMAGE_TOKEN_TYPE
    if video_token_id is not None:
        types[input_ids == video_token_id] = VIDEO_TOKEN_TYPE
    return types


def encode_conversation(
    processor: Any,
    messages: list[dict],
    images: list[np.ndarray],
    *,
    image_token_id: int,
    video_token_id: int | None = None,
    videos: list[np.ndarray] | None = None,
) -> dict[str, torch.Tensor]:
    """Model inputs for one conversation: ``input_ids [l]``, ``attention_mask [l]``,
    ``labels [l]`` (-100 outside assistant turns), ``mm_token_type_ids [l]`` and the processor's
    media tensors (``pixel_values``, ``image_grid_thw``, ...)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    full, spans = _assistant_char_spans(
        lambda m, **kw: processor.apply_chat_template(m, tokenize=False, **kw), messages
    )
    ids, mask = _text_label_mask(tokenizer, full, spans)
    videos = videos or []
    media_ids = {image_token_id} | ({video_token_id} if video_token_id is not None else set())
    if callable(processor):
        out = processor(text=[full], images=images or None, videos=videos or None, return_tensors="pt")
        expanded = out["input_ids"][0].tolist()
        label_mask = _align_mask(expanded, ids, mask, media_ids)
        media = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    else:
        rule = EXPANSIONS.get(getattr(processor, "processor_class", ""))
        if rule is None:
            raise ValueError(
                f"no expansion rule for processor class {getattr(processor, 'processor_class', '?')!r}; "
                f"known: {', '.join(EXPANSIONS)}"
            )
        if videos:
            raise ValueError("videos must be passed as frames (images) when the full processor is unavailable")
        media, counts = rule(processor, images) if images else ({}, [])
        expanded, label_mask = _expand(ids, mask, image_token_id, counts)
    input_ids = torch.tensor(expanded, dtype=torch.long)
    labels = torch.where(torch.tensor(label_mask), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "mm_token_type_ids": mm_token_type_ids(input_ids, image_token_id, video_token_id),
        **media,
    }


@dataclass
class InstructionDataset:
    """Conversation records encoded on demand. ``dataset.encode(i)`` raises :class:`BadSample` for
    a sample that cannot be used; the training stream skips it and counts it."""

    records: list[tuple[str, dict]]
    media_root: Path
    processor: Any
    image_token_id: int
    video_token_id: int | None = None
    max_length: int = 2048
    video_frames: int = 8

    def __len__(self) -> int:
        return len(self.records)

    def _videos_as_video(self) -> bool:
        return callable(self.processor) and getattr(self.processor, "video_processor", None) is not None \
            and self.video_token_id is not None

    def encode(self, index: int) -> dict[str, torch.Tensor]:
        where, raw = self.records[index]
        rec = parse_record(raw, where)
        images = [_load_image(self.media_root / p) for p in rec.images]
        videos = [_load_video(self.media_root / p, self.video_frames) for p in rec.videos]
        messages = rec.messages
        if videos and not self._videos_as_video():
            # no video processor: a video becomes its frames, passed as consecutive images
            messages, images = _videos_to_images(messages, images, videos)
            videos = []
        try:
            out = encode_conversation(
                self.processor, messages, images, image_token_id=self.image_token_id,
                video_token_id=self.video_token_id, videos=videos,
            )
        except BadSample as err:
            raise BadSample(f"{where}: {err}") from err
        if out["input_ids"].shape[0] > self.max_length:
            last_media = int(torch.nonzero(out["mm_token_type_ids"]).max()) if out["mm_token_type_ids"].any() else -1
            if last_media >= self.max_length or not (out["labels"][: self.max_length] != IGNORE_INDEX).any():
                raise BadSample(f"{where}: {out['input_ids'].shape[0]} tokens exceed max_length={self.max_length}")
            for key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids"):
                out[key] = out[key][: self.max_length]
        if not (out["labels"] != IGNORE_INDEX).any():
            raise BadSample(f"{where}: no assistant tokens to learn from after encoding")
        return out


def _videos_to_images(messages, images, videos):
    """Replace each video item by its frames as image items, keeping media order."""
    img_iter, vid_iter = iter(images), iter(videos)
    new_images, new_messages = [], []
    for msg in messages:
        content = []
        for item in msg["content"]:
            if item.get("type") == "image":
                new_images.append(next(img_iter))
                content.append(item)
            elif item.get("type") == "video":
                frames = list(next(vid_iter))
                new_images.extend(frames)
                content.extend({"type": "image"} for _ in frames)
            else:
                content.append(item)
        new_messages.append({**msg, "content": content})
    return new_messages, new_images


@dataclass
class InstructionCollator:
    """Pads instruction samples: ids with ``pad_token_id``, labels with -100, masks with 0;
    media tensors are concatenated along dim 0 in sample order."""

    pad_token_id: int

    def __call__(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(s["input_ids"].shape[0] for s in samples)
        pads = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0, "mm_token_type_ids": 0}
        batch = {}
        for key, value in pads.items():
            rows = [torch.nn.functional.pad(s[key], (0, length - s[key].shape[0]), value=value) for s in samples]
            batch[key] = torch.stack(rows)
        media_keys = {k for s in samples for k in s} - set(pads)
        for key in sorted(media_keys):
            batch[key] = torch.cat([s[key] for s in samples if key in s], dim=0)
        return batch


# ---- a small generated instruction set (for the tiny recipe and tests) -------------------------

_COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
_SHAPES = ("square", "circle")
_NUMBERS = ("one", "two", "three", "four")


def _draw_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str, str, int]:
    from PIL import Image, ImageDraw

    colour = list(_COLOURS)[int(rng.integers(len(_COLOURS)))]
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    count = int(rng.integers(1, len(_NUMBERS) + 1))
    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(im)
    cell = size // 2
    for k in rng.permutation(4)[:count]:
        x0, y0 = (k % 2) * cell + cell // 4, (k // 2) * cell + cell // 4
        box = (x0, y0, x0 + cell // 2, y0 + cell // 2)
        (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=_COLOURS[colour])
    return np.asarray(im), colour, shape, count


def make_synthetic_instructions(out_dir: str | Path, n: int, seed: int = 0, image_size: int = 112) -> Path:
    """Write ``n`` single-image conversations about coloured shapes (PNG images + ``data.json``,
    half in the LLaVA ``conversations`` form, half in the ``messages`` form); returns the JSON path.
    Deterministic given ``seed``."""
    from PIL import Image

    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        pixels, colour, shape, count = _draw_sample(rng, image_size)
        name = f"images/{i:05d}.png"
        Image.fromarray(pixels).save(out / name)
        question, answer = (
            ("What colour are the shapes?", f"They are {colour}.")
            if i % 3 == 0
            else (f"How many {shape}s are there?", f"There are {_NUMBERS[count - 1]}.")
            if i % 3 == 1
            else ("Describe the picture.", f"{_NUMBERS[count - 1].capitalize()} {colour} {shape}.")
        )
        if i % 2 == 0:
            records.append({"id": i, "image": name, "conversations": [
                {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]})
        else:
            records.append({"id": i, "images": [name], "messages": [
                {"role": "user", "content": f"<image>\n{question}"}, {"role": "assistant", "content": answer}]})
    path = out / "data.json"
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path
