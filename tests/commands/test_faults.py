"""Faults and hostile inputs through the command line, as a user meets them: each case runs
``intssm`` in a subprocess under a 4 GiB address-space cap, measures its peak RSS, and checks what
it gets -- one ``error:`` line and exit 2 for a refusal, nothing written over what is not an
output, no traceback, memory bounded by the work.

Classes: 1 outputs that are not ours, 2 finite but out of range, 3 memory bounded by
what is read, 4 hostile structure and options, 5 a cache tied to its source, 6 full disks and
broken toolchains, 7 resume that obeys, 8 a double Ctrl-C, 9 messages that say what is wrong.
Cheap cases (no Torch) come first; the case table says what each case gets.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CK = ROOT / "data" / "checkpoints"
JV = ROOT / "data" / "uea" / "JapaneseVowels"
JVF, JVQ, BMQ, BMF = CK / "japanesevowels-fp32.pt", CK / "japanesevowels-hetero.pt", CK / "basicmotions-hetero.pt", CK / "basicmotions-fp32.pt"
MEM_CAP = 4 << 30  # RLIMIT_AS of every case: an interpreter with Torch and Numba maps ~2 GiB
PEAK_RSS_LIMIT_KB = 1_200_000  # what a refusal may use at most (Torch + Numba loaded: ~0.5 GB)
PEAKS: dict = {}  # case -> peak RSS (kB), printed at the end of the module


def cli(args, tmp: Path, env: dict | None = None, fsize: int | None = None, umask: int | None = None,
        timeout: float = 240, on_start=None):
    """Run ``python -m intssm *args`` (``{tmp}`` replaced); (exit code, stdout, stderr, peak RSS kB).
    ``fsize``: RLIMIT_FSIZE in bytes (a full disk without root: writes past it fail with EFBIG);
    ``on_start(proc)``: called once the process runs (to send it signals)."""
    args = [str(a).replace("{tmp}", str(tmp)) for a in args]

    def pre():
        resource.setrlimit(resource.RLIMIT_AS, (MEM_CAP, MEM_CAP))
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by signal
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if umask is not None:
            os.umask(umask)

    e = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", COLUMNS="200", PYTHONPATH=str(ROOT),
             INTSSM_CACHE_DIR=str(tmp / "cache"))
    e.update(env or {})
    with open(tmp / ".stdout", "w+") as out, open(tmp / ".stderr", "w+") as err:
        p = subprocess.Popen([sys.executable, "-m", "intssm", *args], stdout=out, stderr=err, env=e, preexec_fn=pre,
                             cwd=tmp)
        if on_start:
            on_start(p)
        t0 = time.time()
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() - t0 > timeout:
                p.kill()
                pytest.fail(f"{args} ran past {timeout} s")
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read(), err.read(), usage.ru_maxrss


def refused(fragment: str, last_line: bool = False):
    """Exit 2, no traceback, one stderr line ``error: ...`` holding ``fragment`` (``last_line``: the
    command printed progress lines before it; the error must be the last)."""

    def check(rc, out, err, tmp):
        assert "Traceback" not in err, err[-3000:]
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines, err
        if not last_line:
            assert len(lines) == 1, err[-3000:]
        assert lines[-1].startswith("error:") and fragment in lines[-1], err[-3000:]
        assert sum(ln.startswith("error:") for ln in lines) == 1
        assert rc == 2, (rc, err[-2000:])

    return check


def both(*checks):
    def check(rc, out, err, tmp):
        for c in checks:
            c(rc, out, err, tmp)

    return check


# ------------------------------------------------------------------------------ file builders ---

def _npz(path: Path, **arrays):
    base = dict(x_train=np.zeros((12, 5, 12), np.float32), y_train=np.arange(12) % 9,
                x_test=np.zeros((4, 5, 12), np.float32), y_test=np.arange(4) % 9)
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def _npy_header(shape, dtype="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _npz_declaring(path: Path, key: str, shape, dtype="<f4", payload: bytes = b""):
    """An npz whose member ``key`` declares ``shape`` in its header but holds only ``payload``."""
    _npz(path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[f"{key}.npy"] = _npy_header(shape, dtype) + payload
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in members.items():
            z.writestr(n, b)
    return path


def _npz_member_bomb(path: Path):
    """x_train's header says (12, 5, 12) uint8 (720 bytes), its member inflates to 64 MiB of zeros."""
    _npz(path, x_train=np.zeros((12, 5, 12), np.uint8), x_test=np.zeros((4, 5, 12), np.uint8))
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["x_train.npy"] = _npy_header((12, 5, 12), "|u1") + bytes(64 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in members.items():
            z.writestr(n, b)
    return path


def _ts_dir(d: Path, train_lines=None, test_lines=None, value="1.0"):
    """A copy of JapaneseVowels-like .ts files: 2 channels, classes a b."""
    d.mkdir(parents=True, exist_ok=True)
    head = ("@problemName T\n@timeStamps false\n@missing false\n@univariate false\n@dimensions 2\n"
            "@equalLength false\n@classLabel true a b\n@data\n")
    ok = [f"{value},2,3:4,5,6:a", "1,2,3:4,5,6:b", "1,2:4,5:a", "3,2,1:6,5,4:b"] * 3
    (d / "T_TRAIN.ts").write_text(head + "\n".join(train_lines or ok) + "\n")
    (d / "T_TEST.ts").write_text(head + "\n".join(test_lines or ok[:4]) + "\n")
    return d


def _idx(shape, payload_len=None, dtype_code=0x08) -> bytes:
    head = bytes([0, 0, dtype_code, len(shape)]) + b"".join(int(v).to_bytes(4, "big") for v in shape)
    n = int(np.prod(shape)) if payload_len is None else payload_len
    return head + bytes(n)


def _idx_dir(d: Path, gz=True):
    d.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", 30), ("t10k", 10)):
        for kind, idx, shape in (("images", "idx3", (n, 4, 4)), ("labels", "idx1", (n,))):
            raw = _idx(shape)
            name = f"{stem}-{kind}-{idx}-ubyte"
            (d / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return d


def _idx_gz_bomb(d: Path, inflate_mib: int = 256):
    """An IDX directory whose train images header says 30 images of 4x4, but whose gzip stream
    inflates to ``inflate_mib`` MiB (compressed, about a thousandth of that)."""
    _idx_dir(d)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [c.compress(_idx((30, 4, 4)))]
    chunk = bytes(1 << 20)
    for _ in range(inflate_mib):
        parts.append(c.compress(chunk))
    parts.append(c.flush())
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"".join(parts))
    return d


def _torch_save(obj, path: Path):
    import torch

    torch.save(obj, path)
    return path


def _ck(src: Path = JVF, **change) -> dict:
    import torch

    ck = torch.load(src, weights_only=True)
    ck.update(change)
    return ck


ART: dict = {"path": None}


def _manifest_swap(src: Path, dst: Path, text: str) -> Path:
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(text.encode(), np.uint8))
    members["manifest.npy"] = buf.getvalue()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in members.items():
            z.writestr(n, b)
    return dst


