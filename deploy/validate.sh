#!/usr/bin/env bash
# Renders the Helm chart (deploy/helm/pipeline) with its default values and every
# ci/*-values.yaml, lints it, and validates every rendered manifest and the plain manifests
# in deploy/kubernetes/ with kubernetes-validate --strict against the Kubernetes versions
# below; then runs the named checks of deploy/check_manifests.py on each (Forbid, non-root,
# deadline above the pipeline's timeouts, … : docs/guarantees.md lists them) and its
# self-test, which breaks each check's subject once and expects that check to fail.
#
#   deploy/validate.sh        (CI runs it; scripts/install-prerequisites.sh --tests
#                              installs helm and kubernetes-validate)
#
# Exits 1 on the first failing step, naming it; a missing tool is an error, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest Kubernetes the chart supports (podReplacementPolicy is on by default from
# 1.29; Chart.yaml's kubeVersion) and a current one.
kube_versions=(1.29.0 1.34.0)
chart=deploy/helm/pipeline

die() { printf 'deploy/validate.sh: error: %s\n' "$*" >&2; exit 1; }

command -v helm >/dev/null \
  || die "helm is not installed: scripts/install-prerequisites.sh --tests installs it"
python3 -c 'import kubernetes_validate, yaml' 2>/dev/null \
  || die "kubernetes-validate is not installed: python3 -m pip install 'kubernetes-validate==1.37.0' (or scripts/install-prerequisites.sh --tests)"
python3 -c 'import tomllib' 2>/dev/null || die "python3 is older than 3.11 (no tomllib)"
echo "helm $(helm version --template '{{.Version}}'), kubernetes-validate $(python3 -m kubernetes_validate --version)"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# case name, values file ("" for the defaults), extra manifests applied beside the release
cases=(
  "defaults||"
  "existing-secret|$chart/ci/existing-secret-values.yaml|$chart/ci/existing-configmap.yaml"
  "irsa|$chart/ci/irsa-values.yaml|"
  "pvc|$chart/ci/pvc-values.yaml|"
  "pushgateway|$chart/ci/pushgateway-values.yaml|"
)
values_files=("$chart"/ci/*-values.yaml)
((${#values_files[@]} == ${#cases[@]} - 1)) \
  || die "$chart/ci has ${#values_files[@]} values files but this script renders $((${#cases[@]} - 1)): add the new one to \`cases\`"

sets=()
for c in "${cases[@]}"; do
  IFS='|' read -r name values extra <<<"$c"
  args=()
  [ -n "$values" ] && args=(-f "$values")
  helm lint --strict --quiet "$chart" "${args[@]}" >"$out/lint.log" 2>&1 \
    || { cat "$out/lint.log" >&2; die "helm lint failed with ${values:-the default values}"; }
  helm template "pl-$name" "$chart" --namespace backups "${args[@]}" >"$out/$name.yaml" \
    || die "helm template failed with ${values:-the default values}"
  sets+=("$out/$name.yaml${extra:+ $extra}")
  echo "rendered $name: $(grep -c '^kind:' "$out/$name.yaml") objects (${values:-default values})"
done
sets+=("$(echo deploy/kubernetes/*.yaml)")

for v in "${kube_versions[@]}"; do
  for s in "${sets[@]}"; do
    # shellcheck disable=SC2086 # a set is a list of files
    python3 -m kubernetes_validate --strict --quiet -k "$v" $s \
      || die "kubernetes-validate --strict -k $v rejected a manifest in: $s"
  done
  echo "kubernetes-validate --strict -k $v: every manifest valid (${#sets[@]} sets)"
done

for s in "${sets[@]}"; do
  # shellcheck disable=SC2086
  python3 deploy/check_manifests.py $s || die "a named check failed in: $s"
done
python3 deploy/check_manifests.py --self-test "$out/defaults.yaml" deploy/kubernetes/cronjob.yaml \
  || die "the checks' self-test failed: a check passes a manifest broken for it"
