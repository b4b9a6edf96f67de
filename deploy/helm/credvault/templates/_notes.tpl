{{/* NOTES.txt, as a named template so that tests can render it (helm template leaves NOTES.txt out). */}}
{{- define "credvault.notes" -}}
{{- $fullname := include "credvault.fullname" . -}}
{{- $ns := .Release.Namespace -}}
credvault {{ .Chart.AppVersion }} is deployed as {{ $fullname }} in namespace {{ $ns }}.

  API (TLS):          {{ include "credvault.apiServiceHost" . }}:{{ .Values.vault.ports.api }}
  engine port (mTLS): {{ include "credvault.engineServiceHost" . }}:{{ .Values.vault.ports.engine }}
  vault replicas:     {{ if .Values.vault.autoscaling.enabled }}{{ .Values.vault.autoscaling.minReplicas }}-{{ .Values.vault.autoscaling.maxReplicas }} (HPA){{ else }}{{ .Values.vault.replicas }}{{ end }}

The vault pods start once these Secrets exist (the chart never creates them):
  - the KEK:       kubectl -n {{ $ns }} create secret generic {{ .Values.kek.existingSecret }} \
                     --from-file={{ .Values.kek.key }}=keyring.json    # a keyring JSON or one base64 32-byte KEK
{{- if eq .Values.database.mode "cloudnativepg" }}
  - the database:  {{ $fullname }}-db-app, created by the CloudNativePG operator for the Cluster {{ $fullname }}-db.
{{- else }}
  - the database:  kubectl -n {{ $ns }} create secret generic {{ .Values.database.external.existingSecret }} \
                     --from-file={{ .Values.database.external.key }}=database-url    # one line: postgresql://USER:PASSWORD@HOST:5432/DB
{{- end }}
{{- if eq .Values.tls.mode "secrets" }}
  - TLS: {{ .Values.tls.secrets.api }} (API), {{ .Values.tls.secrets.engineServer }} (engine port, with ca.crt), {{ .Values.tls.secrets.engineCA }} (ca.crt: the engine CA)
    and one tls Secret per location (locations[].certificateSecret).
{{- else }}
  TLS comes from cert-manager: kubectl -n {{ $ns }} get certificates -l app.kubernetes.io/instance={{ .Release.Name }}
{{- end }}

The vault reads its keyring and certificates at start: after a KEK rotation or a certificate renewal,
  kubectl -n {{ $ns }} rollout restart deployment/{{ $fullname }}

First administrator of an empty vault (prints its API token once):
  POD=$(kubectl -n {{ $ns }} get pod -l app.kubernetes.io/instance={{ .Release.Name }},app.kubernetes.io/component=vault -o name | head -n 1)
  kubectl -n {{ $ns }} exec "$POD" -- credvault admin bootstrap --username admin
{{- if .Values.locations }}

Engine workers connect only once the vault knows their location and engine (with an admin token, against the API):
{{- range .Values.locations }}
  credvault locations create {{ .id }} && credvault engines add --location {{ .id }} --engine {{ include "credvault.engineId" . }}
{{- end }}
{{- else }}

No engine workers: add private locations under `locations:` (one Deployment and one engine certificate each).
{{- end }}

Check it: helm test {{ .Release.Name }} -n {{ $ns }}
{{- end }}
