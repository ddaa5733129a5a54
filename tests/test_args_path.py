"""Path-kind arguments: traversal in its encodings, sensitive paths, roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcpward.guards.path_screen import PathScreen, decode, file_url_paths, load_patterns, normalise
from tests.test_arguments_guard import guard, rule_of

SCREEN = PathScreen()


@pytest.mark.parametrize("value", [
    "../../etc/hosts.txt", "..\\..\\boot", "a/b/../../../c", "%2e%2e%2fsecret", "%2e%2e/x", "%252e%252e%252fx",
    "%%32%65%%32%65/x", "%c0%ae%c0%ae/x", "%c0%2e%c0%2e%c0%5cx", "%e0%80%ae%e0%80%ae/x", "%u002e%u002e/x",
    "%uff0e%uff0e/x", "..%u2216..%u2216x", "\uff0e\uff0e/x", "0x2e0x2e0x2fx", "..2f..2fx", "....//x", "/.../.../x",
    "..;/x", "x%00.png", "report.pdf%2500", "..", "Li4vLi4vc2VjcmV0", "..%5c..%5cx", "/var/tmp/../../x",
    "2E2E2Fsecret", "2e2E5cx",  # any case of the '%'-less spelling (check's pre-test must let it through)
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


# ---------------------------------------------------------------- file: URLs (RFC 8089 and lenient spellings)

@pytest.mark.parametrize("value", [
    "file:/etc/hostname", "file:///etc/hostname", "file://localhost/etc/hostname", "file://LOCALHOST/proc/1/cmdline",
    "file:/proc/1/cmdline", "file://localhost/proc/1/cmdline", "file://localhost/var/lib/x.db", "file:/sys/kernel/x",
    "FILE:/etc/hostname", "FiLe:///etc/hostname", " file:/etc/hostname", "fi\tle:/etc/hostname",
    "\x01file:/etc/hostname\n", "file:\\etc\\hostname", "file:\\\\localhost\\etc\\hostname",
    "file://127.0.0.1/etc/hostname", "file://[::1]/etc/hostname", "file://evil.example/etc/hostname",
    "file://localhost:80/etc/hostname", "file:/etc/hostname#x", "file:/etc/hostname?x=1", "file:%2Fetc%2Fhostname",
    "file%3a//localhost/etc/hostname", "file://c:/windows/win.ini", "file:///c|/windows/win.ini",
])
def test_every_file_url_spelling_is_judged_as_its_path(value: str) -> None:
    found = SCREEN.check(value)
    assert found is not None and found.rule == "args.path.sensitive", (value, found)


def test_file_url_readings() -> None:
    assert file_url_paths("file:/p/x") == ["/p/x"]
    assert file_url_paths("file:///p/x") == ["/p/x"]
    assert file_url_paths("file://localhost/p/x") == ["/p/x"]
    assert file_url_paths("file://host/share/x") == ["//host/share/x", "/share/x"]
    assert file_url_paths("file:////host/share/x") == ["//host/share/x"]
    assert file_url_paths("file:/p/x#frag") == ["/p/x#frag", "/p/x"]
    assert file_url_paths("file://C:/x") == ["C:/x"]
    assert file_url_paths("file:notes.txt") == ["notes.txt"]
    assert file_url_paths("/p/file:x") == [] and file_url_paths("c:/x") == [] and file_url_paths("notes") == []


def test_file_urls_and_roots() -> None:
    roots = ("/srv/data",)
    for inside in ("file:/srv/data/a.txt", "file:///srv/data/a.txt", "file://localhost/srv/data/a.txt",
                   "FILE://127.0.0.1/srv/data/a.txt", "file:/srv/data/a.txt#page=2", "file:notes.txt"):
        assert SCREEN.check(inside, roots) is None, inside
    for outside in ("file:/tmp/x", "file://localhost/tmp/x", "file:///tmp/x", "file://server/share/x",
                    "file://server/srv/data/x", "file:////server/srv/data/x", " file:/tmp/x"):
        found = SCREEN.check(outside, roots)
        assert found is not None and found.rule == "args.path.outside-roots", (outside, found)


async def test_guard_file_urls_and_parser_noise_in_schemes() -> None:
    g = guard()
    assert await rule_of(g, {"path": "file:/etc/hostname"}) == "args.path.sensitive"
    assert await rule_of(g, {"path": "file://localhost/proc/1/cmdline"}) == "args.path.sensitive"
    assert await rule_of(guard(roots=("/srv/data",)), {"path": "file:/tmp/x"}) == "args.path.outside-roots"
    # A URL parser drops tab/newline inside a scheme: these are php:// and http:// to it.
    assert await rule_of(g, {"path": "ph\tp://filter/resource=index"}) == "args.url.scheme"
    assert await rule_of(g, {"path": "ht\ttp://169.254.169.254/latest"}) == "args.url.non-public"
    assert await rule_of(g, {"path": "file:/srv/data/report.pdf"}) is None


async def test_guard_a_percent_encoded_url_in_a_path_is_screened_as_a_url() -> None:
    # A tool that percent-decodes its path and then fetches it reaches the decoded URL.
    g = guard()
    assert await rule_of(g, {"path": "http%3a//169.254.169.254/latest"}) == "args.url.non-public"
    assert await rule_of(g, {"path": "http%3A%2F%2F127.0.0.1%2Fadmin"}) == "args.url.non-public"
    assert await rule_of(g, {"path": "https%3a//docs.example.com/a.csv"}) is None
    assert await rule_of(g, {"path": "reports/q3%20summary.pdf"}) is None
