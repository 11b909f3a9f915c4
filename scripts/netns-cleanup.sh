#!/usr/bin/env bash
# Removes what the network-namespace tests (tests/netns) leave behind when their process is killed
# before its clean-up ran: namespaces named nn<pid>x<n>-<host> (their veth links go with them), the
# processes still running in them, and their /etc/netns/<ns>/ folders.
#   scripts/netns-cleanup.sh          labs whose test process is gone
#   scripts/netns-cleanup.sh --all    every lab, even of a running test
#   scripts/netns-cleanup.sh --dry-run [--all]   only list
set -euo pipefail
all=0; dry=0
for a in "$@"; do
  case "$a" in
    --all) all=1 ;;
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "unknown argument $a (try --help)" >&2; exit 2 ;;
  esac
done
if ! command -v ip >/dev/null; then echo "ip (iproute2) not installed: nothing to clean" >&2; exit 0; fi
removed=0
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^nn[0-9]+x[0-9]+-' || true); do
  pid=${ns#nn}; pid=${pid%%x*}
  if [[ $all == 0 && -d /proc/$pid ]]; then
    echo "keeping $ns: its test process $pid is running (use --all to remove it anyway)"
    continue
  fi
  echo "removing $ns"
  [[ $dry == 1 ]] && continue
  for p in $(ip netns pids "$ns" 2>/dev/null || true); do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$ns" || echo "  could not delete $ns" >&2
  rm -rf "/etc/netns/$ns"
  removed=$((removed + 1))
done
# /etc/netns folders whose namespace is already gone
for d in /etc/netns/nn*x*-*; do
  [[ -d $d ]] || continue
  ns=$(basename "$d")
  ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns" && continue
  echo "removing $d"
  [[ $dry == 1 ]] || rm -rf "$d"
done
echo "netns-cleanup: $removed namespace(s) removed"
