"""How a stored image's PIL mode is read: torch-free, so the API's registration checks count channels the
way the loaders decode them."""

from __future__ import annotations

# Modes read as another before their pixels are taken: a palette's indices are not colours, one bit is not
# a byte, alpha is not a channel a classifier reads, and CMYK or YCbCr are not RGB (a probe's palette and
# 1-bit PNGs read as indices and {0, 1/255}, its RGBA ones as four channels).
AS_MODE = {"1": "L", "LA": "L", "La": "L", "P": "RGB", "PA": "RGB", "RGBA": "RGB", "RGBa": "RGB",
           "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}  # fmt: skip
# What full intensity is in a mode's pixel values (8-bit modes: 255); floating-point pixels are as stored.
FULL_SCALE = {"I": 65535.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "F": 1.0}


def decoded_mode(mode: str) -> str:
    """The mode an image stored in ``mode`` is read in."""
    return AS_MODE.get(mode, mode)
