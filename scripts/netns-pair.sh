#!/usr/bin/env bash
# Two hosts on this machine, to try hasync's network faults by hand (the pytest suite tests/netns does
# the same per test). Network namespaces hasync-pair-a (node-a, active, 10.231.0.1) and hasync-pair-b
# (node-b, standby, 10.231.0.2), joined by a veth pair whose ends live only inside them; one
# `hasync agent` in each, from a generated pair config. Needs root. Traffic only goes between the two
# private addresses inside the namespaces.
#
#   scripts/netns-pair.sh up           create the hosts and start both agents (cleans up a previous,
#                                      possibly crashed, run first; keeps its configs and data)
#   scripts/netns-pair.sh down         stop the agents, delete both namespaces (veth, nft rules go with them)
#   scripts/netns-pair.sh status       namespaces, agents, `hasync status` of the standby
#   scripts/netns-pair.sh run a|b ARGS run `hasync ARGS -c <that node's config>` on that host
#   scripts/netns-pair.sh cut|restore  pull the standby's cable out (ip link set down) / plug it back
#   scripts/netns-pair.sh partition|heal   silent partition: the active drops all packets from and to
#                                      the standby (nftables), connections hang / remove the rules
#   scripts/netns-pair.sh kill a|b     kill -9 that host's agent;  `start a|b` starts it again
#
# Environment: HASYNC_PAIR_DIR (default /tmp/hasync-netns-pair): configs, data, state, logs;
# HASYNC_PAIR_INTERVAL (default 10): [check] interval_s; HASYNC_PAIR_USER (e.g. nobody): run the agents
# as that user (needed for the junk_file / permission_denied causes: root reads mode-000 files).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

NS_A=hasync-pair-a NS_B=hasync-pair-b
ADDR_A=10.231.0.1 ADDR_B=10.231.0.2 PORT=28443
DIR=${HASYNC_PAIR_DIR:-/tmp/hasync-netns-pair}
INTERVAL=${HASYNC_PAIR_INTERVAL:-10}
RUN_AS=${HASYNC_PAIR_USER:-}
PY=$repo/.venv/bin/python

die() { echo "netns-pair: $*" >&2; exit 2; }
ns_of() { case "$1" in a) echo $NS_A ;; b) echo $NS_B ;; *) die "node must be a or b, got '$1'" ;; esac; }
exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
drop=()  # run as $RUN_AS when set: setpriv after entering the namespace (which needs root)
[ -z "$RUN_AS" ] || drop=(setpriv --reuid="$(id -u "$RUN_AS")" --regid="$(id -g "$RUN_AS")" --clear-groups)

need_root() { [ "$(id -u)" = 0 ] || die "needs root (network namespaces, veth, nftables)"; }

down() {
  for ns in $NS_A $NS_B; do
    exists $ns || continue
    # Processes keep a namespace (and its veth) alive: stop them first, SIGTERM then SIGKILL.
    pids=$(ip netns pids $ns)
    [ -z "$pids" ] || kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 60); do [ -z "$(ip netns pids $ns)" ] && break; sleep 0.1; done
    pids=$(ip netns pids $ns)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    ip netns delete $ns
    echo "deleted netns $ns"
  done
  rm -f "$DIR"/run/agent-*.pid
}

write_configs() {
  # hasync's own pair writer (the demo's), then each host's address and the peer's.
  "$PY" - "$DIR" "$INTERVAL" <<'EOF'
import sys
from pathlib import Path

from hasync.demo import seed, write_pair

base, interval = Path(sys.argv[1]), float(sys.argv[2])
pair = write_pair(base, port_a=28443, port_b=28443, interval_s=interval)
addr = {"node-a": "10.231.0.1", "node-b": "10.231.0.2"}
for me, peer, cfg in (("node-a", "node-b", pair.config_a), ("node-b", "node-a", pair.config_b)):
    text = cfg.read_text()
    text = text.replace('listen = "127.0.0.1:28443"', f'listen = "{addr[me]}:28443"')
    text = text.replace('address = "127.0.0.1:28443"', f'address = "{addr[peer]}:28443"\ntimeout_s = 3')
    cfg.write_text(text)
seed(pair.data_a)
EOF
}

start_agent() {  # $1: a|b
  local node=$1 ns
  ns=$(ns_of "$1")
  mkdir -p "$DIR/logs" "$DIR/run"
  # setsid: the agent outlives this shell; `down` finds it through `ip netns pids`.
  PYTHONUNBUFFERED=1 setsid ip netns exec "$ns" "${drop[@]}" \
    "$PY" -m hasync agent -c "$DIR/node-$node.toml" >>"$DIR/logs/agent-$node.out" 2>&1 </dev/null &
  echo $! >"$DIR/run/agent-$node.pid"
}

