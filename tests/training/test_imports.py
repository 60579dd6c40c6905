"""The package's layers: the training side (Torch) never imports the integer side."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "intssm"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (functions' lazy imports included): ``import a.b``
    gives ``a.b``, ``from a import b`` gives ``a`` and ``a.b`` (b may be a submodule)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):  # relative imports resolved against the file's package
            pkg = ("intssm",) + path.relative_to(PKG).parts[:-node.level] if node.level else ()
            base = ".".join(pkg + ((node.module,) if node.module else ()))
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def test_training_imports_no_integer_module():
    """No module of intssm/training imports intssm.integer (or anything under it), lazily or not;
    QAT gets the integer model's scoring from its caller. The walk itself is checked on a file
    whose imports are known."""
    files = sorted((PKG / "training").glob("*.py"))
    assert len(files) >= 10
    assert {"intssm.data", "intssm.training.qmodel.QuantS4D"} <= imported_modules(PKG / "training" / "qat.py")
    bad = {f.name: sorted(m for m in imported_modules(f) if m == "intssm.integer" or m.startswith("intssm.integer."))
           for f in files}
    assert {k: v for k, v in bad.items() if v} == {}


def test_import_walk_sees_lazy_and_package_imports(tmp_path):
    """The walk finds an integer import inside a function body and one written as
    ``from intssm import integer``, so the layer test cannot pass by missing them."""
    p = tmp_path / "probe.py"
    p.write_text("def f():\n    from intssm.integer.sim import simulate\n\nfrom intssm import integer\n")
    names = imported_modules(p)
    assert "intssm.integer.sim" in names and "intssm.integer" in names
