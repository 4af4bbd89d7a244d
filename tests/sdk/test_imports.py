"""The SDK stays light: importing it pulls in no ML stack."""

from __future__ import annotations

import subprocess
import sys


def test_import_modelwire_imports_no_ml_libraries() -> None:
    code = (
        "import modelwire, sys; "
        "assert not any(m in sys.modules for m in ('torch', 'numpy', 'transformers')), "
        "sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_public_names_are_exported() -> None:
    import modelwire

    for name in modelwire.__all__:
        assert hasattr(modelwire, name), name
    assert modelwire.__version__
