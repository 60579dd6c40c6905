"""`intssm train`'s recipe (intssm/training/recipe.py): the small-data rule, preset merging, the
interrupted run's options decoded for --resume, and the step schedule's folded standardisation."""

from pathlib import Path

import numpy as np
import pytest
import torch

from intssm.data import DataInfo
from intssm.errors import IntssmError, Interrupted
from intssm.training import checkpoint
from intssm.training.recipe import (EPOCHS, SMALL_DATA, STEPS, TrainOptions, model_config, plan, recorded_options, run,
                                    uses_steps)

JV = Path(__file__).resolve().parents[2] / "data" / "uea" / "JapaneseVowels"


def test_small_data_rule_by_size_and_dtype():
    """The step schedule is chosen for fewer than SMALL_DATA training sequences or float features,
    the epoch schedule for sMNIST-sized uint8 data (also when --limit trains on a few of them), and
    --epochs always means the epoch schedule (--steps the step schedule) whatever the data."""
    o = TrainOptions(out=Path("x.pt"))
    assert uses_steps(o, SMALL_DATA - 1, True) and uses_steps(o, 40, False) and uses_steps(o, 50_000, False)
    assert not uses_steps(o, SMALL_DATA, True) and not uses_steps(o, 50_000, True)
    assert not uses_steps(TrainOptions(out=Path("x.pt"), epochs=3), 40, False)
    assert uses_steps(TrainOptions(out=Path("x.pt"), steps=10), 50_000, True)
    quick = plan(TrainOptions(out=Path("x.pt"), limit=200), 200, True, n_split=50_000)  # --limit keeps the schedule
    assert (quick.epochs, quick.standardise) == (EPOCHS, False)


