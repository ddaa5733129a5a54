"""Reading launch command lines as data, for `mcpward scan`'s checks (launch.py).

`command_lines` unwraps `env`, `sh -c`, `cmd /c` and `pwsh -Command` wrappers; `docker_run` splits
`docker|podman run` into its options and image; `package_uses` finds the registry package an
`npx`/`bunx`/`pnpm dlx`/`npm exec`/`uvx`/`uv tool run`/`pipx run` line fetches and whether it is
pinned to an exact version; `near` finds a well-known name one edit away (the typosquat test).
Every value keeps the JSON path it came from.
"""

from __future__ import annotations

import ntpath
import posixpath
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

from mcpward.integrity.names import one_edit_away

# ------------------------------------------------------------------------------------------ known packages


def load_known(text: str | None = None) -> dict[str, set[str]]:
    if text is None:
        text = resources.files("mcpward.integrity").joinpath("data/known_packages.txt").read_text("utf-8")
    known: dict[str, set[str]] = {"npm": set(), "pypi": set(), "docker": set()}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        eco, _, name = line.partition(" ")
        if eco not in known or not name.strip():
            raise ValueError(f"known packages line {number}: expected '<npm|pypi|docker> <name>', got {raw!r}")
        known[eco].add(canonical(eco, name.strip()))
    return known


def canonical(eco: str, name: str) -> str:
    name = name.lower()
    return re.sub(r"[-_.]+", "-", name) if eco == "pypi" else name  # PEP 503: these spell one package


# ------------------------------------------------------------------------------------------ command lines

_SHELLS = {"sh", "bash", "zsh", "dash", "ksh", "ash", "fish"}
_SEGMENT_SPLIT = re.compile(r"\s*(?:&&|\|\||;|\||\n)\s*")
Argv = list[tuple[str, str]]


