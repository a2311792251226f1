#!/bin/sh
# faas-supervisor: starts the self-contained runtime through its own C library and loader
# (packaging/own_libc.py), so that it runs in any x86-64 Linux image with a /bin/sh.
#
# At the runtime's fixed path, /oscar/bin, the executable is exec'd as it is: its
# interpreter is /oscar/bin/_internal/ld-linux-x86-64.so.2. Anywhere else (dist/ on the
# build machine, a copy in another folder) the bundled loader runs it explicitly.
#
# The image's LD_LIBRARY_PATH, LD_PRELOAD and LD_AUDIT name libraries built for the image's
# C library: they are kept aside (set, even empty, or not), never used by this process, and
# given back exactly to the user's script (faas_supervisor/frozen.py). PyInstaller's own
# LD_LIBRARY_PATH_ORIG cannot do it: written only for a non-empty value, over the image's.
self=$0
while [ -L "$self" ]; do  # a symbolic link to the launcher: the folder is the target's
  link=$(readlink "$self")
  case $link in /*) self=$link ;; *) self=${self%/*}/$link ;; esac
done
case $self in */*) dir=${self%/*} ;; *) dir=. ;; esac
if [ -n "${LD_LIBRARY_PATH+set}" ]; then
  export _FAAS_SUPERVISOR_LD_LIBRARY_PATH="$LD_LIBRARY_PATH"
  unset LD_LIBRARY_PATH
fi
if [ -n "${LD_PRELOAD+set}" ]; then
  export _FAAS_SUPERVISOR_LD_PRELOAD="$LD_PRELOAD"
  unset LD_PRELOAD
fi
if [ -n "${LD_AUDIT+set}" ]; then
  export _FAAS_SUPERVISOR_LD_AUDIT="$LD_AUDIT"
  unset LD_AUDIT
fi
if [ "$dir" = /oscar/bin ]; then
  exec /oscar/bin/_internal/faas-supervisor "$@"
fi
exec "$dir/_internal/ld-linux-x86-64.so.2" --inhibit-cache --library-path "$dir/_internal" \
  "$dir/_internal/faas-supervisor" "$@"
