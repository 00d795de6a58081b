"""The environment tryssh runs the VCS programs (git, hg, svn) in.

Stdlib only and tiny: it is imported before ``tryssh try`` has loaded anything else
(see :mod:`tryssh.client.diffahead`).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


def tool_env(extra: Mapping[str, str] | None = None, *, locale: str = "C") -> dict[str, str]:
    """This process's environment, with the settings that make the tools' output stable
    and keep them read-only, plus *extra*."""
    env = dict(os.environ)
    # A fixed locale keeps messages parseable; svn needs a UTF-8 one for non-ASCII paths.
    env["LC_ALL"] = locale
    env.pop("LANGUAGE", None)
    env["HGPLAIN"] = "1"  # hg: ignore user settings that change output (aliases, i18n, ...)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_OPTIONAL_LOCKS"] = "0"  # read-only commands must not take the index lock
    if extra:
        env.update(extra)
    return env
