#!/usr/bin/env python3
"""Validate CDI spec files (JSON or YAML) against the CDI JSON schema: validate_cdi_schema.py SCHEMA_DIR FILE..."""
import json
import pathlib
import sys

import jsonschema

schema_dir = pathlib.Path(sys.argv[1])
schema = json.loads((schema_dir / "schema.json").read_text())
defs = json.loads((schema_dir / "defs.json").read_text())

try:  # jsonschema >= 4.18
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    registry = Registry().with_resource("defs.json", Resource.from_contents(defs, default_specification=DRAFT7))
    validator = jsonschema.Draft7Validator(schema, registry=registry)
except ImportError:  # Debian 12's python3-jsonschema 4.10
    resolver = jsonschema.RefResolver(base_uri="", referrer=schema, store={"defs.json": defs})
    validator = jsonschema.Draft7Validator(schema, resolver=resolver)

failed = False
for name in sys.argv[2:]:
    text = pathlib.Path(name).read_text()
    if text.lstrip().startswith("{"):
        doc = json.loads(text)
    else:
        import yaml

        doc = yaml.safe_load(text)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    for error in errors:
        failed = True
        print(f"{name}: {'/'.join(map(str, error.path))}: {error.message}")
    if not errors:
        print(f"{name}: valid")
sys.exit(1 if failed else 0)
