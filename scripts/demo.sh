#!/usr/bin/env bash
# make demo: placeholder until memfile lands (replaced by the foundation work).
set -euo pipefail
./bin/nvdimm-backend version
