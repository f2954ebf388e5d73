#!/usr/bin/env bash
# The whole fault matrix: every failpoint x {kill, db-error, term where it differs} on
# PostgreSQL and on SQLite (CI runs all of PostgreSQL and a fixed half of SQLite).
#
#   bash benchmarks/fault_matrix.sh            # needs PostgreSQL at RNNTUNE_TEST_PG
#   bash benchmarks/fault_matrix.sh -k sqlite  # extra arguments go to pytest
#
# Prints pytest's summary (the slowest cases) and the wall time of the whole matrix.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
start=$(date +%s)
status=0
RNNTUNE_FAULT_MATRIX=full "$PY" -m pytest -q -p no:cacheprovider tests/test_faults.py "$@" \
    || status=$?
echo "full fault matrix: $(( $(date +%s) - start )) s wall (exit $status)"
exit $status
