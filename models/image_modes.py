"""How a stored image's PIL mode is read: torch-free, so the API's registration checks count channels the
way the loaders decode them."""

from __future__ import annotations

from typing import Any

# Bumped whenever how stored files (images, texts) become tensors changes: what keeps rows read from them
# (the front's outputs, a version's test scores) keys by it, so nothing read the old way is mixed in.
# 2: palette colours, 1-bit and 16-bit scaling, CMYK/YCbCr as RGB (stop 60); 3: texts truncated and padded
# on the sides their tokenizer was saved with (stop 62), so scores kept from left-truncating tokenizers'
# rows read on the right are not reused
DECODING = 3

# Modes read as another before their pixels are taken: one bit is not a byte, and CMYK or YCbCr values
# are not RGB (a probe's 1-bit PNGs read as {0, 1/255}). Alpha stays a channel of its own, as before.
AS_MODE = {"1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB",
           "RGBa": "RGBA", "La": "LA", "PA": "RGBA"}  # fmt: skip
# What full intensity is in a mode's pixel values (8-bit modes: 255); floating-point pixels are as stored.
FULL_SCALE = {"I": 65535.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "F": 1.0}


def decoded_mode(img: Any) -> str:
    """The mode a PIL image is read in. A palette's indices are not colours (a probe's white palette
    image read as 0.0): it is read as its colours, grey where every colour is (as a PNG optimiser
    stores a greyscale image), and with alpha where it has transparency."""
    if img.mode == "P":
        if "transparency" in img.info:
            return "RGBA"
        palette = img.getpalette() or []
        grey = all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
        return "L" if grey else "RGB"
    return AS_MODE.get(img.mode, img.mode)
