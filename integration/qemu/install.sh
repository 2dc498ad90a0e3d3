#!/usr/bin/env bash
# Installs what the integration harness and `make demo` need, from Debian's
# archive, when something is missing. Idempotent and quick when all is present.
#
#   install.sh          install what is missing (needs root), exit 0 when all present
#   install.sh --check  only report; exit 1 when something is missing
#   install.sh --print-backports-source   print the apt source it would write
#
# QEMU comes from bookworm-backports (10.0). When no apt source for that suite
# exists, one is written that reuses the mirror and keyring of the machine's
# own Debian source (never a hard-coded host).
set -euo pipefail

apt_dir=${NVDIMM_APT_DIR:-/etc/apt}   # overridable for the harness's own tests

# backports_source prints a deb822 stanza for bookworm-backports that reuses
# the mirror and keyring of the first Debian source listing 'bookworm'
# (deb822 *.sources first, then a one-line sources.list).
backports_source() {
  local f uri="" key=""
  for f in "$apt_dir"/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    IFS=$'\t' read -r uri key < <(awk '
      BEGIN{RS=""; FS="\n"}
      {
        u=""; s=""; k="";
        for(i=1;i<=NF;i++){
          if($i ~ /^URIs:/){u=$i; sub(/^URIs:[ \t]*/,"",u); sub(/[ \t].*/,"",u)}
          if($i ~ /^Suites:/){s=$i; sub(/^Suites:[ \t]*/,"",s)}
          if($i ~ /^Signed-By:/){k=$i; sub(/^Signed-By:[ \t]*/,"",k)}
        }
        if(k !~ /^\//) k="";   # an inline key block is not reused
        n=split(s, a, /[ \t]+/);
        for(j=1;j<=n;j++) if(a[j]=="bookworm"){ printf "%s\t%s\n", u, k; exit }
      }' "$f") || true
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ] && [ -f "$apt_dir/sources.list" ]; then
    uri=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit} $1=="deb" && $2 ~ /^\[/ && $4=="bookworm" {print $3; exit}' "$apt_dir/sources.list")
  fi
  if [ -z "$uri" ]; then
    echo "install.sh: no Debian bookworm apt source in $apt_dir to derive the backports mirror from" >&2
    return 1
  fi
  echo "Types: deb"
  echo "URIs: $uri"
  echo "Suites: bookworm-backports"
  echo "Components: main"
  if [ -n "$key" ]; then echo "Signed-By: $key"; fi
}

if [ "${1:-}" = --print-backports-source ]; then
  backports_source
  exit
fi

need_cmds=(qemu-system-x86_64 busybox ndctl daxctl mke2fs depmod cpio zstd xz iasl dpkg-deb debootstrap)
pkgs=(busybox-static ndctl daxctl e2fsprogs kmod cpio zstd xz-utils acpica-tools debootstrap)

missing=()
for c in "${need_cmds[@]}"; do
  command -v "$c" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
# busybox must be the static build (it runs inside the guest).
if command -v busybox >/dev/null 2>&1 && ldd "$(command -v busybox)" >/dev/null 2>&1; then
  missing+=(busybox-static)
fi
qemu_ok=1
if command -v qemu-system-x86_64 >/dev/null 2>&1; then
  v=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
  [ "${v:-0}" -ge 10 ] || qemu_ok=0
else
  qemu_ok=0
fi

if [ ${#missing[@]} -eq 0 ] && [ $qemu_ok = 1 ]; then
  exit 0
fi
if [ "${1:-}" = --check ]; then
  echo "missing: ${missing[*]}$([ $qemu_ok = 1 ] || echo ' qemu>=10')"
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "install.sh: missing ${missing[*]} (qemu>=10: $qemu_ok); run as root to install" >&2
  exit 1
fi
command -v apt-get >/dev/null || { echo "install.sh: apt-get not found: not a Debian system" >&2; exit 1; }

# Make sure a bookworm-backports source exists, derived from the machine's
# own Debian source entry (URIs + Signed-By of the stanza listing 'bookworm').
if ! grep -rqs 'bookworm-backports' "$apt_dir/sources.list" "$apt_dir/sources.list.d/" ; then
  stanza=$(backports_source) || exit 1
  printf '%s\n' "$stanza" > "$apt_dir/sources.list.d/bookworm-backports.sources"
  echo "install.sh: wrote $apt_dir/sources.list.d/bookworm-backports.sources:"
  printf '%s\n' "$stanza" | sed 's/^/  /'
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
if [ $qemu_ok = 0 ]; then
  apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils
fi
echo "install.sh: installed ${pkgs[*]}$([ $qemu_ok = 1 ] || echo ' qemu-system-x86 (bookworm-backports)')"
