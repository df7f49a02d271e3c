# SIGKILLs a `bkrun build` while its RUN step runs (as a CI runner's timeout does), then lists what
# of the run is still alive, one `left …` line each; then a second build on the same state dir.
# tests/pod.rs runs it with `podman exec CONTAINER sh -c`, as the container's user.

# The RUN step's marker, put together here so this script's own text never holds it.
m=98765
printf '%s\n' 'FROM scratch' 'COPY busybox /bin/busybox' \
  "RUN [\"/bin/busybox\",\"sh\",\"-c\",\"/bin/busybox sleep ${m}43 & /bin/busybox sleep ${m}44\"]" >/tmp/Dockerfile.kill

# Processes whose command line matches $1. This shell and its subshells are skipped by name
# (the RUN step's shell is busybox); the pattern is bracketed so grep does not match itself.
matching() {
  for d in /proc/[0-9]*; do
    read -r comm <"$d/comm" 2>/dev/null || continue
    [ "$comm" = sh ] && continue
    grep -qsE "$1" "$d/cmdline" && echo "$d"
  done
}
RUN_STEP="[${m%????}]${m#?}4[34]"
RUN_ALL="$RUN_STEP|[b]uildkitd|[r]ootlesskit|[r]unc "

bkrun build --frontend dockerfile.v0 --local context=. --local dockerfile=/tmp \
  --opt filename=Dockerfile.kill --progress=plain >/tmp/kill.log 2>&1 &
pid=$!
i=0
until [ -n "$(matching "$RUN_STEP")" ]; do
  i=$((i + 1))
  if [ $i -gt 600 ]; then
    echo "the RUN step never started:"
    cat /tmp/kill.log
    exit 1
  fi
  sleep 0.1
done
kill -9 $pid
wait $pid
echo "exit $?"
# Everything of the run dies with bkrun; give the kernel's kills a moment, no more.
i=0
while [ -n "$(matching "$RUN_ALL")" ] && [ $i -lt 50 ]; do
  i=$((i + 1))
  sleep 0.1
done
for d in $(matching "$RUN_ALL"); do
  echo "left $(tr '\0' ' ' <"$d/cmdline")"
done
rm -f /tmp/kill.log /tmp/Dockerfile.kill
# The next build on the same state dir: sweeps the dead run's dir and socket, repairs, builds.
bkrun build --frontend dockerfile.v0 --local context=. --local dockerfile=. --progress=plain
