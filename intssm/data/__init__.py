"""Sequence datasets: sMNIST / psMNIST (the shipped MNIST), UEA/UCR ``.ts`` archives, IDX
directories and ``.npz`` files, with fixed or per-sequence lengths.

Raw ``uint8`` sequences keep their codes: the float model sees ``p / 255`` and the integer
datapath takes ``p`` itself, so nothing is lost between the two. Float sequences reach the
integer datapath through the model's input quantizer (:mod:`intssm.datapath.inputq`).

Splits: ``train`` and ``val`` (model selection only) partition the training sequences; ``test``
is the source's own test set (reporting only). sMNIST keeps the last 10,000 training images as
``val``; every other dataset a seeded stratified fraction (:func:`stratified_split`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from intssm.errors import IntssmError

def _data_dir() -> Path:
    """The shipped data: ``$INTSSM_DATA`` if set, else the copy installed with the package
    (``intssm/_data``, a non-editable install), else the checkout's ``data/``."""
    if os.environ.get("INTSSM_DATA"):
        return Path(os.environ["INTSSM_DATA"])
    pkg = Path(__file__).resolve().parent.parent  # intssm/
    installed = pkg / "_data"
    return installed if installed.is_dir() else pkg.parent / "data"


DATA_DIR = _data_dir()
MNIST_DIR = DATA_DIR / "mnist"

#: SHA-256 of the official gzip files (see data/mnist/SOURCES.md).
KNOWN_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
#: MD5 of the official gzip files (the ones torchvision checks).
KNOWN_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

N_VAL = 10_000  # sMNIST / psMNIST validation: the last 10,000 training images
VAL_FRACTION = 0.2  # every other dataset: this stratified fraction of its training sequences
SPLIT_SEED = 0  # seed of that split (intssm.data.stratified_split): the same split in every command
#: psMNIST permutation: ``np.random.default_rng(PSMNIST_SEED).permutation(784)``.
PSMNIST_SEED = 0
SEQS = ("smnist", "psmnist")
SPLITS = ("train", "val", "test")

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# Limits on what a dataset may hold, checked from headers before a byte of data is inflated, so
# memory stays bounded by the work and not by what a file claims:
MAX_STEPS = 1 << 17  # time steps per sequence (131,072; the longest UEA series has 17,984)
MAX_VALUES = 1 << 27  # values per array (n x L x d: 134,217,728, 512 MiB as float32; sMNIST train: 47M)
F32_MAX = float(np.finfo(np.float32).max)  # every float value must fit float32 (the float model's type)


def check_shape(shape, where: str) -> None:
    """Refuse an (n, L[, d]) sequence array beyond :data:`MAX_STEPS` or :data:`MAX_VALUES`, from its
    declared shape alone."""
    shape = tuple(int(v) for v in shape)
    if len(shape) >= 2 and shape[1] > MAX_STEPS:
        raise IntssmError(f"{where}: sequences of {shape[1]:,} steps; intssm takes at most {MAX_STEPS:,} "
                          "(cut them into windows)")
    n = 1
    for v in shape:
        n *= v
    if n > MAX_VALUES:
        raise IntssmError(f"{where}: shape {shape} holds {n:,} values; intssm takes at most {MAX_VALUES:,} per array "
                          "(use fewer or shorter sequences)")


def check_range(x: np.ndarray, where: str) -> None:
    """Refuse float values that are NaN, infinite or beyond the float32 range (they would become
    inf in the float model and NaN in its loss)."""
    if not np.issubdtype(x.dtype, np.floating) or x.size == 0:
        return
    if not np.isfinite(x).all():
        raise IntssmError(f"{where} contains NaN or inf")
    m = float(np.abs(x).max())
    if m > F32_MAX:
        raise IntssmError(f"{where} holds a value of magnitude {m:.3g}, beyond float32's {F32_MAX:.4g}; rescale the data")