def _fake_tool(tmp: Path, name: str, body: str) -> dict:
    """A directory put first on PATH holding a fake ``name`` (a bash script ``body``)."""
    b = tmp / "fakebin"
    b.mkdir(exist_ok=True)
    f = b / name
    f.write_text("#!/bin/bash\n" + body + "\n")
    f.chmod(0o755)
    return {"PATH": f"{b}:{os.environ['PATH']}", "INTSSM_TOOL_TIMEOUT": "3"}


def _out_arg(body: str) -> str:
    """bash that finds the value after -o in "$@" (gcc's output) into $OUT."""
    return 'OUT=""; prev=""; for a in "$@"; do [ "$prev" = "-o" ] && OUT="$a"; prev="$a"; done\n' + body


def _pid_dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie (not yet reaped by init) counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _is_chr(path: str) -> bool:
    return stat.S_ISCHR(os.stat(path).st_mode)


# ------------------------------------------------------------------------------------ cases ---
# name -> (setup(tmp) -> dict(args=..., env=..., fsize=..., umask=..., on_start=...), check)
# Cheap cases first: no Torch (an integer artifact as the model, data refused before any model work).

CASES: dict = {}


def case(name, check, torch=False):
    def deco(setup):
        CASES[name] = (setup, check, torch)
        return setup

    return deco


SIM = ["simulate", "{tmp}/jv.npz", "--verify", "0"]  # an integer artifact: no Torch


def _with_art(tmp):
    shutil.copy(ART["path"], tmp / "jv.npz")


# 1. outputs that are not ours ----------------------------------------------------------------

@case("1_out_dev_null", both(refused("is a character device"), lambda *a: _is_chr("/dev/null")))
def _(tmp):
    _with_art(tmp)
    return dict(args=SIM + ["--seq", JV, "--logits", "/dev/null"])


@case("1_out_fifo", both(refused("is a FIFO"), lambda rc, o, e, tmp: stat.S_ISFIFO(os.stat(tmp / "f.npz").st_mode)))
def _(tmp):
    _with_art(tmp)
    os.mkfifo(tmp / "f.npz")
    return dict(args=SIM + ["--seq", JV, "--logits", "{tmp}/f.npz"])


def _socket(tmp):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp / "s.npz"))
    SOCKETS.append(s)


SOCKETS: list = []


@case("1_out_socket", refused("is a socket"))
def _(tmp):
    _with_art(tmp)
    _socket(tmp)
    return dict(args=SIM + ["--seq", JV, "--trace", "{tmp}/s.npz"])


@case("1_out_symlink_to_dev_null", both(refused("is a character device"), lambda *a: _is_chr("/dev/null")))
def _(tmp):
    _with_art(tmp)
    (tmp / "l.npz").symlink_to("/dev/null")
    return dict(args=SIM + ["--seq", JV, "--logits", "{tmp}/l.npz"])


@case("1_out_is_directory", refused("is a directory"))
def _(tmp):
    _with_art(tmp)
    (tmp / "d.npz").mkdir()
    return dict(args=SIM + ["--seq", JV, "--logits", "{tmp}/d.npz"])


@case("1_refusal_leaves_no_directory", both(refused("--state-layout"), lambda rc, o, e, tmp: not (tmp / "new").exists()))
def _(tmp):
    _with_art(tmp)
    return dict(args=["export-c", "{tmp}/jv.npz", "-o", "{tmp}/new/sub", "--state-layout", "bogus"])


