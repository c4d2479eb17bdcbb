# Meridian developer commands. `make dev` runs Meridian (installing what is
# missing first); `make setup verify` is what CI runs: `setup` installs what
# is missing, `verify` (formatting, lints, docs, the core crates' dependency
# rule, every test) only reads and builds, and installs nothing.

# Reuse a cargo target dir outside the clone when there is one, so a fresh
# clone does not rebuild RocksDB; cargo creates it when it is not there.
CARGO_TARGET_DIR ?= $(HOME)/.cache/meridian-target
export CARGO_TARGET_DIR
CARGO ?= cargo

.PHONY: setup build dev demo test verify fmt-check clippy doc core-deps fix sim-long bench-region-failover bench-raft bench-gossip bench-detect bench-etcd bench-snapshot bench-namespaces bench-rereplicate fuzz chaos chaos-soak clean

setup:
	@./scripts/setup.sh

build: setup
	$(CARGO) build -p meridian

# A local 3-node cluster of real server processes (Ctrl-C stops it).
dev: setup
	$(CARGO) run -p meridian -- dev $(ARGS)

# The simulated cluster: nodes, faults and invariant checks in one process.
demo: setup
	$(CARGO) run -p meridian-sim -- demo

# The multi-process tests (tests/, chaos/tests) run the binaries from the
# target dir: build them first, so they are never stale.
test:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
	@# `make dev`, `make demo` and the README run `cargo run -p meridian`:
	@# it must resolve to the meridian binary.
	$(CARGO) run -q -p meridian -- --version

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every crate's docs build with no warning (broken links included).
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

# The core crates depend on no IO stack (docs/architecture.md).
core-deps:
	./scripts/check-core-deps.sh

verify: fmt-check clippy doc core-deps test

fix:
	$(CARGO) fmt --all
	$(CARGO) clippy --workspace --all-targets --fix --allow-dirty --allow-staged

# The long many-seed simulations (not in CI): the register run, then the
# KV run (locks, leases, lock-delay, event streams), then the membership
# gossip's (convergence, crashes, restarts, partitions, pauses, regions),
# then the placement scheduler's (crashes, drains, stalled steps, region
# policies, a witness), the carve and merge runs, and the region run (5
# nodes in 3 regions with latency by region pair; regions lost and cut
# off; again with node 5 a witness).
# SEEDS and STEPS override them, KV_SEEDS and KV_STEPS the KV run alone,
# GOSSIP_SEEDS and PLACEMENT_SEEDS the gossip and placement runs alone;
# MERIDIAN_SIM_BASE_SEED in the environment moves the seeds.
# Namespaces at scale on 3 real processes: N creates (time, creates/s,
# latency), then idle CPU and RSS per range (NAMESPACES, CONCURRENCY, IDLE_S).
bench-namespaces: setup
	$(CARGO) build --workspace --bins
	MERIDIAN_BENCH_NAMESPACES=$${NAMESPACES:-1000} MERIDIAN_BENCH_CONCURRENCY=$${CONCURRENCY:-4} MERIDIAN_BENCH_IDLE_S=$${IDLE_S:-30} MERIDIAN_BENCH_SHARED=$${SHARED:-0} \
	  $(CARGO) test -p meridian-tests --test namespace_bench -- --ignored --nocapture

# A dead node's replicas replaced (docs/performance.md, "Re-replication").
bench-rereplicate: setup
	$(CARGO) build --workspace --bins
	MERIDIAN_BENCH_NAMESPACES=$${NAMESPACES:-1000} MERIDIAN_BENCH_DOWN_AFTER_MS=$${DOWN_AFTER_MS:-5000} MERIDIAN_BENCH_JOIN_LAST=$${JOIN_LAST:-0} \
	  $(CARGO) test -p meridian-tests --test rereplicate_bench -- --ignored --nocapture

# A home region's failover and leadership's return, over RUNS runs, on 9
# processes in 3 regions with WAN latency (docs/geography.md).
bench-region-failover: setup
	$(CARGO) build --workspace --bins
	MERIDIAN_BENCH_RUNS=$${RUNS:-10} $(CARGO) test -p meridian-tests --test geography -- --ignored --nocapture

