"""Person detection with OpenCV's built-in HOG people detector (optional extra ``people``).

The model is compiled into OpenCV 4 (``cv2.HOGDescriptor_getDefaultPeopleDetector``):
nothing is downloaded at run time. OpenCV 5 dropped it, hence ``opencv-python-headless<5``
(or Debian's ``python3-opencv`` 4.x on a Pi). Without it, person detection is unavailable,
and GetCap's ``alarms.body`` is false (:func:`people_available`).

HOG looks for people at least its window high (128 px) in the picture it is given, so the
picture's height decides both the cost and the smallest person found: at
:data:`PEOPLE_ROWS` (240) a person must stand at least about half the picture high (a
door, a porch, a hallway); bench/motion.py measures the cost per call.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PEOPLE_MISSING",
    "PEOPLE_ROWS",
    "PeopleDetector",
    "Person",
    "people_available",
    "score_threshold",
]

log = logging.getLogger("hss_pu.media.people")

PEOPLE_ROWS = 240  # the picture HOG is run on, in rows (the Pi's lores is 240 high)
PEOPLE_MISSING = (
    "person detection needs OpenCV 4 (pip install 'hss-pu[people]', or on Raspberry Pi OS "
    "apt install python3-opencv)"
)


@functools.cache
def _cv2() -> Any:
    """OpenCV, if it is importable and still has the HOG people detector; else None.
    Where OpenCV is not installed this costs a path search, not an import (~17 MB)."""
    if importlib.util.find_spec("cv2") is None:
        return None
    try:
        import cv2
    except ImportError:
        return None
    if not hasattr(cv2, "HOGDescriptor_getDefaultPeopleDetector"):  # OpenCV 5
        log.info("OpenCV %s has no HOG people detector", getattr(cv2, "__version__", "?"))
        return None
    return cv2


def people_available() -> bool:
    """Whether person detection can run here (GetCap ``alarms.body``)."""
    return _cv2() is not None


def score_threshold(sensitivity: int) -> float:
    """The HOG score a person must reach: 1.5 at sensitivity 0, 0.5 at 50, 0 at 100
    (linear between; 0 is OpenCV's own default and the lowest it reports)."""
    s = min(100, max(0, int(sensitivity)))
    return 1.5 - 0.02 * s if s <= 50 else 0.5 - 0.01 * (s - 50)


@dataclass(frozen=True, slots=True)
class Person:
    x: int
    y: int
    w: int
    h: int
    score: float


class PeopleDetector:
    """One HOG descriptor with the built-in people model; not thread-safe (one worker
    thread calls :meth:`detect`). Raises RuntimeError when OpenCV is missing."""

    def __init__(self, *, scale: float = 1.05) -> None:
        cv2 = _cv2()
        if cv2 is None:
            raise RuntimeError(PEOPLE_MISSING)
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.scale = scale

    def detect(self, gray: np.ndarray, threshold: float = 0.5) -> list[Person]:
        """The people in a grey picture (uint8, 2-D) scoring at least ``threshold``."""
        if gray.ndim != 2 or gray.shape[0] < 128 or gray.shape[1] < 64:
            return []
        rects, weights = self._hog.detectMultiScale(
            np.ascontiguousarray(gray), winStride=(8, 8), scale=self.scale
        )
        found = [
            Person(int(x), int(y), int(w), int(h), float(s))
            for (x, y, w, h), s in zip(rects, np.ravel(weights), strict=False)
        ]
        return [p for p in found if p.score >= threshold]
