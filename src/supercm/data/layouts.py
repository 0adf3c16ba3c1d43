"""Where a dataset's images are and what their labels are: the layouts, the Office benchmarks' class lists.

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

A list that contradicts itself is decided here too (:func:`read_image_list`): one image with two labels
is refused, a repeated line is read once with a warning, labels must be 0 … K−1.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .base import DatasetMissingError

#: File name endings read as images (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
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
