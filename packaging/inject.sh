#!/bin/sh
# Entry point of the init-container image: copy the runtime into DEST (default /oscar/bin),
# a volume the user's container mounts at /oscar/bin, then exit 0.
#
# The copy's source is /opt/faas-supervisor, not /oscar/bin: a volume mounted at /oscar/bin
# in this container (the same path as in the user's) hides the image's own /oscar/bin.
# Running it again is harmless: an identical build is left alone, another one replaced.
set -eu
src=/opt/faas-supervisor
dest=${1:-/oscar/bin}

mkdir -p "$dest"
if [ -f "$dest/.build-id" ] && cmp -s "$src/.build-id" "$dest/.build-id"; then
  echo "faas-supervisor: $dest already holds build $(cat "$src/.build-id")"
  exit 0
fi
# Copy beside the target first, then swap entries in by rename: a user container that
# runs the old build keeps its open files, and an interrupted copy leaves no half-build.
incoming=$(mktemp -d "$dest/.incoming.XXXXXX")
trap 'rm -rf "$incoming"' EXIT
cp -a "$src/." "$incoming/"
for path in "$incoming"/* "$incoming"/.build-id; do
  name=${path##*/}
  rm -rf "${dest:?}/$name"
  mv "$path" "$dest/$name"
done
echo "faas-supervisor: build $(cat "$dest/.build-id") copied to $dest"
