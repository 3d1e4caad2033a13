"""latenttracer.writable: output paths checked before any work, and where intermediate files go."""

import os

import pytest

from latenttracer.writable import check_writable, scratch_folder


def test_a_new_file_or_folder_under_a_writable_folder_passes(tmp_path):
    check_writable(tmp_path / "out.csv", "--out")
    check_writable(tmp_path / "deeper" / "still" / "out.csv", "--out")
    check_writable(tmp_path / "cache", "--cache", folder=True)
    (tmp_path / "cache").mkdir()
    check_writable(tmp_path / "cache", "--cache", folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing left behind


def test_a_file_where_a_folder_is_needed_and_the_reverse_are_errors_naming_the_flag(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ValueError, match=r"^--cache .*taken: is a file, not a folder$"):
        check_writable(tmp_path / "taken", "--cache", folder=True)
    with pytest.raises(ValueError, match=r"^--out .*: is a folder, not a file$"):
        check_writable(tmp_path, "--out")
    with pytest.raises(ValueError, match=r"^--out .*taken/sub/out.csv: .*taken is a file, not a folder$"):
        check_writable(tmp_path / "taken" / "sub" / "out.csv", "--out")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a folder this user cannot write")
def test_a_read_only_folder_is_an_error_naming_it(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=r"^--html .*: cannot write in .*locked"):
            check_writable(locked / "page.html", "--html")
    finally:
        locked.chmod(0o700)


def test_scratch_folder_is_next_to_the_store_or_a_fresh_temporary_one(tmp_path):
    assert scratch_folder(tmp_path / "scores", "perturbed") == tmp_path / "perturbed"
    a, b = scratch_folder(None, "perturbed"), scratch_folder(None, "perturbed")
    try:
        assert a != b and a.is_dir() and b.is_dir() and a.name.startswith("latenttracer-perturbed-")
    finally:
        a.rmdir()
        b.rmdir()
