"""tryssh's reading of known_hosts files (``sshclient.KnownHosts``): like OpenSSH, a line
it cannot read is skipped, and whatever else the file holds, the lines it can read count."""

from __future__ import annotations

import base64
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tryssh.client.sshclient import KnownHosts

# A real ed25519 host key (the line a server's known_hosts entry carries).
ED25519 = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C7okWi0dh2l9GKJl"
TYPES = ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ssh-dss",
         "sk-ssh-ed25519@openssh.com", "ssh-ed25519-cert-v01@openssh.com", "x"]  # fmt: skip


def blob(key_type: str, body: bytes) -> str:
    """A key blob of *key_type* whose fields are *body*: well framed, any content."""
    name = key_type.encode()
    return base64.b64encode(len(name).to_bytes(4, "big") + name + body).decode()


line = st.one_of(
    # A key of a known or unknown type with any fields (paramiko raised UnknownKeyType,
    # OverflowError, struct.error ... for them).
    st.builds(lambda marker, t, body: f"{marker}h,[h]:2 {t} {blob(t, body)}",
              st.sampled_from(["", "@cert-authority ", "@revoked "]), st.sampled_from(TYPES),
              st.binary(max_size=80)),
    # Anything at all.
    st.text(max_size=60).map(lambda text: text.replace("\n", " ")),
)  # fmt: skip


@settings(max_examples=400)
@given(lines=st.lists(line, max_size=6))
def test_any_line_is_read_or_skipped_and_a_good_line_still_counts(
    tmp_path_factory, lines: list[str]
) -> None:
    path = tmp_path_factory.mktemp("kh") / "known_hosts"
    path.write_text("\n".join([*lines, f"goodhost ssh-ed25519 {ED25519}"]) + "\n")
    known = KnownHosts([str(path)], [])
    assert "ssh-ed25519" in known.known_types("goodhost")
    known.authorities("[h]:2")
    known.known_types("h")


def test_an_old_dsa_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"old ssh-dss {blob('ssh-dss', b'x' * 40)}\ngood ssh-ed25519 {ED25519}\n")
    known = KnownHosts([str(path)], [])
    assert known.known_types("old") == [] and known.known_types("good") == ["ssh-ed25519"]
