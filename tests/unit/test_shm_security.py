"""Zone files another local user can neither take over nor put anything in the way of: each
attack is made as user ``nobody`` in a forked child — at the names an instance's files had before
they moved into its private folder (predictable: ``ngxsim.<pid>.<start>.<zone>``), and, as if the
folder's secret had been guessed, at the folder itself."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

import pytest

from ngxsim.core.instance import MASTER, STANDALONE, Instance, current_instance
from ngxsim.core.instance import process_start_time
from ngxsim.core.shm import (
    JANITOR_MARKER, SHM_DIR_ENV, ZoneError, attach_zone, ensure_janitor, instance_folder, remove_stale_zone_files,
    remove_zone_files, shm_dir, zone_path,
)
from ngxsim.testing import wait_for

from test_shm import _child, _exit_status

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user (nobody)")


def as_nobody(fn) -> None:
    """Run ``fn`` as uid/gid nobody in a forked child; fails the test if it fails."""

    def run():
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        fn()

    assert _exit_status(_child(run)) == 0


def _planted(tag: str) -> list[str]:
    """The predictable names of instance ``tag``'s files in the shm folder itself."""
    return [os.path.join(shm_dir(), f"ngxsim.{tag}.{name}") for name in ("bus", JANITOR_MARKER, "0" * 32)]


@pytest.fixture
def instance(shm_leftovers):
    inst = current_instance(STANDALONE)
    yield inst
    for path in _planted(inst.tag):  # what nobody planted (root may remove it)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    remove_zone_files(inst)
    shutil.rmtree(instance_folder(inst), ignore_errors=True)  # a folder nobody planted there


def _plant_everything(tag: str) -> None:
    file, marker, folder = _planted(tag)

    def plant():
        for path in (file, marker):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            os.fchmod(fd, 0o666)
            os.write(fd, b"forged")
            os.close(fd)
        os.mkdir(folder, 0o777)

    as_nobody(plant)


def test_what_another_user_plants_at_the_predictable_names_is_not_in_the_way(instance):
    _plant_everything(instance.tag)
    zone = attach_zone(instance, "bus", 4096)
    assert zone.fresh and os.path.dirname(zone.path) == instance_folder(instance) not in _planted(instance.tag)
    zone.close()
    for path in _planted(instance.tag)[:2]:
        with open(path, "rb") as fh:
            assert fh.read() == b"forged"  # neither adopted nor initialised nor removed


def test_a_janitor_marker_planted_by_another_user_does_not_stop_the_janitor(shm_leftovers):
    # a real master stand-in (a child that waits), so the janitor started for it ends with it
    r, w = os.pipe()
    master = _child(lambda: os.read(r, 1))
    instance = Instance(master, process_start_time(master), MASTER)
    try:
        _plant_everything(instance.tag)
        assert ensure_janitor(instance)  # started, whatever was planted
        folder = instance_folder(instance)
        assert os.path.exists(os.path.join(folder, JANITOR_MARKER))
    finally:
        os.write(w, b"x")
        assert _exit_status(master) == 0
        wait_for(lambda: not os.path.exists(instance_folder(instance)), 10, what="the janitor to remove the folder")
        for path in _planted(instance.tag):
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)


def test_another_user_can_neither_compute_the_folder_nor_enter_it(instance):
    zone = attach_zone(instance, "bus", 4096)
    folder = instance_folder(instance)

    def attack():
        for attempt in (lambda: open(f"/proc/{instance.pid}/auxv", "rb").read(),  # the folder's secret
                        lambda: os.listdir(folder),
                        lambda: os.close(os.open(os.path.join(folder, "other"), os.O_CREAT | os.O_WRONLY, 0o666)),
                        lambda: os.open(zone.path, os.O_RDONLY)):
            try:
                attempt()
            except PermissionError:
                continue
            raise AssertionError(f"{attempt} was allowed")

    as_nobody(attack)
    assert os.listdir(folder) == ["bus"]
    zone.close()


@pytest.mark.parametrize("kind", ["folder", "link"])
def test_a_folder_planted_at_the_guessed_name_is_refused_and_never_followed(instance, tmp_path, kind):
    folder = instance_folder(instance)
    target = tmp_path / "root-would-write-here"
    os.chmod(tmp_path, 0o777)
    as_nobody(lambda: os.mkdir(folder, 0o777) if kind == "folder" else os.symlink(tmp_path, folder))
    try:
        with pytest.raises(ZoneError, match=f"zone folder {folder} is not this server's private folder"):
            attach_zone(instance, "bus", 4096)
        assert not target.exists() and os.listdir(tmp_path) == []
    finally:
        os.rmdir(folder) if kind == "folder" else os.unlink(folder)


def test_an_own_file_open_to_others_is_refused(instance):
    path = zone_path(instance, "other")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o644)
    os.close(fd)
    with pytest.raises(ZoneError, match="has mode 0644, open to other users"):
        attach_zone(instance, "other", 4096)


def test_a_zone_file_is_created_private_in_a_private_folder_and_reattached(instance):
    zone = attach_zone(instance, "bus", 4096)
    st, folder = os.stat(zone.path), os.lstat(os.path.dirname(zone.path))
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert stat.S_ISDIR(folder.st_mode) and stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.geteuid()
    assert not attach_zone(instance, "bus", 4096).fresh
    zone.close()


@pytest.fixture
def sticky_shm_dir(monkeypatch):
    """A sticky, world-writable folder of its own, like /dev/shm, that no other server's janitor
    sweeps (one starting on this machine meanwhile would remove a stale file of /dev/shm)."""
    path = tempfile.mkdtemp(prefix="ngxsim-test-shm-", dir="/dev/shm")
    os.chmod(path, 0o1777)
    monkeypatch.setenv(SHM_DIR_ENV, path)
    yield path
    shutil.rmtree(path)


def test_another_users_stale_file_is_left_without_an_error(instance, sticky_shm_dir):
    """As nobody, a stale file of root's cannot be removed (sticky /dev/shm): no traceback, it stays."""
    child = _child(lambda: None)
    assert _exit_status(child) == 0
    dead = Instance(child, 1, STANDALONE)  # that pid has exited: a dead instance
    path = zone_path(dead, "stale")
    legacy = os.path.join(shm_dir(), f"ngxsim.{dead.tag}.old")  # as files were named before folders
    open(path, "wb").close()
    open(legacy, "wb").close()
    try:
        as_nobody(lambda: remove_stale_zone_files())
        assert os.path.exists(path) and os.path.exists(legacy)
    finally:
        os.unlink(path)
    assert shm_dir() == os.path.dirname(os.path.dirname(path))
    assert remove_stale_zone_files() == [f"ngxsim.{dead.tag}.old"] and not os.path.exists(os.path.dirname(path))
