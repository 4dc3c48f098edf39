"""Kernel build inputs and checks: fragments, required options, the input hash, and the "which
dependency dropped it" analysis on small Kconfig trees shaped like Linux 7.3's; the module's
argument errors and check mode (no build: the real build is tests/integration)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from ansible.module_utils.testing import patch_module_args
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import kernel_build as kb
from ansible_collections.guestmemfs.liveupdate.plugins.modules import kernel_build

from conftest import FIXTURES

KCONFIG = os.path.join(FIXTURES, "kconfig")


def config(name="tinyconfig-kexec.config"):
    with open(os.path.join(KCONFIG, name)) as fh:
        return kb.read_config(fh.read())


@pytest.fixture(scope="module")
def tree():
    return kb.Kconfig(os.path.join(KCONFIG, "tree"), "x86")


# ---------------------------------------------------------------- fragments and options

def test_parse_fragment_values_comments_and_unset():
    text = "# a comment\nCONFIG_A=y\n\nB=m\n# CONFIG_C is not set\nCONFIG_S=\"x y\"\nCONFIG_A=y\n"
    assert kb.parse_fragment(text) == [("CONFIG_A", "y"), ("CONFIG_B", "m"), ("CONFIG_C", "n"), ("CONFIG_S", '"x y"')]
    assert kb.render_fragment([("CONFIG_A", "y"), ("CONFIG_C", "n")]) == "CONFIG_A=y\n# CONFIG_C is not set\n"


@pytest.mark.parametrize("text,why", [
    ("CONFIG_A=y\nCONFIG_A=n\n", "line 2: CONFIG_A=n contradicts CONFIG_A=y"),
    ("CONFIG_A\n", "line 1: 'CONFIG_A' has no value"),
    ("CONFIG_A-B=y\n", "line 1: 'CONFIG_A-B' is not a kernel config symbol"),
])
def test_parse_fragment_refuses(text, why):
    with pytest.raises(kb.KernelBuildError, match=why):
        kb.parse_fragment(text)


def test_read_config():
    c = kb.read_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S=\"deb\"\n# comment\n")
    assert c == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_S": '"deb"'}


def test_required_always_kexec_file_and_kho_alternatives():
    req = kb.required_options(require_kho=True)
    assert req == [(kb.KEXEC_FILE, ("y",), "kexec_file_load"), (kb.KHO, ("y",), "KHO")]
    # The tree decides which KHO name applies.
    assert kb.resolve_required(req, {"KEXEC_FILE", "KEXEC_KHO"}) == [("CONFIG_KEXEC_FILE", ("y",)),
                                                                     ("CONFIG_KEXEC_KHO", ("y",))]
    assert kb.resolve_required(req, {"KEXEC_FILE", "KEXEC_HANDOVER"})[1] == ("CONFIG_KEXEC_HANDOVER", ("y",))
    with pytest.raises(kb.KernelBuildError, match="defines no CONFIG_KEXEC_HANDOVER or CONFIG_KEXEC_KHO"):
        kb.resolve_required(req, {"KEXEC_FILE"})


def test_required_backends_and_user_values():
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend
    gm = kb.required_options(get_backend("guestmemfs").required_kernel_options)
    assert (("CONFIG_GUESTMEMFS_FS",), ("y",), "backend") in gm
    assert (kb.KHO, ("y",), "backend") in gm  # KEXEC_KHO, or the mainline name if the tree has that
    assert len([r for r in gm if r[0] == kb.KEXEC_FILE]) == 1
    pmem = dict((a, v) for a, v, _why in kb.required_options(get_backend("pmem").required_kernel_options))
    assert pmem[("CONFIG_BLK_DEV_PMEM",)] == ("y", "m")  # nd_pmem may be a module
    luo = [r[0] for r in kb.required_options(luo=True)]
    assert luo == [kb.KEXEC_FILE, kb.KHO, ("CONFIG_LIVEUPDATE",), ("CONFIG_LIVEUPDATE_MEMFD",)]
    user = kb.required_options(extra=["FS_DAX", "CONFIG_EXT4_FS=y", "CONFIG_KEXEC_FILE"])
    assert user[1:] == [(("CONFIG_FS_DAX",), ("y", "m"), "required_options"),
                        (("CONFIG_EXT4_FS",), ("y",), "required_options")]
    with pytest.raises(kb.KernelBuildError, match="cannot be required unset"):
        kb.required_options(extra=["# CONFIG_X is not set"])


def test_fragment_with_required_adds_and_conflicts():
    frag = [("CONFIG_BLK_DEV_PMEM", "m")]
    req = [("CONFIG_KEXEC_FILE", ("y",)), ("CONFIG_BLK_DEV_PMEM", ("y", "m"))]
    assert kb.fragment_with_required(frag, req) == [("CONFIG_BLK_DEV_PMEM", "m"), ("CONFIG_KEXEC_FILE", "y")]
    with pytest.raises(kb.KernelBuildError, match="sets CONFIG_KEXEC_FILE=n but it is required as y"):
        kb.fragment_with_required([("CONFIG_KEXEC_FILE", "n")], req)


def test_input_hash_is_canonical_and_sensitive():
    a = dict(src="x", fragment=[["CONFIG_A", "y"]], localversion="")
    assert kb.input_hash(a) == kb.input_hash(dict(reversed(list(a.items()))))
    assert kb.input_hash(a) != kb.input_hash(dict(a, localversion="-lu1"))
    assert kb.input_hash(a) != kb.input_hash(dict(a, fragment=[["CONFIG_A", "m"]]))


def test_expr_tristate():
    c = {"CONFIG_A": "y", "CONFIG_M": "m", "CONFIG_S": '"x"', "CONFIG_N": "5"}
    assert kb.Expr("A && M").value(c) == 1
    assert kb.Expr("A && !(B || M)").value(c) == 1
    assert kb.Expr("B || !A").value(c) == 0
    assert kb.Expr('S = "x" && N >= 4 && B != y').value(c) == 2
    assert kb.Expr("X86_64 || (X86_32 && HIGHMEM)").symbols() == ["X86_64", "X86_32", "HIGHMEM"]
    # A compiler test macro is not ours to judge.
    assert kb.Expr("$(success,echo 'x' | $(CC) -x c -)").value({}) == 2


# ---------------------------------------------------------------- which dependency dropped it

def test_kconfig_reads_the_tree_for_one_arch(tree):
    assert {"FS_DAX", "ZONE_DEVICE", "GUESTMEMFS_FS", "KEXEC_HANDOVER", "X86_PMEM_LEGACY"} <= tree.defined()
    assert [e.path for e in tree.entries["ARCH_SUPPORTS_KEXEC_HANDOVER"]] == ["arch/x86/Kconfig"]
    legacy = tree.entries["X86_PMEM_LEGACY"][0]
    # Help text is not an attribute.
    assert [d[0].text for d in legacy.depends] == ["PHYS_ADDR_T_64BIT", "BLK_DEV"]
    assert ("X86_PMEM_LEGACY", None) in tree.selected_by["LIBNVDIMM"]


def test_fs_dax_dropped_names_zone_device_and_memory_hotplug(tree):
    info = tree.explain("CONFIG_FS_DAX", ("y",), config())
    assert info["got"] == "n"
    first = info["unmet"][0]
    assert (first["file"], first["line"], first["expr"], first["unset"]) == (
        "fs/Kconfig", 6, "ZONE_DEVICE", ["CONFIG_ZONE_DEVICE"])
    assert "CONFIG_MEMORY_HOTREMOVE" in info["reason"] and "sits inside `if MEMORY_HOTPLUG`" in info["reason"]
    assert "CONFIG_MEMORY_HOTPLUG" in info["reason"]
    msg = kb.dropped_message(kb.check_required(tree, config(), [("CONFIG_FS_DAX", ("y",))]))
    assert msg.startswith("required kernel option(s) did not survive olddefconfig: CONFIG_FS_DAX wanted y, got n: "
                          "CONFIG_FS_DAX needs fs/Kconfig:6 depends on ZONE_DEVICE (unset: CONFIG_ZONE_DEVICE)")


def test_guestmemfs_dropped_without_misc_filesystems(tree):
    info = tree.explain("CONFIG_GUESTMEMFS_FS", ("y",), config())
    kinds = [(u["kind"], u["expr"], u["unset"]) for u in info["unmet"]]
    assert ("if", "MISC_FILESYSTEMS", ["CONFIG_MISC_FILESYSTEMS"]) in kinds
    assert ("depends on", "KEXEC_KHO", ["CONFIG_KEXEC_KHO"]) in kinds
    assert "fs/Kconfig:13 sits inside `if MISC_FILESYSTEMS`" in info["reason"]


def test_luo_memfd_dropped_by_shmem(tree):
    c = dict(config(), CONFIG_KEXEC_HANDOVER="y", CONFIG_LIVEUPDATE="y")
    info = tree.explain("CONFIG_LIVEUPDATE_MEMFD", ("y",), c)
    unmet = [(u["expr"], u["unset"]) for u in info["unmet"]]
    assert unmet == [("MEMFD_CREATE", ["CONFIG_MEMFD_CREATE"]), ("SHMEM", ["CONFIG_SHMEM"])]
    assert "depends on MEMFD_CREATE (unset: CONFIG_MEMFD_CREATE)" in info["reason"]


def test_no_prompt_is_explained_by_its_selectors(tree):
    info = tree.explain("CONFIG_X86_PMEM_LEGACY_DEVICE", ("y",), config())
    assert info["unmet"] == [] and info["selected_by"] == ["CONFIG_X86_PMEM_LEGACY"]
    assert info["reason"] == ("CONFIG_X86_PMEM_LEGACY_DEVICE has no prompt: `select` sets it from "
                              "CONFIG_X86_PMEM_LEGACY (none of them set)")


def test_hidden_prompt_and_default_are_explained(tree):
    # tinyconfig leaves EXPERT set; without it SHMEM's prompt is hidden and its default decides.
    c = dict(config(), CONFIG_EXPERT="n", CONFIG_SPARSEMEM_VMEMMAP="n")
    info = tree.explain("CONFIG_SHMEM", ("y",), dict(c, CONFIG_SHMEM="n"))
    assert [(u["kind"], u["expr"], u["unset"]) for u in info["unmet"]] == [("prompt", "EXPERT", ["CONFIG_EXPERT"])]
    assert "mm/Kconfig:6 can be set only if EXPERT (unset: CONFIG_EXPERT)" in info["reason"]
    info = tree.explain("CONFIG_PHYS_ADDR_T_64BIT", ("y",), dict(c, CONFIG_64BIT="n", CONFIG_PHYS_ADDR_T_64BIT="n"))
    assert info["reason"] == "CONFIG_PHYS_ADDR_T_64BIT has no prompt: its default is `64BIT` (unset: CONFIG_64BIT)"


def test_module_value_limited_by_a_module_dependency(tree):
    c = dict(config(), CONFIG_LIBNVDIMM="m", CONFIG_BLK_DEV_PMEM="m", CONFIG_BLOCK="y", CONFIG_BLK_DEV="y")
    assert kb.check_required(tree, c, [("CONFIG_BLK_DEV_PMEM", ("y", "m"))]) == []
    info = kb.check_required(tree, c, [("CONFIG_BLK_DEV_PMEM", ("y",))])[0]
    assert info["unmet"][0]["expr"] == "LIBNVDIMM" and info["unmet"][0]["unset"] == ["CONFIG_LIBNVDIMM"]


def test_unknown_symbol(tree):
    assert "not defined in any Kconfig file" in tree.explain("CONFIG_NO_SUCH", ("y",), {})["reason"]


def test_check_fragment_lists_silent_drops():
    c = {"CONFIG_A": "y", "CONFIG_B": "n"}
    assert kb.check_fragment(c, [("CONFIG_A", "y"), ("CONFIG_B", "y"), ("CONFIG_C", "n")]) == [
        ("CONFIG_B", "y", "n")]


# ---------------------------------------------------------------- the module without a build

def run(capsys, **args):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            kernel_build.main()
    return exc.value.code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("args,msg", [
    (dict(), "one of the following is required: git_repo, tarball, linux_source"),
    (dict(tarball="/x", linux_source="7.3"), "parameters are mutually exclusive: git_repo|tarball|linux_source"),
    (dict(tarball="/x", patches=["/a"], patch_dir="/d"), "mutually exclusive: patches|patch_dir|patch_mbox"),
    (dict(tarball="/x", base_config="file"), "base_config is file but all of the following are missing: "
                                             "base_config_file"),
    (dict(tarball="/nonexistent.tar.xz"), "tarball /nonexistent.tar.xz does not exist"),
    (dict(tarball="/x", jobs=-1), "jobs must be 0"),
    (dict(tarball="/x", localversion="a b"), "may not contain spaces"),
    (dict(tarball="/x", config_targets=["x86_64_defconfig"]), "NAME.config"),
])
def test_module_argument_errors(capsys, tmp_path, args, msg):
    rc, out = run(capsys, build_dir=str(tmp_path), **args)
    assert rc == 1 and out["failed"] and msg in out["msg"]


def fake_tarball(tmp_path):
    t = tmp_path / "linux.tar.xz"
    t.write_bytes(b"not really a tarball")
    return str(t)


def test_module_fragment_errors(capsys, tmp_path):
    rc, out = run(capsys, build_dir=str(tmp_path / "b"), tarball=fake_tarball(tmp_path),
                  config_options=["CONFIG_A=y", "CONFIG_A=n"])
    assert rc == 1 and "config_options line 2: CONFIG_A=n contradicts" in out["msg"]
    rc, out = run(capsys, build_dir=str(tmp_path / "b"), tarball=fake_tarball(tmp_path),
                  required_options=["# CONFIG_A is not set"])
    assert rc == 1 and "cannot be required unset" in out["msg"]


def test_module_check_mode_reports_a_build_and_writes_nothing(capsys, tmp_path):
    build = tmp_path / "b"
    rc, out = run(capsys, build_dir=str(build), tarball=fake_tarball(tmp_path), _ansible_check_mode=True,
                  config_options=["CONFIG_RELOCATABLE=y"], backend="luo")
    assert rc == 0 and out["changed"] and not out["built"] and "a build would run" in out["msg"]
    assert not build.exists()
    h = out["input_hash"]
    # Same inputs, same hash; any input changes it.
    rc, out = run(capsys, build_dir=str(build), tarball=fake_tarball(tmp_path), _ansible_check_mode=True,
                  config_options=["CONFIG_RELOCATABLE=y"], backend="luo")
    assert out["input_hash"] == h
    rc, out = run(capsys, build_dir=str(build), tarball=fake_tarball(tmp_path), _ansible_check_mode=True,
                  config_options=["CONFIG_RELOCATABLE=y"], backend="luo", localversion="-lu2")
    assert out["input_hash"] != h


def test_module_reuses_a_stamp(capsys, tmp_path):
    args = dict(build_dir=str(tmp_path / "b"), tarball=fake_tarball(tmp_path), base_config="tinyconfig")
    rc, out = run(capsys, _ansible_check_mode=True, **args)
    out_dir = tmp_path / "b" / "out" / out["input_hash"][:16]
    out_dir.mkdir(parents=True)
    (out_dir / "linux-image-7.3.4_7.3.4-1_amd64.deb").write_bytes(b"")
    (out_dir / "vmlinuz-7.3.4").write_bytes(b"")
    stamp = dict(input_hash=out["input_hash"], kernel_release="7.3.4", vmlinuz=str(out_dir / "vmlinuz-7.3.4"),
                 packages=[str(out_dir / "linux-image-7.3.4_7.3.4-1_amd64.deb")])
    (out_dir / "kernel_build.json").write_text(json.dumps(stamp))
    for check in (True, False):
        rc, out = run(capsys, _ansible_check_mode=check, **args)
        assert rc == 0 and out["changed"] is False and out["built"] is False
        assert out["kernel_release"] == "7.3.4" and out["packages"] == stamp["packages"]
    # A package gone from disk means the stamp no longer holds.
    os.unlink(stamp["packages"][0])
    rc, out = run(capsys, _ansible_check_mode=True, **args)
    assert out["changed"] is True


# ---------------------------------------------------------------- patch series on a toy tree

def toy_tree(tmp_path):
    import tarfile
    src = tmp_path / "linux-toy"
    src.mkdir()
    (src / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 3\n")
    (src / "README").write_text("one\ntwo\nthree\n")
    tarball = tmp_path / "linux-toy.tar.xz"
    with tarfile.open(str(tarball), "w:xz") as tf:
        tf.add(str(src), arcname="linux-toy")
    return str(tarball)


PATCH_OK = """From: A <a@example.org>
Subject: [PATCH 1/2] readme: add four

