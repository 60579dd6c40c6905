"""intssm.data: the IDX reader (real MNIST files and broken ones) and ``data.load``."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from intssm import data
from intssm.errors import IntssmError

MNIST = data.MNIST_DIR
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """Standard IDX encoding: magic 00 00 <dtype code> <ndim>, big-endian dims, big-endian payload."""
    big = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return head + np.ascontiguousarray(arr, dtype=big).tobytes()


def one_line(msg: str) -> bool:
    return "\n" not in msg and "Traceback" not in msg and 0 < len(msg) < 400


# --------------------------------------------------------------------------- real MNIST files


@pytest.fixture(scope="module")
def raw_mnist():
    return {
        "xtr": data.read_idx(MNIST / "train-images-idx3-ubyte.gz"),
        "ytr": data.read_idx(MNIST / "train-labels-idx1-ubyte.gz"),
        "xte": data.read_idx(MNIST / "t10k-images-idx3-ubyte.gz"),
        "yte": data.read_idx(MNIST / "t10k-labels-idx1-ubyte.gz"),
    }


def test_real_mnist_shapes_and_dtypes(raw_mnist):
    """The shipped MNIST files read as uint8 images (60000 or 10000, 28, 28) and labels (60000 or 10000,);
    training pixels span 0..255 and > 99% of the top-row pixels are 0."""
    assert raw_mnist["xtr"].shape == (60000, 28, 28)
    assert raw_mnist["ytr"].shape == (60000,)
    assert raw_mnist["xte"].shape == (10000, 28, 28)
    assert raw_mnist["yte"].shape == (10000,)
    for k in raw_mnist:
        assert raw_mnist[k].dtype == np.uint8, k
    assert raw_mnist["xtr"].max() == 255 and raw_mnist["xtr"].min() == 0
    # MNIST digits sit on a black background: the border pixels are (almost) all zero
    assert (raw_mnist["xtr"][:, 0, :] == 0).mean() > 0.99


def test_real_mnist_label_counts(raw_mnist):
    """Per-digit label counts of both MNIST splits and the first ten training labels equal the official ones."""
    assert np.bincount(raw_mnist["ytr"], minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(raw_mnist["yte"], minlength=10).tolist() == TEST_COUNTS
    # first training labels of the official file
    assert raw_mnist["ytr"][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


# --------------------------------------------------------------------------- broken IDX files


@pytest.fixture
def small_idx():
    return np.arange(24, dtype=np.uint8).reshape(2, 3, 4)


def test_read_idx_roundtrip_raw_and_gzip(tmp_path, small_idx):
    """A uint8 array encoded as IDX reads back equal, from a raw file and from a gzip file."""
    (tmp_path / "a.idx").write_bytes(idx_bytes(small_idx))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(small_idx)))
    for name in ("a.idx", "a.idx.gz"):
        out = data.read_idx(tmp_path / name)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, small_idx)


@pytest.mark.parametrize("code,dtype", [(0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_big_endian_types(tmp_path, code, dtype):
    """Big-endian int16/int32/float32/float64 IDX payloads read back equal, in native byte order and the
    same dtype."""
    arr = np.array([[1, -2, 300], [70000 if dtype != np.int16 else 7000, 5, -6]], dtype=dtype)
    (tmp_path / "b.idx").write_bytes(idx_bytes(arr, code))
    out = data.read_idx(tmp_path / "b.idx")
    assert out.dtype == np.dtype(dtype)  # native byte order, same kind
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_truncated_payload(tmp_path, small_idx):
    """A payload one byte short is refused with a one-line error giving both sizes and the path."""
    p = tmp_path / "t.idx"
    p.write_bytes(idx_bytes(small_idx)[:-1])
    with pytest.raises(IntssmError, match=r"payload has 23 bytes.*need 24") as e:
        data.read_idx(p)
    assert one_line(str(e.value)) and str(p) in str(e.value)


def test_extra_payload(tmp_path, small_idx):
    """A payload one byte too long is refused with an error giving its size."""
    p = tmp_path / "t.idx"
    p.write_bytes(idx_bytes(small_idx) + b"\0")
    with pytest.raises(IntssmError, match=r"payload has 25 bytes"):
        data.read_idx(p)


def test_truncated_header(tmp_path, small_idx):
    """A header cut inside the dimensions is refused with a one-line "truncated IDX header" error."""
    p = tmp_path / "h.idx"
    p.write_bytes(idx_bytes(small_idx)[:10])  # magic says 3 dims, only 1.5 present
    with pytest.raises(IntssmError, match="truncated IDX header") as e:
        data.read_idx(p)
    assert one_line(str(e.value))


@pytest.mark.parametrize(
    "payload",
    [b"\x01\x00\x08\x01" + b"\0\0\0\x01" + b"\0",  # non-zero first byte
     b"\x00\x00\x07\x01" + b"\0\0\0\x01" + b"\0",  # unknown type code
     b"\x00\x00\x08\x00",  # zero dims
     b"\x00\x00",  # shorter than the magic
     b"",
     b"hello world, not an IDX file"],
)
def test_wrong_magic(tmp_path, payload):
    """A bad first byte, an unknown type code, zero dimensions, a short or empty file and text are each refused
    with a one-line "not an IDX file" error."""
    p = tmp_path / "m.idx"
    p.write_bytes(payload)
    with pytest.raises(IntssmError, match="not an IDX file") as e:
        data.read_idx(p)
    assert one_line(str(e.value))


def test_missing_file(tmp_path):
    """A missing path is refused with "IDX file not found"."""
    with pytest.raises(IntssmError, match="IDX file not found"):
        data.read_idx(tmp_path / "nope.idx")


@pytest.mark.parametrize("cut", [lambda b: b[:-4], lambda b: b[:15], lambda b: b[:-8] + b"\0" * 8])
def test_corrupt_gzip(tmp_path, small_idx, cut):
    """A gzip file cut short or with a zeroed trailer is refused with a one-line "corrupt gzip stream" error."""
    p = tmp_path / "c.idx.gz"
    p.write_bytes(cut(gzip.compress(idx_bytes(small_idx))))
    with pytest.raises(IntssmError, match="corrupt gzip stream") as e:
        data.read_idx(p)
    assert one_line(str(e.value))


def test_corrupt_gzip_body(tmp_path, small_idx):
    """A gzip file with its deflate stream scrambled raises an IntssmError saying "corrupt gzip"."""
    good = bytearray(gzip.compress(idx_bytes(small_idx)))
    for i in range(10, len(good) - 8):  # keep the gzip header, scramble the deflate stream
        good[i] ^= 0xFF
    p = tmp_path / "c.idx.gz"
    p.write_bytes(bytes(good))
    try:
        data.read_idx(p)
    except IntssmError as e:
        assert "corrupt gzip" in str(e)
    else:
        pytest.fail("no error")


@pytest.mark.parametrize("name", sorted(data.KNOWN_SHA256))
def test_checksum_mismatch_for_official_name(tmp_path, small_idx, name):
    """A valid IDX gzip named like an official MNIST file but with other bytes is refused (one-line checksum
    error); with check_known=False the same file reads back equal."""
    p = tmp_path / name
    p.write_bytes(gzip.compress(idx_bytes(small_idx)))  # a perfectly valid IDX gzip ...
    with pytest.raises(IntssmError, match="checksum does not match the official MNIST file") as e:
        data.read_idx(p)  # ... but not the official bytes
    assert one_line(str(e.value))
    # with the check switched off the same file reads fine
    np.testing.assert_array_equal(data.read_idx(p, check_known=False), small_idx)


def test_official_checksums_match_sources():
    """The shipped MNIST files' SHA-256 and MD5 equal the recorded official checksums."""
    for name, sha in data.KNOWN_SHA256.items():
        raw = (MNIST / name).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == sha
        assert hashlib.md5(raw).hexdigest() == data.KNOWN_MD5[name]


