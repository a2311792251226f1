"""strict_json: JSON as RFC 8259 defines it, the one parser for JSON from outside."""

from __future__ import annotations

import json

import pytest

from faas_supervisor import strict_json


@pytest.mark.parametrize(
    "text",
    ['{"a": 1.5e300, "b": [true, false, null, -0, "NaN", "Infinity"]}', "[]", '"x"', "-1",
     '{"deep": ' * 50 + "1" + "}" * 50],
)
def test_json_is_read_as_json_reads_it(text: str) -> None:
    assert strict_json.loads(text) == json.loads(text)
    assert strict_json.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("NaN", "NaN is not a JSON value"),
        ('{"a": NaN}', "NaN is not a JSON value"),
        ("[1, Infinity]", "Infinity is not a JSON value"),
        ('{"a": {"b": [-Infinity]}}', "-Infinity is not a JSON value"),
        ("{nope", "at line 1 column 2"),
        ('{"a": 1}\n{"b": 2}', "Extra data at line 2"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_what_rfc_8259_does_not_define_is_refused(text: str, reason: str) -> None:
    for data in (text, text.encode()):
        with pytest.raises(strict_json.NotJson) as caught:
            strict_json.loads(data)
        assert reason in str(caught.value)
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("data", ['{"a": "b"}'.encode("utf-16"), '["\u00e9"]'.encode("latin-1"),
                                  '"x"'.encode("utf-32")])
def test_bytes_must_be_utf8(data: bytes) -> None:
    with pytest.raises(strict_json.NotJson, match="not UTF-8"):
        strict_json.loads(data)


def test_not_json_is_a_value_error() -> None:
    """Callers that catch ValueError (as for json.JSONDecodeError) keep working."""
    assert issubclass(strict_json.NotJson, ValueError)


@pytest.mark.parametrize("text", ["9" * 5000, '{"expose": {"min_scale": -' + "1" * 4301 + "}}"])
def test_an_integer_of_too_many_digits_is_not_json(text: str) -> None:
    """Python's json raised a plain ValueError there: a 500 wherever JSON comes in."""
    with pytest.raises(strict_json.NotJson, match=r"^a number of more than \d+ digits$"):
        strict_json.loads(text.encode())
