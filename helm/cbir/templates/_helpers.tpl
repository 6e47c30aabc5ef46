{{/* Names, labels and images shared by the templates. */}}
{{- define "cbir.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cbir.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway") */}}
{{- define "cbir.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image of one component: (dict "root" $ "name" "gateway" "suffix" "") */}}
{{- define "cbir.image" -}}
{{- $img := .root.Values.image -}}
{{- $tag := default .root.Chart.AppVersion $img.tag -}}
{{- $repo := printf "%s/%s" $img.repository .name -}}
{{- if $img.registry }}{{ $repo = printf "%s/%s" $img.registry $repo }}{{ end -}}
{{- printf "%s:%s%s" $repo $tag (default "" .suffix) -}}
{{- end -}}

{{/* OTEL_* variables of one component: (dict "root" $ "service" "cbir-gateway") */}}
{{- define "cbir.otelEnv" -}}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
{{- if .root.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .root.Values.otel.endpoint | quote }}
{{- end }}
{{- if .root.Values.otel.resourceAttributes }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ .root.Values.otel.resourceAttributes | quote }}
{{- end }}
{{- end -}}

{{/* User-given environment variables: a map name -> value. */}}
{{- define "cbir.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{- define "cbir.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
{{- end -}}

{{- define "cbir.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{/* The folders the training service may read: its own PVC or the
gateway's, at its own path or the gateway's. YAML {claim, mountPath};
claim empty: none. */}}
{{- define "cbir.trainingImages" -}}
{{- $t := .Values.training.images -}}
{{- $g := .Values.gateway.images -}}
claim: {{ default $g.existingClaim $t.existingClaim | quote }}
mountPath: {{ default $g.mountPath $t.mountPath | quote }}
{{- end -}}

{{/* Container probe: the gRPC health check, or with TLS on (Kubernetes'
gRPC probes speak no TLS) the binary's own --probe, which does. (dict
"root" $ "port" 50052 "service" "cbir.v1.IndexService" "bin" "cbir-index") */}}
{{- define "cbir.probe" -}}
{{- if .root.Values.security.tls.enabled -}}
exec:
  command: [{{ .bin | quote }}, "--probe"]
{{- else -}}
grpc: {port: {{ .port }}, service: {{ .service }}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the internal token: the one named, or the chart's. */}}
{{- define "cbir.internalTokenSecret" -}}
{{- default (printf "%s-internal-token" (include "cbir.fullname" .)) .Values.security.internalToken.existingSecret -}}
{{- end -}}

{{/* The internal token from its Secret, always: services listening on
0.0.0.0 refuse to start without it (or mutual TLS). (dict "root" $
"prefix" "INDEX") */}}
{{- define "cbir.securityEnv" -}}
- name: {{ .prefix }}_INTERNAL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "cbir.internalTokenSecret" .root }}
      key: {{ .root.Values.security.internalToken.secretKey }}
{{- end -}}

{{/* The [tls] section of a service's config (YAML), empty with TLS off:
(dict "root" $ "internal" true) */}}
{{- define "cbir.tls" -}}
{{- $t := .root.Values.security.tls -}}
{{- if $t.enabled -}}
cert: /etc/cbir/tls/tls.crt
key: /etc/cbir/tls/tls.key
ca: /etc/cbir/tls/ca.crt
client_cert: /etc/cbir/tls/tls.crt
client_key: /etc/cbir/tls/tls.key
{{- if and .internal $t.mutual }}
client_ca: /etc/cbir/tls/ca.crt
{{- end }}
{{- end -}}
{{- end -}}

{{- define "cbir.tlsMount" -}}
{{- if .Values.security.tls.enabled }}
- name: tls
  mountPath: /etc/cbir/tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "cbir.tlsVolume" -}}
{{- if .Values.security.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "security.tls.secretName names the Secret with tls.crt, tls.key and ca.crt" .Values.security.tls.secretName }}
{{- end }}
{{- end -}}
