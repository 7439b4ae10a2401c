"""The geometry path at real frame sizes and pixel budgets.

Frame sizes of the data sets people train on (ScanNet, 7-Scenes, DL3DV, ARKitScenes, 1080p, a
portrait frame), each under the processor's default budget, a lowered one and a raised one; the
pixel -> token mapping of :meth:`FrameLayout.pixels_to_tokens` is checked against the real
processor by perturbing pixels, and ``build_geometry_example`` against the grids it produces.
"""

import dataclasses

import numpy as np
import pytest
import torch

from gasp_plugin.models.registry import get_adapter
from gasp_plugin.models.tiny import build_tiny_model

SIZES = {  # name -> (h, w)
    "scannet-depth 640x480": (480, 640),
    "dl3dv 960x540": (540, 960),
    "scannet-colour 1296x968": (968, 1296),
    "arkit-colour 1920x1440": (1440, 1920),
    "arkit-depth 256x192": (192, 256),
    "1080p 1920x1080": (1080, 1920),
    "portrait 720x1280": (1280, 720),
}
# tiny processors: min 28*28, max 224*224 px; lowered and raised relative to that
BUDGETS = {"default": (None, None), "lowered": (None, 112 * 112), "raised": (448 * 448, None)}
QWEN = ["qwen2_vl", "qwen2_5_vl"]


@pytest.fixture(scope="module", params=QWEN + ["llava"])
def family(request):
    model, processor = build_tiny_model(request.param, image_size=224)
    return request.param, model, processor, get_adapter(model)


