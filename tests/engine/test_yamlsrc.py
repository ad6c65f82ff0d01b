from __future__ import annotations

import pytest

from qnnbuild.engine.recipe.yamlsrc import load_text
from qnnbuild.errors import RecipeError


def messages(raw: bytes) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_text(raw, "r.yaml")
    return [str(p) for p in info.value.problems]


def test_positions_of_values_and_keys() -> None:
    doc = load_text(b"a:\n  b: [1, 2]\n  c: x\n", "r.yaml")
    assert doc.data == {"a": {"b": [1, 2], "c": "x"}}
    assert doc.values[("a", "b", 1)] == (2, 10)
    assert doc.keys[("a", "c")] == (3, 3)


def test_duplicate_keys_are_errors() -> None:
    assert messages(b"a: 1\nb: 2\na: 3\n") == ["r.yaml:3:1: a: duplicate key (first defined on line 1)"]


def test_alias_bomb_is_stopped() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    assert messages("\n".join(lines).encode())[0].endswith("the document expands to more than 100000 values "
                                                          "(alias bomb?)")


def test_not_utf8_names_the_position() -> None:
    assert messages(b"a: 1\nb: \xff\n") == ["r.yaml:2:4: not UTF-8 text (byte 0xff)"]


def test_tabs_are_a_syntax_error_with_position() -> None:
    [msg] = messages(b"a:\n\tb: 1\n")
    assert msg == "r.yaml:2:1: YAML syntax: found character that cannot start any token (a tab: YAML indents with spaces only)"


def test_deep_nesting() -> None:
    [msg] = messages(b"a: " + b"[" * 200 + b"]" * 200)
    assert "nesting deeper than 64 levels" in msg


def test_binary_and_empty() -> None:
    assert messages(b"\x00\x01\x02") == ["r.yaml:1:1: binary data, not a YAML recipe"]
    assert messages(b"") == ["r.yaml:1:1: the file is empty"]


def test_non_string_keys() -> None:
    assert messages(b"1: a\n") == ["r.yaml:1:1: keys must be plain strings"]
