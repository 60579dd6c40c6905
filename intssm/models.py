"""The curated model directory: the shipped models worth starting from, with how they score and
what they cost.

``data/checkpoints/MODELS.json`` lists them; ``tools/models.py`` measures every number in it
(accuracy by the integer simulator or the float model on the whole test set, bytes by the cost
model and the C export's layout) and ``intssm models`` prints it. The other checkpoints in
``data/checkpoints/`` are inputs of the studies in docs/results.md and of the benchmarks in tools/.
"""

from __future__ import annotations

import json

from intssm.data import DATA_DIR
from intssm.errors import IntssmError

REGISTRY = DATA_DIR / "checkpoints" / "MODELS.json"

#: name -> (checkpoint file, dataset, what it is, the command that made it (its log has the rest))
CURATED = {
    "default": ("paper-small-hetero.pt", "smnist",
                "paper-small, heterogeneous QAT: B̄, C̄ 3-bit, D 4-bit, mixing 5-bit, activations 6-bit, Ā 8-bit, state 12-bit, 16-bit biases",
                "intssm qat data/checkpoints/paper-small-seed7-fp32.pt --config hetero-3b-x12 "
                "--param frozen --epochs 8 --lr 1e-3 --distill 0.5 --ema 0.999"),
    "default-float": ("paper-small-seed7-fp32.pt", "smnist", "paper-small float32, the default's parent",
                      "intssm train --preset paper-small --epochs 30 --seed 7 --max-minutes 5.5 --device cuda"),
    "default-shared": ("paper-small-hetero-shared.pt", "smnist",
                       "the default's config with one scale for Re and Im of Ā and of the state (complex_scale shared): "
                       "the fastest on a microcontroller (docs/deploy.md)",
                       "intssm qat data/checkpoints/paper-small-seed7-fp32.pt --config hetero-3b-x12-shared "
                       "--param frozen --epochs 8 --lr 1e-3 --distill 0.5 --ema 0.999"),
    "a6-x6": ("paper-small-hetero-A6asym-x6-eq.pt", "smnist",
              "paper-small with Ā and the state at 6 bits (asymmetric Ā, dithered and equalized state), 8-bit weights and activations",
              "intssm qat data/checkpoints/paper-small-seed7-fp32.pt --config a6asym-x6-dither "
              "--param frozen --epochs 8 --distill 0.5 --ema 0.999 --equalize 1, then 6 epochs at lr 3e-4 (its log)"),
    "ptq": ("paper-small-w8a8-state12.pt", "smnist",
            "paper-small, post-training quantization only (preset w8a8-state12): 8-bit weights and activations, "
            "Ā and the state 12-bit per head",
            "intssm ptq data/checkpoints/paper-small-fp32.pt --config w8a8-state12"),
    "base-float": ("base-fp32.pt", "smnist", "base (4 layers, d_model 64) float32",
                   "intssm train --preset base --epochs 30 --max-minutes 7.5 --device cuda"),
    "base": ("base-x6-eq.pt", "smnist", "base with a 6-bit dithered, equalized state, 3-bit weights",
             "intssm qat data/checkpoints/base-fp32.pt --config docs/configs/base-A8-x6-mix3-C3-b16-dither.json --param frozen "
             "--epochs 4 --distill 0.5 --ema 0.999 --equalize 0.75 --val-limit 2000 --max-minutes 100"),
    "basicmotions": ("basicmotions-hetero.pt", "data/uea/BasicMotions", "BasicMotions (6 channels, 100 steps), hetero-3b-x10 QAT",
                     "bash tools/uea_models.sh"),
    "japanesevowels": ("japanesevowels-hetero.pt", "data/uea/JapaneseVowels",
                       "JapaneseVowels (12 channels, 7-29 steps), hetero-3b-x10 QAT", "bash tools/uea_models.sh"),
    # intssm fit with its defaults (no choice read the test split); NAME-fit.log holds the run and its
    # model card, NAME-fit.card.json every choice with its validation score
    "japanesevowels-fit": ("japanesevowels-fit.pt", "data/uea/JapaneseVowels",
                           "JapaneseVowels, intssm fit: d_model 16 chosen by 3-fold cross-validation, hetero-3b-x10 QAT",
                           "intssm fit --seq data/uea/JapaneseVowels -o runs/fit-jv --max-minutes 8"),
    "italypowerdemand-fit": ("italypowerdemand-fit.pt", "data/uea/ItalyPowerDemand",
                             "ItalyPowerDemand (1 channel, 24 steps), intssm fit: d_model 16 x 2 layers chosen by 3-fold "
                             "cross-validation, hetero-3b-x10 QAT",
                             "intssm fit --seq data/uea/ItalyPowerDemand -o runs/fit-italy --max-minutes 5"),
}


def measure(name: str, progress=None) -> dict:
    """Every number of one curated model, measured now: test accuracy (the integer simulator for a
    quantized model, the float model in convolution mode otherwise), accounted and deployed bytes."""
    from intssm import data
    from intssm.training import checkpoint
    from intssm import sources
    from intssm.integer import cost
    from intssm.integer.cexport import c_storage
    from intssm.training.train import evaluate

    fname, seq, what, made = CURATED[name]
    path = DATA_DIR / "checkpoints" / fname
    ds = data.load(seq, "test")
    _, ck = checkpoint.load(path)
    rec = {"name": name, "file": f"data/checkpoints/{fname}", "dataset": seq, "what": what, "made_by": made,
           "n_test": len(ds)}
    if "qspec" in ck:
        im = sources.load(path)
        lg, _, _ = sources.run(im.model, im.input_codes(ds), lengths=ds.lengths, progress=progress)
        m = cost.memory(im.model.cfg, im.model.qcfg, im.model.seq_len) | c_storage(im.model)
        rec |= {"kind": "integer", "accuracy": float((lg.argmax(1) == ds.y).mean()), "bytes": m["bytes"],
                "weights_reduction": round(m["weights_reduction"], 2), "reduction": round(m["reduction"], 2),
                "deployed_bytes": m["c_flash_bytes"] + m["c_ram_bytes"]}
    else:
        from intssm.datapath.qspec import PRESETS

        model, _ = checkpoint.load(path)
        acc, _ = evaluate(model, ds.as_float(), ds.y, lengths=ds.lengths)
        m = cost.memory(model.cfg, PRESETS["w8a8"], ds.x.shape[1])  # its float32 twin: fp32_*
        rec |= {"kind": "float", "accuracy": float(acc), "bytes": m["fp32_bytes"]}
    return rec


def load_registry() -> list[dict]:
    """The curated models as ``tools/models.py`` measured them."""
    try:
        entries = json.loads(REGISTRY.read_text())
    except (OSError, ValueError) as e:
        raise IntssmError(f"model registry {REGISTRY} unreadable ({type(e).__name__}); regenerate with python tools/models.py") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e for e in entries):
        raise IntssmError(f"model registry {REGISTRY} is malformed; regenerate with python tools/models.py")
    return entries


def describe(e: dict) -> str:
    """One registry entry as ``intssm models`` prints it: name and file, task and accuracy, bytes, what, how made."""
    acc = f"{100 * e['accuracy']:.2f}% of {e['n_test']}"
    size = (f"{e['bytes']:,} B accounted, {e['deployed_bytes']:,} B as C, weights {e['weights_reduction']}x" if e["kind"] == "integer"
            else f"{e['bytes']:,} B float32")
    pad = " " * 15
    return f"{e['name']:15s} {e['file']}\n{pad} {e['dataset']}: {acc}; {size}\n{pad} {e['what']}\n{pad} made by: {e['made_by']}"
