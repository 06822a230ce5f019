"""Image classification: one image, one class (an ImageFolder tree or a table of images).

The driver decodes every image once and runs the model's `AutoImageProcessor` for its
geometry only (resize, centre crop), storing uint8 arrays (N, C, H, W) that Ray's object store
shares with every trial; refused when larger than `data.max_object_store_mb`. A batch stays
uint8 on the host (the loop keeps the eval batches for the whole trial) and is rescaled and
normalised on the device (the processor's factor, mean and std); training batches are
augmented: a random resized crop (`data.random_crop_scale`) and a horizontal flip
(`data.horizontal_flip`). Augmentation draws from a generator per sample seeded by the sample's
index and the step's position (the loop seeds torch by position before collating), so a
restore continues bit for bit. Metrics: accuracy, top-5 accuracy (more than 5 classes) and
macro F1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from raytune_ft.errors import ConfigError, ModelError
from raytune_ft.tasks import DataBundle, Metric, Task, label_list, summed_cross_entropy
from raytune_ft.tasks._images import (
    SIXTEEN_BIT,
    ImageItem,
    convert,
    label_names,
    mode_counts,
    open_image,
    read_items,
)

if TYPE_CHECKING:
    import torch

    from raytune_ft.config import DataConfig

log = logging.getLogger(__name__)
ENCODE_CHUNK = 256  # images decoded and resized at once in the driver
MB = 2**20


@dataclass
class ImageSplit:
    """A split as uint8 pixels and labels, with how a batch is normalised and augmented."""

    pixels: np.ndarray  # uint8 (N, C, H, W), the processor's size
    labels: np.ndarray  # int64
    rescale: float  # the processor's rescale factor (1/255), 1.0 if it does not rescale
    mean: np.ndarray  # float32 (C,), zeros if it does not normalise
    std: np.ndarray  # float32 (C,), ones if it does not normalise
    crop_scale: float | None = None  # training split: least area of the random resized crop
    flip: bool = False  # training split: flip half the images
    modes: dict | None = None  # image modes read -> count (before conversion)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.ones(len(self.labels), dtype=np.int64)  # one size: no length grouping

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes + self.labels.nbytes


def load_processor(path: str):
    from transformers import AutoImageProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "falls back to the PIL backend" without torchvision
    try:
        return AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as error:
        from raytune_ft.training.model import _why

        raise ModelError(f"model.name: cannot load an image processor from {path!r} "
                         f"(preprocessor_config.json): {_why(path, error)}") from None


def channels(path: str) -> int:
    from transformers import AutoConfig

    try:
        return int(getattr(AutoConfig.from_pretrained(path), "num_channels", 3))
    except (OSError, ValueError) as error:
        raise ModelError(f"model.name: cannot read the config of {path!r}: {error}") from None


def _geometry(processor, images: list) -> np.ndarray:
    """The processor's resize and crop, without its rescale and normalisation: uint8."""
    out = processor(images, do_rescale=False, do_normalize=False, return_tensors="np")
    pixels = np.asarray(out["pixel_values"])
    return pixels if pixels.dtype == np.uint8 else np.clip(np.rint(pixels), 0, 255).astype(
        np.uint8)


def encode(items: list[ImageItem], processor, mode: str, field: str, limit_mb: float,
           other_bytes: int = 0) -> tuple[np.ndarray, dict]:
    """Decode and resize every image into one uint8 array; refuse before filling memory
    when the split (with `other_bytes` already encoded) would pass `limit_mb`."""
    pixels = None
    modes: dict[str, int] = {}
    for start in range(0, len(items), ENCODE_CHUNK):
        chunk = items[start:start + ENCODE_CHUNK]
        images = [open_image(item, field) for item in chunk]
        for name, count in mode_counts(images).items():
            modes[name] = modes.get(name, 0) + count
        images = [convert(image, mode, item, field) for image, item in zip(images, chunk)]
        try:
            block = _geometry(processor, images)
        except ValueError as error:
            raise ConfigError(f"{field}: the model's image processor cannot take these "
                              f"images ({error})") from None
        if pixels is None:
            size = other_bytes + len(items) * block[0].nbytes
            if size > limit_mb * MB:
                raise ConfigError(f"data.max_object_store_mb: the encoded splits take "
                                  f"{size / MB:.1f} MB ({len(items)} images of "
                                  f"{'x'.join(map(str, block.shape[1:]))} uint8 in {field}), "
                                  f"above the limit {limit_mb:g} MB; raise it or subset "
                                  "the data")
            pixels = np.empty((len(items), *block.shape[1:]), dtype=np.uint8)
        if block.shape[1:] != pixels.shape[1:]:
            raise ConfigError(f"{field}: the model's image processor gives images of "
                              f"different sizes ({block.shape[1:]} and {pixels.shape[1:]}); "
                              "give it a fixed crop size")
        pixels[start:start + len(chunk)] = block
    return pixels, modes


