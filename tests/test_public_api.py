from __future__ import annotations

import revex


def test_all_is_sorted_and_every_name_is_importable() -> None:
    assert revex.__all__ == sorted(revex.__all__)
    for name in revex.__all__:
        assert getattr(revex, name) is not None


def test_every_error_derives_from_revex_error() -> None:
    for name in revex.__all__:
        obj = getattr(revex, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, revex.RevexError), name


def test_contract_names_from_the_design_are_public() -> None:
    for name in ("Runtime", "Limits", "ConflictError", "PolicyViolation", "RevexError"):
        assert name in revex.__all__
