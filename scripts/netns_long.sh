#!/usr/bin/env bash
# The network-namespace fault scenarios (tests/netns) with longer partitions and budgets
# (NNUNET_NETNS_LONG=1), one at a time, then a table of what they measured: time to detect a
# partition, epochs lost, fenced writes counted, the slow-link slowdown. Needs root (ip netns).
#   scripts/netns_long.sh [test-name-filter]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
if [[ $(id -u) != 0 ]]; then echo "SKIP: network namespaces need root (or CAP_NET_ADMIN + CAP_SYS_ADMIN)" >&2; exit 0; fi
cargo build --workspace --bins
out=$(mktemp /tmp/netns-long.XXXXXX)
trap 'scripts/netns-cleanup.sh >/dev/null 2>&1 || true' EXIT
start=$(date +%s)
set +e
NNUNET_NETNS_LONG=1 cargo test -p nnunet-tests --test netns -- --test-threads=1 --nocapture ${1:-} 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e
echo
echo "== netns scenarios, long variant ($(( $(date +%s) - start ))s in all; log $out)"
grep '^NETNS-RESULT ' "$out" | sed 's/^NETNS-RESULT //' > "$out.json" || true
python3 - "$out.json" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    s, v = r["scenario"], r["result"]
    if s == "worker_partition":
        print("worker partition: TTL %ss, link cut %.1fs; lease expiry in watch after %.1fs, re-leased after %.1fs from epoch %s; "
              "epochs lost %s; old worker stopped %.1fs after the heal, leased new work after %.1fs; fenced writes %d; run %.0fs"
              % (v["lease_ttl_s"], v["partition_s"], v["detect_s"], v["relet_s"], v["resumed_from_epoch"], v["epochs_lost"],
                 v["old_worker_stopped_after_heal_s"], v["old_worker_new_lease_after_heal_s"], v["fenced_writes"], v["run_s"]))
    elif s == "coordinator_partition":
        print("coordinator partition: TTL %ss, link cut %.1fs; epochs trained during it %s (epoch ~%ss); first event %.1fs after the heal; run %.0fs"
              % (v["lease_ttl_s"], v["partition_s"], v["epochs_trained_during_partition"], v["epoch_s_before"],
                 v["first_event_after_heal_s"], v["run_s"]))
    elif s == "coordinator_moves":
        print("coordinator moves: restarted in %.1fs, first event after %.1fs, workers reconnected after %s s; run %.0fs"
              % (v["restart_s"], v["first_event_after_kill_s"], v["workers_reconnected_after_s"], v["run_s"]))
    elif s == "slow_link":
        print("slow link: tbf %s kbit/s (uploads achieved %s kbit/s); wall s/epoch free %s vs throttled %s: %+.1f%%"
              % (v["rate_kbit"], [round(x) for x in v["achieved_upload_kbit"]], [round(x, 3) for x in v["epoch_wall_free_s"]],
                 [round(x, 3) for x in v["epoch_wall_throttled_s"]], v["slowdown"] * 100))
PY
exit "$rc"