---
 README | 1 +
 1 file changed, 1 insertion(+)

--- a/README
+++ b/README
@@ -1,3 +1,4 @@
 one
 two
 three
+four
"""

PATCH_BAD = """From: B <b@example.org>
Subject: [PATCH 2/2] readme: change a line that is not there

--- a/README
+++ b/README
@@ -1,3 +1,3 @@
 one
-zwei
+deux
 three
"""


def test_patch_dir_names_the_patch_that_does_not_apply(capsys, tmp_path):
    patches = tmp_path / "series"
    patches.mkdir()
    (patches / "0001-readme-add-four.patch").write_text(PATCH_OK)
    (patches / "0002-readme-change.patch").write_text(PATCH_BAD)
    (patches / "notes.txt").write_text("not a patch")
    build = tmp_path / "b"
    rc, out = run(capsys, build_dir=str(build), tarball=toy_tree(tmp_path), patch_dir=str(patches))
    assert rc == 1
    assert out["msg"].startswith("patch 2 of 2, 0002-readme-change.patch, does not apply to this tree with fuzz 0: ")
    assert "FAILED" in out["msg"] and out["cmd"][:2] == ["patch", "-p1"]
    # The first patch went in, the failing one left nothing behind, and the tree is not reused.
    assert (build / "src" / "README").read_text() == "one\ntwo\nthree\nfour\n"
    assert not list((build / "src").glob("*.rej")) and not (build / "src.json").exists()


# Posted for a tree where the line before "two" read "eins": one context line differs here.
PATCH_FUZZY = """From: C <c@example.org>
Subject: [PATCH] readme: add two and a half

