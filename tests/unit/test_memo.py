"""The bounded memo tables: never more than their size, emptied when full."""

from __future__ import annotations

from portico.memo import remember


def test_a_full_table_is_emptied_before_the_next_entry() -> None:
    table: dict[int, str] = {}
    for key in range(3):
        assert remember(table, key, str(key), 3) == str(key)
    assert table == {0: "0", 1: "1", 2: "2"}
    assert remember(table, 3, "3", 3) == "3"
    assert table == {3: "3"}
