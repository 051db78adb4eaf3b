#!/bin/sh
# Makes the compose lab's base image where no image registry is reachable: Debian
# bookworm from Debian's own packages (debootstrap), with what the Dockerfile would
# install already in it, plus this machine's Node.js, npm and Node headers (node-gyp
# builds the addon against them). The same image runs the lab's etcd (etcd-server).
#
#   lab/compose/make-base.sh weft-base:local
#   WEFT_BASE_IMAGE=weft-base:local WEFT_ETCD_IMAGE=weft-base:local \
#     docker-compose -f lab/compose/docker-compose.yml up --build
#
# WEFT_BASE_CACHE=FILE keeps the root filesystem as a tar there and imports that next
# time (debootstrap takes minutes); WEFT_DEBIAN_MIRROR overrides deb.debian.org.
set -eu

tag=${1:?usage: make-base.sh TAG}
cache=${WEFT_BASE_CACHE:-}
mirror=${WEFT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The Dockerfile's tools, the build's compilers (node:20-bookworm has them), and etcd.
packages=iproute2,iptables,iputils-ping,containernetworking-plugins,etcd-client,g++,make,python3,ca-certificates,etcd-server

if [ -n "$cache" ] && [ -s "$cache" ]; then
  docker import --change 'ENV npm_config_nodedir=/usr/local' "$cache" "$tag" >/dev/null
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/weft-base-XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
root=$work/rootfs
if ! debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
  tail -n 5 "$work/debootstrap.log" >&2
  echo "make-base: debootstrap of bookworm from $mirror failed" >&2
  exit 1
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

# Node as this machine has it, laid out as the official node images do (/usr/local).
node=$(readlink -f "$(command -v node)")
prefix=$(dirname "$(dirname "$node")")
npm_dir=$(npm root -g)/npm
mkdir -p "$root/usr/local/bin" "$root/usr/local/lib/node_modules" "$root/usr/local/include" "$root/usr/local/etc"
cp "$node" "$root/usr/local/bin/node"
cp -a "$npm_dir" "$root/usr/local/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"
cp -a "$prefix/include/node" "$root/usr/local/include/node"
# The machine's npm settings and CA bundle, so npm in the build reaches the registry as here.
globalrc=$(npm config get globalconfig)
[ -f "$globalrc" ] && cp "$globalrc" "$root/usr/local/etc/npmrc"
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
chroot "$root" /usr/local/bin/node --version >/dev/null

tar -C "$root" -cf "$work/rootfs.tar" .
docker import --change 'ENV npm_config_nodedir=/usr/local' "$work/rootfs.tar" "$tag" >/dev/null
if [ -n "$cache" ]; then
  mkdir -p "$(dirname "$cache")"
  mv "$work/rootfs.tar" "$cache.tmp"
  mv "$cache.tmp" "$cache"
fi