--- a/README
+++ b/README
@@ -1,3 +1,4 @@
 eins
 two
+two and a half
 three
"""


def test_a_hunk_that_needs_fuzz_is_refused_by_default_and_named_when_allowed(capsys, tmp_path):
    patches = tmp_path / "series"
    patches.mkdir()
    (patches / "0001-fuzzy.patch").write_text(PATCH_FUZZY)
    tarball = toy_tree(tmp_path)
    rc, out = run(capsys, build_dir=str(tmp_path / "b"), tarball=tarball, patch_dir=str(patches))
    assert rc == 1 and "does not apply to this tree with fuzz 0" in out["msg"]
    assert "It applies with patch_fuzz=1 (Hunk #1 succeeded at 1 with fuzz 1.)" in out["msg"]
    assert (tmp_path / "b" / "src" / "README").read_text() == "one\ntwo\nthree\n"
    # Allowed: it applies, no .orig is left behind, and the hunk is named in the result (and a warning;
    # how warnings come back depends on what else the test process imported). The toy tree then
    # fails at its config step, which is not what is tested here.
    rc, out = run(capsys, build_dir=str(tmp_path / "b"), tarball=tarball, patch_dir=str(patches), patch_fuzz=1,
                  base_config="tinyconfig")
    assert (tmp_path / "b" / "src" / "README").read_text() == "one\ntwo\ntwo and a half\nthree\n"
    assert not list((tmp_path / "b" / "src").glob("*.orig"))
    assert out["patch_notes"] == ["0001-fuzzy.patch: Hunk #1 succeeded at 1 with fuzz 1."]
    rc, out = run(capsys, build_dir=str(tmp_path / "b"), tarball=tarball, patch_fuzz=4)
    assert rc == 1 and "patch_fuzz must be 0 to 3" in out["msg"]


def test_patch_mbox_is_applied_in_order(capsys, tmp_path):
    mbox = tmp_path / "series.mbox"
    mbox.write_text("From 0000 Mon Sep 17 00:00:00 2001\n" + PATCH_OK + "\nFrom 0000 Mon Sep 17 00:00:00 2001\n"
                    + PATCH_BAD)
    rc, out = run(capsys, build_dir=str(tmp_path / "b"), tarball=toy_tree(tmp_path), patch_mbox=str(mbox))
    assert rc == 1
    assert out["msg"].startswith("patch 2 of 2, mbox message 2 ([PATCH 2/2] readme: change a line that is not "
                                 "there), does not apply")


# ---------------------------------------------------------------- the whole flow on a toy kernel

TOY_MAKEFILE = """all:
\tmkdir -p arch/x86/boot && echo kernel > arch/x86/boot/bzImage