def base(token: str) -> str:
    name = ntpath.basename(posixpath.basename(token)).lower()
    for ext in (".exe", ".cmd", ".bat", ".ps1"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _split_script(script: str, path: str) -> Iterator[Argv]:
    for segment in _SEGMENT_SPLIT.split(script):
        try:
            words = shlex.split(segment, posix=True)
        except ValueError:
            words = segment.split()
        if words:
            yield [(w, path) for w in words]


def command_lines(argv: Argv, depth: int = 0) -> Iterator[Argv]:
    """The command lines a launch runs: itself, unwrapped from `env`, `sh -c`, `cmd /c`, `pwsh -c`."""
    if not argv or depth > 4:
        return
    head = base(argv[0][0])
    rest = argv[1:]
    if head == "env":
        i = 0
        while i < len(rest) and (rest[i][0].startswith("-") or "=" in rest[i][0]):
            i += 1
        yield from command_lines(rest[i:], depth + 1)
        return
    if head in _SHELLS or head in ("powershell", "pwsh"):
        for i, (tok, _path) in enumerate(rest):
            low = tok.lower()
            is_c = (low.startswith("-") and not low.startswith("--") and low.endswith("c")) or low in (
                "-command", "--command")
            if is_c and i + 1 < len(rest):
                for line in _split_script(rest[i + 1][0], rest[i + 1][1]):
                    yield from command_lines(line, depth + 1)
                return
        yield argv
        return
    if head == "cmd":
        for i, (tok, _path) in enumerate(rest):
            if tok.lower() in ("/c", "/k"):
                inner = rest[i + 1:]
                if len(inner) == 1 and " " in inner[0][0]:
                    for line in _split_script(inner[0][0], inner[0][1]):
                        yield from command_lines(line, depth + 1)
                else:
                    yield from command_lines(inner, depth + 1)
                return
    yield argv


# ------------------------------------------------------------------------------------------ containers

_DOCKER_VALUE_OPTS = {
    "-v", "--volume", "--mount", "-e", "--env", "--env-file", "--network", "--net", "--pid", "--ipc", "--uts",
    "--userns", "--cap-add", "--cap-drop", "--security-opt", "--device", "--name", "-p", "--publish", "-u",
    "--user", "-w", "--workdir", "--entrypoint", "-l", "--label", "--label-file", "-m", "--memory", "--cpus",
    "--platform", "--pull", "--restart", "--tmpfs", "--add-host", "--dns", "-h", "--hostname", "--log-driver",
    "--log-opt", "--cgroupns", "--group-add", "--ulimit", "--runtime", "--volumes-from", "--link", "--expose",
    "--shm-size", "--stop-signal", "--gpus", "--ip", "--ip6", "--network-alias", "--pids-limit", "--cidfile",
    "--sysctl", "-a", "--attach", "--memory-swap", "-c", "--cpu-shares", "--cpuset-cpus", "--device-cgroup-rule",
    "--stop-timeout", "--health-cmd", "--health-interval", "--annotation", "--cgroup-parent", "--mac-address",
    "--storage-opt", "--isolation", "--detach-keys", "--domainname", "--oom-score-adj", "--memory-reservation",
}
_ENGINES = {"docker", "podman", "nerdctl"}
@dataclass(frozen=True, slots=True)
class Mount:
    source: str
    target: str
    read_only: bool
    path: str


def docker_run(argv: Argv) -> tuple[list[tuple[str, str, str]], tuple[str, str] | None] | None:
    """For `docker|podman run ...`: the options (name, value, path) and the image, else None."""
    if not argv or base(argv[0][0]) not in _ENGINES:
        return None
    words = [t for t, _ in argv[1:4]]
    start = None
    for i, w in enumerate(words):
        if w == "run":
            start = i + 2
            break
        if w not in ("container",):
            return None
    if start is None:
        return None
    opts: list[tuple[str, str, str]] = []
    i = start
    while i < len(argv):
        tok, path = argv[i]
        if tok == "--":
            i += 1
            break
        if not tok.startswith("-") or tok == "-":
            return opts, (tok, path)
        name, eq, value = tok.partition("=")
        if eq:
            opts.append((name, value, path))
        elif name in _DOCKER_VALUE_OPTS and i + 1 < len(argv):
            opts.append((name, argv[i + 1][0], argv[i + 1][1]))
            i += 1
        else:
            opts.append((name, "", path))
        i += 1
    return opts, (argv[i] if i < len(argv) else None)


def mounts(opts: list[tuple[str, str, str]]) -> Iterator[Mount]:
    for name, value, path in opts:
        if name in ("-v", "--volume"):
            drive = ""
            if re.match(r"^[A-Za-z]:[\\/]", value):  # C:\Users\me:/data
                drive, value = value[:2], value[2:]
            parts = value.split(":")
            source = drive + parts[0]
            target = parts[1] if len(parts) > 1 else parts[0]
            flags = parts[2].split(",") if len(parts) > 2 else []
            yield Mount(source, target, "ro" in flags or "readonly" in flags, path)
        elif name == "--mount":
            fields = dict([*f.split("=", 1), ""][:2] for f in value.split(","))
            if fields.get("type", "volume") != "bind":
                continue
            source = fields.get("source") or fields.get("src") or ""
            target = fields.get("target") or fields.get("destination") or fields.get("dst") or ""
            ro = "readonly" in fields or "ro" in fields or fields.get("readonly") in ("true", "1")
            yield Mount(source, target, ro, path)


# ------------------------------------------------------------------------------------------ packages

_NPM_VALUE_OPTS = {"-p", "--package", "-c", "--call", "--registry", "--cache", "--userconfig", "--prefix", "-w",
                   "--workspace", "--node-options", "--shell", "--script-shell"}
_PY_VALUE_OPTS = {"--from", "--with", "-w", "--with-editable", "--with-requirements", "--python", "-p", "--index",
                  "--index-url", "-i", "--extra-index-url", "--default-index", "--find-links", "-f",
                  "--constraints", "-c", "--overrides", "--spec", "--pip-args", "--directory", "--project",
                  "--config-file", "--cache-dir", "--refresh-package", "--reinstall-package", "--upgrade-package",
                  "-P", "--env-file", "--python-platform", "--exclude-newer", "--index-strategy", "--keyring-provider"}
_EXACT_NPM = re.compile(r"^[v=]?\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_EXACT_PY = re.compile(r"^\d+(?:\.\d+)*(?:(?:a|b|rc|\.post|\.dev)\d+)*(?:\+[0-9a-z.]+)?$", re.IGNORECASE)
_PY_SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$")
_COMMIT = re.compile(r"[#@][0-9a-f]{40}$")


@dataclass(frozen=True, slots=True)
class PackageUse:
    ecosystem: str  # npm | pypi
    launcher: str
    spec: str
    name: str | None  # None: a git/URL reference
    pinned: bool
    path: str


def package_uses(argv: Argv) -> Iterator[PackageUse]:
    """The registry packages a launcher command line fetches and runs."""
    if not argv:
        return
    head = base(argv[0][0])
    second = argv[1][0].lower() if len(argv) > 1 else ""
    if head in ("npx", "bunx", "pnpx") or (head == "bun" and second == "x"):
        yield from _launched(argv[1 if head != "bun" else 2:], "npm", _NPM_VALUE_OPTS, ("-p", "--package"), head)
    elif (head == "npm" and second in ("exec", "x")) or (head in ("pnpm", "yarn") and second == "dlx"):
        yield from _launched(argv[2:], "npm", _NPM_VALUE_OPTS, ("-p", "--package"), f"{head} {second}")
    elif head == "uvx" or (head == "uv" and second == "tool" and len(argv) > 2 and argv[2][0] == "run"):
        yield from _launched(argv[1 if head == "uvx" else 3:], "pypi", _PY_VALUE_OPTS, ("--from",), "uvx",
                             extra=("--with",))
    elif head == "pipx" and second == "run":
        yield from _launched(argv[2:], "pypi", _PY_VALUE_OPTS, ("--spec",), "pipx run")


def _launched(rest: Argv, eco: str, value_opts: set[str], package_opts: tuple[str, ...], launcher: str,
              extra: tuple[str, ...] = ()) -> Iterator[PackageUse]:
    named: list[tuple[str, str]] = []
    also: list[tuple[str, str]] = []
    first: tuple[str, str] | None = None
    i = 0
    while i < len(rest):
        tok, path = rest[i]
        if tok == "--":
            if i + 1 < len(rest) and not named:
                first = rest[i + 1]
            break
        if tok.startswith("-") and len(tok) > 1:
            name, eq, value = tok.partition("=")
            if not eq and name in value_opts and i + 1 < len(rest):
                value, path = rest[i + 1]
                i += 1
            if name in package_opts and value:
                named.append((value, path))
            elif name in extra and value:
                also.extend((v, path) for v in value.split(","))
            i += 1
            continue
        first = (tok, path)
        break
    targets = named or ([first] if first else [])
    for spec, path in [*targets, *also]:
        use = _npm_use(spec, path, launcher) if eco == "npm" else _py_use(spec, path, launcher)
        if use is not None:
            yield use


def _is_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~", "file:", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", spec))