def test_plan_keeps_smnist_schedule_and_budgets_small_data_in_steps():
    """On 50,000 uint8 sequences the plan is today's (30 epochs, batch 128, no standardisation, no
    early stop, accuracy alone selects); on 36 float sequences it is about STEPS optimizer steps in
    whole epochs (never fewer), batch n/8 within [8, 64], standardised, early stopping after half
    the epochs, loss breaking accuracy ties."""
    o = TrainOptions(out=Path("x.pt"))
    a = plan(o, 50_000, True)
    assert (a.epochs, a.batch_size, a.standardise, a.patience, a.loss_breaks_ties, a.warmup_epochs) == (EPOCHS, 128, False, 0, False, 1.0)
    b = plan(o, 36, False)
    per_epoch = -(-36 // b.batch_size)
    assert b.batch_size == 8 and b.standardise and b.loss_breaks_ties
    assert STEPS <= b.epochs * per_epoch < STEPS + per_epoch
    assert b.patience == -(-b.epochs // 2) and b.warmup_epochs == pytest.approx(0.05 * b.epochs)
    c = plan(TrainOptions(out=Path("x.pt"), epochs=7, batch_size=5), 36, False)
    assert (c.epochs, c.batch_size, c.standardise, c.patience) == (7, 5, False, 0)


def test_model_config_merges_preset_overrides_and_the_data_ends():
    """The preset's body with --d-model etc. on top; features and classes from the data; variable
    length data pool the last step unless --pool says otherwise; --dropout overrides the preset's."""
    info = DataInfo(d_input=12, n_classes=9, max_len=29, varlen=True, is_uint8=False, classes=None)
    m = model_config(TrainOptions(out=Path("x.pt"), preset="tiny", d_model=6, n_layers=2, dropout=0.3, min_decay=0.01), info)
    assert (m.d_model, m.d_state, m.n_layers, m.d_input, m.d_output, m.pool, m.dropout, m.min_decay) == (6, 8, 2, 12, 9, "last", 0.3, 0.01)
    assert model_config(TrainOptions(out=Path("x.pt"), preset="tiny", pool="mean"), info).pool == "mean"
    fixed = DataInfo(d_input=1, n_classes=10, max_len=784, varlen=False, is_uint8=True, classes=None)
    assert model_config(TrainOptions(out=Path("x.pt")), fixed).pool == "mean"  # paper-small's own


def _record(**ta_extra):
    ta = dict(preset="tiny", epochs=12, batch_size=8, lr=0.01, ssm_lr=0.001, weight_decay=0.01, seed=3, limit=None, threads=0,
              max_minutes=0.0, val_fraction=None, overrides={"d_model": 6}) | ta_extra
    return {"resume": {}, "train_args": ta, "dataset": {"seq": "d"}, "model_config": {"dropout": 0.0, "pool": "mean", "min_decay": 0.0}}


def test_resume_decodes_old_and_new_records():
    """A record without a `recipe` entry (written before the step schedule) resumes on the epoch
    schedule with its recorded epochs and batch size; one with it resumes with the options as given
    (None stays None: the rule chooses again, on the same data); a record lacking a field, or with
    no resume state, is refused with one error."""
    old = recorded_options("r.pt", _record())
    assert (old["epochs"], old["steps"], old["batch_size"], old["d_model"], old["seed"]) == (12, None, 8, 6, 3)
    new = recorded_options("r.pt", _record(recipe={"schedule": "steps", "epochs": None, "steps": 500, "batch_size": None}))
    assert (new["epochs"], new["steps"], new["batch_size"]) == (None, 500, None)
    broken = _record()
    del broken["train_args"]["lr"]
    with pytest.raises(IntssmError, match="incomplete training record"):
        recorded_options("r.pt", broken)
    with pytest.raises(IntssmError, match="not an interrupted training run"):
        recorded_options("r.pt", {"train_args": {}})


def test_step_schedule_folds_standardisation_into_the_encoder(tmp_path):
    """A step-schedule run (float data) saves a model that reads the raw inputs: its logits on raw
    sequences equal those of the weights it trained (recorded in the resume state) on the
    standardised sequences, and the checkpoint records the mean and sd it folded."""
    from intssm import data
    from intssm.training.train import _standardised, standardisation

    out = tmp_path / "m.pt"
    seen = []

    def stop_after_2(rec):
        seen.append(rec["epoch"])
        if rec["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):  # interrupted: the resume state holds the unfolded last weights
        run(TrainOptions(out=out, seq=str(JV), preset="tiny", steps=60, val_fraction=0.0, seed=1), say=lambda m: None,
            on_epoch=stop_after_2)
    model, ck = checkpoint.load(out)
    mu, sd = np.array(ck["standardisation"]["mean"]), np.array(ck["standardisation"]["sd"])
    tr = data.load(str(JV), "train", None, 0.0)
    mu0, sd0 = standardisation(tr.as_float(), tr.lengths)
    assert np.array_equal(mu, mu0) and np.array_equal(sd, sd0)
    raw = model_config(TrainOptions(out=out, preset="tiny"), data.info(str(JV)))
    from intssm.training.model import S4DModel

    unfolded = S4DModel(raw)
    unfolded.load_state_dict(ck["resume"]["model"])
    unfolded.eval()
    x = tr.as_float()[:20]
    lens = torch.from_numpy(tr.lengths[:20])
    with torch.no_grad():
        a = model(torch.from_numpy(x), lengths=lens)
        b = unfolded(torch.from_numpy(_standardised(x, mu, sd)), lengths=lens)
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert seen == [1, 2]


def test_step_schedule_resume_equals_uninterrupted(tmp_path):
    """A step-schedule run interrupted after epoch 2 and resumed gives the weights, history and
    kept epoch of the uninterrupted run; an option given on resume that differs from the run's
    (--steps) is refused."""
    kw = dict(seq=str(JV), preset="tiny", steps=48, seed=2, limit=120)
    full = run(TrainOptions(out=tmp_path / "full.pt", **kw), say=lambda m: None)

    def stop(rec):
        if rec["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        run(TrainOptions(out=tmp_path / "part.pt", **kw), say=lambda m: None, on_epoch=stop)
    with pytest.raises(IntssmError, match="--steps 99 conflicts"):
        run(TrainOptions(out=tmp_path / "x.pt", resume=tmp_path / "part.pt", steps=99, given=("steps",)), say=lambda m: None)
    res = run(TrainOptions(out=tmp_path / "done.pt", resume=tmp_path / "part.pt"), say=lambda m: None)
    assert res.schedule == "steps" and res.best_epoch == full.best_epoch and len(res.history) == len(full.history)
    a, b = checkpoint.load_raw(tmp_path / "full.pt")["state_dict"], checkpoint.load_raw(tmp_path / "done.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_train_defaults_to_the_step_schedule_on_small_float_data(tmp_path):
    """`intssm train` on 40 float sequences without --epochs reports the step schedule and keeps a
    validated epoch; --epochs with --steps is one `error:` line, exit 2, and no checkpoint."""
    from cli_helpers import assert_clean_error, intssm, ok_json

    res = ok_json(intssm("train", "--seq", JV, "--preset", "tiny", "--steps", "12", "--limit", "40", "--json", "-o", tmp_path / "m.pt"))
    assert res["schedule"] == "steps" and 0 <= res["val_acc"] <= 1
    assert res["best_epoch"] in [r["epoch"] for r in res["history"]]
    assert "standardisation" in checkpoint.load_raw(tmp_path / "m.pt")
    r = intssm("train", "--seq", JV, "--epochs", "1", "--steps", "5", "-o", tmp_path / "x.pt")
    assert_clean_error(r, "not both")
    assert not (tmp_path / "x.pt").exists()
