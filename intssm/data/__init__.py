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


def read_idx(path: str | Path, check_known: bool = True) -> np.ndarray:
    """Read an IDX file (raw or gzip): magic ``00 00 <dtype> <ndim>``, big-endian dims, payload.

    Validates the magic number, the dimension count and that the payload has exactly
    ``prod(dims) * itemsize`` bytes. Files named like an official MNIST ``.gz`` are also checked
    against its published MD5 and SHA-256.
    """
    path = Path(path)
    if not path.is_file():
        raise IntssmError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if check_known and path.name in KNOWN_SHA256:
        if hashlib.sha256(raw).hexdigest() != KNOWN_SHA256[path.name] or (
            hashlib.md5(raw).hexdigest() != KNOWN_MD5[path.name]
        ):
            raise IntssmError(f"{path}: checksum does not match the official MNIST file")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IntssmError(f"{path}: corrupt gzip stream ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 4:
        raise IntssmError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise IntssmError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    payload = raw[4 + 4 * ndim :]
    if len(payload) != expected:
        raise IntssmError(f"{path}: IDX payload has {len(payload)} bytes, dims {dims} need {expected}")
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
            return self.x.astype(np.float32) / np.float32(255.0)
        return self.x.astype(np.float32)

    def __len__(self) -> int:
        return len(self.y)

    def check_labels(self, n_classes: int) -> None:
        """Refuse labels a model with ``n_classes`` outputs cannot score."""
        if len(self.y) and int(self.y.max()) >= n_classes:
            raise IntssmError(f"{self.name}: label {int(self.y.max())} is beyond the model's {n_classes} classes")


def _idx_dir_arrays(d: Path, check_known: bool):
    names = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        for kind, idx in (("images", "idx3"), ("labels", "idx1")):
            for cand in (f"{stem}-{kind}-{idx}-ubyte.gz", f"{stem}-{kind}-{idx}-ubyte", f"{stem}-{kind}.{idx}-ubyte"):
                if (d / cand).is_file():
                    names[(split, kind)] = d / cand
                    break
            else:
                raise IntssmError(f"{d}: missing {stem}-{kind}-{idx}-ubyte[.gz]")
    h = hashlib.sha256()
    arrays = {}
    for key in sorted(names):
        p = names[key]
        h.update(hashlib.sha256(p.read_bytes()).hexdigest().encode())
        arrays[key] = read_idx(p, check_known)
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


def _npz_arrays(p: Path):
    try:
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise IntssmError(f"{p}: not an .npz archive (a single array)")
        with z:
            arrs = {k: z[k] for k in NPZ_KEYS}
            arrs |= {k: z[k] for k in NPZ_LENGTH_KEYS if k in z.files}
    except KeyError as e:
        raise IntssmError(f"{p}: npz dataset lacks array {e}") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise IntssmError(f"{p}: not a readable npz dataset ({str(e).splitlines()[0]})") from None
    out = []
    for s in ("train", "test"):
        x, y = arrs[f"x_{s}"], arrs[f"y_{s}"]
        if x.ndim == 2:
            x = x[:, :, None]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or len(y) == 0 or x.shape[1] == 0 or x.shape[2] == 0:
            raise IntssmError(f"{p}: x_{s} must be [n, L] or [n, L, d] and y_{s} [n], got {x.shape}, {y.shape}")
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise IntssmError(f"{p}: x_{s} must be uint8 or float, got {x.dtype}")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise IntssmError(f"{p}: x_{s} contains NaN or inf")
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
    return _Source(*out, None, hashlib.sha256(p.read_bytes()).hexdigest())


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
        h.update(hashlib.sha256(f.read_bytes()).hexdigest().encode())
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
            if is_ts_dataset(p):
                src = _ts_arrays(p)
            elif p.is_dir():
                src = _idx_dir_arrays(p, check_known=False)
            elif p.is_file() and p.suffix == ".npz":
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
