"""Image datasets read from a data root: the Office benchmarks and a user's own folders (issue 12 §1–2).

Benchmarks (``data.name`` / ``data.target``, each a domain; ``data.root`` holds the dataset folder)::

    office31_amazon  office31_dslr  office31_webcam                              31 classes
    officehome_art  officehome_clipart  officehome_product  officehome_real_world  65 classes
    imageclef_c  imageclef_i  imageclef_p                                        12 classes
    office_caltech_amazon  office_caltech_caltech  office_caltech_dslr  office_caltech_webcam  10 classes

Two layouts are read (``data.options.layout``: ``auto`` tries the list first):

* **folders**: ``ROOT/DATASET/DOMAIN/[images/]CLASS/*.jpg`` — e.g. ``ROOT/office31/amazon/images/
  back_pack/frame_0001.jpg`` (the Office-31 archive) or ``ROOT/OfficeHomeDataset_10072016/Real World/
  Alarm_Clock/00001.jpg`` (the official Office-Home archive, with its space). Dataset, domain and
  class folder names match ignoring case, spaces, ``_`` and ``-`` ("Real World" = "Real_World").
* **list**: ``path label`` image lists of the reference implementations (Transfer-Learning-Library:
  ``ROOT/office31/image_list/amazon.txt``, ``ROOT/officehome/image_list/Real_World.txt``,
  ``ROOT/image_CLEF/list/cList.txt``), found in ``image_list/``, ``list/``, ``lists/`` or the dataset
  folder, or named by ``data.options.lists: {DOMAIN: PATH}``. The label is the last whitespace token
  (paths may hold spaces); a path is absolute or relative to the dataset folder (or the list's own
  folder, or the domain folder); an absolute path from another machine is relocated under the
  dataset folder by its longest suffix that exists there.

Labels follow each benchmark's class list (:data:`BENCHMARKS`): Office-31 and Office-Caltech
alphabetical, **Office-Home in the order of its official list** (Drill, Exit_Sign, Bottle, …, not
alphabetical), ImageCLEF-DA the indices 0–11 of its lists. Folder layouts map class folders to that
order by name, so a folder domain and a list domain agree; a list whose labels contradict its own
class folders is refused. The run directory records the order in ``classes.json``.

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
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..fileio import atomic_write
from .base import ArrayDataset, DatasetMissingError, DomainPair, resolve_root
from .decode import (  # noqa: F401  (BadImageError, decode_one, cache_key, default_cache_dir: re-exported)
    RESIZE_METHOD, BadImageError, cache_key, decode_noted, decode_one, default_cache_dir, default_workers, listing,
    scan_images, warn_cache_unwritable, warn_converted,
)
from .stream import PIPELINES, ImageStore

#: File name endings read as images (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
#: torchvision's ImageNet normalisation (what every ImageNet-pretrained backbone expects).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BAD_IMAGES = ("fail", "skip")
LAYOUTS = ("auto", "folders", "list")


class DatasetLayoutError(DatasetMissingError):
    """A dataset's folders or list files are missing or malformed; the message names the expected layout."""


# --------------------------------------------------------------------------- benchmarks

