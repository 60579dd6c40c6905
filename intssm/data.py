"""MNIST as pixel sequences: IDX reading with validation, sMNIST / psMNIST / custom datasets.

Sequences keep their raw ``uint8`` pixels: the float model sees ``p / 255`` and the integer
datapath takes ``p`` itself, so nothing is lost between the two.

Splits: ``train`` = the first 50,000 training images, ``val`` = the last 10,000 training images
(model selection only), ``test`` = the 10,000 official test images (reporting only).
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

from .errors import IntssmError

DATA_DIR = Path(os.environ.get("INTSSM_DATA", Path(__file__).resolve().parent.parent / "data"))
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

N_VAL = 10_000
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
    """Sequences ``x`` of shape (n, L, d) -- uint8 raw pixels or float32 -- and labels ``y`` (n,)."""

    x: np.ndarray
    y: np.ndarray
    name: str
    checksum: str  # sha256 identifying the source files and the transform

    @property
    def is_uint8(self) -> bool:
        return self.x.dtype == np.uint8

    def as_float(self) -> np.ndarray:
        """The float model's input: ``p / 255`` for raw pixels, the values themselves otherwise."""
        if self.is_uint8:
            return self.x.astype(np.float32) / np.float32(255.0)
        return self.x.astype(np.float32)

    def __len__(self) -> int:
        return len(self.y)


def _idx_dir_arrays(d: Path):
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
        arrays[key] = read_idx(p)
    xtr, ytr = arrays[("train", "images")], arrays[("train", "labels")]
    xte, yte = arrays[("test", "images")], arrays[("test", "labels")]
    for x, y, s in ((xtr, ytr, "train"), (xte, yte, "test")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise IntssmError(f"{d}: {s} images {x.shape} and labels {y.shape} do not match")
    return xtr.reshape(len(xtr), -1, 1), ytr, xte.reshape(len(xte), -1, 1), yte, h.hexdigest()


def _npz_arrays(p: Path):
    try:
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise IntssmError(f"{p}: not an .npz archive (a single array)")
        with z:
            arrs = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
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
        out += [x, y.astype(np.int64)]
    return (*out, hashlib.sha256(p.read_bytes()).hexdigest())


_CACHE: dict = {}


def load(seq: str, split: str = "test", limit: int | None = None) -> SeqData:
    """Load split ``train`` | ``val`` | ``test`` of ``seq`` = ``smnist`` | ``psmnist`` | a path.

    A path is a directory of IDX files in the standard train/t10k naming, or an ``.npz`` with
    ``x_train, y_train, x_test, y_test``. ``limit`` keeps the first ``limit`` sequences.
    """
    if split not in SPLITS:
        raise IntssmError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise IntssmError(f"--limit must be a positive number of sequences, got {limit}")
    key = seq if seq in SEQS else (seq, os.path.getmtime(seq) if os.path.exists(seq) else None)
    if key not in _CACHE:
        if seq in SEQS:
            src = MNIST_DIR
            xtr, ytr, xte, yte, chk = _idx_dir_arrays(src)
        else:
            p = Path(seq)
            if p.is_dir():
                xtr, ytr, xte, yte, chk = _idx_dir_arrays(p)
            elif p.is_file() and p.suffix == ".npz":
                xtr, ytr, xte, yte, chk = _npz_arrays(p)
            else:
                raise IntssmError(
                    f"unknown dataset {seq!r}: use smnist, psmnist, a directory of IDX files or an .npz file"
                )
        if seq == "psmnist":
            perm = np.random.default_rng(PSMNIST_SEED).permutation(xtr.shape[1])
            xtr, xte = xtr[:, perm], xte[:, perm]
            chk = hashlib.sha256((chk + ":psmnist").encode()).hexdigest()
        if len(ytr) <= N_VAL:
            raise IntssmError(f"{seq}: needs more than {N_VAL} training sequences to carve a validation split")
        _CACHE[key] = (xtr, ytr.astype(np.int64), xte, yte.astype(np.int64), chk)
    xtr, ytr, xte, yte, chk = _CACHE[key]
    if split == "train":
        x, y = xtr[:-N_VAL], ytr[:-N_VAL]
    elif split == "val":
        x, y = xtr[-N_VAL:], ytr[-N_VAL:]
    else:
        x, y = xte, yte
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return SeqData(np.ascontiguousarray(x), y, name=f"{seq}:{split}", checksum=chk)
