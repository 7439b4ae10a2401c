"""Test helpers: synthetic scenes written in the layouts data sets ship (each in its own
conventions), and the exact-geometry check every reader test runs.

The writers take a :class:`~gasp_plugin.data.synthetic.SyntheticScene` (exact depth, OpenCV
camera-to-world poses, pixel centres at integers) and convert *to* the format's conventions with
code written here independently of the readers (e.g. OpenGL axes by negating the camera's y and z
columns), so a reader that forgets a conversion fails the tracks check.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gasp_plugin.data import load_clip
from gasp_plugin.data.synthetic import SyntheticScene, SyntheticSceneConfig
from gasp_plugin.geometry.tracks import compute_tracks

# small, fast, with box occluders and enough motion for occlusion between the frames used
CONFIG = SyntheticSceneConfig(height=72, width=96, num_frames=8, speed_deg=5.0, num_boxes=(5, 7))
SEED = 0
CLIP = [0, 3, 5, 7]  # the frames the tracks checks use (anchor: the first)


def views(synth: SyntheticScene, K: np.ndarray, width: int, height: int, poses=None) -> SyntheticScene:
    """The same room and camera path seen with other intrinsics / image size (or other poses)."""
    poses = synth._poses if poses is None else poses
    return SyntheticScene(synth.room, poses, K, height, width, name=synth.name)


def depth_mm(depth: np.ndarray, scale: float = 1000.0) -> np.ndarray:
    """``uint16`` depth in 1/scale metres; invalid or out-of-range depth -> 0."""
    mm = np.round(depth.astype(np.float64) * scale)
    mm[~np.isfinite(mm) | (mm <= 0) | (mm > 65535)] = 0
    return mm.astype(np.uint16)


def write_png_depth(path, depth: np.ndarray, scale: float = 1000.0) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(depth_mm(depth, scale)).save(path)


def jpeg_bytes(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def check_tracks(scene, truth, ids=CLIP, anchor_row: int = 0, grid: int = 16, tol: float = 0.1):
    """Tracks through frames ``ids`` of the reader's ``scene`` equal those of the synthetic
    ``truth`` (exact depth): the same queries, the same visibility (occlusion included: some
    queries must project inside a frame and be hidden there), positions within ``tol`` px."""
    clip, exact = load_clip(scene, ids, anchor_row), load_clip(truth, ids, anchor_row)
    assert clip.images.shape == exact.images.shape
    t = compute_tracks(torch.from_numpy(clip.depth), torch.from_numpy(clip.intrinsics),
                       torch.from_numpy(clip.poses), anchor_row, grid=grid)
    g = compute_tracks(torch.from_numpy(exact.depth), torch.from_numpy(exact.intrinsics),
                       torch.from_numpy(exact.poses), anchor_row, grid=grid)
    assert torch.equal(t.query_xy, g.query_xy), "different queries kept (anchor depth differs)"
    h, w = exact.depth.shape[1:]
    inside = ((g.xy[..., 0] >= 4) & (g.xy[..., 0] <= w - 5) & (g.xy[..., 1] >= 4) & (g.xy[..., 1] <= h - 5)
              & (g.depth > 0))
    occluded = inside & ~g.visible
    assert occluded.sum() > 0, "the clip has no occluded points: the check would not test occlusion"
    assert g.visible.sum() > 0.3 * g.visible.numel()
    assert torch.equal(t.visible, g.visible), f"visibility differs at {(t.visible != g.visible).sum()} points"
    err = (t.xy - g.xy).norm(dim=-1)[g.visible].max().item()
    assert err < tol, f"track positions differ by up to {err:.4f} px"
    return t, g


# --- ScanNet .sens -----------------------------------------------------------------------------

def write_sens(path, colour: SyntheticScene, depth: SyntheticScene | None = None, poses=None,
               color_codec: int = 2, depth_codec: int = 1, depth_shift: float = 1000.0, frames=None) -> Path:
    """A ScanNet SensorData v4 file: ``colour`` gives the colour images and intrinsics, ``depth``
    (default: ``colour``) the depth maps and depth intrinsics; ``poses`` override the per-frame
    camera-to-world matrices (e.g. with ``-inf`` rows)."""
    depth = depth or colour
    n = len(colour) if frames is None else frames
    poses = np.stack([colour.pose(i) for i in range(n)]) if poses is None else np.asarray(poses)

    def mat4(K):
        M = np.eye(4, dtype=np.float32)
        M[:3, :3] = K
        return M.astype("<f4").tobytes()

    out = bytearray()
    out += struct.pack("<I", 4)
    name = b"StructureSensor"
    out += struct.pack("<Q", len(name)) + name
    out += mat4(colour.intrinsics(0)) + mat4(np.eye(3)) + mat4(depth.intrinsics(0)) + mat4(np.eye(3))
    out += struct.pack("<2i4IfQ", color_codec, depth_codec, colour.width, colour.height, depth.width,
                       depth.height, depth_shift, n)
    for i in range(n):
        rgb = colour.image(i)
        c = jpeg_bytes(rgb) if color_codec == 2 else rgb.tobytes()
        d = depth_mm(depth.depth(i), depth_shift).astype("<u2").tobytes()
        d = zlib.compress(d) if depth_codec == 1 else d
        out += np.asarray(poses[i], dtype="<f4").tobytes()
        out += struct.pack("<4Q", 1000 * i, 1000 * i + 7, len(c), len(d)) + c + d
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))
    return path


# --- nerfstudio / DL3DV ------------------------------------------------------------------------

GL_FROM_CV_AXES = np.diag([1.0, -1.0, -1.0, 1.0])  # negate the camera's y and z axes


def write_nerfstudio(root, synth: SyntheticScene, factor: int = 4, depth: str | None = "npy",
                     depth_file_path: bool = False, depth_unit: float | None = None) -> Path:
    """DL3DV-style: ``transforms.json`` with intrinsics of the full ``factor``x-size frames (pixel
    centres at +0.5), OpenGL camera-to-world matrices, frames in ``images_{factor}/`` (full size:
    ``images/`` when ``factor == 1``), depth in ``depth/`` as ``.npy`` metres or 16-bit ``.png``
    (``1 / depth_unit`` per metre) or, with ``depth_file_path``, listed per frame."""
    root = Path(root)
    folder = root / ("images" if factor == 1 else f"images_{factor}")
    folder.mkdir(parents=True, exist_ok=True)
    w, h = synth.width * factor, synth.height * factor
    K = synth.intrinsics(0)
    # intrinsics of the full-size frames in corner-origin pixels: x_corner = x_centre + 0.5, scaled
    fx, fy = K[0, 0] * factor, K[1, 1] * factor
    cx, cy = (K[0, 2] + 0.5) * factor, (K[1, 2] + 0.5) * factor
    frames = []
    for i in range(len(synth)):
        name = f"frame_{i + 1:05d}.png"
        Image.fromarray(synth.image(i)).save(folder / name)
        frame = {"file_path": f"images/{name}", "transform_matrix": (synth.pose(i) @ GL_FROM_CV_AXES).tolist(),
                 "colmap_im_id": i + 1}
        if depth is not None:
            stem = root / "depth" / f"frame_{i + 1:05d}"
            stem.parent.mkdir(exist_ok=True)
            if depth == "npy":
                np.save(f"{stem}.npy", synth.depth(i).astype(np.float32))
            else:
                write_png_depth(f"{stem}.png", synth.depth(i), 1.0 / (depth_unit or 1e-3))
            if depth_file_path:
                frame["depth_file_path"] = f"depth/frame_{i + 1:05d}.{depth}"
        frames.append(frame)
    frames = frames[::-1]  # file order is not frame order
    meta = {"camera_model": "OPENCV", "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": w, "h": h,
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames}
    if depth_unit is not None:
        meta["depth_unit_scale_factor"] = depth_unit
    (root / "transforms.json").write_text(json.dumps(meta, indent=1))
    return root


def gasp_tracks(scene_path, out_dir) -> None:
    """``gasp tracks SCENE --anchor 0 --frames 3,5`` through the command's own module (what
    ``gasp_plugin.cli`` runs) succeeds and writes tracks with visible points."""
    import argparse

    from gasp_plugin.data import tracks_cli
    from gasp_plugin.geometry.tracks import Tracks

    parser = argparse.ArgumentParser(prog="gasp tracks")
    tracks_cli.add_arguments(parser)
    out = Path(out_dir) / "tracks.safetensors"
    assert tracks_cli.run(parser.parse_args([str(scene_path), "--anchor", "0", "--frames", "3,5", "--out", str(out)])) == 0
    t = Tracks.load(out)
    assert t.num_frames == 2 and t.visible.any()


# --- ARKitScenes raw ---------------------------------------------------------------------------

def angle_axis(R: np.ndarray) -> np.ndarray:
    """Angle-axis of a rotation by the textbook formula (angles away from 0 and pi)."""
    angle = np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2 * np.sin(angle))
    return axis * angle


def traj_line(t: float, world_from_cam: np.ndarray) -> str:
    """A ``.traj`` line: the world-to-camera transform as angle-axis and translation."""
    R_cw = world_from_cam[:3, :3].T
    t_cw = -R_cw @ world_from_cam[:3, 3]
    return " ".join(f"{v:.9f}" for v in [t, *angle_axis(R_cw), *t_cw])


def write_arkitscenes(root, synth: SyntheticScene, video: str = "41069025", t0: float = 6251.483,
                      dt: float = 0.1, jitter: float = 0.0013, decoys: bool = True) -> Path:
    """ARKitScenes raw layout; frame ``i`` at ``t0 + i * dt``. The trajectory stamps each pose
    ``jitter`` s late and, with ``decoys``, holds other poses 1/60 s before and after each frame
    (the matcher must take the nearest)."""
    root = Path(root)
    for sub in ("lowres_wide", "lowres_depth", "lowres_wide_intrinsics"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    K = synth.intrinsics(0)
    for i in range(len(synth)):
        t = t0 + i * dt
        name = f"{video}_{t:.3f}"
        Image.fromarray(synth.image(i)).save(root / "lowres_wide" / f"{name}.png")
        write_png_depth(root / "lowres_depth" / f"{name}.png", synth.depth(i))
        (root / "lowres_wide_intrinsics" / f"{name}.pincam").write_text(
            f"{synth.width} {synth.height} {K[0, 0]} {K[1, 1]} {K[0, 2]} {K[1, 2]}\n")
        if decoys:
            shifted = synth.pose(i).copy()
            shifted[:3, 3] += 0.05
            lines += [traj_line(t - 1 / 60, shifted), traj_line(t + 1 / 60, shifted)]
        lines.append(traj_line(t + jitter, synth.pose(i)))
    (root / "lowres_wide.traj").write_text("\n".join(sorted(lines, key=lambda s: float(s.split()[0]))) + "\n")
    return root


# --- COLMAP ------------------------------------------------------------------------------------

def colmap_array(depth: np.ndarray) -> bytes:
    """A COLMAP depth-map file: ``w&h&1&`` then float32 row-major."""
    h, w = depth.shape
    return f"{w}&{h}&1&".encode() + np.asarray(depth, "<f4").tobytes()


def write_colmap(root, synth: SyntheticScene, binary: bool = True, dense: bool = True, model: str = "PINHOLE",
                 subdir: str = "sparse", extra_params=()) -> Path:
    """A COLMAP workspace: images/ (PNG), a sparse model with one camera (pixel centres at +0.5) and
    world-to-camera poses as w-first quaternions, and either ``stereo/depth_maps/*.geometric.bin``
    (``dense``) or ``depth/*.npy``. Image ids are assigned in reverse name order."""
    from gasp_plugin.geometry.conventions import quaternion_from_rotation

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / subdir).mkdir(parents=True, exist_ok=True)
    K = synth.intrinsics(0)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5
    params = {"PINHOLE": [fx, fy, cx, cy], "SIMPLE_PINHOLE": [fx, cx, cy], "OPENCV": [fx, fy, cx, cy]}[model]
    params = params + list(extra_params)
    model_id = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "OPENCV": 4}[model]
    images = []
    n = len(synth)
    for i in range(n):
        name = f"IMG_{i:04d}.png"
        Image.fromarray(synth.image(i)).save(root / "images" / name)
        T = synth.pose(i)
        R_cw = T[:3, :3].T
        q, t = quaternion_from_rotation(R_cw), -R_cw @ T[:3, 3]
        images.append((n - i, name, q, t))
        if dense:
            (root / "stereo" / "depth_maps").mkdir(parents=True, exist_ok=True)
            (root / "stereo" / "depth_maps" / f"{name}.geometric.bin").write_bytes(colmap_array(synth.depth(i)))
        else:
            (root / "depth").mkdir(exist_ok=True)
            np.save(root / "depth" / f"IMG_{i:04d}.npy", synth.depth(i).astype(np.float32))
    model_dir = root / subdir
    if binary:
        cams = struct.pack("<Q", 1) + struct.pack("<iiQQ", 1, model_id, synth.width, synth.height)
        cams += struct.pack(f"<{len(params)}d", *params)
        (model_dir / "cameras.bin").write_bytes(cams)
        out = bytearray(struct.pack("<Q", n))
        for image_id, name, q, t in images:
            out += struct.pack("<i7di", image_id, *q, *t, 1) + name.encode() + b"\0"
            out += struct.pack("<Q", 2) + struct.pack("<ddqddq", 1.5, 2.5, -1, 3.5, 4.5, 7)
        (model_dir / "images.bin").write_bytes(bytes(out))
        (model_dir / "points3D.bin").write_bytes(struct.pack("<Q", 0))
    else:
        (model_dir / "cameras.txt").write_text(
            "# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
            f"1 {model} {synth.width} {synth.height} " + " ".join(repr(float(p)) for p in params) + "\n")
        lines = ["# Image list with two lines of data per image:", "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME"]
        for k, (image_id, name, q, t) in enumerate(images):
            lines.append(" ".join([str(image_id), *(repr(float(v)) for v in (*q, *t)), "1", name]))
            lines.append("" if k % 2 else "1.5 2.5 -1 3.5 4.5 7")  # keypoint lines, some empty
        (model_dir / "images.txt").write_text("\n".join(lines) + "\n")
        (model_dir / "points3D.txt").write_text("")
    return root


# --- ScanNet++ iPhone --------------------------------------------------------------------------

def write_scannetpp(root, synth: SyntheticScene, depth: SyntheticScene | None = None, colour: str = "frames",
                    depth_store: str = "png", first: int = 0) -> Path:
    """``root/iphone/``: pose_intrinsic_imu.json (aligned_pose = the true camera-to-world, pose = a
    far-away decoy), colour as ``rgb/frame_N.jpg`` or an ``rgb.mp4`` video, depth (``depth``'s
    frames, default ``synth``'s) as ``depth/frame_N.png``, a per-frame raw-deflate float32
    ``depth.bin`` (``"bin"``) or a per-frame lz4 uint16 millimetre one (``"bin_lz4"``). JSON keys
    start at frame ``first``; the video and depth.bin hold frames from 0."""
    depth = depth or synth
    ip = Path(root) / "iphone"
    ip.mkdir(parents=True, exist_ok=True)
    n = len(synth)
    meta = {}
    for i in range(n):
        key = f"frame_{first + i:06d}"
        decoy = synth.pose(i).copy()
        decoy[:3, 3] += 50.0
        meta[key] = {"timestamp": (first + i) / 60, "intrinsic": synth.intrinsics(i).tolist(),
                     "pose": decoy.tolist(), "aligned_pose": synth.pose(i).tolist(), "imu": {}}
        if colour == "frames":
            (ip / "rgb").mkdir(exist_ok=True)
            (ip / "rgb" / f"{key}.jpg").write_bytes(jpeg_bytes(synth.image(i)))
        if depth_store == "png":
            write_png_depth(ip / "depth" / f"{key}.png", depth.depth(i))
    (ip / POSE_JSON).write_text(json.dumps(meta))
    if depth_store in ("bin", "bin_lz4"):
        out = bytearray()
        for i in [0] * first + list(range(n)):
            if depth_store == "bin":
                c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
                blob = c.compress(depth.depth(i).astype("<f4").tobytes()) + c.flush()
            else:
                import lz4.block

                mm = np.round(depth.depth(i).astype(np.float64) * 1000).astype("<u2")
                blob = lz4.block.compress(mm.tobytes(), store_size=False)
            out += struct.pack("<I", len(blob)) + blob
        (ip / "depth.bin").write_bytes(bytes(out))
    if colour == "video":
        import av

        with av.open(str(ip / "rgb.mp4"), "w") as vid:
            stream = vid.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = synth.width, synth.height, "yuv420p"
            stream.options = {"crf": "10"}
            for i in [0] * first + list(range(n)):
                for packet in stream.encode(av.VideoFrame.from_ndarray(synth.image(i), format="rgb24")):
                    vid.mux(packet)
            for packet in stream.encode():
                vid.mux(packet)
    return Path(root)


POSE_JSON = "pose_intrinsic_imu.json"
