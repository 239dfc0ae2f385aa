"""`keel` image commands, spelled as podman spells them: pull, push, images, rmi, tag,
inspect, history, save, load, login, logout, and `image prune|mount|unmount`."""

import json
import os
import sys
import time

from keel.image.errors import ImageError


def _bool(value):
    v = str(value).lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise ValueError(value)


_bool.__name__ = "boolean"


def _tls(parser):
    parser.add_argument("--tls-verify", type=_bool, nargs="?", const=True, default=True, metavar="BOOL",
                        help="require HTTPS and verify certificates (default true)")
    parser.add_argument("--authfile", help="credentials file (default: podman's auth.json)")
    parser.add_argument("--creds", metavar="USER:PASSWORD", help="credentials for this registry")
    parser.add_argument("--cert-dir", help="directory of certificates (*.crt) for the registry")


def register(sub, group=False):
    """Add the image commands to `sub`; with group=True the `keel image ...` spellings."""
    def add(name, func, help, aliases=()):
        p = sub.add_parser(name, help=help, aliases=list(aliases))
        p.set_defaults(func=func)
        return p

    p = add("pull", cmd_pull, "pull an image from a registry")
    p.add_argument("name")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    p.add_argument("--platform", default=None,
                   help="os/arch[/variant]; the image must be for it (default: this host's, "
                        "with a warning for an image of another platform)")
    p.add_argument("--os", help="the OS part of the platform (the rest: this host's)")
    p.add_argument("--arch", help="the architecture part of the platform")
    p.add_argument("--variant", help="the variant part of the platform")
    _tls(p)

    p = add("push", cmd_push, "push an image to a registry")
    p.add_argument("source")
    p.add_argument("destination", nargs="?")
    p.add_argument("-q", "--quiet", action="store_true")
    _tls(p)

    p = add("ls" if group else "images", cmd_images, "list images", aliases=("list",) if group else ())
    p.add_argument("-q", "--quiet", action="store_true", help="print only image ids")
    p.add_argument("--digests", action="store_true", help="show manifest digests")
    p.add_argument("--no-trunc", action="store_true", help="full image ids")
    p.add_argument("--format", help="json, or table (default)")

    p = add("rm" if group else "rmi", cmd_rmi, "remove images")
    p.add_argument("images", nargs="+")
    p.add_argument("-f", "--force", action="store_true", help="remove even an image in use or with several names")

    p = add("tag", cmd_tag, "add names to an image")
    p.add_argument("image")
    p.add_argument("names", nargs="+")

    p = add("inspect", cmd_inspect, "print images' details as JSON")
    p.add_argument("images", nargs="+")
    p.add_argument("--format", help="json (default)")

    p = add("history", cmd_history, "show an image's history")
    p.add_argument("image")
    p.add_argument("--format", help="json, or table (default)")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")

    p = add("save", cmd_save, "write images to an archive")
    p.add_argument("images", nargs="+")
    p.add_argument("-o", "--output", required=True, help="file or directory to write")
    p.add_argument("--format", default="docker-archive",
                   choices=("docker-archive", "oci-archive", "oci-dir"), help="(default %(default)s)")

    p = add("load", cmd_load, "read images from an archive")
    p.add_argument("-i", "--input", required=True, help="oci-archive, oci-dir or docker-archive")
    p.add_argument("-q", "--quiet", action="store_true")

    p = add("prune", cmd_prune, "remove unused images and free their storage") if group else None
    if p is not None:
        p.add_argument("-a", "--all", action="store_true", help="also images with names")
        p.add_argument("-f", "--force", action="store_true", help="do not ask (keel never asks)")
        p = add("mount", cmd_mount, "mount images' rootfs read-only and print the paths "
                "(counted: each mount needs an unmount); no image: list the mounted ones")
        p.add_argument("images", nargs="*", metavar="IMAGE")
        p.add_argument("--format", default="table", help="json or table (the listing)")
        p = add("unmount", cmd_unmount, "take one mount of an image away; unmounted at zero",
                aliases=("umount",))
        p.add_argument("images", nargs="*", metavar="IMAGE")
        p.add_argument("-a", "--all", action="store_true", help="unmount every mounted image")
        p.add_argument("-f", "--force", action="store_true",
                       help="unmount even when other mounts of the image are counted")

    if not group:
        p = add("login", cmd_login, "log in to a registry")
        p.add_argument("registry")
        p.add_argument("-u", "--username")
        p.add_argument("-p", "--password")
        p.add_argument("--password-stdin", action="store_true")
        p.add_argument("--authfile")
        p.add_argument("--tls-verify", type=_bool, nargs="?", const=True, default=True, metavar="BOOL")
        p.add_argument("--cert-dir")
        p = add("logout", cmd_logout, "log out of a registry")
        p.add_argument("registry", nargs="?")
        p.add_argument("-a", "--all", action="store_true")
        p.add_argument("--authfile")


