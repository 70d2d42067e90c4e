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

{{/* Where secrets and trust material are mounted; the ARGOCD_GATEWAY_* variables name these paths. */}}
{{- define "argocd-gateway.paths" -}}
trustConfigMap: /etc/argocd-gateway/trust/certificates
trustSecret: /etc/argocd-gateway/trust/secret
argocdToken: /var/run/secrets/argocd-gateway/argocd-token
argocdProjectTokens: /var/run/secrets/argocd-gateway/argocd-project-tokens
argocdPassword: /var/run/secrets/argocd-gateway/argocd-password
registrationToken: /var/run/secrets/argocd-gateway/registration-token
{{- end }}

{{/* The key of the Argo CD token in its Secret. */}}
{{- define "argocd-gateway.argocdTokenKey" -}}
{{- if .Values.gateway.argocd.authenticationToken }}token{{ else }}{{ .Values.gateway.argocd.authenticationTokenSecretKey }}{{ end }}
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

{{/* The hook copy of the inline Argo CD token (a pre-install hook runs before regular Secrets exist). */}}
{{- define "argocd-gateway.argocdTokenSecretFor" -}}
{{- if .ctx.Values.gateway.argocd.authenticationToken }}{{ include "argocd-gateway.fullname" .ctx }}-{{ if .hook }}hook-argocd{{ else }}argocd-token{{ end }}
{{- else }}{{ .ctx.Values.gateway.argocd.authenticationTokenSecretName }}{{ end }}
{{- end }}

{{- define "argocd-gateway.projectTokensSecretFor" -}}
{{- if .ctx.Values.gateway.argocd.projectAuthentication }}{{ include "argocd-gateway.fullname" .ctx }}-{{ if .hook }}hook-projects{{ else }}argocd-project-tokens{{ end }}
{{- else }}{{ .ctx.Values.gateway.argocd.projectAuthenticationSecretName }}{{ end }}
{{- end }}

{{/*
Settings reach every container as ARGOCD_GATEWAY_* environment variables, never as arguments:
`kubectl exec … -- /argocd-gateway check` then sees the pod's own configuration, and nothing
shows in the process list. Secrets are never values here: they are files mounted from Secrets,
and the variables name those files. Values are quoted so a "#" or ": " cannot end the scalar.

hubEnv: what every subcommand that talks to the hub shares (URL, TLS, trust, identity, logs).
*/}}
{{- define "argocd-gateway.hubEnv" -}}
{{- $v := .ctx.Values }}
{{- $paths := include "argocd-gateway.paths" . | fromYaml }}
- name: ARGOCD_GATEWAY_HUB_URL
  value: {{ $v.gateway.hub.serverGrpcUrl | quote }}
- name: ARGOCD_GATEWAY_HUB_PLAINTEXT
  value: {{ include "argocd-gateway.bool" $v.gateway.hub.plaintext | eq "true" | toString | quote }}
- name: ARGOCD_GATEWAY_HUB_TRANSPORT
  value: {{ $v.gateway.hub.transport | default "auto" | quote }}
{{- with $v.gateway.hub.serverThumbprint }}
- name: ARGOCD_GATEWAY_HUB_FINGERPRINT
  value: {{ . | quote }}
{{- end }}
{{- with $v.registration.caFingerprint }}
- name: ARGOCD_GATEWAY_HUB_CA_FINGERPRINT
  value: {{ . | quote }}
{{- end }}
{{- $trust := list }}
{{- if include "argocd-gateway.trustConfigMap" . }}{{ $trust = append $trust $paths.trustConfigMap }}{{ end }}
{{- if $v.gateway.serverCertificateSecretName }}{{ $trust = append $trust $paths.trustSecret }}{{ end }}
{{- with $trust }}
- name: ARGOCD_GATEWAY_TRUST_CA
  value: {{ join "," . | quote }}
{{- end }}
- name: ARGOCD_GATEWAY_IDENTITY
  value: {{ printf "secret:%s/%s" .ctx.Release.Namespace (include "argocd-gateway.identitySecretName" .ctx) | quote }}
- name: ARGOCD_GATEWAY_LOG_FORMAT
  value: {{ $v.gateway.logFormat | quote }}
- name: ARGOCD_GATEWAY_DEBUG
  value: {{ include "argocd-gateway.bool" $v.gateway.debug | eq "true" | toString | quote }}
{{- end }}

{{/* Registering: the token file and the metadata the hub records. */}}
{{- define "argocd-gateway.registrationEnv" -}}
{{- $v := .ctx.Values }}
{{- $paths := include "argocd-gateway.paths" . | fromYaml }}
{{- if include "argocd-gateway.registrationTokenSecret" . }}
- name: ARGOCD_GATEWAY_REGISTRATION_TOKEN_FILE
  value: {{ printf "%s/token" $paths.registrationToken | quote }}
{{- end }}
{{- with $v.registration.name }}
- name: ARGOCD_GATEWAY_NAME
  value: {{ . | quote }}
{{- end }}
{{- with $v.registration.environments }}
- name: ARGOCD_GATEWAY_ENVIRONMENT
  value: {{ join "," . | quote }}
{{- end }}
{{- with $v.registration.argocd.webUiUrl }}
- name: ARGOCD_GATEWAY_ARGOCD_WEB_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The Argo CD connection, for `run` and the registration preflight. */}}
{{- define "argocd-gateway.argocdEnv" -}}
{{- $a := .ctx.Values.gateway.argocd }}
{{- $paths := include "argocd-gateway.paths" . | fromYaml }}
- name: ARGOCD_GATEWAY_ARGOCD_SERVER
  value: {{ $a.serverUrl | quote }}
