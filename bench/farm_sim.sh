#!/usr/bin/env bash
# The farm's placement with figures a second old, simulated (bench/farm_sim.rs,
# no network): 16 nodes of one server each at 90% load, mod_backhand's byLoad
# against berth's byInFlight and byTwoChoices (byRandom as the baseline), with
# one front end placing every request and with each of the 16 nodes placing
# its own share. Prints the queue a request finds (mean, p99, max) and its
# response time per policy, twice: with `load` as each node's queue at the
# last whole second, and as the 1-minute load average a node really publishes.
# Seeded: the same figures every run. About 10 s.
#
#   bash bench/farm_sim.sh                       # seed 1, 20000 simulated seconds
#   bash bench/farm_sim.sh --seed 2 --service fixed --seconds 40000
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --example farm_sim
for load in queue loadavg; do
  target/release/examples/farm_sim --load "$load" "$@"
  echo
done
