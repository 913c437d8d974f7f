"""`GET /openapi.json`: the OpenAPI 3.1 document, generated from the route table."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from models.api import ErrorBody
from models.messages import identifier_schema
from web.routing import Call, Route

__all__ = ["openapi_document", "openapi_route"]

_REF = "#/components/schemas/{model}"
_IDENTIFIER = identifier_schema()
_ERROR_TEXT = {
    400: "Malformed JSON",
    401: "Missing or invalid bearer token",
    403: "Not allowed for this caller",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "Body too large",
    422: "Invalid input",
    503: "Rebalancing, recovering, or the owning worker is unreachable; retry",
}


def openapi_document(routes: list[Route], *, version: str, secured: bool) -> dict[str, Any]:
    """Describe `routes` (paths, bodies, answers, auth) as an OpenAPI document.

    Args:
        routes: the route table.
        version: the package version.
        secured: whether bearer tokens are checked; an open dev worker documents no auth.
    """
    models: set[type[BaseModel]] = {ErrorBody}
    for route in routes:
        models.update(model for model in (route.body, route.answer) if model is not None)
    ordered = sorted(models, key=lambda model: model.__name__)
    _, schema = models_json_schema([(model, "validation") for model in ordered], ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, secured)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Matchstream", "version": version},
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _operation(route: Route, secured: bool) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": _IDENTIFIER,
        }
        for name in route.path_params
    ]
    for param in route.query:
        schema: dict[str, Any] = (
            dict(_IDENTIFIER) if param.kind == "string" else {"type": param.kind}
        )
        if param.minimum is not None:
            schema["minimum"] = param.minimum
        if param.maximum is not None:
            schema["maximum"] = param.maximum
        parameters.append(
            {"name": param.name, "in": "query", "required": False, "schema": schema,
             "description": param.description}
        )  # fmt: skip
    responses: dict[str, Any] = {str(route.status): _success(route)}
    codes = set(route.errors) | ({400, 413, 422} if route.body is not None else set())
    if route.path_params or route.query:
        codes.add(422)
    if route.owner_key is not None:
        codes.add(503)
    for code in sorted(codes - {401, 403}):
        responses[str(code)] = _error(code)
    if route.access == "user" and 403 in route.errors:
        responses["403"] = _error(403)
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": f"{route.method.lower()}_{route.path.strip('/').replace('/', '_')}".replace(
            "{", ""
        ).replace("}", ""),
        "parameters": parameters,
        "responses": responses,
    }
    if secured and route.access != "public":
        operation["security"] = [{"bearer": []}]
        codes = {401, 403} if route.access == "admin" else {401}
        for code in sorted(codes - {int(status) for status in responses}):
            responses[str(code)] = _error(code)
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model=route.body.__name__)}}
            },
        }
    return operation


def _error(code: int) -> dict[str, Any]:
    return {
        "description": _ERROR_TEXT[code],
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}},
    }


def _success(route: Route) -> dict[str, Any]:
    if route.streams:
        return {
            "description": "Server-Sent Events: `id: <partition>-<offset>`, "
            "`event: <status>`, `data: <match.status JSON>`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    if route.answer is None:
        return {"description": "OK"}
    return {
        "description": "OK" if route.status == 200 else "Accepted",
        "content": {
            "application/json": {"schema": {"$ref": _REF.format(model=route.answer.__name__)}}
        },
    }


def openapi_route(routes: list[Route], *, version: str, secured: bool) -> Route:
    """The route serving the document of `routes` (itself included)."""
    encoded: list[bytes] = []  # filled once the route exists, since it lists itself

    async def serve(call: Call) -> web.Response:
        return web.json_response(body=encoded[0], content_type="application/json")

    route = Route("GET", "/openapi.json", serve, "This document", "public")
    encoded.append(
        orjson.dumps(openapi_document([*routes, route], version=version, secured=secured))
    )
    return route
