{{/* Names: short enough that "<fullname>-engine-server" etc. stay valid DNS labels. */}}
{{- define "credvault.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "credvault.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "credvault.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "credvault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include "credvault.selectorLabels" (list . "vault") */}}
{{- define "credvault.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "credvault.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "credvault.componentLabels" -}}
{{ include "credvault.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "credvault.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "credvault.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "credvault.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The engine-browser image (docker build --target engine-browser): engineWorkers.browser.image, by default the
image's repository with the tag "<the image's tag>-browser". */}}
{{- define "credvault.browserImage" -}}
{{- $image := .Values.engineWorkers.browser.image }}
{{- $repository := default .Values.image.repository $image.repository }}
{{- if $image.digest }}
{{- printf "%s@%s" $repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default (printf "%s-browser" (default .Chart.AppVersion .Values.image.tag)) $image.tag) }}
{{- end }}
{{- end }}

{{/* The same hardening on every pod and every container. */}}
{{- define "credvault.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "credvault.containerSecurityContext" -}}
{{- include "credvault.securityContextWith" (list . false) }}
{{- end }}

{{/* The vault's and the engine workers' containers: they also lock their memory (memoryLock). */}}
{{- define "credvault.memoryLockingSecurityContext" -}}
{{- include "credvault.securityContextWith" (list . .Values.memoryLock.enabled) }}
{{- end }}

{{/*
Locking (README "Memory"): a process of a non-root user keeps no capability of the container's across exec (Kubernetes
sets no ambient capabilities); it gets IPC_LOCK from the file capability cap_ipc_lock+p of the image's interpreter.
The runtime puts an added capability in the bounding and the permitted set of the process it starts, so exec may
grant it even with no_new_privs (which only forbids gaining what that process did not hold): allowPrivilegeEscalation
stays false.
*/}}
{{- define "credvault.securityContextWith" -}}
{{- $root := index . 0 -}}
runAsNonRoot: true
runAsUser: {{ $root.Values.securityContext.runAsUser }}
runAsGroup: {{ $root.Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
  {{- if index . 1 }}
  add: ["IPC_LOCK"]
  {{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "credvault.apiServiceHost" -}}
{{- printf "%s.%s.svc.%s" (include "credvault.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "credvault.engineServiceName" -}}
{{- printf "%s-engine" (include "credvault.fullname" .) }}
{{- end }}

{{- define "credvault.engineServiceHost" -}}
{{- printf "%s.%s.svc.%s" (include "credvault.engineServiceName" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* The four DNS names of a Service: include "credvault.serviceDNSNames" (list . "<service name>") */}}
{{- define "credvault.serviceDNSNames" -}}
{{- $root := index . 0 }}
{{- $svc := index . 1 }}
- {{ $svc }}
- {{ printf "%s.%s" $svc $root.Release.Namespace }}
- {{ printf "%s.%s.svc" $svc $root.Release.Namespace }}
- {{ printf "%s.%s.svc.%s" $svc $root.Release.Namespace $root.Values.clusterDomain }}
{{- end }}

{{/* --- where the TLS material lives (cert-manager Secrets or yours) --- */}}
{{- define "credvault.certManager" -}}
{{- if eq .Values.tls.mode "certManager" }}true{{ end }}
{{- end }}

{{- define "credvault.apiTlsSecret" -}}
{{- if include "credvault.certManager" . }}{{ printf "%s-api-tls" (include "credvault.fullname" .) }}{{ else }}{{ .Values.tls.secrets.api }}{{ end }}
{{- end }}

{{- define "credvault.engineServerTlsSecret" -}}
{{- if include "credvault.certManager" . }}{{ printf "%s-engine-server-tls" (include "credvault.fullname" .) }}{{ else }}{{ .Values.tls.secrets.engineServer }}{{ end }}
{{- end }}

{{/* The engine CA certificate the engine port trusts: {secret, key}. Only the certificate is mounted. */}}
{{- define "credvault.engineCASecret" -}}
{{- if include "credvault.certManager" . }}{{ printf "%s-engine-ca" (include "credvault.fullname" .) }}{{ else }}{{ .Values.tls.secrets.engineCA }}{{ end }}
{{- end }}

{{- define "credvault.engineCAKey" -}}
{{- if include "credvault.certManager" . }}tls.crt{{ else }}ca.crt{{ end }}
{{- end }}

{{- define "credvault.engineName" -}}
{{- printf "%s-engine-%s" (include "credvault.fullname" (index . 0)) (index . 1).id }}
{{- end }}

{{- define "credvault.engineId" -}}
{{- default "k8s-1" .engineId }}
{{- end }}

{{- define "credvault.engineTlsSecret" -}}
{{- $root := index . 0 }}
{{- $loc := index . 1 }}
{{- if include "credvault.certManager" $root }}{{ printf "%s-tls" (include "credvault.engineName" .) }}{{ else }}{{ $loc.certificateSecret }}{{ end }}
{{- end }}

{{- define "credvault.spiffeId" -}}
{{- $root := index . 0 }}
{{- $loc := index . 1 }}
{{- printf "spiffe://%s/location/%s/engine/%s" $root.Values.trustDomain $loc.id (include "credvault.engineId" $loc) }}
{{- end }}

{{/* The database URL: the existing Secret, or the CloudNativePG app Secret (key uri). */}}
{{- define "credvault.databaseUrlEnv" -}}
- name: CREDVAULT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if eq .Values.database.mode "cloudnativepg" }}
      name: {{ printf "%s-db-app" (include "credvault.fullname" .) }}
      key: uri
      {{- else }}
      name: {{ .Values.database.external.existingSecret }}
      key: {{ .Values.database.external.key }}
      {{- end }}
{{- end }}

{{/* Checks the schema cannot express. */}}
{{- define "credvault.validate" -}}
{{- $seen := dict }}
{{- range .Values.locations }}
{{- if hasKey $seen .id }}
{{- fail (printf "locations: the id %q appears twice; each location gets one engine worker" .id) }}
{{- end }}
{{- $_ := set $seen .id true }}
{{- end }}
{{- if and .Values.vault.autoscaling.enabled (lt (int .Values.vault.autoscaling.maxReplicas) (int .Values.vault.autoscaling.minReplicas)) }}
{{- fail "vault.autoscaling: maxReplicas must be at least minReplicas" }}
{{- end }}
{{- end }}
