"""Tests for mlpd.kinds.codeship: packing the code directory and extracting uploads safely."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from mlpd.kinds.codeship import (
    CodeArchiveError,
    PackedCode,
    extract_archive,
    iter_included_files,
    pack_directory,
    sha256_file,
)


def write(root, rel, content="x", mode=None):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    if mode is not None:
        path.chmod(mode)
    return path


@pytest.fixture
def project(tmp_path):
    """A realistic ML project: code, a venv, data, checkpoints, git metadata."""
    root = tmp_path / "proj"
    write(root, "train.py", "print('train')\n")
    write(root, "run.sh", "#!/bin/sh\npython train.py\n", mode=0o755)
    write(root, "pkg/__init__.py", "")
    write(root, "pkg/model.py", "class Model: pass\n")
    write(root, "pkg/__pycache__/model.cpython-311.pyc", "bytecode")
    write(root, ".git/HEAD", "ref: refs/heads/main\n")
    write(root, ".git/objects/ab/cdef", "blob")
    write(root, ".venv/bin/python", "elf")
    write(root, "data/big.bin", "0" * 1000)
    write(root, "data/small.csv", "a,b\n")
    write(root, "logs/run1.log", "log")
    write(root, "logs/keep.log", "important")
    write(root, "checkpoints/epoch1.pt", "weights")
    write(root, ".gitignore", ".venv/\n*.log\n!keep.log\ndata/*\n!data/small.csv\n")
    write(root, ".mlpdignore", "checkpoints/\n")
    return root


def packed(root, **kw) -> PackedCode:
    return pack_directory(str(root), **kw)


@pytest.fixture
def cleanup():
    paths = []
    yield paths
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)


def make_tar(path, members):
    """Write a tar.gz from (TarInfo, bytes-or-None) pairs: hand-built hostile archives."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return str(path)


