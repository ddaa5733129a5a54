"""The `[integrity]` table: pinning mode, where pins live, which scanner verdict hides a tool."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mcpward.gateway.config import GatewayConfig, TableReader

Mode = Literal["strict", "tofu", "off"]
MODES = ("strict", "tofu", "off")
HIDE_LEVELS = {"high": 3, "medium": 2, "low": 1, "never": 99}  # scanner Severity values


@dataclass(slots=True)
class IntegritySettings:
    mode: Mode = "tofu"
    lock: Path = Path("mcpward.lock")
    pending: Path = Path("mcpward.pending.json")
    hide_at: int = HIDE_LEVELS["high"]  # a definition whose scan is at least this severe is held
    hold_destructive: bool = True  # a new tool that declares itself destructive waits for a person once

    @property
    def pinning(self) -> bool:
        return self.mode != "off"


def read_settings(cfg: GatewayConfig) -> IntegritySettings:
    r = TableReader(cfg.source, "integrity", cfg.integrity)
    mode = r.get("mode", str, "tofu")
    if mode not in MODES:
        raise r.fail("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    lock = _resolve(cfg.base_dir, r.get("lock", str, "mcpward.lock"))
    default_pending = lock.with_name(lock.name.removesuffix(".lock") + ".pending.json")
    pending = _resolve(cfg.base_dir, r.get("pending", str, str(default_pending)))
    if pending == lock:
        raise r.fail("pending", "must differ from the lock file")
    hide = r.get("hide", str, "high")
    if hide not in HIDE_LEVELS:
        raise r.fail("hide", f"must be one of {', '.join(HIDE_LEVELS)}, got {hide!r}")
    hold = r.get("hold_destructive", bool, True)
    r.reject_unknown()
    return IntegritySettings(mode=mode, lock=lock, pending=pending, hide_at=HIDE_LEVELS[hide], hold_destructive=hold)


def _resolve(base_dir: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p
