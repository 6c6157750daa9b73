{{- define "aijobs.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "aijobs.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aijobs
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "aijobs.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "aijobs.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "aijobs.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "aijobs.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}

{{- define "aijobs.serviceUrl" -}}
http://{{ include "aijobs.fullname" .root }}-{{ .name }}:8080
{{- end -}}

{{- /* A generated secret value that survives upgrades: the live Secret's value for .key where
there is one (helm reads it back with lookup), else a new random one of .length characters. */}}
{{- define "aijobs.keptSecretValue" -}}
{{- $existing := lookup "v1" "Secret" .namespace .secret -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum .length -}}
{{- end -}}
{{- end -}}

{{- /* Where one component's pods run: its own nodeSelector, tolerations, affinity and
topologySpreadConstraints where set (not empty), else the shared ones under .Values.scheduling.
A spread constraint without a labelSelector gets the component's own, so that it counts only
this component's pods. Called with (dict "root" $ "values" <component values> "component" name). */}}
{{- define "aijobs.scheduling" -}}
{{- $shared := .root.Values.scheduling -}}
{{- $own := .values -}}
{{- with (default $shared.nodeSelector $own.nodeSelector) }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $shared.tolerations $own.tolerations) }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $shared.affinity $own.affinity) }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $shared.topologySpreadConstraints $own.topologySpreadConstraints) }}
{{- $selector := dict "matchLabels" (include "aijobs.selector" (dict "root" $.root "component" $.component) | fromYaml) }}
topologySpreadConstraints:
{{- range . }}
  - {{- toYaml (merge (dict) . (dict "labelSelector" $selector)) | nindent 4 }}
{{- end }}
{{- end }}
{{- end -}}