- name: ARGOCD_GATEWAY_ARGOCD_INSECURE
  value: {{ include "argocd-gateway.bool" $a.insecure | eq "true" | toString | quote }}
- name: ARGOCD_GATEWAY_ARGOCD_PLAINTEXT
  value: {{ include "argocd-gateway.bool" $a.plaintext | eq "true" | toString | quote }}
{{- if include "argocd-gateway.argocdTokenSecretFor" . }}
- name: ARGOCD_GATEWAY_ARGOCD_TOKEN_FILE
  value: {{ printf "%s/token" $paths.argocdToken | quote }}
{{- end }}
{{- if include "argocd-gateway.projectTokensSecretFor" . }}
- name: ARGOCD_GATEWAY_ARGOCD_PROJECT_TOKENS_DIR
  value: {{ $paths.argocdProjectTokens | quote }}
{{- end }}
{{- with $a.username }}
- name: ARGOCD_GATEWAY_ARGOCD_USERNAME
  value: {{ . | quote }}
- name: ARGOCD_GATEWAY_ARGOCD_PASSWORD_FILE
  value: {{ printf "%s/password" $paths.argocdPassword | quote }}
{{- end }}
- name: ARGOCD_GATEWAY_WATCH
  value: {{ include "argocd-gateway.bool" $a.watch | eq "true" | toString | quote }}
- name: ARGOCD_GATEWAY_POLL_INTERVAL
  value: {{ $a.pollInterval | quote }}
- name: ARGOCD_GATEWAY_RESYNC_INTERVAL
  value: {{ $a.resyncInterval | quote }}
- name: ARGOCD_GATEWAY_CLUSTER_INTERVAL
  value: {{ $a.clusterInterval | quote }}
{{- with $a.selector }}
- name: ARGOCD_GATEWAY_SELECTOR
  value: {{ . | quote }}
{{- end }}
{{- with $a.projects }}
- name: ARGOCD_GATEWAY_PROJECT
  value: {{ join "," . | quote }}
{{- end }}
{{- with $a.applicationNamespaces }}
- name: ARGOCD_GATEWAY_APP_NAMESPACE
  value: {{ join "," . | quote }}
{{- end }}
- name: ARGOCD_GATEWAY_ARGOCD_REQUEST_TIMEOUT
  value: {{ $a.requestTimeout | quote }}
- name: ARGOCD_GATEWAY_ARGOCD_MAX_BODY_BYTES
  value: {{ $a.maxBodyBytes | int64 | toString | quote }}
- name: ARGOCD_GATEWAY_ARGOCD_MAX_LINE_BYTES
  value: {{ $a.maxLineBytes | int64 | toString | quote }}
- name: ARGOCD_GATEWAY_ARGOCD_WATCH_IDLE_TIMEOUT
  value: {{ $a.watchIdleTimeout | quote }}
{{- end }}

{{/* Volumes and mounts of the Argo CD token files (hook: the hook copies of inline tokens). */}}
{{- define "argocd-gateway.argocdVolumes" -}}
{{- with include "argocd-gateway.argocdTokenSecretFor" . }}
- name: argocd-token
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: {{ include "argocd-gateway.argocdTokenKey" $.ctx }}
        path: token
{{- end }}
{{- with include "argocd-gateway.projectTokensSecretFor" . }}
- name: argocd-project-tokens
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- if .ctx.Values.gateway.argocd.username }}
- name: argocd-password
  secret:
    secretName: {{ .ctx.Values.gateway.argocd.passwordSecretName }}
    defaultMode: 0440
    items:
      - key: {{ .ctx.Values.gateway.argocd.passwordSecretKey | default "password" }}
        path: password
{{- end }}
{{- end }}

{{- define "argocd-gateway.argocdVolumeMounts" -}}
{{- $paths := include "argocd-gateway.paths" . | fromYaml }}
{{- if include "argocd-gateway.argocdTokenSecretFor" . }}
- name: argocd-token
  mountPath: {{ $paths.argocdToken }}
  readOnly: true
{{- end }}
{{- if include "argocd-gateway.projectTokensSecretFor" . }}
- name: argocd-project-tokens
  mountPath: {{ $paths.argocdProjectTokens }}
  readOnly: true
{{- end }}
{{- if .ctx.Values.gateway.argocd.username }}
- name: argocd-password
  mountPath: {{ $paths.argocdPassword }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Volumes behind hubEnv and registrationEnv. The token volume is optional: once the identity
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