def regular_file(p: Path, what: str) -> Path:
    """``p`` must be an existing regular file (after symlinks): a missing path, a directory or a
    FIFO / device (which would block or never end) each get their own message."""
    import stat

    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise IntssmError(f"{what} not found: {p}") from None
    except OSError as e:
        raise IntssmError(f"{what} {p}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise IntssmError(f"{what} {p} is a directory; give a file")
    if not stat.S_ISREG(st.st_mode):
        raise IntssmError(f"{what} {p} is not a regular file (a FIFO, socket or device); give a file")
    return p


def read_idx(path: str | Path, check_known: bool = True) -> np.ndarray:
    """Read an IDX file (raw or gzip): magic ``00 00 <dtype> <ndim>``, big-endian dims, payload.

    Validates the magic number, the dimension count and that the payload has exactly
    ``prod(dims) * itemsize`` bytes. The header is read first and the dimensions checked against
    :func:`check_shape`; a gzip stream is then inflated only up to what the header declares (one
    byte more shows a longer payload), so a file that inflates far beyond its header costs no
    memory. Files named like an official MNIST ``.gz`` are also checked against its published MD5
    and SHA-256.
    """
    path = regular_file(Path(path), "IDX file")
    if check_known and path.name in KNOWN_SHA256:
        raw = path.read_bytes()  # an official file is 10 MB at most
        if hashlib.sha256(raw).hexdigest() != KNOWN_SHA256[path.name] or (
            hashlib.md5(raw).hexdigest() != KNOWN_MD5[path.name]
        ):
            raise IntssmError(f"{path}: checksum does not match the official MNIST file")
    with open(path, "rb") as f0:
        gz = f0.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or not 1 <= head[3] <= 4:
                raise IntssmError(f"{path}: not an IDX file (bad magic number {head[:4].hex()})")
            ndim = head[3]
            dh = f.read(4 * ndim)
            if len(dh) < 4 * ndim:
                raise IntssmError(f"{path}: truncated IDX header")
            dims = tuple(int.from_bytes(dh[4 * i : 4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            check_shape(dims if ndim != 3 else (dims[0], dims[1] * dims[2]), str(path))
            expected = int(np.prod(dims)) * dtype.itemsize
            payload = f.read(expected + 1)
            if len(payload) != expected:
                more = " or more" if len(payload) > expected else ""
                raise IntssmError(f"{path}: IDX payload has {len(payload)} bytes{more}, dims {dims} need {expected}")
    except (OSError, EOFError, zlib.error) as e:
        if not gz:
            raise IntssmError(f"{path}: cannot read ({e})") from None
        raise IntssmError(f"{path}: corrupt gzip stream ({e})") from None
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


@dataclass
class SeqData:
    """Sequences ``x`` of shape (n, L, d) -- uint8 raw codes or float32 -- labels ``y`` (n,) and each
    sequence's length ``lengths`` (n,): steps ``lengths[i]`` and beyond are padding, never read."""

    x: np.ndarray
    y: np.ndarray
    name: str
    checksum: str  # sha256 identifying the source files and the transform
    lengths: np.ndarray = None  # (n,) int64; None on construction means every sequence is full length
    classes: tuple | None = None  # class names where the source has them (.ts @classLabel)

    def __post_init__(self):
        if self.lengths is None:
            self.lengths = np.full(len(self.y), self.x.shape[1], np.int64)

    @property
    def is_uint8(self) -> bool:
        return self.x.dtype == np.uint8

    @property
    def varlen(self) -> bool:
        """True when some sequence is shorter than the padded length."""
        return bool(len(self.lengths)) and int(self.lengths.min()) != self.x.shape[1]

    def as_float(self) -> np.ndarray:
        """The float model's input: ``p / 255`` for raw pixels, the values themselves otherwise."""
        if self.is_uint8:
            from intssm.datapath.inputq import model_input

            return model_input(self.x)
        return self.x.astype(np.float32)

    def __len__(self) -> int:
        return len(self.y)

    def check_features(self, d_input: int) -> None:
        """Refuse sequences whose features per step are not the ``d_input`` a model reads."""
        if self.x.shape[-1] != d_input:
            raise IntssmError(f"dataset {self.name} has {self.x.shape[-1]} features per step, the model expects {d_input}")

    def check_labels(self, n_classes: int) -> None:
        """Refuse labels a model with ``n_classes`` outputs cannot score."""
        if len(self.y) and int(self.y.max()) >= n_classes:
            raise IntssmError(f"{self.name}: label {int(self.y.max())} is beyond the model's {n_classes} classes")


def _idx_dir_arrays(d: Path, check_known: bool):
    names = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        for kind, idx in (("images", "idx3"), ("labels", "idx1")):
            cands = [d / c for c in (f"{stem}-{kind}-{idx}-ubyte.gz", f"{stem}-{kind}-{idx}-ubyte", f"{stem}-{kind}.{idx}-ubyte")]
            found = [c for c in cands if c.exists()]
            if not found:
                raise IntssmError(f"{d}: missing {stem}-{kind}-{idx}-ubyte[.gz]")
            if len(found) > 1:
                raise IntssmError(f"{d}: holds both {found[0].name} and {found[1].name}; keep one of them so it is "
                                  "clear which is read")
            names[(split, kind)] = found[0]
    h = hashlib.sha256()
    arrays = {}
    for key in sorted(names):
        p = names[key]
        arrays[key] = read_idx(p, check_known)
        h.update(_file_sha256(p).encode())
    xtr, ytr = arrays[("train", "images")], arrays[("train", "labels")]
    xte, yte = arrays[("test", "images")], arrays[("test", "labels")]
    for x, y, s in ((xtr, ytr, "train"), (xte, yte, "test")):
        if x.ndim not in (2, 3) or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
            raise IntssmError(f"{d}: {s} images {x.shape} and labels {y.shape} do not match")
        if x.dtype != np.uint8:
            raise IntssmError(f"{d}: {s} images must be uint8, got {x.dtype}")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise IntssmError(f"{d}: {s} labels must be non-negative integers")
    xtr, xte = xtr.reshape(len(xtr), -1, 1), xte.reshape(len(xte), -1, 1)
    return _Source(xtr, ytr.astype(np.int64), None, xte, yte.astype(np.int64), None, None, h.hexdigest())


@dataclass
class _Source:
    xtr: np.ndarray
    ytr: np.ndarray
    ltr: np.ndarray | None
    xte: np.ndarray
    yte: np.ndarray
    lte: np.ndarray | None
    classes: tuple | None
    checksum: str


#: npz members: sequences and labels, and optionally each sequence's length
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_LENGTH_KEYS = ("len_train", "len_test")


def _file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _npz_member(z: zipfile.ZipFile, p: Path, key: str) -> np.ndarray:
    """One array of an npz, its header checked before its data is inflated: no object dtype, a
    shape within :func:`check_shape` (sequence arrays), and a member no larger than its shape holds
    (so inflation is bounded by the header, whatever the compression ratio)."""
    info = z.getinfo(f"{key}.npy")
    with z.open(info) as f:
        try:
            major, _ = np.lib.format.read_magic(f)
            read = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}.get(major)
            if read is None:
                raise ValueError(f"npy format version {major}")
            shape, fortran, dtype = read(f)
        except ValueError as e:
            raise IntssmError(f"{p}: array {key} has an unreadable header ({str(e).splitlines()[0][:120]})") from None
        if dtype.hasobject:
            raise IntssmError(f"{p}: array {key} holds Python objects (pickled data), which intssm never loads; "
                              "save plain numeric arrays")
        n = 1
        for v in shape:
            n *= int(v)
        if key.startswith("x_"):
            check_shape(shape, f"{p}: {key}")
        elif n > MAX_VALUES:
            raise IntssmError(f"{p}: {key} has {n:,} entries; intssm takes at most {MAX_VALUES:,}")
        if info.file_size > f.tell() + dtype.itemsize * n:
            raise IntssmError(f"{p}: member {key} inflates to {info.file_size:,} bytes, more than its shape {shape} holds")
    with z.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _npz_arrays(p: Path):
    regular_file(p, "npz dataset")
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as f:
            head = f.read(6)
        kind = "a single .npy array" if head == b"\x93NUMPY" else "not a zip archive"
        raise IntssmError(f"{p}: not a readable npz dataset ({kind}); save the dataset with numpy.savez(path, x_train=..., "
                          "y_train=..., x_test=..., y_test=...)")
    try:
        with zipfile.ZipFile(p) as z:
            names = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
            missing = [k for k in NPZ_KEYS if k not in names]
            if missing:
                raise IntssmError(f"{p}: npz dataset lacks array(s) {', '.join(missing)} (it has: "
                                  f"{', '.join(sorted(names))[:200] or 'none'})")
            arrs = {k: _npz_member(z, p, k) for k in NPZ_KEYS + NPZ_LENGTH_KEYS if k in names}
    except IntssmError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        raise IntssmError(f"{p}: not a readable npz dataset ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from None
    out = []
    for s in ("train", "test"):
        x, y = arrs[f"x_{s}"], arrs[f"y_{s}"]
        if x.ndim == 2:
            x = x[:, :, None]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or len(y) == 0 or x.shape[1] == 0 or x.shape[2] == 0:
            raise IntssmError(f"{p}: x_{s} must be [n, L] or [n, L, d] and y_{s} [n], got {x.shape}, {y.shape}")
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise IntssmError(f"{p}: x_{s} must be uint8 or float, got {x.dtype}")
        check_range(x, f"{p}: x_{s}")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise IntssmError(f"{p}: y_{s} must hold non-negative integer labels")
        lens = arrs.get(f"len_{s}")
        if lens is not None:
            if lens.shape != y.shape or not np.issubdtype(lens.dtype, np.integer):
                raise IntssmError(f"{p}: len_{s} must be an integer array of shape {y.shape}, got {lens.dtype} {lens.shape}")
            if lens.min() < 1 or lens.max() > x.shape[1]:
                raise IntssmError(f"{p}: len_{s} must lie in 1..{x.shape[1]} (the padded length of x_{s}), "
                                  f"got {int(lens.min())}..{int(lens.max())}")
            lens = lens.astype(np.int64)
        out += [x if x.dtype == np.uint8 else x.astype(np.float32), y.astype(np.int64), lens]
    if out[0].dtype != out[3].dtype or out[0].shape[2] != out[3].shape[2]:
        raise IntssmError(f"{p}: x_train and x_test must have the same dtype and features per step")
    return _Source(*out, None, _file_sha256(p))


def _ts_arrays(path: Path):
    from intssm.data.tsformat import read_ts, ts_pair

    ftr, fte = ts_pair(path)
    tr, te = read_ts(ftr), read_ts(fte)
    if tr.classes != te.classes:
        raise IntssmError(f"{path}: train and test files declare different @classLabel lists")
    if tr.x.shape[2] != te.x.shape[2]:
        raise IntssmError(f"{path}: train has {tr.x.shape[2]} channels, test {te.x.shape[2]}")
    h = hashlib.sha256()
    for f in (ftr, fte):
        h.update(_file_sha256(f).encode())
    return _Source(tr.x, tr.y, tr.lengths, te.x, te.y, te.lengths, tuple(tr.classes), h.hexdigest())


def stratified_split(y: np.ndarray, fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), each sorted: per class, ``round(fraction * n_c)``
    sequences drawn with ``default_rng(seed)`` go to validation, at least 1 and at most n_c - 1
    (a class with one sequence stays in training). ``fraction`` 0: no validation split."""
    if fraction == 0:
        return np.arange(len(y)), np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        val.append(rng.permutation(idx)[:k])
    v = np.sort(np.concatenate(val)).astype(np.int64)
    return np.setdiff1d(np.arange(len(y)), v), v


_CACHE: dict = {}


def resolve(seq: str) -> str:
    """A dataset name or path as given; a relative path that does not exist from here but does
    under the project's data directory's parent (``data/uea/...``, as the shipped checkpoints
    record it) resolves there."""
    if seq in SEQS or os.path.exists(seq) or os.path.isabs(seq):
        return seq
    parts = Path(seq).parts
    alt = DATA_DIR.joinpath(*parts[1:]) if parts and parts[0] == "data" else DATA_DIR / seq
    return str(alt) if alt.exists() else seq


def _source(seq: str) -> _Source:
    from intssm.data.tsformat import is_ts_dataset

    seq = resolve(seq)
    key = seq if seq in SEQS else (seq, os.path.getmtime(seq) if os.path.exists(seq) else None)
    if key not in _CACHE:
        if seq in SEQS:
            src = _idx_dir_arrays(MNIST_DIR, check_known=True)
        else:
            p = Path(seq)
            if p.suffix == ".npz" and p.is_dir():
                raise IntssmError(f"npz dataset {p} is a directory; give a file")
            if is_ts_dataset(p):
                src = _ts_arrays(p)
            elif p.is_dir():
                src = _idx_dir_arrays(p, check_known=False)
            elif p.suffix == ".npz" and p.exists():
                src = _npz_arrays(p)
            else:
                raise IntssmError(
                    f"unknown dataset {seq!r}: use smnist, psmnist, a UEA/UCR .ts dataset (its directory or "
                    "NAME_TRAIN.ts), a directory of IDX files or an .npz file"
                )
        if seq == "psmnist":
            perm = np.random.default_rng(PSMNIST_SEED).permutation(src.xtr.shape[1])
            src.xtr, src.xte = src.xtr[:, perm], src.xte[:, perm]
            src.checksum = hashlib.sha256((src.checksum + ":psmnist").encode()).hexdigest()
        if seq in SEQS and len(src.ytr) <= N_VAL:
            raise IntssmError(f"{seq}: needs more than {N_VAL} training sequences")
        _CACHE[key] = src
    return _CACHE[key]


@dataclass
class DataInfo:
    """What a model needs to know about a dataset: features per step, classes, padded length."""

    d_input: int
    n_classes: int
    max_len: int
    varlen: bool
    is_uint8: bool
    classes: tuple | None


def info(seq: str) -> DataInfo:
    s = _source(seq)
    n_classes = len(s.classes) if s.classes else int(max(s.ytr.max(), s.yte.max())) + 1
    lens = [l for l in (s.ltr, s.lte) if l is not None]
    max_len = max(s.xtr.shape[1], s.xte.shape[1])
    varlen = any(int(l.min()) != int(l.max()) for l in lens) or s.xtr.shape[1] != s.xte.shape[1]
    return DataInfo(int(s.xtr.shape[2]), n_classes, max_len, varlen, s.xtr.dtype == np.uint8, s.classes)


def load(seq: str, split: str = "test", limit: int | None = None, val_fraction: float | None = None) -> SeqData:
    """Load split ``train`` | ``val`` | ``test`` of ``seq`` = ``smnist`` | ``psmnist`` | a path.

    A path is a UEA/UCR ``.ts`` dataset (its directory, or its ``NAME_TRAIN.ts``), a directory of
    IDX files in the standard train/t10k naming, or an ``.npz`` with ``x_train, y_train, x_test,
    y_test`` and optionally ``len_train, len_test``. ``limit`` keeps the first ``limit`` sequences.

    Validation: sMNIST and psMNIST hold out the last 10,000 training images; every other dataset a
    seeded stratified ``val_fraction`` of its training sequences (:func:`stratified_split`; default
    :data:`VAL_FRACTION`). The test split is never part of either.
    """
    if split not in SPLITS:
        raise IntssmError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise IntssmError(f"--limit must be a positive number of sequences, got {limit}")
    frac = VAL_FRACTION if val_fraction is None else val_fraction
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac < 1:
        raise IntssmError(f"--val-fraction must be in [0, 1), got {frac!r}")
    s = _source(seq)
    if split == "test":
        x, y, lens = s.xte, s.yte, s.lte
    else:
        if seq in SEQS:
            n = len(s.ytr)
            idx = np.arange(n - N_VAL) if split == "train" else np.arange(n - N_VAL, n)
        else:
            tr_idx, va_idx = stratified_split(s.ytr, frac)
            idx = tr_idx if split == "train" else va_idx
        x, y = s.xtr[idx], s.ytr[idx]
        lens = s.ltr[idx] if s.ltr is not None else None
    if limit is not None:
        x, y = x[:limit], y[:limit]
        lens = lens[:limit] if lens is not None else None
    return SeqData(np.ascontiguousarray(x), y, name=f"{seq}:{split}", checksum=s.checksum,
                   lengths=None if lens is None else np.ascontiguousarray(lens), classes=s.classes)
