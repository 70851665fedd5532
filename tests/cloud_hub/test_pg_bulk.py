"""Array parameters on PostgreSQL (cloud_hub.db.pg_bulk): a column of text, integers or floats
sent as the text of an array literal comes back from the server as exactly the values sent,
whatever the text holds (quotes, backslashes, commas, braces, white space, the word NULL, the
empty string) and whatever the number (NULL, NaN, infinities, -0.0, the ends of bigint)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import BigInteger, Float, Integer, LargeBinary, String, select
from sqlalchemy.engine import Engine
from sqlmodel import AutoString

from cloud_hub.db import pg_bulk
from cloud_hub.db.tables import Device
from tests.pg import pg_schema_engine

pytestmark = [pytest.mark.postgres, pytest.mark.hub]

_COLUMNS: pg_bulk.Columns = (("t", String), ("i", BigInteger), ("f", Float))
_TEXT = st.text(st.characters(exclude_characters="\x00"), max_size=12)  # no NUL in text
_ROWS = st.lists(st.tuples(
    st.one_of(st.none(), _TEXT, st.sampled_from(["", "NULL", "null", " x ", "a,b", '"', "\\",
                                                 "{}", "\u3000", "pump-01"])),
    st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)),
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))), max_size=30)


@pytest.fixture(scope="module")
def pg_engine() -> Iterator[Engine]:
    with pg_schema_engine() as engine:
        yield engine


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a)
                                                     == math.copysign(1, b))
    return a == b and type(a) is type(b)


def _round_trip(engine: Engine, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    u = pg_bulk.unnest_rows(_COLUMNS, name="u")
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(u.c.t, u.c.i, u.c.f),
            pg_bulk.as_arrays([dict(zip("tif", r, strict=True)) for r in rows], "tif"))]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_ROWS)
def test_columns_come_back_as_sent(pg_engine: Engine, rows: list[tuple[Any, ...]]) -> None:
    back = _round_trip(pg_engine, rows)
    assert len(back) == len(rows)
    for sent, got in zip(rows, back, strict=True):
        assert all(_same(a, b) for a, b in zip(sent, got, strict=True)), (sent, got)


def test_the_awkward_values_each_come_back(pg_engine: Engine) -> None:
    """Every case that needs the element-by-element path, in one list (Hypothesis may not
    draw them all together)."""
    rows = [("", 0, -0.0), ("NULL", None, math.inf), (None, -2**63, -math.inf),
            ('say "hi"', 2**63 - 1, math.nan), ("back\\slash", True, 1e-310),
            ("a,b", 7, None), ("{x}", -1, 5e-324), (" padded ", 3, 1.0000000000000002)]
    back = _round_trip(pg_engine, rows)
    expected = [(t, 1 if i is True else i, f) for t, i, f in rows]
    assert all(_same(a, b) for s, g in zip(expected, back, strict=True)
               for a, b in zip(s, g, strict=True)), back


def test_plain_columns_are_one_join_and_the_rest_are_quoted() -> None:
    assert pg_bulk.array_literal(["pump-01", "a.b_c"], "text") == "{pump-01,a.b_c}"
    assert pg_bulk.array_literal([3, -4, True], "int") == "{3,-4,1}"
    assert pg_bulk.array_literal([0.1, 1e300], "float") == "{0.1,1e+300}"
    assert pg_bulk.array_literal([], "text") == "{}"
    assert pg_bulk.array_literal(["null", "x"], "text") == '{"null","x"}'
    assert pg_bulk.array_literal(["x", ""], "text") == '{"x",""}'
    assert pg_bulk.array_literal(["a,b"], "text") == '{"a,b"}'
    assert pg_bulk.array_literal(['q"', "b\\"], "text") == '{"q\\"","b\\\\"}'
    assert pg_bulk.array_literal([None, 2], "int") == "{NULL,2}"
    assert pg_bulk.array_literal([math.nan, -math.inf, 2], "float") == "{NaN,-Infinity,2.0}"


@pytest.mark.parametrize(("values", "kind", "message"), [
    ([1.5], "int", "float"), (["1"], "int", "str"), ([b"x"], "text", "bytes"),
    (["x", 3], "text", "int"), (["x"], "float", "could not convert"),
])
def test_a_value_of_the_wrong_type_is_refused(values: list[Any], kind: pg_bulk.Kind,
                                              message: str) -> None:
    """Never truncated or stringified: 1.5 is not sent as the bigint 1, nor 3 as the text
    '3'."""
    with pytest.raises((TypeError, ValueError), match=message):
        pg_bulk.array_literal(values, kind)


def _sent(engine: Engine, item: Any, values: list[Any]) -> Any:
    """What an array parameter of ``item``s hands the driver for ``values``."""
    dialect = engine.dialect
    process = pg_bulk.array_param(item).dialect_impl(dialect).bind_processor(dialect)
    return values if process is None else process(values)


def test_types_other_than_text_and_numbers_stay_lists(pg_engine: Engine) -> None:
    assert _sent(pg_engine, String, ["a", "b"]) == "{a,b}"
    assert _sent(pg_engine, AutoString(), ["a"]) == "{a}"  # sqlmodel's str columns
    assert _sent(pg_engine, Integer, [1, 2]) == "{1,2}"
    assert _sent(pg_engine, Float(), [0.5]) == "{0.5}"
    assert isinstance(_sent(pg_engine, LargeBinary, [b"x"]), list)
    u = pg_bulk.unnest_rows((("b", LargeBinary), ("n", Integer)), name="u")
    with pg_engine.connect() as conn:
        got = conn.execute(select(u.c.b, u.c.n), {"b": [b"\x00\x01", b"{,}"], "n": [1, 2]}).all()
    assert [(bytes(b), n) for b, n in got] == [(b"\x00\x01", 1), (b"{,}", 2)]


def test_in_list_matches_on_a_sqlmodel_string_column(pg_engine: Engine) -> None:
    """``device_id = ANY(:ids)`` through a column typed by sqlmodel (AutoString), with an id
    that needs quotes beside plain ones."""
    table = Device.__table__  # type: ignore[attr-defined]
    ids = ["pump-01", "null", "pump-02"]
    stmt = select(table.c.device_id).where(
        pg_bulk.in_list(table.c.device_id, ids, "postgresql"))
    with pg_engine.begin() as conn:
        conn.execute(table.insert(), [{"device_id": d, "tags": []}
                                      for d in ["pump-01", "null", "other"]])
        assert sorted(conn.execute(stmt).scalars()) == ["null", "pump-01"]
