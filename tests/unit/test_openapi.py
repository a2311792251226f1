"""The OpenAPI document: valid OpenAPI 3, and naming exactly the routes the API serves."""

from __future__ import annotations

from typing import Any, cast

from openapi_spec_validator import validate

from faas_supervisor import __version__
from faas_supervisor.controller.api import Api, ApiInfo
from faas_supervisor.controller.openapi import document

# What an aiohttp route of method "*" answers, as OpenAPI names methods.
ANY_METHOD = {"get", "put", "post", "delete", "options", "head", "patch"}
OPERATIONS = ANY_METHOD | {"trace"}


def served_routes() -> set[tuple[str, str]]:
    """(method, path template) of every route of the controller's aiohttp router."""
    # Building the router reads none of the collaborators but the settings in `ApiInfo`.
    api = Api(ApiInfo("local", 0, 1), *cast(Any, [None] * 6))
    routes: set[tuple[str, str]] = set()
    for resource in api.app().router.resources():
        info = resource.get_info()
        # A dynamic resource's formatter is its template without the regexes.
        path = info.get("path") or info["formatter"]
        methods = {route.method.lower() for route in resource}
        if "*" in methods:
            methods = ANY_METHOD
        elif "get" in methods:
            # aiohttp answers HEAD beside every GET (the GET without its body); the
            # document lists the GET only, as OpenAPI documents usually do.
            methods.discard("head")
        routes |= {(method, path) for method in methods}
    return routes


def documented_routes() -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in document()["paths"].items()
        for method in item
        if method in OPERATIONS
    }


def test_the_document_is_valid_openapi_3() -> None:
    doc = document()
    validate(doc)  # raises, naming the first error
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["version"] == __version__


def test_every_served_route_is_documented_and_every_documented_one_served() -> None:
    served, documented = served_routes(), documented_routes()
    assert served - documented == set(), "served but not in openapi.yaml"
    assert documented - served == set(), "in openapi.yaml but not served"


def test_path_parameters_are_declared_for_every_operation() -> None:
    """Every `{name}` of a path template is a declared path parameter of its operations."""
    doc = document()
    for path, item in doc["paths"].items():
        names = {p.strip("{}") for p in path.split("/") if p.startswith("{")}
        for method, operation in item.items():
            if method not in OPERATIONS:
                continue
            declared = {
                _resolve(doc, p)["name"]
                for p in [*item.get("parameters", []), *operation.get("parameters", [])]
                if _resolve(doc, p)["in"] == "path"
            }
            assert declared == names, f"{method.upper()} {path}"


def test_system_routes_need_basic_auth_and_run_job_take_a_token() -> None:
    doc = document()
    assert doc["security"] == [{"basicAuth": []}]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method not in OPERATIONS:
                continue
            security = operation.get("security", doc["security"])
            if path.startswith("/system/") and "/exposed" not in path:
                assert security == [{"basicAuth": []}], f"{method.upper()} {path}"
                assert "401" in operation["responses"], f"{method.upper()} {path}"
            if path.startswith(("/run/", "/job/")):
                assert {"serviceToken": []} in security and {"basicAuth": []} in security


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node
