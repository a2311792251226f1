#!/bin/sh
# Entry point of the init-container image: copy the runtime into DEST (default /oscar/bin),
# a volume the user's container mounts at /oscar/bin, then exit 0.
#
# The copy's source is /opt/faas-supervisor, not /oscar/bin: a volume mounted at /oscar/bin
# in this container (the same path as in the user's) hides the image's own /oscar/bin.
# (FAAS_SUPERVISOR_BUILD names another source: the tests' builds.)
#
# DEST may be in use, by containers running a build from it or by another injection at
# once, so nothing is ever written where anything reads:
#   DEST/.builds/ID/        a whole build: renamed into place once complete, never changed
#   DEST/faas-supervisor    the launcher: a copy of the build's, replaced by one rename
#   DEST/_internal          a symbolic link to .builds/ID/_internal, switched by one rename
# A running build reads its files by their real path (PyInstaller resolves its executable's
# path), .builds/ID/..., and so keeps its own whatever is switched. A build once injected
# stays there, for the containers that may still run it. Running this again is harmless: an
# identical build is left alone, another one added and switched to.
set -eu
src=${FAAS_SUPERVISOR_BUILD:-/opt/faas-supervisor}
dest=${1:-/oscar/bin}
id=$(cat "$src/.build-id")
build=.builds/$id

# Killed by a signal (docker stop, a pod's deletion), neither dash nor busybox sh runs an
# EXIT trap: each signal's trap cleans up, then exits as the signal would have. (A trap runs
# once the command under way, a copy at most, has ended.)
incoming=
link=
cleanup() { rm -rf ${incoming:+"$incoming"} ${link:+"$link"}; }
trap cleanup EXIT
trap 'cleanup; trap - EXIT; exit 129' HUP
trap 'cleanup; trap - EXIT; exit 130' INT
trap 'cleanup; trap - EXIT; exit 143' TERM

mkdir -p "$dest"
mkdir -p -m 755 "$dest/.builds"  # whatever the umask: the image may run as any user
# What injections killed outright (SIGKILL runs no trap) left: a copy takes seconds, so one
# 10 minutes old has no injection behind it any more. A younger one may be under way.
find "$dest/.builds" -maxdepth 1 \( -name '.incoming.*' -o -name '.link.*' \) -mmin +10 \
  -exec rm -rf {} + || :
if [ ! -d "$dest/$build" ]; then
  # Copied beside, then renamed in whole: a copy cut short is never a build. (Into a
  # folder of its own, whose age is the copy's: cp -a dates a copied folder as its source.)
  # Another injection of this build may rename its copy first: then the build is there.
  incoming=$(mktemp -d "$dest/.builds/.incoming.XXXXXX")
  if ! { cp -a "$src/." "$incoming/build" && mv -T "$incoming/build" "$dest/$build"; }; then
    [ -d "$dest/$build" ] || exit 1
  fi
  rm -rf "$incoming"
  incoming=
fi

if [ "$(readlink "$dest/_internal" || :)" = "$build/_internal" ] &&
    cmp -s "$dest/$build/faas-supervisor" "$dest/faas-supervisor"; then
  echo "faas-supervisor: $dest already holds build $id"
  exit 0
fi
# A folder filled by an earlier inject.sh holds its build in _internal itself: replaced,
# once, as that inject.sh replaced builds.
if [ -d "$dest/_internal" ] && [ ! -L "$dest/_internal" ]; then
  rm -rf "$dest/_internal" "$dest/.build-id"
fi
# The launcher, then _internal: from that rename on, a container that starts runs this
# build whole (in between, this launcher starts the build before: launchers rarely change).
# mv -T: a rename onto the entry itself, never into the folder it names.
link=$(mktemp "$dest/.builds/.link.XXXXXX")
# Not cp -p: dated as the build (older than 10 minutes), a concurrent injection's sweep
# above would take it for a leftover.
cp "$dest/$build/faas-supervisor" "$link"
chmod 755 "$link"
mv -T "$link" "$dest/faas-supervisor"
link=$(mktemp "$dest/.builds/.link.XXXXXX")
ln -sf "$build/_internal" "$link"
mv -T "$link" "$dest/_internal"
link=
echo "faas-supervisor: build $id copied to $dest"
