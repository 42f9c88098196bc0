"""Shipping the user's code directory: pack on the client, extract on the daemon.

``mlpd run`` packs the working directory into a deterministic tar.gz (same tree,
same bytes, same sha256), so the daemon can store archives content-addressed and
skip uploads it already has. The daemon treats every upload as hostile:
:func:`extract_archive` validates each member and only renames the result into
place once the whole archive has been written, so a refusal leaves nothing behind.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

import pathspec

from mlpd.units import format_bytes

DEFAULT_MAX_BYTES = 200 * 1024 * 1024
IGNORE_FILES = (".gitignore", ".mlpdignore")  # later files win, so .mlpdignore can re-include
ALWAYS_SKIPPED = (".git", "__pycache__")
# Folders `mlpd jobs outputs ID` downloads into the working directory: results, not code.
_DOWNLOADED_OUTPUTS = re.compile(r"outputs-[0-9a-f]{12}")
MAX_MEMBERS = 20_000  # bounds work (and inodes) on an archive of many empty files; jobs.max_code_files on the daemon
MAX_HEADER_BYTES = 64 * 1024  # a PAX or GNU long-name header; real ones are a few hundred bytes


class CodeArchiveError(ValueError):
    """A code directory or archive that cannot be shipped; the message names the path."""


@dataclass(frozen=True)
class PackedCode:
    """A packed code archive in a temp file that the caller deletes."""

    path: str
    digest: str
    size: int
    files: int


def sha256_file(path: str) -> str:
    """Return the sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_spec(directory: str) -> pathspec.GitIgnoreSpec | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        try:
            with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
                lines += f.read().splitlines()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


