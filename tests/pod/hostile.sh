# Root's bkrun beside what nobody planted in /tmp (tests/pod/hostile-plant.sh), with TMPDIR=/tmp
# so the start-up sweep looks there. Prints one line per check; tests/pod.rs compares them.
# Every run is bounded: a planted FIFO must never block bkrun.
export TMPDIR=/tmp
build() {
  timeout 300 bkrun build --frontend dockerfile.v0 --local context=. --local dockerfile=. "$@"
}
build --output type=local,dest=/tmp/out-hostile >/tmp/hostile-build.log 2>&1
echo "build $?"
# One refusal line each, naming what was planted and by whom.
refusal() {
  what=$1
  kind=$2
  shift 2
  build "$@" >/dev/null 2>/tmp/hostile-err.log
  code=$?
  lines=$(wc -l </tmp/hostile-err.log)
  if grep -q "is a $kind owned by uid 65534" /tmp/hostile-err.log; then said="refused $kind"; else said="said: $(cat /tmp/hostile-err.log)"; fi
  echo "$what $code lines $lines $said"
}
refusal tar symlink --output type=tar,dest=/tmp/img.tar
refusal metadata FIFO --metadata-file /tmp/m.json
echo "victim $(cat /root/victim)"
echo "victim-dir $(cat /root/victim-dir/f)"
cd /tmp && echo "planted" $(ls -d bkrun-fifo bkrun-huge bkrun-link bkrun-x img.tar m.json 2>/dev/null)
rm -f /tmp/hostile-build.log /tmp/hostile-err.log
