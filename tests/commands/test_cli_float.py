"""The float CLI end to end, in subprocesses: ``python -m intssm`` (error handling lives in ``cli.main``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import assert_clean_error, intssm



# --------------------------------------------------------------------------- happy path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    r = intssm("train", "--preset", "tiny", "--epochs", "1", "--limit", "200", "--threads", "1",
               "-o", "tmp/x.pt", "--json", cwd=d)
    assert r.returncode == 0, r.stderr
    return d, d / "tmp" / "x.pt", r


def test_train_json(tiny_ckpt):
    """`intssm train --json` writes the checkpoint and prints one JSON line: output path, best epoch 1, one
    history entry with val_acc in [0, 1] equal to the reported one, and a finite positive train loss."""
    d, ckpt, r = tiny_ckpt
    assert ckpt.is_file()
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    out = json.loads(lines[0])
    assert out["out"] == "tmp/x.pt"
    assert out["best_epoch"] == 1
    assert len(out["history"]) == 1
    h = out["history"][0]
    assert 0.0 <= h["val_acc"] <= 1.0 and out["val_acc"] == h["val_acc"]
    assert np.isfinite(h["train_loss"]) and h["train_loss"] > 0
    assert "Traceback" not in r.stderr


def _eval(ckpt, *extra):
    r = intssm("eval", ckpt, "--limit", "100", "--json", *extra)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    return json.loads(lines[0])


def test_eval_json_conv_and_recurrent_agree(tiny_ckpt):
    """`intssm eval --json` on 100 test sequences reports n, mode, split, dataset and an accuracy of k/100;
    conv and recurrent modes give equal accuracy and losses within rel 1e-4."""
    _, ckpt, _ = tiny_ckpt
    conv = _eval(ckpt)
    assert 0.0 <= conv["accuracy"] <= 1.0
    assert conv["n"] == 100
    assert conv["mode"] == "conv" and conv["split"] == "test" and conv["seq"] == "smnist"
    assert round(conv["accuracy"] * 100) == pytest.approx(conv["accuracy"] * 100)  # k / 100
    rec = _eval(ckpt, "--mode", "recurrent")
    assert rec["mode"] == "recurrent" and rec["n"] == 100
    assert rec["accuracy"] == conv["accuracy"]
    assert rec["loss"] == pytest.approx(conv["loss"], rel=1e-4)


def test_eval_matches_library(tiny_ckpt):
    """The CLI reports what the library computes for the same checkpoint and data."""
    import torch

    from intssm import data
    from intssm.training import checkpoint
    from intssm.training.train import evaluate

    _, ckpt, _ = tiny_ckpt
    out = _eval(ckpt, "--split", "val")
    model, _ = checkpoint.load(ckpt)
    ds = data.load("smnist", "val", 100)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        acc, loss = evaluate(model, ds.as_float(), ds.y)
    finally:
        torch.set_num_threads(threads)
    assert out["accuracy"] == acc and out["split"] == "val"
    assert out["loss"] == pytest.approx(loss, rel=1e-6)


# --------------------------------------------------------------------------- bad input


def test_missing_checkpoint(tmp_path):
    """eval on a missing checkpoint gives one `error:` line with the full path (longer than 80 columns), exit 2."""
    missing = tmp_path / ("a-rather-long-directory-name-" * 3) / "missing.pt"  # longer than the 80 columns
    r = intssm("eval", missing, "--limit", "10")
    assert_clean_error(r, "checkpoint not found")
    assert str(missing) in r.stderr


def test_random_bytes_checkpoint(tmp_path):
    """eval on random bytes gives one `error:` line "not a readable intssm checkpoint", exit 2."""
    p = tmp_path / "junk.pt"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    r = intssm("eval", p, "--limit", "10")
    assert_clean_error(r, "not a readable intssm checkpoint")


def test_unknown_dataset_train(tmp_path):
    """train --seq nosuch gives one `error:` line naming the dataset, exit 2, and writes no checkpoint."""
    r = intssm("train", "--preset", "tiny", "--epochs", "1", "--seq", "nosuch", "-o", tmp_path / "x.pt")
    assert_clean_error(r, "unknown dataset 'nosuch'")
    assert not (tmp_path / "x.pt").exists()


def test_unknown_dataset_eval(tiny_ckpt):
    """eval --seq nosuch gives one `error:` line naming the dataset, exit 2."""
    r = intssm("eval", tiny_ckpt[1], "--seq", "nosuch")
    assert_clean_error(r, "unknown dataset 'nosuch'")


@pytest.mark.parametrize("cmd,limit", [("eval", "-5"), ("train", "0")])
def test_bad_limit(tmp_path, cmd, limit):
    """eval --limit -5 and train --limit 0 give one `error:` line quoting the value, exit 2."""
    args = [tmp_path / "x.pt"] if cmd == "eval" else ["--preset", "tiny", "-o", tmp_path / "x.pt"]
    r = intssm(cmd, *args, "--limit", limit)
    assert_clean_error(r, f"--limit must be a positive number of sequences, got {limit}")


def test_bad_mode(tiny_ckpt):
    """eval --mode fft gives one `error:` line "--mode must be conv or recurrent", exit 2."""
    r = intssm("eval", tiny_ckpt[1], "--mode", "fft", "--limit", "10")
    assert_clean_error(r, "--mode must be conv or recurrent")


def test_usage_error_is_clean(tmp_path):
    """An unknown option gives one `error:` line ("No such option"), exit 2, no usage dump."""
    r = intssm("eval", tmp_path / "x.pt", "--no-such-option")
    assert_clean_error(r, "No such option")


def test_train_overrides_and_time_budget(tmp_path):
    """--d-model/--d-state/--n-layers change the preset; --max-minutes stops at an epoch boundary."""
    r = intssm("train", "--preset", "tiny", "--d-model", "6", "--d-state", "4", "--n-layers", "2", "--epochs", "3",
               "--limit", "100", "--threads", "1", "--max-minutes", "0.0001", "--min-decay", "0.05",
               "-o", tmp_path / "o.pt", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["history"]) == 1 and "time budget" in out["history"][0]["stopped"]
    from intssm.training import checkpoint

    m, ck = checkpoint.load(tmp_path / "o.pt")
    assert (m.cfg.d_model, m.cfg.d_state, m.cfg.n_layers, m.cfg.min_decay) == (6, 4, 2, 0.05)
    assert ck["train_args"]["overrides"] == {"d_model": 6, "d_state": 4, "n_layers": 2}


@pytest.mark.parametrize("args,fragment", [
    (["--d-state", "5"], "d_state even"),
    (["--d-model", "0"], "must be positive"),
    (["--max-minutes", "-1"], "--max-minutes"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
    (["--min-decay", "1.5"], "min_decay must be a number in [0, 1)"),
])
def test_train_bad_options(tmp_path, args, fragment):
    """An odd d_state, d_model 0, negative --max-minutes, an unknown device or --min-decay 1.5 each give one
    `error:` line naming the option, exit 2, and no checkpoint."""
    r = intssm("train", "--preset", "tiny", "--epochs", "1", "--limit", "10", *args, "-o", tmp_path / "x.pt")
    assert_clean_error(r, fragment)
    assert not (tmp_path / "x.pt").exists()


def test_train_cuda_without_a_gpu_is_a_clean_error(tmp_path):
    """Without a GPU, train --device cuda gives one `error:` line, exit 2 (skipped where a GPU is present)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = intssm("train", "--preset", "tiny", "--epochs", "1", "--limit", "10", "--device", "cuda", "-o", tmp_path / "x.pt")
    assert_clean_error(r, "--device must be cpu or cuda (with a GPU present)")