def _ignored(specs: list[tuple[str, pathspec.GitIgnoreSpec]], rel: str, is_dir: bool) -> bool:
    # As in git, the deepest ignore file with a matching pattern decides; a
    # trailing slash lets directory-only patterns ("build/") match.
    verdict = False
    for base, spec in specs:
        sub = rel[len(base) + 1:] if base else rel
        result = spec.check_file(sub + "/" if is_dir else sub).include
        if result is not None:
            verdict = result
    return verdict


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def iter_included_files(root: str) -> Iterator[str]:
    """Yield relative POSIX paths of the files to ship under root, sorted.

    Honours .gitignore and .mlpdignore (gitwildmatch; a file in a subdirectory
    applies to its subtree, as in git), always skips .git/ and __pycache__/, and
    never descends into an ignored directory. A symlink is yielded as itself,
    not followed; one resolving outside root raises CodeArchiveError naming it.
    Sockets, fifos and devices are skipped: they cannot be shipped.
    """
    real_root = os.path.realpath(root)
    found: list[str] = []

    def walk(rel_dir: str, specs: list) -> None:
        directory = os.path.join(root, rel_dir) if rel_dir else root
        spec = _load_spec(directory)
        if spec is not None:
            specs = specs + [(rel_dir, spec)]
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name in ALWAYS_SKIPPED or (_DOWNLOADED_OUTPUTS.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if _ignored(specs, rel, is_dir):
                continue
            if is_dir:
                walk(rel, specs)
            elif entry.is_symlink():
                if not _inside(os.path.realpath(entry.path), real_root):
                    raise CodeArchiveError(
                        f"{rel}: symlink points outside the code directory (-> {os.readlink(entry.path)}); "
                        "copy what it points to into the directory, or add it to .mlpdignore")
                found.append(rel)
            elif entry.is_file(follow_symlinks=False):
                found.append(rel)

    walk("", [])
    # Sort the full paths (not per directory) so order is independent of how names nest.
    yield from sorted(found)


def _link_target(root: str, rel: str) -> str:
    """The link text to store: as written when relative and inside root, else re-derived relative."""
    path = os.path.join(root, rel)
    target = os.readlink(path)
    if not os.path.isabs(target) and not os.path.normpath(os.path.join(os.path.dirname(rel), target)).startswith(".."):
        return target
    # Absolute links would not survive extraction elsewhere; point at the same file relatively.
    return os.path.relpath(os.path.realpath(path), os.path.realpath(os.path.dirname(path)))


def _tarinfo(rel: str, st: os.stat_result) -> tarfile.TarInfo:
    # Everything that varies between machines or checkouts is pinned, so only
    # content, names and the executable bit decide the digest.
    info = tarfile.TarInfo(rel)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    info.mode = 0o755 if st.st_mode & 0o111 else 0o644
    return info


def pack_directory(root: str, max_bytes: int = DEFAULT_MAX_BYTES,
                   progress: Callable[[int, int], None] | None = None) -> PackedCode:
    """Pack root into a deterministic temp .tar.gz and return its path, digest, size and file count.

    Entries are sorted with mtime 0, uid/gid 0, empty owner names and mode 0644/0755,
    and the gzip header carries no time or name, so the same tree always gives the
    same digest. ``progress(bytes_done, bytes_total)`` is called after each file.
    Raises CodeArchiveError, deleting the temp file, when the archive exceeds max_bytes.
    """
    rels = list(iter_included_files(root))
    stats = {rel: os.lstat(os.path.join(root, rel)) for rel in rels}
    total = sum(st.st_size for st in stats.values() if stat.S_ISREG(st.st_mode))
    fd, path = tempfile.mkstemp(prefix="mlpd-code-", suffix=".tar.gz")
    done = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for rel in rels:
                        st, info = stats[rel], _tarinfo(rel, stats[rel])
                        if stat.S_ISLNK(st.st_mode):
                            info.type, info.linkname = tarfile.SYMTYPE, _link_target(root, rel)
                            tar.addfile(info)
                        else:
                            with open(os.path.join(root, rel), "rb") as f:
                                info.size = os.fstat(f.fileno()).st_size
                                tar.addfile(info, f)
                            done += info.size
                        # Stop early on a huge tree; the compressed bytes so far already exceed the limit.
                        if raw.tell() > max_bytes:
                            _too_big(raw.tell(), max_bytes, stats)
                        if progress is not None:
                            progress(done, total)
        size = os.path.getsize(path)
        if size > max_bytes:
            _too_big(size, max_bytes, stats)
        return PackedCode(path=path, digest=sha256_file(path), size=size, files=len(rels))
    except BaseException:
        os.unlink(path)
        raise


def _too_big(size: int, limit: int, stats: dict[str, os.stat_result]) -> None:
    largest = sorted(stats, key=lambda r: stats[r].st_size, reverse=True)[:3]
    names = ", ".join(f"{r} ({format_bytes(stats[r].st_size)})" for r in largest)
    raise CodeArchiveError(
        f"code archive is {format_bytes(size)}, over the {format_bytes(limit)} limit; largest files: {names}. "
        "List data, checkpoints and virtualenvs in .mlpdignore (gitignore syntax) to leave them out")


class _CappedTarInfo(tarfile.TarInfo):
    """tarfile's member header, refusing an extended header larger than MAX_HEADER_BYTES
    before tarfile reads it into memory (a 1 GiB PAX header is 1 GiB of RAM otherwise)."""

    def _capped(self) -> None:
        if self.size > MAX_HEADER_BYTES:
            raise CodeArchiveError(f"{self.name or 'a member'}: extended header of {format_bytes(self.size)} "
                                   f"(over {format_bytes(MAX_HEADER_BYTES)}); refused")

    def _proc_pax(self, tarfile):
        self._capped()
        return super()._proc_pax(tarfile)

    def _proc_gnulong(self, tarfile):
        self._capped()
        return super()._proc_gnulong(tarfile)

    def _proc_sparse(self, tarfile):
        raise CodeArchiveError(f"{self.name}: sparse files are not allowed in a code archive")


def _check_member(m: tarfile.TarInfo) -> str:
    """Return the member's normalised relative name, or raise naming why it is refused."""
    name = m.name
    if name.startswith(("/", "\\")):
        raise CodeArchiveError(f"{name}: absolute paths are not allowed in a code archive")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CodeArchiveError(f"{name}: '..' components are not allowed in a code archive")
    if m.islnk():
        raise CodeArchiveError(f"{name}: hard links are not allowed in a code archive")
    if m.issym():
        target = m.linkname
        resolved = os.path.normpath(os.path.join(*parts[:-1], target)) if parts[:-1] else os.path.normpath(target)
        if not target or os.path.isabs(target) or resolved == ".." or resolved.startswith("../"):
            raise CodeArchiveError(f"{name}: symlink points outside the archive (-> {target})")
    elif not (m.isreg() or m.isdir()):
        raise CodeArchiveError(f"{name}: devices, fifos and other special files are not allowed")
    return "/".join(parts)


def _make_parents(tmp: str, rel: str, member: str) -> None:
    # mkdir one level at a time and lstat what exists, so a path never passes
    # through a symlink or file an earlier member planted.
    path = tmp
    for part in rel.split("/")[:-1]:
        path = os.path.join(path, part)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise CodeArchiveError(f"{member}: path goes through a symlink or file in the archive") from None


def extract_archive(archive_path: str, dest: str, max_bytes: int = DEFAULT_MAX_BYTES,
                    max_unpacked_bytes: int = 4 * DEFAULT_MAX_BYTES, max_members: int = MAX_MEMBERS) -> int:
    """Safely extract an uploaded (possibly hostile) tar.gz into dest, which must not exist yet.

    Refuses, with CodeArchiveError naming the member: absolute paths, '..'
    components, hard links, symlinks whose target escapes dest, devices and
    fifos, duplicate paths, more than max_unpacked_bytes in total, more than
    max_members members (counted as they are read, so an archive of many empty
    files costs bounded work and inodes), or an archive over max_bytes. Extracts into a temp sibling of dest and renames it
    into place only when all is valid, so a failure leaves nothing behind. Files
    get 0644 (0755 if executable), dirs 0755. Returns the number of files
    (symlinks included, as pack_directory counts them). Raises FileExistsError
    when dest exists.
    """
    dest = os.path.abspath(dest)
    if os.path.lexists(dest):
        raise FileExistsError(f"{dest} already exists")
    size = os.path.getsize(archive_path)
    if size > max_bytes:
        raise CodeArchiveError(f"code archive is {format_bytes(size)}, over the {format_bytes(max_bytes)} limit")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.", suffix=".partial", dir=os.path.dirname(dest))
    try:
        files = _extract_into(archive_path, tmp, max_unpacked_bytes, max_members)
        os.chmod(tmp, 0o755)
        os.rename(tmp, dest)
        return files
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _extract_into(archive_path: str, tmp: str, max_unpacked_bytes: int, max_members: int = MAX_MEMBERS) -> int:
    files = unpacked = count = 0
    links: list[str] = []
    try:
        tar = tarfile.open(archive_path, mode="r:gz", tarinfo=_CappedTarInfo)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CodeArchiveError(f"{os.path.basename(archive_path)}: not a valid tar.gz archive ({e})") from None
    with tar:
        try:
            for m in tar:
                count += 1
                if count > max_members:
                    raise CodeArchiveError(f"{m.name}: the archive has more than {max_members} members (files, directories "
                                           "and links; jobs.max_code_files); add generated or bulky folders to .mlpdignore")
                rel = _check_member(m)
                if not rel:
                    continue  # the archive's own "./" entry
                path = os.path.join(tmp, rel)
                _make_parents(tmp, rel, m.name)
                if m.isdir():
                    try:
                        os.mkdir(path, 0o755)
                    except FileExistsError:
                        if not stat.S_ISDIR(os.lstat(path).st_mode):
                            raise CodeArchiveError(f"{m.name}: duplicate path in the archive") from None
                    continue
                try:
                    if m.issym():
                        os.symlink(m.linkname, path)
                        links.append(rel)
                    else:
                        unpacked += m.size
                        if unpacked > max_unpacked_bytes:
                            raise CodeArchiveError(f"{m.name}: archive unpacks to more than {format_bytes(max_unpacked_bytes)}")
                        # O_EXCL|O_NOFOLLOW: never write through a planted symlink or over an earlier member.
                        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                        with os.fdopen(fd, "wb") as out, tar.extractfile(m) as src:  # type: ignore[union-attr]  # a regular file (_check_member)
                            shutil.copyfileobj(src, out)
                            os.fchmod(out.fileno(), 0o755 if m.mode & 0o111 else 0o644)
                except FileExistsError:
                    raise CodeArchiveError(f"{m.name}: duplicate path in the archive") from None
                files += 1
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise CodeArchiveError(f"{os.path.basename(archive_path)}: corrupt archive ({e})") from None
    # Each link was checked on its own; a chain (a -> ".", b -> "a/../x") can still
    # escape, so resolve every link for real now that the whole tree exists.
    real_tmp = os.path.realpath(tmp)
    for rel in links:
        if not _inside(os.path.realpath(os.path.join(tmp, rel)), real_tmp):
            raise CodeArchiveError(f"{rel}: symlink resolves outside the archive (-> {os.readlink(os.path.join(tmp, rel))})")
    return files