def _mode_is(name, mode):
    def check(rc, out, err, tmp):
        assert rc == 0, err[-2000:]
        assert stat.S_IMODE(os.stat(tmp / name).st_mode) == mode, oct(os.stat(tmp / name).st_mode)

    return check


@case("1_replaced_file_keeps_mode", _mode_is("g.npz", 0o664))
def _(tmp):
    _with_art(tmp)
    (tmp / "g.npz").write_bytes(b"old")
    os.chmod(tmp / "g.npz", 0o664)
    return dict(args=SIM + ["--seq", JV, "--limit", "3", "--logits", "{tmp}/g.npz", "--json"])


@case("1_new_file_follows_umask", _mode_is("n.npz", 0o644))
def _(tmp):
    _with_art(tmp)
    return dict(args=SIM + ["--seq", JV, "--limit", "3", "--logits", "{tmp}/n.npz", "--json"], umask=0o022)


@case("1_export_c_input_is_an_output", both(refused("which is its input"),
                                             lambda rc, o, e, tmp: _digest(tmp / "c" / "intssm_model.c") == _digest(ART["path"])))
def _(tmp):
    (tmp / "c").mkdir()
    shutil.copy(ART["path"], tmp / "c" / "intssm_model.c")
    (tmp / "c" / "m.npz").symlink_to(tmp / "c" / "intssm_model.c")  # the same file under another name
    return dict(args=["export-c", "{tmp}/c/m.npz", "-o", "{tmp}/c"])


# 2. finite but out of range --------------------------------------------------------------------

@case("2_npz_1e300", refused("beyond float32"))
def _(tmp):
    _with_art(tmp)
    x = np.zeros((12, 5, 12))
    x[3, 2, 1] = 1e300
    _npz(tmp / "d.npz", x_train=x)
    return dict(args=SIM + ["--seq", "{tmp}/d.npz"])


@case("2_npz_3.5e38_in_x_test", refused("x_test holds a value of magnitude 3.5e+38"))
def _(tmp):
    _with_art(tmp)
    x = np.zeros((4, 5, 12))
    x[0, 0, 0] = -3.5e38
    _npz(tmp / "d.npz", x_test=x)
    return dict(args=SIM + ["--seq", "{tmp}/d.npz"])


@case("2_ts_1e300", refused("beyond float32"))
def _(tmp):
    _with_art(tmp)
    _ts_dir(tmp / "ts", value="1e300")
    return dict(args=SIM + ["--seq", "{tmp}/ts"])


@case("2_ts_3.5e38", refused("beyond float32"))
def _(tmp):
    _with_art(tmp)
    _ts_dir(tmp / "ts", value="3.5e38")
    return dict(args=SIM + ["--seq", "{tmp}/ts"])


@case("2_npz_nan_still_refused", refused("contains NaN or inf"))
def _(tmp):
    _with_art(tmp)
    x = np.zeros((12, 5, 12), np.float32)
    x[0, 0, 0] = np.nan
    _npz(tmp / "d.npz", x_train=x)
    return dict(args=SIM + ["--seq", "{tmp}/d.npz"])


# 3. memory bounded by what is read -------------------------------------------------------------

@case("3_npz_two_20M_step_sequences", refused("20,000,000 steps"))
def _(tmp):
    _with_art(tmp)
    _npz_declaring(tmp / "d.npz", "x_train", (2, 20_000_000, 1))
    return dict(args=SIM + ["--seq", "{tmp}/d.npz"])


@case("3_npz_header_1e6_1e6_2", refused("1,000,000 steps"))
def _(tmp):
    _with_art(tmp)
    _npz_declaring(tmp / "d.npz", "x_test", (1_000_000, 1_000_000, 2))
    return dict(args=SIM + ["--seq", "{tmp}/d.npz"])


@case("3_npz_too_many_values", refused("values; intssm takes at most"))
def _(tmp):
    _with_art(tmp)
    _npz_declaring(tmp / "d.npz", "x_train", (400_000, 1000, 1))
    return dict(args=SIM + ["--seq", "{tmp}/d.npz"])


@case("3_npz_huge_label_array", refused("y_train has"))
def _(tmp):
    _with_art(tmp)
    _npz_declaring(tmp / "d.npz", "y_train", (10**9,), "<i8")
    return dict(args=SIM + ["--seq", "{tmp}/d.npz"])


@case("3_npz_member_inflates_past_its_shape", refused("more than its shape"))
def _(tmp):
    _with_art(tmp)
    _npz_member_bomb(tmp / "d.npz")
    return dict(args=SIM + ["--seq", "{tmp}/d.npz"])


@case("3_ts_one_200k_step_case", refused("200,000 steps"))
def _(tmp):
    _with_art(tmp)
    long = ",".join(["1"] * 200_000)
    _ts_dir(tmp / "ts", train_lines=[f"{long}:{long}:a", "1,2:3,4:b"])
    return dict(args=SIM + ["--seq", "{tmp}/ts"])


@case("3_idx_gz_inflates_past_header", refused("IDX payload has 481 bytes or more"))
def _(tmp):
    _with_art(tmp)
    _idx_gz_bomb(tmp / "idx")
    return dict(args=SIM + ["--seq", "{tmp}/idx"])


