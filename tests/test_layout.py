"""FrameLayout's three views of one token grid agree: pixel -> token, token centres, cell boundaries."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gasp_plugin.models.registry import FrameLayout, get_adapter  # noqa: E402
from gasp_plugin.models.tiny import TINY_MODEL_TYPES, build_tiny_model  # noqa: E402

# hand-made layouts: Qwen-like (resize to a multiple of the 28-pixel cell, no crop) and LLaVA-like
# (shortest edge to 112, centre crop 112 x 112, 14-pixel cells), square and non-square frames
LAYOUTS = {
    "qwen_wide": FrameLayout((360, 540), (364, 532), (0, 0), 28, (13, 19)),
    "qwen_tall": FrameLayout((200, 150), (196, 140), (0, 0), 28, (7, 5)),
    "qwen_square": FrameLayout((112, 112), (112, 112), (0, 0), 28, (4, 4)),
    "llava_wide": FrameLayout((360, 540), (112, 168), (0, 28), 14, (8, 8)),
    "llava_tall": FrameLayout((200, 150), (149, 112), (18, 0), 14, (8, 8)),
    "llava_upscaled": FrameLayout((90, 120), (112, 149), (0, 18), 14, (8, 8)),
}


@pytest.fixture(scope="module", params=TINY_MODEL_TYPES)
def family(request):
    model, processor = build_tiny_model(request.param, image_size=112)
    return get_adapter(model), processor


def _check_agreement(layout: FrameLayout) -> None:
    gh, gw = layout.grid_hw
    n = layout.num_tokens
    centres = layout.token_centres()
    assert centres.shape == (n, 2) and centres.dtype == torch.float64
    assert torch.equal(layout.pixels_to_tokens(centres), torch.arange(n))
    xs, ys = layout.cell_boundaries()
    assert xs.shape == (gw + 1,) and ys.shape == (gh + 1,)
    assert (np.diff(xs) > 0).all() and (np.diff(ys) > 0).all()
    col, row = torch.arange(n) % gw, torch.arange(n) // gw
    cx, cy = centres[:, 0].numpy(), centres[:, 1].numpy()
    assert (xs[col] < cx).all() and (cx < xs[col + 1]).all()
    assert (ys[row] < cy).all() and (cy < ys[row + 1]).all()
    # just inside each cell's corners: the cell's own token; just outside the grid: -1
    eps = 1e-3
    inner = torch.tensor(np.stack([
        np.stack([xs[col] + eps, ys[row] + eps], -1),
        np.stack([xs[col + 1] - eps, ys[row + 1] - eps], -1),
    ]))  # [2, n, 2]
    assert torch.equal(layout.pixels_to_tokens(inner), torch.arange(n).expand(2, n))
    outer = torch.tensor([[xs[0] - eps, cy[0]], [xs[-1] + eps, cy[0]], [cx[0], ys[0] - eps], [cx[0], ys[-1] + eps]])
    assert layout.pixels_to_tokens(outer).tolist() == [-1, -1, -1, -1]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_centres_boundaries_and_mapping_agree(name):
    _check_agreement(LAYOUTS[name])


@pytest.mark.parametrize("hw", [(360, 540), (200, 150), (112, 112), (90, 120)])
def test_agreement_on_the_processors_layouts(family, hw):
    adapter, processor = family
    layout = adapter.frame_layout(processor, hw)
    assert layout.orig_hw == hw
    _check_agreement(layout)


@pytest.mark.parametrize("hw", [(360, 540), (200, 150), (90, 120)])
def test_agreement_on_the_video_layouts(family, hw):
    """Video frames' layouts too, including OneVision's resampled patch grid (token_of_patch)."""
    adapter, processor = family
    try:
        layout = adapter.video_frame_layout(processor, hw)
    except ValueError as err:
        assert "has no video input" in str(err)
        return
    _check_agreement(layout)


def test_resampled_patch_grid_layout():
    """9 patches of 14 px bilinearly resized to 5 tokens (OneVision's pooling at a 130 px tower):
    each token covers a run of patches; the 4 px past the last patch reach no token."""
    from gasp_plugin.models.registry import resampled_token_of_patch

    table = resampled_token_of_patch(9, 5)
    assert table == (0, 0, 1, 1, 2, 3, 3, 4, 4)
    layout = FrameLayout((130, 130), (130, 130), (0, 0), 14, (5, 5), token_of_patch=(table, table))
    _check_agreement(layout)
    xs, _ = layout.cell_boundaries()
    assert xs.tolist() == pytest.approx([-0.5, 27.5, 55.5, 69.5, 97.5, 125.5])
    assert layout.pixels_to_tokens(torch.tensor([[126.0, 0.0], [125.0, 0.0]])).tolist() == [-1, 4]
    assert resampled_token_of_patch(27, 14)[12:15] == (6, 6, 7)  # 384 px: patch 13 weighs equally in 6 and 7
    with pytest.raises(ValueError, match="non-decreasing and reach"):
        FrameLayout((130, 130), (130, 130), (0, 0), 14, (5, 5), token_of_patch=(table, (0, 1, 0, 1, 2, 3, 3, 4, 4)))


def test_crop_margin_maps_to_no_token():
    layout = LAYOUTS["llava_wide"]  # 28 resized pixels = 90 original pixels cropped on each side
    xs, _ = layout.cell_boundaries()
    assert xs[0] == pytest.approx(89.5) and xs[-1] == pytest.approx(449.5)
    tok = layout.pixels_to_tokens(torch.tensor([[0.0, 100.0], [89.0, 100.0], [90.0, 100.0], [450.0, 100.0]]))
    assert tok.tolist()[0:2] == [-1, -1] and tok[2] >= 0 and tok[3] == -1


def test_pixels_to_tokens_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"xy must have shape \[\.\.\., 2\]"):
        LAYOUTS["qwen_square"].pixels_to_tokens(torch.zeros(3, 3))