OFFICE31_CLASSES = (
    "back_pack", "bike", "bike_helmet", "bookcase", "bottle", "calculator", "desk_chair", "desk_lamp",
    "desktop_computer", "file_cabinet", "headphones", "keyboard", "laptop_computer", "letter_tray",
    "mobile_phone", "monitor", "mouse", "mug", "paper_notebook", "pen", "phone", "printer", "projector",
    "punchers", "ring_binder", "ruler", "scissors", "speaker", "stapler", "tape_dispenser", "trash_can",
)
#: Office-Home in the label order of its official image lists (as Transfer-Learning-Library's
#: ``OfficeHome.CLASSES``): *not* alphabetical.
OFFICEHOME_CLASSES = (
    "Drill", "Exit_Sign", "Bottle", "Glasses", "Computer", "File_Cabinet", "Shelf", "Toys", "Sink",
    "Laptop", "Kettle", "Folder", "Keyboard", "Flipflops", "Pencil", "Bed", "Hammer", "ToothBrush", "Couch",
    "Bike", "Postit_Notes", "Mug", "Webcam", "Desk_Lamp", "Telephone", "Helmet", "Mouse", "Pen", "Monitor",
    "Mop", "Sneakers", "Notebook", "Backpack", "Alarm_Clock", "Push_Pin", "Paper_Clip", "Batteries", "Radio",
    "Fan", "Ruler", "Pan", "Screwdriver", "Trash_Can", "Printer", "Speaker", "Eraser", "Bucket", "Chair",
    "Calendar", "Calculator", "Flowers", "Lamp_Shade", "Spoon", "Candles", "Clipboards", "Scissors", "TV",
    "Curtains", "Fork", "Soda", "Table", "Knives", "Oven", "Refrigerator", "Marker",
)
#: ImageCLEF-DA's lists carry indices 0–11 (aeroplane, bike, bird, boat, bottle, bus, car, dog, horse,
#: monitor, motorbike, people); class folders are named by index.
IMAGECLEF_CLASSES = tuple(str(i) for i in range(12))
OFFICE_CALTECH_CLASSES = (
    "back_pack", "bike", "calculator", "headphones", "keyboard", "laptop_computer", "monitor", "mouse",
    "mug", "projector",
)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: the folder names its copies use, its domains (name → folder aliases), its classes."""

    name: str
    title: str
    folders: tuple[str, ...]
    domains: dict[str, tuple[str, ...]]
    classes: tuple[str, ...]
    example: str = ""
    notes: str = field(default="")


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("office31", "Office-31", ("office31", "office-31", "domain_adaptation_images"),
                  {"amazon": ("amazon",), "dslr": ("dslr",), "webcam": ("webcam",)}, OFFICE31_CLASSES,
                  "office31/amazon/images/back_pack/frame_0001.jpg or office31/image_list/amazon.txt"),
        Benchmark("officehome", "Office-Home", ("officehome", "office-home", "OfficeHomeDataset_10072016"),
                  {"art": ("Art",), "clipart": ("Clipart",), "product": ("Product",),
                   "real_world": ("Real World", "Real_World", "RealWorld")}, OFFICEHOME_CLASSES,
                  "officehome/Real World/Alarm_Clock/00001.jpg or officehome/image_list/Real_World.txt"),
        Benchmark("imageclef", "ImageCLEF-DA", ("image_CLEF", "imageclef", "image_clef", "imageCLEF-DA"),
                  {"c": ("c",), "i": ("i",), "p": ("p",)}, IMAGECLEF_CLASSES,
                  "image_CLEF/list/cList.txt (lines 'c/113_0001.jpg 0') or image_CLEF/c/0/113_0001.jpg"),
        Benchmark("office_caltech", "Office-Caltech-10",
                  ("office_caltech_10", "office_caltech", "office-caltech-10", "OfficeCaltech10"),
                  {"amazon": ("amazon",), "caltech": ("caltech", "caltech10"), "dslr": ("dslr",),
                   "webcam": ("webcam",)}, OFFICE_CALTECH_CLASSES,
                  "office_caltech_10/caltech/back_pack/001.jpg"),
    )
}


def norm(name: str) -> str:
    """Folder and class names compare ignoring case, spaces, ``_`` and ``-``."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _children(folder: Path) -> dict[str, Path]:
    try:
        return {norm(p.name): p for p in sorted(folder.iterdir())}
    except OSError:
        return {}


# --------------------------------------------------------------------------- reading a layout


@dataclass
class ImageList:
    """Image paths and their labels (``-1``: unlabeled), and the class names in label order."""

    paths: list[Path]
    labels: list[int]
    classes: list[str] | None
    source: str  # how it was found, for messages


