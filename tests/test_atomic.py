"""atomic_group: several files put in place as one unit, whatever fails or interrupts."""

from __future__ import annotations

import os

import pytest

from napari_cvdm.atomic import atomic_group


def _group(tmp_path, stem):
    targets = [tmp_path / f"{stem}_{name}.tif" for name in ("mean", "std", "var")]
    for target in targets:
        target.write_text(f"old {target.name}")
    return targets


@pytest.mark.parametrize("links", [True, False])
@pytest.mark.parametrize("stem", ["short", "x" * 240])
def test_a_rename_that_fails_midway_puts_every_earlier_file_back(tmp_path, monkeypatch, links,
                                                                 stem):
    """Also without hard links (FAT, some network shares: the backups are renames) and with
    names so long that their first 200 characters agree (the backups shared one name)."""
    targets = _group(tmp_path, stem)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    real_replace = os.replace
    renamed = []

    def replace(src, dst):
        if str(src).endswith(".part"):
            renamed.append(dst)
            if len(renamed) == 3:
                raise OSError(1, "Operation not permitted", str(src), None, str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    if not links:
        def no_link(*args):
            raise OSError(1, "hard links not supported")
        monkeypatch.setattr(os, "link", no_link)
    with pytest.raises(OSError, match=f"cannot write .*{stem[:20]}.*_var.tif"):
        with atomic_group(targets, overwrite=True) as temps:
            for temp, target in zip(temps, targets):
                temp.write_text(f"new {target.name}")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def test_new_files_are_removed_again_and_a_backup_that_cannot_be_restored_is_kept(
        tmp_path, monkeypatch):
    """Where no file was before, a file renamed into place is removed on failure; a backup
    whose restore fails stays on disk (the only copy of the earlier output), never deleted."""
    new = tmp_path / "a_mean.tif"
    old = tmp_path / "a_std.tif"
    old.write_text("old")
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((str(src), str(dst)))
        if str(src).endswith(".part") and str(dst).endswith("a_std.tif"):
            raise KeyboardInterrupt
        if str(src).endswith(".bak"):
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with atomic_group([new, old], overwrite=True) as temps:
            for temp in temps:
                temp.write_text("new")
    assert not new.exists() and old.read_text() == "old"
    backups = list(tmp_path.glob(".a_std.tif.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == "old"
    assert not list(tmp_path.glob("*.part"))


def test_a_writer_that_says_the_disk_is_full_in_its_own_words_gets_the_plain_error(tmp_path):
    """Found by a review: safetensors reports a full disk as SafetensorError "... No space
    left on device (os error 28)" and empties its temporary file, so the disk did not look
    full any more and a training checkpoint ended in a traceback."""
    from napari_cvdm.atomic import atomic_group

    class WritersOwnError(Exception):
        pass

    target = tmp_path / "m.cvdm.safetensors"
    with pytest.raises(OSError, match="No space left on device while writing"):
        with atomic_group([target]):
            raise WritersOwnError("Error while serializing: IoError(Os { code: 28, kind: "
                                  "StorageFull, message: \"No space left on device\" })")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(WritersOwnError):  # other errors stay what they are
        with atomic_group([target]):
            raise WritersOwnError("something else")
