"""What FFmpeg's own tools say about a file we produced (the yardstick, not our code)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["decode_errors", "ffprobe", "frame_sizes", "key_frames", "stream_types"]


def ffprobe(path: Path) -> dict[str, Any]:
    """The first video stream: codec_name, width, height and nb_read_frames (counted)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
         "stream=codec_name,width,height,nb_read_frames", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    stream: dict[str, Any] = json.loads(out.stdout)["streams"][0]
    return stream


def frame_sizes(path: Path) -> list[tuple[int, int]]:
    """Each video frame's size, in order (a stream that changes size mid-way shows it)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "frame=width,height", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [(f["width"], f["height"]) for f in json.loads(out.stdout)["frames"]]


def key_frames(path: Path) -> list[bool]:
    """Whether each decoded video frame is a key frame, in order."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "frame=key_frame", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [line.strip().rstrip(",") == "1" for line in out.stdout.split()]


def stream_types(path: Path) -> list[str]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "json",
         str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [s["codec_type"] for s in json.loads(out.stdout)["streams"]]


def decode_errors(path: Path) -> str:
    """What ``ffmpeg`` complains of while decoding the whole file ("" when clean)."""
    r = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return r.stderr.strip()