@case("3_idx_header_declares_1e9_images", refused("values; intssm takes at most"))
def _(tmp):
    _with_art(tmp)
    d = _idx_dir(tmp / "idx")
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx((10**9, 28, 28), payload_len=16)))
    return dict(args=SIM + ["--seq", "{tmp}/idx"])


@case("3_ckpt_stride0_expanded_tensor", refused("has 10,000,000,000 elements"), torch=True)
def _(tmp):
    import torch

    ck = _ck()
    ck["state_dict"]["encoder.weight"] = torch.zeros(1).expand(100_000, 100_000)
    _torch_save(ck, tmp / "s.pt")
    return dict(args=["simulate", "{tmp}/s.pt", "--seq", JV, "--limit", "3"])


@case("3_ckpt_stride0_in_resume_state", refused("is not contiguous"), torch=True)
def _(tmp):
    import torch

    _torch_save(_ck(resume={"model": {"w": torch.zeros(1).expand(4000, 4000)}}), tmp / "r.pt")
    return dict(args=["eval", "{tmp}/r.pt", "--seq", JV, "--limit", "3"])


# 4. hostile structure and options ---------------------------------------------------------------

@case("4_manifest_nested_100000_deep", refused("nested 100001 levels deep"))
def _(tmp):
    _manifest_swap(ART["path"], tmp / "deep.npz", "[" * 100_000 + "{}" + "]" * 100_000)
    return dict(args=["simulate", "{tmp}/deep.npz", "--seq", JV, "--verify", "0"])


@case("4_manifest_5000_digit_integer", refused("more than 64 digits"))
def _(tmp):
    _manifest_swap(ART["path"], tmp / "big.npz", '{"format": "intssm-int", "format_version": ' + "9" * 5000 + "}")
    return dict(args=["simulate", "{tmp}/big.npz", "--seq", JV, "--verify", "0"])


def _config_case(name, text, fragment):
    @case(name, refused(fragment), torch=True)
    def _(tmp):
        (tmp / "c.json").write_text(text)
        return dict(args=["ptq", JVF, "--config", "{tmp}/c.json", "-o", "{tmp}/q.pt", "--calib", "4"])


_config_case("4_config_nested_100000_deep", "[" * 100_000 + "]" * 100_000, "levels deep")
_config_case("4_config_5000_digit_integer", '{"state_clip": ' + "1" * 5000 + "}", "more than 64 digits")
_config_case("4_config_state_clip_true", '{"state_clip": true}', "state_clip must be in (0, 16]")
_config_case("4_config_percentile_with_space", '{"x_re": {"range": "p 99"}}', "range must be 'minmax'")
_config_case("4_config_nan", '{"state_clip": NaN}', "not valid JSON")
_config_case("4_config_a_list", "[1, 2]", "must be a JSON object")


def _opt_case(name, args, fragment):
    @case(name, refused(fragment), torch=True)
    def _(tmp):
        return dict(args=args)


TRAIN_JV = ["train", "--seq", JV, "--preset", "tiny", "--epochs", "1", "-o", "{tmp}/t.pt"]
_opt_case("4_train_threads_-1", TRAIN_JV + ["--threads", "-1"], "--threads must be in 0..4096")
_opt_case("4_train_seed_-1", TRAIN_JV + ["--seed", "-1"], "--seed must be in 0..4294967295")
_opt_case("4_train_seed_2**64", TRAIN_JV + ["--seed", str(2**64)], "--seed must be in")
_opt_case("4_qat_seed_-1", ["qat", JVQ, "-o", "{tmp}/q.pt", "--seed", "-1"], "--seed must be in")
_opt_case("4_qat_teacher_of_another_dataset", ["qat", JVQ, "-o", "{tmp}/q.pt", "--distill", "0.5", "--teacher", BMF,
                                               "--limit", "8", "--val-limit", "8"], "give a teacher trained on the same dataset")


# 5. a cache tied to its source ----------------------------------------------------------------

def _cache_case(name, forge):
    """The cache as one run left it, then ``forge(entry, tmp)``; the next run must rebuild the entry
    (its source line says so) and give the reference logits."""

    def check(rc, out, err, tmp):
        assert rc == 0, err[-2000:]
        res = json.loads(out)
        assert "from the cache" not in res["source"], res["source"]
        got = np.load(tmp / "g.npz")["logits"]
        assert np.array_equal(got, CACHE["logits"])
        entry = next((tmp / "cache" / "integer-models").glob("*.npz"))
        assert entry.name == CACHE["entry"].name
        man = json.loads(bytes(np.load(entry)["manifest"]).decode())
        assert man["cache"]["key"] == entry.stem  # rewritten, bound again

    @case(name, check, torch=True)
    def _(tmp):
        shutil.copytree(CACHE["dir"], tmp / "cache")
        entry = tmp / "cache" / "integer-models" / CACHE["entry"].name
        forge(entry, tmp)
        return dict(args=["simulate", JVQ, "--seq", JV, "--verify", "0", "--logits", "{tmp}/g.npz", "--json"])


def _edit_integers(entry, tmp):
    z = dict(np.load(entry))
    k = next(k for k in sorted(z) if k != "manifest" and z[k].size > 1 and z[k].max() > z[k].min())
    v = z[k].copy()
    flat = v.reshape(-1)
    flat[0] = flat[1] if flat[0] != flat[1] else flat[0] + (1 if flat[0] < v.max() else -1)  # stays in range
    z[k] = v
    np.savez_compressed(entry, **z)


