"""Plugins for the whole suite: the reliability tables of docs/RELIABILITY.md."""

pytest_plugins = ["tests.reliability"]