def _subset(items: list[ImageItem], limit: int | None, seed: int) -> list[ImageItem]:
    if limit is None or limit >= len(items):
        return items
    keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:limit])
    return [items[i] for i in keep]


def build_splits(data: DataConfig, model_path: str) -> tuple[ImageSplit, ImageSplit, list[str]]:
    processor = load_processor(model_path)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels(model_path))
    if mode is None:
        raise ModelError(f"model.name: {model_path} takes {channels(model_path)} channels; "
                         "images can be read for 1, 3 or 4")
    train_items = read_items(data.train_file, "data.train_file", data.image_column,
                             data.label_column)
    eval_items = read_items(data.eval_file, "data.eval_file", data.image_column,
                            data.label_column)
    names = label_names(train_items, eval_items, "data.eval_file")
    train_items = _subset(train_items, data.max_train_samples, data.subset_seed)
    eval_items = _subset(eval_items, data.max_eval_samples, data.subset_seed)
    log.info("encoding %d train and %d eval images", len(train_items), len(eval_items))
    index = {name: i for i, name in enumerate(names)}
    do_rescale = getattr(processor, "do_rescale", True)
    rescale = float(getattr(processor, "rescale_factor", 1 / 255)) if do_rescale else 1.0
    count = len(mode)
    if getattr(processor, "do_normalize", False):
        mean = np.resize(np.asarray(processor.image_mean, dtype=np.float32), count)
        std = np.resize(np.asarray(processor.image_std, dtype=np.float32), count)
    else:
        mean, std = np.zeros(count, np.float32), np.ones(count, np.float32)
    splits = []
    used = 0
    for items, field in ((train_items, "data.train_file"), (eval_items, "data.eval_file")):
        pixels, modes = encode(items, processor, mode, field, data.max_object_store_mb, used)
        used += pixels.nbytes
        labels = np.array([index[item.label] for item in items], dtype=np.int64)
        splits.append(ImageSplit(pixels, labels, rescale, mean, std, modes=modes))
    train, dev = splits
    train.crop_scale, train.flip = data.random_crop_scale, data.horizontal_flip
    return train, dev, names


# ---------------------------------------------------------------------------- trial


def augment(image: torch.Tensor, rng: np.random.Generator, crop_scale: float | None,
            flip: bool) -> torch.Tensor:
    """A random resized crop (area share in [crop_scale, 1], aspect ratio in [3/4, 4/3], back
    to the full size) and a horizontal flip with probability 1/2, of one (C, H, W) image."""
    import torch

    _, height, width = image.shape
    if crop_scale is not None and crop_scale < 1.0:
        area = rng.uniform(crop_scale, 1.0) * height * width
        ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        w = min(width, max(1, round(float(np.sqrt(area * ratio)))))
        h = min(height, max(1, round(float(np.sqrt(area / ratio)))))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = image[None, :, top:top + h, left:left + w]
        image = torch.nn.functional.interpolate(crop, size=(height, width), mode="bilinear",
                                                align_corners=False)[0]
    if flip and rng.random() < 0.5:
        image = image.flip(-1)
    return image


def collate(split: ImageSplit, indices: np.ndarray, augmented: bool) -> dict:
    """The images at `indices`, augmented on a training split, with what normalises them.

    `pixels` stay uint8 unless cropped (a crop's interpolation gives float32 on the same
    0-255 scale; a flip alone keeps uint8), and `normalize` holds the processor's rescale,
    mean and std as one (2, C) float32 tensor: `forward` normalises on the device
    (`pixel_values`). The loop keeps the collated eval batches for the whole trial, so they
    stay the size of the shared uint8 array, not 4x as float32.

    Each sample's augmentation generator is seeded by its index and one number drawn from
    torch's generator, which the loop seeds by the step's position before collating each
    micro-batch: the same sample at the same position is augmented the same way, whatever
    micro-batch or worker it lands in, and in a restored trial too.
    """
    import torch

    pixels = torch.from_numpy(split.pixels[indices])  # a copy: the object store is read-only
    if augmented and (split.flip or split.crop_scale is not None):
        step_seed = int(torch.randint(0, 2**31 - 1, ()))
        # only a crop interpolates: flipping alone keeps uint8 (a quarter of the bytes)
        cropped = split.crop_scale is not None and split.crop_scale < 1.0
        pixels = torch.stack([augment(image, np.random.default_rng([step_seed, int(index)]),
                                      split.crop_scale, split.flip)
                              for image, index in zip(pixels.float() if cropped else pixels,
                                                      indices)])
    # (x * rescale - mean) / std == x * (rescale / std) - mean / std
    normalize = torch.from_numpy(np.stack([split.rescale / split.std, split.mean / split.std]
                                          ).astype(np.float32))
    return {"pixels": pixels, "labels": torch.from_numpy(split.labels[indices]),
            "normalize": normalize}


