"""Measure the curated shipped models (intssm/models.py) and write data/checkpoints/MODELS.json,
which `intssm models` prints: test accuracy on each model's whole test set (integer simulator or
float model), accounted bytes (intssm memory) and the C export's bytes.

    python tools/models.py            # all, about 3 minutes on 2 cores
    python tools/models.py --only basicmotions,japanesevowels
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from intssm import models  # noqa: E402
from intssm.outputs import write_text  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated names (the others keep their recorded entries)")
    a = ap.parse_args()
    names = a.only.split(",") if a.only else list(models.CURATED)
    old = {e["name"]: e for e in models.load_registry()} if a.only and models.REGISTRY.exists() else {}
    out = []
    for name in models.CURATED:
        if name in names:
            rec = models.measure(name)
            print(json.dumps(rec), flush=True)
            out.append(rec)
        elif name in old:
            out.append(old[name])
    write_text(models.REGISTRY, json.dumps(out, indent=1) + "\n")
    print(f"wrote {models.REGISTRY}")


if __name__ == "__main__":
    main()
