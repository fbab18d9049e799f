"""MNIST and Fashion-MNIST: find the IDX files, or download, verify and cache them.

Lookup order for dataset ``name``:

1. ``$FEDLOOM_DATA/<name>`` (also ``$FEDLOOM_DATA/fashion-mnist`` and the
   torchvision layout ``$FEDLOOM_DATA/FashionMNIST/raw``, ``.../MNIST/raw``);
2. well-known system directories (Debian's ``dataset-fashion-mnist`` package
   installs ``/usr/share/datasets/fashion-mnist``);
3. the cache ``$FEDLOOM_CACHE/<name>``, else ``$XDG_CACHE_HOME/fedloom/<name>``,
   else ``~/.cache/fedloom/<name>``;

and if none holds the four files, they are downloaded into the cache. Every
file is checked against its published MD5: a download by the MD5 of the archive;
a local ``.gz`` file by the MD5 of the archive or, failing that, by the MD5 of its
decompressed content (Debian recompresses the archives without the original file
name, which changes the archive's MD5 but not the data; it is decompressed no
further than the release's size); an uncompressed file by the MD5 of its content.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._examples import Dataset, Examples
from ._idx import DataFileError, gunzip, parse_idx

_DOWNLOAD_TIMEOUT_S = 60.0
# A staging folder this old was left by a download that was killed.
_STALE_STAGING_S = 24 * 3600.0


class ChecksumError(DataFileError):
    """A dataset file's checksum differs from the published one.

    Example:
        >>> issubclass(ChecksumError, DataFileError)
        True
    """


@dataclass(frozen=True)
class FileSpec:
    """One IDX file of a dataset release with its published MD5 checksums."""

    name: str  # without ".gz"
    gz_md5: str  # MD5 of the official "<name>.gz"
    raw_md5: str  # MD5 of the decompressed file
    size: int  # bytes of the decompressed file


@dataclass(frozen=True)
class IdxSource:
    """Where a dataset's IDX files live and what they must hash to."""

    name: str
    description: str
    url: str  # base URL; files are fetched from url + "<file>.gz"
    subdirs: tuple[str, ...]  # directories under $FEDLOOM_DATA to try
    system_dirs: tuple[str, ...]
    train_images: FileSpec
    train_labels: FileSpec
    test_images: FileSpec
    test_labels: FileSpec

    @property
    def files(self) -> tuple[FileSpec, FileSpec, FileSpec, FileSpec]:
        return (
            self.train_images,
            self.train_labels,
            self.test_images,
            self.test_labels,
        )


# Checksums: https://github.com/zalandoresearch/fashion-mnist#get-the-data and
# torchvision's datasets/mnist.py (archives and decompressed files).
SOURCES: dict[str, IdxSource] = {
    "fashion_mnist": IdxSource(
        name="fashion_mnist",
        description="Fashion-MNIST: 70,000 28x28 grey images of clothes, 10 classes "
        "(Xiao et al. 2017)",
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        subdirs=("fashion_mnist", "fashion-mnist", "FashionMNIST/raw"),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        train_images=FileSpec(
            "train-images-idx3-ubyte",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            47_040_016,
        ),
        train_labels=FileSpec(
            "train-labels-idx1-ubyte",
            "25c81989df183df01b3e8a0aad5dffbe",
            "9018921c3c673c538a1fc5bad174d6f9",
            60_008,
        ),
        test_images=FileSpec(
            "t10k-images-idx3-ubyte",
            "bef4ecab320f06d8554ea6380940ec79",
            "8181f5470baa50b63fa0f6fddb340f0a",
            7_840_016,
        ),
        test_labels=FileSpec(
            "t10k-labels-idx1-ubyte",
            "bb300cfdad3c16e7a12a480ee83cd310",
            "15d484375f8d13e6eb1aabb0c3f46965",
            10_008,
        ),
    ),
    "mnist": IdxSource(
        name="mnist",
        description="MNIST: 70,000 28x28 grey images of handwritten digits, "
        "10 classes (LeCun et al. 1998)",
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        subdirs=("mnist", "MNIST/raw"),
        system_dirs=(),
        train_images=FileSpec(
            "train-images-idx3-ubyte",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "6bbc9ace898e44ae57da46a324031adb",
            47_040_016,
        ),
        train_labels=FileSpec(
            "train-labels-idx1-ubyte",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "a25bea736e30d166cdddb491f175f624",
            60_008,
        ),
        test_images=FileSpec(
            "t10k-images-idx3-ubyte",
            "9fb629c4189551a2d022fa330f9573f3",
            "2646ac647ad5339dbf082846283269ea",
            7_840_016,
        ),
        test_labels=FileSpec(
            "t10k-labels-idx1-ubyte",
            "ec29112dd5afa0611ce80d1b7f02629c",
            "27ae3e4e09519cfbb04c329615203637",
            10_008,
        ),
    ),
}


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def cache_directory(name: str) -> Path:
    """The directory downloads of dataset ``name`` are cached in."""
    if root := os.environ.get("FEDLOOM_CACHE"):
        return Path(root) / name
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "fedloom" / name
    return Path.home() / ".cache" / "fedloom" / name


