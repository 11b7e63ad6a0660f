"""The ``images`` source: a folder per class (ImageFolder style), with ``train/`` and ``test/`` inside or
split deterministically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmflow.core.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")


def _class_files(root: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files, for each sub-folder of ``root``."""
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    files = {d.name: sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) for d in classes}
    empty = [name for name, paths in files.items() if not paths]
    if not files or empty:
        raise DataError(
            f"dataset.path={root}: need one sub-folder of images per class ({', '.join(IMAGE_SUFFIXES)});"
            f" {'no sub-folders' if not files else 'no images in ' + ', '.join(empty)}"
        )
    return files


def _read_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 [3, H, W] (RGB), resized to ``size`` = (H, W) when given."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except OSError as exc:
        raise DataError(f"dataset.path: cannot read image {path} ({exc})") from None


def _stack_images(files: list[Path], size: tuple[int, int] | None) -> np.ndarray:
    images = [_read_image(p, size) for p in files]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        first = next(p for p, im in zip(files, images) if im.shape != images[0].shape)
        raise DataError(
            f"dataset.path: images differ in size ({files[0].name} is {images[0].shape[1:]}, {first.name} is not);"
            " set dataset.image_size: [H, W] to resize them"
        )
    return np.stack(images)


def folder_arrays(
    path: str, image_size: list[int] | None, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, ...]:
    """(X_train uint8 [N, 3, H, W], y_train, X_test, y_test, train_ids, test_ids) of a folder per class, with
    ``train/`` and ``test/`` inside or split by ``test_fraction`` and ``seed``."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"dataset.path={root}: no such folder (need a folder per class, optionally inside train/ and test/)"
        )
    size = tuple(image_size) if image_size else None
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _class_files(root / "train"), _class_files(root / "test")
        unknown = sorted(set(test) - set(train))
        if unknown:
            raise DataError(f"dataset.path={root}: test/ has classes {', '.join(unknown)} that train/ lacks")
        names = sorted(train)
        pairs = {"train": train, "test": test}
    else:
        files = _class_files(root)
        names = sorted(files)
        rng = np.random.default_rng(np.random.SeedSequence((seed, 13)))
        pairs = {"train": {}, "test": {}}
        for name in names:
            is_test = rng.random(len(files[name])) < test_fraction
            pairs["train"][name] = [p for p, t in zip(files[name], is_test) if not t]
            pairs["test"][name] = [p for p, t in zip(files[name], is_test) if t]
    out = []
    for part in ("train", "test"):
        paths = [p for name in names for p in pairs[part].get(name, [])]
        labels = np.array([names.index(name) for name in names for _ in pairs[part].get(name, [])], dtype=np.int64)
        if not paths:
            raise DataError(f"dataset.path={root}: no {part} images (raise or lower dataset.test_fraction)")
        out += [_stack_images(paths, size), labels]
    return out[0], out[1], out[2], out[3], np.arange(len(out[1])), np.arange(len(out[3]))
