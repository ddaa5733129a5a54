"""Parameter kinds from names, schema formats and descriptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcpward.guards.param_kinds import kind_from_description, kind_from_name, schema_kinds


@pytest.mark.parametrize(("name", "kind"), [
    ("url", "url"), ("URL", "url"), ("targetUrl", "url"), ("source_urls", "url"), ("webhook", "url"),
    ("href", "url"), ("file_url", "url"), ("uri", "url"),
    ("path", "path"), ("file_path", "path"), ("filePath", "path"), ("filename", "path"), ("repo_path", "path"),
    ("image_path", "path"), ("directory", "path"), ("outputDir", "path"), ("cwd", "path"), ("url_file", "path"),
    ("command", "command"), ("cmd", "command"), ("shell", "command"), ("commandLine", "command"),
    ("code", "code"), ("script", "code"), ("python_code", "code"), ("sql_query", "code"), ("expression", "code"),
    ("text", None), ("data", None), ("content", "content"), ("file_content", "content"), ("body", "content"),
    ("newText", None), ("content_path", "path"), ("content_type", None),
    ("query", None), ("file_hash", None), ("country_code", None),
    ("statusCode", None), ("filePattern", None), ("max_length", None), ("", None),
])
def test_kind_from_name(name: str, kind: str | None) -> None:
    assert kind_from_name(name) == kind


@pytest.mark.parametrize(("text", "kind"), [
    ("The URL to fetch", "url"), ("Web address of the page", "url"), ("Path to the file to read", "path"),
    ("The directory to list", "path"), ("Absolute path of the report", "path"), ("Shell command to run", "command"),
    ("Command to execute in the sandbox", "command"), ("Python code to run", "code"), ("A SQL statement", "code"),
    ("Text content to write to the file", "content"), ("Body of the e-mail", "content"),
    ("The user's question", None), ("Country code, e.g. US", None),
    # a url/path phrase anywhere outweighs a content phrase: the screens stay on
    ("Content to write to the file at the given URL", "url"), ("Contents of the file at this path to read", "path"),
    ("The URL of the file to download", "url"), ("Path to a file listing URLs", "path"),
])
def test_kind_from_description(text: str, kind: str | None) -> None:
    assert kind_from_description(text) == kind


def test_schema_kinds_walk_nested_properties_and_arrays() -> None:
    schema = {"type": "object", "properties": {
        "target": {"type": "string", "format": "uri-reference"},
        "files": {"type": "array", "items": {"type": "object", "properties": {
            "where": {"type": "string", "description": "path to the file"}, "content": {"type": "string"}}}},
        "links": {"type": "array", "items": {"type": "string"}},
        "note": {"type": "string", "format": "uri", "description": "ignored: format wins"},
    }}
    kinds = schema_kinds(schema)
    assert kinds == {("target",): "url", ("files",): "path", ("files", "where"): "path", ("links",): "url",
                     ("note",): "url", ("files", "content"): "content"}


def test_schema_content_annotations_make_content() -> None:
    schema = {"type": "object", "properties": {
        "blob": {"type": "string", "contentEncoding": "base64"},
        "page": {"type": "string", "contentMediaType": "text/html"},
        "link": {"type": "string", "format": "uri", "contentMediaType": "text/html"},  # format wins
    }}
    assert schema_kinds(schema) == {("blob",): "content", ("page",): "content", ("link",): "url"}


def test_schema_kinds_is_bounded() -> None:
    deep: dict = {"type": "string"}
    for i in range(500):
        deep = {"type": "object", "properties": {f"url{i}": deep}}
    assert len(schema_kinds(deep)) <= 13  # depth-capped walk


def test_operators_may_declare_content_and_nothing_unknown(tmp_path: Path) -> None:
    from mcpward.gateway import config as config_mod
    from mcpward.gateway.config import ConfigError

    def parse(kind: str) -> config_mod.GatewayConfig:
        table = {"servers": {"files": {"command": "true", "tools": {"put": {"params": {"payload": kind}}}}}}
        return config_mod.parse(table, str(tmp_path / "mcpward.toml"), tmp_path)

    assert parse("content").servers["files"].tools["put"].param_kinds == {"payload": "content"}
    with pytest.raises(ConfigError, match="unknown parameter kind 'blob'"):
        parse("blob")


@pytest.mark.parametrize(("name", "kind"), [
    ("host", "host"), ("hostname", "host"), ("db_host", "host"), ("smtpHost", "host"), ("ip", "host"),
    ("server_ip", "host"), ("ip_address", "host"), ("ipAddress", "host"), ("hosts", "host"),
    ("address", None), ("email_address", None), ("zip", None), ("tooltip", None), ("host_url", "url"),
])
def test_host_names(name: str, kind: str | None) -> None:
    assert kind_from_name(name) == kind


def test_host_from_schema_format_and_description() -> None:
    schema = {"type": "object", "properties": {
        "target": {"type": "string", "format": "hostname"}, "peer": {"type": "string", "format": "ipv4"},
        "peer6": {"type": "string", "format": "ipv6"}, "where": {"type": "string", "format": "idn-hostname"},
        "server": {"type": "string", "description": "Host or IP address to connect to"},
        "name": {"type": "string", "description": "The person's name"}}}
    assert schema_kinds(schema) == {("target",): "host", ("peer",): "host", ("peer6",): "host",
                                    ("where",): "host", ("server",): "host"}
    assert kind_from_description("The hostname of the database server") == "host"
    assert kind_from_description("URL or hostname to fetch") == "url"  # the first strong phrase wins
