"""intssm.integer.export: the .npz integer artifact round-trips exactly, and every malformed artifact is refused
with one clear IntssmError, both from the library and from the CLI (``inspect``, ``simulate``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import intssm.integer.export
import intssm.training.ptq
import intssm.datapath.qspec
import intssm.integer.sim
from intssm.errors import IntssmError
from intssm.training.model import ModelConfig, S4DModel

ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="80")
SEQ_LEN = 20


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A tiny PTQ model (w8a8), its in-memory integer arrays and its saved artifact."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = S4DModel(ModelConfig(d_model=4, d_state=8, n_layers=1), seed=0)
        calib = torch.rand(4, SEQ_LEN, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        qm, _ = intssm.training.ptq.ptq(model.double(), intssm.datapath.qspec.PRESETS["w8a8"], calib)
        arrays = intssm.integer.export.integer_model(qm)
        path = tmp_path_factory.mktemp("export") / "good.npz"
        man = intssm.integer.export.save(path, qm)
    finally:
        torch.set_num_threads(threads)
    return qm, arrays, path, man


def read_raw(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def get_manifest(raw: dict) -> dict:
    return json.loads(raw["manifest"].tobytes().decode("utf-8"))


def set_manifest(raw: dict, man: dict) -> dict:
    return {**raw, "manifest": np.frombuffer(json.dumps(man).encode("utf-8"), dtype=np.uint8)}


def inputs(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, SEQ_LEN, 1), dtype=np.uint8)


# ----------------------------------------------------------------------------- round trip


def test_roundtrip_arrays(good):
    """load(save(qm)) gives the IntModel of exactly the arrays of integer_model(qm): same names,
    int64, equal values, and the model's configs and sequence length."""
    qm, arrays, path, _ = good
    m = intssm.integer.export.load(path)
    assert (m.cfg, m.qcfg, m.seq_len, m.input) == (qm.dp.cfg, qm.dp.qcfg, SEQ_LEN, qm.iq)
    loaded = m.arrays
    assert sorted(loaded) == sorted(arrays)
    for k, v in arrays.items():
        assert loaded[k].dtype == np.int64, k
        assert loaded[k].shape == v.shape, k
        assert np.array_equal(loaded[k], v), k


def test_roundtrip_manifest(good):
    """The manifest read back is the one written: versions, configs, sequence length, counter names."""
    qm, _, path, man = good
    _, loaded = intssm.integer.export.load_with_manifest(path)
    assert loaded == json.loads(json.dumps(man))
    assert loaded["format"] == intssm.integer.export.FORMAT
    assert loaded["format_version"] == intssm.integer.export.FORMAT_VERSION
    assert loaded["datapath_version"] == intssm.datapath.qspec.DATAPATH_VERSION
    assert loaded["seq_len"] == SEQ_LEN
    assert loaded["counters"] == qm.counters
    assert loaded["model_config"] == qm.dp.cfg.to_dict()
    assert loaded["quant_config"] == json.loads(json.dumps(qm.dp.qcfg.to_dict()))


def test_storage_is_narrow_integers(good):
    """On disk every array is a (narrowest fitting) integer type, the manifest uint8 UTF-8 JSON; no pickles."""
    _, arrays, path, _ = good
    raw = read_raw(path)
    assert raw["manifest"].dtype == np.uint8
    for k, v in arrays.items():
        assert np.issubdtype(raw[k].dtype, np.integer), k
        assert np.array_equal(raw[k].astype(np.int64), v), k
    assert raw["A_re"].dtype == np.int8  # 8-bit codes take one byte each


def test_roundtrip_simulation_identical(good):
    """The simulator gives identical logits and saturation counts from the loaded and the in-memory arrays (and Torch agrees)."""
    qm, arrays, path, _ = good
    loaded = intssm.integer.export.load(path)
    P = inputs(5)
    lg_mem, c_mem, _ = intssm.integer.sim.simulate(intssm.integer.export.from_quantized(qm), P)
    lg_file, c_file, _ = intssm.integer.sim.simulate(loaded, P)
    assert np.array_equal(lg_mem, lg_file)
    assert np.array_equal(c_mem, c_file)
    with torch.no_grad():
        lg_t, _ = qm(torch.from_numpy(P))
    assert np.array_equal(lg_t.numpy().astype(np.int64), lg_file)


