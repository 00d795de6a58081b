"""tryssh.server.authorized_keys and ``tryssh keys``: strict key parsing, the authorized_keys
line, the managed block (atomic rewrite, duplicates, modes) and the lines honoured by a real
OpenSSH sshd."""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import stat
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import run, venv_bin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sshd import Sshd, UserKey, ssh_argv

from tryssh.cli.keys import default_authorized_keys, default_tryserver
from tryssh.cli.main import root_group
from tryssh.core import sshkeys
from tryssh.core.sshkeys import BadPublicKey, PublicKey, parse_public_key
from tryssh.server import authorized_keys as keymod
from tryssh.server.authorized_keys import (
    AuthorizedKeysError,
    BadKeyOption,
    ConcurrentChange,
    DuplicateKey,
    KeyEntry,
    add_key,
    key_line,
    list_keys,
    remove_keys,
)

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "bin" / "tryssh-jobdir-setup"
TRYSERVER = "/usr/local/bin/tryserver"
JOBDIR = "/srv/tryssh/jobdir"
OPTS = {"tryserver": TRYSERVER, "jobdir": JOBDIR}


# --- real keys ---------------------------------------------------------------------------------


def _keygen(directory: Path, name: str, *args: str, comment: str = "") -> Path:
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-N", "", "-C", comment or f"{name}@test", "-f", str(path), *args],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path.with_name(name + ".pub")


