#!/usr/bin/env bash
# Renders the Helm chart (deploy/helm/pipeline) with its default values and every
# ci/*-values.yaml, lints it, and validates every rendered manifest and the plain manifests
# in deploy/kubernetes/ with kubernetes-validate --strict against the Kubernetes versions
# below; then runs the named checks of deploy/check_manifests.py on each (Forbid, non-root,
# deadline above the pipeline's timeouts, … : docs/guarantees.md lists them) and its
# self-test, which breaks each check's subject once and expects that check to fail.
#
#   deploy/validate.sh [--pipeline BIN]
#
# With --pipeline (CI passes target/debug/pipeline, which the tests built), every pipeline
# file the chart and the manifests carry is also checked by `BIN validate`, with placeholder
# values for the variables it reads (nothing is connected to). CI runs it;
# scripts/install-prerequisites.sh --tests installs helm and kubernetes-validate.
#
# Exits 1 on the first failing step, naming it; a missing tool is an error, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest Kubernetes the chart supports (podReplacementPolicy is on by default from
# 1.29; Chart.yaml's kubeVersion) and a current one.
kube_versions=(1.29.0 1.34.0)
chart=deploy/helm/pipeline

die() { printf 'deploy/validate.sh: error: %s\n' "$*" >&2; exit 1; }

pipeline_bin=""
case "${1:-}" in
  "") ;;
  --pipeline) pipeline_bin=${2:?--pipeline needs the pipeline binary}
    [ -x "$pipeline_bin" ] || die "no pipeline binary at \`$pipeline_bin\`: build it first (cargo build)" ;;
  *) echo "usage: $0 [--pipeline BIN]" >&2; exit 2 ;;
esac

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

if [ -n "$pipeline_bin" ]; then
  files=()
  for s in "${sets[@]}"; do
    # shellcheck disable=SC2086
    mapfile -t -O "${#files[@]}" files < <(python3 deploy/check_manifests.py --extract "$out/files/${#files[@]}" $s)
  done
  ((${#files[@]})) || die "no pipeline file in the rendered ConfigMaps"
  for f in "${files[@]}"; do
    # Placeholders for what the files read from the Secret; AWS_* keep the credential
    # chain from asking an instance metadata service.
    env -i PATH="$PATH" HOME="$out" PIPELINE_STATE_DIR="$out/state" PIPELINE_CACHE_DIR="$out/cache" \
      DATABASE_URL=postgresql://backup:placeholder@127.0.0.1:9/app S3_BUCKET=placeholder \
      S3_ENDPOINT=http://127.0.0.1:9 S3_ACCESS_KEY=placeholder S3_SECRET_KEY=placeholder-secret \
      AWS_ACCESS_KEY_ID=placeholder AWS_SECRET_ACCESS_KEY=placeholder-secret AWS_EC2_METADATA_DISABLED=true \
      SMTP_PASSWORD=placeholder HC_UUID=placeholder \
      "$pipeline_bin" --quiet validate "$f" >"$out/validate.log" 2>&1 \
      || { cat "$out/validate.log" >&2; die "\`pipeline validate\` rejected ${f#"$out/files/"*/}"; }
    echo "pipeline validate: ${f#"$out/files/"*/} ok"
  done
fi