def _foreign(entry, tmp):
    r = subprocess.run([sys.executable, "-m", "intssm", "export", str(BMQ), "-o", str(tmp / "bm.npz")], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr[-2000:]
    shutil.copy(tmp / "bm.npz", entry)


def _other_key(entry, tmp):
    """A well-formed, bound entry of another checkpoint (the same model saved again: other bytes) under this name."""
    z = dict(np.load(entry))
    man = json.loads(bytes(z["manifest"]).decode())
    man["cache"]["key"] = "0" * 64
    z["manifest"] = np.frombuffer(json.dumps(man).encode(), np.uint8)
    np.savez_compressed(entry, **z)


def _truncate(entry, tmp):
    entry.write_bytes(entry.read_bytes()[:200])


def _unbound(entry, tmp):
    shutil.copy(ART["path"], entry)  # `intssm export Q -o <entry>`: the right integers, but no binding


_cache_case("5_cache_edited_integers", _edit_integers)
_cache_case("5_cache_foreign_dataset_entry", _foreign)
_cache_case("5_cache_entry_of_another_key", _other_key)
_cache_case("5_cache_truncated_entry", _truncate)
_cache_case("5_cache_exported_artifact_unbound", _unbound)

CACHE: dict = {}


# 6. full disks and broken toolchains ----------------------------------------------------------

def _no_temp_left(d_name: str | None = None, keep=()):
    def check(rc, out, err, tmp):
        d = tmp / d_name if d_name else tmp
        left = [p.name for p in d.iterdir() if ".tmp" in p.name]
        assert not left, left

    return check


@case("6_disk_full_simulate_logits", both(refused("cannot write", last_line=True), _no_temp_left(),
                                          lambda rc, o, e, tmp: (tmp / "g.npz").read_bytes() == b"old golden"))
def _(tmp):
    _with_art(tmp)
    (tmp / "g.npz").write_bytes(b"old golden")
    return dict(args=SIM + ["--seq", JV, "--logits", "{tmp}/g.npz"], fsize=2048)


@case("6_disk_full_export", both(refused("cannot write"), _no_temp_left()), torch=True)
def _(tmp):
    return dict(args=["export", JVQ, "-o", "{tmp}/a.npz"], fsize=4096, env={"INTSSM_CACHE_DIR": "/nonexistent/x"})


@case("6_disk_full_ptq", both(refused("cannot write", last_line=True), _no_temp_left(),
                              lambda rc, o, e, tmp: (tmp / "q.pt").read_bytes() == b"previous"), torch=True)
def _(tmp):
    (tmp / "q.pt").write_bytes(b"previous")
    return dict(args=["ptq", JVF, "-o", "{tmp}/q.pt", "--calib", "4"], fsize=8192)


@case("6_disk_full_export_c_all_or_none", both(refused("none of them was written"), _no_temp_left("c"),
                                               lambda rc, o, e, tmp: sorted(p.name for p in (tmp / "c").iterdir()) == []))
def _(tmp):
    _with_art(tmp)
    (tmp / "c").mkdir()
    return dict(args=["export-c", "{tmp}/jv.npz", "-o", "{tmp}/c"], fsize=16384)


@case("6_disk_full_train", both(refused("cannot write", last_line=True), _no_temp_left()), torch=True)
def _(tmp):
    return dict(args=["train", "--seq", JV, "--preset", "tiny", "--epochs", "1", "-o", "{tmp}/t.pt"], fsize=4096)


def _rescued(rc, out, err, tmp):
    refused("saved to", last_line=True)(rc, out, err, tmp)
    import torch

    (alt,) = (tmp / "rescue").glob("t.rescued-*.pt")
    assert str(alt) in err
    ck = torch.load(alt, weights_only=True)
    assert len(ck["metrics"]) == 3 and ck["format"] == "intssm-ckpt"


def _block_output_after_epoch_1(p):
    t0 = time.time()
    while time.time() - t0 < 200 and '"epoch": 1,' not in (p._tmp / ".stderr").read_text():
        time.sleep(0.01)
    (p._tmp / "t.pt").mkdir()  # the output path turns into a directory: the final rename fails


@case("6_output_unwritable_result_rescued", _rescued, torch=True)
def _(tmp):
    return dict(args=["train", "--seq", JV, "--preset", "tiny", "--epochs", "3", "-o", "{tmp}/t.pt"],
                env={"INTSSM_RESCUE_DIR": str(tmp / "rescue")}, on_start=_block_output_after_epoch_1, tmp_attr=True)


@case("1_search_start_inside_out", both(refused("which is its input"),
                                        lambda rc, o, e, tmp: (tmp / "s" / "best.json").read_text() == '{"x_re": {"bits": 8}}'),
      torch=True)
def _(tmp):
    (tmp / "s").mkdir()
    (tmp / "s" / "best.json").write_text('{"x_re": {"bits": 8}}')
    return dict(args=["search", JVF, "--start", "{tmp}/s/best.json", "-o", "{tmp}/s"])


TARGET = ["export-c", JVQ, "-o", "{tmp}/c", "--target", "cortex-m4", "--sequences", "2", "--count-steps", "2"]


def _marked(rc, out, err, tmp):
    assert (tmp / "c" / "UNVERIFIED").is_file()


@case("6_toolchain_hangs", both(refused("did not finish within 3 s", last_line=True), _marked,
                                lambda rc, o, e, tmp: _pid_dead(int((tmp / "child.pid").read_text()))), torch=True)
def _(tmp):
    env = _fake_tool(tmp, "arm-none-eabi-gcc", f"sleep 300 & echo $! > {tmp}/child.pid; wait")
    return dict(args=TARGET, env=env)


@case("6_toolchain_exit0_no_output", both(refused("did not write", last_line=True), _marked), torch=True)
def _(tmp):
    return dict(args=TARGET, env=_fake_tool(tmp, "arm-none-eabi-gcc", "exit 0"))


@case("6_toolchain_writes_garbage", both(refused("is not an ELF file", last_line=True), _marked), torch=True)
def _(tmp):
    return dict(args=TARGET, env=_fake_tool(tmp, "arm-none-eabi-gcc", _out_arg('echo garbage > "$OUT"')))


@case("6_toolchain_writes_damaged_elf", both(refused("ELF", last_line=True), _marked), torch=True)
def _(tmp):
    return dict(args=TARGET, env=_fake_tool(tmp, "arm-none-eabi-gcc",
                                            _out_arg('printf "\\x7fELF\\x01\\x01\\x01garbage-garbage-garbage" > "$OUT"')))


@case("6_toolchain_fails", both(refused("failed (exit 3)", last_line=True), _marked), torch=True)
def _(tmp):
    return dict(args=TARGET, env=_fake_tool(tmp, "arm-none-eabi-gcc", "echo 'cc1: internal compiler error' >&2; exit 3"))


def _sigterm_when_started(tmp):
    def start(p):
        t0 = time.time()
        while not (tmp / "child.pid").exists() and time.time() - t0 < 120:
            time.sleep(0.05)
        time.sleep(0.2)
        p.send_signal(signal.SIGTERM)

    return start


def _term_check(rc, out, err, tmp):
    assert rc == 143, (rc, err[-2000:])
    assert "Traceback" not in err
    assert _pid_dead(int((tmp / "child.pid").read_text())), "the compiler's child outlived SIGTERM"
    _marked(rc, out, err, tmp)


@case("6_sigterm_while_toolchain_runs", _term_check, torch=True)
def _(tmp):
    env = _fake_tool(tmp, "arm-none-eabi-gcc", f"sleep 300 & echo $! > {tmp}/child.pid; wait")
    env["INTSSM_TOOL_TIMEOUT"] = "100"
    return dict(args=TARGET, env=env, on_start=_sigterm_when_started(tmp))


# 7. resume that obeys --------------------------------------------------------------------------

def _resume_case(name, extra_args, fragment, edit=None):
    @case(name, refused(fragment), torch=True)
    def _(tmp):
        src = RESUME["ckpt"]
        if edit is not None:
            import torch

            ck = torch.load(src, weights_only=True)
            edit(ck, tmp)
            torch.save(ck, tmp / "r.pt")
        else:
            shutil.copy(src, tmp / "r.pt")
        return dict(args=["train", "--resume", "{tmp}/r.pt", "-o", "{tmp}/f.pt", *extra_args])


def _nan_weights(ck, tmp):
    k = next(iter(ck["resume"]["model"]))
    ck["resume"]["model"][k].view(-1)[0] = float("nan")


def _negative_second_moment(ck, tmp):
    st = ck["resume"]["optimizer"]["state"]
    next(iter(st.values()))["exp_avg_sq"].view(-1)[0] = -1.0


def _history_string(ck, tmp):
    ck["resume"]["history"] = "not a list"


def _changed_data(ck, tmp):
    shutil.copytree(RESUME["data"], tmp / "data")
    f = tmp / "data" / "JapaneseVowels_TRAIN.ts"
    f.write_text(f.read_text().replace("1.86", "1.87", 1))
    ck["dataset"]["seq"] = str(tmp / "data")


_resume_case("7_resume_epochs_conflict", ["--epochs", "2"], "--epochs 2 conflicts with the interrupted run's --epochs 4")
_resume_case("7_resume_preset_conflict", ["--preset", "base"], "--preset base conflicts")
_resume_case("7_resume_seq_conflict", ["--seq", "psmnist"], "--seq psmnist conflicts")
_resume_case("7_resume_lr_conflict", ["--lr", "0.5"], "--lr 0.5 conflicts")
_resume_case("7_resume_dataset_changed", [], "changed since the run was interrupted", _changed_data)
_resume_case("7_resume_nan_weights", [], "holds NaN or inf", _nan_weights)
_resume_case("7_resume_negative_exp_avg_sq", [], "is negative", _negative_second_moment)
_resume_case("4_resume_history_is_a_string", [], "'history' is missing or has the wrong type", _history_string)


def _diverged(rc, out, err, tmp):
    refused("training diverged in epoch 1", last_line=True)(rc, out, err, tmp)
    import torch

    ck = torch.load(tmp / "t.pt", weights_only=True)
    assert ck["diverged"]["epoch"] == 1 and "resume" not in ck
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values())


