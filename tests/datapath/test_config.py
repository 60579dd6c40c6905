"""Quant config validation (intssm.datapath.qspec.QuantConfig): every impossible setting is refused with a
message naming the component and the value; good configs round-trip through their dict form."""

from __future__ import annotations

import pytest

from intssm.errors import IntssmError
from intssm.datapath.qspec import PRESETS, QuantConfig

BAD = [
    ({"A_re": {"bits": 0}}, "A_re.bits must be an integer in 2..16, got 0"),
    ({"x_re": {"bits": 1}}, "x_re.bits must be an integer in 2..16, got 1"),
    ({"B": {"bits": 33}}, "B.bits must be an integer in 2..16, got 33"),
    ({"C": {"bits": True}}, "C.bits must be an integer in 2..16, got True"),
    ({"C": {"bits": 4.5}}, "C.bits must be an integer in 2..16, got 4.5"),
    ({"nosuch": {"bits": 8}}, "unknown component(s) ['nosuch']"),
    ({"D": {"bits": 8, "scale": 2}}, "D has unknown field(s) ['scale']"),
    ({"state_clip": 0}, "state_clip must be in (0, 16], got 0"),
    ({"state_clip": -0.5}, "state_clip must be in (0, 16], got -0.5"),  # an inverted clip range
    ({"state_clip": float("nan")}, "state_clip must be in (0, 16], got nan"),
    ({"state_clip": 17}, "state_clip must be in (0, 16], got 17"),
    ({"h": {"range": "p101"}}, "h.range must be 'minmax', 'mse' or a percentile"),
    ({"h": {"per_channel": True}}, "h cannot be per-channel"),
    ({"B": {"per_channel": "no"}}, "B.per_channel must be true or false"),
    ({"A_re": {"symmetric": "yes"}}, "A_re.symmetric must be true or false"),
    ({"input_bits": 9}, "input_bits must be an integer in 2..8"),
    ({"input_range": "mse"}, "input_range must be"),
    ({"sig": {"symmetric": True}}, "sig must be asymmetric"),
    ({"bias_bits": 1}, "bias_bits must be an integer in 2..32, got 1"),
    ({"state_rounding": "up"}, "state_rounding must be one of ['nearest', 'dither'], got 'up'"),
]


@pytest.mark.parametrize("cfg,fragment", BAD, ids=[str(c) for c, _ in BAD])
def test_bad_config_refused(cfg, fragment):
    """Each impossible quant setting in BAD is refused with a one-line IntssmError containing the expected
    message (component and value)."""
    with pytest.raises(IntssmError) as e:
        QuantConfig.from_dict(cfg)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip(name):
    """Every quant preset equals itself after to_dict then from_dict."""
    q = PRESETS[name]
    assert QuantConfig.from_dict(q.to_dict()) == q


def test_config_doc_lists_every_field():
    """docs/config.md tabulates every component (with its default bits and symmetry) and every setting."""
    from pathlib import Path

    from intssm.datapath.qspec import ACTIVATIONS, SCALARS, WEIGHTS, QuantConfig

    doc = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    comp = doc.split("<!-- config-components")[1].split("<!-- /config-components -->")[0]
    rows = {ln.split("|")[1].strip().strip("`"): ln.split("|")[3].strip() for ln in comp.splitlines() if ln.startswith("| `")}
    q = QuantConfig()
    assert set(rows) == set(WEIGHTS + ACTIVATIONS)
    for n, default in rows.items():
        f = getattr(q, n)
        assert default == f"{f.bits} bits, {'symmetric' if f.symmetric else 'asymmetric'}", n
    sett = doc.split("<!-- config-settings -->")[1].split("<!-- /config-settings -->")[0]
    names = {ln.split("|")[1].strip().strip("`") for ln in sett.splitlines() if ln.startswith("| `")}
    assert names == set(SCALARS)


def test_default_model_config_is_a_named_preset():
    """The shipped default was trained with docs/configs/progressive/hetero-x10-6x-x12.json, which is the
    preset hetero-3b-x12, and its checkpoint stores that config."""
    from pathlib import Path

    from intssm.datapath.qspec import PRESETS, QuantConfig, get_config
    from intssm.training import checkpoint

    root = Path(__file__).resolve().parents[2]
    assert get_config(str(root / "docs/configs/progressive/hetero-x10-6x-x12.json")) == PRESETS["hetero-3b-x12"]
    ck = checkpoint.load_raw(root / "data/checkpoints/paper-small-hetero.pt")
    assert QuantConfig.from_dict(dict(ck["qspec"]["quant_config"])) == PRESETS["hetero-3b-x12"]


def test_a6_x6_model_config_is_a_named_preset():
    """The curated a6-x6 model was trained with docs/configs/progressive/hetero-A6asym-x6-dither-a8-BCD8.json,
    which is the preset a6asym-x6-dither, and its checkpoint stores that config."""
    from pathlib import Path

    from intssm.datapath.qspec import PRESETS, QuantConfig, get_config
    from intssm.training import checkpoint

    root = Path(__file__).resolve().parents[2]
    p = PRESETS["a6asym-x6-dither"]
    assert get_config(str(root / "docs/configs/progressive/hetero-A6asym-x6-dither-a8-BCD8.json")) == p
    ck = checkpoint.load_raw(root / "data/checkpoints/paper-small-hetero-A6asym-x6-eq.pt")
    assert QuantConfig.from_dict(dict(ck["qspec"]["quant_config"])) == p