def pixel_values(batch: dict) -> torch.Tensor:
    """The model's input: a collated batch's pixels rescaled and normalised as the image
    processor does (in float32, or float64 for float64 pixels)."""
    import torch

    pixels = batch["pixels"]
    pixels = pixels.to(torch.promote_types(pixels.dtype, torch.float32))
    scale, shift = batch["normalize"].to(pixels.dtype)[:, None, :, None, None]
    return pixels * scale - shift


def image_metrics(top: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy, macro F1 over the classes in the labels or the predictions (a class absent
    from both would count 0), and top-5 accuracy where there are more than 5 classes; `top`
    holds each example's best classes, best first."""
    from sklearn.metrics import f1_score

    metrics = {"eval_accuracy": float(np.mean(top[:, 0] == labels)),
               "eval_macro_f1": float(f1_score(labels, top[:, 0], average="macro",
                                               zero_division=0.0))}
    if num_labels > 5:
        metrics["eval_top5"] = float(np.mean((top[:, :5] == labels[:, None]).any(axis=1)))
    return metrics


class ImageClassification(Task):
    name = "image_classification"
    data_fields = ("image_column", "random_crop_scale", "horizontal_flip", "max_object_store_mb")
    metrics = (Metric("eval_accuracy", "max", 0.0), Metric("eval_top5", "max", 0.0),
               Metric("eval_macro_f1", "max", 0.0))
    pipeline_tag = "image-classification"
    auto_class = "AutoModelForImageClassification"

    def load_data(self, data: DataConfig, model_path: str, max_length: int) -> DataBundle:
        train, dev, names = build_splits(data, model_path)
        reported = ["eval_accuracy", "eval_loss", "eval_macro_f1"]
        if len(names) > 5:
            reported.append("eval_top5")
        return DataBundle(train, dev, names, 0, data_name(data.train_file), reported,
                          self.name)

    def check_data(self, data: DataConfig) -> None:
        import importlib.util

        if importlib.util.find_spec("PIL") is None:
            raise ValueError("data.kind image_classification needs Pillow to read images: "
                             "pip install 'raytune-ft[images]'")
        if data.train_file is None:
            raise ValueError("data.train_file and data.eval_file are required with data.kind "
                             "image_classification (ImageFolder directories or tables)")
        tables = [p for p in (data.train_file, data.eval_file)
                  if Path(p).suffix.lower() in (".csv", ".jsonl", ".parquet")]
        if tables and (data.image_column is None or data.label_column is None):
            raise ValueError(f"data.image_column and data.label_column are required with a "
                             f"table of images ({tables[0]})")
        if data.text_columns:
            raise ValueError("data.text_columns: images have no text columns; "
                             "use data.image_column")

    def describe(self, bundle: DataBundle, shown: int = 20) -> list[tuple[str, str]]:
        labels = label_list(bundle.label_names, shown)
        train, dev = bundle.train, bundle.eval
        shape = "x".join(map(str, train.pixels.shape[1:]))
        size = (train.nbytes + dev.nbytes) / MB
        augment = []
        if train.crop_scale is not None:
            augment.append(f"random resized crop (area >= {train.crop_scale:g})")
        if train.flip:
            augment.append("horizontal flip")
        lines = [("labels", labels),
                 ("images", f"{shape} uint8; object store {size:.1f} MB (train "
                            f"{train.nbytes / MB:.1f}, eval {dev.nbytes / MB:.1f}); "
                            f"augmentation: {', '.join(augment) or 'none'}")]
        converted = _conversions(train.modes, dev.modes, shape.split("x")[0])
        if converted:
            lines.append(("modes", converted))
        return lines

    def warnings(self, bundle: DataBundle, data: DataConfig) -> list[str]:
        counts = np.bincount(bundle.train.labels, minlength=len(bundle.label_names))
        empty = [repr(name) for i, name in enumerate(bundle.label_names) if not counts[i]]
        if empty:  # only a subset can leave a class without examples
            return [f"no training example has class(es) {', '.join(empty)} (data."
                    f"max_train_samples {data.max_train_samples} left none)"]
        return []

    def load_model(self, path: str, label_names: list[str], seed: int) -> torch.nn.Module:
        """The pretrained body with a head for these classes (`training.model.
        load_pretrained`: a hub model's ImageNet head, of another size or other labels, is
        replaced by a fresh one from `seed`)."""
        from raytune_ft.training.model import load_pretrained

        return load_pretrained(self.auto_class, path, seed, label_names)

    def collate(self, data: DataBundle, split: ImageSplit, indices: np.ndarray) -> dict:
        return collate(split, indices, augmented=split is data.train)

    def forward(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return model(pixel_values=pixel_values(batch)).logits

    def loss_units(self, batch: dict) -> int:
        return len(batch["labels"])

    def loss(self, outputs: torch.Tensor, batch: dict, label_smoothing: float = 0.0
             ) -> torch.Tensor:
        return summed_cross_entropy(outputs, batch["labels"], label_smoothing)

    def predict(self, outputs: torch.Tensor, batch: dict) -> np.ndarray:
        k = min(5, outputs.shape[-1])
        return outputs.float().topk(k, dim=-1).indices.cpu().numpy()

    def compute_metrics(self, data: DataBundle, predictions: list[tuple[np.ndarray, np.ndarray]]
                        ) -> dict[str, float]:
        split = data.eval
        k = predictions[0][1].shape[1] if predictions else 1
        top = np.empty((len(split), k), dtype=np.int64)
        for indices, values in predictions:
            top[indices] = values
        return image_metrics(top, split.labels, len(data.label_names))

    def save_processor(self, model_path: str, out: str, max_length: int) -> None:
        load_processor(model_path).save_pretrained(out)

    def card_input(self, config) -> list[str]:
        """The processor's resize and crop, and the one image it cannot read as training did:
        16-bit greyscale, which it and the pipeline clip to white (`usage` scales it)."""
        return ["- input: images resized and cropped by the image processor saved here "
                "(preprocessor_config.json), as in training",
                "- 16-bit greyscale images: this image processor and "
                '`pipeline("image-classification")` given a file clip them to almost all '
                "white; read them as the Use section shows (their high byte, as in training)"]

    def usage(self) -> list[str]:
        """The pipeline on an image read as training read it (`_images.convert`): upright,
        and a 16-bit greyscale image scaled to 8 bits by its high byte, which the pipeline
        and the image processor cannot do (they would clip it at 255)."""
        return ["import numpy as np",
                "from PIL import Image, ImageOps",
                "from transformers import pipeline", "",
                'classify = pipeline("image-classification", model="<this folder>")',
                'image = ImageOps.exif_transpose(Image.open("photo.png"))',
                'if image.mode.startswith("I;16"):  # 16-bit greyscale: its high byte, as in '
                "training",
                "    image = Image.fromarray((np.asarray(image).astype(np.uint16) >> 8)"
                ".astype(np.uint8))",
                'classify(image)  # [{"label": ..., "score": ...}, ...]']


def data_name(train_file: str) -> str:
    """What the header and card call the data: an ImageFolder `digits/train` is `digits`."""
    path = Path(train_file).expanduser()
    if path.is_dir() and path.name.lower() in ("train", "training") and path.resolve().parent.name:
        return path.resolve().parent.name
    return path.stem


def _conversions(train: dict | None, dev: dict | None, channel_count: str) -> str:
    """Which image modes were converted, for the header ('' when all were already it)."""
    target = {"1": "L", "3": "RGB", "4": "RGBA"}.get(channel_count, "?")
    counts: dict[str, int] = {}
    for modes in (train or {}, dev or {}):
        for mode, n in modes.items():
            counts[mode] = counts.get(mode, 0) + n
    other = {mode: n for mode, n in counts.items() if mode != target}
    if not other:
        return ""
    read = ", ".join(f"{n} {mode}" for mode, n in sorted(counts.items()))
    scaled = " (16-bit greyscale by its high byte)" if set(counts) & set(SIXTEEN_BIT) else ""
    return f"images read as {read}; converted to {target}{scaled}"


TASK = ImageClassification()