def test_artifact_without_dither_flag_is_refused(good, tmp_path):
    """An artifact lacking the x_dither array (which says how the state update rounds) is refused
    with one message naming it, never run with a guessed rounding."""
    _, _, path, _ = good
    raw = read_raw(path)
    del raw["x_dither"]
    np.savez(tmp_path / "old.npz", **raw)
    with pytest.raises(IntssmError, match="x_dither"):
        intssm.integer.export.load(tmp_path / "old.npz")


def test_resave_identical(good, tmp_path):
    """Saving the same model twice gives artifacts that load to the same arrays and manifest."""
    qm, _, path, _ = good
    again = tmp_path / "sub" / "again.npz"
    intssm.integer.export.save(again, qm)
    i1, m1 = intssm.integer.export.load_with_manifest(path)
    i2, m2 = intssm.integer.export.load_with_manifest(again)
    a1, a2 = i1.arrays, i2.arrays
    assert m1 == m2
    assert sorted(a1) == sorted(a2) and all(np.array_equal(a1[k], a2[k]) for k in a1)


# ------------------------------------------------------------------------- bad artifacts
# Each case: a function (good path, good raw arrays, destination) that writes the bad file, and a
# fragment of the one-line message that must explain the problem.


def _man(**change):
    def make(path, raw, dst):
        man = get_manifest(raw)
        man.update(change)
        np.savez(dst, **set_manifest(raw, man))
    return make


def _arr(key, fn):
    def make(path, raw, dst):
        out = dict(raw)
        if fn is None:
            del out[key]
        else:
            out[key] = fn(raw.get(key))
        np.savez(dst, **out)
    return make