def _token_change(model_type, processor, adapter, base, frame) -> torch.Tensor:
    """``[n]`` how much each LLM token's input patches changed between ``base`` and ``frame``."""
    ip = processor.image_processor
    diff = (ip(images=[frame], return_tensors="pt")["pixel_values"] - base).abs()
    if model_type.startswith("qwen"):
        return diff.sum(-1).reshape(-1, ip.merge_size**2).sum(-1)  # rows: patches, merge^2 per token
    p = adapter.patch
    _, _, hh, ww = diff.shape
    return diff[0].sum(0).reshape(hh // p, p, ww // p, p).sum((1, 3)).flatten()


def _probe_layout(model_type, processor, adapter, hw, seed=0):
    """Perturb the pixel at the centre of random subsets of token cells; the set of tokens whose
    input changes must be exactly the set the layout maps those pixels to (a permutation or a
    shifted grid fails). Returns the number of cells probed.

    Where the processor shrinks the frame by ``s`` > 1, one source pixel's change is averaged
    away by the resize (below one uint8 level at s = 17), so the probe inverts the ``s x s`` block
    of source pixels that one resized pixel reads, centred on the cell centre: still far inside
    the cell (a cell is ``cell * s`` source pixels wide)."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    layout = adapter.frame_layout(processor, hw)
    base = processor.image_processor(images=[frame], return_tensors="pt")["pixel_values"]
    centres = layout.token_centres().round().long()  # [n, 2] original pixels
    inside = (centres[:, 0] >= 0) & (centres[:, 0] < hw[1]) & (centres[:, 1] >= 0) & (centres[:, 1] < hw[0])
    assert bool(inside.all())
    tokens = layout.pixels_to_tokens(centres.double())
    assert torch.equal(tokens, torch.arange(layout.num_tokens))  # each centre pixel lies in its own cell
    scale = max(hw[0] / layout.resized_hw[0], hw[1] / layout.resized_hw[1], 1.0)
    r = int(np.ceil(scale / 2)) - 1 if scale > 1.5 else 0  # block half-size in source pixels
    probed = 0
    for trial in range(3):
        chosen = torch.from_numpy(rng.random(layout.num_tokens) < 0.5)
        bumped = frame.copy()
        for x, y in centres[chosen].tolist():
            block = (slice(max(y - r, 0), y + r + 1), slice(max(x - r, 0), x + r + 1))
            bumped[block] = 255 - bumped[block]
        changed = _token_change(model_type, processor, adapter, base, bumped) > 1e-6
        assert changed.numel() == layout.num_tokens, (changed.numel(), layout.grid_hw)
        expected = torch.zeros(layout.num_tokens, dtype=torch.bool)
        expected[tokens[chosen]] = True
        assert torch.equal(changed, expected), (hw, layout.grid_hw, trial)
        probed += int(chosen.sum())
    return probed


@pytest.mark.parametrize("budget", list(BUDGETS))
@pytest.mark.parametrize("size", list(SIZES))
def test_layout_matches_the_processor(family, size, budget):
    model_type, _, processor, adapter = family
    low, high = BUDGETS[budget]
    hw = SIZES[size]
    if model_type == "llava":
        if budget != "default":
            with pytest.raises(ValueError, match="do not apply"):
                adapter.apply_pixel_budget(processor, low, high)
            return
    else:
        saved = dict(processor.image_processor.size)
        adapter.apply_pixel_budget(processor, low, high)
    try:
        layout = adapter.frame_layout(processor, hw)
        frame = np.zeros((*hw, 3), np.uint8)
        inputs = adapter.build_frame_inputs(processor, [frame, frame])
        adapter.check_layouts(inputs, [layout, layout])  # the grid the model sees
        assert _probe_layout(model_type, processor, adapter, hw) > 0
    finally:
        if model_type != "llava":
            processor.image_processor.size = saved


def test_budget_written_where_the_processor_reads_it():
    """A budget set as attributes (as older scripts do) is honoured by the processor; the layout
    reads the same values; apply_pixel_budget moves it into ``size`` and clears the attributes."""
    _, processor = build_tiny_model("qwen2_vl", image_size=224)
    adapter = get_adapter(build_tiny_model("qwen2_vl", image_size=224)[0])
    ip = processor.image_processor
    frame = np.zeros((720, 1080, 3), np.uint8)
    ip.max_pixels = 112 * 112
    grid = tuple(ip(images=[frame], return_tensors="pt")["image_grid_thw"][0, 1:].tolist())
    layout = adapter.frame_layout(processor, frame.shape[:2])
    assert tuple(g // 2 for g in grid) == layout.grid_hw
    adapter.apply_pixel_budget(processor, min_pixels=448 * 448)
    # the attribute's max (112^2) gave way to the raised min
    assert ip.max_pixels is None and ip.size["shortest_edge"] == ip.size["longest_edge"] == 448 * 448
    adapter.apply_pixel_budget(processor, max_pixels=56 * 56)
    assert ip.size["shortest_edge"] == ip.size["longest_edge"] == 56 * 56
    with pytest.raises(ValueError, match="must be <= max_pixels"):
        adapter.apply_pixel_budget(processor, min_pixels=10**7, max_pixels=10**6)
    with pytest.raises(ValueError, match="positive int"):
        adapter.apply_pixel_budget(processor, max_pixels=0)


def test_check_layouts_names_the_frame_and_both_grids():
    model, processor = build_tiny_model("qwen2_vl", image_size=224)
    adapter = get_adapter(model)
    frame = np.zeros((480, 640, 3), np.uint8)
    inputs = adapter.build_frame_inputs(processor, [frame, frame])
    right = adapter.frame_layout(processor, (480, 640))
    wrong = dataclasses.replace(right, grid_hw=(3, 4))
    adapter.check_layouts(inputs, [right, right])
    with pytest.raises(ValueError, match=r"frame 1 \(640x480 px\).*made a 6x9 token grid.*predicts 3x4"):
        adapter.check_layouts(inputs, [right, wrong])


@pytest.mark.parametrize("model_type", QWEN)
@pytest.mark.parametrize("budget", ["lowered", "raised"])
def test_geometry_example_at_a_budget_on_upsampled_real_frames(model_type, budget, hololens_scene):
    """The bundled HoloLens frames upsampled 2x (1080x720): the lowered budget crashed the batch
    builder (a tensor-size RuntimeError) and the raised one indexed a smaller grid than the model
    saw. Now the targets' grids are the processor's, at both budgets."""
    from gasp_plugin.core.batch import TARGETS_KEY, build_geometry_example
    from gasp_plugin.data import load_clip
    from gasp_plugin.data.scene import Clip
    from gasp_plugin.geometry.tracks import tracks_for_clip

    model, processor = build_tiny_model(model_type, image_size=224)
    adapter = get_adapter(model)
    adapter.apply_pixel_budget(processor, *BUDGETS[budget])
    clip = load_clip(hololens_scene, [4, 6, 8])
    up = Clip(images=clip.images.repeat(2, 1).repeat(2, 2), depth=clip.depth.repeat(2, 1).repeat(2, 2),
              intrinsics=_scaled(clip.intrinsics, 2.0), poses=clip.poses, frame_ids=clip.frame_ids,
              anchor=clip.anchor, scene=clip.scene)
    tracks = tracks_for_clip(up, grid=8, keep=1.0)
    example = build_geometry_example(up, tracks, processor, adapter)
    targets = example[TARGETS_KEY]
    grids = adapter.frame_grids(example)[0]
    layout = adapter.frame_layout(processor, up.images.shape[1:3])
    assert all(tuple(g) == layout.grid_hw for g in grids)
    assert targets.token_depth.shape[-1] == layout.num_tokens == targets.token_positions.shape[-1]
    assert targets.num_visible > 0
    # tokens per frame: at most 112^2 / 28^2 = 16 lowered; about 448^2 / 28^2 = 256 raised (247: 19x13)
    assert layout.num_tokens <= 16 if budget == "lowered" else layout.num_tokens >= 200


def _scaled(intrinsics, factor):
    """Intrinsics of a frame upsampled by ``factor`` with pixel centres at integers."""
    k = intrinsics.copy()
    k[:, :2, :2] *= factor
    k[:, :2, 2] = (k[:, :2, 2] + 0.5) * factor - 0.5
    return k


@pytest.mark.parametrize("hw", [(480, 640), (1280, 720), (192, 256)])
def test_llava_pad_to_square(hw):
    """``LlavaImageProcessor(do_pad=True)`` pads the frame to a square before resizing: the layout
    maps every cell that shows the frame to the token the processor puts it in (before: none)."""
    from types import SimpleNamespace

    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    model, processor = build_tiny_model("llava", image_size=224)
    adapter = get_adapter(model)
    clip = processor.image_processor
    ip = LlavaImageProcessorPil(do_pad=True, size=dict(clip.size), crop_size=dict(clip.crop_size),
                                image_mean=clip.image_mean, image_std=clip.image_std)
    padded = SimpleNamespace(image_processor=ip)
    layout = adapter.frame_layout(padded, hw)
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    base = ip(images=[frame], return_tensors="pt")["pixel_values"]
    centres = layout.token_centres().round().long()
    inside = ((centres[:, 0] >= 0) & (centres[:, 0] < hw[1]) & (centres[:, 1] >= 0) & (centres[:, 1] < hw[0]))
    assert 0 < int(inside.sum()) < layout.num_tokens  # some cells show only padding
    scale = max(hw) / layout.resized_hw[0]
    r = int(np.ceil(scale / 2)) - 1 if scale > 1.5 else 0
    for token in torch.nonzero(inside).flatten().tolist()[::3]:
        x, y = centres[token].tolist()
        bumped = frame.copy()
        bumped[max(y - r, 0): y + r + 1, max(x - r, 0): x + r + 1] ^= 0xFF
        change = _token_change("llava", padded, adapter, base, bumped)
        assert int(change.argmax()) == token == int(layout.pixels_to_tokens(torch.tensor([float(x), float(y)])))


def test_token_budget_cuts_or_refuses_clips(hololens_scene):
    """A 2..6-frame clip at 247 tokens per frame (the raised budget on 1080x720 frames) against a
    budget of three frames: clips are cut to 3 frames, the anchor kept, and the exact sequence is
    within the budget; a budget below min_frames refuses the clip with a counted reason."""
    from gasp_plugin.data import ClipSampler, ClipSampling
    from gasp_plugin.data.clips import PROMPT_TOKENS, frames_within_budget
    from gasp_plugin.data.instruct import BadSample
    from gasp_plugin.train.assemble import geometry_examples
    from gasp_plugin.train.interleave import NOTES_KEY

    model, processor = build_tiny_model("qwen2_vl", image_size=224)
    adapter = get_adapter(model)
    adapter.apply_pixel_budget(processor, min_pixels=448 * 448)
    per_frame = adapter.frame_layout(processor, hololens_scene.image(0).shape[:2]).num_tokens
    budget = PROMPT_TOKENS + 3 * (per_frame + 2)
    assert frames_within_budget(per_frame, budget) == 3 and frames_within_budget(per_frame, budget - 1) == 2
    sampler = ClipSampler([hololens_scene], ClipSampling(min_frames=4, max_frames=6, window=6, grid=4), seed=0)
    with pytest.raises(BadSample, match="token budget.*holds 3 frames < min_frames=4"):
        geometry_examples(sampler, processor, adapter, budget)(0)
    sampler = ClipSampler([hololens_scene], ClipSampling(min_frames=2, max_frames=6, window=6, grid=4), seed=0)
    source = geometry_examples(sampler, processor, adapter, budget)
    cut = 0
    for index in range(4):
        example = source(index)
        notes = example[NOTES_KEY]
        drawn, _ = sampler.sample(index)
        assert notes["frames"] == min(3, notes["drawn_frames"]) == len(adapter.frame_grids(example)[0])
        assert notes["drawn_frames"] == len(drawn.frame_ids)
        assert notes["tokens"] == example["input_ids"].shape[-1] <= budget and notes["pairs"] > 0
        cut += notes["frames"] < notes["drawn_frames"]
    assert cut >= 1
    unbounded = geometry_examples(sampler, processor, adapter)(0)
    assert unbounded[NOTES_KEY]["frames"] == unbounded[NOTES_KEY]["drawn_frames"]


def test_cut_clip_keeps_the_anchor_and_is_seeded(hololens_scene):
    from gasp_plugin.data import load_clip
    from gasp_plugin.data.clips import cut_clip
    from gasp_plugin.geometry.tracks import tracks_for_clip

    clip = load_clip(hololens_scene, [2, 4, 6, 8, 10, 12], anchor_row=3)
    tracks = tracks_for_clip(clip, grid=4, keep=1.0)
    a, ta = cut_clip(clip, tracks, 3, seed=7)
    b, _ = cut_clip(clip, tracks, 3, seed=7)
    assert a.frame_ids == b.frame_ids and len(a.frame_ids) == 3 and a.frame_ids[a.anchor] == 8
    assert a.frame_ids == sorted(a.frame_ids) and ta.anchor == a.anchor and ta.num_frames == 3
    rows = [clip.frame_ids.index(i) for i in a.frame_ids]
    assert np.array_equal(a.images, clip.images[rows]) and torch.equal(ta.xy, tracks.xy[rows])


class _Upsampled:
    """A scene read through another at ``factor`` times its resolution (nearest neighbour)."""

    def __init__(self, scene, factor=2):
        self.scene, self.factor, self.name = scene, factor, f"{scene.name}-x{factor}"

    def __len__(self):
        return len(self.scene)

    def image(self, i):
        return self.scene.image(i).repeat(self.factor, 0).repeat(self.factor, 1)

    def depth(self, i):
        return self.scene.depth(i).repeat(self.factor, 0).repeat(self.factor, 1)

    def intrinsics(self, i):
        return _scaled(self.scene.intrinsics(i)[None], float(self.factor))[0]

    def pose(self, i):
        return self.scene.pose(i)


@pytest.mark.parametrize("budget", ["model.max_pixels=12544", "model.min_pixels=100352"])
def test_gasp_train_at_a_budget_on_upsampled_real_frames(budget, hololens_scene, tmp_path):
    """`gasp train` on the tiny recipe, its budget lowered (112^2) or raised (100352, 11x11+
    tokens where the checkpoint says 8x8), on the bundled real scene upsampled 2x to 1080x720:
    every geometry clip is used (none skipped), with grids the processor really produced."""
    from gasp_plugin.data.synthetic import write_scene
    from gasp_plugin.train.launch import train

    scene_dir = write_scene(_Upsampled(hololens_scene), tmp_path / "hololens-x2")
    result = train("tiny_cpu", [
        f"training.output_dir={tmp_path / 'run'}", budget, "training.max_steps=3", "data.geometry_ratio=1.0",
        f"data.geometry.scenes=[{scene_dir}]", "data.geometry.synthetic=null", "data.instruct.synthetic=null",
        "data.geometry.min_frames=2", "data.geometry.max_frames=3", "data.geometry.grid=[4, 8]",
        "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "gasp.embed_dim=16", "model.train_vision=false",
    ], progress=False)
    assert result.final_step == 3
    assert result.counters["geometry_batches"] == 3 and result.counters.get("skipped_samples", 0) == 0
    assert all(h.get("skipped_samples", 0) == 0 for h in result.loss_history)


def test_bench_clips_counts_the_two_grids(hololens_scene):
    """`gasp bench clips` figures for the tiny recipe: the fine grid adds anchors (one per token)
    and supervised pairs; every clip within the recipe's token budget."""
    from gasp_plugin.bench.clips import measure
    from gasp_plugin.recipe import load_recipe

    recipe = load_recipe("tiny_cpu", ["model.tiny.hidden_size=64", "model.tiny.num_layers=1"])
    one, two = (measure(recipe, grid, hololens_scene, clips=2) for grid in ((8,), (8, 24)))
    assert one["clips"] == two["clips"] == 2 and one["frames"] == two["frames"]
    assert two["anchors"] > one["anchors"] and two["pairs"] > one["pairs"]
    assert two["anchors"] <= 64  # 224 px frames: 8x8 tokens, one anchor each at most
    assert two["tokens_max"] <= two["max_tokens"]


def test_shipped_7b_recipes_use_both_grids_and_a_token_budget():
    from gasp_plugin.recipe import load_recipe

    for name in ("qwen2vl_gasp", "llava_video_gasp"):
        g = load_recipe(name).data.geometry
        assert g.sampling.grid == (8, 24) and g.max_tokens is not None
