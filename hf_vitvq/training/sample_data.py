"""The embedded default data: colour photos that ship inside scikit-image's wheel (no download)."""

from __future__ import annotations

from PIL import Image

# Colour sample photos bundled with scikit-image that load offline (others need a download).
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)


def skimage_photos(names: tuple[str, ...] = SKIMAGE_PHOTOS) -> list[tuple[str, Image.Image]]:
    """Load scikit-image's bundled colour photos as (name, RGB PIL image) pairs."""
    try:
        from skimage import data
    except ImportError as error:
        raise ImportError(
            "The embedded demo data are scikit-image's sample photos: `pip install scikit-image`."
        ) from error
    photos = []
    for name in names:
        array = getattr(data, name)()
        if name == "stereo_motorcycle":  # returns (left, right, disparity)
            array = array[0]
        photos.append((name, Image.fromarray(array).convert("RGB")))
    return photos
