{{/*
Names. Kubernetes names are at most 63 characters for labels and DNS-1123 labels.
*/}}
{{- define "canaryd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "canaryd.fullname" -}}
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

{{- define "canaryd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Cluster-scoped names (ClusterRole, ClusterRoleBinding) carry the release namespace: two releases of
the same name in different namespaces must not share them.
*/}}
{{- define "canaryd.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "canaryd.fullname" .) }}
{{- end }}

{{/*
Labels. Call with (dict "ctx" $ "component" "controller").
*/}}
{{- define "canaryd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "canaryd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "canaryd.labels" -}}
{{- $ctx := .ctx -}}
helm.sh/chart: {{ include "canaryd.chart" $ctx }}
app.kubernetes.io/name: {{ include "canaryd.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/version: {{ ($ctx.Values.image.tag | default $ctx.Chart.AppVersion) | trunc 63 | quote }}
app.kubernetes.io/component: {{ .component | default "controller" }}
app.kubernetes.io/part-of: canaryd
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
{{- with $ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "canaryd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "canaryd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "canaryd.image" -}}
{{- $i := .Values.image -}}
{{- if $i.digest }}
{{- printf "%s@%s" $i.repository $i.digest }}
{{- else }}
{{- printf "%s:%s" $i.repository (default .Chart.AppVersion $i.tag) }}
{{- end }}
{{- end }}

{{/*
RBAC: the API calls canaryd's daemon makes in every watched namespace (or cluster-wide), and nothing
else. Keep in step with canaryd/adapters/{kserve,isvc_cache,statestore,events}.py; tests/chart/test_chart.py
compares these rules with the calls found in those files.

- InferenceServices (KServe v1beta1 and KFServing v1alpha2): read, list and watch (the daemon's
  watch-fed cache, canaryd/adapters/isvc_cache.py), create, merge-patch (canary percent, promotion,
  rollback, spec changes); delete only with prune.
- ModelRollouts (canaryd's state): read, list (resume after a restart), create, replace (spec and
  status in one write); delete only with prune.
- Events on InferenceServices: create.
*/}}
{{- define "canaryd.rbacRules" -}}
{{- $isvcVerbs := list "get" "list" "watch" "create" "patch" }}
{{- $stateVerbs := list "get" "list" "create" "update" }}
{{- if .Values.prune }}
{{- $isvcVerbs = append $isvcVerbs "delete" }}
{{- $stateVerbs = append $stateVerbs "delete" }}
{{- end }}
- apiGroups: ["serving.kserve.io"]
  resources: ["inferenceservices"]
  verbs: {{ toJson $isvcVerbs }}
- apiGroups: ["serving.kubeflow.org"]
  resources: ["inferenceservices"]
  verbs: {{ toJson $isvcVerbs }}
- apiGroups: ["canaryd.io"]
  resources: ["modelrollouts"]
  verbs: {{ toJson $stateVerbs }}
# What canaryd remembers is written only here; no other role in the chart grants modelrollouts/status.
- apiGroups: ["canaryd.io"]
  resources: ["modelrollouts/status"]
  verbs: ["update", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Leader election: one Lease in the release namespace.
*/}}
{{- define "canaryd.leaderElectionRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}

{{/*
Where files are mounted. Secret files come from ONE projected volume (mounted whole, never with
subPath, so a rotated Secret reaches the running pod); the config file from the chart's ConfigMap.
*/}}
{{- define "canaryd.configDir" -}}/etc/canaryd/config{{- end }}
{{- define "canaryd.secretsDir" -}}/etc/canaryd/secrets{{- end }}
{{- define "canaryd.workDir" -}}/var/lib/canaryd{{- end }}

{{/*
The sources of the projected "secrets" volume: existing Secrets (and a CA ConfigMap), each reduced
to the one key canaryd reads. Renders nothing when no secret is configured.
*/}}
{{- define "canaryd.secretSources" -}}
{{- $v := .Values -}}
{{- if $v.repo.token.secretName }}
- secret:
    name: {{ $v.repo.token.secretName }}
    items:
      - {key: {{ $v.repo.token.key | quote }}, path: git/token}
{{- end }}
{{- if $v.repo.ssh.secretName }}
- secret:
    name: {{ $v.repo.ssh.secretName }}
    items:
      - {key: {{ $v.repo.ssh.privateKeyKey | quote }}, path: git/ssh-privatekey}
      {{- if not $v.repo.ssh.knownHosts }}
      - {key: {{ $v.repo.ssh.knownHostsKey | quote }}, path: git/known_hosts}
      {{- end }}
{{- end }}
{{- if and $v.webhook.enabled $v.webhook.secret.secretName }}
- secret:
    name: {{ $v.webhook.secret.secretName }}
    items:
      - {key: {{ $v.webhook.secret.key | quote }}, path: webhook/secret}
{{- end }}
{{- if $v.prometheus.bearerToken.secretName }}
- secret:
    name: {{ $v.prometheus.bearerToken.secretName }}
    items:
      - {key: {{ $v.prometheus.bearerToken.key | quote }}, path: prometheus/token}
{{- end }}
{{- if $v.prometheus.basicAuth.passwordSecretName }}
- secret:
    name: {{ $v.prometheus.basicAuth.passwordSecretName }}
    items:
      - {key: {{ $v.prometheus.basicAuth.passwordKey | quote }}, path: prometheus/password}
{{- end }}
{{- if $v.prometheus.ca.secretName }}
- secret:
    name: {{ $v.prometheus.ca.secretName }}
    items:
      - {key: {{ $v.prometheus.ca.key | quote }}, path: prometheus/ca.crt}
{{- else if $v.prometheus.ca.configMapName }}
- configMap:
    name: {{ $v.prometheus.ca.configMapName }}
    items:
      - {key: {{ $v.prometheus.ca.key | quote }}, path: prometheus/ca.crt}
{{- end }}
{{- range $i, $n := $v.notifications.notifiers }}
- secret:
    name: {{ $n.urlSecret.secretName }}
    items:
      - {key: {{ $n.urlSecret.key | default "url" | quote }}, path: {{ printf "notifiers/%d/url" $i }}}
{{- end }}
{{- end }}

{{/*
The daemon's settings file (canaryd run --config FILE). Paths only, never secret values.
*/}}
{{- define "canaryd.config" -}}
{{- $v := .Values -}}
{{- $sec := include "canaryd.secretsDir" . -}}
{{- $repo := dict "url" $v.repo.url "branch" $v.repo.branch "paths" $v.repo.paths "pollInterval" $v.repo.pollInterval "depth" $v.repo.depth "fetchRetries" $v.repo.fetchRetries "timeout" $v.repo.timeout "workdir" (printf "%s/repo" (include "canaryd.workDir" .)) -}}
{{- if $v.repo.token.secretName }}
{{- $_ := set $repo "tokenFile" (printf "%s/git/token" $sec) }}
{{- with $v.repo.token.username }}{{ $_ := set $repo "username" . }}{{ end }}
{{- end }}
{{- if $v.repo.ssh.secretName }}
{{- $_ := set $repo "sshKeyFile" (printf "%s/git/ssh-privatekey" $sec) }}
{{- if $v.repo.ssh.knownHosts }}
{{- $_ := set $repo "knownHostsFile" (printf "%s/known_hosts" (include "canaryd.configDir" .)) }}
{{- else }}
{{- $_ := set $repo "knownHostsFile" (printf "%s/git/known_hosts" $sec) }}
{{- end }}
{{- end }}
{{- $kube := dict "namespaces" $v.watchNamespaces "defaultNamespace" $v.defaultNamespace -}}
{{- $p := $v.prometheus -}}
{{- $prom := dict "url" $p.url "timeout" $p.timeout "profile" $p.profile "scrapeInterval" $p.scrapeInterval -}}
{{- if $p.maxSampleAge }}{{ $_ := set $prom "maxSampleAge" $p.maxSampleAge }}{{ end }}
{{- if $p.bearerToken.secretName }}{{ $_ := set $prom "bearerTokenFile" (printf "%s/prometheus/token" $sec) }}{{ end }}
{{- if $p.basicAuth.passwordSecretName }}
{{- $_ := set $prom "basicAuthUser" $p.basicAuth.username }}
{{- $_ := set $prom "basicAuthPasswordFile" (printf "%s/prometheus/password" $sec) }}
{{- end }}
{{- if or $p.ca.secretName $p.ca.configMapName }}{{ $_ := set $prom "caFile" (printf "%s/prometheus/ca.crt" $sec) }}{{ end }}
{{- $w := $v.webhook -}}
{{- $hook := dict "enabled" $w.enabled "maxBodyBytes" $w.maxBodyBytes "ratePerSecond" $w.ratePerSecond "burst" $w.burst "unauthenticatedRatePerSecond" $w.unauthenticatedRatePerSecond "unauthenticatedBurst" $w.unauthenticatedBurst -}}
{{- if and $w.enabled $w.secret.secretName }}{{ $_ := set $hook "secretFile" (printf "%s/webhook/secret" $sec) }}{{ end }}
{{- $notifiers := list -}}
{{- range $i, $n := $v.notifications.notifiers }}
{{- $notifiers = append $notifiers (dict "kind" $n.kind "urlFile" (printf "%s/notifiers/%d/url" $sec $i) "events" ($n.events | default list)) }}
{{- end }}
{{- $notify := dict "notifiers" $notifiers "minInterval" $v.notifications.minInterval "timeout" $v.notifications.timeout -}}
{{- $cfg := dict "repo" $repo "kubernetes" $kube "prometheus" $prom "webhook" $hook "notifications" $notify -}}
{{- $_ := set $cfg "server" (dict "host" "0.0.0.0" "port" (int $v.containerPort)) -}}
{{- $_ := set $cfg "prune" $v.prune -}}
{{- $_ := set $cfg "logLevel" $v.logLevel -}}
{{- $_ := set $cfg "workers" (int $v.workers) -}}
{{- $o := $v.outbound -}}
{{- $_ := set $cfg "outbound" (dict "allowLoopback" $o.allowLoopback "allowLinkLocal" $o.allowLinkLocal "allowHosts" ($o.allowHosts | default list) "maxResponseBytes" (int $o.maxResponseBytes) "maxPrometheusResponseBytes" (int $o.maxPrometheusResponseBytes)) -}}
{{- if $v.defaultPolicy }}
{{- $_ := set $cfg "defaultPolicy" (printf "%s/default-policy.yaml" (include "canaryd.configDir" .)) }}
{{- end }}
{{- $cfg = mustMergeOverwrite $cfg (deepCopy $v.extraConfig) -}}
{{- toYaml $cfg }}
{{- end }}

{{/*
Checks the schema cannot express. Each failure names the value to change.
*/}}
{{- define "canaryd.validate" -}}
{{- $v := .Values -}}
{{- if not $v.repo.url }}
{{- fail "repo.url is required: the URL of the Git repo with your InferenceServices (e.g. --set repo.url=https://git.example.com/ml/serving-config.git)" }}
{{- end }}
{{- $creds := "^[hH][tT][tT][pP][sS]?://[^/]*@" }}
{{- if regexMatch $creds $v.repo.url }}
{{- fail "repo.url must not contain credentials (user:token@): values end up in the release history. Put the token in a Secret and set repo.token.secretName" }}
{{- end }}
{{- if regexMatch $creds $v.prometheus.url }}
{{- fail "prometheus.url must not contain credentials (user:password@): use prometheus.basicAuth or prometheus.bearerToken with a Secret" }}
{{- end }}
{{- if and $v.repo.token.secretName $v.repo.ssh.secretName }}
{{- fail "repo.token.secretName and repo.ssh.secretName are both set: use a token (HTTPS URL) or an SSH key (SSH URL), not both" }}
{{- end }}
{{- if and $v.repo.ssh.secretName (not $v.repo.ssh.knownHosts) (not $v.repo.ssh.knownHostsKey) }}
{{- fail "repo.ssh.secretName is set but neither repo.ssh.knownHosts nor repo.ssh.knownHostsKey: canaryd always checks the Git server's host key" }}
{{- end }}
{{- if and (gt (int $v.replicas) 1) (not $v.leaderElection.enabled) }}
{{- fail "replicas > 1 needs leaderElection.enabled=true: without it every replica would act on the same services" }}
{{- end }}
{{- if $v.leaderElection.enabled }}
{{- if not (lt (int $v.leaderElection.renewDeadline) (int $v.leaderElection.leaseDuration)) }}
{{- fail "leaderElection.renewDeadline must be less than leaderElection.leaseDuration" }}
{{- end }}
{{- if not (lt (int $v.leaderElection.retryPeriod) (int $v.leaderElection.renewDeadline)) }}
{{- fail "leaderElection.retryPeriod must be less than leaderElection.renewDeadline" }}
{{- end }}
{{- end }}
{{- if and $v.prometheus.basicAuth.passwordSecretName (not $v.prometheus.basicAuth.username) }}
{{- fail "prometheus.basicAuth.username is required with prometheus.basicAuth.passwordSecretName" }}
{{- end }}
{{- if and $v.prometheus.ca.secretName $v.prometheus.ca.configMapName }}
{{- fail "prometheus.ca: set secretName or configMapName, not both" }}
{{- end }}
{{- if and $v.ingress.enabled (not $v.webhook.enabled) }}
{{- fail "ingress.enabled exposes the webhook path only, but webhook.enabled is false" }}
{{- end }}
{{- if and $v.ingress.enabled (not $v.ingress.hosts) }}
{{- fail "ingress.enabled needs at least one host in ingress.hosts" }}
{{- end }}
{{- end }}
