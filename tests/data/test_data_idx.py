"""The IDX parser, the directory lookup, and checksummed download into the cache.

Downloads are served by a local ``http.server`` on 127.0.0.1 from small
hand-made IDX files; the MNIST source is pointed at it with monkeypatch.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedloom.data import (
    ChecksumError,
    DataFileError,
    _idx_datasets,
    available_datasets,
    load_dataset,
)
from fedloom.data._idx import gunzip, parse_idx, read_idx


def _idx(array: np.ndarray, type_code: int) -> bytes:
    header = bytes([0, 0, type_code, array.ndim])
    dims = np.array(array.shape, dtype=">u4").tobytes()
    return header + dims + array.tobytes()


# --- the parser --------------------------------------------------------------


def test_parse_uint8_images() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    parsed = parse_idx(_idx(images, 0x08))
    assert parsed.dtype == np.uint8 and parsed.shape == (2, 3, 4)
    assert np.array_equal(parsed, images)


def test_parse_big_endian_int32_and_float64() -> None:
    ints = np.array([1, -2, 70000], dtype=">i4")
    assert parse_idx(_idx(ints, 0x0C)).tolist() == [1, -2, 70000]
    floats = np.array([[0.5, -1.25]], dtype=">f8")
    assert parse_idx(_idx(floats, 0x0E)).tolist() == [[0.5, -1.25]]


def test_parse_hand_written_bytes() -> None:
    # magic 0x00000801 (uint8, 1-D), 3 items
    assert parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\xff").tolist() == [
        1,
        2,
        255,
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "only 2 bytes"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad magic number 0x01000801"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "bad magic number 0x00000701"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x04\x05\x06", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x05\x06", "trailing bytes"),
    ],
)
def test_parse_rejects_corrupt_files(data: bytes, message: str) -> None:
    with pytest.raises(DataFileError, match=message) as error:
        parse_idx(data, source="labels.idx")
    assert "labels.idx" in str(error.value)


def test_read_plain_and_gzipped_files(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4], dtype=np.uint8)
    (tmp_path / "plain").write_bytes(_idx(labels, 0x08))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(_idx(labels, 0x08)))
    assert read_idx(tmp_path / "plain").tolist() == [3, 1, 4]
    assert read_idx(tmp_path / "packed.gz").tolist() == [3, 1, 4]


def test_truncated_gzip_is_a_clear_error(tmp_path: Path) -> None:
    packed = gzip.compress(_idx(np.arange(100, dtype=np.uint8), 0x08))
    (tmp_path / "cut.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataFileError, match=r"cut\.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DataFileError, match="corrupt or truncated gzip"):
        gunzip(b"not gzip at all")


def test_gunzip_reads_every_member_and_stops_at_its_limit() -> None:
    two = gzip.compress(b"ab") + gzip.compress(b"cd")
    assert gunzip(two) == b"abcd" == gunzip(two, limit=4)
    bomb = gzip.compress(bytes(10_000_000))  # 10 kB that would fill 10 MB
    with pytest.raises(DataFileError, match="more than the 3 bytes"):
        gunzip(two, limit=3)
    with pytest.raises(DataFileError, match="more than the 1,000 bytes"):
        gunzip(bomb, limit=1000)


# --- a tiny fake MNIST release, served over HTTP -----------------------------

_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _release() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(12, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(5, dtype=np.uint8),
    }
    return {name: _idx(array, 0x08) for name, array in arrays.items()}


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class _Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

            def log_message(self, format: str, *args: object) -> None:
                requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def release() -> dict[str, bytes]:
    return _release()


@pytest.fixture
def server(tmp_path: Path, release: dict[str, bytes]) -> Iterator[_Server]:
    root = tmp_path / "www"
    root.mkdir()
    for name, content in release.items():
        (root / f"{name}.gz").write_bytes(gzip.compress(content, mtime=0))
    served = _Server(root)
    yield served
    served.close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache; no $FEDLOOM_DATA; MNIST checksums of the fake release."""
    monkeypatch.delenv("FEDLOOM_DATA", raising=False)
    monkeypatch.setenv("FEDLOOM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _point_mnist_at(
    monkeypatch: pytest.MonkeyPatch, url: str, release: dict[str, bytes]
) -> None:
    mnist = _idx_datasets.SOURCES["mnist"]
    specs = {
        field.name: dataclasses.replace(
            getattr(mnist, field.name),
            gz_md5=_md5(
                gzip.compress(release[getattr(mnist, field.name).name], mtime=0)
            ),
            raw_md5=_md5(release[getattr(mnist, field.name).name]),
            size=len(release[getattr(mnist, field.name).name]),
        )
        for field in dataclasses.fields(mnist)
        if field.name.startswith(("train_", "test_"))
    }
    fake = dataclasses.replace(mnist, url=url, system_dirs=(), **specs)
    monkeypatch.setitem(_idx_datasets.SOURCES, "mnist", fake)


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_download_verifies_and_caches_then_reuses_the_cache(
    monkeypatch: pytest.MonkeyPatch,
    server: _Server,
    cache: Path,
    release: dict[str, bytes],
) -> None:
    _point_mnist_at(monkeypatch, server.url, release)
    [info] = [i for i in available_datasets() if i.name == "mnist"]
    assert info.location == f"not found (download from {server.url})"

    ds = load_dataset("mnist")
    assert sorted(server.requests) == sorted(f"/{n}.gz" for n in _NAMES)
    assert [p.name for p in _files_under(cache)] == sorted(f"{n}.gz" for n in _NAMES)
    assert ds.train.x.shape == (12, 1, 28, 28) and ds.test.x.shape == (5, 1, 28, 28)
    images = np.frombuffer(release["train-images-idx3-ubyte"], np.uint8, offset=16)
    expected = images.reshape(12, 1, 28, 28).astype(np.float32) / 255
    assert np.allclose(ds.train.x.numpy(), expected)
    assert ds.train.y.tolist() == [i % 10 for i in range(12)]
    [info] = [i for i in available_datasets() if i.name == "mnist"]
    assert info.location == str(cache / "mnist")

    server.requests.clear()
    again = load_dataset("mnist")
    assert server.requests == []  # the second load reads the cache
    assert np.array_equal(again.test.y.numpy(), ds.test.y.numpy())


