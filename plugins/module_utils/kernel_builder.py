# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One kernel build's steps (fetch the tree, patch, configure, build, package), run through the
kernel_build module's AnsibleModule (``run_command``, ``fail_json``, ``warn``); the pure parts
(fragments, input hash, Kconfig dependency analysis) are in module_utils/kernel_build."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import json
import mailbox
import os
import platform
import shlex
import shutil
import stat
import tempfile
import time

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import kernel_build as kb
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend

LOG_TAIL = 60


def safe_build_dir(path, create=False):
    """Why ``path`` must not be the build directory, or None. Its default is a predictable path in
    /var/tmp: one that another user made first (owned by them, a symlink, writable by others) would
    let them choose where a root build writes and what it packages. With ``create`` a missing one is
    made here, owner-only (0700), its parents 0755."""
    path = os.path.abspath(path)
    made = False
    if create and not os.path.lexists(path):
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        try:
            os.mkdir(path, 0o700)
            made = True
        except FileExistsError:
            pass  # made meanwhile by someone else: checked below like any existing one
    if not os.path.lexists(path):
        return None  # check mode: nothing to check yet, nothing made
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        what = "a symlink" if os.path.islink(path) else "not a directory this user can open (%s)" % exc.strerror
        return ("build_dir %s is %s: refusing to build there. Remove it and run again, or set another "
                "build_dir" % (path, what))
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            return ("build_dir %s is owned by uid %d, not this user (uid %d): another user may have made it to "
                    "choose where the build writes. Remove it (or chown it) and run again, or set another "
                    "build_dir" % (path, st.st_uid, os.geteuid()))
        if stat.S_IMODE(st.st_mode) & 0o022:
            return ("build_dir %s is writable by others (mode %04o): chmod go-w it and run again, or set another "
                    "build_dir" % (path, stat.S_IMODE(st.st_mode)))
        if made:
            os.fchmod(fd, 0o700)  # the umask does not decide
    finally:
        os.close(fd)
    return None


