#!/usr/bin/env bash
# rwsgi's static files (--static, served by the front tier) vs nginx (sendfile on): the
# static10k and static1m scenarios of bench/run.sh, which does the work.
#
# Usage: bash bench/static.sh            (knobs as for bench/run.sh; see bench/README.md)
exec env SCENARIOS="${SCENARIOS:-static10k static1m}" bash "$(dirname "${BASH_SOURCE[0]}")/run.sh"
