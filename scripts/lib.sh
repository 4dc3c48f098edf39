# shellcheck shell=bash
# Sourced by the scripts: the cache, the virtualenv, and the collection installed from this tree.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export GUESTMEMFS_CACHE=${GUESTMEMFS_CACHE:-$HOME/.cache/guestmemfs-liveupdate}
venv=$("$top/scripts/bootstrap")
export PATH="$venv/bin:$PATH"
# Built and installed copies of this checkout live apart from other checkouts' (two clones may run
# at once); downloads, the venv and images are shared.
work="$GUESTMEMFS_CACHE/work/$(printf %s "$top" | sha256sum | cut -c1-12)"
mkdir -p "$work"
export ANSIBLE_COLLECTIONS_PATH="$work/collections"
export ANSIBLE_FORCE_COLOR=${ANSIBLE_FORCE_COLOR:-0}

step() { printf '\n=== %s [%s]\n' "$*" "$(date +%H:%M:%S)"; }

# Build the collection from this tree and install it where playbooks find it by FQCN.
install_collection() {
  local out="$work/build"
  rm -rf "$out" && mkdir -p "$out"
  ansible-galaxy collection build --force --output-path "$out" "$top" >/dev/null
  ansible-galaxy collection install --force -p "$ANSIBLE_COLLECTIONS_PATH" "$out"/guestmemfs-liveupdate-*.tar.gz >/dev/null
  echo "installed $(basename "$out"/guestmemfs-liveupdate-*.tar.gz) into $ANSIBLE_COLLECTIONS_PATH"
}
