{{/* Common names and labels. */}}
{{- define "logstream.fullname" -}}
{{- printf "%s" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "logstream.labels" -}}
app.kubernetes.io/part-of: logstream
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "logstream.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag -}}
{{- printf "%s/%s:%s" .root.Values.image.repository .name $tag -}}
{{- end -}}

{{- define "logstream.operatorName" -}}{{ include "logstream.fullname" . }}-operator{{- end -}}
{{- define "logstream.collectorName" -}}{{ include "logstream.fullname" . }}-collector{{- end -}}

{{- define "logstream.edgeService" -}}
{{- default (printf "%s-edge" .Values.sampleLogStream.name) .Values.expose.service -}}
{{- end -}}

{{- define "logstream.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "logstream.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
