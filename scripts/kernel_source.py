"""Fetch Debian's linux-source-X.Y package and extract its source tarball, cached.

    scripts/kernel-source [--series 7.3] [--suite trixie-backports] [--version 7.3.4-1~bpo13+1]

Prints the path of the source tarball (linux-source-X.Y.tar.xz) on its last line. The .deb comes
from the Debian mirror this machine's apt uses (or $GUESTMEMFS_DEBIAN_MIRROR), found in the suite's
Packages index and checked against its SHA256; no apt source is added. Both the .deb and the
tarball stay in $GUESTMEMFS_CACHE/kernel-source (default ~/.cache/guestmemfs-liveupdate), so a
second run only reads the index.
"""

import argparse
import hashlib
import lzma
import os
import re
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fleet"))
from fleet import debian_mirror  # noqa: E402  (one place that knows where the mirror is)


def log(msg):
    print("kernel-source: %s" % msg, file=sys.stderr, flush=True)


def version_key(v):
    # Good enough for one package's versions in one suite: numeric runs compare as numbers.
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", v) if p]


def find_package(mirror, suite, name, version=None):
    # Suites with No-Support-for-Architecture-all list arch:all packages in each architecture's index.
    found = []
    for arch in ("amd64", "all"):
        url = "%s/dists/%s/main/binary-%s/Packages.xz" % (mirror, suite, arch)
        try:
            with urllib.request.urlopen(url, timeout=120) as r:
                text = lzma.decompress(r.read()).decode("utf-8", "replace")
        except OSError:
            continue
        for stanza in text.split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z0-9-]+): (.*)$", stanza, re.M))
            if fields.get("Package") == name and (version is None or fields.get("Version") == version):
                found.append(fields)
        if found:
            break
    if not found:
        raise SystemExit("kernel-source: %s%s is not in %s/dists/%s" % (name, " " + version if version else "", mirror, suite))
    return max(found, key=lambda f: version_key(f["Version"]))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--series", default="7.3", help="kernel series X.Y (default 7.3)")
    ap.add_argument("--suite", default="trixie-backports")
    ap.add_argument("--version", help="exact Debian version (default: the newest in the suite)")
    args = ap.parse_args()

    cache = os.path.join(os.environ.get("GUESTMEMFS_CACHE") or os.path.expanduser("~/.cache/guestmemfs-liveupdate"),
                         "kernel-source")
    os.makedirs(cache, exist_ok=True)
    name = "linux-source-%s" % args.series
    mirror = debian_mirror()
    pkg = find_package(mirror, args.suite, name, args.version)
    deb = os.path.join(cache, os.path.basename(pkg["Filename"]))
    tarball = os.path.join(cache, "%s_%s.tar.xz" % (name, pkg["Version"].replace("~", "_")))
    if os.path.exists(tarball):
        log("%s %s cached" % (name, pkg["Version"]))
        print(tarball)
        return
    if not (os.path.exists(deb) and sha256(deb) == pkg["SHA256"]):
        log("downloading %s (%d MB)" % (pkg["Filename"], int(pkg["Size"]) >> 20))
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=".deb.")
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen("%s/%s" % (mirror, pkg["Filename"]), timeout=600) as r:
            for block in iter(lambda: r.read(1 << 20), b""):
                out.write(block)
        if sha256(tmp) != pkg["SHA256"]:
            os.unlink(tmp)
            raise SystemExit("kernel-source: %s does not match the SHA256 of the Packages index" % pkg["Filename"])
        os.rename(tmp, deb)
    # The package holds /usr/src/linux-source-X.Y.tar.xz; take it out without installing anything.
    log("extracting %s.tar.xz from %s" % (name, os.path.basename(deb)))
    with tempfile.TemporaryDirectory(dir=cache) as tmpdir:
        subprocess.run(["dpkg-deb", "-x", deb, tmpdir], check=True)
        os.rename(os.path.join(tmpdir, "usr", "src", name + ".tar.xz"), tarball)
    print(tarball)


if __name__ == "__main__":
    main()
