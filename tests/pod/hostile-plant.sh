# What any other uid of a pod can put in the shared /tmp before root's bkrun runs there: a dead
# run dir whose socket record names root's file, a FIFO as a run dir's lock, a run dir that is
# a link to root's directory, a huge record, and an output name and a metadata name as a link
# to root's file and a FIFO. tests/pod.rs runs it with `podman exec --user 65534:65534`.
set -e
cd /tmp
mkdir bkrun-x
touch bkrun-x/owner.lock
printf /root/victim >bkrun-x/socket
chmod 700 bkrun-x
mkdir bkrun-fifo
mkfifo bkrun-fifo/owner.lock
chmod 700 bkrun-fifo
ln -s /root/victim-dir bkrun-link
mkdir bkrun-huge
touch bkrun-huge/owner.lock
head -c 8000000 /dev/zero >bkrun-huge/socket
chmod 700 bkrun-huge
ln -s /root/victim img.tar
mkfifo m.json
touch -h -d 2020-01-01 bkrun-x bkrun-fifo bkrun-link bkrun-huge bkrun-x/owner.lock bkrun-x/socket \
  bkrun-huge/owner.lock
