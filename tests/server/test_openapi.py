"""GET /openapi.json: a valid OpenAPI 3.1 document, open to all, listing every route the app has."""

from __future__ import annotations

import copy
import json
import urllib.request

import jsonschema_rs
import pytest
import schemathesis

from pensieve.server.openapi import openapi_document
from tests.support import ServerThread


def _served(server: ServerThread) -> tuple[int, dict]:
    with urllib.request.urlopen(f"{server.base_url}/openapi.json", timeout=10) as response:  # no key
        return response.status, json.loads(response.read())


def test_the_document_is_served_without_a_key_and_is_valid_openapi_3_1(tiny_server: ServerThread) -> None:
    status, served = _served(tiny_server)
    assert status == 200 and served == openapi_document()
    assert served["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(served).validate()  # the OpenAPI 3.1 meta-schema
    broken = copy.deepcopy(served)
    broken["paths"]["/health"]["get"]["responses"] = "none"
    with pytest.raises(jsonschema_rs.ValidationError):  # ...which does reject a broken one
        schemathesis.openapi.from_dict(broken).validate()


def test_every_route_of_the_app_is_documented_and_nothing_else(tiny_server: ServerThread) -> None:
    app = tiny_server._runner.app  # type: ignore[union-attr]
    routes = {
        (resource.canonical.replace("{model_id:.+}", "{model_id}"), route.method.lower())
        for resource in app.router.resources()
        for route in resource
        if route.method not in ("HEAD", "OPTIONS")
    }
    documented = {(path, method) for path, item in openapi_document()["paths"].items() for method in item if method != "parameters"}
    assert routes == documented


def test_request_schemas_come_from_the_wire_types() -> None:
    schemas = openapi_document()["components"]["schemas"]
    messages = schemas["AnthropicMessagesRequest"]
    assert set(messages["required"]) == {"max_tokens", "messages"}
    assert messages["properties"]["temperature"]["anyOf"][0] == {"maximum": 1.0, "minimum": 0.0, "type": "number"}
    assert messages["additionalProperties"] is True  # unknown fields are accepted, as documented
    chat = schemas["OpenAIChatCompletionRequest"]
    assert chat["properties"]["messages"]["minItems"] == 1
    # The fields that take one string as well as a list say so.
    assert {"type": "string"} in chat["properties"]["stop"]["anyOf"]
    assert {"type": "string"} in schemas["OpenAIMessage"]["properties"]["content"]["anyOf"]
    assert {"type": "string"} in schemas["OpenAICompletionRequest"]["properties"]["prompt"]["anyOf"]


def test_errors_are_documented_in_each_apis_shape() -> None:
    paths = openapi_document()["paths"]
    anthropic = paths["/v1/messages"]["post"]["responses"]
    openai = paths["/v1/chat/completions"]["post"]["responses"]
    for status in ("400", "401", "404", "413", "429", "500", "529"):
        assert anthropic[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/AnthropicError"}
        assert openai[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OpenAIError"}
    for open_path in ("/", "/health", "/openapi.json"):
        assert paths[open_path]["get"]["security"] == []
