"""Detection quality of the output guards on the external corpora in ../shared/eval.

    .venv/bin/python bench/detection_outputs.py              # print the tables
    .venv/bin/python bench/detection_outputs.py --write      # also replace the section in docs/detection.md
    .venv/bin/python bench/detection_outputs.py --show-misses --show-hits   # inspect what was missed / flagged

Reads the corpora at run time and never copies them. Everything runs through the real matcher with
the default settings (the same `Redactor` the gateway builds from an empty config):
- secrets: CredSweeper sample files (a finding counts as found when its value no longer appears in
  the redacted file; a redaction is correct when it overlaps an expected value) and detect-secrets'
  plugin cases (flagged or not);
- PII: Presidio recognizer cases for card, e-mail, phone, US SSN and IP (an expected entity is found
  when a finding of that kind overlaps it); Luhn-invalid and invalid-SSN rows must have no finding;
- prompt injection: BIPIA attacks and spikee wrapper x instruction payloads inserted into clean
  BIPIA contexts (start, middle, end) vs the clean contexts and spikee's benign prompts;
- real tool output: LiveMCPBench outputs through the whole default output guard.
Intervals are 95% Wilson score intervals.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from stats import pct as _pct  # bench/stats.py: this script runs from bench/

from mcpward.gateway.config import parse
from mcpward.gateway.context import system_context
from mcpward.guards import output, pii
from mcpward.guards.base import Call, Refusal
from mcpward.guards.redactor import Hit, Profile, Redactor, encode, needs_neutralising, neutralise_bytes, splice

ROOT = Path(__file__).resolve().parent.parent
EVAL = Path(os.environ.get("MCPWARD_EVAL", ROOT.parent / "shared" / "eval"))
DOC = ROOT / "docs" / "detection.md"
MARK = "<!-- section: outputs (bench/detection_outputs.py) -->"
PII_TESTS = {"credit_card": "card", "email": "email", "phone": "phone", "us_ssn": "ssn", "ip": "ip"}
SECRETS = Profile("bench-secrets", frozenset({"secret"}))

def pct(k: int, n: int) -> str:
    return _pct(k, n, counts=True)


PII = Profile("bench-pii", frozenset({"pii"}))
MARKERS = Profile("bench-markers", frozenset({"marker"}))


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def scan(redactor: Redactor, text: str, profile: Profile) -> tuple[bytes, list[Hit]]:
    """As the output guard does it: neutralise escape sequences and invisible characters, then match."""
    data = encode(text)
    if needs_neutralising(data):
        data = neutralise_bytes(data)[0]
    return data, redactor.scan(data, profile)


# ------------------------------------------------------------------------------------------ secrets


def _line_spans(data: bytes) -> list[tuple[int, int]]:
    spans, start = [], 0
    for line in data.split(b"\n"):
        spans.append((start, start + len(line)))
        start += len(line) + 1
    return spans


def credsweeper(redactor: Redactor, show: bool) -> dict[str, Any]:
    """Recall per expected finding, two ways: its value is gone from its own line (every occurrence on
    that line overlaps a redaction), and, stricter, its value is gone from the whole file."""
    rows = jsonl(EVAL / "secrets" / "credsweeper_samples.dev.jsonl")
    found = file_found = total = 0
    tp = fp = 0
    clean_files = clean_flagged = 0
    missed: collections.Counter[str] = collections.Counter()
    fp_rules: collections.Counter[str] = collections.Counter()
    for row in rows:
        content: str = row["content"]
        data, hits = scan(redactor, content, SECRETS)
        content = data.decode("utf-8", "surrogatepass")  # what was matched (neutralised)
        redacted = splice(data, hits) if hits else content
        lines = _line_spans(data)
        expected = row["expected_findings_credsweeper_output_json"]
        values: set[bytes] = set()
        for finding in expected:
            value = finding["value"]
            needle = encode(value)
            values.add(needle)
            total += 1
            file_found += value not in redacted
            line = finding["line_num"] - 1
            ls, le = lines[line] if 0 <= line < len(lines) else (0, len(data))
            occurrences = []
            at = data.find(needle, ls)
            while 0 <= at < le:
                occurrences.append((at, at + len(needle)))
                at = data.find(needle, at + 1)
            if not occurrences:  # the value spans lines or is written differently: fall back to the file
                ok = value not in redacted
            else:
                ok = all(any(h.start < e and s < h.end for h in hits) for s, e in occurrences)
            found += ok
            if not ok:
                missed[finding["rule"]] += 1
                if show:
                    print(f"  MISS {row['file']}:{finding['line_num']}: {finding['rule']}: {value[:60]!r}",
                          file=sys.stderr)
        # Where the expected values are, in bytes.
        spans: list[tuple[int, int]] = []
        for needle in values:
            start = data.find(needle)
            while start >= 0:
                spans.append((start, start + len(needle)))
                start = data.find(needle, start + 1)
        for hit in hits:
            if any(hit.start < e and s < hit.end for s, e in spans):
                tp += 1
            else:
                fp += 1
                fp_rules[hit.detector.id] += 1
                if show:
                    snippet = data[max(0, hit.start - 30):hit.end + 10].decode("utf-8", "replace")
                    print(f"  EXTRA {row['file']}: {hit.detector.id}: {snippet!r}", file=sys.stderr)
        if not expected:
            clean_files += 1
            clean_flagged += bool(hits)
    return {"found": found, "file_found": file_found, "total": total, "tp": tp, "fp": fp,
            "clean_files": clean_files, "clean_flagged": clean_flagged, "missed": missed, "fp_rules": fp_rules,
            "files": len(rows)}


def detect_secrets_cases(redactor: Redactor, show: bool) -> dict[str, Any]:
    rows = jsonl(EVAL / "secrets" / "detect_secrets_plugin_cases.jsonl")
    pos = pos_hit = neg = neg_hit = 0
    ip_rows: list[tuple[str, bool]] = []
    missed: collections.Counter[str] = collections.Counter()
    for row in rows:
        params, plugin = row["params"], row["plugin_test"]
        text = params.get("payload", params.get("line", params.get("file_content")))
        if not isinstance(text, str):
            continue  # rows that hold only a format or a limit: no literal value to test
        if plugin == "ip_public":
            ip_rows.append((text, bool(params.get("should_flag"))))
            continue
        should = params.get("should_flag", True)
        _, hits = scan(redactor, text, SECRETS)
        if should:
            pos += 1
            pos_hit += bool(hits)
            if not hits:
                missed[plugin] += 1
                if show:
                    print(f"  DS MISS {plugin}: {text[:70]!r}", file=sys.stderr)
        else:
            neg += 1
            neg_hit += bool(hits)
            if hits and show:
                print(f"  DS FP {plugin}: {hits[0].detector.id}: {text[:70]!r}", file=sys.stderr)
    ip_flag = {True: 0, False: 0}
    ip_n = {True: 0, False: 0}
    for text, should in ip_rows:
        _, hits = scan(redactor, text, PII)
        ip_n[should] += 1
        ip_flag[should] += any(h.detector.category == "ip" for h in hits)
    return {"pos": pos, "pos_hit": pos_hit, "neg": neg, "neg_hit": neg_hit, "missed": missed,
            "ip_public_flagged": (ip_flag[True], ip_n[True]), "ip_private_flagged": (ip_flag[False], ip_n[False])}


# ------------------------------------------------------------------------------------------ PII


def presidio(redactor: Redactor, show: bool) -> dict[str, Any]:
    rows = jsonl(EVAL / "pii" / "presidio_recognizer_cases.dev.jsonl")
    per: dict[str, list[int]] = {kind: [0, 0] for kind in PII_TESTS.values()}
    negatives: dict[str, list[int]] = {kind: [0, 0] for kind in PII_TESTS.values()}
    hard = [0, 0]  # (rows, rows with a card/ssn finding) among Luhn-invalid and invalid-SSN rows
    for row in rows:
        kind = PII_TESTS.get(row["recognizer_test"])
        if kind is None:
            continue
        leniency = row["params"].get("leniency")
        if kind == "phone" and leniency is not None and leniency != 1:
            continue  # rows for a non-default phonenumbers leniency
        text: str = row["text"]
        _, hits = scan(redactor, text, PII)
        mine = [h for h in hits if h.detector.category == kind]
        positions = row.get("expected_positions") or []
        expected = row["expected_len"]
        if expected == 0:
            negatives[kind][0] += 1
            negatives[kind][1] += bool(mine)
            if kind in ("card", "ssn"):
                hard[0] += 1
                hard[1] += any(h.detector.category in ("card", "ssn") for h in hits)
            if mine and show:
                print(f"  PII FP {kind}: {text!r}", file=sys.stderr)
            continue
        # Character positions -> byte positions (the texts may hold non-ASCII characters).
        def to_bytes(i: int, text: str = text) -> int:
            return len(encode(text[:i]))

        if not positions:  # the row gives a count only: count distinct findings instead
            per[kind][0] += expected
            per[kind][1] += min(expected, len(mine))
            if len(mine) < expected and show:
                print(f"  PII MISS {kind}: {text!r}", file=sys.stderr)
            continue
        for start, end in positions:
            s, e = to_bytes(start), to_bytes(end)
            per[kind][0] += 1
            ok = any(h.start < e and s < h.end for h in mine)
            per[kind][1] += ok
            if not ok and show:
                print(f"  PII MISS {kind}: {text[start:end]!r} in {text!r}", file=sys.stderr)
    return {"per": per, "negatives": negatives, "hard": hard}


# ------------------------------------------------------------------------------------------ injection


def injection(redactor: Redactor, show: bool) -> dict[str, Any]:
    pi = EVAL / "prompt-injection"
    contexts = [r["context"] if isinstance(r["context"], str) else "\n".join(r["context"])
                for r in jsonl(pi / "bipia_benign_contexts.test.jsonl")]
    attacks = [r["text"] for r in jsonl(pi / "bipia_attacks.train.jsonl")]
    seeds = pi / "spikee" / "seeds-llm-mailbox"
    wrappers = [r["text"] for r in jsonl(seeds / "jailbreaks.jsonl")]
    instructions = [r["instruction"] for r in jsonl(seeds / "instructions.jsonl")]
    benign_prompts = [r.get("text") or r.get("content") or r.get("input", "")
                      for r in jsonl(pi / "spikee" / "seeds-investment-advice-fp" / "standalone_user_inputs.jsonl")]

    def insert(doc: str, payload: str, where: int) -> str:
        if where == 0:
            return payload + "\n" + doc
        if where == 1:
            cut = doc.rfind(" ", 0, len(doc) // 2) + 1
            return doc[:cut] + payload + " " + doc[cut:]
        return doc + "\n" + payload

    def flagged(text: str) -> bool:
        return bool(scan(redactor, text, MARKERS)[1])

    bipia = [0, 0]
    for i, attack in enumerate(attacks):
        for where in range(3):
            doc = contexts[(i * 3 + where) % len(contexts)]
            bipia[0] += 1
            bipia[1] += flagged(insert(doc, attack, where))
    spikee = [0, 0]
    by_wrapper: collections.Counter[str] = collections.Counter()
    for i, wrapper in enumerate(wrappers):
        for j, instruction in enumerate(instructions):
            payload = wrapper.replace("<INSTRUCTION>", instruction)
            doc = contexts[(i * 7 + j) % len(contexts)]
            spikee[0] += 1
            hit = flagged(insert(doc, payload, (i + j) % 3))
            spikee[1] += hit
            if not hit:
                by_wrapper[wrapper[:50]] += 1
    # The same wrappers around BIPIA's plain instructions: what the wrapper alone gives away.
    wrapped = [0, 0]
    for i, wrapper in enumerate(wrappers):
        for j in range(3):
            attack = attacks[(i * 3 + j) % len(attacks)].rstrip(".?!")
            doc = contexts[(i * 5 + j) % len(contexts)]
            wrapped[0] += 1
            wrapped[1] += flagged(insert(doc, wrapper.replace("<INSTRUCTION>", attack), j))
    clean = [len(contexts), sum(flagged(c) for c in contexts)]
    prompts = [len(benign_prompts), sum(flagged(p) for p in benign_prompts if p)]
    if show:
        for c in contexts:
            if flagged(c):
                hits = scan(redactor, c, MARKERS)[1]
                print(f"  INJ FP context: {[h.detector.id for h in hits]}", file=sys.stderr)
        for wrapper, n in by_wrapper.most_common(12):
            print(f"  INJ MISS x{n}: {wrapper!r}", file=sys.stderr)
    return {"bipia": bipia, "spikee": spikee, "wrapped": wrapped, "clean": clean, "prompts": prompts}


# ------------------------------------------------------------------------------------------ real output


async def benign(show: bool) -> dict[str, Any]:
    rows = jsonl(EVAL / "benign-tool-io" / "livemcpbench_tool_calls.dev.jsonl")
    cfg = parse({})
    guard = output.from_config(cfg)
    assert guard is not None
    changed = redacted = logged = flagged = blocked = 0
    rules: collections.Counter[str] = collections.Counter()
    detected: collections.Counter[str] = collections.Counter()
    markers: collections.Counter[str] = collections.Counter()
    ctx = system_context()
    started = time.perf_counter()
    total_bytes = 0
    for row in rows:
        text = row["output"]
        total_bytes += len(encode(text))
        call = Call(ctx=ctx, method="tools/call", params={}, server=row["server_name"], target=row["tool_name"],
                    exposed=f"{row['server_name']}__{row['tool_name']}")
        try:
            new = await guard.on_result(call, {"content": [{"type": "text", "text": text}]})
        except Refusal:
            blocked += 1
            continue
        data, hits = scan(guard.redactor, text, guard.plain_profile)  # neutralised by scan() itself
        kinds = {h.detector.kind for h in hits}
        own = [h for h in hits if h.detector.kind != "marker"]
        modes = {guard.secret_mode if h.detector.kind == "secret" else guard.pii_modes[h.detector.category]
                 for h in own}
        changed += new is not None
        redacted += "redact" in modes
        logged += "log" in modes
        flagged += "marker" in kinds
        for h in own:
            mode = guard.secret_mode if h.detector.kind == "secret" else guard.pii_modes[h.detector.category]
            (rules if mode == "redact" else detected)[h.detector.id] += 1
            if show:
                snippet = data[max(0, h.start - 25):h.end + 10].decode("utf-8", "replace").replace("\n", " ")
                print(f"  OUT {row['server_name']}/{row['tool_name']}: {h.detector.id}: {snippet!r}", file=sys.stderr)
        for h in hits:
            if h.detector.kind == "marker":
                markers[h.detector.id] += 1
                if show:
                    snippet = data[max(0, h.start - 40):h.end + 20].decode("utf-8", "replace").replace("\n", " ")
                    print(f"  OUT MARKER {row['server_name']}: {h.detector.id}: {snippet!r}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    return {"n": len(rows), "changed": changed, "redacted": redacted, "logged": logged, "flagged": flagged,
            "blocked": blocked, "rules": rules, "detected": detected, "markers": markers,
            "mb": total_bytes / 1e6, "seconds": elapsed}


# ------------------------------------------------------------------------------------------ report


def report(cs: dict[str, Any], ds: dict[str, Any], pr: dict[str, Any], pr_regions: dict[str, Any],
           inj: dict[str, Any], out: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    add("Measured with `.venv/bin/python bench/detection_outputs.py` (add `--write` to refresh this section,")
    add("`--show-misses --show-hits` to list what was missed or flagged). Default settings throughout.")
    add("")
    add("### Secrets")
    add("")
    add("| corpus | measure | result |")
    add("|---|---|---|")
    add(f"| CredSweeper samples ({cs['files']} files) | recall: value gone from its line | "
        f"{pct(cs['found'], cs['total'])} |")
    add(f"| | recall, stricter: value gone from the whole file | {pct(cs['file_found'], cs['total'])} |")
    add(f"| | precision (redactions overlapping an expected value) | {pct(cs['tp'], cs['tp'] + cs['fp'])} |")
    add(f"| | files without expected findings that got a redaction | {cs['clean_flagged']}/{cs['clean_files']} |")
    add(f"| detect-secrets plugin cases | recall (should_flag) | {pct(ds['pos_hit'], ds['pos'])} |")
    add(f"| | flagged negatives | {pct(ds['neg_hit'], ds['neg'])} |")
    both_k, both_n = cs["found"] + ds["pos_hit"], cs["total"] + ds["pos"]
    add(f"| both | recall | {pct(both_k, both_n)} |")
    add("")
    if cs["missed"]:
        add("Missed CredSweeper findings by CredSweeper rule: "
            + ", ".join(f"{rule} {n}" for rule, n in cs["missed"].most_common()) + ".")
    if cs["fp_rules"]:
        add("Redactions outside CredSweeper's expected values, by mcpward rule: "
            + ", ".join(f"{rule} {n}" for rule, n in cs["fp_rules"].most_common()) + ".")
    if ds["missed"]:
        add("Missed detect-secrets positives by plugin: "
            + ", ".join(f"{p} {n}" for p, n in ds["missed"].most_common()) + ".")
    k, n = ds["ip_public_flagged"]
    k2, n2 = ds["ip_private_flagged"]
    add(f"detect-secrets' `ip_public` rows are scored as PII, not secrets: the IP detector flags {k}/{n} of its "
        f"public-address positives and {k2}/{n2} of its private/invalid negatives (mcpward reports every valid "
        "address, private ones included, and only logs them by default).")
    add("")
    add("### PII (Presidio recognizer cases)")
    add("")
    add("| kind | recall, default (`phone_regions = [\"US\"]`) "
        "| recall, `phone_regions = [\"US\", \"IL\", \"JP\", \"CN\"]` "
        "| negative rows with a finding |")
    add("|---|---|---|---|")
    tot = [0, 0]
    for kind, (n, k) in pr["per"].items():
        tot[0] += n
        tot[1] += k
        n2, k2 = pr_regions["per"][kind]
        neg_n, neg_k = pr["negatives"][kind]
        add(f"| {kind} | {pct(k, n)} | {pct(k2, n2)} | {neg_k}/{neg_n} |")
    add(f"| all five | {pct(tot[1], tot[0])} | | |")
    add("")
    add(f"Hard negatives (Luhn-invalid cards, invalid SSNs): {pr['hard'][1]} of {pr['hard'][0]} rows got a card or "
        "SSN finding.")
    add("")
    add("### Prompt-injection markers")
    add("")
    add("| set | flagged |")
    add("|---|---|")
    add(f"| BIPIA attacks inserted into clean contexts (start/middle/end) | {pct(inj['bipia'][1], inj['bipia'][0])} |")
    add(f"| spikee wrapper x instruction payloads inserted into clean contexts | "
        f"{pct(inj['spikee'][1], inj['spikee'][0])} |")
    add(f"| spikee wrappers around BIPIA instructions (no exfiltration URL) | "
        f"{pct(inj['wrapped'][1], inj['wrapped'][0])} |")
    add(f"| clean BIPIA contexts (false positives) | {pct(inj['clean'][1], inj['clean'][0])} |")
    add(f"| spikee benign prompts (false positives) | {pct(inj['prompts'][1], inj['prompts'][0])} |")
    add(f"| LiveMCPBench real tool outputs (false positives) | {pct(out['flagged'], out['n'])} |")
    add("")
    add("### Real tool output (LiveMCPBench, whole default output guard)")
    add("")
    add(f"{out['n']} outputs ({out['mb']:.2f} MB): {out['redacted']} had something redacted, {out['logged']} had a "
        f"log-only PII finding, {out['flagged']} were flagged for injection markers, {out['blocked']} refused.")
    if out["rules"]:
        add("Redactions by rule: " + ", ".join(f"{r} {n}" for r, n in out["rules"].most_common()) + ".")
    if out["detected"]:
        add("Log-only findings by rule: " + ", ".join(f"{r} {n}" for r, n in out["detected"].most_common()) + ".")
    if out["markers"]:
        add("Markers: " + ", ".join(f"{r} {n}" for r, n in out["markers"].most_common()) + ".")
    return "\n".join(lines)


def write_section(body: str) -> None:
    text = DOC.read_text("utf-8")
    start = text.index(MARK)
    head_end = text.index("\n", text.index("## Output guards", start)) + 1
    # The section ends at the next section marker, or else at the next top-level heading (which then
    # keeps its blank lines before it).
    ends = [i for i in (text.find("<!-- section:", head_end), text.find("\n## ", head_end)) if i >= 0]
    nxt = min(ends) if ends else -1
    tail = text[nxt:] if nxt >= 0 else ""
    if tail.startswith("\n## "):
        tail = "\n\n" + tail[1:]
    keep = text[head_end:nxt if nxt >= 0 else len(text)]
    # Keep hand-written prose above the generated part, marked by this line.
    generated = "<!-- generated by bench/detection_outputs.py -->"
    prose = keep.split(generated)[0].strip() + "\n\n" if generated in keep else ""
    DOC.write_text(text[:head_end] + "\n" + prose + generated + "\n" + body + "\n\n" + tail, "utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the output section of docs/detection.md")
    parser.add_argument("--show-misses", action="store_true", help="print every miss to stderr")
    parser.add_argument("--show-hits", action="store_true", help="print every finding on real output to stderr")
    args = parser.parse_args()
    redactor = output.redactor_for(parse({}))
    wide = Redactor([*[d for d in redactor.detectors if d.kind != "pii"],
                     *pii.detectors(("US", "IL", "JP", "CN"))])
    cs = credsweeper(redactor, args.show_misses)
    ds = detect_secrets_cases(redactor, args.show_misses)
    pr = presidio(redactor, args.show_misses)
    pr_regions = presidio(wide, False)
    inj = injection(redactor, args.show_misses)
    out = asyncio.run(benign(args.show_hits))
    body = report(cs, ds, pr, pr_regions, inj, out)
    print(body)
    if args.write:
        write_section(body)
        print(f"\nwritten to {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
