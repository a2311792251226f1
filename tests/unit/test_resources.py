"""Kubernetes quantities as the plain numbers Docker takes."""

from __future__ import annotations

import pytest

from faas_supervisor.controller.resources import cpu_nanos, memory_bytes


@pytest.mark.parametrize(
    ("cpu", "nanos"),
    [("1", 10**9), ("0.5", 5 * 10**8), ("500m", 5 * 10**8), ("2.25", 2_250_000_000), (".1", 10**8)],
)
def test_cpu(cpu: str, nanos: int) -> None:
    assert cpu_nanos(cpu) == nanos


@pytest.mark.parametrize(
    ("memory", "size"),
    [
        ("256Mi", 256 * 2**20),
        ("1Gi", 2**30),
        ("1.5Gi", 3 * 2**29),
        ("128974848", 128974848),
        ("129M", 129 * 10**6),
        ("1g", 10**9),
        ("123k", 123_000),
        ("1e9", 10**9),
        ("2000m", 2),
    ],
)
def test_memory(memory: str, size: int) -> None:
    assert memory_bytes(memory) == size


@pytest.mark.parametrize("memory", ["", "1Xi", "abc", "1m"])
def test_memory_refused(memory: str) -> None:
    with pytest.raises(ValueError, match="memory"):
        memory_bytes(memory)


@pytest.mark.parametrize("cpu", ["0.0000000001", "9" * 400, "9223372036.9"])
def test_cpu_refused(cpu: str) -> None:
    with pytest.raises(ValueError, match="cpu"):
        cpu_nanos(cpu)


# Were an OverflowError (a 500 on the docker backend), and 1e99999999 minutes of CPU.
@pytest.mark.parametrize("memory", ["1e400", "1e99999999", "9" * 400, "9" * 30 + "Ei", "8Ei"])
def test_memory_beyond_int64_refused(memory: str) -> None:
    with pytest.raises(ValueError, match=r"memory: .* is more than"):
        memory_bytes(memory)


@pytest.mark.parametrize("memory", ["\u0661Gi", "1e\u0661", "\u0661"])
def test_memory_digits_are_ascii(memory: str) -> None:
    """Any script's digits pass `\\d` and float(); Kubernetes refuses them."""
    with pytest.raises(ValueError, match=r"memory: .* is not a memory amount"):
        memory_bytes(memory)


def test_an_exponent_of_thousands_of_digits_names_memory() -> None:
    """int() of over 4300 digits raised its own message, naming no field."""
    with pytest.raises(ValueError, match=r"^memory: '1e9{28}\.\.\.' is more than") as caught:
        memory_bytes("1e" + "9" * 5000)
    assert len(str(caught.value)) < 100
    assert memory_bytes("1e" + "0" * 5000 + "3") == 1000
