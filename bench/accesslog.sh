#!/usr/bin/env bash
# What the access log costs: rwsgi with --access-logfile against rwsgi without it, on the
# hello-world app and on a 10 KiB static file (the front tier alone, where a line weighs
# most): the accesslog and accesslog-static scenarios of bench/run.sh, which does the
# work (FORMAT=json for the json lines).
#
# Usage: bash bench/accesslog.sh            (knobs as for bench/run.sh; see bench/README.md)
exec env SCENARIOS="${SCENARIOS:-accesslog accesslog-static}" bash "$(dirname "${BASH_SOURCE[0]}")/run.sh"
