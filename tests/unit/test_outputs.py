"""mlpd.kinds.outputs: a job's /outputs archived without following links, even while the job swaps them."""

from __future__ import annotations

import io
import os
import tarfile
import threading

import pytest

from mlpd.kinds.outputs import iter_tar_gz


def archive(directory) -> dict[str, bytes | None]:
    data = b"".join(iter_tar_gz(str(directory)))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def test_files_and_folders_are_archived_and_links_are_not_followed(tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("root only")
    out = tmp_path / "outputs"
    (out / "model").mkdir(parents=True)
    (out / "model" / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    (out / "metrics.json").write_text("{}")
    (out / "link-to-file").symlink_to(secret)
    (out / "link-to-dir").symlink_to(tmp_path)
    os.mkfifo(out / "fifo")
    got = archive(out)
    assert got == {"metrics.json": b"{}", "model": None, "model/weights.bin": b"\x00\x01" * 1000}


def test_outputs_that_are_themselves_a_link_are_refused(tmp_path):
    (tmp_path / "outputs").symlink_to(tmp_path)
    with pytest.raises(OSError):
        iter_tar_gz(str(tmp_path / "outputs"))


def test_a_job_swapping_a_folder_for_a_link_during_the_walk_never_leaks_host_files(tmp_path):
    """The race from the review: a directory swapped for a symlink to a host path between check and use."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "shadow").write_text("SECRET-HOST-FILE")
    out = tmp_path / "outputs"
    out.mkdir()
    for i in range(30):
        (out / f"f{i:02d}").write_text("x" * 1000)
    stop = threading.Event()

    def swap():
        target = out / "sub"
        while not stop.is_set():
            try:
                target.mkdir()
                (target / "shadow").write_text("job data")
                (target / "shadow").unlink()
                target.rmdir()
                target.symlink_to(host)
                target.unlink()
            except OSError:
                pass

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        for _ in range(200):
            data = b"".join(iter_tar_gz(str(out)))
            assert b"SECRET-HOST-FILE" not in _plain(data)
    finally:
        stop.set()
        swapper.join()


def _plain(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data)


def test_a_file_that_shrinks_while_read_keeps_the_archive_valid(tmp_path):
    out = tmp_path / "outputs"
    out.mkdir()
    big = out / "growing.log"
    big.write_bytes(b"a" * 2_000_000)
    stream = iter_tar_gz(str(out))
    first = next(stream)  # the walk has started
    big.write_bytes(b"b" * 10)  # truncated under the reader
    data = first + b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.getmember("growing.log")
        content = tar.extractfile(member).read()
    assert len(content) == member.size


def test_a_reader_that_goes_away_stops_the_packer(tmp_path):
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "big").write_bytes(os.urandom(4 * 1024 * 1024))
    before = threading.active_count()
    stream = iter_tar_gz(str(out))
    next(stream)
    stream.close()
    for _ in range(50):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.1)
    assert threading.active_count() <= before
