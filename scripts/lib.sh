# shellcheck shell=bash
# Sourced by the scripts: the cache, the virtualenv, and the collection installed from this tree.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export GUESTMEMFS_CACHE=${GUESTMEMFS_CACHE:-$HOME/.cache/guestmemfs-liveupdate}
venv=$("$top/scripts/bootstrap")
export PATH="$venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$GUESTMEMFS_CACHE/collections"
export ANSIBLE_FORCE_COLOR=${ANSIBLE_FORCE_COLOR:-0}

step() { printf '\n=== %s [%s]\n' "$*" "$(date +%H:%M:%S)"; }

# Build the collection from this tree and install it where playbooks find it by FQCN.
install_collection() {
  local out="$GUESTMEMFS_CACHE/build"
  rm -rf "$out" && mkdir -p "$out"
  ansible-galaxy collection build --force --output-path "$out" "$top" >/dev/null
  ansible-galaxy collection install --force -p "$ANSIBLE_COLLECTIONS_PATH" "$out"/guestmemfs-liveupdate-*.tar.gz >/dev/null
  echo "installed $(basename "$out"/guestmemfs-liveupdate-*.tar.gz) into $ANSIBLE_COLLECTIONS_PATH"
}