# --------------------------------------------------------------------------- data.load: sMNIST / psMNIST


def test_smnist_is_row_major_pixels(raw_mnist):
    """sMNIST train/val/test are the first 50k / last 10k training images and the test images, flattened
    row-major to (n, 784, 1) uint8 with int64 labels equal to the file's; as_float is x / 255 in float32."""
    tr = data.load("smnist", "train")
    va = data.load("smnist", "val")
    te = data.load("smnist", "test")
    assert tr.x.shape == (50000, 784, 1) and va.x.shape == (10000, 784, 1) and te.x.shape == (10000, 784, 1)
    for d in (tr, va, te):
        assert d.x.dtype == np.uint8 and d.is_uint8
        assert d.y.dtype == np.int64
        assert d.x.flags.c_contiguous
    np.testing.assert_array_equal(tr.x[:, :, 0], raw_mnist["xtr"][:50000].reshape(50000, 784))
    np.testing.assert_array_equal(va.x[:, :, 0], raw_mnist["xtr"][50000:].reshape(10000, 784))
    np.testing.assert_array_equal(te.x[:, :, 0], raw_mnist["xte"].reshape(10000, 784))
    # row-major: step 28*r + c is pixel (r, c)
    assert tr.x[3, 28 * 10 + 17, 0] == raw_mnist["xtr"][3, 10, 17]
    np.testing.assert_array_equal(tr.y, raw_mnist["ytr"][:50000])
    np.testing.assert_array_equal(va.y, raw_mnist["ytr"][50000:])
    np.testing.assert_array_equal(te.y, raw_mnist["yte"])
    f = tr.as_float()[:5]
    assert f.dtype == np.float32 and f.max() <= 1.0 and f.min() >= 0.0
    np.testing.assert_allclose(f, tr.x[:5] / 255.0, rtol=1e-6)


