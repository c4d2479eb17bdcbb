#!/usr/bin/env bash
# The core crates (state machine, raftstore, the storage and transport
# seams) must not reach an IO stack, not even transitively: Cargo, not
# discipline, keeps them IO-free (docs/architecture.md, "IO-free core").
# Fails naming the crate and the path to the forbidden dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
core=(meridian-storage meridian-transport meridian-raftstore meridian-kv meridian-membership meridian-placement)
forbidden='^(tokio|quinn|rustls|rocksdb|librocksdb-sys|tonic|hyper|mio)$'
status=0
for c in "${core[@]}"; do
  deps=$("$CARGO" tree -p "$c" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
  bad=$(grep -E "$forbidden" <<<"$deps" || true)
  if [ -n "$bad" ]; then
    for b in $bad; do
      echo "core-deps: $c depends on $b:" >&2
      "$CARGO" tree -p "$c" -e normal -i "$b" >&2 || true
    done
    status=1
  else
    echo "core-deps: $c ok ($(wc -l <<<"$deps") crates, none of tokio/quinn/rustls/rocksdb/tonic/hyper/mio)"
  fi
done
exit $status
