"""`mcpward policy check | explain | test`: the authorisation policy without running the gateway.

Mounted by cli/main.py with `app.add_typer(policy_app, name="policy")`. Exit status: 0 ok/allow,
1 a denial (explain) or a failing case (test), 2 bad input (config, policy, test file, options).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mcpward.gateway import config as config_mod
from mcpward.gateway.config import ConfigError, GatewayConfig
from mcpward.policy import testing
from mcpward.policy.engine import Decision, PolicyEngine
from mcpward.policy.entities import annotation_sources
from mcpward.policy.guard import engine_for
from mcpward.policy.settings import PolicySettings, display_name, read_settings

policy_app = typer.Typer(
    name="policy",
    help="Check, explain and test the Cedar authorisation policy (docs/policy.md).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path to mcpward.toml.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _fail(kind: str, message: str) -> NoReturn:
    err.print(f"[bold red]{kind}[/] {escape(message)}")
    raise typer.Exit(2)


def _load(path: Path) -> tuple[GatewayConfig, PolicySettings, PolicyEngine]:
    try:
        cfg = config_mod.load(path)
        settings = read_settings(cfg)
        return cfg, settings, engine_for(cfg, settings, os_groups=False)
    except ConfigError as exc:
        _fail("policy error" if exc.source != str(path) else "config error", str(exc))


def _dump(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


# ---------------------------------------------------------------------------- check
@policy_app.command()
def check(config: ConfigOpt = Path("mcpward.toml"), as_json: JsonOpt = False) -> None:
    """Load and validate the policies against the schema; print the rule ids and the policy hash."""
    _cfg, settings, engine = _load(config)
    bundle = engine.bundle
    rules = [{"id": r.id, "effect": r.effect, "source": r.source, "line": r.line} for r in bundle.rules]
    if as_json:
        _dump({"base": settings.base, "mode": settings.mode, "sources": [s.name for s in bundle.sources],
               "rules": rules, "policy_hash": bundle.hash})
        return
    out.print(f"[bold green]policy ok[/] base {settings.base}, mode {settings.mode}, {len(rules)} rules "
              f"from {len(bundle.sources)} source(s)")
    table = Table("rule id", "effect", "source")
    for r in bundle.rules:
        table.add_row(escape(r.id), r.effect, escape(f"{r.source}:{r.line}" if r.line else r.source))
    out.print(table)
    out.print(f"[bold]policy hash[/] {bundle.hash}")
    if settings.base == "permit-all":
        out.print("[bold yellow]WARNING[/] base permit-all: every client may call every tool, destructive ones too")
    if settings.mode == "dry-run":
        out.print("[bold yellow]WARNING[/] mode dry-run: denials are logged, not enforced")


# -------------------------------------------------------------------------- explain
@policy_app.command()
def explain(
    config: ConfigOpt = Path("mcpward.toml"),
    principal: Annotated[str | None, typer.Option(help="Subject (default: the current OS user).")] = None,
    kind: Annotated[str, typer.Option(help="Principal kind: local-user, anonymous, api-key, oauth.")] = "local-user",
    group: Annotated[list[str] | None, typer.Option(help="A group of the principal (repeatable).")] = None,
    claim: Annotated[list[str] | None, typer.Option(help="A claim NAME=VALUE (repeatable; VALUE may be a "
                                                         "JSON array).")] = None,
    os_groups: Annotated[bool, typer.Option("--os-groups", help="Add the principal's OS groups, as the "
                                                                "gateway does for a local user.")] = False,
    client: Annotated[str, typer.Option(help="The client's clientInfo name.")] = "",
    client_version: Annotated[str, typer.Option(help="The client's clientInfo version.")] = "",
    transport: Annotated[str, typer.Option(help="stdio or http.")] = "stdio",
    era: Annotated[str, typer.Option(help="modern or legacy.")] = "modern",
    action: Annotated[str | None, typer.Option(help="The action (default from the target: call_tool, "
                                                    "get_prompt, read_resource, list_tools).")] = None,
    tool: Annotated[str | None, typer.Option(help="Exposed tool name (or the upstream name with --server).")] = None,
    prompt: Annotated[str | None, typer.Option(help="Exposed prompt name.")] = None,
    resource: Annotated[str | None, typer.Option(help="Resource URI or URI template.")] = None,
    server: Annotated[str | None, typer.Option(help="The server (alone: a list action on it).")] = None,
    args: Annotated[str | None, typer.Option(help="The call's arguments as a JSON object.")] = None,
    annotation: Annotated[list[str] | None, typer.Option(help="What the server claims, HINT=true|false "
                                                              "(repeatable).")] = None,
    label: Annotated[list[str] | None, typer.Option(help="A risk label, as the scanner would add "
                                                         "(repeatable).")] = None,
    at: Annotated[str | None, typer.Option(help="When (ISO 8601; default now).")] = None,
    listing: Annotated[bool, typer.Option("--listing", help="Decide as for showing it in a list.")] = False,
    connect: Annotated[bool, typer.Option("--connect", help="Start the server and use the annotations it "
                                                            "really lists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Why a principal may or may not do something: the decision, the rules that made it, the inputs used."""
    cfg, _settings, engine = _load(config)
    if os_groups:
        engine.builder.include_os_groups = True
    scenario = testing.Scenario(principal=principal or _os_user(), kind=kind, groups=tuple(group or ()),
                                claims=_claims(claim or []), client=client, client_version=client_version,
                                transport=transport, era=era, action=action, tool=tool, prompt=prompt,
                                resource=resource, server=server, labels=tuple(label or ()), listing=listing)
    if transport not in ("stdio", "http"):
        _fail("bad option", "--transport must be stdio or http")
    if annotation:
        scenario.annotations = _annotations(annotation)
    if args is not None:
        try:
            parsed = orjson.loads(args)
        except orjson.JSONDecodeError as exc:
            _fail("bad option", f"--args is not JSON: {exc}")
        if not isinstance(parsed, dict):
            _fail("bad option", "--args must be a JSON object")
        scenario.arguments = parsed
    if at is not None:
        try:
            scenario.at = testing.timestamp(at)
        except ValueError as exc:
            _fail("bad option", f"--at: {exc}")
    try:
        resolved = testing.resolve(scenario, cfg)
        learned = None
        if connect and resolved.target.type == "Tool":
            from mcpward.policy.live import learn_definition

            learned = learn_definition(cfg, "tools", resolved.target.server, resolved.target.name)
            claimed = learned.get("annotations") if learned else None
            resolved = testing.resolve(testing.with_claimed(scenario, claimed if isinstance(claimed, dict) else {}),
                                       cfg)
    except testing.ScenarioError as exc:
        _fail("bad option", str(exc))
    except ConnectionError as exc:
        _fail("connect failed", str(exc))
    decision = testing.decide(engine, resolved)
    report = _explanation(engine, resolved, decision, learned if connect else None)
    if as_json:
        _dump(report)
    else:
        _print_explanation(report)
    raise typer.Exit(0 if decision.allowed else 1)


