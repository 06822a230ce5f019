"""Read the user's images: an ImageFolder tree or a table with an image column.

`data.train_file` / `data.eval_file` is either a directory laid out as `<class>/<image>`
(ImageFolder: the class is the folder's name) or a CSV / JSONL / Parquet file whose
`data.image_column` holds a path (relative to the file's folder) or the encoded image bytes
(as `datasets` writes an Image column: bytes, or a dict with `bytes` / `path`) and whose
`data.label_column` names the class. Every refusal is one line naming the file.

Image modes, read as transformers' pipeline reads a file (`load_image`: upright by its EXIF
orientation, then Pillow's `convert`) so that the exported model sees what the trials saw:
1, L, P, RGB, RGBA, LA, PA, CMYK, YCbCr, LAB, HSV are converted by Pillow to the model's
channels (L, RGB or RGBA): a palette by its colours, an alpha channel dropped (not
composited) when the model takes no alpha, CMYK by Pillow's formula (no ICC profile).
16-bit greyscale (I;16, I;16L, I;16B, I;16N: 16-bit PNG and TIFF) is scaled to 8 bits by its
high byte, as Pillow itself reads 16-bit RGB PNGs; Pillow's own `convert` would clip it at 255
(almost all white). 32-bit integer (I) and floating-point (F) images have no fixed range and
are refused, and so is a conversion Pillow lacks (LAB to L).
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raytune_ft.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")  # 16-bit greyscale: scaled to 8 bits
NO_RANGE = {"I": "32-bit integer", "F": "32-bit floating-point"}  # refused
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")


@dataclass
class ImageItem:
    """One example before decoding: where its image is (a path or bytes) and its class."""

    source: Path | bytes
    label: str
    where: str  # the path, or `file row N`, for messages


def read_items(path: str, field: str, image_column: str | None, label_column: str | None
               ) -> list[ImageItem]:
    """Every example of one split, in a fixed order (sorted classes and file names)."""
    location = Path(path).expanduser()
    if location.is_dir():
        return _image_folder(location, field)
    if not location.is_file():
        raise ConfigError(f"{field}: {location} does not exist")
    if location.suffix.lower() not in TABLE_SUFFIXES:
        raise ConfigError(f"{field}: {location} is neither an ImageFolder directory nor a "
                          f"table; allowed: a directory, {', '.join(TABLE_SUFFIXES)}")
    return _table(location, field, image_column, label_column)


def _image_folder(root: Path, field: str) -> list[ImageItem]:
    items: list[ImageItem] = []
    loose = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        raise ConfigError(f"{field}: {root / loose[0]} is not in a class folder (ImageFolder "
                          "layout: <class>/<image>)")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(f"{field}: {root} has no class folders (ImageFolder layout: "
                          "<class>/<image>)")
    for folder in classes:
        files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        for file in files:
            if file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
                raise ConfigError(f"{field}: {file} is not an image file (allowed: "
                                  f"{', '.join(IMAGE_SUFFIXES)})")
        if not files:
            raise ConfigError(f"{field}: class folder {folder} is empty")
        items += [ImageItem(file, folder.name, str(file)) for file in files]
    return items


def _read_table(path: Path, field: str):
    import pandas as pd

    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        if path.suffix.lower() == ".jsonl":
            return pd.read_json(path, lines=True)
        return pd.read_csv(path)
    except Exception as error:  # noqa: BLE001 - any parse error is the file's
        raise ConfigError(f"{field}: {path} cannot be read: {type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}") from None


def _table(path: Path, field: str, image_column: str | None, label_column: str | None
           ) -> list[ImageItem]:
    frame = _read_table(path, field)
    for key, column in (("data.image_column", image_column), ("data.label_column",
                                                               label_column)):
        if column not in frame.columns:
            raise ConfigError(f"{key}: {column!r} is not a column of {path}; columns: "
                              f"{', '.join(map(str, frame.columns))}")
    if frame.empty:
        raise ConfigError(f"{field}: {path} has no rows")
    items = []
    for row, (image, label) in enumerate(zip(frame[image_column], frame[label_column])):
        where = f"{path} row {row + 1}"
        if label is None or label != label:  # None or NaN
            raise ConfigError(f"{field}: {where} has no label in {label_column!r}")
        items.append(ImageItem(_image_source(image, path.parent, where, field),
                               _label_text(label), where))
    return items


def _label_text(label: Any) -> str:
    """Labels as text; 3.0 read by pandas from a column with gaps is the class '3'."""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


def _image_source(value: Any, folder: Path, where: str, field: str) -> Path | bytes:
    if isinstance(value, dict):  # a `datasets` Image column written to Parquet
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        return folder / value if not Path(value).is_absolute() else Path(value)
    raise ConfigError(f"{field}: {where}: image is {type(value).__name__}, allowed: a path "
                      "relative to the file, or the encoded image bytes")


def open_image(item: ImageItem, field: str) -> Image.Image:
    """Decode fully now, so a truncated file fails here with its path, not in a trial."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        source = io.BytesIO(item.source) if isinstance(item.source, bytes) else item.source
        image = Image.open(source)
        image.load()
    except Image.DecompressionBombError as error:
        raise ConfigError(f"{field}: {item.where}: image too large ({error})") from None
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ConfigError(f"{field}: {item.where}: unreadable image ({error})") from None
    # Camera JPEGs: upright as transformers' load_image (the pipeline) will read them.
    return ImageOps.exif_transpose(image)


def convert(image: Image.Image, mode: str, item: ImageItem, field: str) -> Image.Image:
    """`image` in `mode` (L, RGB or RGBA) as the module docstring says: 16-bit greyscale by
    its high byte, 32-bit integer and float refused in one line naming the file."""
    import numpy as np
    from PIL import Image

    if image.mode in NO_RANGE:
        raise ConfigError(f"{field}: {item.where}: a {NO_RANGE[image.mode]} image (mode "
                          f"{image.mode}) has no fixed range to read as 8 bits; allowed: 8-bit "
                          "or 16-bit images (convert it first)")
    if image.mode in SIXTEEN_BIT:
        image = Image.fromarray((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8))
    try:
        return image.convert(mode)
    except ValueError as error:  # e.g. LAB to L: Pillow has no such conversion
        raise ConfigError(f"{field}: {item.where}: a {image.mode} image cannot be read as "
                          f"{mode} ({error})") from None


def label_names(train: list[ImageItem], evaluation: list[ImageItem], field: str) -> list[str]:
    """The training classes, sorted (numerically where all are integers); an eval class that
    training lacks is refused."""
    names = sorted({item.label for item in train},
                   key=lambda x: (0, int(x), "") if x.lstrip("-").isdigit() else (1, 0, x))
    unknown = sorted({item.label for item in evaluation} - set(names))
    if unknown:
        raise ConfigError(f"{field}: class {unknown[0]!r} is not in data.train_file (its "
                          f"classes: {', '.join(names[:20])})")
    return names


def mode_counts(images: list[Image.Image]) -> Counter:
    return Counter(image.mode for image in images)