def test_val_split_is_last_10k_and_disjoint_from_train():
    """train + val hold all 60,000 training rows (val has 10,000), their label counts add up to the file's,
    and their arrays share no memory."""
    tr = data.load("smnist", "train")
    va = data.load("smnist", "val")
    assert len(tr) + len(va) == 60000
    assert len(va) == data.N_VAL == 10000
    # train and val are views of different rows: their label histograms add up to the whole file
    counts = np.bincount(tr.y, minlength=10) + np.bincount(va.y, minlength=10)
    assert counts.tolist() == TRAIN_COUNTS
    assert not np.shares_memory(tr.x, va.x)


def test_psmnist_is_a_fixed_permutation():
    """psMNIST is sMNIST with every sequence's steps permuted by the one documented permutation (seeded),
    the same on train and test, labels unchanged, not the identity, with a different checksum."""
    s = data.load("smnist", "train", limit=300)
    p = data.load("psmnist", "train", limit=300)
    assert p.x.shape == s.x.shape and p.x.dtype == np.uint8
    np.testing.assert_array_equal(p.y, s.y)
    # same multiset of pixels per sequence
    np.testing.assert_array_equal(np.sort(p.x[:, :, 0], axis=1), np.sort(s.x[:, :, 0], axis=1))
    # not the identity
    assert (p.x != s.x).mean() > 0.05
    # one permutation for every sequence (the documented one), also on the test split
    perm = np.random.default_rng(data.PSMNIST_SEED).permutation(784)
    assert not np.array_equal(perm, np.arange(784))
    np.testing.assert_array_equal(p.x, s.x[:, perm])
    st = data.load("smnist", "test", limit=50)
    pt = data.load("psmnist", "test", limit=50)
    np.testing.assert_array_equal(pt.x, st.x[:, perm])
    assert p.checksum != s.checksum


def test_psmnist_deterministic_across_fresh_loads(monkeypatch):
    """Two psMNIST loads with the cache cleared between them give equal arrays and checksums."""
    a = data.load("psmnist", "val", limit=100)
    monkeypatch.setattr(data, "_CACHE", {})  # force a fresh read and a fresh permutation
    b = data.load("psmnist", "val", limit=100)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.checksum == b.checksum


def test_limit():
    """limit=7 gives the first 7 sequences and labels of the full split, a limit above the split's size gives
    the whole split, and the dataset is named smnist:train."""
    d = data.load("smnist", "train", limit=7)
    full = data.load("smnist", "train")
    assert len(d) == 7 and d.x.shape == (7, 784, 1)
    np.testing.assert_array_equal(d.x, full.x[:7])
    np.testing.assert_array_equal(d.y, full.y[:7])
    assert len(data.load("smnist", "val", limit=10**9)) == 10000
    assert d.name == "smnist:train"


@pytest.mark.parametrize("limit", [0, -1, -100])
def test_bad_limit(limit):
    """A limit of 0 or below is refused with an error that quotes the value."""
    with pytest.raises(IntssmError, match="--limit must be a positive number of sequences") as e:
        data.load("smnist", "train", limit=limit)
    assert str(limit) in str(e.value)


def test_unknown_dataset_and_split(tmp_path):
    """An unknown dataset name, a path that is not a dataset (.csv), and an unknown split are each refused
    with their own error (the first checked to be one line)."""
    with pytest.raises(IntssmError, match="unknown dataset 'nosuch'") as e:
        data.load("nosuch", "test")
    assert one_line(str(e.value))
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(IntssmError, match="unknown dataset"):
        data.load(str(tmp_path / "x.csv"), "test")
    with pytest.raises(IntssmError, match="unknown split 'dev'"):
        data.load("smnist", "dev")