sim-long: setup
	MERIDIAN_SIM_SEEDS=$${SEEDS:-500} MERIDIAN_SIM_STEPS=$${STEPS:-4000} \
	  $(CARGO) test --workspace --test random -- --nocapture
	MERIDIAN_SIM_SEEDS=$${KV_SEEDS:-$${SEEDS:-500}} MERIDIAN_SIM_STEPS=$${KV_STEPS:-$${STEPS:-4000}} \
	  $(CARGO) test --workspace --test kv_random -- --nocapture
	MERIDIAN_GOSSIP_SEEDS=$${GOSSIP_SEEDS:-$${SEEDS:-500}} $(CARGO) test -p meridian-membership agent:: -- --nocapture
	MERIDIAN_PLACEMENT_SEEDS=$${PLACEMENT_SEEDS:-$${SEEDS:-500}} $(CARGO) test -p meridian-placement -- --nocapture
	MERIDIAN_CARVE_SEEDS=$${CARVE_SEEDS:-$${SEEDS:-500}} $(CARGO) test -p meridian-sim --test carve -- --nocapture
	MERIDIAN_MERGE_SEEDS=$${MERGE_SEEDS:-$${SEEDS:-500}} $(CARGO) test -p meridian-sim --test merge -- --nocapture
	MERIDIAN_SIM_SEEDS=$${REGION_SEEDS:-$${SEEDS:-500}} MERIDIAN_SIM_STEPS=$${STEPS:-4000} \
	  $(CARGO) test -p meridian-sim --test regions -- --nocapture
	MERIDIAN_SIM_SEEDS=$${PROMOTE_SEEDS:-$${SEEDS:-500}} MERIDIAN_SIM_STEPS=$${PROMOTE_STEPS:-1000} \
	  $(CARGO) test -p meridian-sim --test promote -- --nocapture

# A long fuzzing run of every decoder that takes untrusted bytes (peer
# frames, raft messages, stored records, KV commands and queries, etcd
# requests); `make verify` runs a short one. ITERATIONS and SEED override.
# Debug build on purpose: overflow checks stay on.
fuzz: setup
	$(CARGO) build --workspace --bins
	$(CARGO_TARGET_DIR)/debug/meridian-fuzz --target all --iterations $${ITERATIONS:-1000000} --seed $${SEED:-1}

# Chaos suite (chaos/README.md): real processes under kill -9, SIGSTOP,
# partitions, clock drift, leader transfers and membership changes;
# histories checked. About 6 minutes; exits non-zero on any unexpected
# violation.
chaos: setup
	$(CARGO) build --workspace --bins
	$(CARGO_TARGET_DIR)/debug/meridian-chaos run chaos/scenarios $(ARGS)

# Ten minutes per scenario (not in CI).
chaos-soak: setup
	$(CARGO) build --workspace --bins
	$(CARGO_TARGET_DIR)/debug/meridian-chaos run chaos/soak $(ARGS)

# Group-commit benchmark: 1, 8 and 64 ranges on a 3-node in-process
# cluster with RocksDB (see docs/performance.md).
bench-raft: setup
	$(CARGO) run -p meridian-sim -- bench-raft --ranges 1,8,64 --json

# Gossip benchmark (issue 17): bytes, datagrams and CPU per node per second
# for 3, 10 and 50 simulated nodes (and 10 over two regions), and crash
# detection times with LAN and WAN settings, over 10 seeds (see
# docs/performance.md). A deterministic simulation: everything but CPU
# follows from the seed.
bench-gossip: setup
	$(CARGO) run -p meridian-sim -- bench-gossip --nodes 3,10,50 --seeds 10 --json

# Crash detection on real processes (issue 17): kill -9 of one node of a
# 3-node cluster, RUNS times (default 10); when the two others see it
# suspect and dead, and the distribution (see docs/performance.md).
bench-detect: setup
	$(CARGO) build --workspace --bins
	RUNS=$${RUNS:-10} $(CARGO) test -p meridian-tests --test gossip detection_distribution -- --ignored --nocapture

# A large namespace sent to a new replica by streamed snapshot, on real
# processes: time and the sender's and receiver's peak RSS (see
# docs/performance.md). MB sets the MiB of values written (default 512: a
# 1 GiB namespace, as MVCC keeps each value twice).
bench-snapshot: setup
	$(CARGO) build --workspace --bins
	MERIDIAN_SNAPSHOT_BENCH_MB=$${MB:-512} $(CARGO) test --workspace --test snapshot_bench -- --ignored --nocapture

# Meridian and etcd side by side over the etcd API: 3-node clusters of
# each on 127.0.0.1, every workload on both (see docs/performance.md).
# Installs etcd-server when missing. DURATION=5 for shorter runs.
bench-etcd: setup
	./scripts/bench-vs-etcd.sh

clean:
	$(CARGO) clean
