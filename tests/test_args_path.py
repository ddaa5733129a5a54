"""Path-kind arguments: traversal in its encodings, sensitive paths, roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcpward.guards.path_screen import PathScreen, decode, load_patterns, normalise
from tests.test_arguments_guard import guard, rule_of

SCREEN = PathScreen()


@pytest.mark.parametrize("value", [
    "../../etc/hosts.txt", "..\\..\\boot", "a/b/../../../c", "%2e%2e%2fsecret", "%2e%2e/x", "%252e%252e%252fx",
    "%%32%65%%32%65/x", "%c0%ae%c0%ae/x", "%c0%2e%c0%2e%c0%5cx", "%e0%80%ae%e0%80%ae/x", "%u002e%u002e/x",
    "%uff0e%uff0e/x", "..%u2216..%u2216x", "\uff0e\uff0e/x", "0x2e0x2e0x2fx", "..2f..2fx", "....//x", "/.../.../x",
    "..;/x", "x%00.png", "report.pdf%2500", "..", "Li4vLi4vc2VjcmV0", "..%5c..%5cx", "/var/tmp/../../x",
])
def test_traversal_refused(value: str) -> None:
    found = SCREEN.check(value)
    assert found is not None and found.rule == "args.path.traversal", (value, found)


@pytest.mark.parametrize("value", [
    "/etc/shadow", "/etc/passwd", "/ETC/PASSWD", "/etc//./passwd", "~/.ssh/id_rsa", "/home/ann/.ssh/authorized_keys",
    "/root/.aws/credentials", "/Users/ann/.aws/config", "/proc/self/environ", "/proc/1/cmdline", "/root/.bashrc",
    "/root/.bash_history", ".env", "project/.env", "project/.env.production", "keys/id_ed25519",
    "C:\\Windows\\System32\\config\\SAM", "d:\\windows\\win.ini", "/C:\\Windows\\win.ini", "c:boot.ini",
    "/var/run/docker.sock", "/run/containerd/containerd.sock", "/var/log/auth.log", "/var/www/html/config.php",
    "/sys/class/net", "/dev/mem", "/boot/grub/grub.cfg", "/srv/app/.git-credentials", "/.rhosts",
    "site/wp-config.php", "/usr/local/etc/php.ini", "L2V0Yy9wYXNzd2Q=",  # base64 for /etc/passwd
    "file:///etc/shadow", "/private/etc/master.passwd", "C:/xampp/tomcat/conf/tomcat-users.xml",
])
def test_sensitive_paths_refused(value: str) -> None:
    found = SCREEN.check(value)
    assert found is not None and found.rule == "args.path.sensitive", (value, found)


@pytest.mark.parametrize("value", [
    "/root/pdf/report.pdf", "/root", "/root/markdown/notes.md", "/home/ann/project/main.py", "report.md",
    "./data/x.csv", "pdf/embodied_ai_papers/PaLM-E, An Embodied Multimodal Language Model, v1.pdf",
    "/var/tmp/build.log", "notes...", "a..b/c", "v1.2..3", "/tmp/out.png", "C:\\Users\\ann\\Documents\\a.docx",
    "/srv/data/environment.md", "abcdefgh", "/usr/lib/python3/dist-packages/x.py", "log_*.txt",
])
def test_ordinary_paths_allowed(value: str) -> None:
    assert SCREEN.check(value) is None, SCREEN.check(value)


def test_roots() -> None:
    roots = ("/srv/data",)
    assert SCREEN.check("/srv/data/a/b.txt", roots) is None
    assert SCREEN.check("/srv/data", roots) is None
    assert SCREEN.check("relative/file.txt", roots) is None
    for outside in ("/srv/database/x", "/tmp/x", "/", "~/notes", "C:\\data\\x", "//server/share/x", "/srv/data2"):
        found = SCREEN.check(outside, roots)
        assert found is not None and found.rule == "args.path.outside-roots", outside
    # sensitive and traversal are reported first, whatever the roots say
    assert (SCREEN.check("/srv/data/.env", roots) or SCREEN).rule == "args.path.sensitive"  # type: ignore[union-attr]
    assert (SCREEN.check("/srv/data/../../etc/x", roots) or SCREEN).rule == "args.path.traversal"  # type: ignore[union-attr]
    assert SCREEN.check("/anything", ()) is None  # no roots declared: no roots rule


def test_decode_handles_each_layer() -> None:
    assert decode("%252e%252e%252f") == "../"
    assert decode("%c0%ae%c0%af") == "./"
    assert decode("%u2215x") == "/x"
    assert decode("plain/path") == "plain/path"


def test_custom_pattern_list_with_exceptions() -> None:
    screen = PathScreen(load_patterns(["# mine", "/data/private/", "!/data/private/shared/", "*.key  # keys"]))
    assert (screen.check("/data/private/a") or screen).rule == "args.path.sensitive"  # type: ignore[union-attr]
    assert screen.check("/data/private/shared/a") is None
    assert screen.check("/x/server.KEY") is not None
    assert screen.check("/etc/shadow") is None  # the built-in list is replaced, not extended


def test_builtin_list_is_a_data_file() -> None:
    data = Path(__file__).resolve().parents[1] / "src" / "mcpward" / "guards" / "data" / "sensitive_paths.txt"
    patterns = load_patterns(data.read_text().splitlines())
    assert PathScreen().patterns == patterns and "/etc/" in patterns and ".ssh/" in patterns


async def test_guard_path_kind_routes_urls_and_wrappers() -> None:
    g = guard()
    assert await rule_of(g, {"path": "http://127.0.0.1/x"}) == "args.url.non-public"
    assert await rule_of(g, {"path": "https://docs.example.com/a.csv"}) is None
    assert await rule_of(g, {"path": "php://filter/convert.base64-encode/resource=index"}) == "args.url.scheme"
    assert await rule_of(g, {"file_path": "file:///etc/shadow"}) == "args.path.sensitive"


async def test_guard_roots_global_and_per_server() -> None:
    from mcpward.guards.arguments_config import ServerArguments

    g = guard(roots=("/srv/data",), servers={"wide": ServerArguments(roots=("/home/ann",))})
    assert await rule_of(g, {"path": "/srv/data/x"}) is None
    assert await rule_of(g, {"path": "/home/ann/x"}) == "args.path.outside-roots"
    assert await rule_of(g, {"path": "/home/ann/x"}, server="wide") is None
    assert await rule_of(g, {"path": "/srv/data/x"}, server="wide") == "args.path.outside-roots"


def test_normalise_agrees_with_normpath_on_every_short_path() -> None:
    # `normalise` skips `posixpath.normpath` for paths it would not change: check that on every
    # string of up to 6 characters from the characters that matter.
    import itertools
    import posixpath

    for length in range(1, 7):
        for chars in itertools.product("/.a\\ ", repeat=length):
            raw = "".join(chars)
            path = raw.replace("\\", "/").strip()
            if not path:
                continue
            expected = posixpath.normpath(path)
            if path.startswith("//"):
                expected = "/" + expected.lstrip("/")
            assert normalise(raw) == expected, raw
