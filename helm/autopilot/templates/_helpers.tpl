{{/* Names, labels and the environment every Autopilot container shares. */}}

{{- define "autopilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "autopilot.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "autopilot.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "autopilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "autopilot.selector" (list . "api") */}}
{{- define "autopilot.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "autopilot.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* ServiceAccount of one process: include "autopilot.serviceAccountName" (list . "worker").
worker, api and beat each have their own, bound to only what that process calls (rbac.yaml). */}}
{{- define "autopilot.serviceAccountName" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $name := index $root.Values.serviceAccount.names $component -}}
{{- if $root.Values.serviceAccount.create -}}
{{- default (printf "%s-%s" (include "autopilot.fullname" $root) $component) $name -}}
{{- else -}}
{{- default "default" $name -}}
{{- end -}}
{{- end -}}

{{/* Where the pvc check creates its claim and consumer pod (AUTOPILOT_PVC_NAMESPACE). */}}
{{- define "autopilot.pvcNamespace" -}}
{{- default .Release.Namespace .Values.config.pvcNamespace -}}
{{- end -}}

{{- define "autopilot.apiImage" -}}
{{- printf "%s:%s" .Values.image.api.repository (default .Chart.AppVersion .Values.image.api.tag) -}}
{{- end -}}

{{- define "autopilot.workerImage" -}}
{{- printf "%s:%s" .Values.image.worker.repository (default .Chart.AppVersion .Values.image.worker.tag) -}}
{{- end -}}

{{- define "autopilot.tokenSecret" -}}
{{- default (printf "%s-api-token" (include "autopilot.fullname" .)) .Values.apiToken.existingSecret -}}
{{- end -}}

{{/* Secret with key `password`: the Redis password (secret.yaml, or redis.auth.existingSecret). */}}
{{- define "autopilot.redisSecret" -}}
{{- default (printf "%s-redis-auth" .Release.Name) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/* Secret with key `basic-auth` ("user:password"): Flower's login. */}}
{{- define "autopilot.flowerSecret" -}}
{{- default (printf "%s-flower-auth" (include "autopilot.fullname" .)) .Values.flower.auth.existingSecret -}}
{{- end -}}

{{/* The redis-ha dependency's Sentinels: one address per replica's announce Service. */}}
{{- define "autopilot.sentinelUrl" -}}
{{- $ha := index .Values "redis-ha" -}}
{{- $base := printf "%s-redis-ha" .Release.Name -}}
{{- $out := list -}}
{{- range $i, $_ := until (int $ha.replicas) -}}
{{- $out = append $out (printf "sentinel://%s-announce-%d:26379" $base $i) -}}
{{- end -}}
{{- printf "%s/0" (join ";" $out) -}}
{{- end -}}

{{/* Environment of every Autopilot container: settings, Redis URL, token, namespace, image.
AUTOPILOT_NAMESPACE is the release namespace because rbac.yaml grants Jobs and Events there
(POD_NAMESPACE, its alias, is the same from the downward API, for tools that read it);
AUTOPILOT_IMAGE (the invasive Job and the pvc check's consumer pod) is the worker image. */}}
{{- define "autopilot.env" -}}
- name: AUTOPILOT_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: AUTOPILOT_IMAGE
  value: {{ include "autopilot.workerImage" . | quote }}
{{- if and .Values.redis.enabled (index .Values "redis-ha").enabled }}
{{- fail "redis.enabled and redis-ha.enabled exclude each other: choose the single Redis or the Sentinel set" }}
{{- else if .Values.redis.enabled }}
- name: AUTOPILOT_REDIS_URL
  value: {{ printf "redis://%s-redis:6379/0" (include "autopilot.fullname" .) | quote }}
{{- else if (index .Values "redis-ha").enabled }}
- name: AUTOPILOT_REDIS_URL
  value: {{ include "autopilot.sentinelUrl" . | quote }}
{{- else if .Values.redis.existingSecret }}
- name: AUTOPILOT_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: url
{{- else }}
- name: AUTOPILOT_REDIS_URL
  value: {{ required "redis.externalUrl is required when redis.enabled is false" .Values.redis.externalUrl | quote }}
{{- end }}
{{- if or .Values.redis.enabled (index .Values "redis-ha").enabled .Values.redis.auth.existingSecret }}
- name: AUTOPILOT_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "autopilot.redisSecret" . }}
      key: password
{{- end }}
{{- if .Values.redis.auth.sentinel }}
- name: AUTOPILOT_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "autopilot.redisSecret" . }}
      key: password
{{- end }}
- name: AUTOPILOT_REDIS_SENTINEL_MASTER
  value: {{ (index .Values "redis-ha").redis.masterGroupName | quote }}
{{- with .Values.redis.tls.caSecret }}
- name: AUTOPILOT_REDIS_TLS_CA
  value: /etc/autopilot/redis-ca/ca.crt
{{- end }}
- name: AUTOPILOT_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "autopilot.tokenSecret" . }}
      key: token
{{- end -}}

{{/* The Redis CA volume and mount (redis.tls.caSecret) of every Autopilot container. */}}
{{- define "autopilot.redisCaMount" -}}
{{- with .Values.redis.tls.caSecret }}
- {name: redis-ca, mountPath: /etc/autopilot/redis-ca, readOnly: true}
{{- end }}
{{- end -}}

{{- define "autopilot.redisCaVolume" -}}
{{- with .Values.redis.tls.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ . }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- end -}}

{{- define "autopilot.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "autopilot.containerSecurityContext" -}}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* A map as "k=v,k=v" in key order (AUTOPILOT_GPUMEM_THRESHOLDS, AUTOPILOT_CHECK_TIMEOUTS). */}}
{{- define "autopilot.kv" -}}
{{- $out := list -}}
{{- range $k, $v := . -}}
{{- $out = append $out (printf "%s=%v" $k $v) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}