def test_download_with_bad_checksum_caches_only_what_was_checked(
    monkeypatch: pytest.MonkeyPatch,
    server: _Server,
    cache: Path,
    release: dict[str, bytes],
) -> None:
    _point_mnist_at(monkeypatch, server.url, release)
    mnist = _idx_datasets.SOURCES["mnist"]
    wrong = dataclasses.replace(mnist.train_labels, gz_md5="0" * 32, raw_md5="1" * 32)
    monkeypatch.setitem(
        _idx_datasets.SOURCES, "mnist", dataclasses.replace(mnist, train_labels=wrong)
    )
    served = gzip.compress(release["train-labels-idx1-ubyte"], mtime=0)
    with pytest.raises(ChecksumError) as error:
        load_dataset("mnist")
    message = str(error.value)
    assert "train-labels-idx1-ubyte.gz" in message
    assert "0" * 32 in message and _md5(served) in message
    # the file fetched and checked before it is kept; the refused one is not
    assert [p.name for p in _files_under(cache)] == ["train-images-idx3-ubyte.gz"]


def test_unreachable_server_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, cache: Path, release: dict[str, bytes]
) -> None:
    missing = (cache.parent / "nowhere").as_uri() + "/"
    _point_mnist_at(monkeypatch, missing, release)
    with pytest.raises(OSError, match="could not download file://"):
        load_dataset("mnist")
    assert _files_under(cache) == []


def _write_release(directory: Path, release: dict[str, bytes], gz: bool) -> None:
    directory.mkdir(parents=True)
    for name, content in release.items():
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(content, mtime=0))
        else:
            (directory / name).write_bytes(content)


def test_fedloom_data_comes_first_and_accepts_plain_files(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cache: Path,
    release: dict[str, bytes],
) -> None:
    _point_mnist_at(monkeypatch, "http://127.0.0.1:9/", release)  # never contacted
    _write_release(tmp_path / "data" / "mnist", release, gz=False)
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "data"))
    ds = load_dataset("mnist")
    assert len(ds.train) == 12 and len(ds.test) == 5
    assert _files_under(cache) == []


def test_torchvision_layout_under_fedloom_data(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cache: Path,
    release: dict[str, bytes],
) -> None:
    _point_mnist_at(monkeypatch, "http://127.0.0.1:9/", release)
    _write_release(tmp_path / "data" / "MNIST" / "raw", release, gz=True)
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "data"))
    assert len(load_dataset("mnist").train) == 12


def test_recompressed_archive_is_accepted_by_its_content(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cache: Path,
    release: dict[str, bytes],
) -> None:
    """Debian's dataset-fashion-mnist recompressed the archives: same data."""
    _point_mnist_at(monkeypatch, "http://127.0.0.1:9/", release)
    directory = tmp_path / "data" / "mnist"
    directory.mkdir(parents=True)
    for name, content in release.items():
        (directory / f"{name}.gz").write_bytes(gzip.compress(content, mtime=12345))
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "data"))
    assert len(load_dataset("mnist").test) == 5