def _truncated(path, raw, dst):
    b = path.read_bytes()
    dst.write_bytes(b[: len(b) // 2])


def _object_array(path, raw, dst):
    out = dict(raw)
    out["A_re"] = np.array([{"a": 1}], dtype=object)
    np.savez(dst, **out)  # allow_pickle defaults to True when writing: stores a pickle


def _unrelated(path, raw, dst):
    np.savez(dst, weights=np.arange(10), bias=np.zeros(3))


def _bad_json(path, raw, dst):
    np.savez(dst, **{**raw, "manifest": np.frombuffer(b"{not json", dtype=np.uint8)})


def _not_found(path, raw, dst):
    pass  # nothing is written


def _plain_npy(path, raw, dst):
    with open(dst, "wb") as f:  # an .npy (single array), not an .npz, under an .npz name
        np.save(f, np.arange(10))


def _corrupt_deflate(path, raw, dst):
    """A well-formed zip whose compressed A_re member is not a valid deflate stream (CRC and sizes intact)."""
    b = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("A_re.npy")
    assert info.compress_type == zipfile.ZIP_DEFLATED
    name_len = int.from_bytes(b[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(b[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    b[start : start + 4] = b"\xff\xff\xff\xff"  # BFINAL=1, BTYPE=11: a reserved (invalid) block type
    dst.write_bytes(bytes(b))


def _man_fn(fn):
    """A manifest changed by ``fn(man)`` in place."""
    def make(path, raw, dst):
        man = get_manifest(raw)
        fn(man)
        np.savez(dst, **set_manifest(raw, man))
    return make


def _bad_scale(man):
    next(iter(man["tensors"].values()))["scale"][0] = -1.0


def _raw_json(text: bytes):
    def make(path, raw, dst):
        np.savez(dst, **{**raw, "manifest": np.frombuffer(text, dtype=np.uint8)})
    return make


def _uint64_wrap(a):
    a = a.astype(np.uint64)
    a[0] = np.uint64(2**63 + 5)
    return a


def _huge_member(path, raw, dst):
    """A member whose header declares 10**12 elements (a few bytes on disk)."""
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(dst, "w") as z:
        for k, v in raw.items():
            if k != "mix_b":
                with z.open(k + ".npy", "w") as f:
                    np.lib.format.write_array(f, v)
        z.writestr("mix_b.npy", buf.getvalue() + b"\0" * 64)


def _bomb(path, raw, dst):
    """A member whose data inflate far beyond its declared shape (a zip bomb): 50 MB of zeros after A_re."""
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for k, v in raw.items():
            with z.open(k + ".npy", "w") as f:
                np.lib.format.write_array(f, v)
                if k == "A_re":
                    f.write(b"\0" * (50 << 20))


def _bump(a, v):
    a = a.astype(np.int64).copy()
    a.flat[0] = v
    return a


BAD = {
    # name: (writer, message fragment)
    "format_version": (_man(format_version=99), "format version 99 not supported"),
    "datapath_version": (_man(datapath_version=99), "datapath version 99 not supported"),
    "truncated": (_truncated, "not a readable npz"),
    "dtype": (_arr("A_re", lambda a: a.astype(np.float64)), "array A_re has dtype float64"),
    "shape": (_arr("A_re", lambda a: a[..., :-1]), "array A_re has shape"),
    "object_array": (_object_array, "object (pickled) array, refused"),
    "code_range": (_arr("A_re", lambda a: _bump(a, 10**6)), "A_re: codes of the 8-bit format A_re outside"),
    "missing_array": (_arr("D", None), "missing arrays ['D']"),
    "no_manifest": (_unrelated, "no manifest"),
    # further cases
    "extra_array": (_arr("extra", lambda a: np.zeros(3, np.int64)), "unexpected arrays ['extra']"),
    "wrong_format": (_man(format="something-else"), "not an intssm integer model"),
    "manifest_not_json": (_bad_json, "manifest is not valid JSON"),
    "not_found": (_not_found, "integer model not found"),
    "shift_range": (_arr("enc_S", lambda a: _bump(a, 63)), "enc_S: shift outside [0, 46]"),
    "negative_shift": (_arr("y_S", lambda a: _bump(a, -1)), "y_S: shift outside [0, 46]"),
    "multiplier_range": (_arr("h_M", lambda a: _bump(a, 2**15)), "h_M: 15-bit multiplier outside [0, 32767]"),
    "lut_range": (_arr("sig_lut", lambda a: _bump(a, 256)), "sig_lut: codes of the 8-bit format sig outside"),
    "qrange": (_arr("qrange", lambda a: _bump(a, -129)), "code ranges disagree"),
    "weight_too_wide": (_arr("mix_w", lambda a: _bump(a, -129)), "mix_w: codes of the 8-bit format mix_w outside"),
    "dither_flag": (_arr("x_dither", lambda a: _bump(a, 1)), "x_dither 1 disagrees with state_rounding 'nearest'"),
    # hostile values: each is in a well-formed file and would run if not refused
    "bias_huge": (_arr("enc_b", lambda a: _bump(a, 2**62)), "enc_b: 32-bit bias outside"),
    "zero_huge": (_arr("h_z", lambda a: _bump(a, 2**40)), "h_z: zero point of the symmetric format h"),
    "uint64_wrap": (_arr("enc_b", _uint64_wrap), "enc_b holds values >= 2**63"),
    "multiplier_max_shift": (_arr("logits_S", lambda a: _bump(a, 47)), "logits_S: shift outside [0, 46]"),
    "counters_short": (_man(counters=["h0"]), "counters must be the"),
    "counters_number": (_man(counters=7), "counters must be the"),
    "seq_len_string": (_man(seq_len="784"), "seq_len must be an integer"),
    "seq_len_float": (_man(seq_len=784.0), "seq_len must be an integer"),
    "seq_len_huge": (_man(seq_len=10**9), "seq_len must be an integer in 1..1048576"),
    "no_model_config": (_man(model_config=None), "model config must be a JSON object"),
    "huge_model": (_man(model_config={"d_state": 10**8}), "d_state = 100000000 exceeds intssm's limit"),
    "string_bool": (_man_fn(lambda m: m["quant_config"]["h"].update(symmetric="yes")), "h.symmetric must be true or false"),
    "no_tensors": (_man(tensors=None), "manifest field tensors"),
    "bad_scale": (_man_fn(_bad_scale), "finite positive scales"),
    "nan_scale": (_man_fn(lambda m: next(iter(m["tensors"].values()))["scale"].__setitem__(0, float("nan"))),
                  "manifest is not valid JSON"),
    "nan_literal": (_raw_json(b'{"format": NaN}'), "manifest is not valid JSON"),
    "huge_member": (_huge_member, "array mix_b has shape (1000000000000,)"),
    "zip_bomb": (_bomb, "member A_re.npy inflates to"),
    # known bugs (see the xfail reasons)
    "plain_npy": (_plain_npy, "npz"),
    "corrupt_deflate": (_corrupt_deflate, "not a readable npz"),
}

KNOWN_BUGS: dict = {}  # name -> reason, for cases marked xfail(strict) until fixed
#: the cases also run through the CLI, with both commands (each run is an interpreter start with Torch: ~2 s)
CLI_CASES = ["format_version", "datapath_version", "truncated", "dtype", "shape", "object_array", "code_range",
             "missing_array", "no_manifest", "bias_huge", "seq_len_string", "huge_model", "zip_bomb"]
#: the known bugs go through `inspect` only (`simulate` reads the artifact with the same export.load)
CLI_BUG_CASES = ["plain_npy", "corrupt_deflate"]


def _param(name):
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name])] if name in KNOWN_BUGS else []
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(scope="module")
def bad_files(good, tmp_path_factory):
    """name -> path of every bad artifact, written once."""
    _, _, path, _ = good
    raw = read_raw(path)
    d = tmp_path_factory.mktemp("bad")
    out = {}
    for name, (make, _) in BAD.items():
        dst = d / f"{name}.npz"
        make(path, raw, dst)
        out[name] = dst
        if dst.exists():
            WRITTEN[name] = hashlib.sha256(dst.read_bytes()).hexdigest()
    return out


WRITTEN: dict = {}  # name -> sha256 of the bad file as written


@pytest.mark.parametrize("name", [_param(n) for n in BAD])
def test_load_refuses_bad_artifact(bad_files, name):
    """Each malformed artifact raises IntssmError with a one-line message that names the file and the problem."""
    with pytest.raises(IntssmError) as ei:
        intssm.integer.export.load(bad_files[name])
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(bad_files[name]) in msg
    assert BAD[name][1] in msg, msg


def test_bad_artifacts_are_really_bad(bad_files):
    """Sanity of the fixtures: the object array really is a pickle, the truncated file really is shorter."""
    with pytest.raises(ValueError, match="allow_pickle"):
        read_raw(bad_files["object_array"])
    assert np.load(bad_files["object_array"], allow_pickle=True)["A_re"].dtype == object
    assert bad_files["truncated"].stat().st_size < bad_files["format_version"].stat().st_size
    assert not bad_files["not_found"].exists()
    assert get_manifest(read_raw(bad_files["format_version"]))["format_version"] == 99


def test_load_integer_model_source(good, bad_files):
    """intssm.sources.load reads .npz artifacts through the same validation."""
    from intssm import sources as integer

    im = integer.load(good[2])
    assert im.qm is None and im.model.seq_len == SEQ_LEN and list(im.model.counters) == good[0].counters
    with pytest.raises(IntssmError, match="format version 99"):
        integer.load(bad_files["format_version"])


# ------------------------------------------------------------------------------------ CLI


#: Peak resident memory any refusal may take (an interpreter with Torch and Numba is ~0.5 GB): the
#: hostile files declare terabytes.
PEAK_RSS_LIMIT_KB = 1_200_000


def intssm_cli(*args, timeout=300):
    """Run the CLI; the result also carries ``maxrss_kb``, the child's own peak resident memory."""
    import os
    import tempfile
    import threading

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen([sys.executable, "-m", "intssm", *map(str, args)], stdout=out, stderr=err, env=ENV)
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        r = subprocess.CompletedProcess(p.args, p.returncode, out.read().decode(), err.read().decode())
    r.maxrss_kb = usage.ru_maxrss
    return r


@pytest.fixture(scope="module")
def cli_runs(good, bad_files):
    """(case, command) -> CompletedProcess, for `inspect PATH` and `simulate PATH --limit 5`; run 3 at a time."""
    jobs = {("good", "inspect"): ["inspect", good[2]]}
    for name in CLI_CASES + CLI_BUG_CASES:
        jobs[(name, "inspect")] = ["inspect", bad_files[name]]
    for name in CLI_CASES:
        jobs[(name, "simulate")] = ["simulate", bad_files[name], "--limit", "5"]
    with ThreadPoolExecutor(max_workers=3) as ex:
        futs = {k: ex.submit(intssm_cli, *a) for k, a in jobs.items()}
        return {k: f.result() for k, f in futs.items()}


def test_cli_inspect_good(cli_runs, good):
    """inspect of a good artifact exits 0 and lists its arrays."""
    r = cli_runs[("good", "inspect")]
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "format intssm-int v1" in r.stdout
    for k in ("A_re", "enc_M", "gelu_lut", "qrange"):
        assert k in r.stdout


def _cli_params():
    out = []
    for n in CLI_CASES + CLI_BUG_CASES:
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[n])] if n in KNOWN_BUGS else []
        for c in ("inspect", "simulate") if n in CLI_CASES else ("inspect",):
            out.append(pytest.param(n, c, marks=marks, id=f"{c}-{n}"))
    return out


@pytest.mark.parametrize("name,cmd", _cli_params())
def test_cli_refuses_bad_artifact(cli_runs, bad_files, name, cmd):
    """inspect / simulate of a bad artifact: exit code != 0, one stderr line 'error: ...', no traceback."""
    r = cli_runs[(name, cmd)]
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:"), r.stderr
    assert BAD[name][1] in lines[0], r.stderr
    assert r.returncode != 0
    assert r.returncode == 2  # as cli.py documents
    assert r.stdout == ""
    assert r.maxrss_kb < PEAK_RSS_LIMIT_KB, f"peak memory {r.maxrss_kb} kB"


def test_cli_refusals_leave_inputs_untouched(cli_runs, bad_files):
    """After `inspect` and `simulate` refused them, the bad files are byte-identical to what was written."""
    import hashlib

    assert cli_runs  # every CLI run is done
    for n in CLI_CASES + CLI_BUG_CASES:
        assert hashlib.sha256(bad_files[n].read_bytes()).hexdigest() == WRITTEN[n], n


def test_cached_model_keeps_its_dataset(tmp_path, monkeypatch):
    """A quantized checkpoint loaded twice without its Torch model (the second time from the
    integer-model cache) names its own dataset both times, so `simulate --verify 0` scores the
    model's data (not sMNIST) from the cache too; the integers are the same."""
    from pathlib import Path

    from intssm import sources

    monkeypatch.setenv("INTSSM_CACHE_DIR", str(tmp_path))
    p = Path(__file__).resolve().parents[2] / "data" / "checkpoints" / "japanesevowels-hetero.pt"
    a, b = sources.load(p, torch_model=False), sources.load(p, torch_model=False)
    assert "from the cache" not in a.source and "from the cache" in b.source
    assert a.dataset == b.dataset and "JapaneseVowels" in a.dataset
    assert sources.arrays_digest(a.model.arrays) == sources.arrays_digest(b.model.arrays)
