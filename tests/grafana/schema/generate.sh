#!/usr/bin/env bash
# Regenerates the JSON schemas in this directory from the TypeScript types that Grafana
# publishes in the @grafana/schema npm package (see README.md). Needs node >= 18 and npm
# with registry access; the versions are pinned by package.json and package-lock.json.
# The tests only read the generated files: neither node nor npm is needed to run them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp "$here/package.json" "$here/package-lock.json" "$here/tsconfig.json" "$work/"
(cd "$work" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
raw=node_modules/@grafana/schema/dist/esm/raw

# gen SOURCE TYPE OUTPUT: one JSON schema (draft-07) for one exported TypeScript type.
gen() {
  (cd "$work" && npx --no-install ts-json-schema-generator \
    --path "$1" --type "$2" --tsconfig tsconfig.json --out "$work/out.json")
  mkdir -p "$(dirname "$here/$3")"
  cp "$work/out.json" "$here/$3"
  echo "wrote $3"
}

# The dashboard model (what a dashboard JSON file is).
gen "$raw/dashboard/x/dashboard_types.gen.d.ts" Dashboard dashboard.schema.json

# Per panel plugin: `options`, and `fieldConfig.defaults.custom` where the plugin has one.
# (The dashboard model types both as open records; the plugins' own types close them.)
for plugin in timeseries:TimeSeries stat:Stat heatmap:Heatmap table:Table bargauge:BarGauge; do
  dir=${plugin%%:*}
  name=${plugin##*:}
  src="$raw/composable/$dir/panelcfg/x/${name}PanelCfg_types.gen.d.ts"
  gen "$src" Options "panels/$dir.options.schema.json"
  if grep -q '^export interface FieldConfig\b' "$work/$src"; then
    gen "$src" FieldConfig "panels/$dir.fieldconfig.schema.json"
  fi
done
