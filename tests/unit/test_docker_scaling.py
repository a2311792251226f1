"""The docker backend's replica count from its replicas' CPU: the HPA's rule."""

from __future__ import annotations

import pytest

from faas_supervisor.controller.backends.docker import desired_replicas


@pytest.mark.parametrize(
    ("count", "shares", "desired"),
    [
        ([1, [100.0], 2]),  # twice the threshold: double, up to max
        ([2, [100.0, 0.0], 2]),  # mean at the threshold: stays
        ([2, [54.0, 50.0], 2]),  # within 10% of it: stays
        ([1, [400.0], 4]),  # max_scale caps it
        ([3, [0.0, 0.0, 0.0], 1]),  # idle: down to min_scale
        ([4, [20.0, 20.0, 20.0, 20.0], 2]),  # ceil(4 x 20 / 50)
        ([1, [56.0], 2]),  # just over the tolerance: ceil(1.12)
    ],
)
def test_the_hpa_rule(count: int, shares: list[float], desired: int) -> None:
    assert desired_replicas(count, shares, threshold=50, least=1, most=4) == desired


def test_the_floor_holds_even_within_tolerance() -> None:
    # A redeploy raised min_scale above the count the scaler last saw: never below it.
    assert desired_replicas(1, [50.0], threshold=50, least=2, most=4) == 2