def _os_user() -> str:
    from mcpward.gateway.context import Principal

    return Principal.local_user().subject


def _claims(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            _fail("bad option", f"--claim {item!r}: expected NAME=VALUE")
        if value.startswith("["):
            try:
                out[name] = orjson.loads(value)
                continue
            except orjson.JSONDecodeError:
                _fail("bad option", f"--claim {name}: a value starting with '[' must be a JSON array")
        out[name] = value
    return out


def _annotations(items: list[str]) -> dict[str, bool]:
    table: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or value.lower() not in ("true", "false"):
            _fail("bad option", f"--annotation {item!r}: expected HINT=true or HINT=false")
        table[name] = value.lower() == "true"
    try:
        return testing.parse_annotations(table, lambda k, p: ValueError(f"--annotation {k}: {p}"))
    except ValueError as exc:
        _fail("bad option", str(exc))


def _explanation(engine: PolicyEngine, resolved: testing.Resolved, decision: Decision,
                 learned: dict[str, Any] | None) -> dict[str, Any]:
    p, target, builder = resolved.principal, resolved.target, engine.builder
    principal = builder.principal(p)
    report: dict[str, Any] = {
        "decision": "allow" if decision.allowed else "deny", "rule": decision.rule, "rules": list(decision.rules),
        "reason": decision.reason, "errors": list(decision.errors), "action": resolved.action,
        "resource": {"type": target.type, "id": target.id, "server": target.server, "name": target.name},
        "principal": {"subject": p.subject, "kind": p.kind, "groups": [g["id"] for g in principal["parents"]],
                      "claims": sorted(principal["tags"])},
        "context": resolved.facts.context(), "policy_hash": engine.policy_hash,
    }
    if target.type != "Server":
        report["labels"] = builder.labels(target)
        report["arguments"] = sorted(target.arguments or {})  # names only: values may be secrets
    if target.type == "Tool":
        override = builder.override(target)
        sources = annotation_sources(target.claimed, override.annotations if override else {})
        report["annotations"] = {k: {"value": v, "source": s} for k, (v, s) in sources.items()}
        report["destructive"] = not sources["readOnlyHint"][0] and sources["destructiveHint"][0]
        if learned is not None:
            report["listed_by_server"] = bool(learned)
    return report


def _print_explanation(r: dict[str, Any]) -> None:
    verdict = "[bold green]ALLOW[/]" if r["decision"] == "allow" else "[bold red]DENY[/]"
    res, who = r["resource"], r["principal"]
    out.print(f"{verdict}  {r['action']} on {escape(res['type'])}::{escape(orjson.dumps(res['id']).decode())} "
              f"for {escape(who['subject'])}")
    rows = [("rule", r["rule"]), ("reason", r["reason"]),
            ("principal", f"{who['subject']} ({who['kind']}); groups: {', '.join(who['groups']) or '-'}; "
                          f"claims: {', '.join(who['claims']) or '-'}"),
            ("resource", f"server {res['server']}, upstream name {res['name']}")]
    ctx = r["context"]
    rows.append(("context", f"client {ctx['client'] or '-'} {ctx['client_version']}".rstrip()
                 + f", transport {ctx['transport']}, era {ctx['era']}, hour {ctx['hour']}, weekday {ctx['weekday']}"
                 + (", listing" if ctx["listing"] else "")))
    if "annotations" in r:
        hints = " ".join(f"{k}={str(a['value']).lower()} ({a['source']})" for k, a in r["annotations"].items())
        rows.append(("annotations", f"{hints}; destructive={str(r['destructive']).lower()}"))
        if r.get("listed_by_server") is False:
            rows.append(("connect", "the server does not list this tool: spec defaults apply"))
    if "labels" in r:
        rows.append(("labels", ", ".join(r["labels"]) or "-"))
        rows.append(("arguments", ", ".join(r["arguments"]) or "-"))
    for error in r["errors"]:
        rows.append(("error", error))
    rows.append(("policy", r["policy_hash"]))
    for name, value in rows:
        out.print(f"  [bold]{name:<11}[/] {escape(str(value))}")


# ----------------------------------------------------------------------------- test
@policy_app.command("test")
def test_(
    files: Annotated[list[Path] | None, typer.Argument(help="Policy test files (default: [policy] tests).")] = None,
    config: ConfigOpt = Path("mcpward.toml"),
    as_json: JsonOpt = False,
) -> None:
    """Run policy test files: each case is a request and the decision it must get."""
    cfg, settings, engine = _load(config)
    paths = list(files or settings.tests)
    if not paths:
        _fail("no tests", "name test files, or set [policy] tests in the config")
    cases: list[testing.Case] = []
    try:
        for path in paths:
            cases.extend(testing.load_cases(path, display_name(path.resolve(), Path.cwd())))
    except ConfigError as exc:
        _fail("test file error", str(exc))
    for case in cases:
        # A case that names nothing the config has, or contradicts itself, is a malformed test file
        # (exit 2), not a failing case (exit 1).
        try:
            testing.resolve(case.scenario, cfg)
        except testing.ScenarioError as exc:
            _fail("test file error", f"{case.label}: {exc}")
    outcomes = [testing.run_case(engine, cfg, case) for case in cases]
    failed = [o for o in outcomes if o.problem is not None]
    if as_json:
        _dump({"passed": len(outcomes) - len(failed), "failed": len(failed), "policy_hash": engine.policy_hash,
               "cases": [{"case": o.case.label, "ok": o.problem is None, "problem": o.problem,
                          "rule": o.decision.rule if o.decision else None} for o in outcomes]})
    else:
        for o in outcomes:
            mark = "[green]ok  [/]" if o.problem is None else "[bold red]FAIL[/]"
            detail = f" ({o.decision.rule})" if o.problem is None and o.decision else f": {o.problem}"
            out.print(f"{mark} {escape(o.case.label)}{escape(detail)}")
        summary = f"{len(outcomes) - len(failed)} passed, {len(failed)} failed"
        out.print(f"[bold red]{summary}[/]" if failed else f"[bold green]{summary}[/]")
    if failed:
        raise typer.Exit(1)
