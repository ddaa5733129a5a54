"""Policy gaps found by the third audit: URIs decided as their templates too, completion needing the
item's own action, `has` tests and servers checked at load, bounded nesting, overrides under the
wrong name, and the policy CLI's bad input."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mcpward.cli.policy import policy_app
from mcpward.gateway import config
from mcpward.gateway.config import ConfigError
from mcpward.guards.base import Call, Listed, Refusal
from mcpward.policy import loader
from mcpward.policy.entities import SortedLabels
from mcpward.policy.guard import PolicyGuard, engine_for
from mcpward.policy.reload import reload_policy
from mcpward.protocol.uri_template import UriTemplate
from tests.conftest import MCPWARD
from tests.test_policy import ctx, make_cfg

runner = CliRunner()
SECRETS = "db://secrets/{key}"
NO_SECRETS = f'''
@id("team.no-secrets-template")
forbid (principal, action == Action::"read_resource", resource in Server::"db")
when {{ resource.name == "{SECRETS}" }};
@id("team.no-get-x")
forbid (principal, action == Action::"get_prompt", resource == Prompt::"fs__x");
'''


def guard_with(tmp_path: Path, text: str, base: str = "standard") -> PolicyGuard:
    cfg = make_cfg(tmp_path, policy={"base": base, "files": ["p.cedar"]}, files={"p.cedar": text})
    return PolicyGuard(engine_for(cfg, os_groups=False))


def templates(guard: PolicyGuard, server: str, *uris: str) -> None:
    guard.on_published(server, "resourceTemplates",
                       [Listed(server, uri, {"uriTemplate": uri, "name": uri}) for uri in uris])


def read(uri: str, server: str = "db", method: str = "resources/read") -> Call:
    return Call(ctx=ctx(), method=method, params={"uri": uri}, server=server, target=uri, exposed=uri)


def complete(ref: dict[str, str], server: str, target: str, exposed: str) -> Call:
    return Call(ctx=ctx(), method="completion/complete", server=server, target=target, exposed=exposed,
                params={"ref": ref, "argument": {"name": "key", "value": ""}})


async def refused_rule(guard: PolicyGuard, call: Call) -> str | None:
    try:
        await guard.on_request(call)
    except Refusal as refusal:
        return refusal.rule
    return None


# ------------------------------------------------------------- gap 2: URIs through their template
async def test_a_concrete_uri_is_decided_as_its_template_too(tmp_path: Path) -> None:
    guard = guard_with(tmp_path, NO_SECRETS)
    templates(guard, "db", SECRETS, "db://public/{name}")
    for method in ("resources/read", "resources/subscribe"):
        assert await refused_rule(guard, read("db://secrets/aws", method=method)) == "team.no-secrets-template"
    assert await refused_rule(guard, read("db://public/readme")) is None
    assert await refused_rule(guard, read("db://secrets/a/b")) is None  # `{key}` stays in one segment
    # The template belongs to db: the same URI routed to another server is not its expansion.
    assert await refused_rule(guard, read("db://secrets/aws", server="fs")) is None


async def test_a_template_label_reaches_the_uris_it_expands_to(tmp_path: Path) -> None:
    guard = guard_with(tmp_path, '@id("team.no-secret-labelled")\n'
                                 'forbid (principal, action == Action::"read_resource", resource)\n'
                                 'when { resource.labels.contains("secret") };\n')
    guard.add_label_provider(lambda server, kind, name: SortedLabels(
        ["secret"] if (kind, name) == ("resourceTemplates", SECRETS) else []))
    templates(guard, "db", SECRETS)
    assert await refused_rule(guard, read("db://secrets/aws")) == "team.no-secret-labelled"
    assert await refused_rule(guard, read("db://other/aws")) is None


async def test_a_uri_the_server_lists_is_decided_as_itself(tmp_path: Path) -> None:
    # Routed as a listed resource, not through the template: its own entity decides (a policy can
    # still forbid it by name), as the catalog resolves it.
    guard = guard_with(tmp_path, NO_SECRETS)
    templates(guard, "db", SECRETS)
    listed = read("db://secrets/aws")
    listed.definition = {"uri": "db://secrets/aws", "name": "aws"}
    assert await refused_rule(guard, listed) is None


def test_template_expansion_matches_like_routing_and_stays_linear() -> None:
    cases = [("db://secrets/{key}", "db://secrets/aws", True), ("db://secrets/{key}", "db://secrets/", True),
             ("db://secrets/{key}", "db://secrets/a/b", False), ("file:///{+path}", "file:///a/b/c", True),
             ("x://{a}-{b}", "x://1-2", True), ("x://{a}-{b}", "x://12", False), ("x://{open", "x://{open", True)]
    for template, uri, expected in cases:
        assert UriTemplate.parse(template).matches(uri) is expected, (template, uri)
    hostile = UriTemplate.parse("x://" + "{+a}x" * 40 + "y")  # a regex would backtrack for ages here
    started = time.perf_counter()
    assert not hostile.matches("x://" + "x" * 2000)
    assert time.perf_counter() - started < 2


# ------------------------------------------------------ gap 7: completion needs the item's action
async def test_completion_on_a_hidden_prompt_or_template_is_refused(tmp_path: Path) -> None:
    guard = guard_with(tmp_path, NO_SECRETS)
    templates(guard, "db", SECRETS)
    hidden_prompt = complete({"type": "ref/prompt", "name": "fs__x"}, "fs", "x", "fs__x")
    assert await refused_rule(guard, hidden_prompt) == "team.no-get-x"
    hidden_template = complete({"type": "ref/resource", "uri": SECRETS}, "db", SECRETS, SECRETS)
    assert await refused_rule(guard, hidden_template) == "team.no-secrets-template"
    assert hidden_template.notes["policy"]["allowed"] is False
    shown_prompt = complete({"type": "ref/prompt", "name": "fs__y"}, "fs", "y", "fs__y")
    assert await refused_rule(guard, shown_prompt) is None
    with pytest.raises(Refusal) as refused:
        await guard.on_request(complete({"type": "ref/prompt", "name": "fs__x"}, "fs", "x", "fs__x"))
    assert "complete on fs__x needs get_prompt on fs__x" in refused.value.message


# -------------------------------------------------------------- gap 3: references checked at load
@pytest.mark.parametrize(("text", "message"), [
    ('forbid (principal, action == Action::"call_tool", resource) when { resource has readOnly && resource.readOnly };',
     'resource.hasTag("readOnly")'),
    ('forbid (principal, action, resource) when { context has client_name && context.client_name == "x" };',
     "context never has an attribute `client_name`"),
    ('forbid (principal, action, resource) when { principal has email };', 'principal.hasTag("email")'),
    ('forbid (principal, action, resource in Server::"filesystem");',
     'Server::"filesystem" is not a configured server (configured: db, fs)'),
    ('forbid (principal, action, resource) when { resource in [Server::"fs", Server::"nope"] };',
     'Server::"nope" is not a configured server'),
])
def test_references_to_nothing_are_load_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        engine_for(make_cfg(tmp_path, policy={"files": ["p.cedar"]}, files={"p.cedar": f'\n@id("a") {text}'}),
                   os_groups=False)
    assert message in str(error.value) and "p.cedar: line 2" in str(error.value)


def test_real_attributes_and_servers_still_load(tmp_path: Path) -> None:
    text = ('@id("a") forbid (principal, action, resource in Server::"fs") when { resource has readOnlyHint && '
            'context has client && principal has kind && resource has template && resource.hasTag("path") };')
    engine = engine_for(make_cfg(tmp_path, policy={"files": ["p.cedar"]}, files={"p.cedar": text}), os_groups=False)
    assert [r.id for r in engine.bundle.rules if r.id == "a"] == ["a"]


# ------------------------------------------------------------------ gap 9: bounded nesting
@pytest.mark.parametrize(("body", "message"), [
    ("(" * 1000 + "true" + ")" * 1000, "brackets open at once"),
    (" && ".join(["true"] * 20000), "too long"),
    (" && ".join(["true"] * 3000), "nested too deeply"),
    ("if true then " * 300 + "true" + " else true" * 300, "nested too deeply"),
])
def test_deep_policies_are_refused_before_cedar_sees_them(body: str, message: str) -> None:
    text = '// a comment\n@id("a") forbid (principal, action, resource) when { ' + body + " };"
    with pytest.raises(ConfigError) as error:
        loader.load_bundle([loader.PolicySource("deep.cedar", text)])
    assert message in str(error.value) and "deep.cedar: line 2" in str(error.value)


def test_ordinary_nesting_still_loads() -> None:
    text = ('@id("a") forbid (principal, action, resource) when { ' + "(" * 100 + "true" + ")" * 100
            + " && " + " && ".join(['context.client == "x"'] * 40) + " };")
    assert [r.id for r in loader.load_bundle([loader.PolicySource("ok.cedar", text)]).rules] == ["a"]


def test_policy_check_refuses_a_deep_policy_without_crashing(tmp_path: Path) -> None:
    (tmp_path / "deep.cedar").write_text('@id("a") forbid (principal, action, resource) when { '
                                         + "(" * 1000 + "true" + ")" * 1000 + " };\n")
    (tmp_path / "mcpward.toml").write_text('[servers.fs]\ncommand = "x"\n[policy]\nfiles = ["deep.cedar"]\n')
    done = subprocess.run([MCPWARD, "policy", "check", "-c", str(tmp_path / "mcpward.toml")],
                          capture_output=True, timeout=120)
    assert done.returncode == 2, done  # was 139: a segfault
    assert b"nested too deeply" in done.stderr + done.stdout


def test_a_reload_to_a_deep_policy_keeps_the_one_in_force(tmp_path: Path) -> None:
    (tmp_path / "p.cedar").write_text('@id("a") permit (principal, action, resource);\n')
    cfg = make_cfg(tmp_path, policy={"base": "none", "files": ["p.cedar"]})
    guard = PolicyGuard(engine_for(cfg, os_groups=False))
    before = guard.engine.policy_hash
    (tmp_path / "mcpward.toml").write_text('[servers.fs]\ncommand = "x"\n[servers.db]\ncommand = "y"\n'
                                           '[policy]\nbase = "none"\nfiles = ["p.cedar"]\n')
    (tmp_path / "p.cedar").write_text('@id("a") permit (principal, action, resource) when { '
                                      + "(" * 1000 + "true" + ")" * 1000 + " };\n")
    assert reload_policy(tmp_path / "mcpward.toml", cfg, guard) is False
    assert guard.engine.policy_hash == before


# -------------------------------------------------------- gap 8: overrides under the wrong name
def test_an_override_under_the_exposed_name_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        make_cfg(tmp_path, tools={"fs__delete_all": {"annotations": {"readOnlyHint": False}}})
    assert "servers.fs.tools.fs__delete_all" in str(error.value)
    assert "write [servers.fs.tools.delete_all]" in str(error.value)
    # An unprefixed server's tools have no exposed prefix to confuse: any name is its own.
    cfg = config.parse({"servers": {"fs": {"command": "x", "prefix": "", "tools": {"fs__x": {"labels": ["l"]}}}}})
    assert "fs__x" in cfg.servers["fs"].tools


def test_an_override_the_server_never_lists_is_reported_once(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_cfg(tmp_path, tools={"delete_al": {"annotations": {"readOnlyHint": False}},
                                    "read": {"labels": ["x"]}})
    guard = PolicyGuard(engine_for(cfg, os_groups=False))
    listed = [Listed("fs", name, {"name": f"fs__{name}"}) for name in ("read", "delete_all")]
    with caplog.at_level(logging.INFO, "mcpward"):
        guard.on_published("fs", "tools", listed)
        guard.on_published("fs", "tools", listed)
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mcpward.audit"]
    unmatched = [r for r in records if r.get("event") == "policy.override-unmatched"]
    assert len(unmatched) == 1 and unmatched[0]["server"] == "fs" and unmatched[0]["tool"] == "delete_al"
    assert any("lists no tool 'delete_al'" in r.getMessage() for r in caplog.records if r.name == "mcpward.policy")


# ----------------------------------------------------------------- gap 11: the CLI's bad input
def cli_config(tmp_path: Path) -> Path:
    path = tmp_path / "mcpward.toml"
    path.write_text('[servers.notes]\ncommand = "x"\n[policy]\nbase = "standard"\n')
    return path


def test_cli_explain_refuses_an_unknown_era(tmp_path: Path) -> None:
    result = runner.invoke(policy_app, ["explain", "-c", str(cli_config(tmp_path)), "--principal", "alice",
                                        "--tool", "notes__x", "--era", "bogus"])
    assert result.exit_code == 2 and "unknown era 'bogus'" in result.output


@pytest.mark.parametrize(("case", "message"), [
    ('tool = "notes__x"\nera = "bogus"', 'case[1].era: must be "modern" or "legacy"'),
    ('server = "notes"\narguments = { a = 1 }', "arguments and labels do not apply to a server alone"),
    ('tool = "other__x"', "carries no configured server's prefix"),
    ('server = "nope"', "no server 'nope' in the config"),
])
def test_cli_malformed_cases_exit_2(tmp_path: Path, case: str, message: str) -> None:
    cfg = cli_config(tmp_path)
    (tmp_path / "cases.toml").write_text(f'[[case]]\nprincipal = "alice"\n{case}\nexpect = "allow"\n')
    result = runner.invoke(policy_app, ["test", "-c", str(cfg), str(tmp_path / "cases.toml")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output



# ----------------------------------------------------------------------------- end to end
async def test_e2e_a_hidden_template_hides_its_uris_and_completions(serve_gateway: Any, tmp_path: Path) -> None:
    import mcp.types as types
    from mcp import Client
    from mcp.shared.exceptions import MCPError

    from tests.conftest import FIXTURES, PYTHON

    (tmp_path / "notes.cedar").write_text('@id("team.no-note-template")\nforbid (principal, action, resource)\n'
                                          'when { resource is Resource && resource.name == "note://{name}" };\n')
    url = serve_gateway(f'[servers.notes]\ncommand = "{PYTHON}"\nargs = ["{FIXTURES / "policy_server.py"}"]\n'
                        '[policy]\nbase = "standard"\nfiles = ["notes.cedar"]\n')
    async with Client(url, read_timeout_seconds=30) as client:
        assert [t.uri_template for t in (await client.list_resource_templates()).resource_templates] == []
        with pytest.raises(MCPError) as refused:
            await client.read_resource("note://todo")  # not listed: routed through the hidden template
        assert refused.value.code == -32004 and "team.no-note-template" in refused.value.message
        # Once the server has listed it as a resource, a URI is routed (and decided) as itself.
        assert "note://readme" in {str(r.uri) for r in (await client.list_resources()).resources}
        listed = await client.read_resource("note://readme")
        assert listed.contents[0].text == "hello"  # type: ignore[union-attr]
        with pytest.raises(MCPError) as refused:
            await client.complete(types.ResourceTemplateReference(type="ref/resource", uri="note://{name}"),
                                  {"name": "name", "value": "t"})
        assert refused.value.data == {"rule": "team.no-note-template"}


def test_explain_decides_completion_as_the_gateway_does(tmp_path: Path) -> None:
    path = tmp_path / "mcpward.toml"
    (tmp_path / "p.cedar").write_text('@id("team.no-summary")\nforbid (principal, action == Action::"get_prompt", '
                                      'resource == Prompt::"notes__summarize");\n')
    path.write_text('[servers.notes]\ncommand = "x"\n[policy]\nbase = "standard"\nfiles = ["p.cedar"]\n')
    result = runner.invoke(policy_app, ["explain", "-c", str(path), "--principal", "alice", "--prompt",
                                        "notes__summarize", "--action", "complete", "--json"])
    assert result.exit_code == 1, result.output
    assert json.loads(result.output)["rule"] == "team.no-summary"


# --------------------------------------------- a server's requests to the client (T32, policy half)
CLIENT_ACTIONS_ = ("sample", "elicit", "list_roots")


@pytest.mark.parametrize("base", ["standard", "readonly", "permit-all"])
def test_every_builtin_base_lets_a_server_ask_the_client(tmp_path: Path, base: str) -> None:
    from mcpward.policy.entities import Facts, Target
    from tests.test_policy import ALICE

    engine = engine_for(make_cfg(tmp_path, policy={"base": base}), os_groups=False)
    for action in CLIENT_ACTIONS_:
        decision = engine.decide(ALICE, action, Target("Server", "fs", "fs", "fs"), Facts())
        assert decision.allowed and decision.rule.startswith(f"{base}."), (action, decision)


async def test_a_denied_sample_is_refused_with_its_rule_and_audited(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    forbid = '@id("t.no-sampling")\nforbid (principal, action == Action::"sample", resource == Server::"fs");\n'
    guard = PolicyGuard(engine_for(make_cfg(tmp_path, policy={"files": ["p.cedar"]}, files={"p.cedar": forbid}),
                                   os_groups=False))
    caplog.set_level(logging.INFO, "mcpward.audit")
    with pytest.raises(Refusal) as refused:
        await guard.on_message(ctx(), "fs", "sampling/createMessage", {"messages": []})
    # Another server, another action, or a notification: not this rule's business.
    assert await guard.on_message(ctx(), "db", "sampling/createMessage", {}) is None
    assert await guard.on_message(ctx(), "fs", "elicitation/create", {}) is None
    assert await guard.on_message(ctx(), "fs", "notifications/message", {}) is None
    assert refused.value.rule == "t.no-sampling" and "sample from server fs" in refused.value.message
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mcpward.audit"]
    assert [(r["event"], r["rule"], r["action"], r["server"]) for r in records] == \
        [("refusal", "t.no-sampling", "sample", "fs")]


def test_a_misspelt_client_action_is_a_load_error(tmp_path: Path) -> None:
    bad = '@id("t.x")\nforbid (principal, action == Action::"sampel", resource);\n'
    with pytest.raises(ConfigError, match='unrecognized action `Action::"sampel"`'):
        engine_for(make_cfg(tmp_path, policy={"files": ["p.cedar"]}, files={"p.cedar": bad}))


def test_explain_knows_the_client_actions(tmp_path: Path) -> None:
    forbid = '@id("t.no-users")\nforbid (principal, action == Action::"elicit", resource);\n'
    make_cfg(tmp_path, policy={"files": ["p.cedar"]}, files={"p.cedar": forbid})
    (tmp_path / "mcpward.toml").write_text('[servers.fs]\ncommand = "x"\n[policy]\nfiles = ["p.cedar"]\n')
    runner = CliRunner()
    args = ["explain", "-c", str(tmp_path / "mcpward.toml"), "--principal", "ann", "--server", "fs"]
    denied = runner.invoke(policy_app, [*args, "--action", "elicit"])
    assert denied.exit_code == 1 and "t.no-users" in denied.output
    roots = runner.invoke(policy_app, [*args, "--action", "list_roots"])
    assert roots.exit_code == 0 and "standard.permit-client-requests" in roots.output