wait_healthy() {  # $1: a|b
  local ns addr
  ns=$(ns_of "$1")
  addr=$([ "$1" = a ] && echo $ADDR_A || echo $ADDR_B)
  for _ in $(seq 150); do
    if ip netns exec "$ns" "$PY" -c "import urllib.request as u; u.urlopen('http://$addr:$PORT/healthz', timeout=1)" \
      2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "node-$1 did not answer /healthz in 30 s; see $DIR/logs/agent-$1.out" >&2
  return 1
}

up() {
  need_root
  [ -x "$PY" ] || . scripts/venv.sh ""
  down  # a previous run, crashed or not
  mkdir -p "$DIR/logs" "$DIR/run"
  [ -f "$DIR/node-a.toml" ] || write_configs
  if [ -n "$RUN_AS" ]; then  # the agents write their state, logs and the standby's data there
    chown -R "$RUN_AS": "$DIR"
    chmod o+x "$DIR"
  fi
  ip netns add $NS_A
  ip netns add $NS_B
  # Both ends are created inside the namespaces: nothing appears in the root namespace.
  ip link add veth-a netns $NS_A type veth peer name veth-b netns $NS_B
  ip -n $NS_A addr add $ADDR_A/24 dev veth-a
  ip -n $NS_B addr add $ADDR_B/24 dev veth-b
  for ns in $NS_A $NS_B; do ip -n $ns link set lo up; done
  ip -n $NS_A link set veth-a up
  ip -n $NS_B link set veth-b up
  start_agent a
  start_agent b
  wait_healthy a
  wait_healthy b
  local me=$0
  [ "$DIR" = /tmp/hasync-netns-pair ] || me="HASYNC_PAIR_DIR=$DIR $0"
  cat <<EOF
hasync pair is up in $DIR (check interval $INTERVAL s)
  node-a  active   $ADDR_A:$PORT  netns $NS_A  config $DIR/node-a.toml  data $DIR/data/node-a
  node-b  standby  $ADDR_B:$PORT  netns $NS_B  config $DIR/node-b.toml  data $DIR/data/node-b
  logs: $DIR/logs/node-*/ha.log (HA run log), $DIR/logs/agent-*.out

Commands on a host (the same as: ip netns exec $NS_B $PY -m hasync status -c $DIR/node-b.toml):
  $me run b status        $me run b alarms --all        $me run b diagnose
Faults:
  $me cut | restore       the standby's link down / up          -> peer_unreachable
  $me partition | heal    nftables drop on the active's host    -> peer_unreachable, nothing hangs
  $me kill a | start a    kill -9 the active's agent / start it -> peer_agent_down
Change files on the active in $DIR/data/node-a and watch them arrive in $DIR/data/node-b.
Tear down: $me down
EOF
}

status() {
  for ns in $NS_A $NS_B; do
    if exists $ns; then echo "netns $ns: processes $(ip netns pids $ns | tr '\n' ' ')"; else echo "netns $ns: absent"; fi
  done
  exists $NS_B && ip netns exec $NS_B "$PY" -m hasync status -c "$DIR/node-b.toml" || true
}

cmd=${1:-}
shift || true
case "$cmd" in
  up) up ;;
  down) need_root; down ;;
  status) need_root; status ;;
  run)
    need_root
    node=${1:-}; ns=$(ns_of "$node"); shift
    exec ip netns exec "$ns" "${drop[@]}" "$PY" -m hasync "$@" -c "$DIR/node-$node.toml" ;;
  cut) need_root; ip -n $NS_B link set veth-b down; echo "node-b's link is down" ;;
  restore) need_root; ip -n $NS_B link set veth-b up; echo "node-b's link is up" ;;
  partition)
    need_root
    ip netns exec $NS_A nft -f - <<EOF
table inet hasync_partition {
  chain input { type filter hook input priority 0; policy accept; ip saddr $ADDR_B drop; }
  chain output { type filter hook output priority 0; policy accept; ip daddr $ADDR_B drop; }
}
EOF
    echo "node-a drops every packet from and to $ADDR_B" ;;
  heal) need_root; ip netns exec $NS_A nft delete table inet hasync_partition; echo "partition healed" ;;
  kill)
    need_root
    node=${1:-}; ns_of "$node" >/dev/null
    kill -KILL "$(cat "$DIR/run/agent-$node.pid")" && echo "node-$node's agent killed (kill -9)" ;;
  start) need_root; node=${1:-}; ns_of "$node" >/dev/null; start_agent "$node"; wait_healthy "$node" ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
