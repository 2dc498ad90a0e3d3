#!/usr/bin/env bash
# make demo: provision a 1 GiB NVDIMM with an fsdax namespace named "demo",
# boot a real Linux guest with it under QEMU, show what the guest sees (ndctl,
# a DAX mount, a file written and fsynced), power off, then show the host's
# view of the same bytes (labels, the guest's NFIT table).
# Installs what is missing (as root on Debian 12); everything it creates lives
# in a temporary directory (removed at the end) or the guest-kit cache.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step=0
steps=7
say() { step=$((step+1)); printf '\n\033[1m[%d/%d] %s\033[0m  (%ss)\n' "$step" "$steps" "$*" "$(( $(date +%s) - start ))"; }
[ -t 1 ] || say() { step=$((step+1)); printf '\n[%d/%d] %s  (%ss)\n' "$step" "$steps" "$*" "$(( $(date +%s) - start ))"; }
bin=./bin/nvdimm-backend

say "Checking QEMU and the guest userland"
if ! ./integration/qemu/install.sh --check >/dev/null 2>&1; then
  echo "installing what is missing from Debian's archive..."
  ./integration/qemu/install.sh
fi
qemu-system-x86_64 --version | head -1

say "Building nvdimm-backend (host) and a static copy for the guest"
tmp=$(mktemp -d -t nvdimm-demo.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
[ -x "$bin" ] || go build -o "$bin" ./cmd/nvdimm-backend
mkdir -p "$tmp/share"
CGO_ENABLED=0 go build -o "$tmp/share/nvdimm-backend" ./cmd/nvdimm-backend
go build -tags integration -o "$tmp/nvdimm-guest" ./integration/qemu/cmd/nvdimm-guest
"$bin" version

say "Provisioning a 1 GiB NVDIMM backing with an fsdax namespace \"demo\""
img=$tmp/demo.img
guest_makes_namespace=0
if ! "$bin" create "$img" --size 1G --label-size 128K --namespace demo --mode fsdax --slot 0 2>"$tmp/create.err"; then
  if grep -q "not built in" "$tmp/create.err"; then
    echo "(namespace provisioning is not built into this version: creating a labelled backing; the guest's ndctl will create \"demo\")"
    rm -f "$img" "$img.nvdimm.json"
    "$bin" create "$img" --size 1G --label-size 128K
    guest_makes_namespace=1
  else
    cat "$tmp/create.err" >&2
    exit 1
  fi
fi
mapfile -t qargs < <("$bin" qemu-args "$img" --slot 0 --id demo | tr -s ' \n' '\n' | grep -v '^$')
printf 'QEMU arguments: %s\n' "${qargs[*]}"

say "Booting a Linux guest with it (TCG; about 20-40 s)"
cat > "$tmp/run.sh" <<GUEST
if [ $guest_makes_namespace = 1 ]; then
  ndctl create-namespace -f -e namespace0.0 -m fsdax -n demo >/dev/null
fi
ndctl list -N
dev=/dev/\$(ndctl list -N | sed -n 's/.*"blockdev":"\([^"]*\)".*/\1/p' | head -1)
/usr/local/sbin/mke2fs -q -t ext4 -b 4096 -F "\$dev"
mkdir -p /mnt/demo
mount -t ext4 -o dax "\$dev" /mnt/demo
grep /mnt/demo /proc/mounts
echo "hello from the guest, written through DAX at \$(date)" > /mnt/demo/hello.txt
dd if=/mnt/demo/hello.txt of=/mnt/demo/hello-fsynced.txt conv=fsync 2>/dev/null
ls -l /mnt/demo
cat /mnt/demo/hello-fsynced.txt
umount /mnt/demo
cat /sys/firmware/acpi/tables/NFIT > /host/nfit.bin
if /host/nvdimm-backend nfit --help >/dev/null 2>&1; then /host/nvdimm-backend nfit dump /host/nfit.bin | head -20; fi
GUEST
# Machine options the harness sets itself (q35, nvdimm=on, RAM) are dropped.
extra=()
i=0
while [ $i -lt ${#qargs[@]} ]; do
  case "${qargs[$i]}" in
    -machine|-m) i=$((i+2)); continue ;;
  esac
  extra+=("${qargs[$i]}")
  i=$((i+1))
done
"$tmp/nvdimm-guest" --script "$tmp/run.sh" --share "$tmp/share" --timeout 150s -- "${extra[@]}"
echo "guest powered off"

say "Host view: the label area the guest saw"
if "$bin" label list --help >/dev/null 2>&1; then
  "$bin" label list "$img"
else
  echo "(label verbs not built into this version)"
  "$bin" inspect "$img"
fi

say "Host view: the guest's NFIT table"
if "$bin" nfit dump --help >/dev/null 2>&1; then
  "$bin" nfit dump "$tmp/share/nfit.bin"
else
  echo "(nfit verbs not built into this version; $(stat -c %s "$tmp/share/nfit.bin")-byte table:)"
  od -A x -t x1z -N 96 "$tmp/share/nfit.bin"
fi

say "Done"
echo "demo finished in $(( $(date +%s) - start ))s"