def member(name, type=tarfile.REGTYPE, linkname="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = type, linkname, mode
    return info


# ---------------------------------------------------------------- which files ship


def test_ignore_files_honoured_with_negation_and_directories(project):
    files = list(iter_included_files(str(project)))
    assert files == [
        ".gitignore",
        ".mlpdignore",
        "data/small.csv",  # re-included by !data/small.csv
        "logs/keep.log",  # re-included by !keep.log
        "pkg/__init__.py",
        "pkg/model.py",
        "run.sh",
        "train.py",
    ]


def test_git_and_pycache_always_skipped_even_without_ignore_files(tmp_path):
    write(tmp_path, ".git/config", "[core]")
    write(tmp_path, "a/__pycache__/x.pyc", "b")
    write(tmp_path, "a/b.py", "")
    assert list(iter_included_files(str(tmp_path))) == ["a/b.py"]


def test_gitignore_in_subdirectory_applies_to_its_subtree_only(tmp_path):
    write(tmp_path, "sub/.gitignore", "*.tmp\n/local.txt\n")
    write(tmp_path, "sub/a.tmp")
    write(tmp_path, "sub/deeper/b.tmp")
    write(tmp_path, "sub/local.txt")
    write(tmp_path, "sub/deeper/local.txt")
    write(tmp_path, "top.tmp")
    write(tmp_path, "local.txt")
    assert list(iter_included_files(str(tmp_path))) == [
        "local.txt", "sub/.gitignore", "sub/deeper/local.txt", "top.tmp",
    ]


def test_subdirectory_gitignore_can_reinclude(tmp_path):
    write(tmp_path, ".gitignore", "*.json\n")
    write(tmp_path, "conf/.gitignore", "!*.json\n")
    write(tmp_path, "x.json")
    write(tmp_path, "conf/y.json")
    assert list(iter_included_files(str(tmp_path))) == [".gitignore", "conf/.gitignore", "conf/y.json"]


def test_mlpdignore_overrides_gitignore(tmp_path):
    write(tmp_path, ".gitignore", "config.local.yaml\n")
    write(tmp_path, ".mlpdignore", "!config.local.yaml\nnotebooks/\n")
    write(tmp_path, "config.local.yaml")
    write(tmp_path, "notebooks/explore.ipynb")
    assert list(iter_included_files(str(tmp_path))) == [".gitignore", ".mlpdignore", "config.local.yaml"]


def test_directory_pattern_does_not_match_a_file_of_that_name(tmp_path):
    write(tmp_path, ".mlpdignore", "build/\n")
    write(tmp_path, "build")  # a file, not a directory
    write(tmp_path, "src/build/out.o")
    assert list(iter_included_files(str(tmp_path))) == [".mlpdignore", "build"]


def test_symlink_inside_root_is_included_not_followed(tmp_path):
    write(tmp_path, "configs/base.yaml", "lr: 0.1")
    (tmp_path / "config.yaml").symlink_to("configs/base.yaml")
    (tmp_path / "cfgdir").symlink_to("configs", target_is_directory=True)
    assert list(iter_included_files(str(tmp_path))) == ["cfgdir", "config.yaml", "configs/base.yaml"]


def test_symlink_outside_root_refused_naming_it(tmp_path):
    root = tmp_path / "proj"
    write(root, "train.py")
    write(tmp_path, "secret.txt", "s")
    (root / "sub").mkdir()
    (root / "sub" / "leak").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(CodeArchiveError, match=r"sub/leak: symlink points outside"):
        list(iter_included_files(str(root)))


def test_ignored_symlink_outside_root_is_fine(tmp_path):
    root = tmp_path / "proj"
    write(root, ".mlpdignore", "datasets\n")
    (root / "datasets").symlink_to("/")
    assert list(iter_included_files(str(root))) == [".mlpdignore"]


# ---------------------------------------------------------------- packing


def test_pack_is_deterministic_and_ignores_mtime(project, cleanup):
    first = packed(project)
    cleanup.append(first.path)
    os.utime(project / "train.py", (1_000_000, 1_000_000))
    second = packed(project)
    cleanup.append(second.path)
    assert first.path != second.path
    assert first.digest == second.digest == sha256_file(second.path)
    assert first.size == os.path.getsize(first.path)
    assert first.files == 8


def test_pack_digest_changes_with_content_and_exec_bit(project, cleanup):
    base = packed(project)
    cleanup.append(base.path)
    (project / "train.py").chmod(0o755)
    chmoded = packed(project)
    cleanup.append(chmoded.path)
    write(project, "train.py", "print('changed')\n")
    changed = packed(project)
    cleanup.append(changed.path)
    assert len({base.digest, chmoded.digest, changed.digest}) == 3


def test_pack_metadata_is_normalised(project, cleanup):
    result = packed(project)
    cleanup.append(result.path)
    with open(result.path, "rb") as f:
        header = f.read(10)
    assert header[4:8] == b"\0\0\0\0"  # gzip mtime
    with tarfile.open(result.path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    modes = {m.name: m.mode for m in members}
    assert modes["run.sh"] == 0o755 and modes["train.py"] == 0o644


def test_pack_progress_reports_bytes(project, cleanup):
    calls = []
    result = packed(project, progress=lambda done, total: calls.append((done, total)))
    cleanup.append(result.path)
    assert len(calls) == result.files
    total = calls[0][1]
    assert all(t == total for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert calls[-1][0] == total > 0


def test_pack_over_limit_refused_and_temp_file_removed(tmp_path, monkeypatch):
    write(tmp_path, "weights.bin", os.urandom(64 * 1024).hex())
    write(tmp_path, "train.py")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(CodeArchiveError) as e:
        pack_directory(str(tmp_path), max_bytes=10_000)
    msg = str(e.value)
    assert "limit" in msg and ".mlpdignore" in msg and "weights.bin" in msg
    assert os.listdir(tmp_path / "tmp") == []


def test_absolute_symlink_inside_root_is_stored_relative(tmp_path, cleanup):
    root = tmp_path / "proj"
    write(root, "configs/base.yaml", "lr: 0.1")
    (root / "sub").mkdir()
    (root / "sub" / "cfg.yaml").symlink_to(root / "configs" / "base.yaml")
    result = packed(root)
    cleanup.append(result.path)
    with tarfile.open(result.path) as tar:
        link = tar.getmember("sub/cfg.yaml")
    assert link.issym() and link.linkname == "../configs/base.yaml"


# ---------------------------------------------------------------- extraction


def test_round_trip_preserves_contents_exec_bit_and_symlinks(project, tmp_path, cleanup):
    (project / "latest.py").symlink_to("train.py")
    result = packed(project)
    cleanup.append(result.path)
    dest = tmp_path / "store" / result.digest
    assert extract_archive(result.path, str(dest)) == result.files == 9
    assert (dest / "train.py").read_text() == "print('train')\n"
    assert (dest / "pkg/model.py").read_text() == "class Model: pass\n"
    assert (dest / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (dest / "train.py").stat().st_mode & 0o777 == 0o644
    assert (dest / "pkg").stat().st_mode & 0o777 == 0o755
    assert dest.stat().st_mode & 0o777 == 0o755
    assert os.readlink(dest / "latest.py") == "train.py"
    assert not (dest / "checkpoints").exists() and not (dest / ".git").exists()
    assert os.listdir(dest.parent) == [result.digest]  # no temp sibling left


def test_extract_accepts_dot_slash_names_and_dir_members(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", [
        (member("./", tarfile.DIRTYPE, mode=0o700), None),
        (member("./src", tarfile.DIRTYPE, mode=0o700), None),
        (member("./src/main.py", mode=0o600), b"print(1)\n"),
    ])
    dest = tmp_path / "out"
    assert extract_archive(archive, str(dest)) == 1
    assert (dest / "src/main.py").read_bytes() == b"print(1)\n"
    assert (dest / "src").stat().st_mode & 0o777 == 0o755
    assert (dest / "src/main.py").stat().st_mode & 0o777 == 0o644


HOSTILE = {
    "dotdot": ([(member("../evil"), b"pwned")], r"\.\./evil: '\.\.' components"),
    "nested_dotdot": ([(member("ok/../../evil"), b"pwned")], r"ok/\.\./\.\./evil: '\.\.'"),
    "absolute": ([(member("/abs"), b"pwned")], r"/abs: absolute paths"),
    "symlink_abs": ([(member("passwd", tarfile.SYMTYPE, "/etc/passwd"), None)], r"passwd: symlink points outside"),
    "symlink_up": ([(member("a/x", tarfile.SYMTYPE, "../../x"), None)], r"a/x: symlink points outside"),
    "hardlink": ([(member("a.txt"), b"a"), (member("b.txt", tarfile.LNKTYPE, "a.txt"), None)],
                 r"b\.txt: hard links"),
    "fifo": ([(member("pipe", tarfile.FIFOTYPE), None)], r"pipe: devices, fifos"),
    "chardev": ([(member("null", tarfile.CHRTYPE), None)], r"null: devices, fifos"),
    "write_through_link": ([(member("d", tarfile.SYMTYPE, "."), None), (member("d/f.txt"), b"x")],
                           r"d/f\.txt: path goes through a symlink"),
    "symlink_chain": ([(member("a", tarfile.SYMTYPE, "."), None),
                       (member("b", tarfile.SYMTYPE, "a/../escape"), None)],
                      r"b: symlink resolves outside"),
    "duplicate": ([(member("a.txt"), b"one"), (member("a.txt"), b"two")], r"a\.txt: duplicate path"),
    "unpacked_too_big": ([(member("one.bin"), b"x" * 600), (member("two.bin"), b"x" * 600)],
                         r"two\.bin: archive unpacks to more than"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_refused_and_nothing_left_behind(tmp_path, case):
    members, pattern = HOSTILE[case]
    archive = make_tar(tmp_path / "evil.tar.gz", members)
    store = tmp_path / "store"
    store.mkdir()
    dest = store / "code"
    with pytest.raises(CodeArchiveError, match=pattern):
        extract_archive(archive, str(dest), max_unpacked_bytes=1000)
    assert not os.path.lexists(dest)
    assert os.listdir(store) == []
    assert not (tmp_path / "evil").exists() and not (tmp_path / "escape").exists()


def test_archive_over_size_limit_refused(tmp_path):
    archive = make_tar(tmp_path / "big.tar.gz", [(member("noise.bin"), os.urandom(5000))])
    dest = tmp_path / "out"
    with pytest.raises(CodeArchiveError, match="over the .* limit"):
        extract_archive(archive, str(dest), max_bytes=1000)
    assert not dest.exists()


def test_not_a_tarball_refused(tmp_path):
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"this is not gzip at all")
    with pytest.raises(CodeArchiveError, match="bogus.tar.gz: not a valid tar.gz"):
        extract_archive(str(bogus), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_truncated_archive_refused(tmp_path):
    archive = make_tar(tmp_path / "t.tar.gz", [(member("a.bin"), os.urandom(50_000))])
    data = open(archive, "rb").read()
    (tmp_path / "t.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CodeArchiveError, match="corrupt|not a valid"):
        extract_archive(archive, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_existing_dest_refused_and_untouched(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", [(member("a.txt"), b"new")])
    dest = tmp_path / "out"
    write(dest, "a.txt", "old")
    with pytest.raises(FileExistsError):
        extract_archive(archive, str(dest))
    assert (dest / "a.txt").read_text() == "old"


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_huge_extended_header_refused_before_it_is_read(tmp_path, kind):
    """A small upload whose PAX (or GNU long-name) header claims 64 MiB is refused at once,
    without reading the header into memory, and leaves nothing behind."""
    import gzip
    import resource
    import time

    size = 64 * 1024 * 1024
    header = tarfile.TarInfo("././@PaxHeader" if kind == tarfile.XHDTYPE else "././@LongLink")
    header.type, header.size = kind, size
    path = tmp_path / "bomb.tar.gz"
    with gzip.open(path, "wb", compresslevel=9) as gz:
        gz.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        block = b"7" * (1 << 20)
        for _ in range(size >> 20):
            gz.write(block)
    assert path.stat().st_size < 1024 * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(CodeArchiveError, match="extended header of 64 MiB"):
        extract_archive(str(path), str(tmp_path / "dest"))
    assert time.monotonic() - started < 5
    # ru_maxrss is in KiB: the header was never allocated (it would add 64 MiB).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 * 1024
    assert sorted(os.listdir(tmp_path)) == ["bomb.tar.gz"]


def test_downloaded_outputs_folders_are_not_shipped_as_code(tmp_path):
    from mlpd.kinds.codeship import iter_included_files

    (tmp_path / "train.py").write_text("x")
    (tmp_path / "outputs-0123456789ab").mkdir()
    (tmp_path / "outputs-0123456789ab" / "model.bin").write_text("big")
    (tmp_path / "outputs-notajob").mkdir()
    (tmp_path / "outputs-notajob" / "keep.txt").write_text("k")
    assert list(iter_included_files(str(tmp_path))) == ["outputs-notajob/keep.txt", "train.py"]


def _empty_members_archive(path, n):
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for i in range(n):
            tar.addfile(tarfile.TarInfo(f"f{i}"))
    return path


def test_an_archive_of_many_empty_members_is_refused_while_read_and_leaves_nothing(tmp_path):
    # Issue 22: 200,000 empty members in a 1.2 MB archive were accepted (inodes); the default cap is 20,000.
    archive = _empty_members_archive(tmp_path / "many.tar.gz", 20_001)
    dest = tmp_path / "store" / "code"
    with pytest.raises(CodeArchiveError, match=r"more than 20000 members .*jobs.max_code_files.*\.mlpdignore"):
        extract_archive(str(archive), str(dest))
    assert not dest.exists() and os.listdir(tmp_path / "store") == []
    small = _empty_members_archive(tmp_path / "small.tar.gz", 11)
    with pytest.raises(CodeArchiveError, match="more than 10 members"):
        extract_archive(str(small), str(dest), max_members=10)
    assert extract_archive(str(small), str(dest), max_members=11) == 11
