"""``gasp tracks SCENE --anchor I --frames J,K,... --grid N [--out FILE.safetensors] [--png FILE.png]``

Computes ground-truth tracks of an ``N x N`` grid of anchor pixels into the listed frames of any
readable scene. The file's rows are the ``--frames`` in the order given (the anchor row is among
them only if the anchor is listed; metadata ``anchor`` says which row, or ``none``), pixels in the
scene's own image resolution; layout in :mod:`gasp_plugin.geometry.tracks`. Metadata also records
``frame_ids``, ``anchor_frame``, ``scene``, ``grid``, ``margin`` and ``depth_tolerance``.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", help="scene folder (hololens, ScanNet export, 7-Scenes or video layout)")
    parser.add_argument("--anchor", type=int, required=True, help="frame index of the anchor")
    parser.add_argument("--frames", required=True, help="comma-separated frame indices, e.g. 5,15,20")
    parser.add_argument("--grid", type=int, default=8, help="queries per side (paper: 8 or 24)")
    parser.add_argument("--margin", type=float, default=4.0, help="visibility border in pixels")
    parser.add_argument("--depth-tolerance", type=float, default=0.05, help="relative depth test")
    parser.add_argument("--keep", type=float, default=1.0,
                        help="keep the best-tracked fraction of points (paper: 0.5)")
    parser.add_argument("--layout", default=None, help="force a scene layout instead of detecting it")
    parser.add_argument("--out", default=None, help="write the tracks here (.safetensors)")
    parser.add_argument("--png", default=None, help="draw anchor and frames with matched points here")


def parse_frames(text: str) -> list[int]:
    try:
        frames = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--frames: expected comma-separated frame indices like 5,15,20, got {text!r}")
    if not frames:
        raise ValueError("--frames: no frame index given")
    return frames


def compute(args):
    """Open the scene and compute ``(scene, tracks, frames)`` for parsed ``args``."""
    from gasp_plugin.data import load_clip, open_scene
    from gasp_plugin.geometry.tracks import tracks_for_clip

    frames = parse_frames(args.frames)
    scene = open_scene(args.scene, layout=args.layout)
    ids = frames if args.anchor in frames else [args.anchor, *frames]
    clip = load_clip(scene, ids, anchor_row=ids.index(args.anchor))  # checks every frame id
    tracks = tracks_for_clip(clip, grid=args.grid, keep=args.keep, margin=args.margin,
                             depth_tolerance=args.depth_tolerance)
    rows = [ids.index(f) for f in frames]
    return scene, clip, tracks.select_frames(rows), frames


def run(args) -> int:
    """Errors in the scene or the arguments propagate; ``gasp tracks`` reports them in one line
    (see :mod:`gasp_plugin.errors`)."""
    scene, clip, tracks, frames = compute(args)
    print(f"scene {scene.name} ({type(scene).__name__}, {len(scene)} frames), anchor {args.anchor}, "
          f"{tracks.num_points} queries with valid depth on a {args.grid}x{args.grid} grid")
    for row, f in enumerate(frames):
        print(f"  frame {f}: {int(tracks.visible[row].sum())}/{tracks.num_points} visible")
    if args.out:
        meta = {"frame_ids": json.dumps(frames), "anchor_frame": str(args.anchor), "scene": str(args.scene),
                "grid": str(args.grid), "margin": str(args.margin),
                "depth_tolerance": str(args.depth_tolerance)}
        print(f"wrote {tracks.save(args.out, metadata=meta)}")
    if args.png:
        from gasp_plugin.geometry.draw import draw_tracks

        anchor_image = clip.images[clip.anchor]
        images = [clip.images[clip.frame_ids.index(f)] for f in frames]
        path = draw_tracks(anchor_image, images, tracks, args.png, titles=[f"frame {f}" for f in frames],
                           anchor_title=f"anchor {args.anchor}")
        print(f"wrote {path}")
    return 0
