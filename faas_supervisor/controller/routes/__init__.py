"""The controller's HTTP routes, one module per concept (SPEC 7.2).

`controller/api.py` composes them into one aiohttp application (its route table names
every route) and holds what they share; `answers.py` has the answers every route gives
(JSON, text, and the one table from error type to answer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faas_supervisor.controller.api import Api


class Routes:
    """The handlers of one concept's routes, over the state the `Api` shares."""

    def __init__(self, api: Api) -> None:
        self.api = api