# -- helpers ----------------------------------------------------------------------------------

def _store(args):
    from keel.image.store import Store

    return Store(args.root)


def _snapshotter(args):
    from keel.image.snapshot import Snapshotter

    return Snapshotter(os.path.join(args.root, "snapshots"))


def _conf(args):
    from keel.image import registries

    return registries.load([args.registries_conf]) if args.registries_conf else registries.load()


def _credentials(args):
    if not getattr(args, "creds", None):
        return None
    user, sep, password = args.creds.partition(":")
    if not sep or not user:
        raise ImageError(f"--creds: expected USER:PASSWORD, got {args.creds!r}")
    return (user, password)


def _certs(args):
    return [args.cert_dir] if getattr(args, "cert_dir", None) else None


def human_size(n):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n} B"
        n /= 1000.0
    return f"{n} B"


def _created_epoch(created):
    if not created:
        return 0
    import datetime

    try:
        return int(datetime.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def human_duration(seconds):
    """'3 minutes', 'Less than a second': podman's wording for how long ago or how long up."""
    d = max(0.0, seconds)
    for limit, div, unit in ((60, 1, "second"), (3600, 60, "minute"), (86400, 3600, "hour"),
                             (86400 * 14, 86400, "day"), (86400 * 60, 86400 * 7, "week"),
                             (86400 * 730, 86400 * 30, "month"), (float("inf"), 86400 * 365, "year")):
        if d < limit:
            n = int(d // div)
            if unit == "second" and n < 1:
                return "Less than a second"
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return "unknown"


def human_ago(created):
    t = _created_epoch(created)
    return f"{human_duration(time.time() - t)} ago" if t else "unknown"


def print_table(rows, header):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())


def _split_name(name):
    from keel.image import reference

    ref = reference.try_parse(name)
    if ref is None:
        return name, "<none>"
    return ref.name, ref.tag or "<none>"


# -- commands ---------------------------------------------------------------------------------

def cmd_pull(args):
    from keel.image.progress import make_progress
    from keel.image.registry import pull_image

    platform = _platform_arg(args)
    store = _store(args)
    progress = make_progress(quiet=args.quiet, stream=sys.stderr)
    try:
        img = pull_image(store, args.name, platform=platform, progress=progress,
                         tls_verify=args.tls_verify, authfile=args.authfile,
                         credentials=_credentials(args), conf=_conf(args), certs_dirs=_certs(args))
    finally:
        progress.close()
    print(img.id.partition(":")[2])


def _platform_arg(args) -> str | None:
    """--platform, or one made of --os/--arch/--variant over this host's (podman's flags)."""
    parts = {"os": args.os, "arch": args.arch, "variant": args.variant}
    if not any(parts.values()):
        return args.platform
    if args.platform:
        raise ImageError("--platform cannot be used with --os, --arch or --variant")
    from keel.image import platform

    host_os, host_arch, host_variant = platform.parse(platform.host())
    os_, arch = parts["os"] or host_os, parts["arch"] or host_arch
    variant = parts["variant"] or (host_variant if not parts["arch"] else None)
    return f"{os_}/{arch}" + (f"/{variant}" if variant else "")


def cmd_push(args):
    from keel.image.progress import make_progress
    from keel.image.registry import push_image

    store = _store(args)
    img = store.get(args.source)
    dest = args.destination or args.source
    progress = make_progress(quiet=args.quiet, stream=sys.stderr)
    try:
        digest = push_image(store, img, dest, progress=progress, tls_verify=args.tls_verify,
                            authfile=args.authfile, credentials=_credentials(args), conf=_conf(args),
                            certs_dirs=_certs(args))
    finally:
        progress.close()
    if not args.quiet:
        print(f"Writing manifest to image destination\n{digest}")


def image_summary(img):
    """One image in podman's `images --format json` shape."""
    created = _created_epoch(img.created)
    return {
        "Id": img.id.partition(":")[2],
        "ParentId": "",
        "RepoTags": list(img.names),
        "RepoDigests": img.repo_digests,
        "Size": img.size,
        "SharedSize": 0,
        "VirtualSize": img.size,
        "Labels": (img.config.get("config") or {}).get("Labels") or {},
        "Containers": 0,
        "Names": list(img.names),
        "Digest": img.manifest_digest,
        "Digests": list(img.digests),
        "History": list(img.names),
        "Created": created,
        "CreatedAt": img.created,
    }


def cmd_images(args):
    store = _store(args)
    imgs = sorted(store.images(), key=lambda i: _created_epoch(i.created), reverse=True)
    if args.quiet:
        seen = []
        for img in imgs:
            i = img.id.partition(":")[2]
            i = i if args.no_trunc else i[:12]
            if i not in seen:
                seen.append(i)
                print(i)
        return
    fmt = (args.format or "table").lower()
    if fmt == "json":
        print(json.dumps([image_summary(i) for i in imgs], indent=4))
        return
    if fmt != "table":
        raise ImageError(f"--format: unknown format {args.format!r} (json or table)")
    header = ["REPOSITORY", "TAG"] + (["DIGEST"] if args.digests else []) + ["IMAGE ID", "CREATED", "SIZE"]
    rows = []
    for img in imgs:
        iid = img.id.partition(":")[2]
        iid = iid if args.no_trunc else iid[:12]
        for name in img.names or ["<none>:<none>"]:
            repo, tag = _split_name(name) if name != "<none>:<none>" else ("<none>", "<none>")
            row = [repo, tag] + ([img.manifest_digest] if args.digests else [])
            rows.append(row + [iid, human_ago(img.created), human_size(img.size)])
    print_table(rows, header)


def _image_in_use(args, img):
    return _snapshotter(args).image_mount_path(img) is not None


def cmd_rmi(args):
    store = _store(args)
    failed = None
    for name in args.images:
        try:
            img = store.get(name)
            if _image_in_use(args, img):
                if not args.force:
                    raise ImageError(f"image {name} is in use (mounted): unmount it first, or --force")
                _snapshotter(args).unmount_image(img, force=True)
            res = store.remove(name, force=args.force)
        except ImageError as e:
            sys.stderr.write(f"Error: {e}\n")
            failed = e
            continue
        for n in res.get("untagged", []):
            print(f"Untagged: {n}")
        for d in res.get("deleted", []):
            print(f"Deleted: {d.partition(':')[2]}")
    # Blobs and layer snapshots are freed by `keel image prune` (store gc), as in podman.
    return 1 if failed is not None else 0


def cmd_tag(args):
    store = _store(args)
    img = store.get(args.image)
    from keel.image import reference

    for name in args.names:
        ref = reference.parse(name)
        store.tag(img.id, str(ref))


def image_inspect(img):
    """One image in podman's `image inspect` shape."""
    cfg = img.config
    os_, _, arch = (img.platform or "linux/amd64").partition("/")
    return {
        "Id": img.id.partition(":")[2],
        "Digest": img.manifest_digest,
        "RepoTags": list(img.names),
        "RepoDigests": img.repo_digests,
        "Parent": "",
        "Comment": cfg.get("comment", ""),
        "Created": img.created,
        "Config": cfg.get("config") or {},
        "Version": cfg.get("docker_version", ""),
        "Author": cfg.get("author", ""),
        "Architecture": cfg.get("architecture", arch.split("/")[0]),
        "Os": cfg.get("os", os_),
        "Size": img.size,
        "VirtualSize": img.size,
        "GraphDriver": {"Name": "overlay", "Data": {}},
        "RootFS": {"Type": "layers", "Layers": [la.diff_id for la in img.layers]},
        "Labels": (cfg.get("config") or {}).get("Labels") or {},
        "Annotations": img.manifest.get("annotations") or {},
        "ManifestType": img.media_type,
        "User": (cfg.get("config") or {}).get("User", ""),
        "History": cfg.get("history") or [],
        "NamesHistory": list(img.names),
    }


def cmd_inspect(args):
    store = _store(args)
    out = []
    err = None
    for name in args.images:
        try:
            out.append(image_inspect(store.get(name)))
        except ImageError as e:
            err = e
    print(json.dumps(out, indent=4))
    if err is not None:
        raise err


def cmd_history(args):
    store = _store(args)
    img = store.get(args.image)
    history = img.config.get("history") or []
    layers = list(reversed(img.layers))
    rows = []
    li = 0
    for h in reversed(history):
        size = 0
        if not h.get("empty_layer") and li < len(layers):
            size = layers[li].size
            li += 1
        rows.append({"id": img.id.partition(":")[2] if not rows else "<missing>",
                     "created": h.get("created", ""), "createdBy": h.get("created_by", ""),
                     "size": size, "comment": h.get("comment", "")})
    if not history:
        rows.append({"id": img.id.partition(":")[2], "created": img.created, "createdBy": "",
                     "size": img.size, "comment": ""})
    if (args.format or "").lower() == "json":
        print(json.dumps(rows, indent=4))
        return
    if args.quiet:
        for r in rows:
            print(r["id"][:12] if not args.no_trunc else r["id"])
        return
    table = []
    for r in rows:
        by = r["createdBy"] if args.no_trunc else r["createdBy"][:45]
        table.append([r["id"] if args.no_trunc else r["id"][:12], human_ago(r["created"]), by,
                      human_size(r["size"]), r["comment"]])
    print_table(table, ["ID", "CREATED", "CREATED BY", "SIZE", "COMMENT"])


def cmd_save(args):
    from keel.image import archive

    store = _store(args)
    archive.save(store, args.images, args.output, format=args.format)


def cmd_load(args):
    from keel.image import archive

    store = _store(args)
    imgs = archive.load(store, args.input)
    for img in imgs:
        if args.quiet:
            print(img.id.partition(":")[2])
        else:
            print("Loaded image: " + (", ".join(img.names) or img.id.partition(":")[2]))


def cmd_prune(args):
    store = _store(args)
    snap = _snapshotter(args)
    removed = []
    for img in store.images():
        if img.names and not args.all:
            continue
        if snap.image_mount_path(img) is not None:
            continue
        store.remove(img.id, force=True)
        removed.append(img.id.partition(":")[2])
    stats = store.gc()
    snap.remove_unused(store)
    for i in removed:
        print(i)
    if stats.get("bytes"):
        print(f"Freed {human_size(stats['bytes'])}", file=sys.stderr)


def cmd_mount(args):
    store = _store(args)
    snap = _snapshotter(args)
    if not args.images:
        return _list_mounts(args, store, snap)
    imgs = [store.get(name) for name in args.images]    # every name checked before mounting
    for img in imgs:
        print(snap.mount_image(img, store))


def _list_mounts(args, store, snap):
    from keel.image.errors import ImageNotFound

    rows = []
    for image_id, path, count in snap.mounted_images():
        try:
            names = store.get(image_id).names
        except ImageNotFound:                           # removed with rmi --force meanwhile
            names = []
        rows.append({"id": image_id.partition(":")[2], "names": names, "mountpoint": path,
                     "count": count})
    if args.format == "json":
        print(json.dumps([{"Id": r["id"], "Names": r["names"], "Repositories": r["names"],
                           "Mountpoint": r["mountpoint"], "MountCount": r["count"]} for r in rows],
                         indent=4))
    elif args.format == "table":
        for r in rows:
            print(f"{(r['names'] or [r['id'][:12]])[0]} {r['mountpoint']}")
    else:
        raise ImageError(f"--format: unknown format {args.format!r} (json or table)")


def cmd_unmount(args):
    store = _store(args)
    snap = _snapshotter(args)
    if args.all:
        if args.images:
            raise ImageError("unmount: --all and image names cannot be used together")
        for image_id, _, _ in snap.mounted_images():
            snap.unmount_image(_ById(image_id), force=True)
            print(image_id.partition(":")[2])
        return 0
    if not args.images:
        raise ImageError("unmount: name an image, or --all")
    failed = False
    for name in args.images:
        try:
            img = store.get(name)
            snap.unmount_image(img, force=args.force)
        except ImageError as e:
            sys.stderr.write(f"Error: {e}\n")
            failed = True
            continue
        print(img.id.partition(":")[2])
    return 125 if failed else 0


class _ById:
    """What unmount_image needs of an image whose record may be gone (rmi --force)."""

    def __init__(self, image_id):
        self.id = image_id


def cmd_login(args):
    from keel.image import auth

    user = args.username
    password = args.password
    if args.password_stdin:
        if password:
            raise ImageError("--password and --password-stdin cannot be used together")
        password = sys.stdin.readline().rstrip("\n")
    if not user or password is None:
        if not sys.stdin.isatty():
            raise ImageError("login: give --username and --password (or --password-stdin): no terminal to ask on")
        import getpass

        user = user or input("Username: ")
        password = getpass.getpass("Password: ") if password is None else password
    from keel.image import registries

    conf = _conf(args)
    insecure = conf.is_insecure(args.registry) or not args.tls_verify
    ca_dir = registries.certs_dir_for(args.registry, [args.cert_dir] if args.cert_dir else registries.CERTS_DIRS)
    auth.login(args.registry, user, password, args.authfile, insecure=insecure, ca_dir=ca_dir)
    print("Login Succeeded!")


def cmd_logout(args):
    from keel.image import auth

    if not args.registry and not args.all:
        raise ImageError("logout: name a registry, or --all")
    auth.logout(args.registry, args.authfile, all=args.all)
    if args.all:
        print("Removed login credentials for all registries")
    else:
        print(f"Removed login credentials for {args.registry}")
