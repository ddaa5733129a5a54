"""The `[policy]` table: which starting policy, which operator files, enforce or dry-run."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mcpward.gateway.config import GatewayConfig, TableReader

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTINS = ("readonly", "standard", "permit-all")
DEFAULT_BASE = "standard"
Mode = Literal["enforce", "dry-run"]


@dataclass(slots=True)
class PolicySettings:
    source: str
    base: str = DEFAULT_BASE  # a builtin name, or "none"
    files: list[Path] = field(default_factory=list)  # operator .cedar files, globs expanded, in order
    mode: Mode = "enforce"
    tests: list[Path] = field(default_factory=list)  # default policy test files for `mcpward policy test`
    base_dir: Path = field(default_factory=Path.cwd)


def read_settings(cfg: GatewayConfig) -> PolicySettings:
    r = TableReader(cfg.source, "policy", cfg.policy)
    out = PolicySettings(source=cfg.source, base_dir=cfg.base_dir)
    out.base = r.get("base", str, DEFAULT_BASE)
    if out.base not in (*BUILTINS, "none"):
        raise r.fail("base", f"unknown starting policy {out.base!r}; expected one of {', '.join(BUILTINS)} or none")
    mode = r.get("mode", str, "enforce")
    if mode not in ("enforce", "dry-run"):
        raise r.fail("mode", f"must be 'enforce' or 'dry-run', got {mode!r}")
    out.mode = mode
    for i, pattern in enumerate(r.strings("files")):
        out.files.extend(_expand(r, f"files[{i}]", cfg.base_dir, pattern))
    out.files = list(dict.fromkeys(out.files))  # a file named twice is loaded once
    out.tests = [_resolve(cfg.base_dir, t) for t in r.strings("tests")]
    r.reject_unknown()
    if out.base == "none" and not out.files:
        raise r.fail("base", "base = \"none\" with no policy files denies everything; add files or pick a base")
    return out


def _resolve(base_dir: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p


def _expand(r: TableReader, key: str, base_dir: Path, pattern: str) -> list[Path]:
    """A glob that matches nothing is an error: a missing forbid file would silently allow more."""
    full = _resolve(base_dir, pattern)
    if any(c in pattern for c in "*?["):
        matches = sorted(Path(m) for m in glob.glob(str(full), recursive=True) if Path(m).is_file())
        if not matches:
            raise r.fail(key, f"no file matches {pattern!r} (relative to {base_dir})")
        return matches
    if not full.is_file():
        raise r.fail(key, f"no such policy file: {full}")
    return [full]


def display_name(path: Path, base_dir: Path) -> str:
    """How a file is named in errors, `policy check` and the policy hash: relative to the config when it can be."""
    try:
        return str(path.relative_to(base_dir))
    except ValueError:
        return str(path)
