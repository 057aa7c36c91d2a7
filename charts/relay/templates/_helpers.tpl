{{- define "relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "relay.fullname" -}}
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

{{- define "relay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "relay.selector" -}}
app.kubernetes.io/name: {{ include "relay.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "relay.image" -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end }}

{{/* An env var from a value, or from an existing Secret's key. */}}
{{- define "relay.urlEnv" -}}
- name: {{ .name }}
{{- if .svc.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .svc.existingSecret }}
      key: {{ .svc.existingSecretKey }}
{{- else }}
  value: {{ .svc.url | quote }}
{{- end }}
{{- end }}

{{- define "relay.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Where a backend's CA or credentials Secret is mounted. */}}
{{- define "relay.backendFiles" -}}
{{- $files := list -}}
{{- range $name, $svc := dict "nats" .Values.nats "redis" .Values.redis "pocketbase" .Values.pocketbase -}}
{{- if $svc.caSecret }}{{ $files = append $files (dict "volume" (printf "%s-ca" $name) "secret" $svc.caSecret "key" $svc.caSecretKey "dir" (printf "/etc/relay/%s-ca" $name) "backend" $name "kind" "ca") }}{{ end -}}
{{- end -}}
{{- if .Values.nats.credsSecret }}{{ $files = append $files (dict "volume" "nats-creds" "secret" .Values.nats.credsSecret "key" .Values.nats.credsSecretKey "dir" "/etc/relay/nats-creds" "backend" "nats" "kind" "creds") }}{{ end -}}
{{- toJson $files -}}
{{- end }}

{{/* Env vars pointing at the mounted CA and credentials files; prefix RELAY or OPERATOR. The
     operator does not call PocketBase. */}}
{{/* How Redis is deployed, for the relay (RELAY) or the operator (OPERATOR). */}}
{{- define "relay.redisModeEnv" -}}
- { name: {{ .prefix }}_REDIS_MODE, value: {{ .redis.mode | default "standalone" | quote }} }
{{- if .redis.masterName }}
- { name: {{ .prefix }}_REDIS_MASTER_NAME, value: {{ .redis.masterName | quote }} }
{{- end }}
{{- end }}

{{- define "relay.backendFileEnv" -}}
{{- range (include "relay.backendFiles" .root | fromJsonArray) }}
{{- if not (and (eq $.prefix "OPERATOR") (eq .backend "pocketbase")) }}
- { name: {{ printf "%s_%s_%s_FILE" $.prefix (upper .backend) (upper .kind) }}, value: {{ printf "%s/%s" .dir .key | quote }} }
{{- end }}
{{- end }}
{{- end }}

{{- define "relay.backendFileMounts" -}}
{{- range (include "relay.backendFiles" .root | fromJsonArray) }}
{{- if not (and (eq $.prefix "OPERATOR") (eq .backend "pocketbase")) }}
- { name: {{ .volume }}, mountPath: {{ .dir }}, readOnly: true }
{{- end }}
{{- end }}
{{- end }}

{{- define "relay.backendFileVolumes" -}}
{{- range (include "relay.backendFiles" .root | fromJsonArray) }}
{{- if not (and (eq $.prefix "OPERATOR") (eq .backend "pocketbase")) }}
- name: {{ .volume }}
  secret:
    secretName: {{ .secret }}
    items: [{ key: {{ .key | quote }}, path: {{ .key | quote }} }]
{{- end }}
{{- end }}
{{- end }}
