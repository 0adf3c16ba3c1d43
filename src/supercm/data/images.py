"""Image datasets read from a data root: the Office benchmarks and a user's own folders (issue 12 §1–2).

Benchmarks (``data.name`` / ``data.target``, each a domain; ``data.root`` holds the dataset folder)::

    office31_amazon  office31_dslr  office31_webcam                              31 classes
    officehome_art  officehome_clipart  officehome_product  officehome_real_world  65 classes
    imageclef_c  imageclef_i  imageclef_p                                        12 classes
    office_caltech_amazon  office_caltech_caltech  office_caltech_dslr  office_caltech_webcam  10 classes

The layouts (folders, ``path label`` lists), the benchmarks' class lists and how a domain is found are in
:mod:`supercm.data.layouts`.

``image_folder`` is a user's own images: ``data.options.source`` (a folder with a sub-folder per
class, or a list file), ``data.options.target`` (a folder of images in any layout: no labels are
read) and optionally ``data.options.test`` (labelled images of the target, by class sub-folder or
list, in the source's classes; without it no target test accuracy exists and none is reported).
``data.name: image_folder`` with ``data.target: image_folder`` trains domain adaptation — or
semi-supervised learning with a separate unlabeled folder: the trainer treats both alike (every
labeled image outside validation labeled, the unlabeled folder the unlabeled set). Without
``data.target`` the source folder alone is an SSL dataset split by ``data.num_labeled``. Relative
paths in these options are read from ``data.root`` (the working directory when it is unset).

Pixels. Every image is decoded once (Pillow, RGB), resized to ``size × size`` with Pillow's
default filter, bicubic (the field's ``ResizeImage(256)`` calls ``img.resize((256, 256))``), and
kept as uint8 (N, 3, size, size) — Office-Home at 256 px is 3 GB, not the 9 GB of float32 at 224. The decoded array is cached under ``cache_dir``
keyed by the SHA-256 of (every path, its byte size and modification time, ``size``, the resize
method), written atomically, and reused by every later run and seed. Training batches get the
field's transform on the device (:class:`~supercm.data.augment.Augment` ``resized_crop`` + ``flip``:
RandomResizedCrop(crop) and a horizontal flip drawn from the trainer's generator, so resume is
exact); the model's input stage (:class:`~supercm.models.ImageInput`) centre-crops uint8 images to
``crop`` (the test transform) and applies the ImageNet normalisation to both.

Unreadable or truncated images are reported by path: ``data.options.bad_images: fail`` (default)
stops with the list; ``skip`` leaves them out and warns with their count and paths.

Two pipelines (``data.options.pipeline``). ``memory`` (default) is the decoded uint8 cache above:
for datasets whose pixels fit in memory (Office-31, Office-Home, ImageCLEF at 256 px: 3 GB at most).
``stream`` keeps only the file list: batches are decoded from disk by DataLoader worker processes
(``data.options.workers``, default the CPU count up to 8; ``prefetch`` reads ahead per worker), with
the same :func:`decode_one`, so both pipelines train identically, bit for bit, and resume exactly
(:mod:`supercm.data.stream`). ``workers`` in the memory pipeline is the number of decoding threads
of the cache build (unset or 0: the CPU count up to 8).

The field's protocol is transductive: a domain's test set is all of its images (the target test
set = the unlabeled target training images; their labels are read for evaluation only).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..fileio import atomic_write
from .base import ArrayDataset, DomainPair, resolve_root
from .decode import (  # noqa: F401  (BadImageError, decode_one, cache_key, default_cache_dir: re-exported)
    RESIZE_METHOD,
    BadImageError,
    cache_key,
    decode_noted,
    decode_one,
    default_cache_dir,
    default_workers,
    listing,
    scan_images,
    warn_cache_unwritable,
    warn_converted,
)
from .layouts import (  # noqa: F401  (the class lists and list reading: re-exported)
    BENCHMARKS,
    IMAGE_EXTENSIONS,
    LAYOUTS,
    OFFICE31_CLASSES,
    OFFICE_CALTECH_CLASSES,
    OFFICEHOME_CLASSES,
    Benchmark,
    DatasetLayoutError,
    ImageList,
    locate_domain,
    read_image_list,
    read_labeled,
    scan_class_folders,
    scan_unlabeled,
)
from .stream import PIPELINES, ImageStore

#: torchvision's ImageNet normalisation (what every ImageNet-pretrained backbone expects).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BAD_IMAGES = ("fail", "skip")


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise




def decode_images(paths: list[Path], size: int, *, cache_dir: str | os.PathLike | None = None, cache: bool = True,
                  bad_images: str = "fail", workers: int | None = None, progress: bool = True,
                  what: str = "images") -> tuple[torch.Tensor, list[int]]:
    """uint8 (N', 3, size, size) and the indices into ``paths`` of the N' images kept.

    Decoded in threads (Pillow releases the GIL) with a progress bar, or read from the cache.
    An image that cannot be decoded is reported by path: ``bad_images="fail"`` raises
    :class:`BadImageError` listing them, ``"skip"`` leaves them out and warns.
    """
    if bad_images not in BAD_IMAGES:
        raise ValueError(f"data.options.bad_images must be one of {', '.join(BAD_IMAGES)}, got {bad_images!r}")
    if size < 1:
        raise ValueError(f"data.options.size must be ≥ 1, got {size}")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = cache_key(paths, size)
    array_path, meta_path = folder / f"{key[:32]}.npy", folder / f"{key[:32]}.json"
    meta = None
    if cache and array_path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            array = np.load(array_path, allow_pickle=False)
            if meta.get("key") != key or array.shape != (len(meta["kept"]), 3, size, size) or array.dtype != np.uint8:
                meta = None
        except (OSError, ValueError, KeyError):
            meta = None  # a damaged cache entry is rebuilt
    if meta is None:
        array = np.empty((len(paths), 3, size, size), dtype=np.uint8)
        ok = np.zeros(len(paths), dtype=bool)
        bad: list[list[str]] = []

        notes: list[list[str]] = []

        def work(i: int):
            try:
                return i, *decode_noted(paths[i], size), None
            except Exception as exc:  # truncated, unreadable, not an image: reported by path
                return i, None, None, f"{type(exc).__name__}: {exc}"

        n_workers = workers or default_workers()
        with concurrent.futures.ThreadPoolExecutor(n_workers) as pool, \
                tqdm(total=len(paths), desc=f"decoding {what} to {size}px", disable=not progress, leave=False) as bar:
            for i, img, note, err in pool.map(work, range(len(paths)), chunksize=16):
                if err is None:
                    array[i], ok[i] = img, True
                    if note:
                        notes.append([str(paths[i]), note])
                else:
                    bad.append([str(paths[i]), err])
                bar.update(1)
        kept = np.flatnonzero(ok).tolist()
        if len(kept) < len(paths):
            array = array[ok]
        meta = {"key": key, "size": size, "resize": RESIZE_METHOD, "kept": kept, "bad": bad, "count": len(paths),
                "notes": notes}
        if cache and kept:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                _atomic_save_npy(array_path, np.ascontiguousarray(array))
                atomic_write(meta_path, json.dumps(meta))
            except OSError as exc:  # the decoded pixels are kept and used: only the reuse is lost
                warn_cache_unwritable(folder, exc)
    warn_converted(meta.get("notes") or [], len(paths), what)
    bad = meta["bad"]
    if bad:
        listed = listing(bad)
        if bad_images == "fail":
            raise BadImageError(f"{len(bad)} of {len(paths)} {what} cannot be decoded: {listed}. Replace them, or "
                                f"set data.options.bad_images=skip to leave them out")
        warnings.warn(f"{what}: left out {len(bad)} of {len(paths)} images that cannot be decoded: {listed}", stacklevel=2)
    if not meta["kept"]:
        raise BadImageError(f"none of the {len(paths)} {what} can be decoded")
    return torch.from_numpy(array), list(meta["kept"])


# --------------------------------------------------------------------------- datasets


def field_transforms(crop: int) -> tuple[dict, dict]:
    """(augment, input_transform) of the field's protocol: RandomResizedCrop(crop) + flip on the
    size×size images, ImageNet normalisation; the test transform centre-crops ``crop``."""
    return ({"resized_crop": crop, "flip": True},
            {"crop": crop, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)})


def _check_sizes(size: int, crop: int) -> None:
    if crop < 1 or crop > size:
        raise ValueError(f"data.options.crop must be in [1, data.options.size={size}], got {crop}")


def _check_pipeline(pipeline: str, prefetch: int, workers: int | None) -> None:
    if pipeline not in PIPELINES:
        raise ValueError(f"data.options.pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    if workers is not None and workers < 0:
        raise ValueError(f"data.options.workers must be ≥ 0, got {workers}")
    if prefetch < 1:
        raise ValueError(f"data.options.prefetch must be ≥ 1, got {prefetch}")


def _decode(images: ImageList, size: int, what: str, *, pipeline: str = "memory", prefetch: int = 2,
            **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, labels) of ``images``: a uint8 tensor (memory pipeline) or an
    :class:`~supercm.data.stream.ImageStore` of the same rows (stream pipeline)."""
    if pipeline == "stream":
        return _stream(images, size, what, prefetch=prefetch, **kw)
    x, kept = decode_images(images.paths, size, what=what, **kw)
    y = torch.tensor([images.labels[i] for i in kept], dtype=torch.long)
    return x, y


def _stream(images: ImageList, size: int, what: str, *, prefetch: int, cache_dir=None, cache: bool = True,
            bad_images: str = "fail", workers: int | None = None, progress: bool = True):
    """The stream pipeline's store of ``images``: nothing decoded here, except with ``bad_images=skip``,
    which decodes every file once to leave out the bad ones as :func:`decode_images` does."""
    if bad_images not in BAD_IMAGES:
        raise ValueError(f"data.options.bad_images must be one of {', '.join(BAD_IMAGES)}, got {bad_images!r}")
    kept = list(range(len(images.paths)))
    if bad_images == "skip":
        bad = scan_images(images.paths, size, cache_dir=cache_dir, cache=cache, workers=workers, progress=progress,
                          what=what)
        if bad:
            gone = {p for p, _ in bad}
            kept = [i for i, p in enumerate(images.paths) if str(p) not in gone]
            listed = listing(bad)
            warnings.warn(f"{what}: left out {len(bad)} of {len(images.paths)} images that cannot be decoded: {listed}",
                          stacklevel=2)
        if not kept:
            raise BadImageError(f"none of the {len(images.paths)} {what} can be decoded")
    store = ImageStore([images.paths[i] for i in kept], size, workers=workers, prefetch=prefetch, what=what)
    return store, torch.tensor([images.labels[i] for i in kept], dtype=torch.long)


def load_benchmark_domain(bench: str, domain: str, root: str | os.PathLike | None = None, *, size: int = 256,
                          crop: int = 224, layout: str = "auto", lists: dict | None = None,
                          cache_dir: str | None = None, cache: bool = True, bad_images: str = "fail",
                          workers: int | None = None, progress: bool = True, pipeline: str = "memory",
                          prefetch: int = 2) -> ArrayDataset:
    """One domain of a benchmark: every image is both its training and its test set (the field's
    transductive protocol), uint8 (N, 3, size, size)."""
    b = BENCHMARKS[bench]
    if layout not in LAYOUTS:
        raise ValueError(f"data.options.layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    _check_sizes(size, crop)
    _check_pipeline(pipeline, prefetch, workers)
    root = resolve_root(root)
    images = locate_domain(b, domain, root, layout, lists)
    name = f"{bench}_{domain}"
    x, y = _decode(images, size, name, cache_dir=cache_dir, cache=cache, bad_images=bad_images,
                   workers=workers, progress=progress, pipeline=pipeline, prefetch=prefetch)
    augment, transform = field_transforms(crop)
    return ArrayDataset(name, x, y, x, y, len(b.classes), augment, transform, list(b.classes))


def _empty(size: int, pipeline: str = "memory", **kw):
    if pipeline == "stream":
        return ImageStore([], size, workers=kw.get("workers"), prefetch=kw.get("prefetch", 2)), torch.empty(0, dtype=torch.long)
    return torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.long)


def load_image_folder(root: str | os.PathLike | None = None, *, source: str | None = None, target: str | None = None,
                      test: str | None = None, size: int = 256, crop: int = 224, cache_dir: str | None = None,
                      cache: bool = True, bad_images: str = "fail", workers: int | None = None,
                      progress: bool = True, pipeline: str = "memory", prefetch: int = 2) -> ArrayDataset:
    """A user's labelled images (``source``: class sub-folders or a list) as an SSL dataset; ``test``
    (optional, same classes) is its test set — without it no test accuracy is reported. With a
    ``target`` folder set ``data.target: image_folder`` too (see :func:`load_image_folder_pair`)."""
    if target is not None:
        raise ValueError("data.options.target is set but data.target is not: set data.target: image_folder "
                         "(domain adaptation, or SSL with a separate unlabeled folder)")
    pair = load_image_folder_pair(root, source=source, target=None, test=test, size=size, crop=crop,
                                  cache_dir=cache_dir, cache=cache, bad_images=bad_images, workers=workers,
                                  progress=progress, pipeline=pipeline, prefetch=prefetch)
    return pair.source


def load_image_folder_pair(root: str | os.PathLike | None = None, *, source: str | None = None,
                           target: str | None = None, test: str | None = None, size: int = 256, crop: int = 224,
                           cache_dir: str | None = None, cache: bool = True, bad_images: str = "fail",
                           workers: int | None = None, progress: bool = True, pipeline: str = "memory",
                           prefetch: int = 2):
    """``source`` (labelled) and ``target`` (unlabeled: every image under the folder) as a
    :class:`~supercm.data.DomainPair`. The source's test set is ``test`` only when there is no
    target; the target's test set is ``test`` (labelled target images) or empty: then the target
    test accuracy does not exist and is reported as null."""
    if source is None:
        raise ValueError("dataset 'image_folder' needs data.options.source: a folder with one sub-folder per class "
                         "(or a 'path label' list file)")
    _check_sizes(size, crop)
    _check_pipeline(pipeline, prefetch, workers)
    base = Path(root).expanduser() if root is not None else Path.cwd()
    kw = dict(cache_dir=cache_dir, cache=cache, bad_images=bad_images, workers=workers, progress=progress,
              pipeline=pipeline, prefetch=prefetch)
    src = read_labeled(source, base, what="source")
    xs, ys = _decode(src, size, "source images", **kw)
    classes = src.classes
    test_x, test_y = _empty(size, pipeline, workers=workers, prefetch=prefetch)
    if test is not None:
        tst = read_labeled(test, base, classes, drop_empty=False, what="test")
        test_x, test_y = _decode(tst, size, "test images", **kw)
    augment, transform = field_transforms(crop)
    k = len(classes)
    if target is None:
        ds = ArrayDataset("image_folder", xs, ys, test_x, test_y, k, augment, transform, list(classes))
        return DomainPair("image_folder", ds, ds)
    tgt_path = Path(target).expanduser()
    tgt = scan_unlabeled(tgt_path if tgt_path.is_absolute() else base / tgt_path)
    xt, yt = _decode(tgt, size, "target images", **kw)
    s_empty = _empty(size, pipeline, workers=workers, prefetch=prefetch)
    s = ArrayDataset("image_folder_source", xs, ys, *s_empty, k, augment, transform, list(classes))
    t = ArrayDataset("image_folder_target", xt, yt, test_x, test_y, k, augment, transform, list(classes))
    return DomainPair("image_folder->image_folder", s, t)


load_image_folder.load_pair = load_image_folder_pair  # type: ignore[attr-defined]


def _domain_loader(bench: str, domain: str) -> Callable[..., ArrayDataset]:
    def load(root: str | os.PathLike | None = None, *, size: int = 256, crop: int = 224, layout: str = "auto",
             lists: dict | None = None, cache_dir: str | None = None, cache: bool = True, bad_images: str = "fail",
             workers: int | None = None, progress: bool = True, pipeline: str = "memory",
             prefetch: int = 2) -> ArrayDataset:
        return load_benchmark_domain(bench, domain, root, size=size, crop=crop, layout=layout, lists=lists,
                                     cache_dir=cache_dir, cache=cache, bad_images=bad_images, workers=workers,
                                     progress=progress, pipeline=pipeline, prefetch=prefetch)

    b = BENCHMARKS[bench]
    load.__name__ = f"load_{bench}_{domain}"
    load.__doc__ = f"{b.title}, domain {domain!r} ({len(b.classes)} classes): see :mod:`supercm.data.images`."
    return load


#: Dataset names → loaders, registered in :data:`supercm.data.DATASETS`.
IMAGE_DATASETS: dict[str, Callable[..., ArrayDataset]] = {
    f"{b}_{d}": _domain_loader(b, d) for b, bench in BENCHMARKS.items() for d in bench.domains
}
IMAGE_DATASETS["image_folder"] = load_image_folder
# Checked by the config (data.options) before anything is read.
for _loader in IMAGE_DATASETS.values():
    _loader.option_ranges = {"size": "[1, inf)", "crop": "[1, inf)", "workers": "[0, inf)",  # type: ignore[attr-defined]
                             "prefetch": "[1, inf)"}
    _loader.option_choices = {"pipeline": PIPELINES, "bad_images": BAD_IMAGES,  # type: ignore[attr-defined]
                              "layout": LAYOUTS}


__all__ = [
    "BENCHMARKS",
    "BadImageError",
    "DatasetLayoutError",
    "IMAGE_DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "decode_images",
    "load_benchmark_domain",
    "load_image_folder",
    "load_image_folder_pair",
    "read_image_list",
    "scan_class_folders",
]
