# Sourced by the multi-host tests and bench/net_bench: N test "hosts", each a
# network namespace of its own, joined by one bridge that lives in a further
# namespace (the "switch"), so the machine's own namespace gets no address and
# no route: traffic goes only between namespaces the caller made. Root only.
#
#   netns_up PREFIX N        makes PREFIX-sw (the bridge) and PREFIX-1..N, host
#                            i at 10.213.0.$((10 + i))/24 on its eth0, lo up;
#                            records every name it made in NETNS_MADE
#   netns_addr I             host I's address
#   netns_exec I CMD...      runs CMD in host I
#   netns_link I up|down     cuts or restores host I's link (its port on the
#                            switch; the host's own eth0 stays up)
#   netns_pids               pids of every process still in one of them
#   netns_down               kills every process in them (TERM, then KILL) and
#                            deletes the namespaces netns_up made; idempotent,
#                            safe in an EXIT trap even after a partial netns_up
#
# Names: at most 15 characters per interface, so PREFIX should be short and
# unique per run (e.g. "emb$$"). Needs iproute2 and ping (iputils-ping).
# This machine's kernel has no netem qdisc (tc qdisc add ... netem: "qdisc
# kind is unknown"), so added delay cannot come from tc here.
NETNS_PREFIX=""
NETNS_MADE=()
NETNS_SUBNET=10.213.0

netns_addr() { echo "$NETNS_SUBNET.$((10 + $1))"; }
netns_exec() {
  local i=$1
  shift
  ip netns exec "$NETNS_PREFIX-$i" "$@"
}

netns_up() {
  local prefix=$1 n=$2 i sw
  NETNS_PREFIX=$prefix
  sw="$prefix-sw"
  ip netns add "$sw" || return 1
  NETNS_MADE+=("$sw")
  ip -n "$sw" link set lo up || return 1
  ip -n "$sw" link add br0 type bridge || return 1
  ip -n "$sw" link set br0 up || return 1
  for i in $(seq 1 "$n"); do
    local ns="$prefix-$i"
    ip netns add "$ns" || return 1
    NETNS_MADE+=("$ns")
    ip -n "$ns" link set lo up || return 1
    # The pair is made inside the host, then one end moves to the switch.
    ip -n "$ns" link add eth0 type veth peer name "p$i" || return 1
    ip -n "$ns" link set "p$i" netns "$sw" || return 1
    ip -n "$sw" link set "p$i" master br0 || return 1
    ip -n "$sw" link set "p$i" up || return 1
    ip -n "$ns" addr add "$(netns_addr "$i")/24" dev eth0 || return 1
    ip -n "$ns" link set eth0 up || return 1
  done
  # Every host answers every other before the caller goes on.
  for i in $(seq 2 "$n"); do
    local ok=0
    for _ in $(seq 1 50); do
      if netns_exec 1 ping -c 1 -W 1 "$(netns_addr "$i")" >/dev/null 2>&1; then ok=1; break; fi
      sleep 0.1
    done
    [ "$ok" -eq 1 ] || { echo "netns_up: host $i ($(netns_addr "$i")) does not answer host 1" >&2; return 1; }
  done
}

netns_link() {
  ip -n "$NETNS_PREFIX-sw" link set "p$1" "$2"
}

netns_pids() {
  local ns
  for ns in "${NETNS_MADE[@]+"${NETNS_MADE[@]}"}"; do
    ip netns pids "$ns" 2>/dev/null
  done
}

netns_down() {
  local ns pids
  pids=$(netns_pids)
  if [ -n "$pids" ]; then
    kill $pids 2>/dev/null
    for _ in $(seq 1 20); do
      [ -z "$(netns_pids)" ] && break
      sleep 0.25
    done
    pids=$(netns_pids)
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null
    for _ in $(seq 1 20); do
      [ -z "$(netns_pids)" ] && break
      sleep 0.1
    done
  fi
  for ns in "${NETNS_MADE[@]+"${NETNS_MADE[@]}"}"; do
    ip netns del "$ns" 2>/dev/null
  done
  NETNS_MADE=()
  return 0
}
