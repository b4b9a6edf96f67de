{{/* Series selectors of the dashboard and the alerts: the jobs the chart's ServiceMonitors scrape (the Prometheus
Operator names a job after its Service). */}}
{{- define "credvault.vaultJob" -}}
{{ include "credvault.fullname" . }}
{{- end }}

{{- define "credvault.workerJob" -}}
{{ include "credvault.fullname" . }}-engine-workers
{{- end }}

{{- define "credvault.vaultSeries" -}}
namespace="{{ .Release.Namespace }}",job="{{ include "credvault.vaultJob" . }}"
{{- end }}

{{- define "credvault.workerSeries" -}}
namespace="{{ .Release.Namespace }}",job="{{ include "credvault.workerJob" . }}"
{{- end }}