def test_corrupt_local_file_is_an_error_not_a_fallback(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cache: Path,
    release: dict[str, bytes],
) -> None:
    _point_mnist_at(monkeypatch, "http://127.0.0.1:9/", release)
    changed = dict(release)
    labels = bytearray(release["t10k-labels-idx1-ubyte"])
    labels[-1] ^= 1
    changed["t10k-labels-idx1-ubyte"] = bytes(labels)
    _write_release(tmp_path / "data" / "mnist", changed, gz=False)
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "data"))
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte: MD5"):
        load_dataset("mnist")


def test_a_truncated_or_swollen_local_archive_is_a_checksum_error(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cache: Path,
    release: dict[str, bytes],
) -> None:
    _point_mnist_at(monkeypatch, "http://127.0.0.1:9/", release)
    _write_release(tmp_path / "data" / "mnist", release, gz=True)
    labels = tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    packed = labels.read_bytes()
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "data"))
    labels.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ChecksumError, match=r"corrupt or truncated gzip.*MD5"):
        load_dataset("mnist")
    swollen = release["t10k-labels-idx1-ubyte"] + bytes(1_000_000)
    labels.write_bytes(gzip.compress(swollen))
    with pytest.raises(ChecksumError, match="more than the 13 bytes"):
        load_dataset("mnist")


def test_a_download_is_checked_before_it_is_decompressed(
    monkeypatch: pytest.MonkeyPatch,
    server: _Server,
    cache: Path,
    release: dict[str, bytes],
) -> None:
    _point_mnist_at(monkeypatch, server.url, release)
    # what the server sends now is not the release: refused by its archive's
    # MD5 alone (a small archive may decompress to gigabytes)
    (server.root / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(bytes(10_000_000))
    )

    def no_gunzip(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("a download was decompressed before its check")

    monkeypatch.setattr(_idx_datasets, "gunzip", no_gunzip)
    with pytest.raises(ChecksumError, match=r"train-labels-idx1-ubyte\.gz: MD5"):
        _idx_datasets.download("mnist")
    # the file checked before it stays; nothing else is left
    assert [p.name for p in _files_under(cache)] == ["train-images-idx3-ubyte.gz"]


def test_a_response_cut_short_is_a_download_error(
    monkeypatch: pytest.MonkeyPatch, cache: Path, release: dict[str, bytes]
) -> None:
    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 500)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Short)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        _point_mnist_at(
            monkeypatch, f"http://127.0.0.1:{httpd.server_address[1]}/", release
        )
        with pytest.raises(OSError, match=r"could not download .*IncompleteRead"):
            load_dataset("mnist")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert _files_under(cache) == []


def test_a_killed_downloads_staging_folder_is_removed_later(
    monkeypatch: pytest.MonkeyPatch,
    server: _Server,
    cache: Path,
    release: dict[str, bytes],
) -> None:
    _point_mnist_at(monkeypatch, server.url, release)
    stale = cache / ".mnist-killed"
    fresh = cache / ".mnist-another-download"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "train-images-idx3-ubyte.gz").write_bytes(b"half")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (day_ago, day_ago))
    load_dataset("mnist")
    assert not stale.exists()
    assert fresh.exists()  # maybe a download still going on


def test_a_mistaken_fedloom_data_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cache: Path,
    release: dict[str, bytes],
) -> None:
    _point_mnist_at(monkeypatch, "http://127.0.0.1:9/", release)  # never contacted
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "no_such_folder"))
    with pytest.raises(FileNotFoundError, match="no_such_folder is not a directory"):
        load_dataset("mnist")
    # the four files in FEDLOOM_DATA itself: MNIST's or Fashion-MNIST's?
    _write_release(tmp_path / "files", release, gz=True)
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "files"))
    with pytest.raises(FileNotFoundError, match=r"holds IDX files itself.*mnist/"):
        load_dataset("mnist")
    assert _files_under(cache) == []


def test_incomplete_fedloom_data_folder_is_an_error_not_a_download(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cache: Path,
    release: dict[str, bytes],
) -> None:
    _point_mnist_at(monkeypatch, "http://127.0.0.1:9/", release)  # never contacted
    _write_release(tmp_path / "data" / "mnist", release, gz=False)
    (tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist")
    assert _files_under(cache) == []


def test_an_incomplete_fedloom_data_folder_is_reported_before_other_copies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Fashion-MNIST may also be in the system's folder: a folder of it under
    # FEDLOOM_DATA still says where the user means it to come from.
    (tmp_path / "data" / "fashion_mnist").mkdir(parents=True)
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match="fashion_mnist lacks"):
        _idx_datasets.find_directory("fashion_mnist")
    [info] = [i for i in available_datasets() if i.name == "fashion_mnist"]
    assert info.location.startswith("error: FEDLOOM_DATA: ")
