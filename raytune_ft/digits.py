"""Write the demo data and model for image classification on a CPU.

    python -m raytune_ft.digits data

writes `data/digits/{train,val}/<digit>/<n>.png`: scikit-learn's bundled UCI handwritten
digits (1,797 8x8 grey images, 10 classes), split 80/20 with a fixed seed, so that the
experiment reads them through the same ImageFolder reader as a user's folder; and
`data/resnet-digits/`: a small ResNet (`ResNetConfig`, BatchNorm in every block) with weights
drawn from a fixed seed, saved with its image processor. It is *not* pretrained: no
pretrained vision weights can be installed on this machine. A real run names a pretrained hub
model (e.g. `microsoft/resnet-50`) instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SPLIT_SEED = 0
EVAL_SHARE = 0.2
IMAGE_SIZE = 32  # the processor resizes the 8x8 digits to this


def write_digits(out: Path, seed: int = SPLIT_SEED) -> tuple[int, int]:
    """The digits as an ImageFolder tree under `out` (train/ and val/); returns the sizes."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * 255 / 16).astype(np.uint8)  # 0..16 grey levels
    order = np.random.default_rng(seed).permutation(len(pixels))
    n_eval = round(EVAL_SHARE * len(pixels))
    splits = {"val": order[:n_eval], "train": order[n_eval:]}
    for split, indices in splits.items():
        for index in indices:
            folder = out / split / str(digits.target[index])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[index], mode="L").save(folder / f"{index:04d}.png")
    return len(splits["train"]), len(splits["val"])


def write_model(out: Path, seed: int = 0) -> None:
    """A small ResNet with seeded random weights and its image processor (not pretrained)."""
    import torch
    from transformers import ResNetConfig, ResNetModel
    from transformers.models.convnext import ConvNextImageProcessorPil
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = ResNetConfig(num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128],
                          depths=[1, 1, 1], layer_type="basic", downsample_in_first_stage=False)
    torch.manual_seed(seed)
    ResNetModel(config).save_pretrained(out)  # the body; each trial adds its own head
    processor = ConvNextImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_pct=1.0,
                                          image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write digits/ and resnet-digits/ into")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if (out / "digits").exists() or (out / "resnet-digits").exists():
        print(f"{out}/digits or {out}/resnet-digits exists; remove it to write them again")
        return 2
    n_train, n_eval = write_digits(out / "digits")
    write_model(out / "resnet-digits")
    print(f"wrote {out / 'digits'} ({n_train} train, {n_eval} val images) and "
          f"{out / 'resnet-digits'} (ResNet from ResNetConfig, seeded random weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