@pytest.fixture(scope="module")
def pubkeys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real public keys made by ssh-keygen, one per type (and a weak RSA key)."""
    d = tmp_path_factory.mktemp("keys")
    return {
        "ssh-ed25519": _keygen(d, "ed", "-t", "ed25519"),
        "ed2": _keygen(d, "ed2", "-t", "ed25519"),
        "ed3": _keygen(d, "ed3", "-t", "ed25519"),
        "ssh-rsa": _keygen(d, "rsa", "-t", "rsa", "-b", "3072"),
        "rsa1024": _keygen(d, "rsa1024", "-t", "rsa", "-b", "1024"),
        "ecdsa-sha2-nistp256": _keygen(d, "ec256", "-t", "ecdsa", "-b", "256"),
        "ecdsa-sha2-nistp384": _keygen(d, "ec384", "-t", "ecdsa", "-b", "384"),
        "ecdsa-sha2-nistp521": _keygen(d, "ec521", "-t", "ecdsa", "-b", "521"),
    }


def keygen_fingerprint(path: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, check=True)
    return out.stdout.decode().split()[1]


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _b64(*fields: bytes) -> str:
    return base64.b64encode(b"".join(_string(f) for f in fields)).decode()


ED_BLOB = _b64(b"ssh-ed25519", bytes(range(32)))
TRUNCATED_BLOB = base64.b64encode(_string(b"ssh-ed25519") + b"\x00\x00").decode()
P384_WITH_P256 = _b64(b"ecdsa-sha2-nistp384", b"nistp256", b"\x04" + bytes(64))
ED_LINE = f"ssh-ed25519 {ED_BLOB} alice@laptop"


# --- parse_public_key --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ktype",
    [
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
    ],
)
def test_parses_real_keys_with_ssh_keygen_fingerprints(
    ktype: str, pubkeys: dict[str, Path]
) -> None:
    text = pubkeys[ktype].read_text()
    key = parse_public_key(text)
    ktext, b64, comment = text.split(None, 2)
    assert key == PublicKey(ktext, b64, comment.strip(), keygen_fingerprint(pubkeys[ktype]))
    assert key.type == ktype
    assert key.blob == base64.b64decode(b64)


def test_parses_security_key_types() -> None:
    sk_ed = _b64(b"sk-ssh-ed25519@openssh.com", bytes(32), b"ssh:")
    key = parse_public_key(f"sk-ssh-ed25519@openssh.com {sk_ed} yubi")
    assert key.type == "sk-ssh-ed25519@openssh.com" and key.comment == "yubi"
    point = b"\x04" + bytes(64)
    sk_ec = _b64(b"sk-ecdsa-sha2-nistp256@openssh.com", b"nistp256", point, b"ssh:")
    assert parse_public_key(f"sk-ecdsa-sha2-nistp256@openssh.com {sk_ec}").comment == ""


def test_trailing_newline_tabs_and_comment_whitespace() -> None:
    key = parse_public_key(f"  ssh-ed25519\t{ED_BLOB}   alice   at\tlaptop \r\n")
    assert key.comment == "alice at laptop"
    assert key.blob_b64 == ED_BLOB
    assert parse_public_key(f"ssh-ed25519 {ED_BLOB}\n").comment == ""
    long = parse_public_key(f"ssh-ed25519 {ED_BLOB} {'x' * 500}")
    assert len(long.comment) == sshkeys.MAX_COMMENT


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("   \n", "empty"),
        (f"{ED_LINE}\n{ED_LINE}\n", "exactly one key on one line, found 2 lines"),
        (f"{ED_LINE}\rssh-ed25519 {ED_BLOB}", "exactly one key"),
        (f"restrict {ED_LINE}", "options before the key are not allowed"),
        (f'command="/bin/sh" {ED_LINE}', "options before the key are not allowed"),
        (f'from="*",no-pty {ED_LINE}', "options before the key are not allowed"),
        (f"ssh-dss {ED_BLOB}", "unsupported key type 'ssh-dss'"),
        (f"ssh-ed25519-cert-v01@openssh.com {ED_BLOB}", "unsupported key type"),
        ("ssh-ed25519", "no base64 data"),
        ("ssh-ed25519 not*base64", "not valid base64"),
        (f"ssh-ed25519 {ED_BLOB[:-1]}", "not valid base64"),
        (f"ssh-rsa {ED_BLOB} liar", "says 'ssh-ed25519' but the line says 'ssh-rsa'"),
        (f"ssh-ed25519 {_b64(b'ssh-ed25519', bytes(31))}", "not a valid ssh-ed25519 key"),
        (f"ssh-ed25519 {_b64(b'ssh-ed25519', bytes(32), b'x')}", "not a valid ssh-ed25519 key"),
        (f"ssh-ed25519 {TRUNCATED_BLOB}", "truncated or malformed"),
        (f"ecdsa-sha2-nistp384 {P384_WITH_P256}", "not a valid ecdsa-sha2-nistp384 key"),
        (f"{ED_LINE} caf\u00e9", "non-ASCII"),
        (f"{ED_LINE} a\x1b[31mred", "control character (0x1b)"),
        (f"{ED_LINE} nul\x00byte", "control character (0x00)"),
        (f"{ED_LINE} del\x7f", "control character (0x7f)"),
        (f"{ED_LINE} a\x0bb", "control character (0x0b)"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n",
         "this is a private key: give its public key (the .pub file"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n",
         "this is a private key"),
        ("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n", "this is a private key"),
        ('---- BEGIN SSH2 PUBLIC KEY ----\nComment: "x"\nAAAA\n---- END SSH2 PUBLIC KEY ----\n',
         "ssh-keygen -i -f FILE"),
        ("x" * 20000, "too long"),
    ],
)
def test_refuses_anything_but_one_plain_key(text: str, message: str) -> None:
    with pytest.raises(BadPublicKey) as exc:
        parse_public_key(text)
    assert message in str(exc.value)
    assert exc.value.exit_code == 65
    assert "\n" not in exc.value.message


def test_refuses_non_canonical_base64() -> None:
    blob = base64.b64decode(ED_BLOB)
    text = base64.b64encode(blob + b"\x00").decode()  # ends with "==" after a padded byte
    tweaked = text[:-3] + chr(ord(text[-3]) + 1) + "=="  # same bytes, non-zero spare bits
    assert base64.b64decode(tweaked) == blob + b"\x00"
    with pytest.raises(BadPublicKey, match=r"canonical|not a valid"):
        parse_public_key(f"ssh-ed25519 {tweaked}")


def test_refuses_a_weak_rsa_key(pubkeys: dict[str, Path]) -> None:
    with pytest.raises(BadPublicKey, match="1024 bits; at least 2048"):
        parse_public_key(pubkeys["rsa1024"].read_text())


# --- key_line ----------------------------------------------------------------------------------


def test_key_line_exact_format() -> None:
    assert key_line("alice", ED_LINE, **OPTS) == (
        f'restrict,command="{TRYSERVER} --jobdir {JOBDIR} --user alice" ssh-ed25519 {ED_BLOB} '
        "alice@laptop"
    )
    full = key_line(
        "bob.smith_2",
        parse_public_key(f"ssh-ed25519 {ED_BLOB}"),
        tryserver=TRYSERVER,
        jobdir=JOBDIR,
        config="/etc/tryssh/config.toml",
        from_="203.0.113.0/24,!203.0.113.7,*.example.org,2001:db8::/32",
        expiry="20271231Z",
    )
    assert full == (
        f'restrict,command="{TRYSERVER} --jobdir {JOBDIR} --config /etc/tryssh/config.toml '
        '--user bob.smith_2",from="203.0.113.0/24,!203.0.113.7,*.example.org,2001:db8::/32",'
        f'expiry-time="20271231Z" ssh-ed25519 {ED_BLOB}'
    )
    listed = key_line("carol", ED_LINE, **OPTS, from_=["10.0.0.1", "host?.lan"])
    assert 'from="10.0.0.1,host?.lan"' in listed
    spaced = key_line("carol", ED_LINE, **OPTS, from_=" 10.0.0.1, ::1 ")
    assert 'from="10.0.0.1,::1"' in spaced


@pytest.mark.parametrize(
    "user", ["", "-alice", ".alice", "al ice", "al'ice", 'a"b', "alice;id", "a$b", "é", "a" * 65]
)
def test_key_line_refuses_bad_user_names(user: str) -> None:
    with pytest.raises(BadKeyOption, match="invalid user name"):
        key_line(user, ED_LINE, **OPTS)


@pytest.mark.parametrize(
    "field, value",
    [
        ("tryserver", "tryserver"),
        ("tryserver", "/usr/bin/try server"),
        ("tryserver", '/usr/bin/"tryserver"'),
        ("tryserver", "/usr/bin/tryserver;id"),
        ("tryserver", "/usr/bin/$(id)"),
        ("tryserver", "/usr/bin/`id`"),
        ("jobdir", "~/jobdir"),
        ("jobdir", "/srv/../etc"),
        ("jobdir", "/srv/jobdir/"),
        ("jobdir", "/srv//jobdir"),
        ("jobdir", "/srv/job\ndir"),
        ("jobdir", "/srv/job*"),
        ("config", "config.toml"),
        ("config", "/etc/tryssh/config.toml\\"),
    ],
)
def test_key_line_refuses_unsafe_paths(field: str, value: str) -> None:
    opts: dict[str, str] = {**OPTS, field: value}
    with pytest.raises(BadKeyOption):
        key_line("alice", ED_LINE, **opts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        ",",
        "10.0.0.1 10.0.0.2",
        '10.0.0.1"',
        "10.0.0.1,",
        "10.0.0.1/33",
        "10.0.0.1/24",
        "a b",
        "a=b",
    ],
)
def test_key_line_refuses_bad_from_patterns(pattern: str) -> None:
    with pytest.raises(BadKeyOption, match="from="):
        key_line("alice", ED_LINE, **OPTS, from_=pattern)


@pytest.mark.parametrize(
    "expiry", ["2027-12-31", "20271301", "2027123", "2027123112", "20271231z", "20270230", "soon"]
)
def test_key_line_refuses_bad_expiry(expiry: str) -> None:
    with pytest.raises(BadKeyOption, match="expiry"):
        key_line("alice", ED_LINE, **OPTS, expiry=expiry)


@pytest.mark.parametrize("expiry", ["20271231", "202712312359", "20271231235959Z"])
def test_key_line_accepts_sshd_expiry_forms(expiry: str) -> None:
    assert f'expiry-time="{expiry}"' in key_line("alice", ED_LINE, **OPTS, expiry=expiry)


def _assert_safe_line(line: str, user: str, extra: list[str]) -> None:
    """The line is one printable-ASCII line whose options are exactly the ones we put."""
    assert all(" " <= c <= "~" for c in line)
    parsed = keymod._parse_auth_line(line)
    assert parsed is not None
    assert parsed.blob == base64.b64decode(ED_BLOB)
    names = [opt.split("=", 1)[0] for opt in keymod.split_options(parsed.options)]
    assert names == ["restrict", "command", *extra]
    assert keymod._user_of(parsed.options) == user


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(comment=st.text(max_size=200))
def test_random_comments_never_inject_a_line_or_an_option(comment: str) -> None:
    try:
        key = parse_public_key(f"ssh-ed25519 {ED_BLOB} {comment}")
    except BadPublicKey:
        return
    line = key_line("alice", key, **OPTS)
    _assert_safe_line(line, "alice", [])
    assert line.endswith(f" {ED_BLOB}" + (f" {key.comment}" if key.comment else ""))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(
        st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))
    )
)
def test_random_garbage_is_refused_cleanly_or_is_a_real_key(text: str) -> None:
    try:
        key = parse_public_key(text)
    except BadPublicKey as e:
        assert "\n" not in e.message
        return
    assert key.type in sshkeys.KEY_TYPES
    assert all(" " <= c <= "~" for c in key.comment)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    user=st.text(max_size=70),
    from_=st.one_of(st.none(), st.text(max_size=60)),
    expiry=st.one_of(st.none(), st.text(max_size=20)),
    path=st.text(max_size=40).map(lambda s: "/" + s),
)
def test_random_options_are_refused_or_cannot_inject(
    user: str, from_: str | None, expiry: str | None, path: str
) -> None:
    try:
        line = key_line(user, ED_LINE, tryserver=path, jobdir=JOBDIR, from_=from_, expiry=expiry)
    except BadKeyOption:
        return
    extra = (["from"] if from_ is not None else []) + (["expiry-time"] if expiry else [])
    _assert_safe_line(line, user, extra)
    command = re.match(r'restrict,command="([^"]*)"', line)
    assert command and command.group(1).split() == [path, "--jobdir", JOBDIR, "--user", user]


# --- the file ----------------------------------------------------------------------------------


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_add_creates_ssh_dir_0700_and_file_0600(tmp_path: Path, umask022: None) -> None:
    path = tmp_path / "home" / ".ssh" / "authorized_keys"
    (tmp_path / "home").mkdir()
    entry = add_key(str(path), "alice", ED_LINE, **OPTS)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    line = key_line("alice", ED_LINE, **OPTS)
    assert path.read_text() == f"# tryssh start\n{line}\n# tryssh end\n"
    assert entry == KeyEntry(
        "alice",
        parse_public_key(ED_LINE).fingerprint,
        "ssh-ed25519",
        "alice@laptop",
        f'restrict,command="{TRYSERVER} --jobdir {JOBDIR} --user alice"',
    )
    assert list_keys(str(path)) == [entry]
    assert [p.name for p in path.parent.iterdir()] == ["authorized_keys"]  # no temp file left


def test_add_without_the_parents_parent_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(keymod.CannotCreate, match="cannot create"):
        add_key(str(tmp_path / "no" / "such" / "authorized_keys"), "alice", ED_LINE, **OPTS)


OUTSIDE_BEFORE = (
    b"# my own keys\r\n"
    b'no-pty,command="/usr/bin/backup" ssh-ed25519 '
    + _b64(b"ssh-ed25519", b"\x01" * 32).encode()
    + b" backup@host\n"
    + b"\n"
    + b"# caf\xc3\xa9 and a stray \xff byte, and trailing spaces   \n"
)
OUTSIDE_AFTER = b"ssh-ed25519 " + _b64(b"ssh-ed25519", b"\x02" * 32).encode() + b" admin"


def test_lines_outside_the_block_are_kept_byte_for_byte(
    tmp_path: Path, pubkeys: dict[str, Path]
) -> None:
    path = tmp_path / "authorized_keys"
    path.write_bytes(OUTSIDE_BEFORE + b"# tryssh start\n# tryssh end\n" + OUTSIDE_AFTER)
    os.chmod(path, 0o644)
    add_key(str(path), "alice", pubkeys["ssh-ed25519"].read_text(), **OPTS)
    add_key(str(path), "bob", pubkeys["ssh-rsa"].read_text(), **OPTS, from_="127.0.0.1")
    data = path.read_bytes()
    assert data.startswith(OUTSIDE_BEFORE + b"# tryssh start\n")
    assert data.endswith(b"# tryssh end\n" + OUTSIDE_AFTER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [(e.user, e.type) for e in list_keys(str(path))] == [
        ("alice", "ssh-ed25519"),
        ("bob", "ssh-rsa"),
    ]
    # Removing keeps them too, and an empty block stays as markers.
    assert remove_keys(str(path), "alice") == 1
    assert remove_keys(str(path), "bob") == 1
    assert path.read_bytes() == (OUTSIDE_BEFORE + b"# tryssh start\n# tryssh end\n" + OUTSIDE_AFTER)


def test_block_is_appended_after_a_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    path.write_bytes(OUTSIDE_AFTER)
    add_key(str(path), "alice", ED_LINE, **OPTS)
    lines = path.read_bytes().split(b"\n")
    assert lines[0] == OUTSIDE_AFTER and lines[1] == b"# tryssh start"


def test_sshd_reads_every_line_we_write(tmp_path: Path, pubkeys: dict[str, Path]) -> None:
    """ssh-keygen -l parses authorized_keys (options included) as sshd does."""
    path = tmp_path / "authorized_keys"
    names = ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp521"]
    for i, name in enumerate(names):
        add_key(
            str(path), f"user{i}", pubkeys[name].read_text(), **OPTS,
            config="/etc/tryssh/config.toml", from_="127.0.0.1,::1", expiry="20991231Z",
        )  # fmt: skip
    out = run(["ssh-keygen", "-l", "-f", str(path)])
    assert out.returncode == 0, out.stderr
    listed = [line.split()[1] for line in out.stdout.decode().splitlines()]
    assert listed == [keygen_fingerprint(pubkeys[n]) for n in names]
    assert [e.fingerprint for e in list_keys(str(path))] == listed


def test_duplicate_in_the_block_names_the_holder(tmp_path: Path) -> None:
    path = str(tmp_path / "authorized_keys")
    add_key(path, "alice", ED_LINE, **OPTS)
    before = Path(path).read_bytes()
    for user in ("bob", "alice"):
        with pytest.raises(DuplicateKey, match=r"already held by user alice \(.*line 2\)"):
            add_key(path, user, f"ssh-ed25519 {ED_BLOB} other comment", **OPTS)
    assert Path(path).read_bytes() == before


@pytest.mark.parametrize(
    "outside, holder",
    [
        (f"ssh-ed25519 {ED_BLOB} plain\n", ""),
        (f'no-pty,command="/x --user mallory" ssh-ed25519 {ED_BLOB}\n', " (user mallory)"),
    ],
)
def test_duplicate_outside_the_block_is_refused(tmp_path: Path, outside: str, holder: str) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text(outside)
    with pytest.raises(DuplicateKey) as exc:
        add_key(str(path), "alice", ED_LINE, **OPTS)
    assert f"line 1, outside the tryssh block{holder}" in exc.value.message
    assert path.read_text() == outside


def test_remove_by_user_and_by_fingerprint(tmp_path: Path, pubkeys: dict[str, Path]) -> None:
    path = str(tmp_path / "authorized_keys")
    a1 = add_key(path, "alice", pubkeys["ssh-ed25519"].read_text(), **OPTS)
    a2 = add_key(path, "alice", pubkeys["ed2"].read_text(), **OPTS)
    b = add_key(path, "bob", pubkeys["ed3"].read_text(), **OPTS)
    assert remove_keys(path, "bob", a1.fingerprint) == 0
    assert remove_keys(path, "alice", a1.fingerprint) == 1
    assert list_keys(path) == [a2, b]
    # The fingerprint may be given without its SHA256: prefix.
    assert remove_keys(path, "alice", a2.fingerprint.removeprefix("SHA256:")) == 1
    assert list_keys(path) == [b]
    assert remove_keys(path, "bob") == 1
    assert list_keys(path) == []
    with pytest.raises(BadKeyOption, match="not a SHA256 fingerprint"):
        remove_keys(path, "bob", "MD5:aa:bb")
    assert remove_keys(str(tmp_path / "missing"), "alice") == 0


def test_remove_of_nothing_does_not_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    add_key(str(path), "alice", ED_LINE, **OPTS)
    before = path.stat()
    assert remove_keys(str(path), "bob") == 0
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.parametrize(
    "content, message",
    [
        ("# tryssh start\n", "never closed"),
        ("# tryssh end\n", "without a matching start"),
        ("# tryssh start\n# tryssh start\n# tryssh end\n", "a second"),
        ("# tryssh start\n# tryssh end\n# tryssh end\n", "without a matching start"),
    ],
)
def test_a_broken_block_is_never_rewritten(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text(content)
    for call in (
        lambda: add_key(str(path), "alice", ED_LINE, **OPTS),
        lambda: list_keys(str(path)),
        lambda: remove_keys(str(path), "alice"),
    ):
        with pytest.raises(AuthorizedKeysError, match=message) as exc:
            call()
        assert exc.value.exit_code == 78
    assert path.read_text() == content


def test_a_symlinked_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("")
    link = tmp_path / "authorized_keys"
    link.symlink_to(real)
    with pytest.raises(AuthorizedKeysError, match="symbolic link"):
        add_key(str(link), "alice", ED_LINE, **OPTS)
    assert link.is_symlink() and real.read_text() == ""


def test_a_change_during_the_rewrite_is_detected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text("# admin's line\n")
    real_read = keymod._read

    def read_then_someone_edits(p: str) -> keymod._Snapshot:
        snap = real_read(p)
        with open(p, "a") as fh:  # another editor appends after our read
            fh.write("# added meanwhile\n")
        return snap

    monkeypatch.setattr(keymod, "_read", read_then_someone_edits)
    with pytest.raises(ConcurrentChange, match="changed while") as exc:
        add_key(str(path), "alice", ED_LINE, **OPTS)
    assert exc.value.exit_code == 75
    assert path.read_text() == "# admin's line\n# added meanwhile\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["authorized_keys"]


def test_concurrent_adds_all_land(tmp_path: Path) -> None:
    """tryssh's own writers are serialised: none of them loses another's key."""
    path = str(tmp_path / "authorized_keys")
    lines = [f"ssh-ed25519 {_b64(b'ssh-ed25519', bytes([i]) * 32)} k{i}" for i in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = [
            pool.submit(add_key, path, f"user{i}", line, **OPTS) for i, line in enumerate(lines)
        ]
        for future in futures:
            future.result()
    assert sorted(e.user for e in list_keys(path)) == sorted(f"user{i}" for i in range(12))


def test_an_expiry_in_the_past_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadKeyOption, match="already in the past"):
        add_key(str(tmp_path / "ak"), "alice", ED_LINE, **OPTS, expiry="20000101Z")
    assert not (tmp_path / "ak").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_root_keeps_the_accounts_ownership(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    path = home / ".ssh" / "authorized_keys"
    add_key(str(path), "alice", ED_LINE, **OPTS)
    for p in (path.parent, path):
        assert (p.stat().st_uid, p.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
    # An existing file keeps its owner through a rewrite.
    os.chown(path, nobody.pw_uid, 0)
    remove_keys(str(path), "alice")
    assert (path.stat().st_uid, path.stat().st_gid) == (nobody.pw_uid, 0)


# --- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., tuple[int, str, str]]:
    """Run ``tryssh keys ARGS`` on tmp_path/authorized_keys; (exit code, stdout, stderr)."""
    ak = str(tmp_path / "authorized_keys")

    def invoke(
        *args: str, input: str | None = None, ak_path: str | None = ak
    ) -> tuple[int, str, str]:
        argv = list(args)
        if ak_path and args and args[0] in ("add", "list", "remove"):
            argv += ["--authorized-keys", ak_path]
        result = CliRunner().invoke(root_group(), ["keys", *argv], input=input, prog_name="tryssh")
        return result.exit_code, result.stdout, result.stderr

    return invoke


def test_cli_add_list_remove(
    cli: Callable[..., tuple[int, str, str]], tmp_path: Path, pubkeys: dict[str, Path]
) -> None:
    code, out, _ = cli(
        "add", "alice", str(pubkeys["ssh-ed25519"]), "--tryserver", TRYSERVER,
        "--jobdir", "/srv/j", "--config", "/etc/tryssh/config.toml",
        "--from", "127.0.0.1", "--expiry", "20991231Z",
    )  # fmt: skip
    fp = keygen_fingerprint(pubkeys["ssh-ed25519"])
    assert code == 0, out
    assert out == f"added ssh-ed25519 {fp} ed@test for alice to {tmp_path}/authorized_keys\n"
    code, out, _ = cli("add", "bob", "-", "--tryserver", TRYSERVER, input=ED_LINE + "\n")
    assert code == 0, out
    code, out, _ = cli("list")
    assert code == 0
    bob_fp = parse_public_key(ED_LINE).fingerprint
    pad = " " * (len(fp) - len("FINGERPRINT"))
    assert out.splitlines() == [
        f"USER   FINGERPRINT{pad}  TYPE         COMMENT       OPTIONS",
        f'alice  {fp}  ssh-ed25519  ed@test       from="127.0.0.1" expiry-time="20991231Z"',
        f"bob    {bob_fp}  ssh-ed25519  alice@laptop",
    ]
    code, out, _ = cli("list", "--json")
    data = json.loads(out)
    assert [d["user"] for d in data] == ["alice", "bob"]
    assert data[0]["options"].startswith(
        f'restrict,command="{TRYSERVER} --jobdir /srv/j --config /etc/tryssh/config.toml '
        '--user alice"'
    )
    assert set(data[0]) == {"user", "fingerprint", "type", "comment", "options"}
    code, out, _ = cli("remove", "alice", fp)
    assert (code, out) == (0, f"removed 1 key of alice from {tmp_path}/authorized_keys\n")
    code, _, err = cli("remove", "alice")
    assert code == 66
    assert err == f"tryssh: no key of alice in the tryssh block of {tmp_path}/authorized_keys\n"


@pytest.mark.parametrize(
    "args, stdin, code, message",
    [
        (("add", "alice", "-"), "ssh-dss AAAA", 65, "tryssh: unsupported key type 'ssh-dss'"),
        (("add", "alice", "-"), f"restrict {ED_LINE}", 65, "tryssh: options before the key"),
        (("add", "-x", "-"), ED_LINE, 64, ""),
        (("add", "al ice", "-"), ED_LINE, 64, "tryssh: invalid user name 'al ice'"),
        (("add", "alice", "/no/such.pub"), None, 66, "tryssh: cannot read /no/such.pub"),
        (("add", "alice", "-", "--jobdir", "rel"), ED_LINE, 64, "tryssh: jobdir must be an"),
        (("add", "alice", "-", "--from", "a b"), ED_LINE, 64, "tryssh: from= pattern 'a b'"),
        (("add", "alice", "-", "--expiry", "2027"), ED_LINE, 64, "tryssh: expiry must be"),
        (("add", "alice"), None, 64, "Missing argument"),
        (("remove", "bob", "nonsense"), None, 64, "tryssh: not a SHA256 fingerprint"),
        (("frobnicate",), None, 64, "No such command"),
    ],
)
def test_cli_errors_are_one_line_with_the_exit_code(
    cli: Callable[..., tuple[int, str, str]],
    args: tuple[str, ...],
    stdin: str | None,
    code: int,
    message: str,
) -> None:
    extra = ("--tryserver", TRYSERVER) if args[0] == "add" and len(args) > 2 else ()
    got, out, err = cli(*args, *extra, input=stdin)
    assert got == code, (out, err)
    assert message in err
    if message.startswith("tryssh: "):
        assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_duplicate_exit_65(cli: Callable[..., tuple[int, str, str]]) -> None:
    assert cli("add", "alice", "-", "--tryserver", TRYSERVER, input=ED_LINE)[0] == 0
    code, _, err = cli("add", "bob", "-", "--tryserver", TRYSERVER, input=ED_LINE)
    assert code == 65
    assert "is already held by user alice" in err


def test_cli_help_has_examples(cli: Callable[..., tuple[int, str, str]]) -> None:
    for args in (("--help",), ("add", "--help"), ("list", "--help"), ("remove", "--help")):
        code, out, _ = cli(*args, ak_path=None)
        assert code == 0 and "Examples:" in out and "tryssh keys" in out
    assert "--expiry WHEN" in cli("add", "--help", ak_path=None)[1]


def test_cli_defaults() -> None:
    assert default_tryserver() == venv_bin("tryserver")
    home = pwd.getpwuid(os.geteuid()).pw_dir
    assert default_authorized_keys() == os.path.join(home, ".ssh", "authorized_keys")


def test_cli_through_the_tryssh_script(tmp_path: Path) -> None:
    ak = str(tmp_path / "ak")
    tryssh = venv_bin("tryssh")
    added = run(
        [tryssh, "keys", "add", "alice", "-", "--authorized-keys", ak], input=ED_LINE.encode()
    )
    assert added.returncode == 0, added.stderr
    listed = run([tryssh, "keys", "list", "--json", "--authorized-keys", ak])
    [entry] = json.loads(listed.stdout)
    # The default tryserver is the one installed with this tryssh.
    assert (
        f'command="{venv_bin("tryserver")} --jobdir /srv/tryssh/jobdir --user alice"'
        in (entry["options"])
    )
    bad = run([tryssh, "keys", "add", "bob", "-", "--authorized-keys", ak], input=b"junk")
    assert bad.returncode == 65 and bad.stderr.startswith(b"tryssh: ")


def test_cli_takes_the_jobdir_from_the_config(
    cli: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    """The line's --jobdir wins over the config's: with --config and no --jobdir, the line
    must name the config's jobdir, not /srv/tryssh/jobdir (which tryserver would then use)."""
    config = tmp_path / "config.toml"
    config.write_text(f'jobdir = "{tmp_path}/site/jobdir"\n')
    keys = [f"ssh-ed25519 {_b64(b'ssh-ed25519', bytes([i] * 32))}" for i in range(3)]
    add = ("add", "-", "--tryserver", TRYSERVER, "--config", str(config))
    code, _, err = cli(add[0], "alice", *add[1:], input=keys[0])
    assert code == 0, err
    # An explicit --jobdir still wins.
    code, _, err = cli(add[0], "bob", *add[1:], "--jobdir", "/srv/j", input=keys[1])
    assert code == 0, err
    ak = tmp_path / "authorized_keys"
    alice, bob = list_keys(str(ak))
    assert f"--jobdir {tmp_path}/site/jobdir --config {config} --user alice" in alice.options
    assert f"--jobdir /srv/j --config {config} --user bob" in bob.options
    # A config that cannot be read is refused: nothing written.
    before = ak.read_bytes()
    missing = tmp_path / "missing.toml"
    code, _, err = cli("add", "carol", "-", "--tryserver", TRYSERVER, "--config", str(missing),
                       input=keys[2])  # fmt: skip
    assert code == 78
    assert err == (f"tryssh: {missing}: no such config file "
                   "(the jobdir is taken from it; or give --jobdir)\n")  # fmt: skip
    assert ak.read_bytes() == before


