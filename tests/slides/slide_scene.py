"""Test scene for the slide tests: the same physical scene written at 0.25 and 0.5 µm/px.

Scene (512 x 512 µm): white background, an elliptical pink "tissue" blob, a red and a blue marker
square at known µm positions inside the tissue, and a green pen stroke across the top background.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import ellipse


SCENE_UM = 512.0
# ellipse centre / radii in µm (rows = y, cols = x)
BLOB = dict(cy=300.0, cx=256.0, ry=160.0, rx=200.0)
RED_UM = (160.0, 264.0)  # top-left (x, y) µm of the red marker, 8 x 8 µm
BLUE_UM = (300.0, 340.0)  # top-left (x, y) µm of the blue marker, 12 x 12 µm
RED_SIZE_UM, BLUE_SIZE_UM = 8.0, 12.0
PEN_Y_UM = (40.0, 70.0)  # a green pen stroke on the background
TISSUE_RGB = (222, 150, 196)
BG_RGB = (242, 242, 240)


def scene(mpp: float, pen: bool = True, seed: int = 0) -> np.ndarray:
    """The scene at ``mpp`` µm/px: RGB [H, W, 3] uint8."""
    n = int(round(SCENE_UM / mpp))
    img = np.empty((n, n, 3), np.uint8)
    img[:] = BG_RGB
    rr, cc = ellipse(BLOB["cy"] / mpp, BLOB["cx"] / mpp, BLOB["ry"] / mpp, BLOB["rx"] / mpp, shape=(n, n))
    img[rr, cc] = TISSUE_RGB
    rng = np.random.default_rng(seed)
    # faint texture so that the slide is not flat (JPEG, Otsu), identical in physical space
    noise = rng.integers(-6, 7, size=(n // 4 + 1, n // 4 + 1, 1))
    noise = np.repeat(np.repeat(noise, 4, 0), 4, 1)[:n, :n]
    img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    for (x, y), s, col in ((RED_UM, RED_SIZE_UM, (230, 20, 20)), (BLUE_UM, BLUE_SIZE_UM, (20, 20, 230))):
        img[int(y / mpp) : int((y + s) / mpp), int(x / mpp) : int((x + s) / mpp)] = col
    if pen:
        img[int(PEN_Y_UM[0] / mpp) : int(PEN_Y_UM[1] / mpp), int(60 / mpp) : int(450 / mpp)] = (89, 158, 115)
    return img


def in_blob(x_um: np.ndarray, y_um: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """Whether points (µm) lie inside the blob (ellipse scaled by ``margin``)."""
    return ((x_um - BLOB["cx"]) / (BLOB["rx"] * margin)) ** 2 + ((y_um - BLOB["cy"]) / (BLOB["ry"] * margin)) ** 2 <= 1


