#!/bin/bash
# A single-node, in-memory Ceph cluster (Debian 12: Ceph 16.2) with a RADOS Gateway on
# 127.0.0.1:$RGW_PORT (default 8000). Run as root. A copy of the project's recipe
# (recipes/ceph-rgw.sh), with the monitor's ports settable too ($MON_PORT_V2, default
# 3300, and $MON_PORT_V1, default 6789) so that a test can run it on free ports.
# Needs: apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-common
set -e
D=${CEPH_DIR:-$(mktemp -d)}
PORT=${RGW_PORT:-8000}
MON_V2=${MON_PORT_V2:-3300}
MON_V1=${MON_PORT_V1:-6789}
MON_ADDRS="[v2:127.0.0.1:$MON_V2,v1:127.0.0.1:$MON_V1]"
rm -rf "$D"; mkdir -p "$D"/{run,log,mon.a,osd.0,rgw.a}; cd "$D"
FSID=$(python3 -c 'import uuid;print(uuid.uuid4())')
cat > ceph.conf <<CONF
[global]
fsid = $FSID
mon host = $MON_ADDRS
mon initial members = a
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
ms mon client mode = crc secure
ms client mode = crc secure
run dir = $D/run
admin socket = $D/run/\$name.asok
log file = $D/log/\$name.log
pid file = $D/run/\$name.pid
keyring = $D/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0

[mon]
mon data = $D/mon.\$id

[osd]
osd data = $D/osd.\$id
osd objectstore = memstore
memstore device bytes = 2147483648

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw data = $D/rgw.a
CONF
export CEPH_CONF=$D/ceph.conf
ceph-authtool --create-keyring keyring --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool keyring --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
ceph-authtool keyring --gen-key -n client.rgw.a --cap mon 'allow rw' --cap osd 'allow rwx' >/dev/null
monmaptool --create --addv a "$MON_ADDRS" --fsid $FSID monmap >/dev/null
ceph-mon --mkfs -i a --monmap monmap --keyring keyring
ceph-mon -i a                          # daemonizes
OSDUUID=$(python3 -c 'import uuid;print(uuid.uuid4())')
timeout 30 ceph osd new $OSDUUID >/dev/null
ceph-osd -i 0 --mkfs --osd-uuid $OSDUUID 2>/dev/null
ceph-osd -i 0 2>/dev/null             # daemonizes
for i in $(seq 60); do timeout 10 ceph osd stat | grep -q '1 up' && break; sleep 1; done
radosgw -n client.rgw.a              # daemonizes
for i in $(seq 60); do [ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:$PORT/)" = 200 ] && break; sleep 1; done
# Unlike the recipe, fail here when RGW never answered (it may have died, say on a taken
# port): radosgw-admin below talks to RADOS directly and would succeed anyway.
[ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:$PORT/)" = 200 ] || {
  echo "radosgw did not answer on 127.0.0.1:$PORT" >&2; exit 1; }
timeout 60 radosgw-admin user create --uid=test --display-name=t --access-key=K --secret=S >/dev/null
echo "RGW ready on http://127.0.0.1:$PORT (access key K, secret S), cluster in $D; pids: mon=$(cat run/mon.a.pid) osd=$(cat run/osd.0.pid) rgw=$(cat run/client.rgw.a.pid)"
