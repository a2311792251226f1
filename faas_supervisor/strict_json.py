"""JSON as RFC 8259 defines it, for every JSON that comes from outside.

Python's `json` also reads `NaN`, `Infinity` and `-Infinity`, which are not JSON: another
implementation (the OSCAR manager's Go decoder, a user's `jq`) refuses the same text, and
a NaN compares unequal to itself wherever it lands. Bytes must be UTF-8, as RFC 8259
requires of JSON exchanged between systems (`json.loads` would also guess UTF-16 or -32).
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from faas_supervisor.errors import NotJson

__all__ = ["NotJson", "loads"]


def loads(data: bytes | bytearray | str) -> Any:
    if not isinstance(data, str):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise NotJson("not UTF-8") from None
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except NotJson:
        raise  # _refuse_constant's (a ValueError too)
    except json.JSONDecodeError as exc:
        raise NotJson(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:
        # The one other ValueError: an integer of more digits than int() reads (its
        # message, about sys.set_int_max_str_digits, speaks to a programmer).
        raise NotJson(
            f"a number of more than {sys.get_int_max_str_digits()} digits"
        ) from None
    except RecursionError:
        raise NotJson("nested too deeply") from None


def _refuse_constant(name: str) -> NoReturn:
    raise NotJson(f"{name} is not a JSON value (RFC 8259 has no NaN or Infinity)")
