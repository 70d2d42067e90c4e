{{/*
Names. The full name is capped at 48 characters, not 63, because the longest suffix the chart
appends ("-register-trust", "-self-update") must still fit a 63-character DNS label.
*/}}
{{- define "argocd-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "argocd-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "argocd-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "argocd-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "argocd-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "argocd-gateway.labels" -}}
helm.sh/chart: {{ include "argocd-gateway.chart" . }}
{{ include "argocd-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: argocd-gateway
{{- end }}

{{/*
Flags accept true/false and "true"/"false". In a template the string "false" is truthy, so
every flag goes through this: it yields "true" or "" (falsy).
*/}}
{{- define "argocd-gateway.bool" -}}
{{- if eq (toString .) "true" }}true{{ end }}
{{- end }}

{{- define "argocd-gateway.serviceAccountName" -}}
{{- if include "argocd-gateway.bool" .Values.serviceAccount.create }}
{{- default (include "argocd-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "argocd-gateway.identitySecretName" -}}
{{ include "argocd-gateway.fullname" . }}-identity
{{- end }}

{{- define "argocd-gateway.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.registry }}
{{- printf "%s/%s:%s" .Values.image.registry .Values.image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "argocd-gateway.imagePullSecrets" -}}
{{- with .Values.image.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ if kindIs "string" . }}{{ . }}{{ else }}{{ .name }}{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where secrets and trust material are mounted; the flags below point at these paths. */}}
{{- define "argocd-gateway.paths" -}}
trustConfigMap: /etc/argocd-gateway/trust/certificates
trustSecret: /etc/argocd-gateway/trust/secret
argocdToken: /var/run/secrets/argocd-gateway/argocd-token
argocdProjectTokens: /var/run/secrets/argocd-gateway/argocd-project-tokens
registrationToken: /var/run/secrets/argocd-gateway/registration-token
{{- end }}

{{/*
Secrets the chart makes from inline values; empty when the user names an existing Secret.
*/}}
{{- define "argocd-gateway.argocdTokenSecret" -}}
{{- if .Values.gateway.argocd.authenticationToken }}{{ include "argocd-gateway.fullname" . }}-argocd-token
{{- else }}{{ .Values.gateway.argocd.authenticationTokenSecretName }}{{ end }}
{{- end }}

{{- define "argocd-gateway.argocdTokenKey" -}}
{{- if .Values.gateway.argocd.authenticationToken }}token{{ else }}{{ .Values.gateway.argocd.authenticationTokenSecretKey }}{{ end }}
{{- end }}

{{- define "argocd-gateway.projectTokensSecret" -}}
{{- if .Values.gateway.argocd.projectAuthentication }}{{ include "argocd-gateway.fullname" . }}-argocd-project-tokens
{{- else }}{{ .Values.gateway.argocd.projectAuthenticationSecretName }}{{ end }}
{{- end }}

{{/* ctx: root context; hook: true for the copy a pre-install hook can use. */}}
{{- define "argocd-gateway.registrationTokenSecret" -}}
{{- if .ctx.Values.registration.token }}{{ include "argocd-gateway.fullname" .ctx }}-{{ if .hook }}register{{ else }}registration{{ end }}-token
{{- else }}{{ .ctx.Values.registration.tokenSecretName }}{{ end }}
{{- end }}

{{- define "argocd-gateway.registrationTokenKey" -}}
{{- if .Values.registration.token }}token{{ else }}{{ .Values.registration.tokenSecretKey }}{{ end }}
{{- end }}

{{- define "argocd-gateway.trustConfigMap" -}}
{{- if .ctx.Values.gateway.serverCertificates }}{{ include "argocd-gateway.fullname" .ctx }}-{{ if .hook }}register-trust{{ else }}trust{{ end }}{{ end }}
{{- end }}

{{/*
Free-form values are quoted so a "#" or ": " in a name or URL cannot end the YAML scalar.
Flags every subcommand that talks to the hub shares: URL, TLS, trust, identity, logging.
*/}}
{{- define "argocd-gateway.hubArgs" -}}
{{- $v := .ctx.Values }}
{{- $paths := include "argocd-gateway.paths" . | fromYaml }}
- {{ printf "--hub-url=%s" $v.gateway.hub.serverGrpcUrl | quote }}
{{- if include "argocd-gateway.bool" $v.gateway.hub.plaintext }}
- --hub-plaintext
{{- end }}
{{- with $v.gateway.hub.serverThumbprint }}
- {{ printf "--hub-fingerprint=%s" . | quote }}
{{- end }}
{{- with $v.registration.caFingerprint }}
- {{ printf "--hub-ca-fingerprint=%s" . | quote }}
{{- end }}
{{- if include "argocd-gateway.trustConfigMap" . }}
- --trust-ca={{ $paths.trustConfigMap }}
{{- end }}
{{- if $v.gateway.serverCertificateSecretName }}
- --trust-ca={{ $paths.trustSecret }}
{{- end }}
- --identity=secret:{{ .ctx.Release.Namespace }}/{{ include "argocd-gateway.identitySecretName" .ctx }}
- --log-format={{ $v.gateway.logFormat }}
{{- if include "argocd-gateway.bool" $v.gateway.debug }}
- --debug
{{- end }}
{{- end }}

{{/* Flags for registering: the token file and the metadata the hub records. */}}
{{- define "argocd-gateway.registrationArgs" -}}
{{- $v := .ctx.Values }}
{{- $paths := include "argocd-gateway.paths" . | fromYaml }}
{{- if include "argocd-gateway.registrationTokenSecret" . }}
- --registration-token-file={{ $paths.registrationToken }}/token
{{- end }}
{{- with $v.registration.name }}
- {{ printf "--name=%s" . | quote }}
{{- end }}
{{- range $v.registration.environments }}
- {{ printf "--environment=%s" . | quote }}
{{- end }}
{{- with $v.registration.argocd.webUiUrl }}
- {{ printf "--argocd-web-url=%s" . | quote }}
{{- end }}
{{- end }}

{{/*
Volumes behind hubArgs and registrationArgs. The token volume is optional: once the identity
Secret exists the token is never read, so a deleted or expired token Secret must not keep a
pod from starting; without identity and token the binary fails naming registration.token.
*/}}
{{- define "argocd-gateway.hubVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- with include "argocd-gateway.trustConfigMap" . }}
- name: trust-certificates
  configMap:
    name: {{ . }}
{{- end }}
{{- with .ctx.Values.gateway.serverCertificateSecretName }}
- name: trust-secret
  secret:
    secretName: {{ . }}
    defaultMode: 0444
{{- end }}
{{- if .registration }}
{{- with include "argocd-gateway.registrationTokenSecret" . }}
- name: registration-token
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    optional: true
    items:
      - key: {{ include "argocd-gateway.registrationTokenKey" $.ctx }}
        path: token
{{- end }}
{{- end }}
{{- end }}

{{- define "argocd-gateway.hubVolumeMounts" -}}
{{- $paths := include "argocd-gateway.paths" . | fromYaml }}
- name: tmp
  mountPath: /tmp
{{- if include "argocd-gateway.trustConfigMap" . }}
- name: trust-certificates
  mountPath: {{ $paths.trustConfigMap }}
  readOnly: true
{{- end }}
{{- if .ctx.Values.gateway.serverCertificateSecretName }}
- name: trust-secret
  mountPath: {{ $paths.trustSecret }}
  readOnly: true
{{- end }}
{{- if and .registration (include "argocd-gateway.registrationTokenSecret" .) }}
- name: registration-token
  mountPath: {{ $paths.registrationToken }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The downward-API variables every subcommand reads for its namespace and Lease identity. */}}
{{- define "argocd-gateway.podEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{/* Pod-level scheduling and hardening shared by the Deployment, the Job and the CronJob. */}}
{{- define "argocd-gateway.podCommon" -}}
{{- include "argocd-gateway.imagePullSecrets" . }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
