{{/*
Names are fixed (not derived from the release name): mlguard is one per cluster, its
ClusterRole and webhook configurations are cluster-wide, and the objects keep the names of
the kustomize install (manifests/base), so either can replace the other.
*/}}

{{/* Labels Helm adds to every object's metadata (never to selectors or pod templates, so
that the Deployment's selector stays that of the kustomize install). */}}
{{- define "mlguard.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
{{- end }}

{{/* Every object: part of mlguard, plus Helm's labels. */}}
{{- define "mlguard.labels" -}}
app.kubernetes.io/part-of: mlguard
{{ include "mlguard.helmLabels" . }}
{{- end }}

{{/* The webhook pods. */}}
{{- define "mlguard.selectorLabels" -}}
app.kubernetes.io/name: mlguard
app.kubernetes.io/component: webhook
{{- end }}

{{- define "mlguard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The Service's DNS names, as the serving certificate must cover them. */}}
{{- define "mlguard.dnsNames" -}}
- mlguard
- mlguard.{{ .Release.Namespace }}
- mlguard.{{ .Release.Namespace }}.svc
- mlguard.{{ .Release.Namespace }}.svc.cluster.local
{{- end }}

{{/* The namespaceSelector both webhooks share: never the exempt namespaces (by the
kubernetes.io/metadata.name label the API server sets on every namespace), ANDed with
webhooks.namespaceSelector. */}}
{{- define "mlguard.namespaceSelector" -}}
{{- $exempt := concat .Values.webhooks.exemptNamespaces (list .Release.Namespace) | uniq -}}
{{- $extra := .Values.webhooks.namespaceSelector | default dict -}}
{{- with $extra.matchLabels }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
matchExpressions:
- key: kubernetes.io/metadata.name
  operator: NotIn
  values:
  {{- toYaml $exempt | nindent 2 }}
{{- with $extra.matchExpressions }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The objectSelector both webhooks share: never objects carrying the opt-out label
(webhooks.exemptLabel, mlguard's own exemptions.object_labels), ANDed with
webhooks.objectSelector. */}}
{{- define "mlguard.objectSelector" -}}
{{- $extra := .Values.webhooks.objectSelector | default dict -}}
{{- $label := .Values.webhooks.exemptLabel | default dict -}}
{{- with $extra.matchLabels }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if or $label.key $extra.matchExpressions }}
matchExpressions:
{{- with $label.key }}
- key: {{ . }}
  operator: NotIn
  values: [{{ $label.value | quote }}]
{{- end }}
{{- with $extra.matchExpressions }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Settings every webhook shares. */}}
{{- define "mlguard.webhookCommon" -}}
admissionReviewVersions: ["v1"]
sideEffects: None
timeoutSeconds: {{ .timeout }}
matchPolicy: Equivalent
{{- end }}

{{/* The Service every webhook calls, at `path`. */}}
{{- define "mlguard.clientConfig" -}}
clientConfig:
  service:
    name: mlguard
    namespace: {{ .root.Release.Namespace }}
    path: {{ .path }}
    port: 443
  {{- with .caBundle }}
  caBundle: {{ . }}
  {{- end }}
{{- end }}

{{/* The exemption selectors every webhook carries. */}}
{{- define "mlguard.selectors" -}}
namespaceSelector:
  {{- include "mlguard.namespaceSelector" . | trim | nindent 2 }}
{{- with include "mlguard.objectSelector" . | trim }}
objectSelector:
  {{- . | nindent 2 }}
{{- end }}
{{- end }}
