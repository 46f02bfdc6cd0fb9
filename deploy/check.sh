#!/usr/bin/env bash
# Offline checks of the deploy files: every YAML parses, every kustomization renders,
# rendered objects pass the Kubernetes schema and cross-reference each other, and each
# overlay's coordinator.yaml is accepted by the coordinator itself.
#   deploy/check.sh [path/to/surgery-coordinator]
# Needs python3 + PyYAML and `kubectl` (or `kustomize`); uses kubernetes-validate
# (pip install kubernetes-validate) and a built coordinator when present.
set -euo pipefail
cd "$(dirname "$0")"
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT

for f in $(find . -name '*.yaml' -o -name '*.yml'); do
  python3 -c 'import yaml,sys; list(yaml.safe_load_all(open(sys.argv[1])))' "$f"
done
echo "yaml: all files parse"

if command -v kubectl >/dev/null; then render=(kubectl kustomize)
elif command -v kustomize >/dev/null; then render=(kustomize build)
else echo "no kubectl or kustomize: skipping the rest"; exit 0; fi

coordinator=${1:-}
[ -n "$coordinator" ] || for c in ../target/release/surgery-coordinator ../target/debug/surgery-coordinator; do
  [ -x "$c" ] && { coordinator=$c; break; }
done

for k in kubernetes/base kubernetes/overlays/*; do
  name=$(basename "$k")
  "${render[@]}" "$k" > "$out/$name.yaml"
  if command -v kubernetes-validate >/dev/null; then
    kubernetes-validate --strict --quiet -k 1.29.0 "$out/$name.yaml"
  fi
  python3 - "$out/$name.yaml" "$out/$name.coordinator.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
sts = by[("StatefulSet", "surgery-coordinator")]
pod = sts["spec"]["template"]
labels = pod["metadata"]["labels"]
def selects(sel):
    return sel and all(labels.get(k) == v for k, v in sel.items())
assert sts["spec"]["replicas"] == 1, "the store allows one coordinator"
assert selects(sts["spec"]["selector"]["matchLabels"]), "StatefulSet selector"
assert selects(by[("Service", "surgery-coordinator")]["spec"]["selector"]), "Service selector"
assert selects(by[("PodDisruptionBudget", "surgery-coordinator")]["spec"]["selector"]["matchLabels"]), "PDB selector"
for d in docs:
    if d["kind"] == "NetworkPolicy":
        assert selects(d["spec"]["podSelector"]["matchLabels"]), "NetworkPolicy podSelector"
assert sts["spec"]["serviceName"] in {n for k, n in by if k == "Service"}, "serviceName"
assert pod["spec"]["serviceAccountName"] in {n for k, n in by if k == "ServiceAccount"}
c = pod["spec"]["containers"][0]
ports = {p["name"] for p in c["ports"]}
for p in by[("Service", "surgery-coordinator")]["spec"]["ports"]:
    assert p["targetPort"] in ports, "Service targetPort"
cm = next(v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v)
assert ("ConfigMap", cm) in by and cm != "surgery-coordinator-config", f"hashed ConfigMap {cm}"
mounts = {m["mountPath"] for m in c["volumeMounts"]}
env = {e["name"]: e.get("value") for e in c["env"]}
assert env["SURGERY_CONFIG"].rsplit("/", 1)[0] in mounts, "SURGERY_CONFIG is mounted"
config = by[("ConfigMap", cm)]["data"]["coordinator.yaml"]
assert yaml.safe_load(config)["data_dir"] in mounts, "data_dir is the volume"
open(sys.argv[2], "w").write(config)
PY
  if [ -n "$coordinator" ]; then
    # As in the container: the mounted file named by SURGERY_CONFIG.
    SURGERY_CONFIG="$out/$name.coordinator.yaml" "$coordinator" --print-config >/dev/null
  fi
  echo "$name: renders${coordinator:+, config accepted by $coordinator}"
done
