"""Where MCP clients keep their server lists, and reading them into one shape.

Which clients exist, where their files live per OS, their format and the key paths to their server
tables are data (`data/clients.toml`). This module expands those paths (honouring $HOME,
$XDG_CONFIG_HOME, $APPDATA, $CODEX_HOME), parses JSON, JSONC, TOML and YAML, and turns every
client's spelling of a server entry (Goose's `cmd`/`envs`, Zed's `command.path`, Continue's
`transport`, Gemini's `httpUrl`...) into a `Launch` whose fields remember the JSON path they came
from, so a finding can point at the exact key. Nothing here runs anything or touches the network.

A file that cannot be read or parsed raises `ConfigFileError` with the file and, where the parser
says, the line: never a traceback.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import stat
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import yaml

FORMATS = ("json", "jsonc", "toml", "yaml")
MAX_FILE_BYTES = 32 * 1024 * 1024  # ~/.claude.json grows with history; anything past this is not a config
_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# VS Code keeps each non-default profile's user files in `User/profiles/<id>/` (mcp.json and
# settings.json among them). Those clients' user-level files are looked for there too, for at most
# this many entries of `profiles/` (a bound on the listing, however large the directory is).
PROFILE_CLIENTS = frozenset({"vscode", "vscode-settings"})
MAX_PROFILES = 64


class ConfigFileError(Exception):
    def __init__(self, file: str, problem: str, line: int | None = None) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {problem}")
        self.file, self.problem, self.line = file, problem, line


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    title: str
    format: str
    servers: tuple[tuple[str, ...], ...]
    paths: Mapping[str, tuple[str, ...]]  # os -> patterns under the home directory
    project: tuple[str, ...] = ()


@dataclass(slots=True)
class Launch:
    """One server entry, normalised. `where` maps a field (command, args, env, url, headers,
    cwd, or `extra.<key>`) to its JSON path in the file."""

    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Other string values of the entry (Zed's `settings`, Codex's `bearer_token`...): path -> (key, value).
    extra: dict[str, tuple[str, str]] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, what is wrong with the entry)
    disabled: bool = False


@dataclass(slots=True)
class ServerEntry:
    client: str
    file: str
    name: str
    path: str  # JSON path of the entry, e.g. $.mcpServers.github
    launch: Launch
    line: int | None = None  # where the entry's name first appears in the file (best effort)


@dataclass(slots=True)
class ConfigFile:
    path: str
    client: str
    format: str
    entries: list[ServerEntry] = field(default_factory=list)
    tables: int = 0  # how many server tables were found (0: the file has no MCP servers section)


@dataclass(slots=True)
class Discovery:
    files: list[ConfigFile] = field(default_factory=list)
    errors: list[ConfigFileError] = field(default_factory=list)
    looked: int = 0  # how many candidate paths were checked


# ------------------------------------------------------------------------------------------ client data


def load_clients(text: str | None = None) -> list[Client]:
    if text is None:
        text = resources.files("mcpward.integrity").joinpath("data/clients.toml").read_text("utf-8")
    data = tomllib.loads(text)
    out: list[Client] = []
    for i, item in enumerate(data.get("client", [])):
        name = item.get("name")
        fmt = item.get("format")
        if not isinstance(name, str) or fmt not in FORMATS:
            raise ValueError(f"clients.toml: client[{i}]: needs a name and a format in {', '.join(FORMATS)}")
        servers = tuple(tuple(p) for p in item.get("servers", []))
        if not servers or not all(servers):
            raise ValueError(f"clients.toml: client {name}: 'servers' must list key paths")
        paths = {os_name: tuple(item.get(os_name, [])) for os_name in ("linux", "macos", "windows")}
        out.append(Client(name, str(item.get("title", name)), fmt, servers, paths, tuple(item.get("project", []))))
    return out


def this_os(platform: str | None = None) -> str:
    platform = platform or sys.platform
    if platform.startswith("win"):
        return "windows"
    return "macos" if platform == "darwin" else "linux"


def home_dir(environ: Mapping[str, str]) -> Path:
    # $HOME wins everywhere (tests, and Git Bash on Windows set it); USERPROFILE is Windows' own.
    home = environ.get("HOME") or environ.get("USERPROFILE")
    return Path(home) if home else Path.home()


def expand(pattern: str, home: Path, environ: Mapping[str, str]) -> Path:
    """`~`, $XDG_CONFIG_HOME, $APPDATA and $CODEX_HOME with their documented defaults."""
    defaults = {
        "XDG_CONFIG_HOME": str(home / ".config"),
        "APPDATA": str(home / "AppData" / "Roaming"),
        "CODEX_HOME": str(home / ".codex"),
    }
    text = pattern
    for var, default in defaults.items():
        value = environ.get(var) or default
        text = text.replace(f"${var}", value)
    if text == "~" or text.startswith("~/"):
        text = str(home) + text[1:]
    return Path(text)


def _glob(path: Path) -> list[Path]:
    if "*" not in str(path):
        return [path]
    parts = path.parts
    first = next(i for i, part in enumerate(parts) if "*" in part)
    base = Path(*parts[:first]) if first else Path(parts[0])
    try:
        return sorted(p for p in base.glob(str(Path(*parts[first:]))) if p.is_file())
    except OSError:
        return []


def candidates(clients: Iterable[Client], home: Path, cwd: Path, environ: Mapping[str, str],
               os_name: str, errors: list[ConfigFileError] | None = None) -> Iterator[tuple[Client, Path]]:
    """Every (client, file) pair worth looking at, user-level first (with VS Code's profiles), then
    the project's. A profiles directory past MAX_PROFILES entries is added to `errors` (once)."""
    for client in clients:
        for pattern in client.paths.get(os_name, ()):
            for path in _glob(expand(pattern, home, environ)):
                yield client, path
                if client.name in PROFILE_CLIENTS and path.parent.name == "User":
                    for profile in _profiles(path.parent / "profiles", errors):
                        yield client, profile / path.name
    for client in clients:
        for pattern in client.project:
            for path in _glob(cwd / pattern):
                yield client, path


def _profiles(directory: Path, errors: list[ConfigFileError] | None) -> list[Path]:
    """The profile directories below `directory`, by name, reading at most MAX_PROFILES entries."""
    found: list[Path] = []
    try:
        with os.scandir(directory) as entries:
            for count, entry in enumerate(entries):
                if count == MAX_PROFILES:
                    # Say so rather than scan part of the machine quietly (the scan then exits 2).
                    problem = (f"more than {MAX_PROFILES} entries: only {MAX_PROFILES} profiles were scanned; "
                               "scan the others by naming their files")
                    if errors is not None and not any(e.file == str(directory) for e in errors):
                        errors.append(ConfigFileError(str(directory), problem))
                    break
                if entry.is_dir():
                    found.append(Path(entry.path))
    except OSError:
        return []  # no profiles directory (the usual case), or not a readable one: nothing to look at
    return sorted(found)


def discover(environ: Mapping[str, str] | None = None, cwd: Path | None = None, platform: str | None = None,
             clients: list[Client] | None = None) -> Discovery:
    """Find and read every client config that exists on this machine (and in `cwd`)."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    clients = load_clients() if clients is None else clients
    home = home_dir(environ)
    found = Discovery()
    seen: set[tuple[str, str]] = set()
    for client, path in candidates(clients, home, cwd, environ, this_os(platform), found.errors):
        found.looked += 1
        try:
            key = (client.name, str(path.resolve()))
        except RuntimeError:
            # A symlink loop (3.11 raises RuntimeError, not OSError): nothing to read, but say so.
            if (client.name, str(path)) not in seen:
                seen.add((client.name, str(path)))
                found.errors.append(ConfigFileError(str(path), "cannot read: symlink loop"))
            continue
        except OSError:
            key = (client.name, str(path))
        if key in seen or not path.is_file():
            continue
        seen.add(key)
        try:
            found.files.append(read_config(path, client))
        except ConfigFileError as exc:
            found.errors.append(exc)
    return found


# ------------------------------------------------------------------------------------------ parsing


def strip_jsonc(text: str) -> str:
    """JSON with comments and trailing commas -> JSON. Comments become spaces (newlines kept) so the
    parser's line numbers still match the file; `//` and `/*` inside strings are left alone."""
    out: list[str] = []
    i, n = 0, len(text)
    pending_comma = -1  # index in `out` of a comma that may turn out to be trailing
    last = ""  # the last significant character outside comments
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            pending_comma = -1
            last = '"'
            i = j + 1
        elif ch == "/" and text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif ch == "/" and text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ValueError(f"unterminated /* comment at line {text.count(chr(10), 0, i) + 1}")
            chunk = text[i:j + 2]
            out.append("".join(c if c == "\n" else " " for c in chunk))
            i = j + 2
        elif ch == ",":
            # Only a comma after a value can be trailing: `{,}` and `[1,,]` stay errors for the parser.
            pending_comma = -1 if last in "{[," else len(out)
            out.append(ch)
            last = ch
            i += 1
        elif ch in "}]":
            if pending_comma >= 0:
                out[pending_comma] = " "
            pending_comma = -1
            out.append(ch)
            last = ch
            i += 1
        else:
            if not ch.isspace():
                pending_comma = -1
                last = ch
            out.append(ch)
            i += 1
    return "".join(out)


def guess_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonc", ".code-workspace"):
        return "jsonc"  # plain JSON is valid JSONC; VS Code and Zed allow comments in .json files
    if suffix == ".toml":
        return "toml"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    head = text.lstrip()
    if head.startswith(("{", "[", "//", "/*")):
        return "jsonc"
    if re.search(r"^\s*\[[A-Za-z0-9_.\"-]+\]\s*$", text, re.MULTILINE):
        return "toml"
    return "yaml"


def parse(text: str, fmt: str, file: str) -> Any:
    """Parse one config file; raises ConfigFileError naming the line where the parser gives one."""
    try:
        if fmt == "json":
            try:
                return orjson.loads(text)
            except orjson.JSONDecodeError:
                fmt = "jsonc"  # users add comments to files their client reads leniently
        if fmt == "jsonc":
            try:
                return orjson.loads(strip_jsonc(text))
            except orjson.JSONDecodeError as exc:
                raise ConfigFileError(file, f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
        if fmt == "toml":
            try:
                return tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigFileError(file, f"invalid TOML: {exc}") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigFileError(file, f"invalid YAML: {problem}", mark.line + 1 if mark else None) from None
    except ValueError as exc:  # the JSONC stripper, YAML constructors with bad values
        raise ConfigFileError(file, f"cannot parse: {exc}") from None
    except RecursionError:
        raise ConfigFileError(file, "nested too deeply to be a config file") from None


def read_text(path: Path) -> str:
    file = str(path)
    try:
        raw = _read_regular(path, file)
    except IsADirectoryError:
        raise ConfigFileError(file, "is a directory, not a config file") from None
    except FileNotFoundError:
        raise ConfigFileError(file, "no such file") from None
    except OSError as exc:
        raise ConfigFileError(file, f"cannot read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(file, f"not UTF-8 text (byte {exc.start})") from None


def _read_regular(path: Path, file: str) -> bytes:
    """At most MAX_FILE_BYTES of a regular file. A device, FIFO or socket is refused before any read (st_size
    says nothing about /dev/zero), and it is opened non-blocking so a FIFO with no writer cannot hang us."""
    _regular(os.stat(path).st_mode, file)  # opening some devices does something: do not, when we can tell
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(fd, "rb") as handle:
        _regular(os.fstat(fd).st_mode, file)  # what we opened, if the path changed since
        raw = handle.read(MAX_FILE_BYTES + 1)  # the file may have grown since any stat
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigFileError(file, f"more than {MAX_FILE_BYTES} bytes is too large for a client config")
    return raw


def _regular(mode: int, file: str) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError
    if not stat.S_ISREG(mode):
        raise ConfigFileError(file, "is not a regular file (a device, pipe or socket), not a config file")


def read_config(path: Path, client: Client | None = None, clients: list[Client] | None = None) -> ConfigFile:
    """Read one file. Without `client` (a file named on the command line) the format is guessed and
    every known server-table key path is tried."""
    text = read_text(path)
    file = str(path)
    fmt = client.format if client else guess_format(path, text)
    data = parse(text, fmt, file)
    if client is not None:
        key_paths = list(client.servers)
        name = client.name
    else:
        known = load_clients() if clients is None else clients
        name = _client_by_name(path, known)
        key_paths = _unique(kp for c in known for kp in c.servers)
    out = ConfigFile(file, name, fmt)
    if not isinstance(data, dict):
        if data is None and not text.strip():
            return out  # an empty file: nothing configured
        raise ConfigFileError(file, f"expected an object at the top level, found {_kind(data)}")
    for key_path in key_paths:
        for json_path, table in _tables(data, key_path):
            out.tables += 1
            out.entries.extend(_entries(table, json_path, name, file, text))
    return out


def _client_by_name(path: Path, clients: list[Client]) -> str:
    """The client a named file most likely belongs to (by its file name), else "file"."""
    posix = path.as_posix()
    for client in clients:
        for pattern in (*[p for ps in client.paths.values() for p in ps], *client.project):
            tail = pattern.split("/")
            tail_glob = "/".join(tail[-2:]) if len(tail) > 1 else tail[0]
            if fnmatch.fnmatch(posix, "*/" + tail_glob) or fnmatch.fnmatch(posix, tail_glob):
                return client.name
    return "file"


def _unique(items: Iterable[tuple[str, ...]]) -> list[tuple[str, ...]]:
    seen: list[tuple[str, ...]] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "nothing"}.get(
        type(value), type(value).__name__)


def join_path(base: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if _SIMPLE_KEY.match(key) else f"{base}[{orjson.dumps(key).decode()}]"


def _tables(data: dict[str, Any], key_path: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    def walk(node: Any, keys: tuple[str, ...], path: str) -> Iterator[tuple[str, Any]]:
        if not keys:
            yield path, node
            return
        if not isinstance(node, dict):
            return
        key, rest = keys[0], keys[1:]
        if key == "*":
            for name, child in node.items():
                yield from walk(child, rest, join_path(path, str(name)))
        elif key in node:
            yield from walk(node[key], rest, join_path(path, key))

    yield from walk(data, key_path, "$")


def _entries(table: Any, json_path: str, client: str, file: str, text: str) -> Iterator[ServerEntry]:
    if isinstance(table, dict):
        items: list[tuple[str, str, Any]] = [(str(k), join_path(json_path, str(k)), v) for k, v in table.items()]
    elif isinstance(table, list):
        items = []
        for i, v in enumerate(table):
            name = v.get("name") if isinstance(v, dict) else None
            items.append((str(name) if isinstance(name, str) and name else f"#{i}", join_path(json_path, i), v))
    else:
        entry = ServerEntry(client, file, "(table)", json_path, Launch())
        entry.launch.problems.append((json_path, f"the server table is {_kind(table)}, not an object or a list"))
        yield entry
        return
    for name, path, value in items:
        launch = normalise(value, path)
        if launch is None:
            continue  # a built-in or extension-provided entry: nothing is launched from this file
        yield ServerEntry(client, file, name, path, launch, _line_of(text, name))


def _line_of(text: str, name: str) -> int | None:
    """The first line that names the server (its key, table header or `name:`): good enough to jump to."""
    for needle in (f'"{name}"', f"[mcp_servers.{name}]", f"{name}:", f"name: {name}"):
        index = text.find(needle)
        if index >= 0:
            return text.count("\n", 0, index) + 1
    return None


# ------------------------------------------------------------------------------------------ normalising


_URL_KEYS = ("url", "httpUrl", "serverUrl", "uri", "endpoint")
_HEADER_KEYS = ("headers", "http_headers", "requestInit")
_CREDENTIAL_WORDS = ("token", "key", "secret", "passw", "auth", "credential")
_KNOWN_KEYS = {"command", "cmd", "args", "env", "envs", "cwd", "transport", *_URL_KEYS, *_HEADER_KEYS}


def normalise(value: Any, path: str) -> Launch | None:
    """One client's server entry as a Launch, or None for entries that launch nothing (Goose built-ins,
    Zed extension servers without a command are still scanned for their settings)."""
    launch = Launch()
    if not isinstance(value, dict):
        launch.problems.append((path, f"a server entry must be an object, found {_kind(value)}"))
        return launch
    launch.disabled = value.get("disabled") is True or value.get("enabled") is False
    transport = value.get("transport")
    if isinstance(transport, dict):  # Continue config.json: the launch lives under "transport"
        inner = normalise(transport, join_path(path, "transport"))
        if inner is not None:
            inner.disabled = launch.disabled
            _extras(value, path, inner, skip={"transport", "name"})
            return inner
    command = value.get("command", value.get("cmd"))
    command_key = "command" if "command" in value else "cmd"
    if isinstance(command, dict):  # Zed: "command": {"path", "args", "env"}
        sub = join_path(path, "command")
        _set_command(launch, command.get("path"), join_path(sub, "path"))
        _set_args(launch, command.get("args"), join_path(sub, "args"))
        _set_env(launch, command.get("env"), join_path(sub, "env"))
    else:
        _set_command(launch, command, join_path(path, command_key))
    if "args" in value:
        _set_args(launch, value.get("args"), join_path(path, "args"))
    for env_key in ("env", "envs"):
        if env_key in value:
            _set_env(launch, value.get(env_key), join_path(path, env_key))
    cwd = value.get("cwd")
    if isinstance(cwd, str):
        launch.cwd = cwd
        launch.where["cwd"] = join_path(path, "cwd")
    for key in _URL_KEYS:
        url = value.get(key)
        if isinstance(url, str) and url:
            launch.url, launch.where["url"] = url, join_path(path, key)
            break
    for key in _HEADER_KEYS:
        headers = value.get(key)
        if key == "requestInit" and isinstance(headers, dict):
            headers, key = headers.get("headers"), "requestInit.headers"
        if isinstance(headers, dict):
            launch.headers = {str(k): str(v) for k, v in headers.items() if isinstance(v, str | int)}
            launch.where["headers"] = join_path(path, key) if "." not in key else f"{path}.{key}"
            break
    _extras(value, path, launch, skip=_KNOWN_KEYS | {"name"})
    if launch.command is None and launch.url is None and not launch.problems and not any(
            word in key.lower() for key, _ in launch.extra.values() for word in _CREDENTIAL_WORDS):
        return None  # a built-in (Goose) or extension server with no credential-like settings to check
    return launch


def _set_command(launch: Launch, command: Any, path: str) -> None:
    if command is None:
        return
    if isinstance(command, list) and command and all(isinstance(c, str) for c in command):
        launch.command, launch.args = command[0], list(command[1:])  # `command: ["npx", "-y", "pkg"]`
        launch.where["command"] = launch.where["args"] = path
    elif isinstance(command, str) and command.strip():
        launch.command = command
        launch.where["command"] = path
    else:
        launch.problems.append((path, f"'command' must be a non-empty string, found {_kind(command)}"))


def _set_args(launch: Launch, args: Any, path: str) -> None:
    if args is None:
        return
    if not isinstance(args, list):
        launch.problems.append((path, f"'args' must be a list of strings, found {_kind(args)}"))
        return
    launch.args.extend(str(a) if isinstance(a, str | int | float) else orjson.dumps(a).decode() for a in args)
    launch.where.setdefault("args", path)


def _set_env(launch: Launch, env: Any, path: str) -> None:
    if env is None:
        return
    if not isinstance(env, dict):
        launch.problems.append((path, f"'env' must be an object, found {_kind(env)}"))
        return
    for key, val in env.items():
        launch.env[str(key)] = val if isinstance(val, str) else orjson.dumps(val).decode()
    launch.where["env"] = path


def _extras(value: dict[str, Any], path: str, launch: Launch, skip: set[str], depth: int = 0) -> None:
    """String leaves outside the launch fields (Zed `settings`, Codex `bearer_token`...), for the secret check."""
    for key, val in value.items():
        if key in skip and depth == 0:
            continue
        sub = join_path(path, str(key))
        if isinstance(val, str):
            launch.extra[sub] = (str(key), val)
        elif isinstance(val, dict) and depth < 4:
            _extras(val, sub, launch, skip, depth + 1)


def argv_of(launch: Launch) -> list[tuple[str, str]]:
    """The command line as (token, JSON path) pairs. A command string with spaces and no args
    (`"command": "npx -y pkg"`) is split the way a shell would."""
    if launch.command is None:
        return []
    out: list[tuple[str, str]] = []
    cmd_path = launch.where.get("command", "$")
    if " " in launch.command.strip() and not Path(launch.command).exists():
        try:
            words = shlex.split(launch.command)
        except ValueError:
            words = launch.command.split()
        out.extend((w, cmd_path) for w in words)
    else:
        out.append((launch.command, cmd_path))
    args_path = launch.where.get("args")
    offset = 1 if args_path is not None and args_path == cmd_path else 0  # `command: ["npx", "-y", "pkg"]`
    for i, arg in enumerate(launch.args):
        out.append((arg, join_path(args_path, i + offset) if args_path else cmd_path))
    return out