def _file_in(directory: Path, spec: FileSpec) -> Path | None:
    for candidate in (directory / spec.name, directory / f"{spec.name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_directory(name: str) -> Path | None:
    """Return the first directory in the lookup order holding all four files:
    ``$FEDLOOM_DATA``'s folders of the dataset, the system's, the cache."""
    source = SOURCES[name]
    if root := os.environ.get("FEDLOOM_DATA"):
        _check_data_root(Path(root), source)
        for directory in (Path(root) / sub for sub in source.subdirs):
            if all(_file_in(directory, spec) for spec in source.files):
                return directory
            if directory.is_dir():
                # FEDLOOM_DATA names where the files are: a folder of this dataset
                # there that lacks some is a mistake to report, not to go around.
                missing = [
                    s.name for s in source.files if _file_in(directory, s) is None
                ]
                raise FileNotFoundError(
                    f"FEDLOOM_DATA: {directory} lacks {missing} (or their .gz)"
                )
    for directory in [*map(Path, source.system_dirs), cache_directory(source.name)]:
        if all(_file_in(directory, spec) for spec in source.files):
            return directory
    return None


def _check_data_root(root: Path, source: IdxSource) -> None:
    """Refuse a ``$FEDLOOM_DATA`` that cannot be what was meant: a folder that
    does not exist, or one holding a dataset's files itself, not in its folder
    (MNIST and Fashion-MNIST name their files alike)."""
    if not root.is_dir():
        raise FileNotFoundError(f"FEDLOOM_DATA: {root} is not a directory")
    if any(_file_in(root, spec) for spec in source.files):
        folders = " or ".join(f"{sub}/" for sub in source.subdirs)
        raise FileNotFoundError(
            f"FEDLOOM_DATA: {root} holds IDX files itself; put each dataset's "
            f"four files in a folder of its own there ({source.name}: {folders})"
        )


def _verified(data: bytes, spec: FileSpec, origin: str, compressed: bool) -> bytes:
    """Check ``data`` (the bytes of local file ``origin``) and return the IDX."""
    if not compressed:
        if (actual := _md5(data)) != spec.raw_md5:
            raise ChecksumError(
                f"{origin}: MD5 {actual} differs from the published {spec.raw_md5} "
                f"of {spec.name}; the file is corrupt or not the official release"
            )
        return data
    archive_md5 = _md5(data)
    if archive_md5 == spec.gz_md5:
        return gunzip(data, source=origin)
    try:
        content = gunzip(data, source=origin, limit=spec.size)
    except DataFileError as error:
        raise ChecksumError(
            f"{error}; its MD5 {archive_md5} differs from the published "
            f"{spec.gz_md5} of {spec.name}.gz"
        ) from None
    if (actual := _md5(content)) != spec.raw_md5:
        raise ChecksumError(
            f"{origin}: MD5 {archive_md5} differs from the published "
            f"{spec.gz_md5} of {spec.name}.gz (and its content's MD5 {actual} "
            f"differs from the published {spec.raw_md5}); the file is corrupt or "
            "not the official release"
        )
    return content


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            return bytes(response.read())
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        # HTTPException: a response cut short or malformed (IncompleteRead, ...)
        raise OSError(f"could not download {url}: {error}") from error


def download(name: str) -> Path:
    """Download the missing files of ``name`` into its cache, verified; return it.

    Each archive must have its published MD5 before it is decompressed or kept
    (what a server sends is not trusted to be small). It is written into a
    staging folder next to the cache and renamed into place as soon as it is
    checked, so a failed or corrupt download leaves nothing in the cache and one
    cut short keeps the files it finished; a staging folder a killed download
    left behind is removed by a later one.
    """
    source = SOURCES[name]
    target = cache_directory(name)
    missing = [spec for spec in source.files if _file_in(target, spec) is None]
    if not missing:
        return target
    target.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target.parent, name)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        for spec in missing:
            url = f"{source.url}{spec.name}.gz"
            archive = _fetch(url)
            if (actual := _md5(archive)) != spec.gz_md5:
                raise ChecksumError(
                    f"{url}: MD5 {actual} differs from the published {spec.gz_md5}; "
                    "the download is corrupt or not the official release"
                )
            (staging / f"{spec.name}.gz").write_bytes(archive)
            os.replace(staging / f"{spec.name}.gz", target / f"{spec.name}.gz")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _remove_stale_staging(parent: Path, name: str) -> None:
    for folder in parent.glob(f".{name}-*"):
        try:
            if time.time() - folder.stat().st_mtime > _STALE_STAGING_S:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:  # another download removed it first
            pass


def _read_verified(directory: Path, spec: FileSpec) -> np.ndarray:
    path = _file_in(directory, spec)
    if path is None:
        raise FileNotFoundError(f"{directory}: {spec.name}(.gz) not found")
    content = _verified(
        path.read_bytes(), spec, str(path), compressed=path.suffix == ".gz"
    )
    return parse_idx(content, source=str(path))


def _examples(images: np.ndarray, labels: np.ndarray, origin: Path) -> Examples:
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{origin}: expected images (n, 28, 28) and labels (n,), got "
            f"{images.shape} and {labels.shape}"
        )
    x = images.reshape(len(images), 1, *images.shape[1:]).astype(np.float32)
    x /= 255.0
    return Examples(torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64)))


def load_idx_dataset(name: str) -> Dataset:
    """Load MNIST or Fashion-MNIST (found locally, else downloaded and cached).

    Pixels are scaled to [0, 1]; ``x`` has shape ``(n, 1, 28, 28)``.
    """
    source = SOURCES[name]
    directory = find_directory(name)
    if directory is None:
        directory = download(name)
    train_x, train_y, test_x, test_y = (
        _read_verified(directory, spec) for spec in source.files
    )
    train = _examples(train_x, train_y, directory)
    test = _examples(test_x, test_y, directory)
    return Dataset(
        name=name,
        train=train,
        test=test,
        num_classes=10,
        input_shape=tuple(train.x.shape[1:]),
    )


def location(name: str) -> str:
    """Where dataset ``name`` would be loaded from now, without reading it."""
    try:
        directory = find_directory(name)
    except FileNotFoundError as error:
        return f"error: {error}"
    if directory is not None:
        return str(directory)
    return f"not found (download from {SOURCES[name].url})"
