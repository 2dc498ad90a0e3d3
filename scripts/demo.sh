#!/usr/bin/env bash
# make demo: provision a 1 GiB NVDIMM with an fsdax namespace named "demo"
# and a 256 MiB virtio-pmem device served over vhost-user by nvdimm-backend,
# boot a real Linux guest with both under QEMU, show what the guest sees
# (ndctl, DAX mounts, files written and fsynced), power off, then show the
# host's view of the same bytes (labels, the guest's NFIT table, the flushes
# the back-end served, the guest's file read back from the backing).
#
# Installs what is missing (as root on Debian 12). Slow first-run steps run
# side by side: the Go build beside the package install, then the guest kit
# (and the KVM probe) beside the QEMU 11.1 root. Everything the demo creates lives in a
# temporary directory (removed at the end) or the harness's cache.
#
# virtio-pmem over vhost-user needs QEMU 11.1 (a Debian forky root, built
# once into the cache as root). When that is not possible, the demo says
# why and boots the host's QEMU with the NVDIMM only.
# NVDIMM_DEMO_VHOST=0 skips the vhost-user part.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step=0
steps=9
bold=$'\033[1m' plain=$'\033[0m'
[ -t 1 ] || bold='' plain=''
say() { step=$((step+1)); printf '\n%s[%d/%d] %s%s  (%ss)\n' "$bold" "$step" "$steps" "$*" "$plain" "$(( $(date +%s) - start ))"; }
note() { printf '    %s\n' "$*"; }
bin=./bin/nvdimm-backend
tmp=$(mktemp -d -t nvdimm-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

say "Building the guest launcher, then preparing QEMU and the guest in the background"
mkdir -p "$tmp/share" bin
go build -tags integration -o "$tmp/nvdimm-guest" ./integration/qemu/cmd/nvdimm-guest
vhost=${NVDIMM_DEMO_VHOST:-1}
if [ "$vhost" = 1 ] && [ "$(id -u)" != 0 ] && [ -z "${NVDIMM_QEMU11_ROOT:-}" ]; then
  note "not root: the QEMU 11.1 root cannot be built; the guest gets the NVDIMM only"
  vhost=0
fi
# Packages from Debian's archive when missing (QEMU 10.0 from
# bookworm-backports, ndctl, busybox, ...), then the guest kit beside the
# QEMU 11.1 root (a Debian forky root, debootstrapped once into the cache).
note "first run: packages, the guest kit and a QEMU 11.1 root (about 1-2 minutes in all); later runs: cached"
if [ "$vhost" = 1 ]; then
  "$tmp/nvdimm-guest" --prepare --qemu 11 >"$tmp/prepare.log" 2>&1 &
else
  "$tmp/nvdimm-guest" --prepare >"$tmp/prepare.log" 2>&1 &
fi
prep_pid=$!
pids+=("$prep_pid")
qemu=host

say "Building nvdimm-backend meanwhile (static: the same binary runs in the guest)"
make -s --no-print-directory build   # the Makefile's recipe: static, version stamped
cp "$bin" "$tmp/share/nvdimm-backend"
note "$("$bin" version)"

say "Provisioning the devices"
img=$tmp/demo.img
"$bin" create "$img" --size 1G --label-size 128K --namespace demo --mode fsdax --slot 0 | sed 's/^/    /'
mapfile -t nvargs < <("$bin" qemu-args "$img" --slot 0 --id demo | tr -s ' \n' '\n' | grep -v '^$')
vp=$tmp/virtio-pmem.img
if [ "$vhost" = 1 ]; then
  "$bin" create "$vp" --size 256M | sed 's/^/    /'
fi

say "Waiting for the preparation (progress as it happens)"
# Show the preparation's progress as it happens, then its result.
tail -n +1 -f --pid="$prep_pid" "$tmp/prepare.log" 2>/dev/null | grep --line-buffered -v '^nvdimm-guest: QEMU 11.1:' | sed -u 's/^/    /' || true
rc=0
wait "$prep_pid" || rc=$?
if [ $rc = 3 ]; then
  note "QEMU 11.1 is not available here, so this run has no virtio-pmem over vhost-user:"
  grep 'QEMU 11.1' "$tmp/prepare.log" | tail -3 | sed 's/^/      /'
  vhost=0
elif [ $rc != 0 ]; then
  echo "preparing the guest kit failed:" >&2
  sed 's/^/    /' "$tmp/prepare.log" >&2
  exit 1
fi
note "$(qemu-system-x86_64 --version | head -1) (host)"

say "Booting a Linux guest (TCG; about 15 s on an idle machine)"
# Machine options the launcher sets itself (q35, nvdimm=on, RAM) are dropped.
extra=()
i=0
while [ $i -lt ${#nvargs[@]} ]; do
  case "${nvargs[$i]}" in
    -machine|-m) i=$((i+2)); continue ;;
  esac
  extra+=("${nvargs[$i]}")
  i=$((i+1))
done
if [ "$vhost" = 1 ]; then
  qemu=11
  sock=$tmp/virtio-pmem.sock
  "$bin" vhost-user serve --socket "$sock" --backing "$vp" >"$tmp/serve.log" 2>&1 &
  serve_pid=$!
  pids+=("$serve_pid")
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || { echo "vhost-user serve did not start:" >&2; cat "$tmp/serve.log" >&2; exit 1; }
  note "vhost-user back-end: $(head -1 "$tmp/serve.log")"
  # The back-end maps guest RAM, so it must be a shared memfd.
  extra+=(-object memory-backend-memfd,id=ram,size=512M,share=on -machine memory-backend=ram
    -chardev "socket,id=pmem0,path=$sock"
    -device vhost-user-test-device-pci,chardev=pmem0,virtio-id=27,num_vqs=1,config_size=16)
fi
note "QEMU $([ $qemu = 11 ] && echo 11.1 || echo "(host)") with: ${extra[*]}"
cat > "$tmp/run.sh" <<'GUEST'
set +x  # the launcher traces every command; the demo shows results only
echo "== the NVDIMM, as the guest's ndctl sees it"
ndctl list -N -b ACPI.NFIT
dev=/dev/$(ndctl list -N -b ACPI.NFIT | sed -n 's/.*"blockdev":"\([^"]*\)".*/\1/p' | head -1)
/usr/local/sbin/mke2fs -q -t ext4 -b 4096 -F "$dev"
mkdir -p /mnt/demo
mount -t ext4 -o dax "$dev" /mnt/demo
grep /mnt/demo /proc/mounts
echo "hello from the guest, written through DAX to the NVDIMM" > /mnt/demo/hello.txt
dd if=/mnt/demo/hello.txt of=/mnt/demo/hello-fsynced.txt conv=fsync 2>/dev/null
echo "wrote and fsynced:"; ls -l /mnt/demo/hello*
umount /mnt/demo
if [ -d /sys/bus/virtio/drivers/virtio_pmem ]; then
  echo "== virtio-pmem over vhost-user"
  v=$(ls /sys/bus/virtio/drivers/virtio_pmem | grep '^virtio' | head -1)
  echo "virtio device $v, id $(cat /sys/bus/virtio/devices/$v/device)"
  blk=$(ls /sys/bus/virtio/devices/$v/ndbus*/region*/namespace*/block/)
  echo "/dev/$blk: $(blockdev --getsize64 /dev/$blk) bytes"
  /usr/local/sbin/mke2fs -q -t ext4 -b 4096 -F /dev/$blk
  mkdir -p /mnt/vp
  mount -t ext4 -o dax /dev/$blk /mnt/vp
  grep /mnt/vp /proc/mounts
  echo "hello from the guest, fsynced through virtio-pmem" > /mnt/vp/hello.txt
  dd if=/mnt/vp/hello.txt of=/mnt/vp/hello-fsynced.txt conv=fsync 2>/dev/null
  echo "wrote and fsynced:"; ls -l /mnt/vp/hello*
  umount /mnt/vp
fi
cat /sys/firmware/acpi/tables/NFIT > /host/nfit.bin
echo "== the guest's own nvdimm-backend decodes its NFIT"
/host/nvdimm-backend nfit dump /host/nfit.bin | head -1
GUEST
"$tmp/nvdimm-guest" --qemu "$qemu" --script "$tmp/run.sh" --share "$tmp/share" --timeout 150s -- "${extra[@]}" |
  sed -u '/^  guest| + set +x$/d'
note "guest powered off"

say "Host view: the label area the guest used"
"$bin" label list "$img" | sed 's/^/    /'
"$bin" label check "$img" | sed 's/^/    /'

say "Host view: the guest's NFIT table"
"$bin" nfit dump "$tmp/share/nfit.bin" | sed 's/^/    /'

say "Host view: the vhost-user back-end"
if [ "$vhost" = 1 ]; then
  kill -TERM "$serve_pid"
  wait "$serve_pid" || true
  note "$(tail -1 "$tmp/serve.log")"
  note "the guest's fsynced file, read from the host backing with debugfs:"
  PATH=$PATH:/sbin:/usr/sbin debugfs -R "cat /hello-fsynced.txt" "$vp" 2>/dev/null | sed 's/^/      /'
else
  note "(skipped: no QEMU 11.1 in this run)"
fi

echo
echo "demo finished in $(( $(date +%s) - start ))s"
