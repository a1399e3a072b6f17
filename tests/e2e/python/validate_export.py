"""Validates an unpacked Parley export against the JSON Schema it ships (schema.json): the
manifest against the root schema, every NDJSON record against the $defs entry its file's
record_type names. Exits non-zero with the first errors found."""

import copy
import json
import pathlib
import sys

import jsonschema


def main() -> int:
    directory = pathlib.Path(sys.argv[1])
    schema = json.loads((directory / "schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    errors = [f"manifest.json: {error.message}" for error in
              jsonschema.Draft202012Validator(schema, format_checker=checker).iter_errors(manifest)]
    records = 0
    for entry in manifest["files"]:
        record_schema = copy.deepcopy(schema)
        record_schema["$ref"] = f"#/$defs/{entry['record_type']}"
        validator = jsonschema.Draft202012Validator(record_schema, format_checker=checker)
        lines = (directory / entry["name"]).read_text(encoding="utf-8").splitlines()
        if len(lines) != entry["records"]:
            errors.append(f"{entry['name']}: {len(lines)} lines, the manifest says {entry['records']}")
        for number, line in enumerate(lines, start=1):
            records += 1
            for error in validator.iter_errors(json.loads(line)):
                errors.append(f"{entry['name']}:{number}: {error.json_path}: {error.message}")
    if errors:
        print("\n".join(errors[:20]))
        return 1
    print(f"valid: manifest and {records} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
