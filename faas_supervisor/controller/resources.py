"""A service's `cpu` and `memory`, written as Kubernetes quantities, as numbers for engines
that want plain units (Docker's nano-CPUs and bytes).

fdl.py has already checked their shape; what is left to refuse here is an amount that
comes out as zero.
"""

from __future__ import annotations

import re

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
            "E": 10**18}
MAX_AMOUNT = 2**63 - 1  # what Docker and Kubernetes hold (int64)
# ASCII digits: `\d` and float() would take any script's (Arabic-Indic "\u0661Gi"),
# which Kubernetes refuses.
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)([A-Za-z]i?|e[0-9]+)?")
MAX_EXPONENT = 18  # 10**18 bytes is an exabyte, and 10**19 more than int64 holds


def cpu_nanos(cpu: str) -> int:
    """`0.5` or `500m` as billionths of a CPU."""
    millis = cpu.endswith("m")
    value = float(cpu[:-1] if millis else cpu) * (10**6 if millis else 10**9)
    if not value <= MAX_AMOUNT:  # an infinite float too (a number of 400 digits)
        raise ValueError(f"cpu: {_shown(cpu)} is more than any machine has")
    if int(value) < 1:
        raise ValueError(f"cpu: {_shown(cpu)} is less than a billionth of a CPU")
    return int(value)


def memory_bytes(memory: str) -> int:
    """`256Mi`, `1G`, `1e9` or `500000` as bytes (`m` is a thousandth, as Kubernetes has it)."""
    match = _QUANTITY.fullmatch(memory)
    if match is None:
        raise ValueError(f"memory: {_shown(memory)} is not a memory amount (try 256Mi or 1Gi)")
    number, suffix = float(match.group(1)), match.group(2) or ""
    if suffix.startswith("e"):
        # 10**exponent is a big integer: an exponent in the millions would take minutes,
        # and int() refuses one of over 4300 digits with a message naming no field.
        exponent = suffix[1:].lstrip("0") or "0"
        if len(exponent) > len(str(MAX_EXPONENT)) or int(exponent) > MAX_EXPONENT:
            raise ValueError(f"memory: {_shown(memory)} is more than {MAX_AMOUNT} bytes")
        factor: float = 10 ** int(exponent)
    elif suffix == "m":
        factor = 1e-3
    elif suffix in _BINARY:
        factor = _BINARY[suffix]
    elif suffix in _DECIMAL or suffix.upper() in _DECIMAL:
        factor = _DECIMAL.get(suffix, _DECIMAL[suffix.upper()])
    elif suffix:
        raise ValueError(f"memory: {_shown(memory)} has an unknown unit {suffix!r}")
    else:
        factor = 1
    if not number * factor <= MAX_AMOUNT:
        raise ValueError(f"memory: {_shown(memory)} is more than {MAX_AMOUNT} bytes")
    value = int(number * factor)
    if value < 1:
        raise ValueError(f"memory: {_shown(memory)} is less than a byte")
    return value


def _shown(amount: str) -> str:
    """The amount quoted for an error, shortened: one of thousands of digits stays a line."""
    return repr(amount if len(amount) <= 40 else f"{amount[:30]}...")