@case("2_train_lr_1e30_stops_with_finite_weights", _diverged, torch=True)
def _(tmp):
    return dict(args=TRAIN_JV + ["--lr", "1e30", "--ssm-lr", "1e30"])


def _qat_diverged(rc, out, err, tmp):
    refused("QAT diverged in epoch 1", last_line=True)(rc, out, err, tmp)
    import torch

    ck = torch.load(tmp / "q.pt", weights_only=True)
    assert ck["diverged"]["epoch"] == 1 and "qspec" in ck
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


@case("2_qat_lr_1e308_stops_with_finite_weights", _qat_diverged, torch=True)
def _(tmp):
    return dict(args=["qat", JVQ, "-o", "{tmp}/q.pt", "--epochs", "1", "--batch-size", "16", "--lr", "1e308"])


# 8. two Ctrl-C in quick succession ------------------------------------------------------------

def _double_sigint(gap_s):
    def start(p):
        t0 = time.time()
        while time.time() - t0 < 200:
            err = (p._tmp / ".stderr").read_text()
            if '"epoch": 1,' in err:
                break
            time.sleep(0.01)
        p.send_signal(signal.SIGINT)
        time.sleep(gap_s)
        p.send_signal(signal.SIGINT)

    return start


def _saved_interrupted(rc, out, err, tmp):
    assert rc == 130, (rc, err[-2000:])
    assert "Traceback" not in err and "interrupted in epoch" in err, err[-2000:]
    import torch

    ck = torch.load(tmp / "t.pt", weights_only=True)
    assert ck["interrupted"]["epoch"] >= 2 and "resume" in ck
    assert not [p for p in tmp.iterdir() if ".tmp" in p.name]


