"""SSRF screening of URL-kind arguments: scheme allowlist, then every host a parser could see.

The guard never connects anywhere. Names are resolved through an injectable async resolver
(default: the loop's getaddrinfo with a timeout; a resolution failure refuses the call) and
every address must be public. Literal checks come first and need no DNS: IP literals in any
encoding, local and metadata names, single-label names (they only resolve through search
domains or /etc/hosts, i.e. to something internal), internal suffixes, and wildcard-DNS names
that spell an IP (`169.254.169.254.nip.io`, `127-0-0-1.sslip.io`, `*.localtest.me`).

A URL can mean different hosts to different parsers (`http://a\\@b/`, `http://a@b@c/`), so
every reading (WHATWG: backslash ends the authority; RFC 3986: it does not; userinfo up to the
first or the last `@`) is checked and all must pass. URLs embedded in a URL-kind value
(`?next=http://169.254.169.254/`, links inside an operator-allowed `data:` URL) are checked too.

What this cannot stop: a name whose DNS answer changes between this check and the tool's own
lookup (DNS rebinding), or a public URL that redirects inward. The sandbox egress proxy checks
the address actually connected to; this screen is the early, explainable refusal.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import time
import unicodedata
import urllib.parse
from collections.abc import Awaitable, Callable

from mcpward.guards.arg_types import Finding
from mcpward.guards.ip_forms import Ambiguous, describe_non_public, is_canonical_v4, is_metadata, parse_inet_aton

Resolver = Callable[[str], Awaitable[list[str]]]

METADATA_NAMES = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal",
    "metadata.azure.internal", "metadata.azure.com", "rancher-metadata", "metadata.packet.net",
    "metadata.platformequinix.com", "metadata.tencentyun.com", "metadata.oraclecloud.com",
})
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "broadcasthost"})
LOCAL_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".intranet", ".lan", ".home.arpa", ".corp",
                  ".home", ".private", ".arpa", ".test", ".invalid")
# Every name under these resolves to 127.0.0.1.
LOOPBACK_DOMAINS = ("localtest.me", "lvh.me", "vcap.me", "lacolhost.com", "localho.st", "yoogle.com")
# Wildcard DNS that answers with the IP spelled in the name.
IP_DOMAINS = ("nip.io", "sslip.io", "xip.io", "traefik.me", "backname.io", "nip.direct", "xip.name", "1u.ms")
AUTHORITY_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp"})
# Schemes that reach other protocols or the local filesystem through common fetchers (curl, PHP,
# Java): the classic SSRF escalations. Always refused. A scheme neither here nor in the network
# allowlist (an MCP resource URI such as `test://static/1` or `github://repo`) is opaque to the
# gateway: its literal host is still checked, but never resolved.
DANGEROUS_SCHEMES = frozenset({
    "file", "gopher", "dict", "ftp", "ftps", "sftp", "tftp", "ldap", "ldaps", "jar", "netdoc", "php", "phar",
    "expect", "zip", "glob", "ssh2", "rar", "ogg", "smb", "telnet", "javascript", "vbscript", "jdbc", "redis",
    "mongodb", "mysql", "postgres", "postgresql", "memcached", "imap", "pop3", "smtp", "ssh", "nfs",
})

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
# Start of a URL anywhere in a value: `scheme://` or `scheme:\\` not preceded by a scheme character.
_EMBEDDED = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]{1,15}):(?://|\\\\|/\\|\\/)")
_URL_END = re.compile(r"[\s\"'<>`]")
_FIRST_AUTHORITY = re.compile(r"[/?#]")
_HOST_CHARS = re.compile(r"^[a-z0-9_.-]+$")
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_V4_IN_NAME = re.compile(r"(?:^|[.-])((?:\d{1,3}[.-]){3}\d{1,3})$")
# Bare metadata names in free text (no scheme). The regex runs only when a name part is present
# (`literal_targets`); numeric targets, dotted or not, are _BARE_NUMERIC's.
_BARE_TARGET = re.compile(r"(?<![\w.-])(metadata(?:\.[a-z0-9-]+)+"
                          r"|instance-data(?:\.[a-z0-9-]+)*)(?![\w-]|\.\w)", re.IGNORECASE)
# Bare numeric hosts in any inet_aton spelling (`0xa9fea9fe`, `2852039166`, `0251.0376.0251.0376`,
# `169.254.43518`) and bracketed IPv6 literals (`[::ffff:a9fe:a9fe]`), not inside a longer word or name,
# but also glued to a short option (`curl -x169.254.169.254:80`, `-x0xa9fea9fe:80`: curl's proxy).
# No substring hint can stand in front of this one: the spellings share no text with the dotted form.
_BARE_NUMERIC = re.compile(r"(?:(?<![\w.-])|(?<=-[A-Za-z]))((?:0x[0-9a-f]+|[0-9]+)(?:\.(?:0x[0-9a-f]+|[0-9]+)){0,3}"
                           r"|\[[0-9a-f:.]+(?:%[\w.-]*)?\])(?![\w-]|\.\w)", re.IGNORECASE)
# A number without dots is a host only where something connects to it: every number from 2851995648 to
# 2852061183 reads as 169.254/16 (`head -c 2852000000 f` is a byte count). So it counts when a path or a
# port follows it, when it follows `user@`, or when its command (between shell separators) names a
# network client or a URL.
_NETWORK_WORD = re.compile(
    r"(?<![\w.-])(?:curl|wget|nc|ncat|netcat|socat|telnet|ssh|scp|sftp|ftp|tftp|ping6?|mosh|rsync|http|https|xh|"
    r"aria2c|axel|lynx|links|elinks|w3m|fetch|dig|nslookup|host|traceroute|tracepath|nmap|openssl|iwr|irm|"
    r"invoke-webrequest|invoke-restmethod|bitsadmin|certutil|socket|urlopen|requests?|connect)(?:\.exe)?(?![\w-])",
    re.IGNORECASE)
_SEGMENT_END = re.compile(r"[;&|\n]")
_PATH_OR_PORT = re.compile(r"/|:[0-9]")
_HEX_IN_NAME = re.compile(r"(?:^|[.-])([0-9a-f]{8})$")
MAX_HOSTS = 16


@functools.lru_cache(maxsize=4096)
def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(address.split("%")[0])


def static_resolver(mapping: dict[str, list[str]]) -> Resolver:
    """A resolver that knows only `mapping` (tests, air-gapped setups): any other name fails,
    so the call is refused; nothing is ever asked of real DNS."""
    table = {k.lower().rstrip("."): list(v) for k, v in mapping.items()}

    async def resolve(host: str) -> list[str]:
        try:
            return table[host]
        except KeyError:
            raise LookupError(f"{host} is not in resolver_map") from None

    return resolve


def system_resolver() -> Resolver:
    async def resolve(host: str) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        return [str(info[4][0]) for info in infos]

    return resolve


# What URL parsers drop (WHATWG, and Python's urllib since 3.9): tab and newlines anywhere, C0
# controls and spaces at either end. `ph\tp://x` is `php://x` to them, so it must be to us.
_INNER_NOISE = str.maketrans("", "", "\t\n\r")
_EDGE_NOISE = "".join(chr(c) for c in range(0x21))


def as_parsed(value: str) -> str:
    """`value` as a URL parser reads it (see _INNER_NOISE)."""
    return value.translate(_INNER_NOISE).strip(_EDGE_NOISE)


def _scheme(value: str) -> str | None:
    match = _SCHEME.match(value)
    return match.group(1).lower() if match else None


def _normalise_host(raw: str) -> str:
    host = urllib.parse.unquote(raw) if "%" in raw else raw
    host = (host if host.isascii() else unicodedata.normalize("NFKC", host)).lower()
    # Unicode full stops that IDNA maps to "." (NFKC handles the fullwidth one).
    host = host.replace("\u3002", ".").replace("\uff61", ".")
    return host.rstrip(".")


def _authorities(rest: str) -> set[str]:
    """The authority as WHATWG and as RFC 3986 read it (`rest` follows `scheme:`)."""
    whatwg = re.split(r"[/\\?#]", rest.lstrip("/\\"), maxsplit=1)[0]
    rfc = re.split(r"[/?#]", rest[2:], maxsplit=1)[0] if rest.startswith("//") else whatwg
    return {whatwg, rfc}


def _hosts_of(authority: str) -> set[str]:
    """Host candidates: after the last `@` (WHATWG, RFC) and after the first (lenient parsers)."""
    if "@" not in authority:
        return {authority}
    return {authority.rsplit("@", 1)[1], authority.split("@", 1)[1]}


def _split_port(hostport: str) -> str:
    """The host of `host[:port]`; raises ValueError when it cannot be a host."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError("an IPv6 literal without its closing ']'")
        host, tail = hostport[: end + 1], hostport[end + 1:]
    else:
        host, sep, port = hostport.rpartition(":")
        if not sep:
            host, tail = hostport, ""
        else:
            tail = ":" + port
    if tail and not re.fullmatch(r":[0-9]{0,5}", tail):
        raise ValueError("a port that is not a number")
    if tail[1:] and int(tail[1:]) > 65535:
        raise ValueError("a port above 65535")
    return host