class Build(object):
    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.dir = self.p["build_dir"]
        self.src = os.path.join(self.dir, "src")
        self.log = os.path.join(self.dir, "build.log")
        self.result = dict(changed=False, built=False, build_log=self.log)

    def fail(self, msg, **kw):
        merged = dict(self.result)
        merged.update(kw)
        self.module.fail_json(msg=msg, **merged)

    # ------------------------------------------------------------ running commands into the log

    def say(self, text):
        with open(self.log, "a") as fh:
            fh.write("\n=== %s %s\n" % (time.strftime("%H:%M:%S"), text))

    def run(self, cmd, what, cwd=None):
        """Run with output appended to the log (a build's output is too big for a result)."""
        self.say("%s: %s" % (what, " ".join(cmd)))
        nice = ["nice", "-n", str(self.p["nice"])] if self.p["nice"] else []
        # The shell only redirects into the log; every word is quoted.
        line = "%s >> %s 2>&1" % (" ".join(shlex.quote(c) for c in nice + cmd), shlex.quote(self.log))
        rc, out, err = self.module.run_command(line, cwd=cwd or self.src, use_unsafe_shell=True,
                                               environ_update={"LC_ALL": "C"})
        if rc != 0:
            tail, errors = self.log_tail()
            self.fail("%s failed (rc %d); the full log is %s" % (what, rc, self.log), rc=rc, cmd=cmd,
                      stdout=tail, stderr=(errors + "\n" + err).strip())
        return rc

    def log_tail(self):
        with open(self.log, errors="replace") as fh:
            lines = fh.read().splitlines()
        errors = [ln for ln in lines if "error" in ln.lower() or "***" in ln][-20:]
        return "\n".join(lines[-LOG_TAIL:]), "\n".join(errors)

    def capture(self, cmd, what, cwd=None):
        rc, out, err = self.module.run_command(cmd, cwd=cwd)
        if rc != 0:
            self.fail("%s failed" % what, rc=rc, stdout=out, stderr=err, cmd=cmd)
        return out.strip()

    def make(self, *targets):
        lv = self.p["localversion"]
        return ["make"] + (["LOCALVERSION=%s" % lv] if lv else []) + list(targets)

    # ------------------------------------------------------------ inputs

    def source(self):
        p = self.p
        if p["git_repo"]:
            ref = p["git_ref"]
            if len(ref) == 40 and all(c in "0123456789abcdef" for c in ref.lower()):
                commit = ref.lower()
            else:
                out = self.capture(["git", "ls-remote", p["git_repo"], ref], "git ls-remote %s" % p["git_repo"])
                lines = [ln.split() for ln in out.splitlines() if ln.strip()]
                # An annotated tag's peeled commit (ref^{}) is what gets built.
                peeled = [ln[0] for ln in lines if ln[1].endswith("^{}")]
                if not lines:
                    self.fail("%s has no ref %s" % (p["git_repo"], ref))
                commit = (peeled or [lines[0][0]])[0]
            return dict(kind="git", repo=p["git_repo"], ref=ref, commit=commit)
        if p["tarball"]:
            if not os.path.isfile(p["tarball"]):
                self.fail("tarball %s does not exist" % p["tarball"])
            return dict(kind="tarball", path=p["tarball"], sha256=kb.file_sha256(p["tarball"]))
        pkg = "linux-source-%s" % p["linux_source"]
        path = "/usr/src/%s.tar.xz" % pkg
        rc, out, err = self.module.run_command(["dpkg-query", "-W", "-f=${Version}", pkg])
        if rc != 0 or not out.strip() or not os.path.isfile(path):
            self.fail("Debian's %s is not installed on this host (%s missing): apt-get install %s" % (pkg, path, pkg),
                      rc=rc, stdout=out, stderr=err, cmd=["dpkg-query", "-W", pkg])
        return dict(kind="debian", package=pkg, version=out.strip(), path=path)

    def patch_list(self):
        """[(label, path or bytes)] in application order."""
        p = self.p
        if p["patch_dir"]:
            if not os.path.isdir(p["patch_dir"]):
                self.fail("patch_dir %s is not a directory" % p["patch_dir"])
            files = sorted(glob.glob(os.path.join(p["patch_dir"], "*.patch")))
            return [(os.path.basename(f), _read_bytes(f)) for f in files]
        if p["patch_mbox"]:
            if not os.path.isfile(p["patch_mbox"]):
                self.fail("patch_mbox %s does not exist" % p["patch_mbox"])
            out = []
            for i, msg in enumerate(mailbox.mbox(p["patch_mbox"], create=False), 1):
                subject = " ".join(str(msg.get("Subject", "")).split())
                out.append(("mbox message %d (%s)" % (i, subject or "no subject"), msg.as_bytes()))
            return out
        out = []
        for f in p["patches"]:
            if not os.path.isfile(f):
                self.fail("patch %s does not exist" % f)
            out.append((os.path.basename(f), _read_bytes(f)))
        return out

    def base_config_text(self):
        p = self.p
        if p["base_config"] == "running":
            path = "/boot/config-%s" % platform.release()
        elif p["base_config"] == "file":
            path = p["base_config_file"]
        else:
            return None
        if not os.path.isfile(path):
            self.fail("base config %s does not exist" % path)
        with open(path) as fh:
            return fh.read()

    def fragment(self):
        p = self.p
        items = []
        try:
            if p["config_fragment"]:
                if not os.path.isfile(p["config_fragment"]):
                    self.fail("config_fragment %s does not exist" % p["config_fragment"])
                with open(p["config_fragment"]) as fh:
                    items += kb.parse_fragment(fh.read(), p["config_fragment"])
            items += kb.parse_fragment("\n".join(p["config_options"]), "config_options")
            # The same symbol in file and list: the list wins, as a later merge_config.sh file would.
            merged = dict(items)
            return [(n, merged[n]) for n in dict.fromkeys(n for n, _v in items)]
        except kb.KernelBuildError as exc:
            self.fail(str(exc))

    def required(self):
        p = self.p
        backend = get_backend(p["backend"]) if p["backend"] != "none" else None
        # A backend whose handover is KHO (luo) asks KHO and its options as the handover's.
        implies_kho = bool(backend and backend.build_implies_kho)
        backend_opts = backend.required_kernel_options if backend and not implies_kho else ()
        try:
            return kb.required_options(backend_opts, p["require_kho"], implies_kho, p["required_options"])
        except kb.KernelBuildError as exc:
            self.fail(str(exc))

    # ------------------------------------------------------------ steps

    def prepare_tree(self, source, patches, src_key):
        stamp = os.path.join(self.dir, "src.json")
        if os.path.isdir(self.src) and read_json(stamp).get("key") == src_key:
            return False
        if os.path.exists(stamp):
            os.unlink(stamp)
        if source["kind"] == "git":
            if not os.path.isdir(os.path.join(self.src, ".git")):
                shutil.rmtree(self.src, ignore_errors=True)
                self.run(["git", "clone", "--no-checkout", source["repo"], self.src], "git clone", cwd=self.dir)
            self.run(["git", "fetch", "--quiet", source["repo"], source["ref"]], "git fetch")
            self.run(["git", "checkout", "--quiet", "--force", "--detach", source["commit"]], "git checkout")
            self.run(["git", "clean", "-fdxq"], "git clean")
        else:
            shutil.rmtree(self.src, ignore_errors=True)
            tmp = tempfile.mkdtemp(prefix=".extract-", dir=self.dir)
            self.run(["tar", "-xf", source["path"], "-C", tmp], "extract %s" % source["path"], cwd=self.dir)
            top = os.listdir(tmp)
            root = os.path.join(tmp, top[0]) if len(top) == 1 and os.path.isdir(os.path.join(tmp, top[0])) else tmp
            os.rename(root, self.src)
            shutil.rmtree(tmp, ignore_errors=True)
        self.apply_patches(patches)
        with open(stamp, "w") as fh:
            json.dump(dict(key=src_key, source=source, patches=[label for label, _data in patches]), fh)
        return True

    def apply_patches(self, patches):
        total = len(patches)
        fuzz = self.p["patch_fuzz"]
        notes = self.result.setdefault("patch_notes", [])
        for i, (label, data) in enumerate(patches, 1):
            path = os.path.join(self.dir, ".patch-%03d" % i)
            with open(path, "wb") as fh:
                fh.write(data)
            # A dry run first, so a patch that does not apply leaves no half-applied hunks behind.
            for dry in (True, False):
                cmd = self._patch_cmd(path, fuzz, dry)
                rc, out, err = self.module.run_command(cmd, cwd=self.src)
                with open(self.log, "a") as fh:
                    fh.write("\n=== patch %d/%d %s%s\n%s%s" % (i, total, label, " (dry run)" if dry else "", out, err))
                if rc != 0:
                    bad = [ln for ln in (out + err).splitlines()
                           if "FAILED" in ln or "can't find" in ln or "Reversed" in ln]
                    self.fail("patch %d of %d, %s, does not apply to this tree with fuzz %d: %s%s"
                              % (i, total, label, fuzz, "; ".join(bad) or (out + err).strip()[-500:],
                                 self._fuzz_hint(path, fuzz)), rc=rc, stdout=out, stderr=err, cmd=cmd)
                if not dry:
                    for ln in out.splitlines():
                        if "with fuzz" in ln or "offset" in ln:
                            notes.append("%s: %s" % (label, ln.strip()))
            os.unlink(path)
        for note in notes:
            self.module.warn("patch hunk not applied exactly where posted - check it: %s" % note)

    @staticmethod
    def _patch_cmd(path, fuzz, dry):
        return ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "--fuzz=%d" % fuzz,
                "-i", path] + (["--dry-run"] if dry else [])

    def _fuzz_hint(self, path, fuzz):
        """Whether more fuzz would apply the patch, and where its hunks would land."""
        for more in range(fuzz + 1, 4):
            rc, out, _err = self.module.run_command(self._patch_cmd(path, more, True), cwd=self.src)
            if rc == 0:
                landed = [ln.strip() for ln in out.splitlines() if "with fuzz" in ln]
                return (". It applies with patch_fuzz=%d (%s): check that each such hunk lands where it "
                        "belongs before allowing it" % (more, "; ".join(landed)))
        return ""

    def configure(self, base_text, fragment, required_spec):
        p = self.p
        cfg = os.path.join(self.src, ".config")
        if base_text is not None:
            with open(cfg, "w") as fh:
                fh.write(base_text)
            self.run(self.make("olddefconfig"), "olddefconfig of the base config")
        else:
            self.run(self.make(p["base_config"]), "make %s" % p["base_config"])
        for target in p["config_targets"]:
            self.run(self.make(target), "make %s" % target)
        kconfig = kb.Kconfig(self.src, kb.srcarch(platform.machine()))
        try:
            required = kb.resolve_required(required_spec, kconfig.defined())
            if p["base_config"] == "running" or p["base_config"] == "file":
                names = dict(fragment)
                fragment = fragment + [(n, '""') for n in ("CONFIG_SYSTEM_TRUSTED_KEYS", "CONFIG_SYSTEM_REVOCATION_KEYS")
                                       if n not in names and "debian/" in kb.read_config(base_text).get(n, "")]
            full = kb.fragment_with_required(fragment, required)
        except kb.KernelBuildError as exc:
            self.fail(str(exc))
        frag_path = os.path.join(self.dir, "fragment.config")
        with open(frag_path, "w") as fh:
            fh.write(kb.render_fragment(full))
        self.run(["sh", "scripts/kconfig/merge_config.sh", "-m", ".config", frag_path], "merge_config.sh -m")
        self.run(self.make("olddefconfig"), "make olddefconfig")
        with open(cfg) as fh:
            config = kb.read_config(fh.read())
        dropped = kb.check_required(kconfig, config, required)
        if dropped:
            self.result["dropped"] = dropped
            self.fail(kb.dropped_message(dropped))
        changed = []
        for name, wanted, got in kb.check_fragment(config, fragment):
            reason = kconfig.explain(name, [wanted], config)["reason"]
            changed.append(dict(name=name, wanted=wanted, got=got, reason=reason))
            self.module.warn("olddefconfig changed %s=%s to %s: %s" % (name, wanted, got, reason))
        return dict((n, config.get(n, "n")) for n, _accepted in required), changed

    def build_and_package(self, jobs):
        p = self.p
        self.run(self.make("-j%d" % jobs), "make -j%d" % jobs)
        started = time.time()
        self.run(self.make("-j%d" % jobs, p["package"]), "make %s" % p["package"])
        release = self.capture(self.make("-s", "kernelrelease"), "make kernelrelease", cwd=self.src)
        image = self.capture(self.make("-s", "image_name"), "make image_name", cwd=self.src)
        if p["package"] == "bindeb-pkg":
            made = glob.glob(os.path.join(self.dir, "*.deb")) + glob.glob(os.path.join(self.dir, "*.buildinfo")) + \
                glob.glob(os.path.join(self.dir, "*.changes"))
        else:
            made = glob.glob(os.path.join(self.src, "rpmbuild", "RPMS", "*", "*.rpm"))
        made = [f for f in made if os.path.getmtime(f) >= started - 1]
        if not any(f.endswith((".deb", ".rpm")) for f in made):
            self.fail("make %s made no package (see %s)" % (p["package"], self.log))
        return release, image, made


def _read_bytes(path):
    with open(path, "rb") as fh:
        return fh.read()


def read_json(path):
    """A JSON file's content, {} when it is missing or not JSON."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (IOError, OSError, ValueError):
        return {}