for _gap in (0.001, 0.01):
    @case(f"8_double_sigint_{int(_gap * 1000)}ms_apart", _saved_interrupted, torch=True)
    def _(tmp, _gap=_gap):
        return dict(args=["train", "--seq", JV, "--preset", "tiny", "--epochs", "40", "-o", "{tmp}/t.pt"],
                    on_start=_double_sigint(_gap), tmp_attr=True)


# 9. messages that say what is wrong -----------------------------------------------------------

@case("9_text_file_as_npz", both(refused("not a zip archive"), lambda rc, o, e, tmp: "pickle" not in e))
def _(tmp):
    _with_art(tmp)
    (tmp / "d.npz").write_text("x_train,y_train\n1,2\n")
    return dict(args=SIM + ["--seq", "{tmp}/d.npz"])


@case("9_npz_missing_y_test", both(refused("lacks array(s) y_test (it has: x_test, x_train, y_train)"),
                                   lambda rc, o, e, tmp: "is not a file in the archive" not in e))
def _(tmp):
    _with_art(tmp)
    _npz(tmp / "d.npz", y_test=None)
    return dict(args=SIM + ["--seq", "{tmp}/d.npz"])


@case("9_dataset_directory_named_npz", refused("is a directory; give a file"))
def _(tmp):
    _with_art(tmp)
    (tmp / "d.npz").mkdir()
    return dict(args=SIM + ["--seq", "{tmp}/d.npz"])


@case("9_dataset_fifo_named_npz", refused("is not a regular file"))
def _(tmp):
    _with_art(tmp)
    os.mkfifo(tmp / "d.npz")
    return dict(args=SIM + ["--seq", "{tmp}/d.npz"])


@case("9_ts_fifo", refused("is not a regular file"))
def _(tmp):
    _with_art(tmp)
    d = _ts_dir(tmp / "ts")
    (d / "T_TRAIN.ts").unlink()
    os.mkfifo(d / "T_TRAIN.ts")
    return dict(args=SIM + ["--seq", "{tmp}/ts"])


@case("9_idx_dir_with_plain_and_gz", refused("holds both"))
def _(tmp):
    _with_art(tmp)
    d = _idx_dir(tmp / "idx")
    (d / "train-labels-idx1-ubyte").write_bytes(_idx((30,)))
    return dict(args=SIM + ["--seq", "{tmp}/idx"])


@case("9_idx_file_is_a_fifo", refused("is not a regular file"))
def _(tmp):
    _with_art(tmp)
    d = _idx_dir(tmp / "idx")
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    os.mkfifo(d / "t10k-labels-idx1-ubyte.gz")
    return dict(args=SIM + ["--seq", "{tmp}/idx"])


@case("9_ts_given_to_memory", refused("it is a text file"), torch=True)
def _(tmp):
    return dict(args=["memory", JV / "JapaneseVowels_TRAIN.ts"])


@case("9_checkpoint_is_a_directory", refused("is a directory; give a file"), torch=True)
def _(tmp):
    (tmp / "m.pt").mkdir()
    return dict(args=["eval", "{tmp}/m.pt", "--seq", JV])


@case("9_checkpoint_is_a_fifo", refused("is not a regular file"), torch=True)
def _(tmp):
    os.mkfifo(tmp / "m.pt")
    return dict(args=["eval", "{tmp}/m.pt", "--seq", JV])


@case("9_empty_checkpoint", refused("it is an empty file"), torch=True)
def _(tmp):
    (tmp / "m.pt").write_bytes(b"")
    return dict(args=["eval", "{tmp}/m.pt", "--seq", JV])