# --- a real sshd honours the lines -------------------------------------------------------------


@pytest.fixture
def jobdir(tmp_path: Path) -> Path:
    path = tmp_path / "jobdir"
    result = run([str(SETUP), str(path)])
    assert result.returncode == 0, result.stderr
    return path


def _ssh(
    server: Sshd, key: UserKey, known_hosts: Path, *words: str, data: bytes = b"",
    opts: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    return run(ssh_argv(server, key.private_path, known_hosts, *words, extra_opts=opts), input=data)


def test_real_sshd_delivers_as_the_pinned_user(
    sshd_factory: Callable[..., Sshd],
    user_key: UserKey,
    known_hosts: Callable[..., Path],
    jobdir: Path,
) -> None:
    from tryssh.core.jobfile import Job, encode_job, parse_job_file

    server = sshd_factory()
    kh = known_hosts(server)
    add_key(
        str(server.authorized_keys_path), "alice", user_key.public_line,
        tryserver=venv_bin("tryserver"), jobdir=str(jobdir),
    )  # fmt: skip
    job = encode_job(Job("j1", "main", "abc", 1, b"--- a\n+++ b\n", ["unit"], who="mallory"))
    sent = _ssh(server, user_key, kh, "buildbot", "tryserver", "--jobdir", "/elsewhere", data=job)
    assert sent.returncode == 0, sent.stderr
    name = sent.stdout.decode().strip()
    delivered = parse_job_file(str(jobdir / "new" / name))
    assert delivered.who == "alice" and delivered.patch_body == b"--- a\n+++ b\n"
    # The forced command runs instead of what the client asks for.
    shell = _ssh(server, user_key, kh, "bash", "-c", "id")
    assert shell.returncode == 64 and b"uid=" not in shell.stdout
    login = _ssh(server, user_key, kh)  # a shell request: no command at all
    assert login.returncode == 64 and b"interactive" in login.stderr
    # restrict: no pty and no port forwarding for this key.
    pty = _ssh(server, user_key, kh, "tryserver", "builders", opts=("-tt",))
    assert b"PTY allocation request failed" in pty.stderr
    forward = _ssh(
        server, user_key, kh, "tryserver", "builders",
        opts=("-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9"),
    )  # fmt: skip
    assert forward.returncode == 255
    assert b"remote port forwarding failed" in forward.stderr
    assert sorted(os.listdir(jobdir / "new")) == [name]


def test_real_sshd_enforces_from_and_expiry(
    sshd_factory: Callable[..., Sshd],
    user_key: UserKey,
    known_hosts: Callable[..., Path],
    jobdir: Path,
) -> None:
    server = sshd_factory()
    kh = known_hosts(server)
    tryserver = venv_bin("tryserver")
    opts = {"tryserver": tryserver, "jobdir": str(jobdir)}
    ak = str(server.authorized_keys_path)

    def attempt() -> tuple[int, str]:
        """Exit status of one login, and what sshd logged meanwhile."""
        start = len(server.log_text())
        code = _ssh(server, user_key, kh, "tryserver", "builders").returncode
        return code, server.log_text()[start:]

    add_key(ak, "alice", user_key.public_line, **opts, from_="127.0.0.1", expiry="20991231Z")
    code, log = attempt()
    assert code != 255 and "forced-command (key-option)" in log  # logged in
    remove_keys(ak, "alice")
    add_key(ak, "alice", user_key.public_line, **opts, from_="192.0.2.0/24")
    code, log = attempt()
    assert code == 255 and "not from a permitted host" in log
    remove_keys(ak, "alice")
    # A past expiry cannot be added with add_key; write the line itself to see sshd refuse it.
    expired = key_line("alice", user_key.public_line, **opts, expiry="20000101Z")
    server.set_authorized_keys(["# tryssh start", expired, "# tryssh end"])
    code, log = attempt()
    assert code == 255 and "Refused by key options" in log
    assert "forced-command" not in log