# --------------------------------------------------------------------------- data.load: .npz datasets

N_TR = data.N_VAL + 10  # a user dataset of any size: validation is a stratified fraction of it


def _unique_rows(n: int, L: int) -> np.ndarray:
    """uint8 [n, L] whose first two steps encode the row index (so every row is distinct)."""
    x = np.random.default_rng(1).integers(0, 256, (n, L), dtype=np.uint8)
    x[:, 0] = np.arange(n) % 256
    x[:, 1] = np.arange(n) // 256
    return x


def test_npz_uint8_2d(tmp_path):
    """A uint8 [n, L] .npz loads as (n, L, 1): val is the stratified split's rows, disjoint from train and
    together all rows; test labels become int64, as_float is x / 255, and limit applies to val."""
    x = _unique_rows(N_TR, 5)
    y = np.arange(N_TR) % 7
    xt, yt = x[:13], y[:13].astype(np.int32)
    p = tmp_path / "u8.npz"
    np.savez(p, x_train=x, y_train=y, x_test=xt, y_test=yt)
    tr, va, te = (data.load(str(p), s) for s in ("train", "val", "test"))
    tri, vai = data.stratified_split(y, data.VAL_FRACTION)
    assert len(va) == len(vai) and abs(len(va) - data.VAL_FRACTION * N_TR) <= 7 and te.x.shape == (13, 5, 1)
    assert tr.x.dtype == np.uint8 and te.y.dtype == np.int64
    np.testing.assert_array_equal(tr.x[:, :, 0], x[tri])
    np.testing.assert_array_equal(va.x[:, :, 0], x[vai])
    np.testing.assert_array_equal(te.y, yt)
    # val = a stratified fraction, disjoint from train, together all rows
    idx = lambda d: set((d.x[:, 0, 0].astype(int) + 256 * d.x[:, 1, 0].astype(int)).tolist())  # noqa: E731
    assert idx(tr).isdisjoint(idx(va)) and idx(tr) | idx(va) == set(range(N_TR))
    np.testing.assert_allclose(te.as_float(), xt[:, :, None] / 255.0, rtol=1e-6)
    assert len(data.load(str(p), "val", limit=3)) == 3


