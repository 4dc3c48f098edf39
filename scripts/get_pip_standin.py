# Stand-in for ansible-test's get-pip.py, whose download host this network cannot reach: it runs
# pip from the wheel beside it (fetched from PyPI by scripts/sanity) with the arguments given.
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = "@PIP_VERSION@"

sys.path.insert(0, sorted(glob.glob(os.path.join(HERE, "pip-%s-*.whl" % VERSION)))[-1])
from pip._internal.cli.main import main  # noqa: E402  (importable only once the wheel is on sys.path)

sys.exit(main(["install"] + [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]))
