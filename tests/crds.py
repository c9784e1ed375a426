"""The custom resource definitions vendored under tests/fixtures/crds (each file says where
it comes from), as JSON schemas the way the API server applies them with strict field
validation: an object that lists its properties accepts no others. The API server's patterns
are Go (RE2) regular expressions; the few Python reads differently are translated."""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path

import jsonschema
import yaml

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "crds"


def strict(schema: dict) -> dict:
    """``schema`` with ``additionalProperties: false`` on every object that lists properties
    (the API server's strict field validation; by default it prunes unknown fields), and its
    patterns as Python reads them; every nested schema too."""
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    if isinstance(schema.get("pattern"), str):
        schema["pattern"] = python_pattern(schema["pattern"])
    for child in nested_schemas(schema):
        strict(child)
    return schema


def nested_schemas(schema: dict) -> list[dict]:
    """The schemas directly inside ``schema`` (OpenAPI v3's structural subset)."""
    nested = list(schema.get("properties", {}).values())
    nested += [
        schema[key]
        for key in ("items", "additionalProperties", "not")
        if isinstance(schema.get(key), dict)
    ]
    for key in ("allOf", "anyOf", "oneOf"):
        nested += schema.get(key, [])
    return nested


def python_pattern(pattern: str) -> str:
    """A Go pattern as Python reads it: Go allows a case-insensitive flag ``(?i)`` anywhere,
    Python only at the start, so it moves there (which makes the whole pattern
    case-insensitive: slightly laxer than Go where it stood after the start)."""
    try:
        re.compile(pattern)
        return pattern
    except re.error:
        return "(?i)" + pattern.replace("(?i)", "")


@cache
def definitions() -> dict[tuple[str, str], tuple[dict, dict]]:
    """(apiVersion, kind) -> (the CRD, its version's strict schema), for every vendored CRD
    and every version it serves."""
    found = {}
    for path in sorted(FIXTURES.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                    found[(f"{group}/{version['name']}", kind)] = (crd, schema)
    return found


@cache
def validator(api_version: str, kind: str):
    """The checked, compiled validator of one vendored schema (compiling the large ones,
    Trainer v2's TrainJob, costs about a second: once per test session)."""
    _, schema = definitions()[(api_version, kind)]
    checker = jsonschema.validators.validator_for(schema)
    checker.check_schema(schema)
    return checker(schema)


def validate_custom_resource(manifest: dict) -> None:
    """Validate a custom resource against its vendored CRD's schema (KeyError: no such CRD
    vendored). Raises jsonschema.ValidationError."""
    error = jsonschema.exceptions.best_match(
        validator(manifest["apiVersion"], manifest["kind"]).iter_errors(manifest)
    )
    if error is not None:
        raise error
