#!/usr/bin/env bash
# Build the lab's Debian 12 image with mmdebstrap, unless the image for this package list exists.
#
# The tag is a hash of packages.txt and of this script, so editing either rebuilds the image and an
# unchanged pair reuses it. Packages come from this machine's own apt sources.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=nattrail-lab
tag=$(cat "$here/packages.txt" "$here/image.sh" | sha256sum | cut -c1-12)
image=$repo:$tag
sources=${NATTRAIL_APT_SOURCES:-}
if [ -z "$sources" ]; then
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$f" ]; then sources=$f; break; fi
  done
fi

log() { printf 'image: %s\n' "$*" >&2; }

if [ "${1:-}" = "--name" ]; then echo "$image"; exit 0; fi

if docker image inspect "$image" >/dev/null 2>&1; then
  log "$image is up to date"
  docker tag "$image" "$repo:latest"
  exit 0
fi
[ -n "$sources" ] || { log "no apt sources found; set NATTRAIL_APT_SOURCES to a sources.list file"; exit 1; }

work=$(mktemp -d /var/tmp/nattrail-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
packages=$(grep -v '^\s*\(#\|$\)' "$here/packages.txt" | paste -sd, -)

log "building $image from $sources (about a minute)"
# Containers have no consoles, udev, kernel modules or a first boot to run: mask those units so
# systemd reaches "running" quickly. Services that packages enable are disabled: each host runs
# only what its roles enable, as on a fresh router.
mmdebstrap --variant=minbase --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/doc/ulogd2*' --dpkgopt='path-include=/usr/share/doc/ulogd2*/*' \
  --customize-hook='chroot "$1" systemctl mask getty@tty1.service console-getty.service \
      systemd-remount-fs.service systemd-udevd.service systemd-udev-trigger.service \
      systemd-modules-load.service systemd-firstboot.service sys-kernel-debug.mount \
      sys-kernel-tracing.mount sys-kernel-config.mount systemd-journald-audit.socket' \
  --customize-hook='for s in ssh oidentd ulogd2 postgresql danted natlog logrotate.timer \
      apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
      chroot "$1" systemctl disable "$s" 2>/dev/null || true; done' \
  --customize-hook=': > "$1/etc/machine-id"; rm -rf "$1"/var/lib/apt/lists/*' \
  --customize-hook='rm -f "$1/etc/apt/sources.list" "$1"/etc/apt/sources.list.d/*' \
  bookworm "$work/rootfs.tar" "$sources"

docker import --change 'ENV container=docker' --change 'CMD ["/lib/systemd/systemd"]' \
  "$work/rootfs.tar" "$repo:base-$tag" >/dev/null
# dockerd 20.10 refuses STOPSIGNAL in `import --change`; a one-step build adds it.
printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "$repo:base-$tag" | docker build -q -t "$image" - >/dev/null
docker rmi "$repo:base-$tag" >/dev/null
docker tag "$image" "$repo:latest"
log "built $image ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec))"
