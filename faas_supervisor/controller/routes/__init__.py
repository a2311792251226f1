"""The controller's HTTP routes, one module per concept (SPEC 7.2).

`controller/api.py` composes them into one aiohttp application and holds what they
share; `answers.py` has the answers every route gives (JSON, text, and the one table
from error type to answer).
"""
