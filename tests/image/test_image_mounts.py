"""`keel image mount` bookkeeping in keel.image.snapshot: mounts are counted (two mounts, one
unmount keeps it mounted), force and unmount-all, and records that outlive their mount (a
reboot, an umount behind keel's back, a crash between record and mount) count as not mounted."""

import json
import os
import subprocess

import pytest

from keel.image.errors import ImageError
from keel.image.snapshot import Snapshotter, boot_id, is_mounted

from test_snapshot import BASE, add_image, make_tar, mounts_under, snap  # noqa: F401

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="image mounts need root (overlay)")


def info_path(snap, img):
    return os.path.join(snap.root, "mounts", img.id.partition(":")[2], "info.json")


def test_mounts_are_counted(store, snap, tmp_path):
    img = add_image(store, [make_tar(BASE)], "localhost/counted:1")
    a = snap.mount_image(img, store)
    b = snap.mount_image(img, store)
    assert a == b and snap.image_mount_count(img) == 2
    assert snap.mounted_images() == [(img.id, a, 2)]
    assert snap.unmount_image(img) == 1
    assert is_mounted(a) and open(os.path.join(a, "etc/os")).read() == "base\n"
    assert snap.unmount_image(img) == 0
    assert not is_mounted(a) and not os.path.exists(os.path.dirname(a))
    assert snap.mounted_images() == [] and not mounts_under(tmp_path)
    with pytest.raises(ImageError, match=f"^image {img.id[7:19]} is not mounted$"):
        snap.unmount_image(img)


def test_force_unmounts_whatever_the_count(store, snap, tmp_path):
    img = add_image(store, [make_tar(BASE)], "localhost/forced:1")
    for _ in range(3):
        path = snap.mount_image(img, store)
    assert snap.image_mount_count(img) == 3
    assert snap.unmount_image(img, force=True) == 0
    assert not is_mounted(path) and snap.image_mount_path(img) is None
    assert not mounts_under(tmp_path)


def test_a_record_from_another_boot_is_stale(store, snap, tmp_path):
    """After a reboot the store is still there but its mounts are not: simulate it by
    unmounting behind keel's back and giving the record another boot id."""
    img = add_image(store, [make_tar(BASE)], "localhost/reboot:1")
    path = snap.mount_image(img, store)
    snap.mount_image(img, store)
    subprocess.run(["umount", path], check=True)
    info = json.load(open(info_path(snap, img)))
    info["boot_id"] = "00000000-0000-0000-0000-000000000000"
    json.dump(info, open(info_path(snap, img), "w"))
    assert snap.image_mount_path(img) is None and snap.image_mount_count(img) == 0
    assert snap.mounted_images() == []
    # a new mount starts counting from one, this boot
    assert snap.mount_image(img, store) == path and is_mounted(path)
    assert json.load(open(info_path(snap, img)))["count"] == 1
    assert json.load(open(info_path(snap, img)))["boot_id"] == boot_id() != ""
    assert snap.unmount_image(img) == 0 and not mounts_under(tmp_path)


def test_a_stale_record_with_the_overlay_still_mounted_is_unmounted_when_cleared(store, snap, tmp_path):
    """A record from another boot whose merged dir is mounted (e.g. /run was not a tmpfs and
    something mounted it again): the next mount replaces it instead of counting on it."""
    img = add_image(store, [make_tar(BASE)], "localhost/stale-mounted:1")
    path = snap.mount_image(img, store)
    info = json.load(open(info_path(snap, img)))
    info["boot_id"] = "another-boot"
    info["count"] = 7
    json.dump(info, open(info_path(snap, img), "w"))
    assert snap.image_mount_count(img) == 0
    with pytest.raises(ImageError, match="is not mounted"):
        snap.unmount_image(img)                 # clears the stale record and its mount
    assert not is_mounted(path) and not os.path.exists(os.path.dirname(path))
    assert not mounts_under(tmp_path)


def test_umount_behind_keels_back_and_a_crash_before_the_mount(store, snap, tmp_path):
    img = add_image(store, [make_tar(BASE)], "localhost/behind:1")
    path = snap.mount_image(img, store)
    subprocess.run(["umount", path], check=True)
    assert snap.image_mount_path(img) is None
    # a crash between writing the record and mounting looks the same: a record, no mount
    assert snap.mount_image(img, store) == path and snap.image_mount_count(img) == 1
    snap.unmount_image(img)
    assert not mounts_under(tmp_path)


def test_remove_unused_drops_stale_mount_records_and_their_layers(store, snap, tmp_path):
    img = add_image(store, [make_tar(BASE)], "localhost/gc:1")
    path = snap.mount_image(img, store)
    layers = os.listdir(os.path.join(snap.root, "layers"))
    assert len(layers) == 1
    store.remove(img.id, force=True)            # the record still holds the layer
    assert snap.remove_unused(store) == 0
    subprocess.run(["umount", path], check=True)  # as after a reboot
    assert snap.remove_unused(store) == 1
    assert os.listdir(os.path.join(snap.root, "mounts")) == []
    assert not mounts_under(tmp_path)


def test_mount_count_survives_a_new_snapshotter(store, snap, tmp_path):
    """The count is on disk: another keel process sees it."""
    img = add_image(store, [make_tar(BASE)], "localhost/shared:1")
    snap.mount_image(img, store)
    other = Snapshotter(snap.root)
    other.mount_image(img, store)
    assert snap.image_mount_count(img) == 2
    assert other.unmount_image(img) == 1
    assert snap.unmount_image(img) == 0
    assert not mounts_under(tmp_path)


def test_concurrent_mounts_and_unmounts_keep_an_exact_count(store, snap, tmp_path):
    """Mounts and unmounts from several threads, each through its own Snapshotter (as separate
    keel processes would be): the per-image lock keeps the count exact."""
    import threading

    img = add_image(store, [make_tar(BASE)], "localhost/concurrent:1")
    errors = []

    def mount_then_unmount(i):
        try:
            s = Snapshotter(snap.root)
            s.mount_image(img, store)
            if i % 2:
                s.unmount_image(img)
        except Exception as e:             # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=mount_then_unmount, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert snap.image_mount_count(img) == 4
    path = snap.image_mount_path(img)
    assert [mp for mp in mounts_under(tmp_path)] == [path]          # one overlay, counted four times
    for left in (3, 2, 1, 0):
        assert snap.unmount_image(img) == left
    assert not mounts_under(tmp_path)