# -------------------------------------------------------------------------------- fixtures ---

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """What several cases start from: the integer artifact of the JapaneseVowels model, a cache
    entry with its reference logits, and an interrupted training run (with its dataset copy)."""
    d = tmp_path_factory.mktemp("shared")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", INTSSM_CACHE_DIR=str(d / "cache"))
    r = subprocess.run([sys.executable, "-m", "intssm", "export", str(JVQ), "-o", str(d / "jv.npz")], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    ART["path"] = d / "jv.npz"
    r = subprocess.run([sys.executable, "-m", "intssm", "simulate", str(JVQ), "--seq", str(JV), "--verify", "0",
                        "--logits", str(d / "ref.npz"), "--json"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    CACHE.update(dir=d / "cache", entry=next((d / "cache" / "integer-models").glob("*.npz")),
                 logits=np.load(d / "ref.npz")["logits"])
    shutil.copytree(JV, d / "jvdata")
    p = subprocess.Popen([sys.executable, "-m", "intssm", "train", "--seq", str(d / "jvdata"), "--preset", "tiny",
                          "--epochs", "4", "-o", str(d / "int.pt")], stderr=subprocess.PIPE, text=True, env=env)
    for line in p.stderr:
        if '"epoch": 1,' in line:
            p.send_signal(signal.SIGINT)
            break
    p.communicate(timeout=300)
    assert p.returncode == 130
    RESUME.update(ckpt=d / "int.pt", data=d / "jvdata")
    yield
    for s in SOCKETS:
        s.close()
    if PEAKS:
        worst = max(PEAKS, key=lambda k: PEAKS[k][0])
        ref = [k for k in PEAKS if PEAKS[k][1] == 2]
        wref = max(ref, key=lambda k: PEAKS[k][0]) if ref else None
        print(f"\nlargest peak RSS of a case: {PEAKS[worst][0] / 1024:.0f} MiB ({worst}); of a refusal (exit 2): "
              + (f"{PEAKS[wref][0] / 1024:.0f} MiB ({wref})" if wref else "none") + f"; {len(PEAKS)} cases, {len(ref)} refusals")


RESUME: dict = {}


def _order(name):
    setup, check, torch = CASES[name]
    return (torch, name)


WORKERS = 2  # cases run two at a time (each in its own process): the suite's wall time on 2 cores


def _needs_mcu(name: str) -> bool:
    return name.startswith(("6_toolchain", "6_sigterm"))  # export-c --target: a fake compiler, the real objdump and emulator


def _run_case(name: str, tmp: Path):
    setup, _, _ = CASES[name]
    spec = setup(tmp)
    on_start = spec.get("on_start")
    if spec.pop("tmp_attr", False):
        inner = on_start

        def on_start(p, inner=inner):
            p._tmp = tmp
            inner(p)
    return cli(spec["args"], tmp, env=spec.get("env"), fsize=spec.get("fsize"), umask=spec.get("umask"), on_start=on_start)


@pytest.fixture(scope="module")
def runs(shared, tmp_path_factory):
    """Every case started at once on a pool of :data:`WORKERS` threads, cheap cases first; each
    test waits for its own. name -> (future of (rc, stdout, stderr, peak RSS), its directory)."""
    from concurrent.futures import ThreadPoolExecutor

    from intssm.integer import mcu

    skip_mcu = not mcu.available() and not os.environ.get("CI")  # CI installs them: never skipped there
    pool = ThreadPoolExecutor(WORKERS)
    out = {}
    for name in sorted(CASES, key=_order):
        if skip_mcu and _needs_mcu(name):
            continue
        d = tmp_path_factory.mktemp(name[:40])
        out[name] = (pool.submit(_run_case, name, d), d)
    yield out
    pool.shutdown(wait=True)


@pytest.mark.parametrize("name", sorted(CASES, key=_order))
def test_fault(runs, name):
    """Each case gets what the case table says (a refusal: one ``error:`` line, exit 2, no
    traceback), under a 4 GiB address-space cap and within the peak RSS limit."""
    if name not in runs:
        from intssm.integer import mcu

        pytest.skip(f"Cortex-M toolchain or emulator missing ({mcu.INSTALL_HINT})")
    fut, tmp = runs[name]
    rc, out, err, rss = fut.result(timeout=600)
    PEAKS[name] = (rss, rc)
    _, check, _ = CASES[name]
    check(rc, out, err, tmp)
    assert rss < PEAK_RSS_LIMIT_KB, f"peak RSS {rss} kB"


def test_atomic_holds_ctrl_c_until_the_file_is_in_place(tmp_path):
    """A Ctrl-C that arrives while a file is being written is delivered only after the rename: the
    complete file is in place, no temporary is left, and the KeyboardInterrupt still comes."""
    from intssm import outputs

    target = tmp_path / "a.txt"
    with pytest.raises(KeyboardInterrupt):
        with outputs.atomic(target, quiet=True) as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            tmp.write_text("complete")
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_write_texts_is_all_or_none(tmp_path):
    """When the second file of a set cannot be written, neither is: the first keeps its old text."""
    from intssm import outputs
    from intssm.errors import IntssmError

    (tmp_path / "a.h").write_text("old header")
    with pytest.raises(IntssmError, match="none of them was written"):
        outputs.write_texts({tmp_path / "a.h": "new header", tmp_path / "missing" / "a.c": "source"}, quiet=True)
    assert (tmp_path / "a.h").read_text() == "old header"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h"]
