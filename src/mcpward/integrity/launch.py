"""Risk checks on one MCP client's server entry, without running anything (`mcpward scan`, T04/T10/T14).

Every check reads the launch as data: the command line (and the command lines inside `sh -c`,
`cmd /c` and `env` wrappers), the container options of `docker|podman run`, the package a launcher
(`npx`, `uvx`, `pipx run`, `bunx`...) fetches, env values, headers, URLs and other string settings.
A finding names its rule, a severity (low/medium/high), a message and the JSON path of the value;
it never repeats a secret it found (a masked prefix only).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from mcpward.gateway.config import is_loopback_host
from mcpward.guards import secrets
from mcpward.guards.path_screen import PathScreen, decode, normalise
from mcpward.guards.redactor import SECRETS, Redactor, encode
from mcpward.integrity.discovery import Launch, ServerEntry, argv_of, join_path
from mcpward.integrity.launch_argv import (
    Argv,
    Mount,
    base,
    command_lines,
    docker_run,
    image_name,
    load_known,
    mounts,
    near,
    package_uses,
)

SEVERITY_RANK = {"none": 0, "low": 1, "medium": 2, "high": 3}


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    severity: str  # the usual severity; a finding may say less (a read-only system mount)
    title: str


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("scan.config-error", "medium", "A client config file cannot be read or parsed"),
    Rule("scan.entry-invalid", "low", "A server entry is malformed"),
    Rule("scan.docker-socket", "high", "The container engine's socket is mounted into a container"),
    Rule("scan.sensitive-mount", "high", "A sensitive host path is mounted into a container"),
    Rule("scan.privileged", "high", "A container runs --privileged"),
    Rule("scan.host-namespace", "high", "A container shares a host namespace (network, pid, ipc, uts, userns)"),
    Rule("scan.cap-add", "medium", "A container is given extra Linux capabilities"),
    Rule("scan.unconfined", "high", "A container runs without seccomp/AppArmor/SELinux confinement"),
    Rule("scan.device", "medium", "A host device is passed into a container"),
    Rule("scan.unpinned-package", "medium", "A launcher fetches a package without an exact version"),
    Rule("scan.unpinned-image", "low", "A container image is not pinned to a tag or digest"),
    Rule("scan.typosquat", "high", "A package or image name is one edit away from a well-known one"),
    Rule("scan.plaintext-secret", "high", "A secret is written in plaintext in env, args, headers or settings"),
    Rule("scan.insecure-url", "medium", "A remote server is reached over plain http:// (or ws://)"),
    Rule("scan.url-credentials", "high", "A URL carries credentials (userinfo or a token query parameter)"),
    Rule("scan.pipe-to-shell", "high", "The launch downloads a script and pipes it into a shell"),
    Rule("scan.tool-poisoning", "high", "A listed tool, prompt or template carries a poisoning finding (--connect)"),
    Rule("scan.connect-failed", "low", "A server could not be started or listed (--connect)"),
)}


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    severity: str
    message: str
    file: str
    server: str
    path: str  # JSON path of the offending value
    client: str = ""
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst(findings: Iterable[Finding]) -> str:
    best = "none"
    for f in findings:
        if SEVERITY_RANK[f.severity] > SEVERITY_RANK[best]:
            best = f.severity
    return best


MASK_PREFIX_FROM = 16  # shorter secrets get no prefix: 4 known characters of a 10-character password help guess it


def mask(value: str) -> str:
    """Enough to recognise a secret, not enough to use it."""
    value = value.strip()
    if len(value) >= MASK_PREFIX_FROM:
        return f"{value[:4]}… ({len(value)} chars)"
    return f"… ({len(value)} chars)"


# ------------------------------------------------------------------------------------------ containers

_SOCKETS = ("docker.sock", "podman.sock", "containerd.sock", "crio.sock", "dockershim.sock")
_SYSTEM_DIRS = ("/etc", "/proc", "/sys", "/dev", "/boot", "/usr", "/lib", "/bin", "/sbin", "/var", "/run",
                "/private/etc", "/private/var", "c:/windows")
_HOME_FORMS = re.compile(r"^(?:~|\$home|\$\{home\}|%userprofile%|/root|/home/[^/]+|/users/[^/]+|c:/users/[^/]+)/?$")
_STRONG_CAPS = {"all", "sys_admin", "sys_ptrace", "sys_module", "dac_read_search", "sys_rawio", "bpf",
                "net_admin", "sys_boot", "mknod", "perfmon"}


# ------------------------------------------------------------------------------------------ secrets and URLs

_SECRET_NAME = re.compile(
    r"(?i)(secret|token|passw(?:or)?d|passwd|pwd|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credential"
    r"|auth|bearer|session|cookie|signing[_-]?key|(?:^|[_-])key$|dsn$|conn(?:ection)?[_-]?str)")
_NOT_A_VALUE_NAME = re.compile(r"(?i)(_env_var|_env|_var|_file|_path|_dir|_url|_name|_id|_type|_mode|_header|envvar)$")
_PASSWORD_NAME = re.compile(r"(?i)passw(?:or)?d|passwd|pwd")
_REFERENCE = re.compile(r"^\s*(?:\$\{[^}]+\}|\$[A-Za-z_]\w*|%[A-Za-z_]\w*%|\{\{.*\}\}"
                        r"|(?:env|secret|vault|keyring|keychain|op|file|aws-sm|gcp-sm|azure-kv|input):\S+)\s*$",
                        re.IGNORECASE)
# Header names whose value is a credential whatever it looks like.
AUTH_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "apikey", "cookie",
                          "x-auth-token"})
_AUTH_SCHEME = re.compile(r"^(?i:bearer|basic|token)\s+")
_TOKEN_PARAMS = re.compile(r"(?i)^(?:.*token|.*key|.*secret|.*password|passwd|pwd|auth|sig|signature|"
                           r"x-amz-signature|x-amz-credential|code|session|jwt)$")
_PIPE_TO_SHELL = (
    re.compile(r"(?i)\b(?:curl|wget|fetch|iwr|irm|invoke-webrequest|invoke-restmethod)\b[^|;&\n]{0,400}\|\s*"
               r"(?:sudo\s+(?:-\S+\s+){0,3})?(?:sh|bash|zsh|dash|ksh|fish|python[0-9.]*|node|perl|ruby|iex|"
               r"invoke-expression|powershell|pwsh)\b"),
    re.compile(r"(?i)\b(?:sh|bash|zsh|dash|source|\.)\s+(?:-\S+\s+){0,2}[\"']?(?:<\(|\$\()\s*(?:curl|wget)\b"),
    re.compile(r"(?i)\b(?:iex|invoke-expression)\b[^\n]{0,60}\b(?:iwr|irm|invoke-webrequest|invoke-restmethod|"
               r"downloadstring)\b"),
)
_URL_IN_TEXT = re.compile(r"(?i)\b[a-z][a-z0-9+.-]{1,20}://[^\s\"'<>]+")


def is_reference(value: str) -> bool:
    """`${VAR}`, `${env:VAR}`, `$VAR`, `env:NAME`, `secret:NAME`, `op://...`: the value lives elsewhere."""
    return bool(_REFERENCE.match(value)) or "${" in value


def auth_header_credential(value: str) -> str | None:
    """An authentication header's value, without its scheme, when it looks like a credential (8 or more
    characters, not a placeholder); None otherwise. (Whether it is a reference is the caller's rule.)"""
    bare = _AUTH_SCHEME.sub("", value.strip())
    return bare if len(bare) >= 8 and not secrets.is_placeholder(bare) else None


def literal_secret(name: str, value: str) -> bool:
    """A secret-named setting with a literal value that looks like a real credential."""
    if not _SECRET_NAME.search(name) or _NOT_A_VALUE_NAME.search(name) or is_reference(value):
        return False
    value = value.strip()
    for prefix in ("Bearer ", "bearer ", "Basic ", "basic ", "token ", "Token "):
        value = value.removeprefix(prefix)
    if _PASSWORD_NAME.search(name):
        return secrets.password_like(value)
    return secrets.secret_like(value)


def hide_secret_args(args: list[str]) -> list[str]:
    """The arguments with literal secrets replaced, for text that is stored or shown (the lock file): the
    value of `--token=VALUE` and the argument after a secret-named flag (`--password VALUE`)."""
    out: list[str] = []
    previous = ""
    for tok in args:
        name, eq, value = tok.partition("=")
        if eq and literal_secret(name.lstrip("-"), value):
            out.append(f"{name}=[REDACTED]")
        elif previous.startswith("-") and not tok.startswith("-") and literal_secret(previous.lstrip("-"), tok):
            out.append("[REDACTED]")
        else:
            out.append(tok)
        previous = tok
    return out


def hide_url_secrets(url: str) -> str:
    """The URL with its password and the values of token-named query (or fragment) parameters replaced.
    Stored text errs towards hiding: any literal value of such a parameter goes, whatever its length."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return "[REDACTED:unparsable-url]"  # cannot tell where its secrets are: show none of it
    netloc = parts.netloc
    if password and not is_reference(password):
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:[REDACTED]@{hostport}"

    def params(text: str) -> str:
        kept = []
        for piece in text.split("&"):
            key, eq, value = piece.partition("=")
            if eq and value and _TOKEN_PARAMS.match(urllib.parse.unquote_plus(key)) \
                    and not is_reference(urllib.parse.unquote_plus(value)):
                piece = f"{key}=[REDACTED]"
            kept.append(piece)
        return "&".join(kept)

    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, params(parts.query), params(parts.fragment)))


# ------------------------------------------------------------------------------------------ the checker


class LaunchChecker:
    def __init__(self, known: dict[str, set[str]] | None = None) -> None:
        self.known = load_known() if known is None else known
        self.redactor = Redactor(secrets.builtin_rules())
        self.paths = PathScreen()

    def check(self, entry: ServerEntry) -> list[Finding]:
        out: list[Finding] = []
        seen: set[tuple[str, str]] = set()

        def add(rule: str, message: str, path: str, severity: str | None = None) -> None:
            if (rule, path) in seen:
                return  # one finding per rule and value: the keyword rule and the token rule agree
            seen.add((rule, path))
            out.append(Finding(rule, severity or RULES[rule].severity, message, entry.file, entry.name, path,
                               entry.client, entry.line))

        launch = entry.launch
        for path, problem in launch.problems:
            add("scan.entry-invalid", problem, path)
        argv = argv_of(launch)
        self._pipe_to_shell(launch, argv, add)
        for line in command_lines(argv):
            self._container(line, add)
            self._packages(line, add)
        self._secrets(launch, argv, add)
        self._urls(launch, argv, add)
        return out

    # -- each check reports through `add(rule, message, path, severity=None)`

    def _pipe_to_shell(self, launch: Launch, argv: Argv, add: Any) -> None:
        # One token first (a `sh -c` script names its own path), then the whole line (split argv).
        for text, path in [*argv, (" ".join(tok for tok, _ in argv), launch.where.get("args")
                                   or launch.where.get("command", "$"))]:
            for pattern in _PIPE_TO_SHELL:
                match = pattern.search(text)
                if match:
                    add("scan.pipe-to-shell", f"downloads and runs a script: {match.group(0)[:120]!r}", path)
                    return

    def _container(self, argv: Argv, add: Any) -> None:
        parsed = docker_run(argv)
        if parsed is None:
            return
        opts, image = parsed
        engine = base(argv[0][0])
        for mount in mounts(opts):
            self._mount(mount, add)
        for name, value, path in opts:
            low = value.lower()
            if name == "--privileged" and low not in ("false", "0"):
                add("scan.privileged", f"{engine} run --privileged: the container can take over the host", path)
            elif name in ("--network", "--net") and low == "host":
                add("scan.host-namespace", "shares the host network: the server reaches every local-only service",
                    path, "medium")
            elif name in ("--pid", "--userns") and low == "host":
                add("scan.host-namespace", f"{name}=host: the container sees (pid) or acts as (userns) the host",
                    path, "high")
            elif name in ("--ipc", "--uts", "--cgroupns") and low == "host":
                add("scan.host-namespace", f"{name}=host shares a host namespace", path, "medium")
            elif name == "--cap-add":
                caps = {c.strip().lower().removeprefix("cap_") for c in value.split(",")}
                strong = sorted(caps & _STRONG_CAPS)
                add("scan.cap-add", f"--cap-add {value}" + (" (enough to escape the container)" if strong else ""),
                    path, "high" if strong else "medium")
            elif name == "--security-opt" and ("unconfined" in low or low in ("label=disable", "label:disable")
                                               or low.replace(":", "=") == "no-new-privileges=false"):
                add("scan.unconfined", f"--security-opt {value} removes a confinement layer", path)
            elif name == "--device":
                add("scan.device", f"--device {value} gives the container a host device", path)
        if image is not None:
            self._image(image[0], image[1], add)

    def _mount(self, mount: Mount, add: Any) -> None:
        source = mount.source.strip()
        if not source or (not any(ch in source for ch in "/\\~$%") and not source.startswith(".")):
            return  # a named volume, not a host path
        norm = normalise(decode(source)).replace("\\", "/").lower().rstrip("/") or "/"
        target = mount.target.lower()
        mode = " (read-only)" if mount.read_only else ""
        if norm.endswith(_SOCKETS) or target.endswith(_SOCKETS) or norm in ("/var/run", "/run"):
            add("scan.docker-socket", f"mounts {mount.source}{mode}: control of the container engine is root on the "
                "host", mount.path)
            return
        if norm == "/" or re.fullmatch(r"[a-z]:", norm):
            add("scan.sensitive-mount", f"mounts the whole host filesystem ({mount.source}){mode}", mount.path)
            return
        if _HOME_FORMS.match(norm) or norm in ("$home", "${home}"):
            add("scan.sensitive-mount", f"mounts a home directory ({mount.source}){mode}: keys, tokens and shell "
                "profiles", mount.path)
            return
        found = self.paths.sensitive(norm + "/") or self.paths.sensitive(norm)
        if found is None:
            return
        system = any(norm == d or norm.startswith(d + "/") for d in _SYSTEM_DIRS)
        severity = "medium" if system and mount.read_only else "high"
        add("scan.sensitive-mount", f"mounts {mount.source}{mode}: {found.message}", mount.path, severity)

    def _image(self, image: str, path: str, add: Any) -> None:
        if "$" in image:
            return
        repo, pinned = image_name(image)
        similar = near(repo, self.known["docker"])
        if similar:
            add("scan.typosquat", f"image {repo!r} is one edit away from the well-known {similar!r}", path)
        if not pinned:
            add("scan.unpinned-image", f"image {image!r} has no tag or digest (or uses :latest): what runs can "
                "change under you; pin a digest (image@sha256:...)", path)

    def _packages(self, argv: Argv, add: Any) -> None:
        for use in package_uses(argv):
            if use.name is not None:
                similar = near(use.name, self.known[use.ecosystem])
                if similar:
                    add("scan.typosquat", f"{use.ecosystem} package {use.name!r} is one edit away from the "
                        f"well-known {similar!r}: a typosquat runs the attacker's code", use.path)
            if not use.pinned:
                what = "a git/URL reference without a commit hash" if use.name is None else "no exact version"
                add("scan.unpinned-package", f"`{use.launcher} {use.spec}` fetches {what}: every start may run "
                    "different code; pin it (e.g. pkg@1.2.3 or pkg==1.2.3)", use.path)

    def _secrets(self, launch: Launch, argv: Argv, add: Any) -> None:
        env_path = launch.where.get("env", "$")
        for key, value in launch.env.items():
            path = join_path(env_path, key)
            if literal_secret(key, value):
                add("scan.plaintext-secret", f"env {key} holds a literal secret ({mask(value)}); use a reference "
                    "such as ${" + key + "} or secret:NAME", path)
            elif not is_reference(value):
                self._detect(f"{key}={value}", path, f"env {key}", add)
        previous = ""
        for tok, path in argv[1:]:
            name, eq, value = tok.partition("=")
            if eq and literal_secret(name.lstrip("-"), value):
                add("scan.plaintext-secret", f"argument {name} carries a literal secret ({mask(value)}): argv is "
                    "visible to every local user (ps)", path)
            elif previous.startswith("-") and not tok.startswith("-") and literal_secret(previous.lstrip("-"), tok):
                add("scan.plaintext-secret", f"argument {previous} is followed by a literal secret ({mask(tok)}): "
                    "argv is visible to every local user (ps)", path)
            else:
                self._detect(f"{previous} {tok}" if previous.startswith("-") else tok, path, "an argument", add)
            previous = tok
        headers_path = launch.where.get("headers", "$")
        for key, value in launch.headers.items():
            path = join_path(headers_path, key)
            if is_reference(value):
                continue
            if key.lower() in AUTH_HEADERS or _SECRET_NAME.search(key):
                bare = auth_header_credential(value)
                if bare is not None and not is_reference(bare):
                    add("scan.plaintext-secret", f"header {key} holds a literal credential ({mask(bare)})", path)
                    continue
            self._detect(f"{key}: {value}", path, f"header {key}", add)
        for path, (key, value) in launch.extra.items():
            if literal_secret(key, value):
                add("scan.plaintext-secret", f"setting {key} holds a literal secret ({mask(value)})", path)
            elif not is_reference(value):
                self._detect(f"{key}={value}", path, f"setting {key}", add)

    def _detect(self, text: str, path: str, what: str, add: Any) -> None:
        data = encode(text)
        for hit in self.redactor.scan(data, SECRETS):
            if hit.detector.id == "url-credentials":
                continue  # the URL check reports these, with the URL's own rule
            value = data[hit.start:hit.end].decode("utf-8", "replace")
            add("scan.plaintext-secret", f"{what} contains a {hit.detector.id} secret ({mask(value)})", path)
            return

    def _urls(self, launch: Launch, argv: Argv, add: Any) -> None:
        if launch.url:
            url_path = launch.where.get("url", "$")
            if not self._url(launch.url, url_path, add):
                # A known token anywhere else in the URL (its path, a parameter of any name). Args, env values
                # and headers are already searched by _secrets; one finding per URL is enough.
                self._detect(launch.url, url_path, "the URL", add)
        urls: list[tuple[str, str]] = []
        for tok, path in argv[1:]:
            urls.extend((m.group(0), path) for m in _URL_IN_TEXT.finditer(tok))
        for key, value in launch.env.items():
            urls.extend((m.group(0), launch.where.get("env", "$") + f".{key}") for m in _URL_IN_TEXT.finditer(value))
        for url, path in urls:
            self._url(url, path, add)

    def _url(self, url: str, path: str, add: Any) -> bool:
        """Checks one URL; True when it reported credentials in it."""
        try:
            parts = urllib.parse.urlsplit(url.strip())
            host = (parts.hostname or "").lower()
        except ValueError:
            return False
        if parts.scheme.lower() in ("http", "ws") and host and not is_loopback_host(host) and "$" not in host:
            add("scan.insecure-url", f"{parts.scheme}://{host} is not encrypted: anyone on the path reads and "
                "changes the MCP traffic (and any token in it)", path)
        if parts.password and not is_reference(parts.password):
            add("scan.url-credentials", f"the URL carries a password for {parts.username!r} ({mask(parts.password)})",
                path)
            return True
        if parts.username and secrets.secret_like(parts.username) and not is_reference(parts.username):
            add("scan.url-credentials", f"the URL's user part looks like a token ({mask(parts.username)})", path)
            return True
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=False):
            if _TOKEN_PARAMS.match(key) and len(value) >= 6 and not is_reference(value) \
                    and not secrets.is_placeholder(value):
                add("scan.url-credentials", f"query parameter {key!r} carries a credential ({mask(value)}); URLs "
                    "end up in logs and histories", path)
                return True
        return False
