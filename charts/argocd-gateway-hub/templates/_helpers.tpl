{{/*
Names. The full name is capped at 52 characters so the longest suffix the chart appends
("-init-pki") still fits a 63-character DNS label.
*/}}
{{- define "hub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hub.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hub.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hub.labels" -}}
helm.sh/chart: {{ include "hub.chart" . }}
{{ include "hub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: argocd-gateway
{{- end }}

{{/* Flags accept true/false and "true"/"false": yields "true" or "" (falsy). */}}
{{- define "hub.bool" -}}
{{- if eq (toString .) "true" }}true{{ end }}
{{- end }}

{{- define "hub.serviceAccountName" -}}
{{- if include "hub.bool" .Values.serviceAccount.create }}
{{- default (include "hub.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hub.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.registry }}
{{- printf "%s/%s:%s" .Values.image.registry .Values.image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "hub.imagePullSecrets" -}}
{{- with .Values.image.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ if kindIs "string" . }}{{ . }}{{ else }}{{ .name }}{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret with the hub's CA, server certificate and admin token. */}}
{{- define "hub.pkiSecret" -}}
{{- default (printf "%s-pki" (include "hub.fullname" .)) .Values.pki.secretName }}
{{- end }}

{{/* The Secret with the database URL, and its key. */}}
{{- define "hub.databaseSecret" -}}
{{- if .Values.database.url }}{{ include "hub.fullname" . }}-database{{ else }}{{ .Values.database.urlSecretName }}{{ end }}
{{- end }}

{{- define "hub.databaseKey" -}}
{{- if .Values.database.url }}url{{ else }}{{ .Values.database.urlSecretKey }}{{ end }}
{{- end }}

{{/* Where the Secrets are mounted; the ARGOCD_GATEWAY_HUB_* variables name these paths. */}}
{{- define "hub.paths" -}}
pki: /var/run/secrets/argocd-gateway-hub/pki
database: /var/run/secrets/argocd-gateway-hub/database
databasePassword: /var/run/secrets/argocd-gateway-hub/database-password
databaseCa: /var/run/secrets/argocd-gateway-hub/database-ca
{{- end }}

{{/* The hub's names, comma-separated, for the server certificate. */}}
{{- define "hub.hostnames" -}}
{{- join "," .Values.hub.hostnames }}
{{- end }}

{{/*
The refusals the schema also makes, for `helm install --skip-schema-validation`; the messages
name the values to change.
*/}}
{{- define "hub.validate" -}}
{{- if not .Values.hub.hostnames }}
{{- fail "hub.hostnames is required: every name gateways dial the hub by (the server certificate covers them)" }}
{{- end }}
{{- if and .Values.database.url .Values.database.urlSecretName }}
{{- fail "database.url and database.urlSecretName cannot both be set" }}
{{- end }}
{{- if not (or .Values.database.url .Values.database.urlSecretName) }}
{{- fail "a PostgreSQL database is required: set database.url or database.urlSecretName (replicas share it)" }}
{{- end }}
{{- if and (include "hub.bool" .Values.ingress.enabled) (not .Values.ingress.host) }}
{{- fail "ingress.host is required when ingress.enabled is true" }}
{{- end }}
{{- if and (include "hub.bool" .Values.podDisruptionBudget.enabled) (ge (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount)) (gt (int .Values.replicaCount) 1) }}
{{- fail "podDisruptionBudget.minAvailable must be below replicaCount, or no node could ever be drained" }}
{{- end }}
{{- end }}
