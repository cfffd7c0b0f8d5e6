"""The Llama Guard 3 hazard taxonomy."""

from __future__ import annotations

import pytest

from services.guardian.harm_taxonomy import HARM_CATEGORIES, HARM_NAMES, harm_category


def test_fourteen_named_categories_in_order() -> None:
    assert list(HARM_NAMES) == [f"S{i}" for i in range(1, 15)]
    assert HARM_NAMES["S1"] == "Violent Crimes" and HARM_NAMES["S14"] == "Code Interpreter Abuse"
    assert HARM_CATEGORIES[0] == "harm.S1" and len(HARM_CATEGORIES) == 14


def test_codes_map_to_categories_and_unknown_codes_are_refused() -> None:
    assert harm_category("S11") == "harm.S11"
    with pytest.raises(ValueError, match="unknown harm code"):
        harm_category("S15")
