#!/usr/bin/env bash
# Mutation testing of the core modules (not part of CI's default run): does the suite notice a change?
# Usage: bash scripts/mutation.sh [results-file]   (minutes per module on 2 cores; run it on a quiet machine)
# It installs mutmut (a maintained mutation tool), mutates the modules listed in pyproject's
# [tool.mutmut] section, runs the tests named there against each mutant, and lists the survivors.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "mutmut>=3.2"
rm -rf mutants
mutmut run --max-children "${MUTATION_JOBS:-2}" || true
mutmut results > "${1:-mutation-results.txt}" || true
echo "survivors (and timeouts):"
grep -E "survived|timeout|suspicious" "${1:-mutation-results.txt}" || echo "none"
