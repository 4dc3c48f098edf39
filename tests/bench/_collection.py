"""Make this checkout importable as ansible_collections.guestmemfs.liveupdate for a benchmark."""

import atexit
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def importable_collection():
    tree = tempfile.mkdtemp(prefix="glu-bench-")
    os.makedirs(os.path.join(tree, "ansible_collections", "guestmemfs"))
    os.symlink(ROOT, os.path.join(tree, "ansible_collections", "guestmemfs", "liveupdate"))
    sys.path.insert(0, tree)
    atexit.register(shutil.rmtree, tree, True)  # removes the symlink, never what it points at
