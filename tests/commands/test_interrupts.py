"""Interrupted runs keep their work: Ctrl-C / SIGTERM during `train` and `qat` save the best
model so far (marked interrupted), exit 130 / 143 with one line saying so, leave earlier outputs
untouched; `train --resume` continues to the weights an uninterrupted run gives."""

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from intssm.training import checkpoint

ROOT = Path(__file__).resolve().parents[2]
JV = ROOT / "data" / "uea" / "JapaneseVowels"
TRAIN = ["train", "--seq", str(JV), "--preset", "tiny", "--epochs", "6", "--seed", "3"]


def _run_until(args, marker: str, sig) -> tuple[int, str]:
    """Start the CLI, send ``sig`` as soon as a stderr line contains ``marker``; (exit status, stderr)."""
    p = subprocess.Popen([sys.executable, "-m", "intssm", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    t0, seen = time.time(), []
    while time.time() - t0 < 300:
        line = p.stderr.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            p.send_signal(sig)
            break
    _, rest = p.communicate(timeout=300)
    return p.returncode, "".join(seen) + rest


def test_train_interrupt_keeps_best_and_resume_equals_uninterrupted(tmp_path):
    """SIGINT during train exits 130 with a loadable checkpoint marked interrupted (earlier outputs
    untouched, no temporary left), and --resume from it gives weights equal to an
    uninterrupted run's."""
    prev = tmp_path / "earlier.pt"
    prev.write_bytes(b"an earlier output")
    out = tmp_path / "m.pt"
    rc, err = _run_until(TRAIN + ["-o", out], '"epoch": 1,', signal.SIGINT)
    assert rc == 130, err[-2000:]
    assert "Traceback" not in err
    assert "interrupted in epoch" in err and f"--resume {out}" in err
    model, ck = checkpoint.load(out)  # a loadable checkpoint
    assert ck["interrupted"]["epoch"] >= 2 and len(ck["metrics"]) == ck["interrupted"]["epoch"] - 1
    assert prev.read_bytes() == b"an earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier.pt", "m.pt"]  # no temporary left behind

    final, ref = tmp_path / "final.pt", tmp_path / "ref.pt"
    r = subprocess.run([sys.executable, "-m", "intssm", "train", "--resume", str(out), "-o", str(final)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "intssm", *TRAIN, "-o", str(ref)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m1, c1 = checkpoint.load(final)
    m2, c2 = checkpoint.load(ref)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(c1["metrics"]) == strip(c2["metrics"])
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd2)
    assert "interrupted" not in c1


def test_resume_needs_an_interrupted_run(tmp_path):
    """train --resume on a checkpoint without a resume state is refused with one error line (exit 2,
    no traceback)."""
    r = subprocess.run([sys.executable, "-m", "intssm", "train", "--resume",
                        str(ROOT / "data" / "checkpoints" / "japanesevowels-fp32.pt"), "-o", str(tmp_path / "x.pt")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "not an interrupted training run" in r.stderr and "Traceback" not in r.stderr


def test_qat_sigterm_keeps_best_integer_model(tmp_path):
    """SIGTERM during qat exits 143 and saves a complete quantized checkpoint marked interrupted
    (loadable as an integer model with its Torch twin); the source checkpoint is unchanged."""
    from intssm import sources as integer

    src = ROOT / "data" / "checkpoints" / "japanesevowels-fp32.pt"
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "q.pt"
    rc, err = _run_until(["qat", src, "-o", out, "--epochs", "50", "--batch-size", "16"], '"epoch": 1,', signal.SIGTERM)
    assert rc == 143, err[-2000:]
    assert "Traceback" not in err and "interrupted in epoch" in err
    _, ck = checkpoint.load(out)
    assert ck["interrupted"]["epoch"] >= 2
    im = integer.load(out)  # a complete quantized model
    assert im.qm is not None
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


def test_search_interrupt_writes_points_so_far(tmp_path):
    """Ctrl-C during `intssm search` writes every point scored so far and the last accepted config."""
    import json

    src = ROOT / "data" / "checkpoints" / "japanesevowels-fp32.pt"
    out = tmp_path / "s"
    rc, err = _run_until(["search", src, "--min-accuracy", "0.3", "--val-limit", "40", "--workers", "1",
                          "--calib", "16", "--val-fraction", "0.2", "-o", out], " B  val ", signal.SIGINT)
    assert rc == 130, err[-2000:]
    assert "Traceback" not in err and "scored configurations written to" in err
    points = [json.loads(ln) for ln in (out / "points.jsonl").read_text().splitlines()]
    assert len(points) >= 2
    best = json.loads((out / "best.json").read_text())
    assert isinstance(best, dict) and "h" in best
