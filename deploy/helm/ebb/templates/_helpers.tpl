{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "ebb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "ebb.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ebb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "ebb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ebb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels. */}}
{{- define "ebb.labels" -}}
helm.sh/chart: {{ include "ebb.chart" . }}
{{ include "ebb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ebb
{{- end }}

{{- define "ebb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ebb.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ebb.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "ebb.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{/* The address KEDA's scalerAddress should use. */}}
{{- define "ebb.scalerAddress" -}}
{{- printf "%s.%s.svc.cluster.local:%v" (include "ebb.fullname" .) .Release.Namespace .Values.ports.grpc }}
{{- end }}

{{/* "true" when ebb gets a config file (ConfigMap <fullname>-config, EBB_CONFIG): the bridge's
config.enabled, or an access policy. */}}
{{- define "ebb.configEnabled" -}}
{{- if or .Values.config.enabled .Values.access }}true{{ end }}
{{- end }}

{{/* ebb's config file: config.content (the bridge's scaledObjects) when config.enabled, then
the values' access policy as the top-level `access:` key. */}}
{{- define "ebb.configFile" -}}
{{- $content := "" }}
{{- if .Values.config.enabled }}
{{- if .Values.access }}
{{- $content = .Values.config.content | default "" }}
{{- else }}
{{- $content = required "config.content is required when config.enabled (unless access is set)" .Values.config.content }}
{{- end }}
{{- end }}
{{- $content = regexReplaceAll "\\s+$" $content "" }}
{{- if and $content .Values.access (hasKey (fromYaml $content) "access") }}
{{- fail "access is set both in config.content and in the values' access: keep one" }}
{{- end }}
{{- $content }}
{{- with .Values.access }}
{{- if $content }}{{ "\n" }}{{ end }}access:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