def _npm_use(spec: str, path: str, launcher: str) -> PackageUse | None:
    if _is_local(spec) or "$" in spec:
        return None
    if spec.startswith(("git+", "git:", "github:", "gitlab:", "bitbucket:", "http:", "https:")) or (
            "/" in spec and not spec.startswith("@")):
        return PackageUse("npm", launcher, spec, None, bool(_COMMIT.search(spec)), path)
    if spec.startswith("@"):
        scope, slash, rest = spec.partition("/")
        if not slash:
            return None
        name, at, version = rest.partition("@")
        name = f"{scope}/{name}"
    else:
        name, at, version = spec.partition("@")
    if not name:
        return None
    return PackageUse("npm", launcher, spec, name.lower(), bool(at and _EXACT_NPM.match(version)), path)


def _py_use(spec: str, path: str, launcher: str) -> PackageUse | None:
    if _is_local(spec) or "$" in spec:
        return None
    if spec.startswith(("git+", "http:", "https:")):
        return PackageUse("pypi", launcher, spec, None, bool(_COMMIT.search(spec)), path)
    match = _PY_SPEC.match(spec)
    if match is None:
        return None
    name, _extras, tail = match.groups()
    tail = tail.strip()
    if tail.startswith("@"):  # uvx pkg@1.2.3 (or pkg@latest)
        pinned = bool(_EXACT_PY.match(tail[1:].strip()))
    elif tail.startswith(("==", "===")) and "," not in tail:
        pinned = bool(_EXACT_PY.match(tail.lstrip("=").strip()))
    else:
        pinned = False
    return PackageUse("pypi", launcher, spec, canonical("pypi", name), pinned, path)


def image_name(image: str) -> tuple[str, bool]:
    """(repository name without registry default or tag, pinned to a tag or digest?)."""
    if "@sha256:" in image:
        return image.split("@", 1)[0].lower(), True
    repo, tag = image, ""
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
    repo = repo.lower()
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if repo.startswith(prefix):
            repo = repo[len(prefix):]
    repo = repo.removeprefix("library/")
    return repo, bool(tag) and tag != "latest"


def near(name: str, known: set[str]) -> str | None:
    """A known name one edit away from `name` (whole name, or the part after an npm scope)."""
    if name in known or len(name) < 6:
        return None
    unscoped = name.split("/", 1)[1] if name.startswith("@") and "/" in name else None
    for other in sorted(known):
        if one_edit_away(name, other):
            return other
        if unscoped and other.startswith("@") and "/" in other:
            other_part = other.split("/", 1)[1]
            if len(other_part) >= 6 and one_edit_away(unscoped, other_part):
                return other
        if unscoped is None and other.startswith("@") and "/" in other:
            other_part = other.split("/", 1)[1]
            if len(other_part) >= 8 and one_edit_away(name, other_part):
                return other
    return None