def test_npz_float_3d(tmp_path):
    """A float [n, L, d] .npz loads as it is (float32 for as_float, not uint8), and train is the stratified
    split's train rows."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(N_TR, 4, 3)).astype(np.float32)
    xt = rng.normal(size=(6, 4, 3))
    p = tmp_path / "f.npz"
    np.savez(p, x_train=x, y_train=np.zeros(N_TR, np.int64), x_test=xt, y_test=np.arange(6))
    te = data.load(str(p), "test")
    assert te.x.shape == (6, 4, 3) and not te.is_uint8
    np.testing.assert_allclose(te.as_float(), xt.astype(np.float32))  # floats are used as they are
    assert te.as_float().dtype == np.float32
    tr = data.load(str(p), "train")
    np.testing.assert_array_equal(tr.x, x[data.stratified_split(np.zeros(N_TR, np.int64), data.VAL_FRACTION)[0]])


def test_npz_object_array_refused(tmp_path):
    """An .npz holding an object array is refused (no pickle) with a one-line error naming the path and cause."""
    obj = np.empty(N_TR, dtype=object)
    obj[:] = [np.zeros(3)] * N_TR
    p = tmp_path / "obj.npz"
    np.savez(p, x_train=obj, y_train=np.zeros(N_TR, np.int64), x_test=np.zeros((2, 3), np.uint8), y_test=np.zeros(2, np.int64))
    with pytest.raises(IntssmError, match="holds Python objects") as e:
        data.load(str(p), "test")
    msg = str(e.value)
    assert one_line(msg) and str(p) in msg
    assert "never loads" in msg and "allow_pickle" not in msg


def test_npz_missing_key(tmp_path):
    """An .npz without y_test is refused with a one-line error naming the missing array."""
    p = tmp_path / "miss.npz"
    np.savez(p, x_train=np.zeros((N_TR, 3), np.uint8), y_train=np.zeros(N_TR, np.int64), x_test=np.zeros((2, 3), np.uint8))
    with pytest.raises(IntssmError, match="lacks array.*y_test") as e:
        data.load(str(p), "test")
    assert one_line(str(e.value))


@pytest.mark.parametrize(
    "arrays,fragment",
    [
        (dict(x_train=np.zeros((N_TR, 3), np.uint8), y_train=np.zeros(5, np.int64)), "must be \\[n, L\\]"),
        (dict(x_train=np.zeros(N_TR, np.uint8), y_train=np.zeros(N_TR, np.int64)), "must be \\[n, L\\]"),
        (dict(x_train=np.zeros((N_TR, 3, 2, 2), np.uint8), y_train=np.zeros(N_TR, np.int64)), "must be \\[n, L\\]"),
        (dict(x_train=np.zeros((N_TR, 3), np.uint8), y_train=np.zeros((N_TR, 1), np.int64)), "must be \\[n, L\\]"),
        (dict(x_train=np.zeros((N_TR, 3), np.int64), y_train=np.zeros(N_TR, np.int64)), "must be uint8 or float"),
        (dict(x_train=np.full((N_TR, 3), np.nan), y_train=np.zeros(N_TR, np.int64)), "NaN or inf"),
        (dict(x_train=np.zeros((N_TR, 3), np.uint8), y_train=np.full(N_TR, -1)), "non-negative integer labels"),
        (dict(x_train=np.zeros((N_TR, 3), np.uint8), y_train=np.zeros(N_TR, np.float32)), "non-negative integer labels"),
        (dict(x_train=np.zeros((0, 3), np.uint8), y_train=np.zeros(0, np.int64)), "must be \\[n, L\\]"),
    ],
)
def test_npz_bad_shapes(tmp_path, arrays, fragment):
    """Wrong x/y shapes, an empty x, integer (non-uint8) x, NaN inputs, and negative or float labels are each
    refused with a one-line error naming the problem."""
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays, x_test=np.zeros((2, 3), np.uint8), y_test=np.zeros(2, np.int64))
    with pytest.raises(IntssmError, match=fragment) as e:
        data.load(str(p), "test")
    assert one_line(str(e.value))


@pytest.mark.parametrize("content", [b"", b"random bytes, not a zip archive at all"])
def test_npz_unreadable(tmp_path, content):
    """An empty file and random bytes are refused with a one-line "not a readable npz dataset" error."""
    p = tmp_path / "junk.npz"
    p.write_bytes(content)
    with pytest.raises(IntssmError, match="not a readable npz dataset") as e:
        data.load(str(p), "test")
    assert one_line(str(e.value))


@pytest.mark.parametrize("kind", ["truncated", "npy"])
def test_npz_truncated_or_npy(tmp_path, kind):
    """A truncated .npz and a plain .npy file are refused with IntssmError (type only; the message is not
    checked)."""
    p = tmp_path / "t.npz"
    if kind == "truncated":
        np.savez(p, x_train=np.zeros((N_TR, 3), np.uint8), y_train=np.zeros(N_TR, np.int64),
                 x_test=np.zeros((2, 3), np.uint8), y_test=np.zeros(2, np.int64))
        p.write_bytes(p.read_bytes()[:300])
    else:
        with open(p, "wb") as f:
            np.save(f, np.zeros((N_TR, 3), np.uint8))
    try:
        data.load(str(p), "test")
    except IntssmError:
        pass
    else:
        pytest.fail("no error")


# --------------------------------------------------------------------------- data.load: IDX directories


def _write_idx_dir(d, n_train=N_TR, n_test=5, gz_names=False, labels_train=None):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    xtr = rng.integers(0, 256, (n_train, 2, 2), dtype=np.uint8)
    xtr[:, 0, 0] = np.arange(n_train) % 256
    xtr[:, 0, 1] = np.arange(n_train) // 256
    ytr = (np.arange(n_train) % 10).astype(np.uint8) if labels_train is None else labels_train
    xte = rng.integers(0, 256, (n_test, 2, 2), dtype=np.uint8)
    yte = (np.arange(n_test) % 10).astype(np.uint8)
    files = {"train-images-idx3-ubyte": xtr, "train-labels-idx1-ubyte": ytr,
             "t10k-images-idx3-ubyte": xte, "t10k-labels-idx1-ubyte": yte}
    for name, arr in files.items():
        if gz_names:
            (d / (name + ".gz")).write_bytes(gzip.compress(idx_bytes(arr)))
        else:
            (d / name).write_bytes(idx_bytes(arr))
    return xtr, ytr, xte, yte


def test_idx_directory_loads(tmp_path):
    """A directory of four IDX files loads: images flattened to (n, 4, 1) uint8, labels int64, val the
    stratified split's rows, disjoint from train and together all rows, test as written, a SHA-256 checksum."""
    xtr, ytr, xte, yte = _write_idx_dir(tmp_path / "mini")
    tr, va, te = (data.load(str(tmp_path / "mini"), s) for s in ("train", "val", "test"))
    tri, vai = data.stratified_split(ytr.astype(np.int64), data.VAL_FRACTION)
    assert tr.x.shape == (len(tri), 4, 1) and va.x.shape == (len(vai), 4, 1) and te.x.shape == (5, 4, 1)
    assert tr.x.dtype == np.uint8 and tr.y.dtype == np.int64
    np.testing.assert_array_equal(tr.x[:, :, 0], xtr[tri].reshape(len(tri), 4))
    np.testing.assert_array_equal(va.x[:, :, 0], xtr[vai].reshape(len(vai), 4))
    np.testing.assert_array_equal(te.x[:, :, 0], xte.reshape(5, 4))
    np.testing.assert_array_equal(tr.y, ytr[tri])
    np.testing.assert_array_equal(te.y, yte)
    rid = lambda d: set((d.x[:, 0, 0].astype(int) + 256 * d.x[:, 1, 0].astype(int)).tolist())  # noqa: E731
    assert rid(tr).isdisjoint(rid(va)) and len(rid(tr) | rid(va)) == N_TR
    assert len(tr.checksum) == 64


