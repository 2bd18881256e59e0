"""Zone files another local user cannot take over: each attack is made as user ``nobody`` in a
forked child, against the names this process's instance will use."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

import pytest

from ngxsim.core.instance import MASTER, STANDALONE, Instance, current_instance
from ngxsim.core.shm import JANITOR_MARKER, SHM_DIR_ENV, ZoneError, attach_zone, ensure_janitor, remove_stale_zone_files, remove_zone_files, shm_dir, zone_path

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


@pytest.fixture
def instance(shm_leftovers):
    inst = current_instance(STANDALONE)
    yield inst
    for name in ("bus", "other", JANITOR_MARKER):  # what nobody planted (root may remove it)
        try:
            os.unlink(zone_path(inst, name))
        except FileNotFoundError:
            pass
    remove_zone_files(inst)


def test_a_file_planted_by_another_user_is_refused_and_left_as_it_is(instance):
    path = zone_path(instance, "bus")

    def plant():
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        os.fchmod(fd, 0o666)
        os.write(fd, b"forged")
        os.close(fd)

    as_nobody(plant)
    with pytest.raises(ZoneError, match=f"zone file {path} belongs to uid {NOBODY}, not to this server's uid 0: refusing it"):
        attach_zone(instance, "bus", 4096)
    with open(path, "rb") as fh:
        assert fh.read() == b"forged"  # neither adopted nor initialised


def test_a_symbolic_link_is_never_followed(instance, tmp_path):
    path = zone_path(instance, "bus")
    target = tmp_path / "root-would-create-this"
    os.chmod(tmp_path, 0o777)
    as_nobody(lambda: os.symlink(target, path))
    with pytest.raises(ZoneError, match="is a symbolic link: refusing to follow it"):
        attach_zone(instance, "bus", 4096)
    assert not target.exists()


def test_an_own_file_open_to_others_is_refused(instance):
    path = zone_path(instance, "other")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o644)
    os.close(fd)
    with pytest.raises(ZoneError, match="has mode 0644, open to other users"):
        attach_zone(instance, "other", 4096)


def test_a_zone_file_is_created_private_and_reattached(instance):
    zone = attach_zone(instance, "bus", 4096)
    st = os.stat(zone.path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert not attach_zone(instance, "bus", 4096).fresh
    zone.close()


def test_a_janitor_marker_planted_by_another_user_is_refused(instance):
    marker = zone_path(instance, JANITOR_MARKER)
    as_nobody(lambda: os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    with pytest.raises(ZoneError, match="janitor marker .* is not this server's"):
        ensure_janitor(Instance(instance.pid, instance.start_time, MASTER))


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
    open(path, "wb").close()
    try:
        as_nobody(lambda: remove_stale_zone_files())
        assert os.path.exists(path)
    finally:
        os.unlink(path)
    assert shm_dir() == os.path.dirname(path)
