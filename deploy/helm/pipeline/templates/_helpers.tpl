{{/* The release's full name, at most 52 characters (a CronJob's name must leave room for
the Job suffix Kubernetes appends). */}}
{{- define "pipeline.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pipeline.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pipeline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "pipeline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: backup
{{- end -}}

{{/* The pipeline's name, checked: it becomes a file name and the `run` argument. */}}
{{- define "pipeline.name" -}}
{{- $name := required "pipeline.name is required" .Values.pipeline.name -}}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]*$" $name) -}}
{{- fail (printf "pipeline.name %q: use letters, digits, `.`, `_` and `-` (it names the file NAME.toml)" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "pipeline.configMapName" -}}
{{- default (printf "%s-file" (include "pipeline.fullname" .)) .Values.pipeline.existingConfigMap -}}
{{- end -}}

{{- define "pipeline.secretName" -}}
{{- if and .Values.secrets.existingSecret .Values.secrets.create -}}
{{- fail "secrets.existingSecret and secrets.create are exclusive: name your Secret or let the chart create one" -}}
{{- end -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else if .Values.secrets.create -}}
{{- printf "%s-env" (include "pipeline.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "pipeline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pipeline.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pipeline.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Job's deadline: the pipeline's longest stage timeout plus a margin, so that the
pipeline's own deadline fires first and fails the run cleanly. */}}
{{- define "pipeline.activeDeadlineSeconds" -}}
{{- $timeout := int .Values.pipeline.timeoutSeconds -}}
{{- $margin := int .Values.job.deadlineMarginSeconds -}}
{{- if le $timeout 0 -}}
{{- fail "pipeline.timeoutSeconds must be the longest limits.timeout of the pipeline file, in seconds (> 0)" -}}
{{- end -}}
{{- if lt $margin 60 -}}
{{- fail "job.deadlineMarginSeconds must be at least 60: the pipeline's own deadline must fire before the Job's" -}}
{{- end -}}
{{- add $timeout $margin -}}
{{- end -}}

{{- define "pipeline.claimName" -}}
{{- $p := index .root.Values.persistence .which -}}
{{- default (printf "%s-%s" (include "pipeline.fullname" .root) .which) $p.existingClaim -}}
{{- end -}}
