"""The private copy of a git index that ``tryssh try`` diffs with.

git diff may refresh the stat data of the index it reads, and writes it back when it can:
tryssh never lets it write the user's. It diffs with a private copy instead, and keeps
the copy git refreshed in the user's cache (:class:`IndexCache`), so that an index whose
stat data went stale (a checkout, a touch of every file) is hashed through once, not at
every try.

Stdlib only (``shutil`` only when the kernel cannot copy): it is imported before
``tryssh try`` has loaded anything else (see :mod:`tryssh.client.diffahead`).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO


def copy_rest(src: BinaryIO, out: BinaryIO) -> None:
    """Copy what is left of *src* to the end of *out* (a new file) in the kernel: one call
    that does not hold the GIL, where a Python loop would wait for it at every chunk while
    tryssh try loads its modules (see prefetch)."""
    offset = src.tell()
    size = os.fstat(src.fileno()).st_size
    try:
        while offset < size:
            done = os.copy_file_range(src.fileno(), out.fileno(), size - offset,
                                      offset_src=offset)  # fmt: skip
            if done == 0:
                break  # the file shrank meanwhile
            offset += done
    except OSError:  # a file system without it: the portable way, from where it stopped
        import shutil

        src.seek(offset)
        shutil.copyfileobj(src, out)


def copy_index(index_path: str, target: str) -> None:
    """Copy the index at *index_path* to *target* with its mtime: git compares the index's
    mtime with its entries' to find files changed right after they were staged ("racily
    clean"); a new mtime would hide such a change from the diff."""
    with open(index_path, "rb") as f, open(target, "wb") as out:
        copy_rest(f, out)
        st = os.fstat(f.fileno())
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


class IndexCache:
    """A refreshed private copy of the git index at *index_path*, in the user's cache
    (``$XDG_CACHE_HOME/tryssh/git-index/``), valid while that index is unchanged."""

    def __init__(self, index_path: str) -> None:
        self.index_path = os.path.abspath(index_path)
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        from tryssh.core.lighthash import light_sha256

        name = light_sha256(os.fsencode(self.index_path)).hexdigest()[:32]
        self.path = os.path.join(base, "tryssh", "git-index", name)
        self.key = self.current_key()
        self.copied: tuple[int, int] | None = None  # size and mtime of the copy made from it

    def current_key(self) -> str | None:
        """What identifies the user's index as it is now (None: there is none)."""
        try:
            st = os.stat(self.index_path)
        except OSError:
            return None
        return f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"

    def unchanged(self) -> bool:
        """Whether the user's index is still the one this cache was opened for."""
        return self.key is not None and self.current_key() == self.key

    def copy_to(self, target: str) -> bool:
        """Copy the cached index to *target* if it belongs to the index as it is now, with
        the mtime git gave it (see copy_index: git's racy-entry check reads it)."""
        if self.key is None:
            return False
        try:
            with open(self.path, "rb") as f:
                key, _, mtime = f.readline().decode("ascii", "replace").rstrip("\n").rpartition(" ")
                if key != self.key or not mtime.isdigit():
                    return False
                with open(target, "wb") as out:
                    copy_rest(f, out)
            os.utime(target, ns=(int(mtime), int(mtime)))
            st = os.stat(target)
        except OSError:
            return False
        self.copied = (st.st_size, st.st_mtime_ns)
        return True

    def fill(self, target: str) -> None:
        """Make *target* the private index to diff with: the cached refreshed copy if it
        is valid, else a copy of the user's index (none if the user has none)."""
        if not self.copy_to(target) and os.path.exists(self.index_path):
            copy_index(self.index_path, target)

    def keep(self, refreshed: str) -> None:
        """Store *refreshed* (the private copy git diff refreshed); best effort."""
        if not self.unchanged():
            return  # the user's index changed meanwhile: the copy may not match it
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            st = os.stat(refreshed)
            if self.copied == (st.st_size, st.st_mtime_ns):
                return  # git left the cached copy as it was: it is still the one to keep
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            mtime = st.st_mtime_ns
            with open(refreshed, "rb") as f, open(tmp, "wb") as out:
                out.write(f"{self.key} {mtime}\n".encode("ascii"))
                out.flush()
                copy_rest(f, out)
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