def scan_class_folders(folder: Path, classes: tuple[str, ...] | list[str] | None = None, *,
                       drop_empty: bool = False) -> ImageList:
    """``folder/CLASS/**/*.jpg``. With ``classes`` the sub-folders are matched to those names (an
    unknown folder is an error); without, the classes are the sub-folders sorted by name."""
    subdirs = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    loose = [p for p in sorted(folder.iterdir()) if p.is_file() and _is_image(p)]
    if not subdirs:
        raise DatasetLayoutError(
            f"{folder} has no class sub-folders ({len(loose)} loose images); expected FOLDER/CLASS/IMAGE "
            f"(one sub-folder per class) or a 'path label' list file"
        )
    found: dict[str, list[Path]] = {}
    for d in subdirs:
        found[d.name] = sorted((p for p in d.rglob("*") if p.is_file() and _is_image(p)), key=lambda p: str(p))
    if classes is None:
        empty = [n for n, files in found.items() if not files]
        if empty and drop_empty:
            warnings.warn(f"{folder}: class folder(s) {', '.join(empty)} hold no images and are left out", stacklevel=3)
            found = {n: f for n, f in found.items() if f}
        names = sorted(found)
        index = {n: i for i, n in enumerate(names)}
        by_name = found
    else:
        names = list(classes)
        wanted = {norm(c): i for i, c in enumerate(names)}
        unknown = [n for n in found if norm(n) not in wanted]
        if unknown:
            raise DatasetLayoutError(
                f"{folder}: sub-folder(s) {', '.join(repr(u) for u in unknown[:5])} are not classes of this "
                f"dataset (expected one sub-folder per class among: {', '.join(names[:8])}, …)"
            )
        index = {n: wanted[norm(n)] for n in found}
        by_name = found
    paths, labels = [], []
    for n in sorted(by_name, key=lambda n: index[n]):
        paths += by_name[n]
        labels += [index[n]] * len(by_name[n])
    if not paths:
        raise DatasetLayoutError(f"{folder}: the class sub-folders hold no images ({', '.join(IMAGE_EXTENSIONS[:4])}, …)")
    return ImageList(paths, labels, names, f"folders under {folder}")


def scan_unlabeled(folder: Path) -> ImageList:
    """Every image under ``folder`` (any depth, sorted by path); no labels."""
    if not folder.is_dir():
        raise DatasetLayoutError(f"{folder} is not a folder; expected a folder of images (any layout)")
    paths = sorted((p for p in folder.rglob("*") if p.is_file() and _is_image(p)), key=lambda p: str(p))
    if not paths:
        raise DatasetLayoutError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return ImageList(paths, [-1] * len(paths), None, f"images under {folder}")


class _Relocator:
    """Finds a list's absolute path from another machine under ``base`` by its longest existing suffix,
    remembering the prefix it replaced so the next paths cost one ``exists``."""

    def __init__(self, base: Path):
        self.base = base
        self.prefixes: dict[tuple[str, ...], Path] = {}

    def __call__(self, p: Path) -> Path | None:
        parts = p.parts
        for k in range(1, len(parts)):
            prefix = parts[:k]
            if prefix in self.prefixes:
                candidate = self.prefixes[prefix].joinpath(*parts[k:])
                if candidate.exists():
                    return candidate
        for k in range(1, len(parts)):
            candidate = self.base.joinpath(*parts[k:])
            if candidate.exists():
                self.prefixes[parts[:k]] = self.base
                return candidate
        return None