tinyconfig defconfig:
\tprintf 'CONFIG_64BIT=y\\nCONFIG_X86_64=y\\nCONFIG_MMU=y\\nCONFIG_ARCH_SUPPORTS_KEXEC_FILE=y\\nCONFIG_ARCH_SUPPORTS_KEXEC_HANDOVER=y\\n' > .config

# Like the real one: an option whose dependency is unset does not survive.
olddefconfig:
\tgrep -q '^CONFIG_ZONE_DEVICE=y' .config || sed -i '/^CONFIG_FS_DAX=/d' .config
\tgrep -q '^CONFIG_MEMFD_CREATE=y' .config || sed -i '/^CONFIG_LIVEUPDATE_MEMFD=/d' .config

bindeb-pkg:
\techo image > ../linux-image-7.3.4$(LOCALVERSION)_7.3.4-1_amd64.deb
\techo libc > ../linux-libc-dev_7.3.4-1_amd64.deb

kernelrelease:
\t@echo 7.3.4$(LOCALVERSION)

image_name:
\t@echo arch/x86/boot/bzImage
"""


def toy_kernel(tmp_path):
    import tarfile
    src = tmp_path / "linux-toy"
    shutil.copytree(os.path.join(KCONFIG, "tree"), str(src))
    (src / "Makefile").write_text(TOY_MAKEFILE)
    (src / "scripts" / "kconfig").mkdir(parents=True)
    (src / "scripts" / "kconfig" / "merge_config.sh").write_text('#!/bin/sh\n[ "$1" = -m ] && cat "$3" >> "$2"\n')
    tarball = tmp_path / "linux-toy.tar.gz"
    with tarfile.open(str(tarball), "w:gz") as tf:
        tf.add(str(src), arcname="linux-toy")
    return str(tarball)


def test_module_builds_packages_stamps_and_explains_on_a_toy_kernel(capsys, tmp_path):
    build = tmp_path / "b"
    args = dict(build_dir=str(build), tarball=toy_kernel(tmp_path), base_config="tinyconfig", jobs=2,
                config_options=["CONFIG_RELOCATABLE=y", "CONFIG_LIVEUPDATE_MEMFD=y"], require_kho=True,
                localversion="-toy")
    rc, out = run(capsys, **args)
    assert rc == 0 and out["changed"] and out["built"], out.get("msg")
    assert out["kernel_release"] == "7.3.4-toy"
    assert [os.path.basename(p) for p in out["packages"]] == ["linux-image-7.3.4-toy_7.3.4-1_amd64.deb",
                                                              "linux-libc-dev_7.3.4-1_amd64.deb"]
    assert out["image_package"] == out["packages"][0] and out["output_dir"] in out["packages"][0]
    assert out["required"] == {"CONFIG_KEXEC_FILE": "y", "CONFIG_KEXEC_HANDOVER": "y"}
    # A fragment option olddefconfig dropped is a warning naming why, not a failure.
    # (The same text goes out as a warning; how warnings come back depends on what else the test
    # process imported, so the returned reason is what is checked.)
    [changed] = out["changed_options"]
    assert (changed["name"], changed["wanted"], changed["got"]) == ("CONFIG_LIVEUPDATE_MEMFD", "y", "n")
    assert "depends on MEMFD_CREATE (unset: CONFIG_MEMFD_CREATE)" in changed["reason"]
    assert open(out["vmlinuz"]).read() == "kernel\n"
    assert "CONFIG_KEXEC_HANDOVER=y" in open(out["config"]).read()
    log = open(out["build_log"]).read()
    assert "=== " in log and "make -j2" in log and "make bindeb-pkg" in log
    assert not list(build.glob("*.deb"))  # moved beside the stamp
    stamp = json.load(open(os.path.join(out["output_dir"], "kernel_build.json")))
    assert stamp["input_hash"] == out["input_hash"]

    rc, again = run(capsys, **args)
    assert rc == 0 and again["changed"] is False and again["packages"] == out["packages"]

    rc, bad = run(capsys, **dict(args, required_options=["FS_DAX"]))
    assert rc == 1 and "CONFIG_FS_DAX wanted y or m, got n" in bad["msg"]
    assert "fs/Kconfig:6 depends on ZONE_DEVICE (unset: CONFIG_ZONE_DEVICE)" in bad["msg"]
    assert bad["dropped"][0]["option"] == "CONFIG_FS_DAX"


def test_module_reports_a_failing_make_with_the_log(capsys, tmp_path):
    tarball = toy_kernel(tmp_path)
    rc, out = run(capsys, build_dir=str(tmp_path / "b"), tarball=tarball, base_config="defconfig",
                  config_targets=["nonexistent.config"])
    assert rc == 1 and out["msg"].startswith("make nonexistent.config failed (rc 2); the full log is ")
    assert "No rule to make target" in out["stdout"] and out["cmd"] == ["make", "nonexistent.config"]


def test_one_build_at_a_time_per_build_dir(tmp_path):
    # Another process (another playbook run, another checkout's tests) holds the build directory.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(1.5)\n"), str(tmp_path / ".kernel_build.lock")], stdout=subprocess.PIPE, universal_newlines=True)
    assert holder.stdout.readline().strip() == "held"
    waited = kernel_build._lock(str(tmp_path))
    holder.wait()
    assert 0.5 < waited < 30
    assert kernel_build._lock(str(tmp_path)) == 0.0  # this process holds it now
