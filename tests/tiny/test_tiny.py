"""frankenlab.tiny is product code: the testing package re-exports it, and no product module imports testing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import frankenlab
import frankenlab.testing as testing
import frankenlab.testing.models as testing_models
import frankenlab.testing.tokenizer as testing_tokenizer
import frankenlab.tiny as tiny
import frankenlab.tiny.models as tiny_models
import frankenlab.tiny.tokenizer as tiny_tokenizer

SRC = Path(frankenlab.__file__).parent


def _imports_of(path: Path) -> list[str]:
    """Every module an import statement in ``path`` names (absolute imports; relative ones resolved)."""
    package = ".".join(("frankenlab", *path.relative_to(SRC).with_suffix("").parts[:-1]))
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def test_no_product_module_imports_testing() -> None:
    offenders = [
        f"{path.relative_to(SRC)}: {name}"
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).parts[0] != "testing"
        for name in _imports_of(path)
        if name == "frankenlab.testing" or name.startswith("frankenlab.testing.")
    ]
    assert offenders == []


def test_import_scan_sees_testing_imports() -> None:
    # The scan above must be able to fail: the testing package's own modules import frankenlab.tiny and
    # frankenlab.testing.* (absolute), which it must see.
    assert "frankenlab.tiny.models" in _imports_of(SRC / "testing" / "models.py")
    assert "frankenlab.testing.models" in _imports_of(SRC / "testing" / "__init__.py")


@pytest.mark.parametrize(("product", "shim"), [(tiny_models, testing_models), (tiny_tokenizer, testing_tokenizer),
                                               (tiny, testing)])
def test_testing_reexports_the_product_objects(product: object, shim: object) -> None:
    names = list(product.__all__)  # type: ignore[attr-defined]
    assert names
    for name in names:
        assert getattr(shim, name) is getattr(product, name), name


def test_testing_keeps_its_own_helpers() -> None:
    # Test-only helpers stay in testing and are not part of the product module.
    for name in ("save_tiny_checkpoint", "checkpoint_state_dict", "tiny_image", "generate_text", "generate_with_image"):
        assert callable(getattr(testing, name))
        assert not hasattr(tiny_models, name), name


def test_miniworld_uses_the_product_builders() -> None:
    import frankenlab.miniworld.model as mw
    import frankenlab.miniworld.sft as sft

    assert mw.tiny_config is tiny_models.tiny_config and mw.build_tokenizer is tiny_tokenizer.build_tokenizer
    assert sft.IM_END == tiny_tokenizer.IM_END == "<|im_end|>"