def read_image_list(list_file: Path, bases: list[Path], classes: tuple[str, ...] | list[str] | None = None) -> ImageList:
    """A ``path label`` list: the label is the last whitespace token, the path everything before it
    (spaces allowed). Relative paths are tried against each of ``bases`` in turn (then the list's
    folder); absolute ones that do not exist are relocated under ``bases[0]``. Blank lines and lines
    starting with ``#`` are skipped."""
    expected = ("expected lines 'PATH LABEL' (the label an integer, the last token; e.g. "
                "'amazon/images/back_pack/frame_0001.jpg 0')")
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetLayoutError(f"cannot read the image list {list_file}: {exc}") from None
    bases = [*bases, list_file.parent]
    relocate = _Relocator(bases[0])
    paths, labels, missing, lines = [], [], [], []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not re.fullmatch(r"[+-]?\d+", parts[1]):
            raise DatasetLayoutError(f"{list_file} line {n} is malformed ({line[:80]!r}); {expected}")
        raw, label = Path(parts[0]), int(parts[1])
        if label < 0 or (classes is not None and label >= len(classes)):
            limit = f"[0, {len(classes)})" if classes is not None else "≥ 0"
            raise DatasetLayoutError(f"{list_file} line {n}: label {label} is outside {limit}")
        found = None
        if raw.is_absolute():
            found = raw if raw.exists() else relocate(raw)
        else:
            found = next((b / raw for b in bases if (b / raw).exists()), None)
        if found is None:
            missing.append(str(raw))
        paths.append(found if found is not None else raw)
        labels.append(label)
        lines.append(n)
    if missing:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetLayoutError(
            f"{list_file}: {len(missing)} listed image(s) not found (relative paths are read from "
            f"{', '.join(str(b) for b in bases)}): {shown}"
        )
    if not paths:
        raise DatasetLayoutError(f"{list_file} lists no images; {expected}")
    paths, labels = _check_consistent(list_file, paths, labels, lines, classes)
    names = list(classes) if classes is not None else _names_from_paths(paths, labels)
    if classes is not None:
        _check_list_against_folders(list_file, paths, labels, classes)
    return ImageList(paths, labels, names, f"list {list_file}")


def _check_consistent(list_file: Path, paths: list[Path], labels: list[int], lines: list[int],
                      classes) -> tuple[list[Path], list[int]]:
    """A list that contradicts itself. One image listed with two labels is refused (naming both lines);
    listed twice with one label, it is kept once, with a warning (it would weigh twice). Without a known
    class list, the labels must be 0 … K−1 with images for each: a gap (labels {0, 1, 7}) is refused
    naming the label that makes it, which would otherwise become empty classes."""
    first: dict[str, int] = {}
    keep, repeated = [], []
    for i, p in enumerate(paths):
        key = os.path.normcase(os.path.abspath(p))
        j = first.setdefault(key, i)
        if j == i:
            keep.append(i)
        elif labels[j] != labels[i]:
            raise DatasetLayoutError(
                f"{list_file}: {p} is listed with label {labels[j]} (line {lines[j]}) and label {labels[i]} "
                f"(line {lines[i]}); an image has one label: correct or remove one of the lines")
        else:
            repeated.append(f"line {lines[i]} repeats line {lines[j]}")
    if repeated:
        warnings.warn(f"{list_file}: {len(repeated)} image(s) listed twice with the same label are read once: "
                      f"{'; '.join(repeated[:5])}{' …' if len(repeated) > 5 else ''}", stacklevel=4)
        paths, labels, lines = [paths[i] for i in keep], [labels[i] for i in keep], [lines[i] for i in keep]
    if classes is None:
        present = set(labels)
        absent = sorted(set(range(max(present) + 1)) - present)
        if absent:
            gap = absent[0]
            culprit = min((y for y in present if y > gap))
            line = lines[labels.index(culprit)]
            shown = ", ".join(map(str, absent[:6])) + (" …" if len(absent) > 6 else "")
            raise DatasetLayoutError(
                f"{list_file} line {line}: label {culprit} leaves label(s) {shown} without images; the labels of "
                f"a list must be 0 … K−1 (here {len(present)} classes: 0 … {len(present) - 1}): renumber them")
    return paths, labels


def _names_from_paths(paths: list[Path], labels: list[int]) -> list[str]:
    """Class names for a list without a known class list: each label's parent-folder name when that is
    one name per label, else the label itself."""
    k = max(labels) + 1
    seen: dict[int, set[str]] = {}
    for p, y in zip(paths, labels):
        seen.setdefault(y, set()).add(p.parent.name)
    if all(len(seen.get(y, ())) == 1 for y in range(k)) and len({next(iter(seen[y])) for y in range(k)}) == k:
        return [next(iter(seen[y])) for y in range(k)]
    return [str(y) for y in range(k)]


