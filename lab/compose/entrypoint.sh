#!/bin/sh
# A weft host of the compose lab, as a container's main process: waits for etcd, puts
# the network config unless one is there, starts weftd, waits for its subnet.env,
# makes one pod through the CNI chain (kube-flannel's conflist), then stays until
# weftd exits or the container is stopped, when it removes the pod (CNI DEL) and
# stops weftd.
#
# weftd takes its flags from FLANNELD_* variables, as flanneld does; this script
# reads the same ones and sets defaults for a compose network:
#   FLANNELD_ETCD_ENDPOINTS  http://etcd:2379      FLANNELD_IFACE        eth0
#   FLANNELD_ETCD_PREFIX     /coreos.com/network   FLANNELD_IP_MASQ      true (as kube-flannel runs flanneld)
#   FLANNELD_SUBNET_FILE     /run/flannel/subnet.env
# and its own:
#   WEFT_DIR             /opt/weft (the built repo)
#   WEFT_NETWORK_CONFIG  {"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}
#   WEFT_POD_NS          pod (the pod's network namespace: ip netns exec pod sh)
#   WEFT_WAIT_SECONDS    60 (for etcd, then for subnet.env)
set -eu

WEFT_DIR=${WEFT_DIR:-/opt/weft}
: "${FLANNELD_ETCD_ENDPOINTS:=http://etcd:2379}"
: "${FLANNELD_ETCD_PREFIX:=/coreos.com/network}"
: "${FLANNELD_SUBNET_FILE:=/run/flannel/subnet.env}"
: "${FLANNELD_IFACE:=eth0}"
: "${FLANNELD_IP_MASQ:=true}"
export FLANNELD_ETCD_ENDPOINTS FLANNELD_ETCD_PREFIX FLANNELD_SUBNET_FILE FLANNELD_IFACE FLANNELD_IP_MASQ
NETWORK_CONFIG=${WEFT_NETWORK_CONFIG:-'{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}'}
POD_NS=${WEFT_POD_NS:-pod}
WAIT=${WEFT_WAIT_SECONDS:-60}
HOST=${HOSTNAME:-$(hostname)}

log() { echo "weft-host $HOST: $*"; }
etcdctl_() {
  ETCDCTL_API=3 etcdctl --endpoints="$FLANNELD_ETCD_ENDPOINTS" --dial-timeout=2s --command-timeout=5s "$@"
}
pod() { node "$WEFT_DIR/dist/lab/compose/pod.js" "$@" --subnet-file "$FLANNELD_SUBNET_FILE"; }

WEFTD=
POD_IP=
cleanup() {
  trap - TERM INT
  if [ -n "$POD_IP" ] || ip netns list | cut -d' ' -f1 | grep -qx "$POD_NS"; then
    pod del "$POD_NS" || log "CNI DEL of $POD_NS failed"
    ip netns del "$POD_NS" 2>/dev/null || true
  fi
  if [ -n "$WEFTD" ] && kill -0 "$WEFTD" 2>/dev/null; then
    kill -TERM "$WEFTD"
    wait "$WEFTD" || true
  fi
  log "stopped"
}
trap 'cleanup; exit 0' TERM INT

log "waiting for etcd at $FLANNELD_ETCD_ENDPOINTS"
tries=0
until etcdctl_ endpoint health >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge $((WAIT * 2)) ]; then
    log "etcd at $FLANNELD_ETCD_ENDPOINTS is not healthy after ${WAIT} s"
    exit 1
  fi
  sleep 0.5
done

# Put the config only if the key does not exist (one transaction, so the hosts racing
# here cannot overwrite a config someone else put). etcdctl txn wants the value as a
# double-quoted string, and the request sections ended by blank lines.
quoted=$(printf '%s' "$NETWORK_CONFIG" | sed 's/\\/\\\\/g; s/"/\\"/g')
outcome=$(printf 'create("%s/config") = "0"\n\nput %s/config "%s"\n\n\n' \
  "$FLANNELD_ETCD_PREFIX" "$FLANNELD_ETCD_PREFIX" "$quoted" | etcdctl_ txn | head -n 1)
case "$outcome" in
  SUCCESS) log "put the network config $NETWORK_CONFIG" ;;
  FAILURE) log "network config already there: $(etcdctl_ get --print-value-only "$FLANNELD_ETCD_PREFIX/config")" ;;
  *)
    log "could not put the network config into etcd at $FLANNELD_ETCD_ENDPOINTS"
    exit 1
    ;;
esac

# A stale subnet.env would look like this start's; weftd gets its old subnet back
# from the lease its public IP holds in etcd anyway.
rm -f "$FLANNELD_SUBNET_FILE"
node "$WEFT_DIR/dist/control/main.js" &
WEFTD=$!
tries=0
until [ -s "$FLANNELD_SUBNET_FILE" ]; do
  if ! kill -0 "$WEFTD" 2>/dev/null; then
    wait "$WEFTD" || true
    log "weftd exited before writing $FLANNELD_SUBNET_FILE"
    exit 1
  fi
  tries=$((tries + 1))
  if [ "$tries" -ge $((WAIT * 5)) ]; then
    log "weftd wrote no $FLANNELD_SUBNET_FILE in ${WAIT} s"
    cleanup
    exit 1
  fi
  sleep 0.2
done
log "weftd is up: $(grep FLANNEL_SUBNET "$FLANNELD_SUBNET_FILE")"

ip netns del "$POD_NS" 2>/dev/null || true
ip netns add "$POD_NS"
ip -n "$POD_NS" link set lo up
if ! POD_IP=$(pod add "$POD_NS"); then
  log "CNI ADD of $POD_NS failed"
  cleanup
  exit 1
fi
log "pod $POD_NS is up with $POD_IP (enter it: ip netns exec $POD_NS sh)"
log "ready"

# Stay while weftd runs; a TERM or INT runs the trap. `wait` returns early when a
# trapped signal arrives, so loop until weftd itself is gone.
status=0
while kill -0 "$WEFTD" 2>/dev/null; do
  wait "$WEFTD" || status=$?
done
log "weftd exited ($status)"
WEFTD=
cleanup
exit 1