def test_idx_directory_with_official_gz_names_but_other_bytes(tmp_path):
    """A user's IDX directory named like MNIST's files is their data, not a corrupt MNIST: it loads;
    the checksums guard the shipped copy (read_idx with check_known, as smnist loads it)."""
    xtr, ytr, xte, yte = _write_idx_dir(tmp_path / "fake", gz_names=True)
    te = data.load(str(tmp_path / "fake"), "test")
    np.testing.assert_array_equal(te.x[:, :, 0], xte.reshape(len(xte), -1))
    with pytest.raises(IntssmError, match="checksum does not match the official MNIST file"):
        data.read_idx(tmp_path / "fake" / "t10k-images-idx3-ubyte.gz", check_known=True)


def test_idx_directory_missing_file(tmp_path):
    """An IDX directory without its test labels file is refused naming that file."""
    _write_idx_dir(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(IntssmError, match="missing t10k-labels-idx1-ubyte"):
        data.load(str(tmp_path / "m"), "test")


def test_idx_directory_label_count_mismatch(tmp_path):
    """An IDX directory whose training labels are one fewer than its images is refused."""
    _write_idx_dir(tmp_path / "mm", labels_train=np.zeros(N_TR - 1, np.uint8))
    with pytest.raises(IntssmError, match="train images .* and labels .* do not match"):
        data.load(str(tmp_path / "mm"), "test")


def test_idx_directory_small_dataset_loads(tmp_path):
    """100 training rows (not MNIST-sized) load with a stratified validation split."""
    _write_idx_dir(tmp_path / "small", n_train=100)
    tr, va = data.load(str(tmp_path / "small"), "train"), data.load(str(tmp_path / "small"), "val")
    assert len(tr) + len(va) == 100 and len(va) >= 1


def test_uea_sources_record_every_shipped_file():
    """data/uea/SOURCES.md lists a SHA-256 for every shipped .ts file, each equal to the file's own;
    ACSF1 (the long univariate task with rare bursts) loads as 100 / 100 sequences of 1,460 steps."""
    uea = data.DATA_DIR / "uea"
    listed = dict(line.split()[::-1] for line in (uea / "SOURCES.md").read_text().splitlines()
                  if len(line.split()) == 2 and len(line.split()[0]) == 64)
    shipped = sorted(str(p.relative_to(uea)) for p in uea.glob("*/*.ts"))
    assert sorted(listed) == shipped
    for name, sha in listed.items():
        assert hashlib.sha256((uea / name).read_bytes()).hexdigest() == sha, name
    tr, te = data.load(str(uea / "ACSF1"), "train", None, 0.0), data.load(str(uea / "ACSF1"), "test")
    assert tr.x.shape == te.x.shape == (100, 1460, 1) and tr.x.dtype == np.float32
    assert sorted(set(tr.y.tolist())) == list(range(10))