def _check_list_against_folders(list_file: Path, paths, labels, classes) -> None:
    """Refuse a list whose labels contradict its own class folders (e.g. a hand-made alphabetical
    Office-Home list): a folder domain and a list domain would then disagree on every label."""
    wanted = {norm(c): i for i, c in enumerate(classes)}
    for p, y in zip(paths, labels):
        i = wanted.get(norm(p.parent.name))
        if i is not None and i != y:
            raise DatasetLayoutError(
                f"{list_file}: {p.parent.name}/{p.name} has label {y} ({classes[y]!r}) but lies in the "
                f"folder of class {i} ({classes[i]!r}); the benchmark's labels follow its official list order "
                f"({', '.join(classes[:4])}, …). Use that list, or data.options.layout=folders"
            )


def _find_dataset_dir(root: Path, bench: Benchmark) -> Path | None:
    kids = _children(root)
    for alias in (bench.name, *bench.folders):
        if norm(alias) in kids and kids[norm(alias)].is_dir():
            return kids[norm(alias)]
    # ROOT may be the dataset folder itself.
    if any(norm(a) in kids for aliases in bench.domains.values() for a in aliases):
        return root
    return None


def _find_list(dataset_dir: Path, aliases: tuple[str, ...]) -> Path | None:
    wanted = {norm(a) for a in aliases}
    for sub in ("image_list", "imagelist", "list", "lists", ""):
        folder = dataset_dir / sub if sub else dataset_dir
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix.lower() == ".txt":
                stem = norm(f.stem)
                if stem in wanted or (stem.endswith("list") and stem[:-4] in wanted):
                    return f
    return None


def _find_domain_dir(dataset_dir: Path, aliases: tuple[str, ...]) -> Path | None:
    kids = _children(dataset_dir)
    for a in aliases:
        d = kids.get(norm(a))
        if d is not None and d.is_dir():
            images = d / "images"  # the Office-31 archive: DOMAIN/images/CLASS
            return images if images.is_dir() else d
    return None


def locate_domain(bench: Benchmark, domain: str, root: Path, layout: str = "auto",
                  lists: dict | None = None) -> ImageList:
    """The images and labels of one benchmark domain under ``root``, from its list or its folders."""
    aliases = bench.domains[domain]
    expected = (f"expected {bench.title} under {root} as {bench.example} "
                f"(a folder per domain with a sub-folder per class, or 'path label' image lists; "
                f"see supercm.data.images)")
    explicit = (lists or {}).get(domain)
    dataset_dir = _find_dataset_dir(root, bench) if root.is_dir() else None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_absolute():
            path = root / path
        if not path.is_file():
            raise DatasetLayoutError(f"data.options.lists.{domain} = {explicit!r}: no such file ({path})")
        bases = [dataset_dir] if dataset_dir is not None else []
        return read_image_list(path, [*bases, root], bench.classes)
    if dataset_dir is None:
        raise DatasetLayoutError(f"{bench.title} not found: {expected}")
    list_file = _find_list(dataset_dir, aliases) if layout in ("auto", "list") else None
    if list_file is not None:
        domain_dir = _find_domain_dir(dataset_dir, aliases)
        return read_image_list(list_file, [dataset_dir, *([domain_dir] if domain_dir else [])], bench.classes)
    if layout == "list":
        raise DatasetLayoutError(f"{bench.title}: no image list for domain {domain!r} in {dataset_dir}; {expected}")
    domain_dir = _find_domain_dir(dataset_dir, aliases)
    if domain_dir is None:
        raise DatasetLayoutError(f"{bench.title}: no folder for domain {domain!r} ({' / '.join(aliases)}) "
                                 f"in {dataset_dir}; {expected}")
    return scan_class_folders(domain_dir, bench.classes)


def read_labeled(path: str | os.PathLike, root: Path, classes: list[str] | None = None, *,
                 drop_empty: bool = True, what: str) -> ImageList:
    """A user's labelled images: a folder with a sub-folder per class, or a ``path label`` list file."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = root / p
    if p.is_dir():
        return scan_class_folders(p, classes, drop_empty=drop_empty)
    if p.is_file():
        return read_image_list(p, [p.parent, root], classes)
    raise DatasetLayoutError(f"data.options.{what} = {str(path)!r}: no such folder or list file ({p}); expected a "
                             f"folder with one sub-folder per class, or a 'path label' list file")


# --------------------------------------------------------------------------- decoding + cache


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
