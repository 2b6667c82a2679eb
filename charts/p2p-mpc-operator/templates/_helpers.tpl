{{/* Name of the chart's objects. */}}
{{- define "p2p-mpc-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator pod. */}}
{{- define "p2p-mpc-operator.selectorLabels" -}}
app.kubernetes.io/name: p2p-mpc-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "p2p-mpc-operator.labels" -}}
{{ include "p2p-mpc-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.extraLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The operator image. */}}
{{- define "p2p-mpc-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Namespaces the operator manages with rbac.scope=namespace (default: the release's). */}}
{{- define "p2p-mpc-operator.watchNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- join "," .Values.watchNamespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/*
The operator's permissions, the same in a ClusterRole (rbac.scope=cluster) and in each Role
(rbac.scope=namespace): only the verbs the controller calls.
*/}}
{{- define "p2p-mpc-operator.rules" -}}
# The custom resource: watched, and its status written.
- apiGroups: ["p2p-mpc.dev"]
  resources: ["mpcclusters"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["p2p-mpc.dev"]
  resources: ["mpcclusters/status"]
  verbs: ["get", "patch"]
# Secrets, read and written by name only (never listed or watched): one per member (key,
# config, roster) and the API token; delete only for the earlier layout's Secret of every
# key, once migrated.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch", "delete"]
# Services: headless, metrics, and the API's when asked for (delete: when no longer asked).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The members' data volume claims: made when missing, never changed or deleted.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create"]
# Only the earlier layout's ConfigMap, deleted once migrated.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "delete"]
# One StatefulSet per member; delete on scale-down and for the earlier layout's one.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The cluster's NetworkPolicy (delete: when spec.networkPolicy.enabled is turned off).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "create", "patch", "delete"]
# Events on the MpcClusters.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
