# Lists what a finished bkrun command left inside its container, one item a line; prints nothing when clean.
# tests/pod.rs runs it with `podman exec CONTAINER sh -c`, as the container's user. Only shell
# builtins scan /proc, so the checker forks nothing the scan could mistake for a leftover.
me=$$
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  # PID 1 is the pod's `sleep infinity`; the checker is this shell (podman exec's processes have
  # no parent inside the container's PID namespace).
  case $pid in 1 | "$me") continue ;; esac
  read -r stat <"$d/stat" 2>/dev/null || continue # exited since the glob
  comm=${stat#*(}
  comm=${comm%)*}
  # shellcheck disable=SC2086 # split the fields after the command name on purpose
  set -- ${stat##*) }
  [ "$2" = "$me" ] && continue
  echo "process $pid ($comm) state $1"
done
# A socket outlives a daemon that was killed rather than stopped.
for dir in /run/user/1000/buildkit /run/buildkit; do
  [ -d "$dir" ] && find "$dir" -type s -printf 'socket %p\n' 2>/dev/null
done
# bkrun's temp dirs, daemon logs and sockets are all named bkrun-*.
set -- /tmp/bkrun-*
[ "${TMPDIR:-/tmp}" = /tmp ] || set -- "$@" "$TMPDIR"/bkrun-*
for f in "$@"; do
  [ -e "$f" ] && echo "temp $f"
done
exit 0