def _connects_to(text: str, bare: re.Match[str]) -> bool:
    """Whether the number `bare` in a command line is a target (see _NETWORK_WORD)."""
    start, end = bare.span(1)
    if _PATH_OR_PORT.match(text, end) or text[start - 1: start] == "@":
        return True
    left = max(text.rfind(separator, 0, start) for separator in ";&|\n") + 1
    right = _SEGMENT_END.search(text, end)
    return _NETWORK_WORD.search(text[left: right.start() if right else len(text)]) is not None


class UrlScreen:
    def __init__(self, resolver: Resolver | None = None, *, schemes: tuple[str, ...] = ("http", "https"),
                 allow_private: bool = False, resolve_timeout: float = 2.0, cache_seconds: float = 30.0) -> None:
        self.resolver = resolver or system_resolver()
        self.schemes = frozenset(s.lower() for s in schemes)
        self.allow_private = allow_private
        self.resolve_timeout = resolve_timeout
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._literals: dict[tuple[str, bool, bool], tuple[Finding | None, str | None]] = {}

    async def check(self, value: str, allow_private: bool | None = None) -> Finding | None:
        allow = self.allow_private if allow_private is None else allow_private
        value = as_parsed(value).strip()
        if not value:
            return None
        names: set[str] = set()
        scheme = _scheme(value)
        whole = 0  # where the value's own URL starts (skipped when searching for embedded ones)
        if scheme is not None and len(scheme) == 1:
            return Finding("args.url.scheme", f"is a Windows drive path ({scheme.upper()}:), not a URL")
        if scheme is not None:
            found = self._check_scheme(scheme)
            if found:
                return found
            rest = value[len(scheme) + 1:]
            if scheme not in self.schemes:
                # Opaque (not a network scheme, not a dangerous one): its own host is checked as
                # written, never resolved; URLs embedded in it still get the full check below.
                found = self._literal_hosts("//" + rest.lstrip("/\\"), set(), allow, strict=False)
                if found:
                    return found
            elif scheme in AUTHORITY_SCHEMES or rest.startswith(("//", "\\\\")):
                found = self._literal_hosts(rest, names, allow)
                if found:
                    return found
            whole = 1
        elif value.startswith(("//", "\\\\", "/\\", "\\/")):
            found = self._literal_hosts(value, names, allow)
            if found:
                return found
            whole = 1
        else:
            # No scheme (`example.com/x`, `webarena.pdf`, `owner/repo`): not unambiguously a network
            # address, so only what is unmistakable is refused (IP forms that decode to non-public
            # addresses, local, metadata and wildcard-IP names), without DNS.
            found = self._literal_hosts("//" + value, set(), allow, strict=False)
            if found:
                return found
        found = self._embedded(value, whole, names, allow)
        if found:
            return found
        if len(names) > MAX_HOSTS:
            return Finding("args.url.malformed", f"names more than {MAX_HOSTS} different hosts")
        return await self._resolve_all(names, allow)

    def literal_targets(self, text: str) -> Finding | None:
        """DNS-free checks of the targets written inside free text such as a command line: URLs
        (`curl http://0x7f000001/`) and bare addresses or names (`wget 169.254.169.254/latest`).
        Refused: cloud metadata addresses and names in any spelling, and ambiguous IP encodings.
        Loopback and private targets and malformed authorities (`http://$HOST:$PORT/`) are left
        alone: in a command they are ordinary work, and the sandbox's egress rules govern them."""
        if ":/" in text or ":\\" in text:
            for match in _EMBEDDED.finditer(text):
                end = _URL_END.search(text, match.end())
                rest = text[match.end(1) + 1: end.start() if end else len(text)]
                found = self._literal_hosts(rest, set(), allow=True)
                if found is not None and found.rule != "args.url.malformed":
                    return found
        low = text.lower()
        if "metadata" in low or "instance-data" in low:  # names need their words (the numbers below do not)
            for bare in _BARE_TARGET.finditer(text):
                found, _ = self._literal_cached(bare.group(1), True, False)
                if found is not None and found.rule == "args.url.non-public":
                    return found
        for bare in _BARE_NUMERIC.finditer(text):
            # Every numeric word: `head -n 100` is 0.0.0.100 to inet_aton, which is no metadata address, and
            # only metadata addresses are refused here (allow=True), so ordinary numbers pass.
            found, _ = self._literal_cached(bare.group(1), True, False)
            if found is not None and found.rule == "args.url.non-public" and (
                    "." in bare.group(1) or bare.group(1).startswith("[") or _connects_to(text, bare)):
                return found
        return None

    def _check_scheme(self, scheme: str) -> Finding | None:
        if scheme in DANGEROUS_SCHEMES and scheme not in self.schemes:
            return Finding("args.url.scheme", f"uses the scheme {scheme}:, which reaches other protocols or local "
                                              "files through common fetchers")
        return None

    def _embedded(self, value: str, skip: int, names: set[str], allow: bool) -> Finding | None:
        own = 1 if skip and value[value.find(":") + 1:][:1] in ("/", "\\") else 0
        if "%" not in value and value.count(":/") + value.count(":\\") <= own:
            return None  # no other `scheme:/` anywhere: nothing embedded (the common case, no regex)
        texts = [value]
        if "%" in value:
            decoded = urllib.parse.unquote(value)
            texts.append(decoded)
            if "%" in decoded:
                texts.append(urllib.parse.unquote(decoded))
        for n, text in enumerate(texts):
            for match in _EMBEDDED.finditer(text, skip if n == 0 else 0):
                if n > 0 and match.start() == 0 and skip:
                    continue
                scheme = match.group(1).lower()
                found = self._check_scheme(scheme)
                if found:
                    return Finding(found.rule, f"embeds a URL that {found.message}")
                end = _URL_END.search(text, match.end())
                rest = text[match.end(1) + 1: end.start() if end else len(text)]
                found = self._literal_hosts(rest, names, allow)
                if found:
                    return Finding(found.rule, f"embeds a URL whose {found.message}")
        return None

    def _literal_hosts(self, rest: str, names: set[str], allow: bool, strict: bool = True) -> Finding | None:
        """Checks every host reading; a non-public target is reported before a malformed reading."""
        malformed: Finding | None = None
        if "\\" in rest or "@" in rest:
            readings = sorted({h for auth in _authorities(rest) for h in _hosts_of(auth)})
        else:  # one reading only: every parser agrees (the common case)
            readings = [_FIRST_AUTHORITY.split(rest.lstrip("/"), maxsplit=1)[0]]
        for hostport in readings:
            try:
                raw = _split_port(hostport)
            except ValueError as exc:
                if strict and malformed is None:
                    malformed = Finding("args.url.malformed", f"has a malformed authority: {exc}")
                continue
            found, resolve = self._literal_cached(raw, allow, strict)
            if resolve is not None:
                names.add(resolve)
            if found is not None and found.rule != "args.url.malformed":
                return found
            malformed = malformed or found
        return malformed

    def _literal_cached(self, raw: str, allow: bool, strict: bool) -> tuple[Finding | None, str | None]:
        """`_literal` is a pure function of its inputs: memoised, so repeated hosts cost a dict lookup."""
        key = (raw, allow, strict)
        hit = self._literals.get(key)
        if hit is None:
            names: set[str] = set()
            found = self._literal(_normalise_host(raw), names, allow, strict)
            hit = (found, next(iter(names)) if names else None)
            if len(self._literals) >= 4096:
                self._literals.clear()
            self._literals[key] = hit
        return hit

    def _literal(self, host: str, names: set[str], allow: bool, strict: bool) -> Finding | None:
        """Checks that need no DNS; a name that passes them is added to `names` for resolution."""
        if not host:
            return Finding("args.url.malformed", "has no host") if strict else None
        if host.startswith("["):
            try:
                ip6 = ipaddress.IPv6Address(host[1:-1].split("%")[0])
            except ValueError:
                return Finding("args.url.malformed", f"has an invalid IPv6 literal {host[:60]}")
            return self._address(ip6, host, allow)
        try:
            ip4 = parse_inet_aton(host)
        except Ambiguous as exc:
            return Finding("args.url.non-public", f"host {exc}; refused as ambiguous") if strict else None
        if ip4 is not None:
            if strict and not is_canonical_v4(host):
                return Finding("args.url.non-public",
                               f"host {host[:60]} is a non-canonical IP encoding (of {ip4}); refused as ambiguous")
            return self._address(ip4, host, allow)
        if not _HOST_CHARS.match(host):
            try:
                if host.isascii():
                    raise UnicodeError("not a host character")
                host.encode("idna")
            except UnicodeError:
                if not strict:
                    return None
                return Finding("args.url.malformed", f"has a host that is not a valid name: {host[:60]!r}")
        if strict and _NUMERIC_LABEL.match(host.rsplit(".", 1)[-1]):
            # WHATWG parses a host ending in a number as IPv4, and fails if it is not one.
            return Finding("args.url.non-public", f"host {host[:60]} ends in a number but is no IP address; ambiguous")
        if host in METADATA_NAMES:
            return Finding("args.url.non-public", f"host {host} is a cloud metadata name")
        if not allow:
            if host in LOCAL_NAMES or ("." not in host and strict):
                return Finding("args.url.non-public", f"host {host[:60]} is a local or single-label name")
            if host.endswith(LOCAL_SUFFIXES):
                return Finding("args.url.non-public", f"host {host[:60]} is under an internal-only suffix")
            if any(host == d or host.endswith("." + d) for d in LOOPBACK_DOMAINS):
                return Finding("args.url.non-public", f"host {host[:60]} is a wildcard name for 127.0.0.1")
        found = self._wildcard_ip(host, allow)
        if found:
            return found
        if strict:
            names.add(host)
        return None

    def _wildcard_ip(self, host: str, allow: bool) -> Finding | None:
        for domain in IP_DOMAINS:
            if host.endswith("." + domain):
                label = host[: -len(domain) - 1]
                spelled: ipaddress.IPv4Address | None = None
                if m := _V4_IN_NAME.search(label):
                    try:
                        spelled = ipaddress.IPv4Address(m.group(1).replace("-", "."))
                    except ValueError:
                        spelled = None
                elif m := _HEX_IN_NAME.search(label):
                    spelled = ipaddress.IPv4Address(int(m.group(1), 16))
                if spelled is not None:
                    return self._address(spelled, host, allow)
        return None

    def _address(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, host: str, allow: bool) -> Finding | None:
        reason = describe_non_public(ip)
        if reason is None:
            return None
        if allow and not is_metadata(ip) and "metadata" not in reason:  # metadata stays refused
            return None
        return Finding("args.url.non-public", f"host {host[:60]} {reason}")

    async def _resolve_all(self, names: set[str], allow: bool) -> Finding | None:
        # One name at a time: nearly always there is one, usually cached, and a task per name would
        # cost more than the lookup. A value naming many hosts is capped at MAX_HOSTS above.
        for name in sorted(names):
            try:
                result = await self._resolve(name)
            except Exception:
                return Finding("args.url.unresolvable", f"host {name[:60]} could not be resolved (fail closed)")
            for address in result:
                try:
                    ip = _ip(address)
                except ValueError:
                    return Finding("args.url.unresolvable", f"host {name[:60]} resolved to an unreadable address")
                found = self._address(ip, name, allow)
                if found:
                    reason = found.message.split(" ", 2)[2]
                    return Finding(found.rule, f"host {name[:60]} resolves to {ip}, which {reason}")
        return None

    async def _resolve(self, name: str) -> list[str]:
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with asyncio.timeout(self.resolve_timeout):
            addresses = await self.resolver(name)
        if not addresses:
            raise LookupError(f"{name} has no addresses")
        if len(self._cache) >= 4096:
            self._cache.clear()  # crude bound; a cache miss only costs a lookup
        self._cache[name] = (now + self.cache_seconds, list(addresses))
        return addresses
