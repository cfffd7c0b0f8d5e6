"""Generated files are reproducible and the committed ones are not stale."""

import filecmp
from pathlib import Path

from shared import proto_build, schema_export

REPO = Path(__file__).resolve().parents[2]


def test_protos_generated_code_is_fresh(tmp_path) -> None:
    written = proto_build.generate(tmp_path)
    assert len(written) == 3 * len(proto_build.PROTO_FILES)
    for path in written:
        committed = REPO / "shared" / "protos" / path.name
        assert committed.is_file(), f"{committed} is missing: run `make protos`"
        assert filecmp.cmp(path, committed, shallow=False), f"{committed.name} is stale: run `make protos`"


def test_schemas_are_fresh(tmp_path) -> None:
    for path in schema_export.write_all(tmp_path):
        committed = REPO / "schemas" / path.name
        assert committed.is_file() and committed.read_text() == path.read_text(), (
            f"schemas/{path.name} is stale: run `make schemas`"
        )


def test_asyncapi_names_every_topic() -> None:
    doc = schema_export.asyncapi_document("lgc")
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {"lgc.requests.high", "lgc.results", "lgc.cancellations", "lgc.deadletter", "lgc.replies.{instance}"} <= addresses
    assert "#/$defs/" not in str(doc)


def test_settings_doc_is_fresh() -> None:
    from shared import settings_doc

    committed = REPO / "docs" / "settings.md"
    assert committed.read_text() == settings_doc.render(), "docs/settings.md is stale: run `make docs`"


def test_every_settings_field_has_a_docstring() -> None:
    from shared import settings_doc

    for _, ref in settings_doc.SETTINGS_CLASSES:
        cls = settings_doc._load(ref)  # noqa: SLF001
        missing = [name for name, info in cls.model_fields.items() if not info.description]
        assert not missing, f"{ref}: fields without a docstring: {missing}"
